//! Every libc call of the program, wrapped so the rest of it stays safe Rust.
//!
//! This module tree is the only place where `unsafe` is allowed. Each wrapper
//! says in its doc which system call it makes (as socket2 does), and each
//! unsafe operation carries a `// SAFETY:` line saying why it is sound.
//!
//! Most calls go through [`syscall!`], which hides its `unsafe` block inside
//! the macro: the block cannot know what the call needs (a writable buffer of
//! the length passed, an fd that stays open, ...), so every use of the macro
//! has its own `// SAFETY:` line on the line above it, as an explicit
//! `unsafe` block would.
//!
//! Man pages: fcntl(2), pipe(2), fstat(2), read(2), write(2), poll(2).
#![allow(unsafe_code)]

pub mod process;
mod sockaddr;
pub mod socket;
pub mod spawn;
pub mod splice;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

/// Calls a libc function and turns a `-1` result into `io::Error::last_os_error()`.
///
/// Each use carries a `// SAFETY:` line above it: what the call's arguments
/// must be is the caller's to show, not the macro's.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: stated at each use of the macro, on the line above it.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// Takes ownership of the two descriptors a `pipe2(2)` or `socketpair(2)`
/// just returned in `fds`.
///
/// # Safety
/// Both must be new descriptors that nothing else owns.
unsafe fn owned_pair(fds: [libc::c_int; 2]) -> (OwnedFd, OwnedFd) {
    // SAFETY: the caller passes two open descriptors that are ours alone.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// `pipe2(flags | O_CLOEXEC)`: a new pipe, as (read end, write end).
fn pipe_with(flags: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1; 2];
    // SAFETY: `fds` is a writable array of two ints, as pipe2 requires.
    syscall!(pipe2(fds.as_mut_ptr(), flags | libc::O_CLOEXEC))?;
    // SAFETY: pipe2 succeeded: two new descriptors that nothing else owns.
    Ok(unsafe { owned_pair(fds) })
}

/// `pipe2(O_CLOEXEC)`: a new pipe, as (read end, write end), both blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    pipe_with(0)
}

/// `fcntl(F_GETFD)`: whether `fd` is an open descriptor of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // SAFETY: F_GETFD only reads the descriptor flags; any integer is a
    // valid argument (a closed one is EBADF).
    syscall!(fcntl(fd, libc::F_GETFD)).is_ok()
}

/// Takes ownership of a descriptor inherited from our parent (sd_listen_fds).
///
/// The caller must pass each inherited fd once, after checking it is open.
pub fn take_inherited_fd(fd: RawFd) -> OwnedFd {
    debug_assert!(fd_is_open(fd));
    // SAFETY: the fd is open (checked by the caller) and nothing else in the
    // process owns it: it was inherited across exec and is taken exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Which flags of a descriptor `update_flags` changes: those of the
/// descriptor itself (`F_GETFD`/`F_SETFD`: `FD_CLOEXEC`) or those of its
/// open file description (`F_GETFL`/`F_SETFL`: `O_NONBLOCK`, ...).
#[derive(Clone, Copy)]
enum Flags {
    Fd,
    Fl,
}

/// `fcntl(F_GETFD|F_GETFL)`, then `fcntl(F_SETFD|F_SETFL)` with
/// `update(flags)`, only if that differs.
fn update_flags(
    fd: BorrowedFd<'_>,
    which: Flags,
    update: impl FnOnce(libc::c_int) -> libc::c_int,
) -> io::Result<()> {
    let (get, set) = match which {
        Flags::Fd => (libc::F_GETFD, libc::F_SETFD),
        Flags::Fl => (libc::F_GETFL, libc::F_SETFL),
    };
    // SAFETY: F_GETFD and F_GETFL take no argument and only read flags.
    let flags = syscall!(fcntl(fd.as_raw_fd(), get))?;
    let new = update(flags);
    if new != flags {
        // SAFETY: F_SETFD and F_SETFL take an int and change only flags of
        // an fd that `fd` keeps open.
        syscall!(fcntl(fd.as_raw_fd(), set, new))?;
    }
    Ok(())
}

/// `fcntl(F_SETFD, FD_CLOEXEC)`: the fd is not inherited by children.
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    update_flags(fd, Flags::Fd, |flags| flags | libc::FD_CLOEXEC)
}

/// `fcntl(F_SETFL)`: sets or clears `O_NONBLOCK` on the open file description.
pub fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    update_flags(fd, Flags::Fl, |flags| {
        if nonblocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        }
    })
}

/// `poll(2)` of one descriptor for `events` (`POLLIN`, `POLLOUT`), at most
/// `timeout` (`None`: without limit). Whether it became ready (or hung up,
/// or failed: the next call on it says how); `Err(Interrupted)` on a signal.
pub fn poll_one(
    fd: BorrowedFd<'_>,
    events: libc::c_short,
    timeout: Option<Duration>,
) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events,
        revents: 0,
    };
    let timeout = timeout.map_or(-1, |t| {
        libc::c_int::try_from(t.as_millis()).unwrap_or(libc::c_int::MAX)
    });
    // SAFETY: `pfd` is one valid, writable pollfd for the duration of the call.
    let n = syscall!(poll(&mut pfd, 1, timeout))?;
    Ok(n > 0)
}

/// What kind of file an fd refers to, from `fstat(2)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileKind {
    Socket,
    Fifo,
    Regular,
    CharDevice,
    Other,
}

/// `fstat(2)`: the file type of `fd`.
pub fn file_kind(fd: BorrowedFd<'_>) -> io::Result<FileKind> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is valid for writes of a `stat`; fstat fills it on success.
    syscall!(fstat(fd.as_raw_fd(), st.as_mut_ptr()))?;
    // SAFETY: fstat returned 0, so it initialized `st`.
    let mode = unsafe { st.assume_init() }.st_mode & libc::S_IFMT;
    Ok(match mode {
        libc::S_IFSOCK => FileKind::Socket,
        libc::S_IFIFO => FileKind::Fifo,
        libc::S_IFREG => FileKind::Regular,
        libc::S_IFCHR => FileKind::CharDevice,
        _ => FileKind::Other,
    })
}

/// `read(2)` into `buf`.
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of `buf.len()` bytes.
    let n = syscall!(read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()))?;
    Ok(n as usize)
}

/// `write(2)` from `buf`; may write less than all of it.
pub fn write(fd: BorrowedFd<'_>, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for reads of `buf.len()` bytes.
    let n = syscall!(write(fd.as_raw_fd(), buf.as_ptr().cast(), buf.len()))?;
    Ok(n as usize)
}

/// Removes a variable from our own environment (`unsetenv(3)`).
///
/// Only for start-up, before the program starts any thread: the environment
/// is not synchronized.
pub fn remove_env(name: &str) {
    // SAFETY: called from the main thread during start-up, before any other
    // thread exists (the client applets never start one), so nothing reads the
    // environment concurrently.
    unsafe { std::env::remove_var(name) }
}

/// `mallopt(M_ARENA_MAX, 1)`: every thread allocates from the main arena.
///
/// glibc gives a new thread an arena of its own at its first allocation (std
/// makes one while starting the thread), mapping 128 MiB of address space and
/// trimming it: about a tenth of a millisecond on the service relay's path to
/// its first byte, for a thread that then allocates almost nothing.
pub fn single_malloc_arena() {
    // SAFETY: mallopt only sets an allocator parameter; called before the
    // process starts its second thread.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn fcntl_get(fd: BorrowedFd<'_>, get: libc::c_int) -> libc::c_int {
        // SAFETY: F_GETFD and F_GETFL take no argument and only read flags.
        syscall!(fcntl(fd.as_raw_fd(), get)).unwrap()
    }

    #[test]
    fn flags_are_updated_and_kept() {
        let (read, write) = pipe().unwrap();
        assert_ne!(fcntl_get(read.as_fd(), libc::F_GETFD) & libc::FD_CLOEXEC, 0);
        assert_eq!(fcntl_get(read.as_fd(), libc::F_GETFL) & libc::O_NONBLOCK, 0);
        set_nonblocking(read.as_fd(), true).unwrap();
        set_cloexec(read.as_fd()).unwrap();
        let fl = fcntl_get(read.as_fd(), libc::F_GETFL);
        assert_eq!(fl & (libc::O_NONBLOCK | libc::O_ACCMODE), libc::O_NONBLOCK);
        assert_ne!(fcntl_get(read.as_fd(), libc::F_GETFD) & libc::FD_CLOEXEC, 0);
        let mut buf = [0; 4];
        assert_eq!(
            super::read(read.as_fd(), &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        set_nonblocking(read.as_fd(), false).unwrap();
        assert_eq!(fcntl_get(read.as_fd(), libc::F_GETFL) & libc::O_NONBLOCK, 0);
        drop(write);
        assert_eq!(super::read(read.as_fd(), &mut buf).unwrap(), 0);
    }

    #[test]
    fn poll_one_waits_for_readiness() {
        let (read, write) = pipe().unwrap();
        let zero = Some(Duration::ZERO);
        assert!(!poll_one(read.as_fd(), libc::POLLIN, zero).unwrap());
        assert!(poll_one(write.as_fd(), libc::POLLOUT, zero).unwrap());
        assert_eq!(super::write(write.as_fd(), b"x").unwrap(), 1);
        assert!(poll_one(read.as_fd(), libc::POLLIN, None).unwrap());
    }
}
