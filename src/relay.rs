//! The service side's relay: stdin to a connected socket and the socket to
//! stdout, until both directions have ended.
//!
//! Blocking, one thread per direction (the caller's thread carries the
//! socket's replies, a second one carries stdin), and zero-copy: data moves
//! with `splice(2)` through a pipe, as systemd-socket-proxyd does, or straight
//! from or to stdin/stdout when they are pipes themselves. Where a file cannot
//! be spliced (EINVAL: a tty, a file opened with `O_APPEND`), that direction
//! falls back to `read(2)`/`write(2)`.
//!
//! Into a TCP socket the relay copies instead: on loopback, TCP given
//! spliced pages from a 256 KiB pipe cost ~1.5x the CPU of a plain write and
//! moved ~0.6x the bytes per second (Linux 6.18; see the commit that chose
//! it); from a 1 MiB pipe it costs the same as the write, for a pipe's worth
//! more of the user's pipe quota. Out of TCP, and both ways on Unix sockets,
//! splice is the cheaper.
//!
//! The relay's own pipe starts at the kernel's default size and grows only
//! while a transfer is bulk (`pipe_size`): pipes count against the service
//! user's quota, which idle calls must not be able to spend.
//!
//! Half-close is exact: at end of file on stdin the socket is shut down for
//! writing (`shutdown(2)`) and replies keep coming; at end of file from the
//! socket, stdout is shut down for writing if it is a socket, closed
//! otherwise, and stdin keeps going to the socket. An error in either
//! direction (a reset, EPIPE from a closed stdout; SIGPIPE is ignored by the
//! Rust runtime) ends the whole relay.

use std::io;
use std::net::Shutdown;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use crate::error::Error;
use crate::sys::{self, FileKind, socket, splice};

mod pipe_size;

use pipe_size::PipeSize;

/// A bulk transfer's pipe between the two ends of a splice, in bytes: the
/// most one `splice(2)` moves. Measured against 64 KiB (the default) and
/// 1 MiB: 64 KiB costs 10-80% more CPU per GiB, 1 MiB gains nothing
/// measurable and takes 4x the user's pipe quota (`pipe-user-pages-soft`,
/// 64 MiB by default, past which new pipes get two pages).
pub const PIPE_SIZE: usize = 256 << 10;
/// A bulk transfer's pipe out of a TCP socket. TCP hands splice its received
/// data in pieces of at most a page or two, so a larger pipe takes more of
/// them per call: 1 MiB (the unprivileged maximum) took qubes.ConnectTCPBind
/// from 1.14x the CPU per GiB of the bench's splice floor to 1.00x.
pub const TCP_PIPE_SIZE: usize = 1 << 20;
/// The kernel's default pipe size (16 pages), should `F_GETPIPE_SZ` fail.
const DEFAULT_PIPE_SIZE: usize = 64 << 10;
/// The buffer of the read/write path, per direction (64 KiB to 512 KiB
/// measured the same).
pub const COPY_SIZE: usize = 128 << 10;
/// The stack of the stdin thread: it calls only the functions below and
/// keeps its copy buffer on the heap.
const THREAD_STACK: usize = 64 << 10;

/// How the relay moves bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// splice(2), falling back to copying where a file does not support it.
    Splice,
    /// read(2)/write(2) only (for tests and measurements).
    Copy,
}

/// One side of the relay: a descriptor and the name used in messages.
pub struct End {
    pub fd: OwnedFd,
    pub name: String,
    kind: FileKind,
    /// A TCP socket: written with write(2), not splice (see the module doc).
    tcp: bool,
}

impl End {
    pub fn new(fd: OwnedFd, name: impl Into<String>) -> Self {
        let kind = sys::file_kind(fd.as_fd()).unwrap_or(FileKind::Other);
        let tcp = kind == FileKind::Socket
            && socket::socket_info(fd.as_fd()).is_ok_and(|info| {
                matches!(info.domain, libc::AF_INET | libc::AF_INET6)
                    && info.kind == libc::SOCK_STREAM
            });
        End {
            fd,
            name: name.into(),
            kind,
            tcp,
        }
    }

    fn is_pipe(&self) -> bool {
        self.kind == FileKind::Fifo
    }

    /// Tells the reader of this end that no more data comes.
    fn finish_writing(self) -> io::Result<()> {
        if self.kind == FileKind::Socket {
            match socket::shutdown(self.fd.as_fd(), Shutdown::Write) {
                // The peer is gone already: it has seen the end.
                Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => Ok(()),
                other => other,
            }
        } else {
            // The last writer of a pipe closing is its end of file.
            drop(self.fd);
            Ok(())
        }
    }
}

/// Bytes moved each way.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    /// From stdin to the socket.
    pub sent: u64,
    /// From the socket to stdout.
    pub received: u64,
}

/// Relays `input` to `socket` and `socket` to `output` until both directions
/// end. Returns the bytes moved each way, and the error that ended the relay
/// early, if one did.
pub fn run(input: End, output: End, socket: End, mode: Mode) -> (Totals, Result<(), Error>) {
    let sent = Arc::new(AtomicU64::new(0));
    let socket = Arc::new(socket);
    let stdin = {
        let (socket, sent) = (Arc::clone(&socket), Arc::clone(&sent));
        thread::Builder::new()
            .name("stdin".into())
            .stack_size(THREAD_STACK)
            .spawn(move || {
                let result = pump(&input, &socket, mode, &sent);
                let end = match &result {
                    Ok(()) => Shutdown::Write,
                    // Wake the other direction, so that the relay ends now.
                    Err(_) => Shutdown::Both,
                };
                let _ = socket::shutdown(socket.fd.as_fd(), end);
                result
            })
    };
    let stdin = match stdin {
        Ok(handle) => handle,
        Err(e) => return (Totals::default(), Err(Error::io("start a thread", e))),
    };
    let received = AtomicU64::new(0);
    let back = pump(&socket, &output, mode, &received);
    let totals = || Totals {
        sent: sent.load(Ordering::Relaxed),
        received: received.load(Ordering::Relaxed),
    };
    // Nothing can reach stdin's reader any more: it need not finish first.
    if let Err(e) = back {
        return (totals(), Err(e));
    }
    let name = output.name.clone();
    if let Err(e) = output.finish_writing() {
        return (totals(), Err(Error::io(format!("shut down {name}"), e)));
    }
    let result = match stdin.join() {
        Ok(result) => result,
        Err(_) => Err(Error::io(
            "relay stdin",
            io::Error::other("the stdin thread panicked"),
        )),
    };
    (totals(), result)
}

/// Moves everything from `from` to `to` until end of file, counting in `moved`.
fn pump(from: &End, to: &End, mode: Mode, moved: &AtomicU64) -> Result<(), Error> {
    if mode == Mode::Splice && !to.tcp {
        let spliced = if from.is_pipe() || to.is_pipe() {
            splice_direct(from, to, moved)
        } else {
            splice_through_pipe(from, to, moved)
        };
        match spliced? {
            Spliced::Eof => return Ok(()),
            Spliced::Unsupported => {}
        }
    }
    let mut buf = vec![0; COPY_SIZE];
    copy(from, to, &mut buf, moved)
}

/// How a splice loop ended without an error.
enum Spliced {
    Eof,
    /// A file does not support splice; nothing is left in between.
    Unsupported,
}

fn is_unsupported(e: &io::Error) -> bool {
    e.raw_os_error() == Some(libc::EINVAL)
}

/// One of the ends is a pipe: splice straight between them.
fn splice_direct(from: &End, to: &End, moved: &AtomicU64) -> Result<Spliced, Error> {
    loop {
        match splice::splice(from.fd.as_fd(), to.fd.as_fd(), PIPE_SIZE) {
            Ok(0) => return Ok(Spliced::Eof),
            Ok(n) => {
                moved.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_unsupported(&e) => return Ok(Spliced::Unsupported),
            Err(e) => {
                return Err(Error::io(format!("relay {} to {}", from.name, to.name), e));
            }
        }
    }
}

/// Neither end is a pipe: splice into a pipe of our own, then out of it.
///
/// While the pipe is grown, a receive timeout on the source (`SO_RCVTIMEO`,
/// which splice honours) tells when it has been idle for `pipe_size::IDLE`:
/// the blocking splice fails with EAGAIN and the pipe shrinks back, at no
/// cost per splice. A source that takes no timeout (not a socket) is asked
/// with `poll(2)` after each splice instead.
fn splice_through_pipe(from: &End, to: &End, moved: &AtomicU64) -> Result<Spliced, Error> {
    let (pipe_out, pipe_in) = sys::pipe().map_err(|e| Error::io("create a pipe", e))?;
    let initial = splice::pipe_size(pipe_in.as_fd()).unwrap_or(DEFAULT_PIPE_SIZE);
    let bulk = if from.tcp { TCP_PIPE_SIZE } else { PIPE_SIZE };
    let mut size = PipeSize::new(initial, bulk);
    let timeouts = from.kind == FileKind::Socket;
    loop {
        let n = match splice::splice(from.fd.as_fd(), pipe_in.as_fd(), size.capacity()) {
            Ok(0) => return Ok(Spliced::Eof),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && timeouts && size.is_grown() => {
                // Idle for IDLE with a grown, empty pipe: give it back.
                if let Some(capacity) = size.idle() {
                    size.set(splice::set_pipe_size(pipe_in.as_fd(), capacity));
                }
                set_idle_timeout(from, false);
                continue;
            }
            Err(e) if is_unsupported(&e) => return Ok(Spliced::Unsupported),
            Err(e) => return Err(Error::io(format!("read from {}", from.name), e)),
        };
        if !drain(&pipe_out, from, to, n, moved)? {
            // The copying that follows must wait for ever.
            set_idle_timeout(from, false);
            return Ok(Spliced::Unsupported);
        }
        let idle = || {
            // With a receive timeout, the next splice finds out itself.
            !timeouts && {
                let readable = sys::poll_one(from.fd.as_fd(), libc::POLLIN, Some(pipe_size::IDLE));
                matches!(readable, Ok(false))
            }
        };
        let was_grown = size.is_grown();
        if let Some(capacity) = size.next(n, idle) {
            // The pipe is empty: any size holds it. A refusal (the user's
            // pipe quota) only costs speed.
            size.set(splice::set_pipe_size(pipe_in.as_fd(), capacity));
        }
        if timeouts && size.is_grown() != was_grown {
            set_idle_timeout(from, size.is_grown());
        }
    }
}

/// Arms (or disarms) the receive timeout that tells a grown pipe's source
/// is idle. Should it fail, the pipe only stays grown while the call lasts.
fn set_idle_timeout(from: &End, on: bool) {
    let timeout = on.then_some(pipe_size::IDLE);
    let _ = socket::set_recv_timeout(from.fd.as_fd(), timeout);
}

/// Splices the `len` bytes in our pipe out to `to`: `true`. Where `to` does
/// not support splice, they go out by copying: `false`.
fn drain(
    pipe_out: &OwnedFd,
    from: &End,
    to: &End,
    len: usize,
    moved: &AtomicU64,
) -> Result<bool, Error> {
    let mut left = len;
    while left > 0 {
        match splice::splice(pipe_out.as_fd(), to.fd.as_fd(), left) {
            Ok(0) => {
                let e = io::Error::from(io::ErrorKind::WriteZero);
                return Err(Error::io(format!("write to {}", to.name), e));
            }
            Ok(m) => {
                left -= m;
                moved.fetch_add(m as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_unsupported(&e) => {
                let pipe = pipe_out
                    .try_clone()
                    .map_err(|e| Error::io("duplicate a pipe", e))?;
                let pipe = End {
                    fd: pipe,
                    name: from.name.clone(),
                    kind: FileKind::Fifo,
                    tcp: false,
                };
                let mut buf = vec![0; left.min(COPY_SIZE)];
                copy_exact(&pipe, to, &mut buf, left, moved)?;
                return Ok(false);
            }
            Err(e) => return Err(Error::io(format!("write to {}", to.name), e)),
        }
    }
    Ok(true)
}

/// Copies through user space until end of file on `from`.
fn copy(from: &End, to: &End, buf: &mut [u8], moved: &AtomicU64) -> Result<(), Error> {
    loop {
        let n = read(from, buf)?;
        if n == 0 {
            return Ok(());
        }
        write_all(to, &buf[..n], moved)?;
    }
}

/// Copies exactly `len` bytes that are known to be waiting in `from`.
fn copy_exact(
    from: &End,
    to: &End,
    buf: &mut [u8],
    mut len: usize,
    moved: &AtomicU64,
) -> Result<(), Error> {
    while len > 0 {
        let want = len.min(buf.len());
        let n = read(from, &mut buf[..want])?;
        if n == 0 {
            let e = io::Error::from(io::ErrorKind::UnexpectedEof);
            return Err(Error::io(format!("read from {}", from.name), e));
        }
        write_all(to, &buf[..n], moved)?;
        len -= n;
    }
    Ok(())
}

fn read(from: &End, buf: &mut [u8]) -> Result<usize, Error> {
    loop {
        match sys::read(from.fd.as_fd(), buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other.map_err(|e| Error::io(format!("read from {}", from.name), e)),
        }
    }
}

fn write_all(to: &End, mut buf: &[u8], moved: &AtomicU64) -> Result<(), Error> {
    let fd: BorrowedFd<'_> = to.fd.as_fd();
    while !buf.is_empty() {
        match sys::write(fd, buf) {
            Ok(0) => {
                let e = io::Error::from(io::ErrorKind::WriteZero);
                return Err(Error::io(format!("write to {}", to.name), e));
            }
            Ok(n) => {
                buf = &buf[n..];
                moved.fetch_add(n as u64, Ordering::Relaxed);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io(format!("write to {}", to.name), e)),
        }
    }
    Ok(())
}
