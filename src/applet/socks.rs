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
use log::{info, warn};

use super::Applet;
use crate::activation;
use crate::call::{Call, Target};
use crate::daemon::{self, Listener, Options, SocksOptions};
use crate::error::{Error, Result};
use crate::notify::Notifier;
use crate::qrexec::{self, StdinSocket};
use crate::stdin_socket;

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
    /// (default 500)
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
    let raw: Vec<&str> = raw
        .iter()
        .flat_map(|&arg| match arg.split_once('=') {
            Some((name, value)) if VALUE_OPTIONS.contains(&name) => vec![name, value],
            _ => vec![arg],
        })
        .collect();
    let args: Args = match super::parse_args(applet.name, &raw) {
        Ok(args) => args,
        Err((help, 0)) => {
            print!("{help}");
            return Ok(0);
        }
        Err((message, _)) => return Err(Error::Usage(message.trim_end().to_owned())),
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
    let path = args
        .qrexec_client_vm
        .clone()
        .or_else(|| std::env::var_os("QREXEC_CLIENT_VM").map(PathBuf::from))
        .unwrap_or_else(|| qrexec::DEFAULT_PATH.into());
    let Some(passed) = activation::take()? else {
        return Err(Error::NotConfigured(format!(
            "{} serves sockets passed by systemd (LISTEN_FDS) and none were passed; \
             run it from a socket unit, or try: systemd-socket-activate --listen=127.0.0.1:1080 {}",
            applet.name, applet.name
        )));
    };
    let notifier = Notifier::from_env()
        .map_err(|e| Error::Usage(format!("NOTIFY_SOCKET is not a usable socket address: {e}")))?;
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
    let client = qrexec::Client {
        stdin_socket: use_stdin_socket(args.stdin_socket, &path),
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

/// Whether to pass `--use-stdin-socket`, as the client applets decide it.
fn use_stdin_socket(choice: StdinSocket, path: &std::path::Path) -> bool {
    match choice {
        StdinSocket::Yes => true,
        StdinSocket::No => false,
        StdinSocket::Auto => {
            let cache = stdin_socket::cache_dir(std::env::var_os("RUNTIME_DIRECTORY").as_deref());
            match stdin_socket::detect(path, cache.as_deref()) {
                Ok(supported) => {
                    if !supported {
                        info!(
                            "{} does not support {}: clients see EOF only when it exits (qrexec older than 4.2.19)",
                            path.display(),
                            qrexec::STDIN_SOCKET_FLAG
                        );
                    }
                    supported
                }
                Err(e) => {
                    warn!(
                        "cannot run {} -h ({e}); connections fail until it is installed",
                        path.display()
                    );
                    false
                }
            }
        }
    }
}
