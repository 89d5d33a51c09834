//! What `qrexec-connect add` is asked for: pure parsers of the forward specs.
//!
//! ```text
//! tcp       [ADDR:]LOCALPORT:QUBE[:PORT]         qubes.ConnectTCP+PORT (qvm-connect-tcp's spelling)
//! tcp-bind  [ADDR:]LOCALPORT:QUBE:PORT-BINDADDR  qubes.ConnectTCPBind+PORT-BINDADDR
//! unix      PATH QUBE NAME                        qubes.ConnectUnix+NAME
//! call      ADDRESS QUBE SERVICE[+ARG]            any call (the one-service form)
//! ```
//!
//! Every value goes through the checks the daemon makes at start-up
//! ([`Target`], [`Call`], [`Port`], [`TcpBind`], [`SocketName`]), so what
//! `add` accepts is what the daemon will serve, and a name qrexec would
//! rewrite is refused here rather than sent to another qube later.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

pub use super::spec_error::{PathProblem, SpecError};
use crate::argument::{Port, SocketName, TcpBind};
use crate::call::{Call, Target};

/// The longest path of a Unix socket (`sun_path` less its NUL).
pub(super) const MAX_SOCKET_PATH: usize = 107;

/// Where the client qube listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Listen {
    /// A TCP address, written as systemd shows it: `127.0.0.1:22`, `[::1]:22`.
    Tcp(SocketAddr),
    /// A Unix socket path: absolute, or under `%t/` or `%h/` as systemd expands them.
    Unix(String),
}

impl Listen {
    /// Parses `[ADDR:]PORT` (ADDR defaults to 127.0.0.1; IPv6 in brackets)
    /// or a Unix socket path.
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        if s.starts_with('/') || s.starts_with('%') {
            return unix_path(s).map(Listen::Unix);
        }
        let (addr, rest) = split_addr(s)?;
        let port = Port::parse(rest)?;
        Ok(Listen::Tcp(SocketAddr::new(
            addr.unwrap_or(LOCALHOST),
            port.get(),
        )))
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listen::Tcp(addr) => addr.fmt(f),
            Listen::Unix(path) => f.write_str(path),
        }
    }
}

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// What each connection calls.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Tcp(Port),
    TcpBind(TcpBind),
    Unix(SocketName),
    /// The whole call, in a socket unit of its own.
    Call(Call),
}

/// One forward: an address in this qube, the qube to call, and the call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Forward {
    pub listen: Listen,
    pub target: Target,
    pub kind: Kind,
}

impl Forward {
    /// Parses the words after `add`: the kind, then its spec.
    pub fn parse(words: &[&str]) -> Result<Self, SpecError> {
        match words {
            ["tcp", spec] => tcp(spec),
            ["tcp-bind", spec] => tcp_bind(spec),
            ["unix", path, qube, name] => Ok(Forward {
                listen: Listen::Unix(unix_path(path)?),
                target: target(qube)?,
                kind: Kind::Unix(SocketName::parse(name)?),
            }),
            ["call", address, qube, call] => Ok(Forward {
                listen: Listen::parse(address)?,
                target: target(qube)?,
                kind: Kind::Call(Call::parse(call)?),
            }),
            [kind, ..] if matches!(*kind, "tcp" | "tcp-bind" | "unix" | "call") => {
                Err(SpecError::WordCount((*kind).to_owned()))
            }
            [kind, ..] => Err(SpecError::UnknownKind((*kind).to_owned())),
            [] => Err(SpecError::Nothing),
        }
    }

    /// The call each connection makes, e.g. `qubes.ConnectTCP+22`.
    pub fn call(&self) -> Call {
        let (service, argument) = match &self.kind {
            Kind::Call(call) => return call.clone(),
            Kind::Tcp(port) => ("qubes.ConnectTCP", port.to_string()),
            Kind::TcpBind(bind) => ("qubes.ConnectTCPBind", bind.to_string()),
            Kind::Unix(name) => ("qubes.ConnectUnix", name.to_string()),
        };
        Call::new(service, Some(&argument)).expect("checked parts make a valid call")
    }
}

/// The forms of `add`, for messages.
pub const USAGE: &str = "the forms are: add tcp [ADDR:]LOCALPORT:QUBE[:PORT], \
add tcp-bind [ADDR:]LOCALPORT:QUBE:PORT-BINDADDR, add unix PATH QUBE NAME, \
add call ADDRESS QUBE SERVICE[+ARG]";

/// `[ADDR:]LOCALPORT:QUBE[:PORT]`, as `qvm-connect-tcp` spells it.
fn tcp(spec: &str) -> Result<Forward, SpecError> {
    let (addr, rest) = split_addr(spec)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (addr, local, qube, port) = match (addr, parts.as_slice()) {
        (None, [a, local, qube, port]) => (Some(ipv4(a)?), *local, *qube, *port),
        // ADDR:LOCALPORT:QUBE: a port has no dot, an IPv4 address has three.
        (None, [a, local, qube]) if a.contains('.') => (Some(ipv4(a)?), *local, *qube, *local),
        (addr, [local, qube, port]) => (addr, *local, *qube, *port),
        (addr, [local, qube]) => (addr, *local, *qube, *local),
        _ => return Err(SpecError::NotTcp(spec.to_owned())),
    };
    Ok(Forward {
        listen: Listen::Tcp(SocketAddr::new(
            addr.unwrap_or(LOCALHOST),
            Port::parse(local)?.get(),
        )),
        target: target(qube)?,
        kind: Kind::Tcp(Port::parse(port)?),
    })
}

/// `[ADDR:]LOCALPORT:QUBE:PORT-BINDADDR`.
fn tcp_bind(spec: &str) -> Result<Forward, SpecError> {
    let (addr, rest) = split_addr(spec)?;
    let parts: Vec<&str> = rest.split(':').collect();
    let (addr, local, qube, bind) = match (addr, parts.as_slice()) {
        (None, [a, local, qube, bind]) => (Some(ipv4(a)?), *local, *qube, *bind),
        (addr, [local, qube, bind]) => (addr, *local, *qube, *bind),
        _ => return Err(SpecError::NotTcpBind(spec.to_owned())),
    };
    Ok(Forward {
        listen: Listen::Tcp(SocketAddr::new(
            addr.unwrap_or(LOCALHOST),
            Port::parse(local)?.get(),
        )),
        target: target(qube)?,
        kind: Kind::TcpBind(TcpBind::parse(bind)?),
    })
}

/// Splits a leading `[IPV6]:` off; an IPv4 address is left to the caller,
/// which alone knows how many fields follow.
fn split_addr(s: &str) -> Result<(Option<IpAddr>, &str), SpecError> {
    let Some(bracketed) = s.strip_prefix('[') else {
        return match s.split_once(':') {
            // `ADDR:PORT` for Listen::parse: one colon, an address before it.
            Some((addr, port)) if !port.contains(':') && addr.contains('.') => {
                Ok((Some(ipv4(addr)?), port))
            }
            _ => Ok((None, s)),
        };
    };
    let (addr, rest) = bracketed
        .split_once("]:")
        .ok_or_else(|| SpecError::Ipv6Unclosed(s.to_owned()))?;
    let addr: Ipv6Addr = addr
        .parse()
        .map_err(|_| SpecError::NotIpv6(addr.to_owned()))?;
    Ok((Some(IpAddr::V6(addr)), rest))
}

fn ipv4(s: &str) -> Result<IpAddr, SpecError> {
    s.parse::<Ipv4Addr>()
        .map(IpAddr::V4)
        .map_err(|_| SpecError::NotIpv4(s.to_owned()))
}

/// The qube: any target the daemon accepts, refused where qrexec would rewrite it.
fn target(s: &str) -> Result<Target, SpecError> {
    Target::parse(s).map_err(|e| SpecError::Qube(s.to_owned(), e))
}

/// A Unix socket path systemd can bind and we can write in a unit line.
fn unix_path(s: &str) -> Result<String, SpecError> {
    let bad = |why| Err(SpecError::SocketPath(s.to_owned(), why));
    if !(s.starts_with('/') || s.starts_with("%t/") || s.starts_with("%h/")) {
        return bad(PathProblem::NotAbsolute);
    }
    if s.len() > MAX_SOCKET_PATH {
        return bad(PathProblem::TooLong);
    }
    if let Some(c) = s.chars().find(|&c| c.is_whitespace() || c.is_control()) {
        return bad(PathProblem::Char(c));
    }
    if s[1..].contains('%') || s.contains('\\') {
        return bad(PathProblem::Percent);
    }
    if s.split('/').any(|part| part == "." || part == "..") || s.ends_with('/') {
        return bad(PathProblem::DotComponent);
    }
    Ok(s.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ParseError;

    fn add(words: &str) -> Result<Forward, SpecError> {
        Forward::parse(&words.split(' ').collect::<Vec<_>>())
    }

    #[test]
    fn tcp_specs() {
        for (spec, listen, qube, call) in [
            (
                "2222:work:22",
                "127.0.0.1:2222",
                "work",
                "qubes.ConnectTCP+22",
            ),
            ("22:work", "127.0.0.1:22", "work", "qubes.ConnectTCP+22"),
            (
                "127.0.0.2:80:web:8080",
                "127.0.0.2:80",
                "web",
                "qubes.ConnectTCP+8080",
            ),
            (
                "[::1]:2222:work:22",
                "[::1]:2222",
                "work",
                "qubes.ConnectTCP+22",
            ),
            ("[::1]:22:work", "[::1]:22", "work", "qubes.ConnectTCP+22"),
            (
                "127.0.0.3:22:work",
                "127.0.0.3:22",
                "work",
                "qubes.ConnectTCP+22",
            ),
            (
                "8080:@default",
                "127.0.0.1:8080",
                "@default",
                "qubes.ConnectTCP+8080",
            ),
            (
                "80:@dispvm+web-dvm:80",
                "127.0.0.1:80",
                "@dispvm:web-dvm",
                "qubes.ConnectTCP+80",
            ),
        ] {
            let f = add(&format!("tcp {spec}")).unwrap_or_else(|e| panic!("{spec}: {e}"));
            assert_eq!(f.listen.to_string(), listen, "{spec}");
            assert_eq!(f.target.as_str(), qube, "{spec}");
            assert_eq!(f.call().as_str(), call, "{spec}");
        }
    }

    #[test]
    fn tcp_refusals() {
        use crate::error::QubeNameError as Q;
        let qube = |q: &str, e| SpecError::Qube(q.into(), e);
        let port = |p: &str| SpecError::Parse(ParseError::Port(p.into()));
        let not_ipv4 = |a: &str| SpecError::NotIpv4(a.into());
        let words = SpecError::WordCount("tcp".into());
        for (bad, why) in [
            ("tcp 2222", SpecError::NotTcp("2222".into())),
            ("tcp 2222:work:22:1", not_ipv4("2222")),
            ("tcp 0:work:22", port("0")),
            ("tcp 2222:work:022", port("022")),
            (
                "tcp 2222:wo/rk:22",
                qube("wo/rk", ParseError::QubeName(Q::Char('/'))),
            ),
            (
                "tcp 2222:wörk:22",
                qube("wörk", ParseError::QubeName(Q::Char('ö'))),
            ),
            (
                "tcp 2222:@anyvm:22",
                qube("@anyvm", ParseError::UnknownKeyword("anyvm".into())),
            ),
            ("tcp 2222:@dispvm:web-dvm:22", not_ipv4("2222")),
            ("tcp 10.0.0.300:2222:work:22", not_ipv4("10.0.0.300")),
            (
                "tcp [::1:2222:work:22",
                SpecError::Ipv6Unclosed("[::1:2222:work:22".into()),
            ),
            ("tcp [nope]:2222:work:22", SpecError::NotIpv6("nope".into())),
            (
                "tcp ::1:2222:work:22",
                SpecError::NotTcp("::1:2222:work:22".into()),
            ),
            ("tcp", words.clone()),
            ("tcp a b", words),
            ("udp 53:dns", SpecError::UnknownKind("udp".into())),
        ] {
            assert_eq!(add(bad), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn other_kinds() {
        let f = add("tcp-bind 2049:nfs:2049-127.0.1.1").unwrap();
        assert_eq!(
            (f.listen.to_string(), f.call().as_str()),
            (
                "127.0.0.1:2049".to_owned(),
                "qubes.ConnectTCPBind+2049-127.0.1.1"
            )
        );
        let f = add("tcp-bind 127.0.0.3:2049:nfs:2049-127.0.1.1").unwrap();
        assert_eq!(f.listen.to_string(), "127.0.0.3:2049");
        let f = add("unix %t/qrexec-connect-unix/S.ssh vault gpg-agent-ssh").unwrap();
        assert_eq!(
            f.listen,
            Listen::Unix("%t/qrexec-connect-unix/S.ssh".into())
        );
        assert_eq!(f.call().as_str(), "qubes.ConnectUnix+gpg-agent-ssh");
        let f = add("call 8000 work qubes.GetDate").unwrap();
        assert_eq!(f.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(f.call().as_str(), "qubes.GetDate");
        let f = add("call [::1]:8000 @default my.Service+x").unwrap();
        assert_eq!(f.listen.to_string(), "[::1]:8000");
        let f = add("call 127.0.0.5:8000 work a.B").unwrap();
        assert_eq!(f.listen.to_string(), "127.0.0.5:8000");
    }

    #[test]
    fn other_refusals() {
        let path = |p: &str, why| SpecError::SocketPath(p.into(), why);
        let parse = SpecError::Parse;
        let ten = std::net::Ipv4Addr::new(10, 0, 0, 1);
        for (bad, why) in [
            (
                "tcp-bind 2049:nfs:2049",
                parse(ParseError::NotPortBindAddr("2049".into())),
            ),
            (
                "tcp-bind 2049:nfs:2049-10.0.0.1",
                parse(ParseError::BindNotLoopback(ten)),
            ),
            (
                "unix relative/path vault ssh",
                path("relative/path", PathProblem::NotAbsolute),
            ),
            (
                "unix /a/../b vault ssh",
                path("/a/../b", PathProblem::DotComponent),
            ),
            (
                "unix /a/b vault .ssh",
                parse(ParseError::HiddenSocketName(".ssh".into())),
            ),
            (
                "unix /a/b vault a+b",
                parse(ParseError::SocketNameChar('+')),
            ),
            (
                "unix %x/b vault ssh",
                path("%x/b", PathProblem::NotAbsolute),
            ),
            (
                "unix /a%t/b vault ssh",
                path("/a%t/b", PathProblem::Percent),
            ),
            (
                "unix /a/b/ vault ssh",
                path("/a/b/", PathProblem::DotComponent),
            ),
            ("call 8000 work qubes.X/y", parse(ParseError::CallChar('/'))),
            ("call 8000 work +x", parse(ParseError::CallStartsWithPlus)),
            (
                "call 8000 wo:rk qubes.X",
                SpecError::Qube(
                    "wo:rk".into(),
                    ParseError::QubeName(crate::error::QubeNameError::Char(':')),
                ),
            ),
            ("call 0 work qubes.X", parse(ParseError::Port("0".into()))),
            ("call work qubes.X", SpecError::WordCount("call".into())),
        ] {
            assert_eq!(add(bad), Err(why), "{bad:?}");
        }
        let long = format!("/{}", "a".repeat(MAX_SOCKET_PATH));
        assert_eq!(
            add(&format!("unix {long} vault ssh")),
            Err(path(&long, PathProblem::TooLong))
        );
    }
}
