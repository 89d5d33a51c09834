//! Where a service applet connects, as the call's argument says: pure, no
//! file-system or network access.

use std::fmt;

use super::NFS_PORT;
use crate::applet::{APPLETS, Kind};
use crate::argument::{LoopbackAddr, Port, SocketName, TcpBind};
use crate::error::ParseError;

/// Where a service applet connects, as its argument says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A name in the `qubes.ConnectUnix/` directory.
    Unix(SocketName),
    /// `127.0.0.1:port` from `bind`.
    Tcp { port: Port, bind: LoopbackAddr },
}

impl Destination {
    /// Parses the argument of the service applet named `applet` (pure: no
    /// file-system access).
    pub fn parse(applet: &str, argument: &str) -> std::result::Result<Self, ParseError> {
        match APPLETS
            .iter()
            .find(|a| a.name == applet && a.kind.is_service())
        {
            Some(applet) => Destination::of(applet.kind, argument),
            None => Err(ParseError::NotServiceApplet(applet.to_owned())),
        }
    }

    /// Parses the argument of the service applet `kind`.
    pub fn of(kind: Kind, argument: &str) -> std::result::Result<Self, ParseError> {
        match kind {
            Kind::ConnectUnix => Ok(Destination::Unix(SocketName::parse(argument)?)),
            Kind::ConnectTcpBind => {
                let TcpBind { port, bind } = TcpBind::parse(argument)?;
                Ok(Destination::Tcp { port, bind })
            }
            Kind::ConnectNfs => Ok(Destination::Tcp {
                port: Port::parse(&NFS_PORT.to_string())?,
                bind: LoopbackAddr::parse(argument)?,
            }),
            Kind::Plain | Kind::Tcp | Kind::TcpBind | Kind::Unix | Kind::SshProxy | Kind::Socks => {
                unreachable!("{kind:?} is a client applet")
            }
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Unix(name) => write!(f, "{name}"),
            Destination::Tcp { port, bind } => write!(f, "127.0.0.1:{port} from {bind}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[test]
    fn destinations() {
        for (applet, argument, want) in [
            ("qubes.ConnectUnix", "gpg-agent-ssh", "gpg-agent-ssh"),
            (
                "qubes.ConnectTCPBind",
                "8080-127.0.1.2",
                "127.0.0.1:8080 from 127.0.1.2",
            ),
            (
                "qubes.ConnectNFS",
                "127.0.1.1",
                "127.0.0.1:2049 from 127.0.1.1",
            ),
        ] {
            let destination = Destination::parse(applet, argument).unwrap();
            assert_eq!(destination.to_string(), want, "{applet} {argument}");
        }
        let ten = Ipv4Addr::new(10, 0, 0, 1);
        let not_ipv4 = |s: &str| ParseError::BindNotIpv4(s.into());
        for (applet, bad, why) in [
            ("qubes.ConnectUnix", "", ParseError::EmptySocketName),
            (
                "qubes.ConnectUnix",
                "..",
                ParseError::HiddenSocketName("..".into()),
            ),
            (
                "qubes.ConnectTCPBind",
                "2049",
                ParseError::NotPortBindAddr("2049".into()),
            ),
            (
                "qubes.ConnectTCPBind",
                "2049-10.0.0.1",
                ParseError::BindNotLoopback(ten),
            ),
            ("qubes.ConnectNFS", "", not_ipv4("")),
            (
                "qubes.ConnectNFS",
                "2049-127.0.1.1",
                not_ipv4("2049-127.0.1.1"),
            ),
            (
                "qubes.ConnectNFS",
                "127.255.255.255",
                ParseError::BindBroadcast(Ipv4Addr::new(127, 255, 255, 255)),
            ),
            (
                "qubes.ConnectSomething",
                "x",
                ParseError::NotServiceApplet("qubes.ConnectSomething".into()),
            ),
        ] {
            assert_eq!(
                Destination::parse(applet, bad),
                Err(why),
                "{applet} {bad:?}"
            );
        }
    }
}
