//! The libc calls of the test side (tests, stand-in, bench), each wrapped
//! once so that the rest stays safe Rust. The only module with `unsafe`;
//! each call site says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

/// `$fn(args)` of libc as `io::Result`: -1 is `last_os_error()`. Every use
/// carries its own `// SAFETY:` line.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        #[allow(clippy::macro_metavars_in_unsafe)]
        // SAFETY: the caller upholds the function's contract; see each use.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// `read(2)`.
#[inline]
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    syscall!(read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len())).map(|n| n as usize)
}

/// `write(2)`.
#[inline]
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    syscall!(write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len())).map(|n| n as usize)
}

/// Writes all of `buf`, retrying on EINTR.
pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        match write(fd, buf) {
            Ok(n) => buf = &buf[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// `shutdown(fd, SHUT_WR)`: the peer reads EOF, reading goes on; ENOTSOCK
/// (a pipe) is reported to the caller.
pub fn shutdown_write(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: shutdown takes plain integers.
    syscall!(shutdown(fd.as_raw_fd(), libc::SHUT_WR)).map(drop)
}

/// Borrows one of the standard descriptors (0, 1, 2).
///
/// Only for 0, 1 and 2, which a process holds from exec to exit; a program
/// that closes one of them (the stand-in closes fd 1 when its output ends)
/// must not use its borrowers afterwards.
pub fn stdio(fd: RawFd) -> BorrowedFd<'static> {
    assert!((0..=2).contains(&fd));
    // SAFETY: fds 0-2 stay open for the life of the process, except where
    // the program closes one itself, as documented above.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// `pipe2(O_CLOEXEC)`: (read end, write end); close-on-exec so that no
/// other child started meanwhile holds an end open.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors pipe2 writes.
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
    // SAFETY: pipe2 succeeded, so both are new descriptors owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `setsockopt(SO_LINGER, {on, 0})`: `close(2)` then resets the connection
/// (RST) instead of ending it (FIN), and leaves no TIME_WAIT behind.
pub fn set_linger_zero(fd: BorrowedFd<'_>) -> io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: `linger` is a valid struct linger of the size given.
    syscall!(setsockopt(
        fd.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_LINGER,
        (&raw const linger).cast(),
        size_of::<libc::linger>() as libc::socklen_t,
    ))
    .map(drop)
}

/// `poll(2)` on one fd until it is ready for `events` (POLLIN, POLLOUT):
/// true when ready, false when `timeout` passed first (None: no timeout).
/// EINTR is retried with what is left of the timeout.
pub fn poll(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let deadline = timeout.map(|t| Instant::now() + t);
    loop {
        let ms = match deadline {
            None => -1,
            Some(end) => {
                let left = end.saturating_duration_since(Instant::now());
                left.as_millis().min(libc::c_int::MAX as u128) as libc::c_int
            }
        };
        // SAFETY: `pfd` is one valid pollfd for the duration of the call.
        match syscall!(poll(&mut pfd, 1, ms)) {
            Ok(n) => return Ok(n > 0),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `kill(2)`: `signal` to process `pid` (a negative pid: to its group).
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill takes plain integers; which process a pid names is the
    // caller's concern (its own child, not yet reaped).
    syscall!(kill(pid, signal)).map(drop)
}

/// `getpid(2)`.
pub fn getpid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// `getuid(2)`.
pub fn getuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::getuid() }
}

/// `geteuid(2)`.
pub fn geteuid() -> u32 {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() }
}

/// RLIMIT_NOFILE of process `pid` (0: this one), by `prlimit(2)`: (soft, hard).
pub fn nofile_of(pid: i32) -> io::Result<(u64, u64)> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: with a null new limit, prlimit only writes `old`.
    syscall!(prlimit(
        pid,
        libc::RLIMIT_NOFILE,
        std::ptr::null(),
        &mut old
    ))?;
    Ok((old.rlim_cur, old.rlim_max))
}

/// Sets the RLIMIT_NOFILE of process `pid` (0: this one), by `prlimit(2)`.
pub fn set_nofile(pid: i32, soft: u64, hard: u64) -> io::Result<()> {
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: prlimit reads `new` and writes nothing (a null old limit).
    syscall!(prlimit(
        pid,
        libc::RLIMIT_NOFILE,
        &new,
        std::ptr::null_mut()
    ))
    .map(drop)
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (children
/// inherit it); returns the new soft limit.
pub fn raise_nofile() -> io::Result<u64> {
    let (_, hard) = nofile_of(0)?;
    set_nofile(0, hard, hard)?;
    Ok(hard)
}

/// Makes std fork and exec `command` rather than use glibc's posix_spawn,
/// whose child sets glibc's internal signals (32 and 33) to SIG_IGN, which
/// exec keeps: a daemon would start with signals ignored that systemd never
/// ignores.
pub fn fork_exec(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: an empty hook; it only selects the fork/exec path.
    unsafe {
        command.pre_exec(|| Ok(()));
    }
}
