//! A SOCKS5 connection in its handshake: what it read so far, read no
//! further than the message needs (what follows the request is the
//! service's), and the replies that end it.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use super::connection::Peer;
use crate::socks::{self, Connect, MAX_REQUEST, Parsed, Refusal};
use crate::sys::socket;

/// A connection in its handshake.
pub(super) struct Handshake {
    pub(super) fd: OwnedFd,
    pub(super) peer: Peer,
    pub(super) listener: u32,
    pub(super) deadline: Instant,
    /// The greeting was answered: what comes is the request.
    pub(super) greeted: bool,
    pub(super) buf: [u8; MAX_REQUEST],
    pub(super) len: usize,
}

/// Where a handshake is after reading what there was.
pub(super) enum Progress {
    Wait,
    Ready(Connect),
    Refused(Refusal),
    /// The client closed (`None`) or the socket failed.
    Closed(Option<io::Error>),
}

impl Handshake {
    /// Reads what the client sent, no further than the message needs, and
    /// answers the greeting.
    pub(super) fn advance(&mut self) -> Progress {
        loop {
            let filled = &self.buf[..self.len];
            let need = if self.greeted {
                match socks::request(filled) {
                    Parsed::Need(n) => n,
                    Parsed::Done(connect, _) => return Progress::Ready(connect),
                    Parsed::Refused(r) => return Progress::Refused(r),
                }
            } else {
                match socks::greeting(filled) {
                    Parsed::Need(n) => n,
                    Parsed::Done((), _) => {
                        if let Err(e) = send_all(&self.fd, &socks::METHOD_ACCEPTED) {
                            return Progress::Closed(Some(e));
                        }
                        self.greeted = true;
                        self.len = 0;
                        continue;
                    }
                    Parsed::Refused(r) => return Progress::Refused(r),
                }
            };
            match socket::recv_nowait(self.fd.as_fd(), &mut self.buf[self.len..need]) {
                Ok(0) => return Progress::Closed(None),
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Progress::Closed(Some(e)),
            }
        }
    }
}

/// Sends all of a reply at once; a new socket's buffer always takes it.
pub(super) fn send_all(fd: &OwnedFd, bytes: &[u8]) -> io::Result<()> {
    match socket::send_nowait(fd.as_fd(), bytes)? {
        n if n == bytes.len() => Ok(()),
        n => Err(io::Error::other(format!(
            "sent {n} of the reply's {} bytes",
            bytes.len()
        ))),
    }
}

/// Closes a refused connection: its reply, then whatever else the client
/// sent is read away, so that the close is a FIN after the reply and not a
/// reset that could make the client lose it.
pub(super) fn close_after(fd: OwnedFd, reply: &[u8]) {
    if !reply.is_empty() && send_all(&fd, reply).is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    for _ in 0..4 {
        if !matches!(socket::recv_nowait(fd.as_fd(), &mut sink), Ok(n) if n > 0) {
            break;
        }
    }
}
