//! SOCKS version 5 (RFC 1928), as much as a front door to qubes needs: the
//! greeting with "no authentication" (method 0x00), then one CONNECT to a
//! domain name `QUBE.qube` and a port, which becomes the qrexec call
//! `qubes.ConnectTCP+PORT` to `QUBE`. Everything else gets the reply RFC
//! 1928 gives it and the connection is closed.
//!
//! Pure: the daemon reads and writes; [`greeting`] and [`request`] say how
//! many bytes they need, what was asked, or why it is refused. They never
//! need more than [`MAX_GREETING`] and [`MAX_REQUEST`] bytes, and the daemon
//! reads no byte past the request: what the client sends after it is the
//! service's.

mod handshake;

pub use handshake::{Connect, Parsed, Refusal, greeting, request};

/// The protocol version, first byte of every message.
pub const VERSION: u8 = 5;
/// The one authentication method offered: none. Who may connect is the
/// socket's business (127.0.0.1, or a Unix socket's mode); what they reach,
/// dom0 policy's.
pub const NO_AUTHENTICATION: u8 = 0x00;
/// The method reply that says none of the client's methods is acceptable.
pub const NO_ACCEPTABLE_METHOD: u8 = 0xFF;
/// The longest greeting: VER, NMETHODS, up to 255 METHODS.
pub const MAX_GREETING: usize = 2 + 255;
/// The longest request: VER CMD RSV ATYP, a length and up to 255 bytes of
/// name, and the port.
pub const MAX_REQUEST: usize = 4 + 1 + 255 + 2;
/// The domain suffix that names a qube, as in `ssh work.qube`.
pub const SUFFIX: &str = ".qube";

/// The reply codes of RFC 1928, section 6, that we send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    Succeeded = 0x00,
    /// A name outside `.qube`, or port 0: this proxy reaches qubes only.
    NotAllowed = 0x02,
    /// A name under `.qube` that is no valid qube name (qrexec would
    /// rewrite it and call another qube).
    HostUnreachable = 0x04,
    /// BIND, UDP ASSOCIATE or an unknown command.
    CommandNotSupported = 0x07,
    /// An IPv4 or IPv6 address, or an unknown address type.
    AddressTypeNotSupported = 0x08,
}

/// The method reply that accepts "no authentication".
pub const METHOD_ACCEPTED: [u8; 2] = [VERSION, NO_AUTHENTICATION];
/// The method reply that refuses every method offered.
pub const METHOD_REFUSED: [u8; 2] = [VERSION, NO_ACCEPTABLE_METHOD];
/// The reply that lets the client go on: what it sends next is the service's.
pub const SUCCEEDED: [u8; 10] = reply(Code::Succeeded);

/// The reply to a request: VER REP RSV, then the bound address, which
/// nothing here has (the connection is qrexec's): IPv4 0.0.0.0, port 0.
pub const fn reply(code: Code) -> [u8; 10] {
    [VERSION, code as u8, 0, 1, 0, 0, 0, 0, 0, 0]
}
