//! A `ListenStream=` value as systemd reads it (`systemd.socket(5)`;
//! `socket_address_parse()` in systemd's src/shared/socket-netlink.c), and
//! whether a socket's bound address (`getsockname(2)`) is what it declares.
//!
//! - `/path`: a Unix socket (at most 107 bytes); `/var/run/...` is bound as
//!   `/run/...`, as systemd rewrites it;
//! - `@name`: a Unix socket in the abstract namespace;
//! - `vsock:CID:PORT` (also `vsock-stream:`): CID a number, `hypervisor`,
//!   `local`, `host`, `any`, `-1` or empty (any);
//! - `PORT` alone: every address; systemd binds one `[::]:PORT` socket
//!   (dual-stack unless `BindIPv6Only=ipv6-only`), or `0.0.0.0:PORT` on a
//!   kernel without IPv6;
//! - `A.B.C.D:PORT`, `[IPV6]:PORT`, and `[IPV6]:PORT%IFACE` with an interface
//!   scope (name or index; after the port, as systemd parses it), also
//!   `A.B.C.D:PORT%IFACE` where the interface is checked but not bound.
//!
//! An address without a port (`127.0.0.1`, `::1`) or with port 0 is refused,
//! as systemd refuses it.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6};

use crate::sys::socket::SockAddr;

/// The longest Unix socket path systemd binds (`sun_path` and its NUL).
const MAX_UNIX_PATH: usize = 107;
/// `VMADDR_CID_ANY`, also `VMADDR_PORT_ANY`.
const VSOCK_ANY: u32 = u32::MAX;
/// `ALTIFNAMSIZ - 1`: the longest interface name (alternative names included).
const MAX_IFNAME: usize = 127;

/// An interface scope of an IPv6 address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Iface {
    Index(u32),
    Name(String),
}

/// Where a `ListenStream=` line binds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// `PORT` alone: all addresses of both families.
    Port(u16),
    /// An IP address and port, with the interface written after `%`.
    Inet(SocketAddr, Option<Iface>),
    UnixPath(String),
    UnixAbstract(String),
    Vsock {
        cid: u32,
        port: u32,
    },
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Port(port) => write!(f, "{port}"),
            ListenAddr::Inet(addr, iface) => {
                // The scope as written, after the port, not inside [...].
                match addr {
                    SocketAddr::V4(v4) => write!(f, "{v4}")?,
                    SocketAddr::V6(v6) => write!(f, "[{}]:{}", v6.ip(), v6.port())?,
                }
                match iface {
                    Some(Iface::Index(i)) => write!(f, "%{i}"),
                    Some(Iface::Name(n)) => write!(f, "%{n}"),
                    None => Ok(()),
                }
            }
            ListenAddr::UnixPath(p) => f.write_str(p),
            ListenAddr::UnixAbstract(n) => write!(f, "@{n}"),
            ListenAddr::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
        }
    }
}

/// A port as systemd's `parse_ip_port()` takes it: decimal, 1 to 65535.
fn ip_port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a port number"));
    }
    match s.parse::<u16>() {
        Ok(0) => Err("port 0 cannot be listened on".into()),
        Ok(port) => Ok(port),
        Err(_) => Err(format!("port {s} is larger than 65535")),
    }
}

fn decimal_u32(s: &str, what: &str) -> Result<u32, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{s:?} is not a {what}"));
    }
    s.parse()
        .map_err(|_| format!("{what} {s} is larger than {}", u32::MAX))
}

fn vsock(rest: &str) -> Result<ListenAddr, String> {
    let (cid, port) = rest
        .split_once(':')
        .ok_or_else(|| "a vsock address needs vsock:CID:PORT".to_owned())?;
    let port = decimal_u32(port, "vsock port")?;
    if port == VSOCK_ANY {
        return Err(format!("vsock port {port} is reserved"));
    }
    let cid = match cid {
        "" | "any" | "-1" => VSOCK_ANY,
        "hypervisor" => 0,
        "local" => 1,
        "host" => 2,
        cid => decimal_u32(cid, "vsock CID")?,
    };
    Ok(ListenAddr::Vsock { cid, port })
}

/// An interface as systemd's `ifname_valid_full()` accepts it, numbers and
/// alternative names included.
fn iface(s: &str) -> Result<Iface, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<u32>() {
            Ok(i) if i > 0 && i <= i32::MAX as u32 => Ok(Iface::Index(i)),
            _ => Err(format!("{s:?} is not an interface index")),
        };
    }
    let valid = !s.is_empty()
        && s.len() <= MAX_IFNAME
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_graphic() && !b"/:%".contains(&b));
    if !valid {
        return Err(format!("{s:?} is not an interface name"));
    }
    Ok(Iface::Name(s.to_owned()))
}

/// `IP:PORT`, `[IPV6]:PORT` and their `%IFACE` forms.
fn inet(s: &str) -> Result<ListenAddr, String> {
    if s.contains('#') {
        return Err("a listening address takes no server name (#)".into());
    }
    let (s, scope) = match s.split_once('%') {
        Some((addr, name)) => (addr, Some(iface(name)?)),
        None => (s, None),
    };
    let no_port = || format!("{s:?} has no port (write ADDRESS:PORT, or [IPV6]:PORT)");
    let (host, port) = s.rsplit_once(':').ok_or_else(no_port)?;
    let ip: IpAddr = if let Some(inner) = host.strip_prefix('[') {
        let v6 = inner
            .strip_suffix(']')
            .ok_or_else(|| format!("{s:?}: no ']'"))?;
        IpAddr::V6(
            v6.parse::<Ipv6Addr>()
                .map_err(|_| format!("{v6:?} is not an IPv6 address"))?,
        )
    } else if s.parse::<Ipv6Addr>().is_ok() {
        return Err(no_port());
    } else {
        IpAddr::V4(
            host.parse::<Ipv4Addr>()
                .map_err(|_| format!("{host:?} is not an IPv4 address"))?,
        )
    };
    let port = ip_port(port)?;
    let addr = match ip {
        IpAddr::V4(v4) => SocketAddr::from((v4, port)),
        IpAddr::V6(v6) => {
            // The scope is bound as sin6_scope_id: an index now, or a name
            // the caller resolves when matching.
            let index = match &scope {
                Some(Iface::Index(i)) => *i,
                _ => 0,
            };
            SocketAddr::V6(SocketAddrV6::new(v6, port, 0, index))
        }
    };
    Ok(ListenAddr::Inet(addr, scope))
}

impl ListenAddr {
    /// Parses a `ListenStream=` value, specifiers already expanded.
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(rest) = s.strip_prefix("/var/run/") {
            return Self::parse(&format!("/run/{}", rest.trim_start_matches('/')));
        }
        if s.starts_with('/') {
            if s.len() > MAX_UNIX_PATH {
                return Err(format!("socket path longer than {MAX_UNIX_PATH} bytes"));
            }
            if s.len() < 2 || s.contains('\0') {
                return Err(format!("{s:?} is not a socket path"));
            }
            return Ok(ListenAddr::UnixPath(s.to_owned()));
        }
        if let Some(name) = s.strip_prefix('@') {
            if name.is_empty() || name.len() > MAX_UNIX_PATH {
                return Err(format!("{s:?} is not an abstract socket name"));
            }
            return Ok(ListenAddr::UnixAbstract(name.to_owned()));
        }
        if let Some(rest) = s.strip_prefix("vsock:").or(s.strip_prefix("vsock-stream:")) {
            return vsock(rest);
        }
        if s.starts_with("vsock-") {
            return Err(format!("{s:?} is not a stream socket address"));
        }
        if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            return ip_port(s).map(ListenAddr::Port);
        }
        inet(s)
    }

    /// Whether a socket bound by this line reports `bound` from
    /// `getsockname(2)`. `ifindex` turns an interface name into its index
    /// (`if_nametoindex(3)`); `None`: no such interface.
    pub fn matches(&self, bound: &SockAddr, ifindex: &dyn Fn(&str) -> Option<u32>) -> bool {
        match (self, bound) {
            (ListenAddr::Port(port), SockAddr::Inet(b)) => {
                b.port() == *port
                    && b.ip().is_unspecified()
                    && !matches!(b, SocketAddr::V6(v6) if v6.scope_id() != 0)
            }
            (ListenAddr::Inet(SocketAddr::V4(a), _), SockAddr::Inet(SocketAddr::V4(b))) => a == b,
            (ListenAddr::Inet(SocketAddr::V6(a), scope), SockAddr::Inet(SocketAddr::V6(b))) => {
                let scope_id = match scope {
                    None => Some(0),
                    Some(Iface::Index(i)) => Some(*i),
                    Some(Iface::Name(name)) => ifindex(name),
                };
                a.ip() == b.ip() && a.port() == b.port() && scope_id == Some(b.scope_id())
            }
            (ListenAddr::UnixPath(a), SockAddr::UnixPath(b)) => **a == **b,
            (ListenAddr::UnixAbstract(a), SockAddr::UnixAbstract(b)) => **a == **b,
            (ListenAddr::Vsock { cid, port }, SockAddr::Vsock { cid: bc, port: bp }) => {
                port == bp && (cid == bc || *cid == VSOCK_ANY)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> ListenAddr {
        ListenAddr::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn inet(s: &str) -> SockAddr {
        SockAddr::Inet(s.parse().unwrap())
    }

    fn no_ifaces(_: &str) -> Option<u32> {
        None
    }

    fn eth0(name: &str) -> Option<u32> {
        (name == "eth0").then_some(2)
    }

    #[test]
    fn forms_systemd_reads() {
        assert_eq!(parse("1234"), ListenAddr::Port(1234));
        assert_eq!(
            parse("127.0.0.1:1234"),
            ListenAddr::Inet("127.0.0.1:1234".parse().unwrap(), None)
        );
        assert_eq!(
            parse("[::1]:80"),
            ListenAddr::Inet("[::1]:80".parse().unwrap(), None)
        );
        assert_eq!(
            parse("[fe80::1]:80%eth0"),
            ListenAddr::Inet(
                "[fe80::1]:80".parse().unwrap(),
                Some(Iface::Name("eth0".into()))
            )
        );
        assert_eq!(
            parse("[fe80::1]:80%3"),
            ListenAddr::Inet("[fe80::1%3]:80".parse().unwrap(), Some(Iface::Index(3)))
        );
        assert_eq!(
            parse("/run/x.sock"),
            ListenAddr::UnixPath("/run/x.sock".into())
        );
        assert_eq!(parse("/var/run/x"), ListenAddr::UnixPath("/run/x".into()));
        assert_eq!(parse("@abs"), ListenAddr::UnixAbstract("abs".into()));
        assert_eq!(
            parse("vsock:3:1024"),
            ListenAddr::Vsock { cid: 3, port: 1024 }
        );
        assert_eq!(
            parse("vsock::1024"),
            ListenAddr::Vsock {
                cid: VSOCK_ANY,
                port: 1024
            }
        );
        assert_eq!(parse("vsock:host:0"), ListenAddr::Vsock { cid: 2, port: 0 });
        for shown in [
            "[fe80::1]:80%eth0",
            "[fe80::1]:80%3",
            "1.2.3.4:5%lo",
            "@a",
            "/run/b",
        ] {
            assert_eq!(parse(shown).to_string(), shown);
        }
    }

    #[test]
    fn refuses_what_systemd_refuses() {
        for bad in [
            "",
            "0",
            "65536",
            "127.0.0.1",
            "127.0.0.1:0",
            "::1",
            "[::1]",
            "[::1]:",
            "::1:80",
            "[fe80::1%eth0]:80",
            "127.0.0.1:80#name",
            "localhost:80",
            "1.2.3:80",
            "01.2.3.4:80",
            "/",
            "@",
            "vsock:1",
            "vsock:x:1",
            "vsock:1:4294967295",
            "vsock-dgram:1:2",
            "[::1]:80%",
            "[::1]:80%a/b",
            "1.2.3.4:+80",
        ] {
            assert!(ListenAddr::parse(bad).is_err(), "{bad:?}");
        }
        assert!(ListenAddr::parse(&format!("/{}", "a".repeat(106))).is_ok());
        assert!(ListenAddr::parse(&format!("/{}", "a".repeat(107))).is_err());
    }

    #[test]
    fn matches_what_getsockname_returns() {
        let port = parse("1234");
        assert!(port.matches(&inet("[::]:1234"), &no_ifaces));
        assert!(port.matches(&inet("0.0.0.0:1234"), &no_ifaces));
        assert!(!port.matches(&inet("127.0.0.1:1234"), &no_ifaces));
        assert!(!port.matches(&inet("[::]:1235"), &no_ifaces));

        let v4 = parse("127.0.0.2:1234");
        assert!(v4.matches(&inet("127.0.0.2:1234"), &no_ifaces));
        assert!(!v4.matches(&inet("127.0.0.1:1234"), &no_ifaces));
        assert!(!v4.matches(&inet("[::ffff:127.0.0.2]:1234"), &no_ifaces));

        let v6 = parse("[::1]:1234");
        assert!(v6.matches(&inet("[::1]:1234"), &no_ifaces));
        assert!(!v6.matches(&inet("[::1%2]:1234"), &no_ifaces));
        let scoped = parse("[fe80::1]:1234%eth0");
        assert!(scoped.matches(&inet("[fe80::1%2]:1234"), &eth0));
        assert!(!scoped.matches(&inet("[fe80::1%3]:1234"), &eth0));
        assert!(!scoped.matches(&inet("[fe80::1%2]:1234"), &no_ifaces));

        let path = parse("/run/user/1000/s");
        assert!(path.matches(&SockAddr::UnixPath("/run/user/1000/s".into()), &no_ifaces));
        assert!(!path.matches(
            &SockAddr::UnixAbstract("run/user/1000/s".into()),
            &no_ifaces
        ));
        let abs = parse("@s");
        assert!(abs.matches(&SockAddr::UnixAbstract("s".into()), &no_ifaces));
        assert!(!abs.matches(&SockAddr::UnixPath("@s".into()), &no_ifaces));

        let vsock = parse("vsock::5000");
        assert!(vsock.matches(&SockAddr::Vsock { cid: 7, port: 5000 }, &no_ifaces));
        assert!(!vsock.matches(&SockAddr::Vsock { cid: 7, port: 5001 }, &no_ifaces));
        assert!(
            !parse("vsock:3:5000").matches(&SockAddr::Vsock { cid: 7, port: 5000 }, &no_ifaces)
        );
    }
}
