//! The libc calls of the stand-in; the only module with `unsafe`. Those the
//! tests and the bench make too come from the shared test-side layer
//! (`tests/support`); the stand-in's own follow.
#![allow(unsafe_code)]

pub use test_support::sys::{read, shutdown_write, stdio, write};

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

fn check(res: libc::c_int) -> io::Result<libc::c_int> {
    if res == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(res)
    }
}

/// `fstat(2)`: the file type (`S_IFMT` bits), device and inode of an fd.
pub fn fstat(fd: RawFd) -> io::Result<(u32, u64, u64)> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is writable; fstat fills it on success; any fd number is
    // a valid argument.
    check(unsafe { libc::fstat(fd, st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded, so `st` is initialized.
    let st = unsafe { st.assume_init() };
    Ok((st.st_mode & libc::S_IFMT, st.st_dev, st.st_ino))
}

/// `fcntl(F_GETFL)`: whether `O_NONBLOCK` is set.
pub fn is_nonblocking(fd: RawFd) -> io::Result<bool> {
    // SAFETY: F_GETFL only reads flags; any fd number is a valid argument.
    let flags = check(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    Ok(flags & libc::O_NONBLOCK != 0)
}

/// `getsockopt(SO_TYPE)`: SOCK_STREAM, SOCK_DGRAM, ... (ENOTSOCK if not a socket).
pub fn socket_type(fd: BorrowedFd<'_>) -> io::Result<i32> {
    let mut value: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: value and len describe a writable c_int.
    check(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(value)
}

/// `shutdown(fd, SHUT_RDWR)`: the peer reads EOF and its writes fail.
pub fn shutdown_both(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: shutdown takes plain integers.
    check(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) }).map(drop)
}

/// `close(1)`, what qrexec-client-vm does at the end of the service's output
/// when it was not told that fd 0 is a socket.
pub fn close_stdout() {
    // SAFETY: fd 1 is ours; its only user (the output relay) calls this
    // when it is done with it.
    unsafe { libc::close(1) };
}

/// `poll(2)` on one fd until it is ready for `events` (POLLIN, POLLOUT).
pub fn wait_ready(fd: BorrowedFd<'_>, events: libc::c_short) -> io::Result<()> {
    test_support::sys::poll(fd, events, None).map(drop)
}

/// `kill(2)`; a child already gone is not an error here.
pub fn kill(pid: i32, signal: i32) {
    let _ = test_support::sys::kill(pid, signal);
}

/// `flock(2)`: an exclusive lock, released when the file is closed.
pub fn lock_exclusive(fd: BorrowedFd<'_>) -> io::Result<()> {
    loop {
        // SAFETY: flock takes plain integers.
        match check(unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX) }) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other.map(drop),
        }
    }
}

/// `signal(SIGPIPE, SIG_IGN)`, as qrexec-client-vm does: a peer that went
/// away is a write error, not death.
pub fn ignore_sigpipe() {
    // SAFETY: installing SIG_IGN has no handler to be sound about.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
}

fn sigset(signals: &[i32]) -> libc::sigset_t {
    let mut set = MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initializes the set; sigaddset takes valid signals.
    unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for &s in signals {
            libc::sigaddset(set.as_mut_ptr(), s);
        }
        set.assume_init()
    }
}

/// Blocks `signals` in this thread and the threads it starts, for [`wait_signal`].
pub fn block_signals(signals: &[i32]) {
    let set = sigset(signals);
    // SAFETY: set is initialized; a null old set is allowed.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
}

/// `sigwait(3)` for one of `signals` (blocked by [`block_signals`]).
pub fn wait_signal(signals: &[i32]) -> i32 {
    let set = sigset(signals);
    let mut sig = 0;
    // SAFETY: set is initialized and sig writable.
    unsafe { libc::sigwait(&set, &mut sig) };
    sig
}

/// Ends the process the way `signal` would have without our handling, so
/// that the parent sees death by that signal.
pub fn die_by(signal: i32) -> ! {
    let set = sigset(&[signal]);
    // SAFETY: default disposition, unblock, raise: plain libc calls.
    unsafe {
        libc::signal(signal, libc::SIG_DFL);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
    std::process::exit(128 + signal)
}

/// Makes `command`'s child start with no blocked signal, as qrexec-agent's
/// services do: std resets SIGPIPE in the child, but not the signal mask,
/// which exec keeps.
pub fn unblock_signals_in_child(command: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: the hook runs between fork and exec and only calls
    // sigemptyset and pthread_sigmask, which are async-signal-safe.
    unsafe {
        command.pre_exec(|| {
            let set = sigset(&[]);
            let res = libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            if res == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(res))
            }
        });
    }
}
