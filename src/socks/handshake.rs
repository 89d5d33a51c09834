//! The two client messages of a SOCKS5 handshake, parsed from the bytes
//! read so far: the greeting (RFC 1928, section 3) and the request (section
//! 4).

use std::fmt;

use super::{Code, MAX_GREETING, MAX_REQUEST, METHOD_REFUSED, NO_AUTHENTICATION, SUFFIX, VERSION};
use crate::applet::ssh_proxy::SERVICE;
use crate::call::{Call, Target};
use crate::logging::printable;

/// What the bytes so far make.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed<T> {
    /// The message is not whole: it is at least this long (never more than
    /// `MAX_GREETING` or `MAX_REQUEST`). Read up to this, and no further.
    Need(usize),
    /// The message, `len` bytes long.
    Done(T, usize),
    Refused(Refusal),
}

/// Why a handshake ends without a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Not SOCKS5: closed without a reply (a reply would be in a protocol
    /// the client does not speak).
    Version(u8),
    /// The greeting offers no "no authentication".
    NoMethod,
    /// BIND (2), UDP ASSOCIATE (3) or another command than CONNECT (1).
    Command(u8),
    /// An IPv4 (1) or IPv6 (4) address, or an unknown type.
    AddressType(u8),
    /// A name outside `.qube`, shown escaped.
    NotQube(String),
    /// A name under `.qube` whose qube part is no qube name, and why.
    BadQube(String, String),
    /// Port 0.
    PortZero,
}

/// The refusals' replies, made once.
static REPLIES: [[u8; 10]; 4] = [
    super::reply(Code::NotAllowed),
    super::reply(Code::HostUnreachable),
    super::reply(Code::CommandNotSupported),
    super::reply(Code::AddressTypeNotSupported),
];

impl Refusal {
    /// What to send before closing: a method reply to a greeting, a reply
    /// to a request, or nothing to a client that does not speak SOCKS5.
    pub fn reply(&self) -> &'static [u8] {
        match self {
            Refusal::Version(_) => &[],
            Refusal::NoMethod => &METHOD_REFUSED,
            Refusal::NotQube(_) | Refusal::PortZero => &REPLIES[0],
            Refusal::BadQube(..) => &REPLIES[1],
            Refusal::Command(_) => &REPLIES[2],
            Refusal::AddressType(_) => &REPLIES[3],
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Version(v) => write!(f, "not SOCKS5 (version byte {v:#04x}); closed"),
            Refusal::NoMethod => f.write_str(
                "the client offers no \"no authentication\" method (0x00); replied 0xff",
            ),
            Refusal::Command(c) => {
                let name = match c {
                    2 => "BIND",
                    3 => "UDP ASSOCIATE",
                    _ => "an unknown command",
                };
                write!(
                    f,
                    "{name} ({c:#04x}) asked, only CONNECT is served; replied 0x07"
                )
            }
            Refusal::AddressType(t) => {
                let name = match t {
                    1 => "an IPv4 address",
                    4 => "an IPv6 address",
                    _ => "an unknown address type",
                };
                write!(
                    f,
                    "{name} ({t:#04x}) asked, only names QUBE{SUFFIX} are served; replied 0x08"
                )
            }
            Refusal::NotQube(name) => write!(
                f,
                "'{name}' is not a name QUBE{SUFFIX}, the only ones served; replied 0x02"
            ),
            Refusal::BadQube(name, why) => write!(f, "'{name}': {why}; replied 0x04"),
            Refusal::PortZero => f.write_str("port 0 asked; replied 0x02"),
        }
    }
}

/// A CONNECT to a qube: where the call goes and what it is.
#[derive(Debug, PartialEq, Eq)]
pub struct Connect {
    pub target: Target,
    pub call: Call,
}

/// The greeting: VER NMETHODS METHODS. Done when it offers method 0x00.
pub fn greeting(buf: &[u8]) -> Parsed<()> {
    let [version, count, ..] = *buf else {
        return Parsed::Need(2);
    };
    if version != VERSION {
        return Parsed::Refused(Refusal::Version(version));
    }
    let len = 2 + usize::from(count);
    debug_assert!(len <= MAX_GREETING);
    match buf.get(2..len) {
        None => Parsed::Need(len),
        Some(methods) if methods.contains(&NO_AUTHENTICATION) => Parsed::Done((), len),
        Some(_) => Parsed::Refused(Refusal::NoMethod),
    }
}

/// The request: VER CMD RSV ATYP DST.ADDR DST.PORT. Read whole before it
/// is refused, so that closing leaves no unread byte (which would make the
/// kernel reset the connection and lose the reply). RSV is not checked.
pub fn request(buf: &[u8]) -> Parsed<Connect> {
    let [version, command, _, address_type, ..] = *buf else {
        return Parsed::Need(4);
    };
    if version != VERSION {
        return Parsed::Refused(Refusal::Version(version));
    }
    let address_len = match address_type {
        1 => 4,
        4 => 16,
        3 => match buf.get(4) {
            Some(&n) => 1 + usize::from(n),
            None => return Parsed::Need(5),
        },
        // Of unknown length: refused at once.
        other => return Parsed::Refused(Refusal::AddressType(other)),
    };
    let len = 4 + address_len + 2;
    debug_assert!(len <= MAX_REQUEST);
    if buf.len() < len {
        return Parsed::Need(len);
    }
    if command != 1 {
        return Parsed::Refused(Refusal::Command(command));
    }
    if address_type != 3 {
        return Parsed::Refused(Refusal::AddressType(address_type));
    }
    let name = &buf[5..len - 2];
    let port = u16::from_be_bytes([buf[len - 2], buf[len - 1]]);
    match connect(name, port) {
        Ok(connect) => Parsed::Done(connect, len),
        Err(refusal) => Parsed::Refused(refusal),
    }
}

/// `QUBE.qube` (the suffix in any case, a final dot allowed) and a port.
/// The qube part must be a qube name as Qubes and qrexec take it: a
/// keyword such as `@default` is not reachable here.
fn connect(name: &[u8], port: u16) -> Result<Connect, Refusal> {
    let shown = || printable(&String::from_utf8_lossy(name)).into_owned();
    let Ok(text) = std::str::from_utf8(name) else {
        return Err(Refusal::NotQube(shown()));
    };
    let text = text.strip_suffix('.').unwrap_or(text);
    let qube = match text.len().checked_sub(SUFFIX.len()) {
        Some(at) if text.is_char_boundary(at) && text[at..].eq_ignore_ascii_case(SUFFIX) => {
            &text[..at]
        }
        _ => return Err(Refusal::NotQube(shown())),
    };
    let target = match Target::parse(qube) {
        Ok(_) if qube.starts_with(['@', '$']) => {
            return Err(Refusal::BadQube(
                shown(),
                "a keyword, not a qube name".to_owned(),
            ));
        }
        Ok(target) => target,
        Err(e) => return Err(Refusal::BadQube(shown(), e.to_string())),
    };
    if port == 0 {
        return Err(Refusal::PortZero);
    }
    let call = Call::new(SERVICE, Some(&port.to_string()))
        .expect("a service name and a number make a valid call");
    Ok(Connect { target, call })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn connect_request(name: &[u8], port: u16) -> Vec<u8> {
        let mut buf = vec![5, 1, 0, 3, name.len() as u8];
        buf.extend_from_slice(name);
        buf.extend_from_slice(&port.to_be_bytes());
        buf
    }

    #[test]
    fn greetings() {
        assert_eq!(greeting(&[]), Parsed::Need(2));
        assert_eq!(greeting(&[5]), Parsed::Need(2));
        assert_eq!(greeting(&[5, 2]), Parsed::Need(4));
        assert_eq!(greeting(&[5, 2, 2]), Parsed::Need(4));
        assert_eq!(greeting(&[5, 2, 2, 0]), Parsed::Done((), 4));
        assert_eq!(greeting(&[5, 1, 0]), Parsed::Done((), 3));
        assert_eq!(greeting(&[5, 2, 1, 2]), Parsed::Refused(Refusal::NoMethod));
        assert_eq!(greeting(&[5, 0]), Parsed::Refused(Refusal::NoMethod));
        assert_eq!(greeting(&[4, 1]), Parsed::Refused(Refusal::Version(4)));
        assert_eq!(
            greeting(b"GET / HTTP/1.1\r\n"),
            Parsed::Refused(Refusal::Version(b'G'))
        );
        let mut longest = vec![5, 255];
        longest.extend(std::iter::repeat_n(1, 254));
        assert_eq!(greeting(&longest), Parsed::Need(MAX_GREETING));
        longest.push(0);
        assert_eq!(greeting(&longest), Parsed::Done((), MAX_GREETING));
        assert_eq!(Refusal::NoMethod.reply(), [5, 0xff]);
        assert_eq!(Refusal::Version(4).reply(), []);
    }

    #[test]
    fn connects_to_qubes() {
        for (name, qube) in [
            (&b"work.qube"[..], "work"),
            (b"work.QUBE", "work"),
            (b"work.qube.", "work"),
            (b"sys.net.qube", "sys.net"),
            (b"Work-2.qube", "Work-2"),
        ] {
            let buf = connect_request(name, 8080);
            let Parsed::Done(connect, len) = request(&buf) else {
                panic!("{name:?}: {:?}", request(&buf));
            };
            assert_eq!(len, buf.len());
            assert_eq!(connect.target.as_str(), qube);
            assert_eq!(connect.call.as_str(), "qubes.ConnectTCP+8080");
        }
    }

    #[test]
    fn needs_exactly_the_request() {
        let buf = connect_request(b"work.qube", 22);
        assert_eq!(request(&buf[..0]), Parsed::Need(4));
        assert_eq!(request(&buf[..4]), Parsed::Need(5));
        for cut in 5..buf.len() {
            assert_eq!(request(&buf[..cut]), Parsed::Need(buf.len()), "{cut}");
        }
        assert_eq!(request(&[5, 1, 0, 1]), Parsed::Need(10));
        assert_eq!(request(&[5, 1, 0, 4]), Parsed::Need(22));
        let mut longest = vec![5, 1, 0, 3, 255];
        longest.extend(std::iter::repeat_n(b'a', 255));
        assert_eq!(request(&longest), Parsed::Need(MAX_REQUEST));
    }

    #[test]
    fn refusals_and_their_replies() {
        let refused = |buf: &[u8]| match request(buf) {
            Parsed::Refused(r) => r,
            other => panic!("{buf:?}: {other:?}"),
        };
        let mut bind = connect_request(b"work.qube", 22);
        bind[1] = 2;
        assert_eq!(refused(&bind), Refusal::Command(2));
        let mut udp = [5, 3, 0, 1, 127, 0, 0, 1, 0, 53];
        assert_eq!(refused(&udp), Refusal::Command(3));
        udp[1] = 1;
        assert_eq!(refused(&udp), Refusal::AddressType(1));
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend([0; 18]);
        assert_eq!(refused(&v6), Refusal::AddressType(4));
        assert_eq!(refused(&[5, 1, 0, 9]), Refusal::AddressType(9));
        assert_eq!(refused(&[4, 1, 0, 3]), Refusal::Version(4));
        assert!(matches!(
            refused(&connect_request(b"example.com", 80)),
            Refusal::NotQube(_)
        ));
        for bad in [
            &b".qube"[..],
            b"2work.qube",
            b"wo rk.qube",
            b"@default.qube",
            b"$default.qube",
            b"@dispvm+fedora-dvm.qube",
            b"a/b.qube",
        ] {
            let r = refused(&connect_request(bad, 80));
            assert!(matches!(r, Refusal::BadQube(..)), "{bad:?}: {r:?}");
            assert_eq!(r.reply()[1], 0x04);
        }
        assert!(matches!(
            refused(&connect_request(&[0xff, b'.', b'q'], 80)),
            Refusal::NotQube(_)
        ));
        assert!(matches!(
            refused(&connect_request("wörk.qube".as_bytes(), 80)),
            Refusal::BadQube(..)
        ));
        assert_eq!(
            refused(&connect_request(b"work.qube", 0)),
            Refusal::PortZero
        );
        assert_eq!(Refusal::Command(2).reply(), [5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(Refusal::AddressType(1).reply()[1], 8);
        assert_eq!(Refusal::NotQube("x".into()).reply()[1], 2);
        assert_eq!(Refusal::PortZero.reply()[1], 2);
        let shown = Refusal::NotQube(printable("a\nb").into_owned()).to_string();
        assert!(!shown.contains('\n'), "{shown}");
    }
}
