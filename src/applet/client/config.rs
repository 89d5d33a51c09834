//! A client applet's command line and environment, checked into a
//! [`Config`] before any socket is touched: pure, so tests need neither
//! sockets nor a process environment.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use argh::FromArgs;

use super::options::check_passed_options;
use crate::applet::{Applet, Kind};
use crate::argument::{Port, SocketName, TcpBind};
use crate::call::Call;
use crate::error::{Error, Result};
use crate::qrexec::{self, StdinSocket};
use crate::stdin_socket;

#[derive(FromArgs, Debug)]
/// Forward socket-activated connections over qrexec: each accepted connection
/// becomes the stdin and stdout of `qrexec-client-vm TARGET SERVICE+ARG`.
/// Sockets come from systemd (or systemd-socket-activate); each socket's
/// FileDescriptorName is TARGET, or 'TARGET SERVICE+ARG'.
pub(super) struct Args {
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
    pub(super) verbose: bool,

    /// PORT, PORT-BINDADDR or NAME for the templated applets; then, after
    /// `--`, options passed on to qrexec-client-vm
    #[argh(positional)]
    rest: Vec<String>,
}

/// A client applet's configuration, checked: everything its command line
/// and environment say, before any socket is touched.
#[derive(Debug, PartialEq)]
pub(super) struct Config {
    /// The call for sockets whose name gives only a target.
    pub(super) call: Option<Call>,
    /// Passed on to qrexec-client-vm, each checked to be an option.
    pub(super) options: Vec<OsString>,
    pub(super) max_connections: usize,
    pub(super) drain_timeout: Duration,
    pub(super) exit_idle_time: Option<Duration>,
    pub(super) stdin_socket: StdinSocket,
    pub(super) qrexec_client_vm: PathBuf,
    /// Where the `--stdin-socket auto` answer is kept (`$RUNTIME_DIRECTORY`).
    pub(super) cache_dir: Option<PathBuf>,
}

impl Config {
    /// Pure: `env` answers for the variables read here (QREXEC_CLIENT_VM,
    /// RUNTIME_DIRECTORY), so tests need no process environment.
    pub(super) fn new(
        applet: &Applet,
        args: Args,
        env: impl Fn(&str) -> Option<OsString>,
    ) -> Result<Self> {
        let (call, used) = applet_call(applet, &args)?;
        let options: Vec<OsString> = args.rest[used..].iter().map(OsString::from).collect();
        check_passed_options(&options)?;
        if args.max_connections == 0 {
            return Err(Error::Usage("--max-connections must be at least 1".into()));
        }
        let qrexec_client_vm =
            qrexec::client_vm_path(args.qrexec_client_vm, env("QREXEC_CLIENT_VM"));
        Ok(Config {
            call,
            options,
            max_connections: args.max_connections,
            drain_timeout: Duration::from_secs(args.drain_timeout),
            exit_idle_time: args.exit_idle_time.map(Duration::from_secs),
            stdin_socket: args.stdin_socket,
            qrexec_client_vm,
            cache_dir: stdin_socket::cache_dir(env("RUNTIME_DIRECTORY").as_deref()),
        })
    }
}

/// The call an applet makes for sockets whose name gives only a target, and
/// how many of the positional words it took (the instance, `%i`).
fn applet_call(applet: &Applet, args: &Args) -> Result<(Option<Call>, usize)> {
    let (service, what) = match applet.kind {
        Kind::Tcp => ("qubes.ConnectTCP", "PORT"),
        Kind::TcpBind => ("qubes.ConnectTCPBind", "PORT-BINDADDR"),
        Kind::Unix => ("qubes.ConnectUnix", "socket NAME"),
        _ => return Ok((plain_call(args)?, 0)),
    };
    if args.service.is_some() || args.argument.is_some() {
        return Err(Error::Usage(format!(
            "--service and --argument are for the plain qrexec-connect; {} calls {service}",
            applet.name
        )));
    }
    let Some(instance) = args.rest.first() else {
        return Err(Error::Usage(format!(
            "missing {what} (the socket unit's instance, %i)"
        )));
    };
    let argument = match applet.kind {
        Kind::Tcp => Port::parse(instance)?.to_string(),
        Kind::TcpBind => TcpBind::parse(instance)?.to_string(),
        _ => SocketName::parse(instance)?.to_string(),
    };
    Ok((Some(Call::new(service, Some(&argument))?), 1))
}

/// The plain applet's call: `--service` and `--argument`, if given.
fn plain_call(args: &Args) -> Result<Option<Call>> {
    match (&args.service, &args.argument) {
        (Some(service), argument) => Ok(Some(Call::new(service, argument.as_deref())?)),
        (None, Some(_)) => Err(Error::Usage("--argument needs --service".into())),
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::applet::find;

    fn args(list: &[&str]) -> Args {
        Args::from_args(&["x"], list).unwrap()
    }

    fn call_of(name: &str, list: &[&str]) -> Result<(Option<Call>, usize)> {
        applet_call(find(name).unwrap(), &args(list))
    }

    #[test]
    fn applet_calls() {
        let (call, used) = call_of("qrexec-connect-tcp", &["22"]).unwrap();
        assert_eq!((call.unwrap().as_str(), used), ("qubes.ConnectTCP+22", 1));
        let (call, _) = call_of("qrexec-connect-tcp-bind", &["2049-127.0.1.1"]).unwrap();
        assert_eq!(
            call.unwrap().as_str(),
            "qubes.ConnectTCPBind+2049-127.0.1.1"
        );
        let (call, _) = call_of("qrexec-connect-unix", &["gpg-agent-ssh"]).unwrap();
        assert_eq!(call.unwrap().as_str(), "qubes.ConnectUnix+gpg-agent-ssh");
        let (call, used) = call_of("qrexec-connect", &[]).unwrap();
        assert_eq!((call, used), (None, 0));
        let (call, _) = call_of(
            "qrexec-connect",
            &["--service", "qubes.ConnectTCP", "--argument", "80"],
        )
        .unwrap();
        assert_eq!(call.unwrap().as_str(), "qubes.ConnectTCP+80");
        let (_, used) = call_of("qrexec-connect-tcp", &["22", "--", "--buffer-size=1"]).unwrap();
        assert_eq!(used, 1);
    }

    #[test]
    fn refuses_bad_applet_arguments() {
        for (name, list, why) in [
            ("qrexec-connect-tcp", &["0"][..], "port '0' is not a number"),
            (
                "qrexec-connect-tcp",
                &[][..],
                "missing PORT (the socket unit's instance, %i)",
            ),
            (
                "qrexec-connect-tcp",
                &["22", "--service", "x"][..],
                "--service and --argument are for the plain qrexec-connect; \
                 qrexec-connect-tcp calls qubes.ConnectTCP",
            ),
            (
                "qrexec-connect-tcp-bind",
                &["2049-10.0.0.1"][..],
                "outside 127.0.0.0/8",
            ),
            (
                "qrexec-connect-unix",
                &[".."][..],
                "socket name '..' starts with '.'",
            ),
            (
                "qrexec-connect",
                &["--argument", "1"][..],
                "--argument needs --service",
            ),
            (
                "qrexec-connect",
                &["--service", "a b"][..],
                "character ' ' is not allowed",
            ),
        ] {
            let e = call_of(name, list).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{name} {list:?}");
            assert!(e.to_string().contains(why), "{name} {list:?}: {e}");
        }
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<OsString> {
        let vars: Vec<(String, OsString)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), OsString::from(v)))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn config_from_arguments_and_environment() {
        let tcp = find("qrexec-connect-tcp").unwrap();
        let config = Config::new(tcp, args(&["22"]), env(&[])).unwrap();
        assert_eq!(
            config,
            Config {
                call: Some(Call::parse("qubes.ConnectTCP+22").unwrap()),
                options: vec![],
                max_connections: 1024,
                drain_timeout: Duration::from_secs(10),
                exit_idle_time: None,
                stdin_socket: StdinSocket::Auto,
                qrexec_client_vm: qrexec::DEFAULT_PATH.into(),
                cache_dir: None,
            }
        );
        let config = Config::new(
            tcp,
            args(&[
                "--max-connections",
                "5",
                "--drain-timeout",
                "3",
                "--exit-idle-time",
                "60",
                "--stdin-socket",
                "no",
                "22",
                "--",
                "--buffer-size=1",
            ]),
            env(&[
                ("QREXEC_CLIENT_VM", "/opt/qrexec-client-vm"),
                ("RUNTIME_DIRECTORY", "/run/user/1000/qrexec-connect:/run/x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.options, [OsString::from("--buffer-size=1")]);
        assert_eq!(config.max_connections, 5);
        assert_eq!(config.drain_timeout, Duration::from_secs(3));
        assert_eq!(config.exit_idle_time, Some(Duration::from_secs(60)));
        assert_eq!(config.stdin_socket, StdinSocket::No);
        assert_eq!(
            config.qrexec_client_vm,
            PathBuf::from("/opt/qrexec-client-vm")
        );
        assert_eq!(
            config.cache_dir,
            Some(PathBuf::from("/run/user/1000/qrexec-connect"))
        );
        // The option wins over the variable.
        let config = Config::new(
            tcp,
            args(&["--qrexec-client-vm", "/a", "22"]),
            env(&[("QREXEC_CLIENT_VM", "/b")]),
        )
        .unwrap();
        assert_eq!(config.qrexec_client_vm, PathBuf::from("/a"));
    }

    #[test]
    fn config_refusals() {
        let tcp = find("qrexec-connect-tcp").unwrap();
        for (list, why) in [
            (
                &["--max-connections", "0", "22"][..],
                "--max-connections must be at least 1",
            ),
            (
                &["22", "--", "-"][..],
                "\"-\" is not an option for qrexec-client-vm",
            ),
            (&["22", "junk"][..], "\"junk\" is not an option"),
        ] {
            let e = Config::new(tcp, args(list), env(&[])).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().contains(why), "{list:?}: {e}");
        }
    }
}
