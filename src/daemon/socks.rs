//! The SOCKS5 front door (`qrexec-connect-socks`): each accepted connection
//! is held here through its handshake (`crate::socks` parses it), then
//! waits its turn among the calls starting (`starting`), gets its success
//! reply and is handed to `qrexec-client-vm QUBE qubes.ConnectTCP+PORT`
//! like any other connection: from then on the daemon holds nothing of it
//! but its route.
//!
//! Nothing here is allocated for the other applets: `Context::socks` is
//! `None` there, and a connection in handshake lives in a table of its own.
//!
//! Each handshake is bounded: in bytes (what it reads is never past the
//! request, `MAX_REQUEST` at most), in time (`HANDSHAKE_TIMEOUT` from
//! accept, whatever the client sends meanwhile), and in number
//! (`MAX_HANDSHAKES`; past it, new connections wait in the backlog).

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, info, warn};
use mio::unix::SourceFd;
use mio::{Interest, Token};

use super::connection::{Connection, Peer};
use super::handshake::{Handshake, Progress, close_after, send_all};
use super::lines::Budget;
use super::report::{self, Route};
use super::starting::Starting;
use super::table::Table;
use super::{Context, Listener};
use crate::call::{Call, Target};
use crate::socks::{self, Connect, MAX_REQUEST};
use crate::sys::process::Pid;
use crate::sys::socket::SockAddr;

/// How long a client has, from accept, to send its greeting and request.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at most.
pub(super) const MAX_HANDSHAKES: usize = 64;
/// Handshake slot `i` has token `HANDSHAKE_TOKENS + i` (listeners are below).
pub(super) const HANDSHAKE_TOKENS: usize = 1 << 30;

/// The SOCKS applet's own options.
#[derive(Debug)]
pub struct SocksOptions {
    /// Calls counted as starting at once at most (see `starting`).
    pub max_starting: usize,
    /// How long a call counts as starting, unless it ends sooner.
    pub starting_window: Duration,
}

pub(super) struct Socks {
    slots: Vec<Option<Handshake>>,
    free: Vec<usize>,
    /// Handshakes done, waiting for their turn to start, oldest first.
    queue: VecDeque<Ready>,
    starting: Starting,
    /// The route of each running connection, by its child's pid.
    routes: Table<(Target, Call)>,
}

/// A connection whose request is read, waiting to start its call.
struct Ready {
    fd: OwnedFd,
    peer: Peer,
    listener: u32,
    connect: Connect,
}

impl Socks {
    pub(super) fn new(options: &SocksOptions) -> Self {
        Socks {
            slots: Vec::with_capacity(MAX_HANDSHAKES),
            free: Vec::new(),
            queue: VecDeque::new(),
            starting: Starting::new(options.max_starting, options.starting_window),
            routes: Table::new(options.max_starting),
        }
    }

    /// Handshakes in progress and connections waiting to start.
    pub(super) fn pending(&self) -> usize {
        self.slots.len() - self.free.len() + self.queue.len()
    }

    pub(super) fn has_room(&self) -> bool {
        self.slots.len() - self.free.len() < MAX_HANDSHAKES
    }

    /// The route of the connection served by `pid`, if it came through here.
    pub(super) fn route(&self, pid: Pid) -> Option<Route<'_>> {
        self.routes
            .get(pid)
            .map(|(target, call)| Route { target, call })
    }

    /// The earliest handshake deadline, and when a place to start frees
    /// itself if a connection waits for one.
    pub(super) fn deadline(&self) -> Option<Instant> {
        let handshakes = self.slots.iter().flatten().map(|h| h.deadline).min();
        let queue = if self.queue.is_empty() {
            None
        } else {
            self.starting.deadline()
        };
        handshakes.into_iter().chain(queue).min()
    }

    /// `pid` ended: its route goes, and its place among the starting.
    pub(super) fn ended(&mut self, pid: Pid) {
        self.starting.ended(pid);
        self.routes.remove(pid);
    }

    fn insert(&mut self, handshake: Handshake) -> usize {
        match self.free.pop() {
            Some(slot) => {
                self.slots[slot] = Some(handshake);
                slot
            }
            None => {
                self.slots.push(Some(handshake));
                self.slots.len() - 1
            }
        }
    }

    fn take(&mut self, slot: usize) -> Option<Handshake> {
        let handshake = self.slots.get_mut(slot)?.take()?;
        self.free.push(slot);
        Some(handshake)
    }
}

impl Context {
    /// `listener`'s new connection begins its handshake.
    pub(super) fn begin_handshake(&mut self, listener: usize, fd: OwnedFd, addr: SockAddr) {
        let peer = Peer::of(&fd, addr);
        let Some(socks) = self.socks.as_mut() else {
            return;
        };
        let raw = fd.as_raw_fd();
        let slot = socks.insert(Handshake {
            fd,
            peer,
            listener: listener as u32,
            deadline: Instant::now() + HANDSHAKE_TIMEOUT,
            greeted: false,
            buf: [0; MAX_REQUEST],
            len: 0,
        });
        // Edge-triggered, and reported at once if the greeting is there.
        let token = Token(HANDSHAKE_TOKENS + slot);
        if let Err(e) =
            self.poll
                .registry()
                .register(&mut SourceFd(&raw), token, Interest::READABLE)
        {
            warn!("{peer} -> SOCKS5: cannot watch the connection: {e}; closed");
            socks.take(slot);
            self.counters.not_started();
        }
    }

    /// Handshake `slot` has something to read.
    pub(super) fn on_handshake(&mut self, slot: usize) {
        let Some(socks) = self.socks.as_mut() else {
            return;
        };
        let Some(handshake) = socks.slots.get_mut(slot).and_then(Option::as_mut) else {
            return; // closed earlier in this turn of the loop
        };
        let progress = handshake.advance();
        if matches!(progress, Progress::Wait) {
            return;
        }
        let handshake = socks.take(slot).expect("the slot is taken");
        let Handshake {
            fd, peer, listener, ..
        } = handshake;
        if let Err(e) = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&fd.as_raw_fd()))
        {
            debug!("cannot stop watching {peer}: {e}");
        }
        match progress {
            Progress::Wait => unreachable!(),
            Progress::Ready(connect) => {
                socks.queue.push_back(Ready {
                    fd,
                    peer,
                    listener,
                    connect,
                });
                self.start_queued();
                return;
            }
            Progress::Refused(refusal) => {
                report::handshake_refused(&peer, &refusal);
                close_after(fd, refusal.reply());
            }
            Progress::Closed(None) => {
                info!(target: "connection", "{peer} -> SOCKS5: closed by the client during the handshake");
            }
            Progress::Closed(Some(e)) => {
                info!(target: "connection", "{peer} -> SOCKS5: {e} during the handshake; closed");
            }
        }
        self.handshake_over();
    }

    /// A handshake ended without a call.
    fn handshake_over(&mut self) {
        self.counters.not_started();
        let now = Instant::now();
        self.status.changed(now);
        if self.open() == 0 {
            self.lifecycle.idle(now);
        }
        self.resume_accepting();
    }

    /// Closes the handshakes past their deadline, starts what may start.
    pub(super) fn on_socks_timers(&mut self, now: Instant) {
        let Some(socks) = self.socks.as_mut() else {
            return;
        };
        let late: Vec<usize> = (0..socks.slots.len())
            .filter(|&i| socks.slots[i].as_ref().is_some_and(|h| h.deadline <= now))
            .collect();
        for slot in late {
            let Some(socks) = self.socks.as_mut() else {
                return;
            };
            let handshake = socks.take(slot).expect("a late slot is taken");
            let _ = self
                .poll
                .registry()
                .deregister(&mut SourceFd(&handshake.fd.as_raw_fd()));
            warn!(
                target: "connection",
                "{} -> SOCKS5: no whole request within {}s ({} bytes); closed",
                handshake.peer,
                HANDSHAKE_TIMEOUT.as_secs(),
                handshake.len
            );
            self.handshake_over();
        }
        self.start_queued();
    }

    /// Starts the waiting connections that may start now, oldest first.
    pub(super) fn start_queued(&mut self) {
        let now = Instant::now();
        // Out of descriptors or processes, the waiting ones wait on.
        while self.lifecycle.is_serving() && !self.backoff.is_pausing() {
            let Some(socks) = self.socks.as_mut() else {
                return;
            };
            if socks.queue.is_empty() || !socks.starting.may_start(now) {
                return;
            }
            let ready = socks.queue.pop_front().expect("not empty");
            self.start_socks(ready, now);
        }
    }

    /// Replies success, then hands the connection to qrexec-client-vm.
    /// Success comes first: the service may speak first, and its bytes must
    /// not reach the client before the reply. Whether dom0 allows the call
    /// is known only later: a refused call is a close after success.
    fn start_socks(&mut self, ready: Ready, now: Instant) {
        let Ready {
            fd,
            peer,
            listener,
            connect: Connect { target, call },
        } = ready;
        let route = Route {
            target: &target,
            call: &call,
        };
        if let Err(e) = send_all(&fd, &socks::SUCCEEDED) {
            info!(target: "connection", "{peer} -> {target} {call}: the client left before its turn ({e})");
            self.handshake_over();
            return;
        }
        let spawned = self
            .client
            .program(&target, &call)
            .and_then(|program| crate::qrexec::spawn(&program, fd, self.stderr.theirs()));
        let pid = match spawned {
            Ok(pid) => pid,
            Err(e) => {
                report::not_started(route, &peer, &self.client.path.display(), &e);
                self.counters.not_started();
                self.status.changed(now);
                self.handshake_over();
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN)
                ) {
                    self.back_off();
                }
                return;
            }
        };
        debug!("{peer} -> {target} {call}: qrexec-client-vm pid {pid}");
        self.connections.insert(
            pid,
            Connection {
                listener,
                peer,
                started: now,
                stderr: Budget::default(),
            },
        );
        let socks = self.socks.as_mut().expect("a SOCKS connection");
        socks.starting.started(pid, now);
        socks.routes.insert(pid, (target, call));
        self.status.changed(now);
    }

    /// Stopping: the handshakes and the waiting connections are closed.
    pub(super) fn close_pending(&mut self) {
        let Some(socks) = self.socks.as_mut() else {
            return;
        };
        let closed = socks.pending();
        for slot in 0..socks.slots.len() {
            if let Some(h) = socks.take(slot) {
                let _ = self
                    .poll
                    .registry()
                    .deregister(&mut SourceFd(&h.fd.as_raw_fd()));
            }
        }
        socks.queue.clear();
        if closed > 0 {
            info!("stopping: {closed} SOCKS5 connections in handshake or waiting to start closed");
        }
    }
}

/// The route a connection's lines carry: its SOCKS destination, or its
/// listener's.
pub(super) fn route_of<'a>(
    listeners: &'a [Listener],
    socks: Option<&'a Socks>,
    pid: Pid,
    listener: u32,
) -> Route<'a> {
    if let Some(route) = socks.and_then(|s| s.route(pid)) {
        return route;
    }
    listeners[listener as usize].route()
}
