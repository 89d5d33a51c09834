//! Zero-copy transfer between descriptors: `splice(2)` and the pipe-size
//! `fcntl(2)`s (`F_GETPIPE_SZ`, `F_SETPIPE_SZ`); the pipe itself is
//! `sys::pipe`.
//!
//! splice(2) moves pages between a pipe and another file without copying
//! them through user space; one of its two ends must be a pipe.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::syscall;

/// `fcntl(F_GETPIPE_SZ)`: the capacity of a pipe, in bytes.
pub fn pipe_size(pipe: BorrowedFd<'_>) -> io::Result<usize> {
    // SAFETY: F_GETPIPE_SZ takes no argument and only reads the capacity.
    let size = syscall!(fcntl(pipe.as_raw_fd(), libc::F_GETPIPE_SZ))?;
    Ok(size as usize)
}

/// `fcntl(F_SETPIPE_SZ)`: asks for a pipe buffer of `size` bytes and returns
/// the size the kernel gave (rounded up to a power-of-two number of pages).
///
/// Unprivileged processes get at most `/proc/sys/fs/pipe-max-size` (EPERM
/// above it), and no more than they have once the user's pipes hold
/// `pipe-user-pages-soft` (EPERM); a pipe shrinks only to a size that holds
/// what is in it (EBUSY).
pub fn set_pipe_size(pipe: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size =
        libc::c_int::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: F_SETPIPE_SZ takes an int and changes only the pipe's capacity.
    let got = syscall!(fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, size))?;
    Ok(got as usize)
}

/// `splice(2)` of up to `len` bytes from `from` to `to` (one of them a pipe),
/// blocking as the descriptors are; `Ok(0)` is end of file on `from`.
///
/// EINVAL means one of the files does not support splice (a tty, a file
/// opened with `O_APPEND`, ...): the caller copies through user space instead.
pub fn splice(from: BorrowedFd<'_>, to: BorrowedFd<'_>, len: usize) -> io::Result<usize> {
    // SAFETY: both fds stay open for the call (borrowed); null offsets are
    // allowed and mean each file is used at (and advances) its own position.
    let n = syscall!(splice(
        from.as_raw_fd(),
        std::ptr::null_mut(),
        to.as_raw_fd(),
        std::ptr::null_mut(),
        len,
        libc::SPLICE_F_MOVE
    ))?;
    Ok(n as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::pipe;
    use std::os::fd::AsFd;

    #[test]
    fn moves_bytes_between_pipes() {
        let (a_read, a_write) = pipe().unwrap();
        let (b_read, b_write) = pipe().unwrap();
        assert!(set_pipe_size(a_write.as_fd(), 1 << 17).unwrap() >= 1 << 17);
        assert!(pipe_size(a_read.as_fd()).unwrap() >= 1 << 17);
        assert_eq!(crate::sys::write(a_write.as_fd(), b"hello").unwrap(), 5);
        assert_eq!(splice(a_read.as_fd(), b_write.as_fd(), 1 << 16).unwrap(), 5);
        let mut buf = [0; 16];
        assert_eq!(crate::sys::read(b_read.as_fd(), &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        drop(a_write);
        assert_eq!(splice(a_read.as_fd(), b_write.as_fd(), 1 << 16).unwrap(), 0);
    }

    #[test]
    fn a_pipe_shrinks_back_when_empty() {
        let (read, write) = pipe().unwrap();
        let default = pipe_size(read.as_fd()).unwrap();
        assert!(set_pipe_size(write.as_fd(), 4 * default).unwrap() >= 4 * default);
        assert_eq!(set_pipe_size(write.as_fd(), default).unwrap(), default);
        assert_eq!(pipe_size(read.as_fd()).unwrap(), default);
    }
}
