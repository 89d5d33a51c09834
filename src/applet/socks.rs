//! `qrexec-connect-socks`: a socket-activated SOCKS5 proxy (RFC 1928) whose
//! only destinations are qubes. A client (a browser, `curl --proxy
//! socks5h://...`) asks for `QUBE.qube` and a port; the connection becomes
//! `qrexec-client-vm QUBE qubes.ConnectTCP+PORT`, which dom0 policy allows
//! or refuses like any other call. The daemon relays nothing: once the
//! handshake is answered, the socket is qrexec-client-vm's stdin and
//! stdout, as with `qrexec-connect-tcp`.
//!
//! Every listener passed (`ListenStream=`, `Accept=no`) is a proxy; socket
//! names are not read. See `daemon::socks` for the handshake's limits and
//! `daemon::starting` for `--max-starting`.

use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::{Applet, client};
use crate::activation;
use crate::call::{Call, Target};
use crate::daemon::{self, Listener, Options, SocksOptions};
use crate::error::{Error, Result};
use crate::qrexec::{self, StdinSocket};
use crate::stdin_socket;

// The options from --max-connections on are the client applets' too
// (client/config.rs), word for word: argh has no way to share fields
// between two structs (no `flatten`); what is done with them is shared.
/// The longest `--starting-ms`.
const MAX_STARTING_MS: u64 = 86_400_000;

#[derive(FromArgs, Debug)]
/// A SOCKS5 proxy to qubes: each CONNECT to QUBE.qube:PORT becomes
/// `qrexec-client-vm QUBE qubes.ConnectTCP+PORT`, allowed or refused by
/// dom0 policy. Sockets come from systemd (or systemd-socket-activate).
struct Args {
    /// most qrexec calls starting at once (default 8): qrexec fails calls
    /// past about 10 starting at once from one qube
    #[argh(option, default = "8")]
    max_starting: usize,

    /// milliseconds a call counts as starting unless it ends sooner
    /// (default 500, at most 86400000: a day)
    #[argh(option, default = "500")]
    starting_ms: u64,

    /// most connections open at once, handshakes and waiting ones included
    /// (default 1024)
    #[argh(option, default = "1024")]
    max_connections: usize,

    /// seconds open connections may take to finish after SIGTERM (default 10)
    #[argh(option, default = "10")]
    drain_timeout: u64,

    /// exit after this many seconds without connections; systemd starts the
    /// service again on the next one (default: never)
    #[argh(option)]
    exit_idle_time: Option<u64>,

    /// pass --use-stdin-socket to qrexec-client-vm: auto (if its -h lists it),
    /// yes or no (default auto)
    #[argh(option, default = "StdinSocket::Auto")]
    stdin_socket: StdinSocket,

    /// path of qrexec-client-vm (default $QREXEC_CLIENT_VM, else
    /// /usr/bin/qrexec-client-vm)
    #[argh(option)]
    qrexec_client_vm: Option<PathBuf>,

    /// log each connection's start too
    #[argh(switch, short = 'v')]
    verbose: bool,
}

/// Our options that take a value, also written `--name=value`.
const VALUE_OPTIONS: &[&str] = &[
    "--max-starting",
    "--starting-ms",
    "--max-connections",
    "--drain-timeout",
    "--exit-idle-time",
    "--stdin-socket",
    "--qrexec-client-vm",
];

pub fn run(applet: &'static Applet, raw: &[&str]) -> Result<u8> {
    let raw = client::split_values(raw, VALUE_OPTIONS);
    let Some(args) = super::parse::<Args>(applet.name, &raw)? else {
        return Ok(0);
    };
    crate::logging::init(applet.name, args.verbose);
    for (value, name) in [
        (args.max_starting, "--max-starting"),
        (args.max_connections, "--max-connections"),
    ] {
        if value == 0 {
            return Err(Error::Usage(format!("{name} must be at least 1")));
        }
    }
    // A deadline is an Instant plus this: bounded, it cannot overflow.
    if args.starting_ms > MAX_STARTING_MS {
        return Err(Error::Usage(format!(
            "--starting-ms must be at most {MAX_STARTING_MS} (a day)"
        )));
    }
    let path = qrexec::client_vm_path(
        args.qrexec_client_vm.clone(),
        std::env::var_os("QREXEC_CLIENT_VM"),
    );
    let Some(passed) = activation::take()? else {
        return Err(client::not_configured(
            applet.name,
            &format!("--listen=127.0.0.1:1080 {}", applet.name),
        ));
    };
    let notifier = client::notifier()?;
    let listeners = passed
        .into_iter()
        .map(|p| {
            if !p.listening {
                return Err(Error::Unsupported(format!(
                    "{} is a connected socket: {} serves listening sockets (Accept=no)",
                    p.addr, applet.name
                )));
            }
            // Unused: each handshake names its own.
            Ok(Listener {
                fd: p.fd,
                addr: p.addr,
                target: Target::default_target(),
                call: Call::parse(super::ssh_proxy::SERVICE)?,
                source: None,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let cache = stdin_socket::cache_dir(std::env::var_os("RUNTIME_DIRECTORY").as_deref());
    let client = qrexec::Client {
        stdin_socket: client::use_stdin_socket(args.stdin_socket, &path, cache.as_deref()),
        path,
        options: Vec::new(),
    };
    let options = Options {
        max_connections: args.max_connections,
        drain_timeout: Duration::from_secs(args.drain_timeout),
        exit_idle_time: args.exit_idle_time.map(Duration::from_secs),
    };
    let socks = SocksOptions {
        max_starting: args.max_starting,
        starting_window: Duration::from_millis(args.starting_ms),
    };
    daemon::run_socks(listeners, client, options, socks, notifier)?;
    Ok(0)
}
