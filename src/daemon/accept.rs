//! Accepting connections and starting the qrexec-client-vm of each, within
//! `--max-connections` and the descriptors and memory there are.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::Instant;

use log::{debug, error, info};
use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::connection::{Connection, Peer};
use super::lifecycle::ACCEPT_BACKOFF;
use super::lines::Budget;
use super::{Context, report};
use crate::error::{IoContext as _, Result};
use crate::sys::socket::{self, SockAddr};

impl Context {
    /// Registers or deregisters every listener. Deregistered, new connections
    /// wait in the kernel's backlog; registering again reports them at once.
    pub(super) fn set_accepting(&mut self, on: bool) -> Result<()> {
        if on == self.accepting {
            return Ok(());
        }
        let registry = self.poll.registry();
        for (i, listener) in self.listeners.iter().enumerate() {
            let fd = listener.fd.as_raw_fd();
            let result = if on {
                registry.register(&mut SourceFd(&fd), Token(i), Interest::READABLE)
            } else {
                registry.deregister(&mut SourceFd(&fd))
            };
            result.context(|| format!("watch {}", listener.addr))?;
        }
        self.accepting = on;
        Ok(())
    }

    pub(super) fn pause_accepting(&mut self) {
        if let Err(e) = self.set_accepting(false) {
            error!("{e}, ignoring");
        }
    }

    /// Out of descriptors, processes or memory: accepting pauses a while.
    pub(super) fn back_off(&mut self) {
        self.pause_accepting();
        self.backoff.pause(Instant::now());
    }

    /// Accepts until the backlog is empty (mio is edge-triggered) or a limit is hit.
    pub(super) fn accept_all(&mut self, index: usize) {
        while self.accepting {
            let e = match socket::accept(self.listeners[index].fd.as_fd()) {
                Ok((fd, addr)) => {
                    if let Some(pauses) = self.backoff.accepted() {
                        info!(
                            "accepting again after {pauses} pauses of {} ms",
                            ACCEPT_BACKOFF.as_millis()
                        );
                    }
                    if self.socks.is_some() {
                        self.begin_handshake(index, fd, addr);
                        if !self.has_room() {
                            debug!(
                                "{} SOCKS5 connections pending, pausing accepting",
                                self.open()
                            );
                            self.pause_accepting();
                        }
                    } else {
                        self.start(index, fd, addr);
                    }
                    continue;
                }
                Err(e) => e,
            };
            match e.raw_os_error() {
                Some(libc::EAGAIN) => return,
                Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => {}
                Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                    // Once per shortage, not once per back-off: a long
                    // one would flood the journal ten lines a second.
                    let level = if self.backoff.shortage() {
                        log::Level::Warn
                    } else {
                        log::Level::Debug
                    };
                    log::log!(
                        level,
                        "cannot accept on {}: {e}; pausing for {} ms at a time until it can",
                        self.listeners[index].addr,
                        ACCEPT_BACKOFF.as_millis()
                    );
                    self.back_off();
                    return;
                }
                _ => {
                    error!(
                        "cannot accept on {}: {e}, ignoring",
                        self.listeners[index].addr
                    );
                    return;
                }
            }
        }
    }

    /// Spawns qrexec-client-vm for a new connection.
    fn start(&mut self, index: usize, fd: OwnedFd, addr: SockAddr) {
        let peer = Peer::of(&fd, addr);
        let spawned = crate::qrexec::spawn(&self.programs[index], fd, self.stderr.theirs());
        let route = self.listeners[index].route();
        let pid = match spawned {
            Ok(pid) => pid,
            Err(e) => {
                report::not_started(route, &peer, &self.client.path.display(), &e);
                self.counters.not_started();
                self.status.changed(Instant::now());
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN)
                ) {
                    self.back_off();
                }
                return;
            }
        };
        debug!(
            "{peer} -> {} {}: qrexec-client-vm pid {pid}",
            route.target, route.call
        );
        let started = Instant::now();
        self.connections.insert(
            pid,
            Connection {
                listener: index as u32,
                peer,
                started,
                stderr: Budget::default(),
            },
        );
        self.status.changed(started);
        if self.connections.len() >= self.max_connections {
            debug!(
                "{} connections open (--max-connections), pausing accepting",
                self.connections.len()
            );
            self.pause_accepting();
        }
    }
}
