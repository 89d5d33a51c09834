//! The applets of the multi-call binary: one per name it can be started under.

pub mod client;
pub mod service;
pub mod ssh_proxy;

use crate::error::Result;

/// What an applet is and how to run it.
pub struct Applet {
    /// The name it is started under (a symlink to the binary, or argv[1]).
    pub name: &'static str,
    /// A shorter name accepted as argv[1] of `qrexec-connect`.
    pub short: Option<&'static str>,
    /// One line for `--list`.
    pub about: &'static str,
    /// Runs it with the arguments after its name; returns the exit status.
    pub run: fn(name: &'static str, args: &[&str]) -> Result<u8>,
}

/// The name the binary is installed under; started by it, argv[1] may name an applet.
pub const MULTICALL: &str = "qrexec-connect";

pub const APPLETS: &[Applet] = &[
    Applet {
        name: "qrexec-connect",
        short: None,
        about: "forward each socket to the call its FileDescriptorName (or --service) gives",
        run: client::run,
    },
    Applet {
        name: "qrexec-connect-tcp",
        short: Some("tcp"),
        about: "forward each socket to qubes.ConnectTCP+PORT (client side)",
        run: client::run,
    },
    Applet {
        name: "qrexec-connect-tcp-bind",
        short: Some("tcp-bind"),
        about: "forward each socket to qubes.ConnectTCPBind+PORT-BINDADDR (client side)",
        run: client::run,
    },
    Applet {
        name: "qrexec-connect-unix",
        short: Some("unix"),
        about: "forward each socket to qubes.ConnectUnix+NAME (client side)",
        run: client::run,
    },
    Applet {
        name: "qrexec-connect-ssh-proxy",
        short: Some("ssh-proxy"),
        about: "ssh's ProxyCommand for QUBE.qube: become qrexec-client-vm QUBE qubes.ConnectTCP+PORT",
        run: ssh_proxy::run,
    },
    Applet {
        name: "qubes.ConnectUnix",
        short: None,
        about: "qrexec service: relay the call to the socket $XDG_RUNTIME_DIR/qubes.ConnectUnix/NAME",
        run: service::run,
    },
    Applet {
        name: "qubes.ConnectTCPBind",
        short: None,
        about: "qrexec service: relay the call to TCP 127.0.0.1:PORT from BINDADDR (PORT-BINDADDR)",
        run: service::run,
    },
    Applet {
        name: "qubes.ConnectNFS",
        short: None,
        about: "qrexec service: relay the call to NFS, TCP 127.0.0.1:2049, from BINDADDR",
        run: service::run,
    },
];

/// Finds an applet by its name or short name.
pub fn find(name: &str) -> Option<&'static Applet> {
    APPLETS
        .iter()
        .find(|a| a.name == name || a.short == Some(name))
}

/// The `--list` text: one applet per line.
pub fn list() -> String {
    let width = APPLETS.iter().map(|a| a.name.len()).max().unwrap_or(0);
    APPLETS
        .iter()
        .map(|a| format!("{:width$}  {}\n", a.name, a.about))
        .collect()
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
}
