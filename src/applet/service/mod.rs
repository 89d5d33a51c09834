//! The service-side applets, run by qrexec-agent in the service qube for a
//! call `SERVICE+ARG`: each connects to one local socket chosen by the
//! argument and relays the call's stdin and stdout to it (`crate::relay`).
//!
//! - `qubes.ConnectUnix+NAME`: the Unix socket
//!   `$XDG_RUNTIME_DIR/qubes.ConnectUnix/NAME` (`/run/user/UID/...` where
//!   XDG_RUNTIME_DIR is unset). That directory is the allow-list: the user's
//!   socket units link their sockets in (`Symlinks=`); the name is one path
//!   component, never hidden, so nothing outside it is reachable.
//! - `qubes.ConnectTCPBind+PORT-BINDADDR`: TCP `127.0.0.1:PORT` from the
//!   source address BINDADDR in 127.0.0.0/8.
//! - `qubes.ConnectNFS+BINDADDR`: TCP `127.0.0.1:2049` from BINDADDR, so
//!   that NFS exports can differ per client.
//!
//! The argument comes from `QREXEC_SERVICE_ARGUMENT`, which qrexec-agent
//! always sets (empty for a call without one), and which it also passes as
//! argv[1] when it is not empty. Should the two differ, something other than
//! qrexec started us with a command line we cannot trust to mean the same
//! call: that is refused (status 2). Without the variable (started by hand),
//! argv[1] is the argument. Installed as `SERVICE+ARG` (qrexec's file for
//! one argument only, e.g. `/etc/qubes-rpc/qubes.ConnectUnix+gpg-agent-ssh`),
//! the call's argument must be ARG.
//!
//! `qubes.ConnectUnix` follows links only in a directory that is the user's
//! own and that no one else may write to: whoever can add a link there
//! chooses what a caller reaches.
//!
//! The argument is checked before anything else; a bad one is one line on
//! stderr and status 2, with no file-system or network access at all. A
//! socket that is not there is one line saying how to provide it, status 1.
//! stdout carries relayed data and nothing else.
//!
//! Here: the steps and the relay. `call_argument.rs` picks the argument,
//! `destination.rs` parses it (pure), `connect.rs` reaches the socket.

mod call_argument;
mod connect;
mod destination;

use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use log::info;

pub use self::call_argument::call_argument;
use self::call_argument::pinned_argument;
use self::connect::runtime_dir;
pub use self::destination::Destination;
use super::{Applet, Kind};
use crate::error::{IoContext as _, Result};
use crate::logging;
use crate::relay::{self, End, Mode};
use crate::sys::{self, process};

/// The port of `qubes.ConnectNFS`: NFS (RFC 7530).
pub const NFS_PORT: u16 = 2049;
/// The directory in the user's runtime directory that holds the sockets
/// `qubes.ConnectUnix` may reach.
pub const UNIX_DIR: &str = "qubes.ConnectUnix";
/// Set to `copy` to relay with read/write instead of splice (tests, benchmarks).
pub const RELAY_ENV: &str = "QREXEC_CONNECT_RELAY";

/// Runs a service applet: checks the argument, connects, relays.
pub fn run(applet: &'static Applet, pinned: Option<&str>, args: &[&str]) -> Result<u8> {
    let name = applet.name;
    logging::init_service(name);
    let env_argument = std::env::var_os("QREXEC_SERVICE_ARGUMENT");
    if env_argument.is_none() && matches!(args, ["--help" | "-h"]) {
        print!("{}", help(applet.kind, name));
        return Ok(0);
    }
    let given = env_argument.is_some() || !args.is_empty();
    let argument = call_argument(args, env_argument)?;
    let argument = pinned_argument(name, pinned, argument, given)?;
    let destination = Destination::of(applet.kind, &argument)?;
    let mode = match std::env::var(RELAY_ENV).as_deref() {
        Ok("copy") => Mode::Copy,
        _ => Mode::Splice,
    };

    logging::attach_journal();
    let runtime = runtime_dir(std::env::var_os("XDG_RUNTIME_DIR"), process::uid());
    let remote = std::env::var("QREXEC_REMOTE_DOMAIN").unwrap_or_else(|_| "?".into());
    let connected = destination.connect(applet.kind, &runtime)?;
    relay_call(connected, &destination, mode, &remote, &argument)
}

/// Relays stdin and stdout to the connected socket until both directions
/// end; logs the totals.
fn relay_call(
    connected: OwnedFd,
    destination: &Destination,
    mode: Mode,
    remote: &str,
    argument: &str,
) -> Result<u8> {
    let stdin = stdio(0)?;
    let stdout = stdio(1)?;
    let started = Instant::now();
    crate::sys::single_malloc_arena();
    let (totals, result) = relay::run(
        End::new(stdin, "stdin"),
        End::new(stdout, "stdout"),
        End::new(connected, destination.to_string()),
        mode,
    );
    let summary = format!(
        "{} bytes sent, {} received, {:.3} s",
        totals.sent,
        totals.received,
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {
            info!(
                QREXEC_REMOTE_DOMAIN = remote, QREXEC_SERVICE_ARGUMENT = argument;
                "connection from {remote} to {destination}: {summary}"
            );
            Ok(0)
        }
        Err(e) => Err(e.during(format_args!(
            "relaying the connection from {remote} to {destination} ({summary})"
        ))),
    }
}

/// Takes stdin or stdout for the relay, blocking whatever the caller left:
/// the relay's loops wait in the kernel, never spin on EAGAIN.
fn stdio(fd: i32) -> Result<OwnedFd> {
    // The Rust runtime opens /dev/null on any of fds 0-2 found closed.
    let owned = sys::take_inherited_fd(fd);
    let what = if fd == 0 { "stdin" } else { "stdout" };
    sys::set_nonblocking(owned.as_fd(), false).context(|| format!("make {what} blocking"))?;
    Ok(owned)
}

fn help(kind: Kind, name: &str) -> String {
    let (argument, what) = match kind {
        Kind::ConnectUnix => (
            "NAME",
            "the Unix socket $XDG_RUNTIME_DIR/qubes.ConnectUnix/NAME",
        ),
        Kind::ConnectTcpBind => ("PORT-BINDADDR", "TCP 127.0.0.1:PORT from BINDADDR"),
        _ => ("BINDADDR", "TCP 127.0.0.1:2049 (NFS) from BINDADDR"),
    };
    format!(
        "Usage: {name} {argument}\n\n\
         qrexec service: relays the call's stdin and stdout to {what}.\n\
         qrexec-agent runs it for a call {name}+{argument}, with the argument in\n\
         QREXEC_SERVICE_ARGUMENT. Install it as a symlink to qrexec-connect named\n\
         {name} in /etc/qubes-rpc or /usr/local/etc/qubes-rpc.\n"
    )
}
