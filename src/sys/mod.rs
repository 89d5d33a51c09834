//! Every libc call of the program, wrapped so the rest of it stays safe Rust.
//!
//! This module tree is the only place where `unsafe` is allowed. Each wrapper
//! says which system call it makes; each `unsafe` block says why it is sound.
#![allow(unsafe_code)]

pub mod process;
pub mod socket;
pub mod spawn;
pub mod splice;

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// Calls a libc function and turns a `-1` result into `io::Error::last_os_error()`.
macro_rules! syscall {
    ($fn: ident ( $($arg: expr),* $(,)* ) ) => {{
        // SAFETY: the caller upholds the function's contract; see each use.
        let res = unsafe { libc::$fn($($arg, )*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}
pub(crate) use syscall;

/// `fcntl(F_GETFD)`: whether `fd` is an open descriptor of this process.
pub fn fd_is_open(fd: RawFd) -> bool {
    // F_GETFD only reads the descriptor flags; any integer is a valid argument.
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

/// `fcntl(F_SETFD, FD_CLOEXEC)`: the fd is not inherited by children.
pub fn set_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    let flags = syscall!(fcntl(fd.as_raw_fd(), libc::F_GETFD))?;
    if flags & libc::FD_CLOEXEC == 0 {
        syscall!(fcntl(
            fd.as_raw_fd(),
            libc::F_SETFD,
            flags | libc::FD_CLOEXEC
        ))?;
    }
    Ok(())
}

/// `fcntl(F_SETFL)`: sets or clears `O_NONBLOCK` on the open file description.
pub fn set_nonblocking(fd: BorrowedFd<'_>, nonblocking: bool) -> io::Result<()> {
    let flags = syscall!(fcntl(fd.as_raw_fd(), libc::F_GETFL))?;
    let new = if nonblocking {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    if new != flags {
        syscall!(fcntl(fd.as_raw_fd(), libc::F_SETFL, new))?;
    }
    Ok(())
}

/// `pipe2(O_CLOEXEC)`: (read end, write end), both blocking.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 returns.
    syscall!(pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC))?;
    // SAFETY: pipe2 returned two new descriptors that nothing else owns.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
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
