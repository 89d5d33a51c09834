//! The client-side event loop: accept on every passed socket, hand each
//! connection to its own qrexec-client-vm, log how it ended.
//!
//! One `mio::Poll` in one thread watches the listeners, the children's
//! stderr, and a self-pipe for SIGCHLD (children are reaped with a
//! non-blocking `waitpid` loop) and SIGTERM/SIGINT/SIGHUP/SIGPIPE.
//!
//! The daemon holds no descriptor per open connection. The accepted socket
//! is the child's stdin and stdout, and the daemon's copy is closed as soon
//! as the child runs. Every child's stderr is the same Unix stream socket,
//! whose reads say which process wrote (`SO_PASSCRED`): a pipe per child
//! would be one more descriptor for each spawn to copy (the kernel takes a
//! reference to every open file of the parent at each `clone`): 7% of the
//! daemon's time at 64 connections at once (`dup_fd` under perf).
//!
//! Here: the loop, its tokens and signals. `accept`: accepting and starting
//! children; `connection` and `table`: a connection's life and the table of
//! open ones by pid; `stderr` and `lines`: the children's stderr as log
//! lines; `report`: a connection's log lines; `lifecycle`: draining, idle
//! exit and back-off; `status`: STATUS= and its counters; `hint`: the dom0
//! policy line after a refusal; `accepted`: Accept=yes; `socks`,
//! `handshake` and `starting`: the SOCKS5 front door, its handshakes and its
//! limit on calls starting at once.

mod accept;
mod accepted;
mod connection;
mod handshake;
mod hint;
mod lifecycle;
mod lines;
mod report;
mod socks;
mod starting;
mod status;
mod stderr;
mod table;

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

pub use accepted::{Accepted, serve_one};
pub use socks::SocksOptions;

use crate::call::{Call, Target};
use crate::error::{IoContext as _, Result};
use crate::notify::Notifier;
use crate::qrexec::Client;
use crate::sys::process::{Exit, Pid, SignalPipe, signal_name};
use crate::sys::socket::SockAddr;
use crate::sys::spawn::Program;
use connection::Connection;
use hint::Hints;
use lifecycle::{Backoff, Lifecycle, Step};
use report::Route;
use socks::{HANDSHAKE_TOKENS, Socks};
use status::{Counters, Status};
use stderr::SharedStderr;
use table::Table;

/// Listener `i` has token `i`.
const SIGNALS: Token = Token(usize::MAX - 1);
const STDERR: Token = Token(usize::MAX - 2);
/// Reads of the children's stderr per turn of the loop: a child that writes
/// without pause must not keep the loop from accepting.
const STDERR_READS: usize = 64;
/// Signals read at once from the self-pipe.
const SIGNAL_BATCH: usize = 64;

/// What the command line decided.
#[derive(Debug)]
pub struct Options {
    pub max_connections: usize,
    pub drain_timeout: Duration,
    pub exit_idle_time: Option<Duration>,
}

/// A listening socket and where its connections go.
pub struct Listener {
    pub fd: OwnedFd,
    pub addr: SockAddr,
    pub target: Target,
    pub call: Call,
    /// Where its name came from when not from systemd, such as
    /// `drop-in work.conf` (crate::dropin); said in its log line.
    pub source: Option<String>,
}

impl Listener {
    fn route(&self) -> Route<'_> {
        Route {
            target: &self.target,
            call: &self.call,
        }
    }
}

struct Context {
    poll: Poll,
    signals: SignalPipe,
    stderr: SharedStderr,
    listeners: Vec<Listener>,
    /// One prepared qrexec-client-vm command line per listener.
    programs: Vec<Program>,
    connections: Table<Connection>,
    /// Children reaped and not yet released (kept to reuse its allocation).
    ended: Vec<(Pid, Exit)>,
    client: Client,
    max_connections: usize,
    notifier: Notifier,
    counters: Counters,
    status: Status,
    /// Listeners are registered with the poll.
    accepting: bool,
    backoff: Backoff,
    lifecycle: Lifecycle,
    /// SIGPIPE is logged once (see on_signals).
    sigpipe_logged: bool,
    /// The policy lines logged after refusals.
    hints: Hints,
    /// The SOCKS5 front door's state; `None` for every other applet.
    socks: Option<Box<Socks>>,
}

/// Serves the listeners until a signal or idleness ends the daemon.
pub fn run(
    listeners: Vec<Listener>,
    client: Client,
    options: Options,
    notifier: Notifier,
) -> Result<()> {
    serve(listeners, client, options, None, notifier)
}

/// Serves the listeners as SOCKS5 proxies: each connection's handshake
/// names its qube and port (the listeners' own target and call are unused).
pub fn run_socks(
    listeners: Vec<Listener>,
    client: Client,
    options: Options,
    socks: SocksOptions,
    notifier: Notifier,
) -> Result<()> {
    serve(listeners, client, options, Some(socks), notifier)
}

fn serve(
    listeners: Vec<Listener>,
    client: Client,
    options: Options,
    socks: Option<SocksOptions>,
    notifier: Notifier,
) -> Result<()> {
    let poll = Poll::new().context(|| "create the event loop".into())?;
    let signals = watch_signals(&poll)?;
    // Only now that SIGTERM is handled: a manager that sees these lines may
    // stop us at once, and must get a clean exit.
    log_listeners(&listeners, socks.as_ref());
    let stderr = SharedStderr::new(poll.registry(), STDERR)
        .context(|| "create the children's stderr".into())?;
    // The SOCKS listeners' calls come from each handshake.
    let programs = match socks {
        Some(_) => Vec::new(),
        None => prepare(&listeners, &client)?,
    };
    for listener in &listeners {
        crate::sys::set_nonblocking(listener.fd.as_fd(), true)
            .context(|| format!("make fd {} non-blocking", listener.fd.as_raw_fd()))?;
    }
    let mut cx = Context {
        poll,
        signals,
        stderr,
        programs,
        listeners,
        connections: Table::new(options.max_connections),
        ended: Vec::new(),
        client,
        max_connections: options.max_connections,
        status: Status::new(notifier.is_enabled()),
        notifier,
        counters: Counters::default(),
        accepting: false,
        backoff: Backoff::default(),
        lifecycle: Lifecycle::new(&options, Instant::now()),
        sigpipe_logged: false,
        hints: Hints::default(),
        socks: socks.map(|s| Box::new(Socks::new(&s))),
    };
    cx.set_accepting(true)?;
    cx.notify("READY=1");
    let result = cx.event_loop();
    cx.stderr.close();
    result
}

/// The signals the loop handles, as a self-pipe it watches.
fn watch_signals(poll: &Poll) -> Result<SignalPipe> {
    let signals = SignalPipe::new(&[
        libc::SIGCHLD,
        libc::SIGTERM,
        libc::SIGINT,
        libc::SIGHUP,
        libc::SIGPIPE,
    ])
    .context(|| "set up signal handling".into())?;
    poll.registry()
        .register(
            &mut SourceFd(&signals.as_fd().as_raw_fd()),
            SIGNALS,
            Interest::READABLE,
        )
        .context(|| "watch signals".into())?;
    Ok(signals)
}

/// One line per listener: where its connections go.
fn log_listeners(listeners: &[Listener], socks: Option<&SocksOptions>) {
    for l in listeners {
        match socks {
            None => {
                let source = l.source.as_ref().map(|s| format!(" ({s})"));
                let source = source.as_deref().unwrap_or_default();
                info!(target: "listener", "{} -> {} {}{source}", l.addr, l.target, l.call);
            }
            Some(s) => info!(
                target: "listener",
                "{} -> SOCKS5 CONNECT QUBE.qube:PORT -> QUBE qubes.ConnectTCP+PORT, {} calls starting at once at most",
                l.addr, s.max_starting
            ),
        }
    }
}

/// One prepared qrexec-client-vm command line per listener.
fn prepare(listeners: &[Listener], client: &Client) -> Result<Vec<Program>> {
    listeners
        .iter()
        .map(|l| client.program(&l.target, &l.call))
        .collect::<io::Result<Vec<_>>>()
        .context(|| format!("prepare {}", client.path.display()))
}

impl Context {
    fn event_loop(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = if self.stderr.pending {
                Some(Duration::ZERO)
            } else {
                self.next_deadline()
                    .map(|d| d.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(crate::error::Error::io("wait for events", e));
            }
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signals(),
                    STDERR => self.stderr.pending = true,
                    Token(i) if i >= HANDSHAKE_TOKENS => self.on_handshake(i - HANDSHAKE_TOKENS),
                    Token(i) => self.accept_all(i),
                }
            }
            if self.stderr.pending {
                self.stderr.pending = !self.read_stderr(STDERR_READS);
            }
            if self.on_timers()? {
                return Ok(());
            }
        }
    }

    /// The earliest moment a timer needs the loop to wake up.
    fn next_deadline(&self) -> Option<Instant> {
        [
            self.backoff.deadline(),
            self.lifecycle.deadline(self.open()),
            self.status.deadline(),
            self.socks.as_ref().and_then(|s| s.deadline()),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Acts on the timers that are due; `Ok(true)` when the daemon is done.
    fn on_timers(&mut self) -> Result<bool> {
        let now = Instant::now();
        if self.backoff.expired(now) && self.lifecycle.is_serving() && self.has_room() {
            debug!("resuming accepting connections");
            self.set_accepting(true)?;
        }
        if self.socks.is_some() {
            self.on_socks_timers(now);
        }
        if let Some(status) = self
            .status
            .take_due(now, self.connections.len(), &self.counters)
        {
            self.notify(&status);
        }
        let step = self.lifecycle.step(now, self.open());
        self.end_children(&step);
        Ok(matches!(step, Step::Exit | Step::Kill))
    }

    /// Connections the daemon is responsible for: running, and (SOCKS) in
    /// handshake or waiting to start.
    fn open(&self) -> usize {
        self.connections.len() + self.socks.as_ref().map_or(0, |s| s.pending())
    }

    /// Whether one more connection may be accepted.
    fn has_room(&self) -> bool {
        self.open() < self.max_connections && self.socks.as_ref().is_none_or(|s| s.has_room())
    }

    /// Accepts again, if it was paused for want of room and may resume.
    fn resume_accepting(&mut self) {
        if self.lifecycle.is_serving()
            && !self.backoff.is_pausing()
            && self.has_room()
            && let Err(e) = self.set_accepting(true)
        {
            error!("{e}, ignoring");
        }
    }

    fn notify(&self, message: &str) {
        if let Err(e) = self.notifier.send(message) {
            warn!("failed to notify the service manager ({message}): {e}, ignoring");
        }
    }

    fn on_signals(&mut self) {
        // Each signal is a byte; one read takes all that are pending.
        let mut buf = [0u8; SIGNAL_BATCH];
        loop {
            let signals = match self.signals.read(&mut buf) {
                Ok(signals) => signals,
                Err(e) => {
                    error!("cannot read signals: {e}");
                    return;
                }
            };
            let drained = signals.len() < SIGNAL_BATCH;
            // One reap for any number of SIGCHLD: it reaps every ended child.
            if signals.contains(&(libc::SIGCHLD as u8)) {
                self.reap();
            }
            for &signal in signals {
                match i32::from(signal) {
                    libc::SIGCHLD => {}
                    sig @ (libc::SIGTERM | libc::SIGINT) => self.start_draining(sig),
                    // Logging to a broken stderr raises SIGPIPE again: logging
                    // every one would chase our own signal forever.
                    libc::SIGPIPE if self.sigpipe_logged => {}
                    sig => {
                        self.sigpipe_logged |= sig == libc::SIGPIPE;
                        info!("received {}, ignoring", signal_name(sig));
                    }
                }
            }
            if drained {
                return;
            }
        }
    }

    fn start_draining(&mut self, signal: i32) {
        if !self.lifecycle.drain(Instant::now()) {
            debug!("received {} again while stopping", signal_name(signal));
            return;
        }
        info!(
            "received {}: no new connections; waiting up to {}s for {} open ones",
            signal_name(signal),
            self.lifecycle.drain_timeout().as_secs(),
            self.connections.len()
        );
        self.notify("STOPPING=1");
        self.pause_accepting();
        self.backoff.cancel();
        self.close_pending();
    }
}
