//! The children's stderr. In the daemon, every child's fd 2 is one Unix
//! stream socket whose reads say which process wrote (`SO_PASSCRED`); a
//! child of Accept=yes has a pipe of its own. Both become log lines through
//! `lines`, with the same limits: per connection, and one shared budget for
//! writers that are no connection's child.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use log::{debug, error, warn};
use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};

use super::Context;
use super::lines::{self, Budget, Shared};
use crate::logging::printable;
use crate::sys::process::Pid;
use crate::sys::socket;

/// Bytes read at once.
const READ_SIZE: usize = 4096;

/// The socket every child of the daemon has as its stderr.
pub(super) struct SharedStderr {
    ours: OwnedFd,
    theirs: OwnedFd,
    token: Token,
    /// There is more to read than the last turn of the loop read.
    pub(super) pending: bool,
    /// The start of each connection's unfinished line, by its child's pid
    /// (rare: most writers write whole lines).
    partials: Partials,
    /// Writers that are no connection's child.
    others: Others,
}

/// Unfinished lines by writer; `None` when the kernel named no process.
type Partials = HashMap<Option<Pid>, Vec<u8>>;

/// What one read of the shared stderr gave.
pub(super) enum Read {
    /// `n` bytes from one process.
    Bytes(usize, Option<Pid>),
    /// Nothing more for now.
    Empty,
}

impl SharedStderr {
    pub(super) fn new(registry: &Registry, token: Token) -> io::Result<Self> {
        let (ours, theirs) = socket::stderr_socketpair()?;
        registry.register(&mut SourceFd(&ours.as_raw_fd()), token, Interest::READABLE)?;
        Ok(SharedStderr {
            ours,
            theirs,
            token,
            pending: false,
            partials: Partials::new(),
            others: Others::default(),
        })
    }

    /// The children's end, their fd 2.
    pub(super) fn theirs(&self) -> BorrowedFd<'_> {
        self.theirs.as_fd()
    }

    /// Bytes waiting to be read.
    pub(super) fn queued(&self) -> usize {
        socket::queued_bytes(self.ours.as_fd()).unwrap_or(0)
    }

    pub(super) fn recv(&mut self, buf: &mut [u8], registry: &Registry) -> Read {
        loop {
            match socket::recv_from_process(self.ours.as_fd(), buf) {
                Ok((0, _)) => {
                    self.renew(registry);
                    return Read::Empty;
                }
                Ok((n, pid)) => return Read::Bytes(n, pid),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Read::Empty,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    error!("cannot read the children's stderr: {e}");
                    return Read::Empty;
                }
            }
        }
    }

    /// A child shut the shared stderr down (no qrexec-client-vm does): later
    /// children get a new one, or their first stderr write would fail.
    fn renew(&mut self, registry: &Registry) {
        error!("a child shut down the children's stderr; making a new one");
        let renewed = socket::stderr_socketpair().and_then(|(ours, theirs)| {
            registry.deregister(&mut SourceFd(&self.ours.as_raw_fd()))?;
            registry.register(
                &mut SourceFd(&ours.as_raw_fd()),
                self.token,
                Interest::READABLE,
            )?;
            Ok((ours, theirs))
        });
        match renewed {
            Ok((ours, theirs)) => (self.ours, self.theirs) = (ours, theirs),
            Err(e) => error!("cannot make the children a new stderr: {e}"),
        }
    }

    /// Lines from what `pid` wrote, within `budget`.
    pub(super) fn assemble(
        &mut self,
        pid: Option<Pid>,
        budget: &mut Budget,
        bytes: &[u8],
        line: &mut impl FnMut(&str),
    ) {
        assemble(&mut self.partials, pid, budget, bytes, line);
    }

    /// The unfinished line of `pid`, now that it has ended.
    pub(super) fn take_partial(&mut self, pid: Pid) -> Vec<u8> {
        if self.partials.is_empty() {
            return Vec::new();
        }
        self.partials.remove(&Some(pid)).unwrap_or_default()
    }

    /// Lines from a writer that is no connection's child.
    pub(super) fn by_other(&mut self, pid: Option<Pid>, bytes: &[u8]) {
        self.others.write(pid, bytes);
    }

    /// The daemon exits: what other writers left.
    pub(super) fn close(&mut self) {
        self.others.close();
    }
}

/// The writers that are no connection's child: one budget for them all, a
/// window at a time (see `lines::Shared`).
#[derive(Default)]
struct Others {
    shared: Shared,
    /// Kept apart from the connections': a window's end takes them all.
    partials: Partials,
}

impl Others {
    fn write(&mut self, pid: Option<Pid>, bytes: &[u8]) {
        let now = Instant::now();
        if self.shared.expired(now) {
            self.close();
            self.shared.start(now);
        }
        assemble(
            &mut self.partials,
            pid,
            self.shared.budget(),
            bytes,
            &mut |line| other_line(pid, line),
        );
    }

    /// The window ends: the unfinished lines, then what was not logged.
    fn close(&mut self) {
        let budget = self.shared.budget();
        for (pid, mut partial) in self.partials.drain() {
            lines::finish(budget, &mut partial, &mut |line| other_line(pid, line));
        }
        let unlogged = budget.unlogged();
        if unlogged > 0 {
            warn!("{unlogged} more bytes from other processes on the children's stderr not logged");
        }
    }
}

/// `lines::assemble` after the unfinished line of `pid` in `partials`.
fn assemble(
    partials: &mut Partials,
    pid: Option<Pid>,
    budget: &mut Budget,
    bytes: &[u8],
    line: &mut impl FnMut(&str),
) {
    // No lookup while no line is unfinished, as is usual.
    let mut partial = if partials.is_empty() {
        Vec::new()
    } else {
        partials.remove(&pid).unwrap_or_default()
    };
    lines::assemble(budget, &mut partial, bytes, line);
    if !partial.is_empty() {
        partials.insert(pid, partial);
    }
}

fn other_line(pid: Option<Pid>, line: &str) {
    match pid {
        Some(pid) => warn!("pid {pid} on the children's stderr: {}", printable(line)),
        None => warn!(
            "an unknown process on the children's stderr: {}",
            printable(line)
        ),
    }
}

impl Context {
    /// Reads what the children wrote to stderr, at most `budget` reads, and
    /// logs it a line at a time with its connection; true when all is read.
    pub(super) fn read_stderr(&mut self, budget: usize) -> bool {
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
    pub(super) fn read_stderr_queued(&mut self) {
        let mut left = self.stderr.queued();
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
        let mut buf = [0u8; READ_SIZE];
        let Read::Bytes(n, pid) = self.stderr.recv(&mut buf, self.poll.registry()) else {
            return None;
        };
        let bytes = &buf[..n];
        match pid.and_then(|pid| self.connections.get_mut(pid)) {
            Some(conn) => {
                let route = super::socks::route_of(
                    &self.listeners,
                    self.socks.as_deref(),
                    pid.expect("a connection's pid"),
                    conn.listener,
                );
                let peer = conn.peer;
                self.stderr
                    .assemble(pid, &mut conn.stderr, bytes, &mut |line| {
                        super::report::stderr_line(route, &peer, line)
                    });
            }
            None => self.stderr.by_other(pid, bytes),
        }
        Some(n)
    }
}

/// Reads the stderr pipe of an Accept=yes child until EOF (blocking: there
/// is nothing else to wait for), handing its lines to `line`.
pub(super) fn drain_pipe(
    fd: &OwnedFd,
    budget: &mut Budget,
    partial: &mut Vec<u8>,
    line: &mut impl FnMut(&str),
) {
    let mut buf = [0u8; READ_SIZE];
    loop {
        match crate::sys::read(fd.as_fd(), &mut buf) {
            Ok(0) => return,
            Ok(n) => lines::assemble(budget, partial, &buf[..n], line),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                debug!("cannot read qrexec-client-vm's stderr: {e}");
                return;
            }
        }
    }
}
