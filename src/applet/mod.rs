//! The applets of the multi-call binary: one per name it can be started under.

pub mod client;
pub mod service;
pub mod socks;
pub mod ssh_proxy;

use crate::error::Result;

/// Which applet: what its run does, chosen once from its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `qrexec-connect`: the call from each socket's name or `--service`.
    Plain,
    /// `qrexec-connect-tcp PORT`: `qubes.ConnectTCP+PORT`.
    Tcp,
    /// `qrexec-connect-tcp-bind PORT-BINDADDR`: `qubes.ConnectTCPBind+...`.
    TcpBind,
    /// `qrexec-connect-unix NAME`: `qubes.ConnectUnix+NAME`.
    Unix,
    /// `qrexec-connect-ssh-proxy HOST PORT`: ssh's ProxyCommand, becomes
    /// `qrexec-client-vm QUBE qubes.ConnectTCP+PORT`.
    SshProxy,
    /// `qrexec-connect-socks`: a SOCKS5 proxy whose destinations are qubes.
    Socks,
    /// The service `qubes.ConnectUnix+NAME`.
    ConnectUnix,
    /// The service `qubes.ConnectTCPBind+PORT-BINDADDR`.
    ConnectTcpBind,
    /// The service `qubes.ConnectNFS+BINDADDR`.
    ConnectNfs,
}

impl Kind {
    /// A service applet, run by qrexec-agent in the service qube.
    pub fn is_service(self) -> bool {
        matches!(
            self,
            Kind::ConnectUnix | Kind::ConnectTcpBind | Kind::ConnectNfs
        )
    }
}

/// What an applet is and how to run it.
pub struct Applet {
    /// The name it is started under (a symlink to the binary, or argv[1]).
    pub name: &'static str,
    /// A shorter name accepted as argv[1] of `qrexec-connect`.
    pub short: Option<&'static str>,
    /// One line for `--list`.
    pub about: &'static str,
    pub kind: Kind,
}

impl Applet {
    /// Runs it with the arguments after its name; returns the exit status.
    /// `pinned`: the call's argument, when a service applet was started
    /// under the name `SERVICE+ARG` (a per-argument qrexec service file).
    pub fn run(&'static self, pinned: Option<&str>, args: &[&str]) -> Result<u8> {
        match self.kind {
            Kind::ConnectUnix | Kind::ConnectTcpBind | Kind::ConnectNfs => {
                service::run(self, pinned, args)
            }
            Kind::SshProxy => ssh_proxy::run(self, args),
            Kind::Socks => socks::run(self, args),
            Kind::Plain | Kind::Tcp | Kind::TcpBind | Kind::Unix => client::run(self, args),
        }
    }
}

/// The name the binary is installed under; started by it, argv[1] may name an applet.
pub const MULTICALL: &str = "qrexec-connect";

pub const APPLETS: &[Applet] = &[
    Applet {
        name: "qrexec-connect",
        short: None,
        about: "forward each socket to the call its FileDescriptorName (or --service) gives",
        kind: Kind::Plain,
    },
    Applet {
        name: "qrexec-connect-tcp",
        short: Some("tcp"),
        about: "forward each socket to qubes.ConnectTCP+PORT (client side)",
        kind: Kind::Tcp,
    },
    Applet {
        name: "qrexec-connect-tcp-bind",
        short: Some("tcp-bind"),
        about: "forward each socket to qubes.ConnectTCPBind+PORT-BINDADDR (client side)",
        kind: Kind::TcpBind,
    },
    Applet {
        name: "qrexec-connect-unix",
        short: Some("unix"),
        about: "forward each socket to qubes.ConnectUnix+NAME (client side)",
        kind: Kind::Unix,
    },
    Applet {
        name: "qrexec-connect-ssh-proxy",
        short: Some("ssh-proxy"),
        about: "ssh's ProxyCommand for QUBE.qube: become qrexec-client-vm QUBE qubes.ConnectTCP+PORT",
        kind: Kind::SshProxy,
    },
    Applet {
        name: "qrexec-connect-socks",
        short: Some("socks"),
        about: "SOCKS5 proxy: each CONNECT to QUBE.qube:PORT becomes qubes.ConnectTCP+PORT to QUBE",
        kind: Kind::Socks,
    },
    Applet {
        name: "qubes.ConnectUnix",
        short: None,
        about: "qrexec service: relay the call to the socket $XDG_RUNTIME_DIR/qubes.ConnectUnix/NAME",
        kind: Kind::ConnectUnix,
    },
    Applet {
        name: "qubes.ConnectTCPBind",
        short: None,
        about: "qrexec service: relay the call to TCP 127.0.0.1:PORT from BINDADDR (PORT-BINDADDR)",
        kind: Kind::ConnectTcpBind,
    },
    Applet {
        name: "qubes.ConnectNFS",
        short: None,
        about: "qrexec service: relay the call to NFS, TCP 127.0.0.1:2049, from BINDADDR",
        kind: Kind::ConnectNfs,
    },
];

/// Finds an applet by its name or short name.
pub fn find(name: &str) -> Option<&'static Applet> {
    APPLETS
        .iter()
        .find(|a| a.name == name || a.short == Some(name))
}

/// The applet the binary's own name (argv[0]'s basename) selects, and the
/// argument that name pins: qrexec runs `/etc/qubes-rpc/SERVICE+ARG`, where
/// an admin installs it, for the call `SERVICE+ARG` only. `None` for the
/// multi-call name, whose argv[1] selects.
pub fn by_invoked_name(invoked: &str) -> Option<(&'static Applet, Option<&str>)> {
    if let Some(applet) = find(invoked).filter(|a| a.name != MULTICALL) {
        return Some((applet, None));
    }
    let (service, argument) = invoked.split_once('+')?;
    APPLETS
        .iter()
        .find(|a| a.name == service && a.kind.is_service())
        .map(|applet| (applet, Some(argument)))
}

/// The `--list` text: one applet per line.
pub fn list() -> String {
    let width = APPLETS.iter().map(|a| a.name.len()).max().unwrap_or(0);
    APPLETS
        .iter()
        .map(|a| format!("{:width$}  {}\n", a.name, a.about))
        .collect()
}

/// An applet's command line, or `None` once `--help` is printed; argh's
/// message is the usage error.
pub fn parse<T: argh::FromArgs>(name: &str, args: &[&str]) -> Result<Option<T>> {
    match parse_args(name, args) {
        Ok(args) => Ok(Some(args)),
        Err((help, 0)) => {
            print!("{help}");
            Ok(None)
        }
        Err((message, _)) => Err(crate::error::Error::Usage(message.trim_end().to_owned())),
    }
}

/// Parses an applet's command line with argh; `--help` ends with status 0.
pub fn parse_args<T: argh::FromArgs>(
    name: &str,
    args: &[&str],
) -> std::result::Result<T, (String, u8)> {
    T::from_args(&[name], args).map_err(|early| match early.status {
        Ok(()) => (early.output, 0),
        Err(()) => (early.output, 2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique() {
        for (i, a) in APPLETS.iter().enumerate() {
            for b in &APPLETS[i + 1..] {
                assert_ne!(a.name, b.name);
                assert_ne!(a.kind, b.kind);
                assert!(a.short.is_none() || a.short != b.short);
            }
        }
        assert_eq!(find("tcp").unwrap().name, "qrexec-connect-tcp");
        assert_eq!(
            find("qrexec-connect-unix").unwrap().name,
            "qrexec-connect-unix"
        );
        assert!(find("nope").is_none());
    }

    #[test]
    fn invoked_names() {
        let found = |name| by_invoked_name(name).map(|(a, pinned)| (a.kind, pinned));
        assert_eq!(found("qrexec-connect-tcp"), Some((Kind::Tcp, None)));
        assert_eq!(found("tcp"), Some((Kind::Tcp, None)));
        assert_eq!(found("qubes.ConnectNFS"), Some((Kind::ConnectNfs, None)));
        assert_eq!(
            found("qubes.ConnectUnix+gpg-agent-ssh"),
            Some((Kind::ConnectUnix, Some("gpg-agent-ssh")))
        );
        assert_eq!(
            found("qubes.ConnectTCPBind+22-127.0.0.1"),
            Some((Kind::ConnectTcpBind, Some("22-127.0.0.1")))
        );
        assert_eq!(
            found("qubes.ConnectUnix+"),
            Some((Kind::ConnectUnix, Some("")))
        );
        // argv[1] selects under these.
        for name in [
            "qrexec-connect",
            "qrexec-connect-tcp+22",
            "qubes.Other+x",
            "+x",
        ] {
            assert_eq!(found(name), None, "{name}");
        }
    }
}
