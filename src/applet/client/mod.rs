//! The client-side applets: socket-activated, each socket's connections go to
//! `qrexec-client-vm TARGET SERVICE+ARG`.
//!
//! The applets differ only in the call they make from their argument (the
//! unit's `%i`): `qrexec-connect-tcp PORT` calls `qubes.ConnectTCP+PORT`,
//! `qrexec-connect-tcp-bind PORT-BINDADDR` calls `qubes.ConnectTCPBind+...`,
//! `qrexec-connect-unix NAME` calls `qubes.ConnectUnix+NAME`, and the plain
//! `qrexec-connect` takes the call from each socket's name or `--service`.

mod config;
mod options;
mod routes;

use log::{info, warn};

use std::path::Path;

use self::config::{Args, Config};
use self::options::VALUE_OPTIONS;
pub(super) use self::options::split_values;
use self::routes::{Sockets, sockets};
use super::{Applet, Kind};
use crate::activation;
use crate::daemon::{self, Options};
use crate::error::{Error, Result};
use crate::notify::Notifier;
use crate::qrexec::{self, StdinSocket};
use crate::stdin_socket;

/// Runs a client applet: its configuration, the logger, the passed
/// sockets and their routes, the qrexec-client-vm to run, then serving.
pub fn run(applet: &'static Applet, raw: &[&str]) -> Result<u8> {
    let Some(args) = super::parse::<Args>(applet.name, &split_values(raw, VALUE_OPTIONS))? else {
        return Ok(0);
    };
    crate::logging::init(applet.name, args.verbose);
    let config = Config::new(applet, args, |name| std::env::var_os(name))?;
    let Some(passed) = activation::take()? else {
        return Err(not_configured(applet.name, example(applet)));
    };
    let notifier = notifier()?;
    let sockets = sockets(passed, config.call.as_ref())?;
    let client = qrexec::Client {
        stdin_socket: use_stdin_socket(
            config.stdin_socket,
            &config.qrexec_client_vm,
            config.cache_dir.as_deref(),
        ),
        path: config.qrexec_client_vm.clone(),
        options: config.options.clone(),
    };
    serve(sockets, client, &config, notifier)
}

/// Whether to pass `--use-stdin-socket` to `path`: as configured, or as
/// its `-h` says (cached across starts in `cache_dir`). The SOCKS applet
/// decides it so too.
pub(super) fn use_stdin_socket(choice: StdinSocket, path: &Path, cache_dir: Option<&Path>) -> bool {
    match choice {
        StdinSocket::Yes => true,
        StdinSocket::No => false,
        StdinSocket::Auto => match stdin_socket::detect(path, cache_dir) {
            Ok(true) => true,
            Ok(false) => {
                info!(
                    "{} does not support {}: clients see EOF only when it exits (qrexec older than 4.2.19)",
                    path.display(),
                    qrexec::STDIN_SOCKET_FLAG
                );
                false
            }
            Err(e) => {
                warn!(
                    "cannot run {} -h ({e}); connections fail until it is installed",
                    path.display()
                );
                false
            }
        },
    }
}

/// Serves the sockets until told to stop (or, for `Accept=yes`, the one
/// connection to its end).
fn serve(
    sockets: Sockets,
    client: qrexec::Client,
    config: &Config,
    notifier: Notifier,
) -> Result<u8> {
    match sockets {
        // Accept=yes: systemd accepted the connection and started us for it.
        Sockets::Accepted(connection) => daemon::serve_one(connection, &client, &notifier),
        Sockets::Listening(listeners) => {
            let options = Options {
                max_connections: config.max_connections,
                drain_timeout: config.drain_timeout,
                exit_idle_time: config.exit_idle_time,
            };
            daemon::run(listeners, client, options, notifier)?;
            Ok(0)
        }
    }
}

/// The sd_notify(3) socket systemd passed, if any (the SOCKS applet's too).
pub(super) fn notifier() -> Result<Notifier> {
    Notifier::from_env()
        .map_err(|e| Error::Usage(format!("NOTIFY_SOCKET is not a usable socket address: {e}")))
}

/// What to say when `name` is started by hand, without sockets: try
/// `systemd-socket-activate EXAMPLE` (the SOCKS applet's too).
pub(super) fn not_configured(name: &str, example: &str) -> Error {
    Error::NotConfigured(format!(
        "{name} serves sockets passed by systemd (LISTEN_FDS) and none were passed; \
         run it from a socket unit, or try: systemd-socket-activate {example}"
    ))
}

/// [`not_configured`]'s example for a client applet.
fn example(applet: &Applet) -> &'static str {
    match applet.kind {
        Kind::Tcp => "--listen=127.0.0.1:8000 --fdname=work qrexec-connect-tcp 8000",
        Kind::TcpBind => {
            "--listen=127.0.0.1:8000 --fdname=work qrexec-connect-tcp-bind 2049-127.0.1.1"
        }
        Kind::Unix => "--listen=127.0.0.1:8000 --fdname=vault qrexec-connect-unix gpg-agent-ssh",
        _ => "--listen=127.0.0.1:8000 --fdname='work qubes.ConnectTCP+8000' qrexec-connect",
    }
}
