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
use log::{info, warn};

use super::{Applet, Kind};
use crate::activation::{self, Passed};
use crate::argument::{Port, SocketName, TcpBind};
use crate::call::{Call, FdName, SystemdDefault, Target};
use crate::daemon::{self, Listener, Options};
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

/// A client applet's configuration, checked: everything its command line
/// and environment say, before any socket is touched.
#[derive(Debug, PartialEq)]
struct Config {
    /// The call for sockets whose name gives only a target.
    call: Option<Call>,
    /// Passed on to qrexec-client-vm, each checked to be an option.
    options: Vec<OsString>,
    max_connections: usize,
    drain_timeout: Duration,
    exit_idle_time: Option<Duration>,
    stdin_socket: StdinSocket,
    qrexec_client_vm: PathBuf,
    /// Where the `--stdin-socket auto` answer is kept (`$RUNTIME_DIRECTORY`).
    cache_dir: Option<PathBuf>,
}

impl Config {
    /// Pure: `env` answers for the variables read here (QREXEC_CLIENT_VM,
    /// RUNTIME_DIRECTORY), so tests need no process environment.
    fn new(applet: &Applet, args: Args, env: impl Fn(&str) -> Option<OsString>) -> Result<Self> {
        let (call, used) = applet_call(applet, &args)?;
        let options: Vec<OsString> = args.rest[used..].iter().map(OsString::from).collect();
        check_passed_options(&options)?;
        if args.max_connections == 0 {
            return Err(Error::Usage("--max-connections must be at least 1".into()));
        }
        let qrexec_client_vm = args
            .qrexec_client_vm
            .or_else(|| env("QREXEC_CLIENT_VM").map(PathBuf::from))
            .unwrap_or_else(|| qrexec::DEFAULT_PATH.into());
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
/// service `--use-stdin-socket` in the qube `junk` and run `--` locally. A
/// lone `-` is such a word too: getopt takes it for the first operand.
fn check_passed_options(options: &[OsString]) -> Result<()> {
    match options.iter().find(|o| {
        o.as_encoded_bytes().first() != Some(&b'-') || o.as_os_str() == "--" || o.as_os_str() == "-"
    }) {
        Some(bad) => Err(Error::Usage(format!(
            "{bad:?} is not an option for qrexec-client-vm: the words after `--` (and after \
             the instance) must each be one option, such as --buffer-size=65536"
        ))),
        None => Ok(()),
    }
}

/// Runs a client applet: its configuration, the logger, the passed
/// sockets and their routes, the qrexec-client-vm to run, then serving.
pub fn run(applet: &'static Applet, raw: &[&str]) -> Result<u8> {
    let Some(args) = parse(applet.name, raw)? else {
        return Ok(0);
    };
    crate::logging::init(applet.name, args.verbose);
    let config = Config::new(applet, args, |name| std::env::var_os(name))?;
    let Some(passed) = activation::take()? else {
        return Err(Error::NotConfigured(not_configured(applet)));
    };
    let notifier = Notifier::from_env()
        .map_err(|e| Error::Usage(format!("NOTIFY_SOCKET is not a usable socket address: {e}")))?;
    let sockets = sockets(passed, config.call.as_ref())?;
    let client = qrexec::Client {
        stdin_socket: use_stdin_socket(&config),
        path: config.qrexec_client_vm.clone(),
        options: config.options.clone(),
    };
    serve(sockets, client, &config, notifier)
}

/// The command line, or `None` once `--help` is printed.
fn parse(name: &str, raw: &[&str]) -> Result<Option<Args>> {
    match super::parse_args(name, &split_values(raw)) {
        Ok(args) => Ok(Some(args)),
        Err((help, 0)) => {
            print!("{help}");
            Ok(None)
        }
        Err((message, _)) => Err(Error::Usage(message.trim_end().to_owned())),
    }
}

/// What the passed sockets are: listeners, or the one connection systemd
/// accepted for us (`Accept=yes`).
enum Sockets {
    Listening(Vec<Listener>),
    Accepted(Listener),
}

/// Routes every passed socket; refuses a connected one among several.
fn sockets(passed: Vec<Passed>, call: Option<&Call>) -> Result<Sockets> {
    let routes = route(&passed, call, activation::own_socket_unit().as_deref())?;
    if let Some(p) = passed.iter().find(|p| !p.listening)
        && passed.len() > 1
    {
        return Err(Error::Unsupported(format!(
            "{} is a connected socket among several: use Accept=yes units with one socket each",
            p.addr
        )));
    }
    let accepted = !passed[0].listening;
    let mut listeners: Vec<Listener> = passed
        .into_iter()
        .zip(routes)
        .map(|(p, (target, call))| Listener {
            fd: p.fd,
            addr: p.addr,
            target,
            call,
        })
        .collect();
    if accepted {
        let connection = listeners.pop().expect("one socket passed");
        return Ok(Sockets::Accepted(connection));
    }
    Ok(Sockets::Listening(listeners))
}

/// Whether to pass `--use-stdin-socket`: as configured, or as
/// qrexec-client-vm's `-h` says (cached across starts).
fn use_stdin_socket(config: &Config) -> bool {
    let path = &config.qrexec_client_vm;
    match config.stdin_socket {
        StdinSocket::Yes => true,
        StdinSocket::No => false,
        StdinSocket::Auto => match stdin_socket::detect(path, config.cache_dir.as_deref()) {
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

/// Decides each socket's target and call from its name; refuses the first
/// bad one, naming it and its address. `own_socket_unit`: see
/// [`SystemdDefault`].
fn route(
    passed: &[Passed],
    call: Option<&Call>,
    own_socket_unit: Option<&str>,
) -> Result<Vec<(Target, Call)>> {
    let mut defaulted = false;
    let mut unit_like = Vec::new();
    let routes = passed
        .iter()
        .map(|p| {
            let default = SystemdDefault {
                accepted: !p.listening,
                own_socket_unit,
            };
            let (parsed, route) = route_one(p, call, &default)?;
            match parsed {
                FdName::Unnamed => defaulted = true,
                FdName::Target(_) if route.0.as_str().ends_with(".socket") => unit_like.push(p),
                _ => {}
            }
            Ok(route)
        })
        .collect::<Result<Vec<_>>>()?;
    if defaulted {
        info!("sockets without a FileDescriptorName of their own call @default");
    }
    for p in unit_like {
        warn!(
            "socket {} calls the qube {}: a socket unit's own name is systemd's default \
             FileDescriptorName, taken as @default only for the unit named like this service",
            p.addr,
            p.name.as_deref().unwrap_or("")
        );
    }
    Ok(routes)
}

/// One socket's route, and what its name said.
fn route_one(
    p: &Passed,
    call: Option<&Call>,
    default: &SystemdDefault<'_>,
) -> Result<(FdName, (Target, Call))> {
    let bad = |why: String| {
        let name = p.name.as_deref().unwrap_or("");
        Error::Usage(format!(
            "socket {} has a bad FileDescriptorName {name:?}: {why}",
            p.addr
        ))
    };
    let parsed =
        FdName::parse_passed(p.name.as_deref(), default).map_err(|e| bad(e.to_string()))?;
    let route = match (&parsed, call) {
        (FdName::Full(target, call), _) => (target.clone(), call.clone()),
        (FdName::Target(target), Some(call)) => (target.clone(), call.clone()),
        (FdName::Unnamed, Some(call)) => (Target::default_target(), call.clone()),
        (FdName::Target(_) | FdName::Unnamed, None) => {
            return Err(bad(
                "qrexec-connect needs 'TARGET SERVICE+ARG' here, or --service".into(),
            ));
        }
    };
    Ok((parsed, route))
}

/// What to say when started by hand, without sockets.
fn not_configured(applet: &Applet) -> String {
    let example = match applet.kind {
        Kind::Tcp => "--fdname=work qrexec-connect-tcp 8000",
        Kind::TcpBind => "--fdname=work qrexec-connect-tcp-bind 2049-127.0.1.1",
        Kind::Unix => "--fdname=vault qrexec-connect-unix gpg-agent-ssh",
        _ => "--fdname='work qubes.ConnectTCP+8000' qrexec-connect",
    };
    format!(
        "{} serves sockets passed by systemd (LISTEN_FDS) and none were passed; \
         run it from a socket unit, or try: systemd-socket-activate --listen=127.0.0.1:8000 {example}",
        applet.name
    )
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
        for bad in [
            &["junk"][..],
            &["--"][..],
            &["-"][..],
            &["-t", "-"][..],
            &["-a", "/run/x"][..],
            &[""][..],
        ] {
            assert!(check_passed_options(&words(bad)).is_err(), "{bad:?}");
        }
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
