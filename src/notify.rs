//! `sd_notify(3)`: readiness and status messages to the service manager.
//!
//! The manager names its socket in NOTIFY_SOCKET: a path, or `@name` in the
//! abstract namespace. We take the variable out of our environment so that no
//! child can send messages on our behalf.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use crate::sys;

/// A connection to the manager's notification socket, or nothing when we
/// were not started by one.
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
}

impl Notifier {
    /// Reads and removes NOTIFY_SOCKET.
    pub fn from_env() -> io::Result<Self> {
        let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
            return Ok(Notifier { target: None });
        };
        sys::remove_env("NOTIFY_SOCKET");
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        Ok(Notifier {
            target: Some((UnixDatagram::unbound()?, addr)),
        })
    }

    /// Whether a manager listens (NOTIFY_SOCKET was set).
    pub fn is_enabled(&self) -> bool {
        self.target.is_some()
    }

    /// Sends one message, such as `READY=1` or `STATUS=...`.
    pub fn send(&self, message: &str) -> io::Result<()> {
        match &self.target {
            Some((socket, addr)) => socket.send_to_addr(message.as_bytes(), addr).map(drop),
            None => Ok(()),
        }
    }
}
