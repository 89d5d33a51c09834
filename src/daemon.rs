//! The client-side event loop: accept on every passed socket, hand each
//! connection to its own qrexec-client-vm, log how it ended.
//!
//! One `mio::Poll` in one thread watches the listeners, the children's
//! stderr, and a self-pipe for SIGCHLD (children are reaped with a
//! non-blocking `waitpid` loop) and SIGTERM/SIGINT/SIGHUP/SIGPIPE.
//!
//! The daemon holds no descriptor per open connection. The accepted socket
//! is the child's stdin and stdout, and the daemon's copy is closed as soon
//! as the child runs, so its memory does not grow with traffic. Every child's
//! stderr is the same Unix stream socket, whose reads say which process wrote
//! (`SO_PASSCRED`): a pipe per child would be one more descriptor for each
//! spawn to copy (the kernel takes a reference to every open file of the
//! parent at each `clone`): 7% of the daemon's time at 64 connections at
//! once (`dup_fd` under perf).

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::call::{Call, Target};
use crate::error::{Context as _, Result};
use crate::notify::Notifier;
use crate::qrexec::{Client, Outcome};
use crate::sys::process::{self, Exit, SignalPipe, signal_name};
use crate::sys::socket::{self, SockAddr};
use crate::sys::spawn::Program;

/// Listener `i` has token `i`.
const SIGNALS: Token = Token(usize::MAX - 1);
const STDERR: Token = Token(usize::MAX - 2);
/// How long accepting pauses after EMFILE, ENFILE, ENOBUFS or ENOMEM.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);
/// How long children get between SIGTERM and SIGKILL once draining timed out.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// Slots reserved at start-up at most (64 bytes each; untouched pages cost nothing).
const MAX_RESERVED_SLOTS: usize = 1 << 16;
/// Reads of the children's stderr per turn of the loop: a child that writes
/// without pause must not keep the loop from accepting.
const STDERR_BUDGET: usize = 64;
/// The most of a connection's stderr that is logged. All children write into
/// one socket, so the daemon must read it at once whatever one child writes
/// (the others' writes wait while it is full); past this much it reads and
/// counts, without logging.
const MAX_STDERR_LOGGED: u32 = 64 << 10;
/// Signals read at once from the self-pipe.
const SIGNAL_BATCH: usize = 64;
/// STATUS= goes to the manager at most this often.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

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
}

impl Listener {
    fn route(&self) -> Route<'_> {
        Route {
            target: &self.target,
            call: &self.call,
        }
    }
}

/// Where a connection goes, for its log lines.
#[derive(Clone, Copy)]
struct Route<'a> {
    target: &'a Target,
    call: &'a Call,
}

/// Who connected, kept small (20 bytes): 1,000 open connections must cost
/// little memory.
#[derive(Clone, Copy)]
enum Peer {
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
        pid: i32,
        uid: u32,
    },
    Vsock {
        cid: u32,
        port: u32,
    },
    Unknown,
}

impl Peer {
    fn of(fd: &OwnedFd, addr: SockAddr) -> Self {
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

/// One connection: the qrexec-client-vm that serves it.
struct Connection {
    pid: u32,
    /// Bytes its child wrote to stderr (see MAX_STDERR_LOGGED).
    stderr_bytes: u32,
    /// The start of a stderr line whose end has not arrived yet (rare).
    #[allow(clippy::box_collection, reason = "8 bytes in every slot, not 24")]
    partial: Option<Box<Vec<u8>>>,
    listener: u32,
    peer: Peer,
    started: Instant,
}

/// Counters for STATUS= and the final log line.
#[derive(Default)]
struct Counters {
    served: u64,
    refused: u64,
    failed: u64,
}

/// Where the daemon is in its life.
enum Phase {
    Serving,
    /// SIGTERM or SIGINT arrived: no new connections; running ones may finish
    /// until the deadline.
    Draining {
        deadline: Instant,
    },
    /// The deadline passed: children got SIGTERM, SIGKILL follows at the deadline.
    Terminating {
        deadline: Instant,
    },
}

struct Context {
    poll: Poll,
    signals: SignalPipe,
    /// Our end of the children's stderr, and theirs (each child's fd 2).
    stderr: OwnedFd,
    child_stderr: OwnedFd,
    /// The children's stderr has more to read than the last turn read.
    stderr_pending: bool,
    /// Children reaped and not yet released (kept to reuse its allocation).
    ended: Vec<(u32, Exit)>,
    listeners: Vec<Listener>,
    /// One prepared qrexec-client-vm command line per listener.
    programs: Vec<Program>,
    slots: Vec<Option<Connection>>,
    free: Vec<u32>,
    active: usize,
    client: Client,
    options: Options,
    notifier: Notifier,
    counters: Counters,
    /// Listeners are registered with the poll.
    accepting: bool,
    /// Accepting pauses until then after running out of fds or memory.
    backoff_until: Option<Instant>,
    /// Back-offs since the last accepted connection, to log a shortage once.
    backoffs: u32,
    phase: Phase,
    /// When the last connection ended (or start-up), for --exit-idle-time.
    idle_since: Instant,
    status_due: Option<Instant>,
    status_sent: Instant,
    /// SIGPIPE is logged once (see on_signals).
    sigpipe_logged: bool,
}

/// Serves the listeners until a signal or idleness ends the daemon.
pub fn run(
    listeners: Vec<Listener>,
    client: Client,
    options: Options,
    notifier: Notifier,
) -> Result<()> {
    let poll = Poll::new().context(|| "create the event loop".into())?;
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
    // Only now that SIGTERM is handled: a manager that sees these lines may
    // stop us at once, and must get a clean exit.
    for l in &listeners {
        info!(target: "listener", "{} -> {} {}", l.addr, l.target, l.call);
    }
    let (stderr, child_stderr) =
        socket::stderr_socketpair().context(|| "create the children's stderr".into())?;
    poll.registry()
        .register(
            &mut SourceFd(&stderr.as_raw_fd()),
            STDERR,
            Interest::READABLE,
        )
        .context(|| "watch the children's stderr".into())?;
    let programs = listeners
        .iter()
        .map(|l| client.program(&l.target, &l.call))
        .collect::<io::Result<Vec<_>>>()
        .context(|| format!("prepare {}", client.path.display()))?;
    let now = Instant::now();
    let mut cx = Context {
        poll,
        signals,
        stderr,
        child_stderr,
        stderr_pending: false,
        ended: Vec::new(),
        programs,
        listeners,
        // Reserved once: growing by doubling would leave the freed smaller
        // copies resident, which is most of what 1,000 connections cost.
        slots: Vec::with_capacity(options.max_connections.min(MAX_RESERVED_SLOTS)),
        free: Vec::new(),
        active: 0,
        client,
        options,
        notifier,
        counters: Counters::default(),
        accepting: false,
        backoff_until: None,
        backoffs: 0,
        phase: Phase::Serving,
        idle_since: now,
        status_due: None,
        status_sent: now - STATUS_INTERVAL,
        sigpipe_logged: false,
    };
    for listener in &cx.listeners {
        sys_nonblocking(&listener.fd)?;
    }
    cx.set_accepting(true)?;
    cx.notify("READY=1");
    cx.event_loop()
}

fn sys_nonblocking(fd: &OwnedFd) -> Result<()> {
    crate::sys::set_nonblocking(fd.as_fd(), true)
        .context(|| format!("make fd {} non-blocking", fd.as_raw_fd()))
}

impl Context {
    fn event_loop(&mut self) -> Result<()> {
        let mut events = Events::with_capacity(256);
        loop {
            let timeout = if self.stderr_pending {
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
                    STDERR => self.stderr_pending = true,
                    Token(i) => self.accept_all(i),
                }
            }
            if self.stderr_pending {
                self.stderr_pending = !self.read_stderr(STDERR_BUDGET);
            }
            if self.on_timers()? {
                return Ok(());
            }
        }
    }

    /// The earliest moment a timer needs the loop to wake up.
    fn next_deadline(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::Serving => None,
            Phase::Draining { deadline } | Phase::Terminating { deadline } => Some(deadline),
        };
        let idle = match (self.options.exit_idle_time, &self.phase) {
            (Some(idle), Phase::Serving) if self.active == 0 => Some(self.idle_since + idle),
            _ => None,
        };
        [self.backoff_until, phase, idle, self.status_due]
            .into_iter()
            .flatten()
            .min()
    }

    /// Acts on the timers that are due; `Ok(true)` when the daemon is done.
    fn on_timers(&mut self) -> Result<bool> {
        let now = Instant::now();
        if self.backoff_until.is_some_and(|t| t <= now) {
            self.backoff_until = None;
            if matches!(self.phase, Phase::Serving) && self.active < self.options.max_connections {
                debug!("resuming accepting connections");
                self.set_accepting(true)?;
            }
        }
        if self.status_due.is_some_and(|t| t <= now) {
            self.status_due = None;
            self.send_status(now);
        }
        match self.phase {
            Phase::Serving => {
                if let Some(idle) = self.options.exit_idle_time
                    && self.active == 0
                    && now >= self.idle_since + idle
                {
                    info!(
                        "no connection for {}s, exiting; the socket unit keeps listening and starts us again",
                        idle.as_secs()
                    );
                    return Ok(true);
                }
            }
            Phase::Draining { deadline } => {
                if self.active == 0 {
                    info!("all connections finished, exiting");
                    return Ok(true);
                }
                if now >= deadline {
                    warn!(
                        "{} connections still open after {}s, ending them (SIGTERM)",
                        self.active,
                        self.options.drain_timeout.as_secs()
                    );
                    self.signal_children(libc::SIGTERM);
                    self.phase = Phase::Terminating {
                        deadline: now + KILL_GRACE,
                    };
                }
            }
            Phase::Terminating { deadline } => {
                if self.active == 0 {
                    info!("all connections ended, exiting");
                    return Ok(true);
                }
                if now >= deadline {
                    warn!("{} children ignored SIGTERM, killing them", self.active);
                    self.signal_children(libc::SIGKILL);
                    self.reap_all_blocking();
                    return Ok(true);
                }
            }
        }
        Ok(false)
    }

    fn notify(&self, message: &str) {
        if let Err(e) = self.notifier.send(message) {
            warn!("failed to notify the service manager ({message}): {e}, ignoring");
        }
    }

    /// Schedules a STATUS= update, at most one per STATUS_INTERVAL.
    fn status_changed(&mut self) {
        if self.notifier.is_enabled() && self.status_due.is_none() {
            self.status_due = Some(self.status_sent + STATUS_INTERVAL);
        }
    }

    fn send_status(&mut self, now: Instant) {
        self.status_sent = now;
        let c = &self.counters;
        self.notify(&format!(
            "STATUS={} active, {} served, {} refused, {} failed",
            self.active, c.served, c.refused, c.failed
        ));
    }

    /// Registers or deregisters every listener. Deregistered, new connections
    /// wait in the kernel's backlog; registering again reports them at once.
    fn set_accepting(&mut self, on: bool) -> Result<()> {
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

    /// Accepts until the backlog is empty (mio is edge-triggered) or a limit is hit.
    fn accept_all(&mut self, index: usize) {
        while self.accepting {
            let accepted = socket::accept(self.listeners[index].fd.as_fd());
            match accepted {
                Ok((fd, addr)) => {
                    if self.backoffs > 0 {
                        info!(
                            "accepting again after {} pauses of {} ms",
                            self.backoffs,
                            ACCEPT_BACKOFF.as_millis()
                        );
                        self.backoffs = 0;
                    }
                    self.start(index, fd, addr)
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return,
                    Some(libc::EINTR | libc::ECONNABORTED | libc::EPROTO) => continue,
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM) => {
                        // Once per shortage, not once per back-off: a long
                        // one would flood the journal ten lines a second.
                        let level = if self.backoffs == 0 {
                            log::Level::Warn
                        } else {
                            log::Level::Debug
                        };
                        self.backoffs += 1;
                        log::log!(
                            level,
                            "cannot accept on {}: {e}; pausing for {} ms at a time until it can",
                            self.listeners[index].addr,
                            ACCEPT_BACKOFF.as_millis()
                        );
                        self.pause_accepting();
                        self.backoff_until = Some(Instant::now() + ACCEPT_BACKOFF);
                        return;
                    }
                    _ => {
                        error!(
                            "cannot accept on {}: {e}, ignoring",
                            self.listeners[index].addr
                        );
                        return;
                    }
                },
            }
        }
    }

    fn pause_accepting(&mut self) {
        if let Err(e) = self.set_accepting(false) {
            error!("{e}, ignoring");
        }
    }

    /// Spawns qrexec-client-vm for a new connection.
    fn start(&mut self, index: usize, fd: OwnedFd, addr: SockAddr) {
        let peer = Peer::of(&fd, addr);
        let spawned = crate::qrexec::spawn(&self.programs[index], fd, self.child_stderr.as_fd());
        let listener = &self.listeners[index];
        let pid = match spawned {
            Ok(ok) => ok,
            Err(e) => {
                error!(
                    target: "connection",
                    QREXEC_TARGET = listener.target.as_str(), QREXEC_CALL = listener.call.as_str();
                    "{peer} -> {} {}: cannot run {}: {e}; connection closed",
                    listener.target, listener.call, self.client.path.display()
                );
                self.counters.failed += 1;
                self.status_changed();
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN)
                ) {
                    self.pause_accepting();
                    self.backoff_until = Some(Instant::now() + ACCEPT_BACKOFF);
                }
                return;
            }
        };
        debug!(
            "{peer} -> {} {}: qrexec-client-vm pid {pid}",
            listener.target, listener.call
        );
        let slot = match self.free.pop() {
            Some(slot) => slot as usize,
            None => {
                self.slots.push(None);
                self.slots.len() - 1
            }
        };
        self.slots[slot] = Some(Connection {
            pid,
            stderr_bytes: 0,
            partial: None,
            listener: index as u32,
            peer,
            started: Instant::now(),
        });
        self.active += 1;
        self.status_changed();
        if self.active >= self.options.max_connections {
            debug!(
                "{} connections open (--max-connections), pausing accepting",
                self.active
            );
            self.pause_accepting();
        }
    }

    /// Reads what the children wrote to stderr, at most `budget` reads, and
    /// logs it a line at a time with its connection; true when all is read.
    fn read_stderr(&mut self, budget: usize) -> bool {
        for _ in 0..budget {
            if self.read_stderr_once().is_none() {
                return true;
            }
        }
        false
    }

    /// Reads at least what is in the children's stderr socket now (nothing
    /// at all when it is empty, as it mostly is): before ended children are
    /// released, so that their last lines come before their end and none is
    /// left to be taken for another process that gets the same pid. Counted
    /// in bytes, not reads: a read stops where the writer changes.
    fn read_stderr_queued(&mut self) {
        let mut left = socket::queued_bytes(self.stderr.as_fd()).unwrap_or(0);
        while left > 0 {
            match self.read_stderr_once() {
                Some(n) => left = left.saturating_sub(n),
                None => return,
            }
        }
    }

    /// One read of the children's stderr, logged; the bytes read, or `None`
    /// when there is nothing (more) to read.
    fn read_stderr_once(&mut self) -> Option<usize> {
        let mut buf = [0u8; 4096];
        loop {
            match socket::recv_from_process(self.stderr.as_fd(), &mut buf) {
                Ok((0, _)) => {
                    self.renew_stderr();
                    return None;
                }
                Ok((n, pid)) => {
                    self.stderr_from(pid, &buf[..n]);
                    return Some(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error!("cannot read the children's stderr: {e}");
                    return None;
                }
            }
        }
    }

    /// A child shut the shared stderr down (no qrexec-client-vm does): later
    /// children get a new one, or their first stderr write would fail.
    fn renew_stderr(&mut self) {
        error!("a child shut down the children's stderr; making a new one");
        let renewed = socket::stderr_socketpair().and_then(|(ours, theirs)| {
            let registry = self.poll.registry();
            registry.deregister(&mut SourceFd(&self.stderr.as_raw_fd()))?;
            registry.register(&mut SourceFd(&ours.as_raw_fd()), STDERR, Interest::READABLE)?;
            Ok((ours, theirs))
        });
        match renewed {
            Ok((ours, theirs)) => (self.stderr, self.child_stderr) = (ours, theirs),
            Err(e) => error!("cannot make the children a new stderr: {e}"),
        }
    }

    /// Bytes one process wrote to stderr: a connection's child, or (rarely)
    /// a process it started, logged without a connection.
    fn stderr_from(&mut self, pid: Option<i32>, bytes: &[u8]) {
        let conn = pid.and_then(|pid| {
            self.slots
                .iter_mut()
                .flatten()
                .find(|c| i64::from(c.pid) == i64::from(pid))
        });
        match conn {
            Some(conn) => {
                let route = self.listeners[conn.listener as usize].route();
                let room = MAX_STDERR_LOGGED.saturating_sub(conn.stderr_bytes) as usize;
                feed_stderr(
                    &mut conn.partial,
                    &bytes[..bytes.len().min(room)],
                    conn.peer,
                    route,
                );
                conn.stderr_bytes = conn.stderr_bytes.saturating_add(bytes.len() as u32);
            }
            None => {
                let who = pid.map_or("an unknown process".to_owned(), |p| format!("pid {p}"));
                for line in bytes.split(|&b| b == b'\n') {
                    let line = String::from_utf8_lossy(line);
                    let line = line.trim_end();
                    if !line.is_empty() {
                        warn!(
                            "{who} on the children's stderr: {}",
                            crate::logging::printable(line)
                        );
                    }
                }
            }
        }
    }

    /// Reaps every child that has ended (after SIGCHLD) and releases its connection.
    fn reap(&mut self) {
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
        if ended.is_empty() {
            self.ended = ended;
            return;
        }
        // All they wrote is in the socket now.
        self.read_stderr_queued();
        for (pid, exit) in ended.drain(..) {
            let found = self
                .slots
                .iter()
                .position(|c| c.as_ref().is_some_and(|c| c.pid == pid));
            match found {
                Some(slot) => {
                    let conn = self.slots[slot].take().expect("found above");
                    self.release(conn, exit);
                    self.free.push(slot as u32);
                }
                None => debug!("reaped pid {pid}, not a connection's"),
            }
        }
        self.ended = ended;
    }

    /// The one place a connection ends: last stderr lines, the log line,
    /// counters, and accepting again if the limit had stopped it.
    fn release(&mut self, mut conn: Connection, exit: Exit) {
        let route = self.listeners[conn.listener as usize].route();
        if let Some(rest) = conn.partial.take() {
            log_stderr_line(&rest, conn.peer, route);
        }
        if conn.stderr_bytes > MAX_STDERR_LOGGED {
            warn!(
                target: "connection",
                QREXEC_TARGET = route.target.as_str(), QREXEC_CALL = route.call.as_str();
                "{} -> {} {}: {} more bytes of stderr not logged",
                conn.peer, route.target, route.call, conn.stderr_bytes - MAX_STDERR_LOGGED
            );
        }
        let outcome = Outcome {
            exit,
            target: route.target,
        };
        log_end(&outcome, conn.peer, route, conn.started);
        if outcome.is_success() {
            self.counters.served += 1;
        } else if outcome.is_refusal() {
            self.counters.refused += 1;
        } else {
            self.counters.failed += 1;
        }
        self.active -= 1;
        if self.active == 0 {
            self.idle_since = Instant::now();
        }
        self.status_changed();
        if matches!(self.phase, Phase::Serving)
            && self.backoff_until.is_none()
            && self.active < self.options.max_connections
            && let Err(e) = self.set_accepting(true)
        {
            error!("{e}, ignoring");
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
        if !matches!(self.phase, Phase::Serving) {
            debug!("received {} again while stopping", signal_name(signal));
            return;
        }
        info!(
            "received {}: no new connections; waiting up to {}s for {} open ones",
            signal_name(signal),
            self.options.drain_timeout.as_secs(),
            self.active
        );
        self.notify("STOPPING=1");
        self.pause_accepting();
        self.backoff_until = None;
        self.phase = Phase::Draining {
            deadline: Instant::now() + self.options.drain_timeout,
        };
    }

    fn signal_children(&self, signal: i32) {
        for conn in self.slots.iter().flatten() {
            if let Err(e) = process::kill(conn.pid, signal) {
                debug!("cannot signal pid {}: {e}", conn.pid);
            }
        }
    }

    /// After SIGKILL: every child ends at once, so waiting cannot hang.
    fn reap_all_blocking(&mut self) {
        let ended: Vec<(usize, Exit)> = (0..self.slots.len())
            .filter_map(|slot| {
                let pid = self.slots[slot].as_ref()?.pid;
                Some((
                    slot,
                    process::wait(pid).unwrap_or(Exit::Signal(libc::SIGKILL)),
                ))
            })
            .collect();
        self.read_stderr_queued();
        for (slot, exit) in ended {
            if let Some(conn) = self.slots[slot].take() {
                self.release(conn, exit);
            }
        }
    }
}

/// The longest stderr line kept whole; a longer one is logged in pieces.
const MAX_STDERR_LINE: usize = 4096;

/// Logs the whole lines in `bytes`, written by a connection's child to its
/// stderr. A line may arrive in several pieces: its start waits in
/// `partial`, and is logged in pieces past `MAX_STDERR_LINE`.
#[allow(clippy::box_collection, reason = "the slot's type")]
fn feed_stderr(partial: &mut Option<Box<Vec<u8>>>, bytes: &[u8], peer: Peer, route: Route) {
    let mut rest = bytes;
    while let Some(end) = rest.iter().position(|&b| b == b'\n') {
        match partial.take() {
            Some(mut start) => {
                start.extend_from_slice(&rest[..end]);
                log_stderr_line(&start, peer, route);
            }
            None => log_stderr_line(&rest[..end], peer, route),
        }
        rest = &rest[end + 1..];
    }
    if !rest.is_empty() {
        let start = partial.get_or_insert_with(Box::default);
        start.extend_from_slice(rest);
        if start.len() >= MAX_STDERR_LINE {
            log_stderr_line(start, peer, route);
            *partial = None;
        }
    }
}

/// Reads a child's stderr pipe until EOF, logging it line by line.
fn drain_stderr(fd: &OwnedFd, peer: Peer, route: Route) {
    let mut partial = None;
    let mut buf = [0u8; 4096];
    loop {
        match crate::sys::read(fd.as_fd(), &mut buf) {
            Ok(0) => break,
            Ok(n) => feed_stderr(&mut partial, &buf[..n], peer, route),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("cannot read qrexec-client-vm's stderr: {e}");
                break;
            }
        }
    }
    if let Some(rest) = partial {
        log_stderr_line(&rest, peer, route);
    }
}

/// Logs one line a child wrote to stderr, with its connection.
fn log_stderr_line(line: &[u8], peer: Peer, route: Route) {
    let line = String::from_utf8_lossy(line);
    let line = line.trim_end();
    if line.is_empty() {
        return;
    }
    warn!(
        target: "connection",
        QREXEC_TARGET = route.target.as_str(), QREXEC_CALL = route.call.as_str();
        "{peer} -> {} {}: {}",
        route.target,
        route.call,
        crate::logging::printable(line)
    );
}

/// Logs how a connection ended: the one line each connection leaves.
fn log_end(outcome: &Outcome, peer: Peer, route: Route, started: Instant) {
    let elapsed = started.elapsed();
    let level = if outcome.is_success() {
        log::Level::Info
    } else {
        log::Level::Warn
    };
    log::log!(
        target: "connection",
        level,
        QREXEC_TARGET = route.target.as_str(),
        QREXEC_CALL = route.call.as_str(),
        QREXEC_SERVICE = route.call.service(),
        QREXEC_ARGUMENT = route.call.argument().unwrap_or(""),
        QREXEC_PEER:% = peer,
        QREXEC_STATUS = outcome.code();
        "{peer} -> {} {}: {outcome} after {}.{:03}s",
        route.target,
        route.call,
        elapsed.as_secs(),
        elapsed.subsec_millis()
    );
}

/// Serves one already-accepted connection (a unit with `Accept=yes`) and
/// returns qrexec-client-vm's exit status.
pub fn serve_one(connection: Listener, client: &Client, notifier: &Notifier) -> Result<u8> {
    let Listener {
        fd, target, call, ..
    } = connection;
    let route = Route {
        target: &target,
        call: &call,
    };
    let started = Instant::now();
    let addr = socket::peer_addr(fd.as_fd()).unwrap_or(SockAddr::UnixUnnamed);
    let peer = Peer::of(&fd, addr);
    crate::sys::set_nonblocking(fd.as_fd(), false)
        .context(|| "make the connection blocking".into())?;
    // Our copy of the connection goes with it: only the child holds it.
    let spawned = client
        .spawn(fd, &target, &call)
        .context(|| format!("run {}", client.path.display()))?;
    // A Type=notify service (such as ours) waits for this, Accept=yes or not.
    if let Err(e) = notifier.send("READY=1") {
        warn!("failed to notify the service manager (READY=1): {e}, ignoring");
    }
    // Blocking reads: there is nothing else to wait for.
    drain_stderr(&spawned.stderr, peer, route);
    let exit = process::wait(spawned.pid).context(|| "wait for qrexec-client-vm".into())?;
    let outcome = Outcome {
        exit,
        target: &target,
    };
    log_end(&outcome, peer, route, started);
    Ok(outcome.code())
}

// The peer is stored per connection: keep it small.
const _: () = assert!(std::mem::size_of::<Peer>() <= 20);
const _: () = assert!(std::mem::size_of::<Option<Connection>>() <= 64);
