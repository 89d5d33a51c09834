//! The arguments of the `qubes.Connect*` services: pure parsers shared by the
//! client applets (the unit's `%i`) and the service applets (what qrexec
//! delivers as `QREXEC_SERVICE_ARGUMENT`).
//!
//! Each parser accepts exactly one spelling of each value, so that the same
//! connection always has the same call string, which is what dom0 policy
//! matches (`qubes.ConnectTCP +22`, never `+022`).

use std::fmt;
use std::net::Ipv4Addr;

use crate::call::{MAX_FIELD, is_call_char};
use crate::error::ParseError;

/// A TCP port, 1-65535, in its canonical decimal spelling.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Port(u16);

impl Port {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let bad = || ParseError::Port(s.to_owned());
        if s.is_empty()
            || s.len() > 5
            || !s.bytes().all(|b| b.is_ascii_digit())
            || s.starts_with('0')
        {
            return Err(bad());
        }
        match s.parse::<u16>() {
            Ok(port) if port > 0 => Ok(Port(port)),
            _ => Err(bad()),
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl fmt::Display for Port {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An IPv4 source address on the loopback network (127.0.0.0/8), in dotted-quad form.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoopbackAddr(Ipv4Addr);

impl LoopbackAddr {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        // Ipv4Addr's parser takes only four decimal octets without leading
        // zeros, so the accepted spelling is canonical.
        let addr: Ipv4Addr = s
            .parse()
            .map_err(|_| ParseError::BindNotIpv4(s.to_owned()))?;
        if !addr.is_loopback() {
            return Err(ParseError::BindNotLoopback(addr));
        }
        // Linux accepts a bind to the broadcast address but connects from
        // 127.0.0.1 instead: the server would see the wrong client.
        if addr == Ipv4Addr::new(127, 255, 255, 255) {
            return Err(ParseError::BindBroadcast(addr));
        }
        Ok(LoopbackAddr(addr))
    }

    pub fn get(self) -> Ipv4Addr {
        self.0
    }
}

impl fmt::Display for LoopbackAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// `PORT-BINDADDR`, the argument of `qubes.ConnectTCPBind`: connect to
/// `127.0.0.1:PORT` from `BINDADDR`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpBind {
    pub port: Port,
    pub bind: LoopbackAddr,
}

impl TcpBind {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let (port, bind) = s
            .split_once('-')
            .ok_or_else(|| ParseError::NotPortBindAddr(s.to_owned()))?;
        Ok(TcpBind {
            port: Port::parse(port)?,
            bind: LoopbackAddr::parse(bind)?,
        })
    }
}

impl fmt::Display for TcpBind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.port, self.bind)
    }
}

/// The longest socket name: what fits in a call after `qubes.ConnectUnix+`.
pub const MAX_SOCKET_NAME: usize = MAX_FIELD - "qubes.ConnectUnix+".len();

/// A name in the `qubes.ConnectUnix/` allow-list directory: one path
/// component, never `.`, `..` or hidden, only bytes qrexec carries unchanged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SocketName(String);

impl SocketName {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() {
            return Err(ParseError::EmptySocketName);
        }
        if s.starts_with('.') {
            return Err(ParseError::HiddenSocketName(s.to_owned()));
        }
        if s.len() > MAX_SOCKET_NAME {
            return Err(ParseError::SocketNameTooLong);
        }
        if let Some(c) = s.chars().find(|&c| !is_call_char(c) || c == '+') {
            return Err(ParseError::SocketNameChar(c));
        }
        Ok(SocketName(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SocketName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports() {
        assert_eq!(Port::parse("1").unwrap().get(), 1);
        assert_eq!(Port::parse("22").unwrap().get(), 22);
        assert_eq!(Port::parse("65535").unwrap().get(), 65535);
        for bad in [
            "",
            "0",
            "65536",
            "-1",
            "+22",
            "0022",
            "022",
            "22 ",
            " 22",
            "2a",
            "١٢",
            "99999999999",
        ] {
            assert_eq!(
                Port::parse(bad),
                Err(ParseError::Port(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn loopback_addresses() {
        assert_eq!(
            LoopbackAddr::parse("127.0.1.1").unwrap().to_string(),
            "127.0.1.1"
        );
        for edge in ["127.255.255.254", "127.0.0.0"] {
            assert_eq!(LoopbackAddr::parse(edge).unwrap().to_string(), edge);
        }
        let (ten, broadcast) = (
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(127, 255, 255, 255),
        );
        assert_eq!(
            LoopbackAddr::parse("10.0.0.1"),
            Err(ParseError::BindNotLoopback(ten))
        );
        assert_eq!(
            LoopbackAddr::parse("127.255.255.255"),
            Err(ParseError::BindBroadcast(broadcast))
        );
        for bad in [
            "",
            "::1",
            "127.0.0",
            "127.000.0.1",
            "127.0.0.1 ",
            "localhost",
            "127.1",
            "2130706689",
            "0x7f.0.0.1",
            "127.0.0.01",
            "+127.0.0.1",
        ] {
            assert_eq!(
                LoopbackAddr::parse(bad),
                Err(ParseError::BindNotIpv4(bad.into())),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn tcp_binds() {
        let b = TcpBind::parse("2049-127.0.1.1").unwrap();
        assert_eq!(
            (b.port.get(), b.bind.to_string().as_str()),
            (2049, "127.0.1.1")
        );
        assert_eq!(b.to_string(), "2049-127.0.1.1");
        let ten = Ipv4Addr::new(10, 0, 0, 1);
        for (bad, why) in [
            ("2049", ParseError::NotPortBindAddr("2049".into())),
            ("2049-", ParseError::BindNotIpv4(String::new())),
            ("-127.0.0.1", ParseError::Port(String::new())),
            ("2049-10.0.0.1", ParseError::BindNotLoopback(ten)),
            ("2049-::1", ParseError::BindNotIpv4("::1".into())),
            (
                "2049-127.0.0.1-x",
                ParseError::BindNotIpv4("127.0.0.1-x".into()),
            ),
            ("0-127.0.0.1", ParseError::Port("0".into())),
            ("02049-127.0.0.1", ParseError::Port("02049".into())),
        ] {
            assert_eq!(TcpBind::parse(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn socket_names() {
        assert_eq!(
            SocketName::parse("gpg-agent-ssh").unwrap().as_str(),
            "gpg-agent-ssh"
        );
        for good in ["S.gpg-agent.ssh", &"a".repeat(MAX_SOCKET_NAME)] {
            assert_eq!(SocketName::parse(good).unwrap().as_str(), good);
        }
        let hidden = |s: &str| ParseError::HiddenSocketName(s.into());
        for (bad, why) in [
            ("", ParseError::EmptySocketName),
            (".", hidden(".")),
            ("..", hidden("..")),
            (".hidden", hidden(".hidden")),
            ("a/b", ParseError::SocketNameChar('/')),
            ("a b", ParseError::SocketNameChar(' ')),
            ("a+b", ParseError::SocketNameChar('+')),
            ("a\0b", ParseError::SocketNameChar('\0')),
            (&"a".repeat(300), ParseError::SocketNameTooLong),
            (
                &"a".repeat(MAX_SOCKET_NAME + 1),
                ParseError::SocketNameTooLong,
            ),
        ] {
            assert_eq!(SocketName::parse(bad), Err(why), "{bad:?}");
        }
    }
}
