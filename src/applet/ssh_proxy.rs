//! `qrexec-connect-ssh-proxy HOST PORT`: ssh's `ProxyCommand` for
//! `Host *.qube` (see `ssh_config(5)`, `ProxyCommand`, and the drop-in
//! `ssh/30-qrexec-connect.conf`), so that `ssh user@work.qube` reaches port
//! 22 of the qube `work` through `qrexec-client-vm work qubes.ConnectTCP+22`,
//! which dom0 policy allows or refuses like any other call.
//!
//! HOST is `QUBE.qube`, or a bare target as a socket name writes it (`work`,
//! `@default`, `@dispvm`, `@dispvm+TEMPLATE`); PORT is the remote port. Both
//! are checked by the parsers the daemon uses, since qrexec-client-vm would
//! silently rewrite what it cannot carry and call another qube or service.
//! A bad one is one line on stderr and status 2, before any call.
//!
//! Then we become qrexec-client-vm (exec, no fork): ssh's stdin and stdout
//! are its pipes to us and stay so, and ssh sees qrexec-client-vm's own exit
//! status (126 refused, 127 no such service, ...). Pipes, not a socket, so no
//! `--use-stdin-socket`: qrexec-client-vm closes its stdout when the service
//! closes its output, which is the EOF ssh reads.

use std::os::unix::process::CommandExt;
use std::process::Command;

use argh::FromArgs;

use crate::argument::Port;
use crate::call::{Call, Target};
use crate::error::{Error, ParseError, Result};
use crate::qrexec;

/// The ssh host name suffix that names a qube.
pub const SUFFIX: &str = ".qube";
/// The service that connects to a TCP port of the target qube.
pub const SERVICE: &str = "qubes.ConnectTCP";

#[derive(FromArgs, Debug)]
/// Connect ssh to a qube over qrexec: run as ssh's ProxyCommand
/// (`ProxyCommand qrexec-connect-ssh-proxy %h %p`), it becomes
/// `qrexec-client-vm QUBE qubes.ConnectTCP+PORT` on ssh's stdin and stdout.
/// qrexec-client-vm is $QREXEC_CLIENT_VM, else /usr/bin/qrexec-client-vm.
struct Args {
    /// QUBE.qube, or a bare QUBE, @default, @dispvm or @dispvm+TEMPLATE
    #[argh(positional)]
    host: String,

    /// the remote TCP port, 1-65535
    #[argh(positional)]
    port: String,
}

/// The target an ssh host name names: `QUBE.qube` or a bare target.
pub fn target(host: &str) -> std::result::Result<Target, ParseError> {
    let name = host.strip_suffix(SUFFIX).unwrap_or(host);
    Target::parse(name).map_err(|e| ParseError::SshHost(host.to_owned(), Box::new(e)))
}

/// The target and call for `HOST PORT`, checked as the daemon checks its own.
pub fn route(host: &str, port: &str) -> std::result::Result<(Target, Call), ParseError> {
    let target = target(host)?;
    let port = Port::parse(port)?;
    let call = Call::new(SERVICE, Some(&port.to_string()))?;
    Ok((target, call))
}

/// Runs the applet: checks its arguments, then execs qrexec-client-vm; it
/// returns only if that exec fails.
pub fn run(applet: &'static super::Applet, raw: &[&str]) -> Result<u8> {
    let args: Args = match super::parse_args(applet.name, raw) {
        Ok(args) => args,
        Err((help, 0)) => {
            print!("{help}");
            return Ok(0);
        }
        // argh's message spans lines; ssh shows ours as one.
        Err((message, _)) => {
            let words: Vec<&str> = message.split_whitespace().collect();
            return Err(Error::Usage(words.join(" ")));
        }
    };
    let (target, call) = route(&args.host, &args.port)?;
    let path = qrexec::client_vm_path(None, std::env::var_os("QREXEC_CLIENT_VM"));
    // stdin, stdout and stderr are ssh's, inherited as they are.
    let error = Command::new(&path)
        .args(["--", target.as_str(), call.as_str()])
        .exec();
    Err(Error::io(format!("run {}", path.display()), error))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names() {
        for (host, want) in [
            ("work.qube", "work"),
            ("work", "work"),
            ("sys.net.qube", "sys.net"),
            ("@default.qube", "@default"),
            ("@default", "@default"),
            ("@dispvm", "@dispvm"),
            ("@dispvm+fedora-dvm.qube", "@dispvm:fedora-dvm"),
            ("@dispvm+fedora-dvm", "@dispvm:fedora-dvm"),
        ] {
            assert_eq!(target(host).unwrap().as_str(), want, "{host}");
        }
        use crate::error::QubeNameError as Q;
        let too_long = format!("{}.qube", "a".repeat(32));
        for (bad, why) in [
            ("", ParseError::EmptyTarget),
            (".qube", ParseError::EmptyTarget),
            ("2work.qube", ParseError::QubeName(Q::FirstNotLetter)),
            ("wo/rk.qube", ParseError::QubeName(Q::Char('/'))),
            ("work.qube;id", ParseError::QubeName(Q::Char(';'))),
            ("@anyvm.qube", ParseError::UnknownKeyword("anyvm".into())),
            ("$(id).qube", ParseError::UnknownKeyword("(id)".into())),
            ("-oProxyCommand=x", ParseError::QubeName(Q::FirstNotLetter)),
            (&too_long, ParseError::QubeName(Q::TooLong)),
        ] {
            let e = target(bad).unwrap_err();
            assert_eq!(e, ParseError::SshHost(bad.into(), Box::new(why)), "{bad:?}");
            assert!(e.to_string().starts_with("host '"), "{bad:?}: {e}");
        }
    }

    #[test]
    fn routes() {
        let (target, call) = route("work.qube", "22").unwrap();
        assert_eq!(
            (target.as_str(), call.as_str()),
            ("work", "qubes.ConnectTCP+22")
        );
        for port in ["0", "022", ""] {
            assert_eq!(
                route("work.qube", port).unwrap_err(),
                ParseError::Port(port.into()),
                "{port:?}"
            );
        }
    }
}
