//! A connection's life in the daemon: who connected, the child that serves
//! it, and the one path by which it ends (`release`).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use log::{debug, error};

use super::Context;
use super::lifecycle::Step;
use super::lines::Budget;
use super::report;
use crate::qrexec::Outcome;
use crate::sys::process::{self, Exit, Pid};
use crate::sys::socket::{self, SockAddr};

/// Who connected, kept small (20 bytes): 1,000 open connections must cost
/// little memory.
#[derive(Clone, Copy)]
pub(super) enum Peer {
    V4 {
        ip: [u8; 4],
        port: u16,
    },
    V6 {
        ip: [u8; 16],
        port: u16,
    },
    /// A Unix socket client, by its process (`SO_PEERCRED`).
    Process {
        pid: Pid,
        uid: u32,
    },
    Vsock {
        cid: u32,
        port: u32,
    },
    Unknown,
}

impl Peer {
    pub(super) fn of(fd: &OwnedFd, addr: SockAddr) -> Self {
        match addr {
            SockAddr::Inet(SocketAddr::V4(a)) => Peer::V4 {
                ip: a.ip().octets(),
                port: a.port(),
            },
            SockAddr::Inet(SocketAddr::V6(a)) => Peer::V6 {
                ip: a.ip().octets(),
                port: a.port(),
            },
            SockAddr::Vsock { cid, port } => Peer::Vsock { cid, port },
            SockAddr::UnixPath(_) | SockAddr::UnixAbstract(_) | SockAddr::UnixUnnamed => {
                match socket::peer_cred(fd.as_fd()) {
                    Ok(c) => Peer::Process {
                        pid: c.pid,
                        uid: c.uid,
                    },
                    Err(_) => Peer::Unknown,
                }
            }
            SockAddr::Other(_) => Peer::Unknown,
        }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Peer::V4 { ip, port } => SocketAddrV4::new(Ipv4Addr::from(ip), port).fmt(f),
            Peer::V6 { ip, port } => SocketAddrV6::new(Ipv6Addr::from(ip), port, 0, 0).fmt(f),
            Peer::Process { pid, uid } => write!(f, "pid {pid} uid {uid}"),
            Peer::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Peer::Unknown => f.write_str("unknown peer"),
        }
    }
}

/// One open connection, found in the table by its child's pid. The daemon
/// holds no descriptor for it (see `daemon`); the start of an unfinished
/// stderr line waits with the stderr reader.
pub(super) struct Connection {
    pub(super) listener: u32,
    pub(super) peer: Peer,
    pub(super) started: Instant,
    /// What its child wrote to stderr, and how much was logged.
    pub(super) stderr: Budget,
}

impl Context {
    /// Reaps every child that has ended (after SIGCHLD) and releases its connection.
    pub(super) fn reap(&mut self) {
        // Kept between calls: an allocation per connection would walk the heap.
        let mut ended = std::mem::take(&mut self.ended);
        loop {
            match process::try_wait_any() {
                Ok(Some(child)) => ended.push(child),
                Ok(None) => break,
                Err(e) => {
                    error!("cannot reap children: {e}");
                    break;
                }
            }
        }
        if !ended.is_empty() {
            // All they wrote is in the socket now.
            self.read_stderr_queued();
            for (pid, exit) in ended.drain(..) {
                self.release(pid, exit);
            }
            // Only once every reaped pid is released: a child started here
            // may get the pid of one reaped in the same batch.
            self.start_queued();
        }
        self.ended = ended;
    }

    /// The one place a connection ends: the rest of its stderr and its end
    /// line, the counters, and accepting again if the limit had stopped it.
    fn release(&mut self, pid: Pid, exit: Exit) {
        let Some(mut conn) = self.connections.remove(pid) else {
            debug!("reaped pid {pid}, not a connection's");
            return;
        };
        let route =
            super::socks::route_of(&self.listeners, self.socks.as_deref(), pid, conn.listener);
        let mut partial = self.stderr.take_partial(pid);
        let outcome = Outcome {
            exit,
            target: route.target,
        };
        report::ended(
            route,
            &conn.peer,
            &mut conn.stderr,
            &mut partial,
            &outcome,
            conn.started,
        );
        self.counters.ended(&outcome);
        if outcome.is_refusal() {
            self.hints.refused(route);
        }
        if let Some(socks) = self.socks.as_mut() {
            socks.ended(pid);
        }
        let now = Instant::now();
        if self.open() == 0 {
            self.lifecycle.idle(now);
        }
        self.status.changed(now);
        self.resume_accepting();
    }

    /// Does what the lifecycle says about the children.
    pub(super) fn end_children(&mut self, step: &Step) {
        match step {
            Step::Terminate => self.signal_children(libc::SIGTERM),
            Step::Kill => {
                self.signal_children(libc::SIGKILL);
                self.reap_all_blocking();
            }
            Step::Continue | Step::Exit => {}
        }
    }

    fn signal_children(&self, signal: i32) {
        for pid in self.connections.pids() {
            if let Err(e) = process::kill(pid, signal) {
                debug!("cannot signal pid {pid}: {e}");
            }
        }
    }

    /// After SIGKILL: every child ends at once, so waiting cannot hang.
    fn reap_all_blocking(&mut self) {
        let ended: Vec<(Pid, Exit)> = self
            .connections
            .pids()
            .map(|pid| {
                let exit = process::wait(pid).unwrap_or(Exit::Signal(libc::SIGKILL));
                (pid, exit)
            })
            .collect();
        self.read_stderr_queued();
        for (pid, exit) in ended {
            self.release(pid, exit);
        }
    }
}

// Stored per connection: keep them small.
const _: () = assert!(size_of::<Peer>() <= 20);
const _: () = assert!(size_of::<Option<Connection>>() <= 56);
