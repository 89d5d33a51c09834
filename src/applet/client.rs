//! The client-side applets: socket-activated, each socket's connections go to
//! `qrexec-client-vm TARGET SERVICE+ARG`.
//!
//! The applets differ only in the call they make from their argument (the
//! unit's `%i`): `qrexec-connect-tcp PORT` calls `qubes.ConnectTCP+PORT`,
//! `qrexec-connect-tcp-bind PORT-BINDADDR` calls `qubes.ConnectTCPBind+...`,
//! `qrexec-connect-unix NAME` calls `qubes.ConnectUnix+NAME`, and the plain
//! `qrexec-connect` takes the call from each socket's name or `--service`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;
use log::info;

use crate::activation::{self, Passed};
use crate::argument::{Port, SocketName, TcpBind};
use crate::call::{Call, FdName, Target};
use crate::daemon::{self, Accepted, Listener, Options};
use crate::error::{Error, Result};
use crate::notify::Notifier;
use crate::qrexec::{self, StdinSocket};
use crate::stdin_socket;

#[derive(FromArgs, Debug)]
/// Forward socket-activated connections over qrexec: each accepted connection
/// becomes the stdin and stdout of `qrexec-client-vm TARGET SERVICE+ARG`.
/// Sockets come from systemd (or systemd-socket-activate); each socket's
/// FileDescriptorName is TARGET, or 'TARGET SERVICE+ARG'.
struct Args {
    /// the qrexec service to call when a socket's name gives only the target
    /// (plain qrexec-connect only)
    #[argh(option)]
    service: Option<String>,

    /// the argument of --service
    #[argh(option)]
    argument: Option<String>,

    /// most connections open at once; more wait in the socket's backlog
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

    /// PORT, PORT-BINDADDR or NAME for the templated applets; then, after
    /// `--`, options passed on to qrexec-client-vm
    #[argh(positional)]
    rest: Vec<String>,
}

/// The call an applet makes for sockets whose name gives only a target.
fn applet_call(name: &str, args: &Args) -> std::result::Result<(Option<Call>, usize), String> {
    let instance = |what: &str| {
        args.rest
            .first()
            .map(String::as_str)
            .ok_or_else(|| format!("missing {what} (the socket unit's instance, %i)"))
    };
    let service_only = |service| {
        if args.service.is_some() || args.argument.is_some() {
            return Err(format!(
                "--service and --argument are for the plain qrexec-connect; {name} calls {service}"
            ));
        }
        Ok(())
    };
    let call = match name {
        "qrexec-connect-tcp" => {
            service_only("qubes.ConnectTCP")?;
            let port = Port::parse(instance("PORT")?)?;
            Call::new("qubes.ConnectTCP", Some(&port.to_string()))?
        }
        "qrexec-connect-tcp-bind" => {
            service_only("qubes.ConnectTCPBind")?;
            let bind = TcpBind::parse(instance("PORT-BINDADDR")?)?;
            Call::new("qubes.ConnectTCPBind", Some(&bind.to_string()))?
        }
        "qrexec-connect-unix" => {
            service_only("qubes.ConnectUnix")?;
            let socket = SocketName::parse(instance("socket NAME")?)?;
            Call::new("qubes.ConnectUnix", Some(socket.as_str()))?
        }
        _ => {
            let call = match &args.service {
                Some(service) => Some(Call::new(service, args.argument.as_deref())?),
                None if args.argument.is_some() => {
                    return Err("--argument needs --service".into());
                }
                None => None,
            };
            return Ok((call, 0));
        }
    };
    Ok((Some(call), 1))
}

/// Our options that take a value. argh knows only `--name value`; the
/// documentation (and systemd units) write `--name=value` too.
const VALUE_OPTIONS: &[&str] = &[
    "--service",
    "--argument",
    "--max-connections",
    "--drain-timeout",
    "--exit-idle-time",
    "--stdin-socket",
    "--qrexec-client-vm",
];

/// Splits `--name=value` of our value options, up to `--` (what follows is
/// qrexec-client-vm's, such as `--buffer-size=N`, and stays whole).
fn split_values<'a>(raw: &[&'a str]) -> Vec<&'a str> {
    let mut args = Vec::with_capacity(raw.len() + 2);
    let mut ours = true;
    for &arg in raw {
        if ours {
            if arg == "--" {
                ours = false;
            } else if let Some((name, value)) = arg.split_once('=')
                && VALUE_OPTIONS.contains(&name)
            {
                args.extend([name, value]);
                continue;
            }
        }
        args.push(arg);
    }
    args
}

/// Checks the words passed on to qrexec-client-vm: each must be an option.
/// qrexec-client-vm's options end at its first other word, which it takes
/// for the target: `junk --use-stdin-socket -- work CALL` would call the
/// service `--use-stdin-socket` in the qube `junk` and run `--` locally.
fn check_passed_options(options: &[OsString]) -> std::result::Result<(), String> {
    match options
        .iter()
        .find(|o| o.as_encoded_bytes().first() != Some(&b'-') || o.as_os_str() == "--")
    {
        Some(bad) => Err(format!(
            "{bad:?} is not an option for qrexec-client-vm: the words after `--` (and after \
             the instance) must each be one option, such as --buffer-size=65536"
        )),
        None => Ok(()),
    }
}

/// Runs a client applet.
pub fn run(name: &'static str, raw: &[&str]) -> Result<u8> {
    let raw = split_values(raw);
    let args: Args = match super::parse_args(name, &raw) {
        Ok(args) => args,
        Err((help, 0)) => {
            print!("{help}");
            return Ok(0);
        }
        Err((message, _)) => return Err(Error::Usage(message.trim_end().to_owned())),
    };
    crate::logging::init(name, args.verbose);
    let (call, used) = applet_call(name, &args).map_err(Error::Usage)?;
    let options: Vec<OsString> = args.rest[used..].iter().map(OsString::from).collect();
    check_passed_options(&options).map_err(Error::Usage)?;
    if args.max_connections == 0 {
        return Err(Error::Usage("--max-connections must be at least 1".into()));
    }
    let Some(passed) = activation::take()? else {
        return Err(Error::NotConfigured(not_configured(name)));
    };
    let notifier = Notifier::from_env()
        .map_err(|e| Error::Usage(format!("NOTIFY_SOCKET is not a usable socket address: {e}")))?;
    let routes = route(&passed, call.as_ref())?;
    let path = args
        .qrexec_client_vm
        .or_else(|| std::env::var_os("QREXEC_CLIENT_VM").map(PathBuf::from))
        .unwrap_or_else(|| qrexec::DEFAULT_PATH.into());
    let stdin_socket = match args.stdin_socket {
        StdinSocket::Yes => true,
        StdinSocket::No => false,
        StdinSocket::Auto => match stdin_socket::detect(
            &path,
            stdin_socket::cache_dir(std::env::var_os("RUNTIME_DIRECTORY").as_deref()).as_deref(),
        ) {
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
                log::warn!(
                    "cannot run {} -h ({e}); connections fail until it is installed",
                    path.display()
                );
                false
            }
        },
    };
    let client = qrexec::Client {
        path,
        options,
        stdin_socket,
    };
    if let Some(p) = passed.iter().find(|p| !p.listening)
        && passed.len() > 1
    {
        return Err(Error::Unsupported(format!(
            "{} is a connected socket among several: use Accept=yes units with one socket each",
            p.addr
        )));
    }
    let accepted = !passed[0].listening;
    let mut routed = passed.into_iter().zip(routes);
    if accepted {
        // Accept=yes: systemd accepted the connection and started us for it.
        let (p, (target, call)) = routed.next().expect("one socket passed");
        let connection = Accepted {
            fd: p.fd,
            target,
            call,
        };
        return daemon::serve_one(connection, &client, &notifier);
    }
    let listeners: Vec<Listener> = routed
        .map(|(p, (target, call))| Listener {
            fd: p.fd,
            addr: p.addr,
            target,
            call,
        })
        .collect();
    daemon::run(
        listeners,
        client,
        Options {
            max_connections: args.max_connections,
            drain_timeout: Duration::from_secs(args.drain_timeout),
            exit_idle_time: args.exit_idle_time.map(Duration::from_secs),
        },
        notifier,
    )?;
    Ok(0)
}

/// Decides each socket's target and call from its name; refuses the first
/// bad one, naming it and its address.
fn route(passed: &[Passed], call: Option<&Call>) -> Result<Vec<(Target, Call)>> {
    let mut defaulted = false;
    let routes = passed
        .iter()
        .map(|p| {
            let bad = |why: String| {
                let name = p.name.as_deref().unwrap_or("");
                Error::Usage(format!(
                    "socket {} has a bad FileDescriptorName {name:?}: {why}",
                    p.addr
                ))
            };
            let parsed = FdName::parse(p.name.as_deref()).map_err(bad)?;
            let (target, call) = match (parsed, call) {
                (FdName::Full(target, call), _) => (target, call),
                (FdName::Target(target), Some(call)) => (target, call.clone()),
                (FdName::Unnamed, Some(call)) => {
                    defaulted = true;
                    (Target::default_target(), call.clone())
                }
                (FdName::Target(_) | FdName::Unnamed, None) => {
                    return Err(bad(
                        "qrexec-connect needs 'TARGET SERVICE+ARG' here, or --service".into(),
                    ));
                }
            };
            Ok((target, call))
        })
        .collect::<Result<Vec<_>>>()?;
    if defaulted {
        info!("sockets without a FileDescriptorName of their own call @default");
    }
    Ok(routes)
}

/// What to say when started by hand, without sockets.
fn not_configured(name: &str) -> String {
    let example = match name {
        "qrexec-connect-tcp" => "--fdname=work qrexec-connect-tcp 8000",
        "qrexec-connect-tcp-bind" => "--fdname=work qrexec-connect-tcp-bind 2049-127.0.1.1",
        "qrexec-connect-unix" => "--fdname=vault qrexec-connect-unix gpg-agent-ssh",
        _ => "--fdname='work qubes.ConnectTCP+8000' qrexec-connect",
    };
    format!(
        "{name} serves sockets passed by systemd (LISTEN_FDS) and none were passed; \
         run it from a socket unit, or try: systemd-socket-activate --listen=127.0.0.1:8000 {example}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Args {
        Args::from_args(&["x"], list).unwrap()
    }

    #[test]
    fn applet_calls() {
        let (call, used) = applet_call("qrexec-connect-tcp", &args(&["22"])).unwrap();
        assert_eq!((call.unwrap().as_str(), used), ("qubes.ConnectTCP+22", 1));
        let (call, _) = applet_call("qrexec-connect-tcp-bind", &args(&["2049-127.0.1.1"])).unwrap();
        assert_eq!(
            call.unwrap().as_str(),
            "qubes.ConnectTCPBind+2049-127.0.1.1"
        );
        let (call, _) = applet_call("qrexec-connect-unix", &args(&["gpg-agent-ssh"])).unwrap();
        assert_eq!(call.unwrap().as_str(), "qubes.ConnectUnix+gpg-agent-ssh");
        let (call, used) = applet_call("qrexec-connect", &args(&[])).unwrap();
        assert_eq!((call, used), (None, 0));
        let (call, _) = applet_call(
            "qrexec-connect",
            &args(&["--service", "qubes.ConnectTCP", "--argument", "80"]),
        )
        .unwrap();
        assert_eq!(call.unwrap().as_str(), "qubes.ConnectTCP+80");
        let (_, used) = applet_call(
            "qrexec-connect-tcp",
            &args(&["22", "--", "--buffer-size=1"]),
        )
        .unwrap();
        assert_eq!(used, 1);
    }

    #[test]
    fn value_options_with_equals() {
        assert_eq!(
            split_values(&[
                "--stdin-socket=no",
                "22",
                "--max-connections=5",
                "--",
                "--buffer-size=1"
            ]),
            [
                "--stdin-socket",
                "no",
                "22",
                "--max-connections",
                "5",
                "--",
                "--buffer-size=1"
            ]
        );
        assert_eq!(
            split_values(&["--verbose=1"]),
            ["--verbose=1"],
            "not a value option"
        );
        assert_eq!(
            split_values(&["--service=a=b"]),
            ["--service", "a=b"],
            "split at the first ="
        );
    }

    #[test]
    fn passed_words_must_be_options() {
        let words = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(check_passed_options(&words(&["--buffer-size=1", "-t"])).is_ok());
        assert!(check_passed_options(&words(&[])).is_ok());
        for bad in [&["junk"][..], &["--"][..], &["-a", "/run/x"][..], &[""][..]] {
            assert!(check_passed_options(&words(bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn refuses_bad_applet_arguments() {
        for (name, list) in [
            ("qrexec-connect-tcp", &["0"][..]),
            ("qrexec-connect-tcp", &[][..]),
            ("qrexec-connect-tcp", &["22", "--service", "x"][..]),
            ("qrexec-connect-tcp-bind", &["2049-10.0.0.1"][..]),
            ("qrexec-connect-unix", &[".."][..]),
            ("qrexec-connect", &["--argument", "1"][..]),
            ("qrexec-connect", &["--service", "a b"][..]),
        ] {
            assert!(applet_call(name, &args(list)).is_err(), "{name} {list:?}");
        }
    }
}
