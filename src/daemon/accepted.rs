//! Accept=yes: systemd accepted the connection and started us for it alone.

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use log::warn;

use super::connection::Peer;
use super::lines::Budget;
use super::report::{self, Route};
use super::stderr;
use crate::call::{Call, Target};
use crate::error::{IoContext as _, Result};
use crate::notify::Notifier;
use crate::qrexec::{Client, Outcome};
use crate::sys::process;
use crate::sys::socket::{self, SockAddr};

/// A connection systemd accepted, and where it goes.
pub struct Accepted {
    pub fd: OwnedFd,
    pub target: Target,
    pub call: Call,
}

/// Serves one already-accepted connection (a unit with `Accept=yes`) and
/// returns qrexec-client-vm's exit status.
pub fn serve_one(connection: Accepted, client: &Client, notifier: &Notifier) -> Result<u8> {
    let Accepted { fd, target, call } = connection;
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
    let mut budget = Budget::default();
    let mut partial = Vec::new();
    stderr::drain_pipe(&spawned.stderr, &mut budget, &mut partial, &mut |line| {
        report::stderr_line(route, &peer, line)
    });
    let exit = process::wait(spawned.pid).context(|| "wait for qrexec-client-vm".into())?;
    let outcome = Outcome {
        exit,
        target: &target,
    };
    report::ended(route, &peer, &mut budget, &mut partial, &outcome, started);
    Ok(outcome.code())
}
