//! Why a pure parser refused a value: one variant per reason, each shown as
//! one line that quotes the value with its control characters escaped.

use std::ffi::OsString;
use std::fmt;
use std::net::Ipv4Addr;

use crate::activation::MAX_FDS;
use crate::argument::MAX_SOCKET_NAME;
use crate::call::{MAX_FIELD, MAX_QUBE_NAME};

/// Why a qube name is not one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QubeNameError {
    Empty,
    TooLong,
    FirstNotLetter,
    Char(char),
}

impl fmt::Display for QubeNameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QubeNameError::Empty => f.write_str("empty qube name"),
            QubeNameError::TooLong => {
                write!(f, "qube name longer than {MAX_QUBE_NAME} characters")
            }
            QubeNameError::FirstNotLetter => f.write_str("a qube name starts with a letter"),
            QubeNameError::Char(c) => write!(
                f,
                "character {c:?} is not allowed in a qube name (A-Z a-z 0-9 _ . -)"
            ),
        }
    }
}

/// A value refused by one of the parsers; the value is kept as given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParseError {
    // argument.rs
    Port(String),
    BindNotIpv4(String),
    BindNotLoopback(Ipv4Addr),
    BindBroadcast(Ipv4Addr),
    NotPortBindAddr(String),
    EmptySocketName,
    HiddenSocketName(String),
    SocketNameTooLong,
    SocketNameChar(char),
    // call.rs
    EmptyTarget,
    TargetTooLong,
    QubeName(QubeNameError),
    DisposableTemplate(QubeNameError),
    UnknownKeyword(String),
    EmptyService,
    CallStartsWithPlus,
    CallTooLong,
    CallChar(char),
    ServiceWithPlus(String),
    EmptyFdName,
    /// A refused call, and the call as written in the name.
    CallInFdName(Box<ParseError>, String),
    TooManyWords,
    /// A socket unit's name that only the manager can tell from a qube's.
    DefaultUnknown(String),
    // activation.rs
    ListenPid(String),
    ListenFds(String),
    TooManyFds(String),
    NamesForFds {
        names: usize,
        fds: usize,
    },
    NotAscii {
        var: &'static str,
        value: OsString,
    },
    // applet/service/
    NotServiceApplet(String),
    TooManyArguments(usize),
    ArgumentNotUtf8(OsString),
    ArgumentDiffers {
        argv: String,
        env: String,
    },
    // qrexec.rs
    StdinSocket(String),
    // applet/ssh_proxy.rs
    /// An ssh host name that names no target, and why.
    SshHost(String, Box<ParseError>),
}

// One arm per reason, so this function is long (about 100 lines): the texts
// read best side by side, and splitting it would only scatter them.
impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ParseError::*;
        match self {
            Port(s) => write!(
                f,
                "port '{}' is not a number from 1 to 65535 without leading zeros",
                s.escape_debug()
            ),
            BindNotIpv4(s) => write!(
                f,
                "bind address '{}' is not an IPv4 address like 127.0.1.1",
                s.escape_debug()
            ),
            BindNotLoopback(a) => write!(
                f,
                "bind address '{a}' is outside 127.0.0.0/8: the bind side stays on the loopback interface"
            ),
            BindBroadcast(a) => write!(
                f,
                "bind address '{a}' is the broadcast address of 127.0.0.0/8, not a host"
            ),
            NotPortBindAddr(s) => write!(
                f,
                "'{}' is not PORT-BINDADDR (for example 2049-127.0.1.1)",
                s.escape_debug()
            ),
            EmptySocketName => f.write_str("empty socket name"),
            HiddenSocketName(s) => {
                write!(f, "socket name '{}' starts with '.'", s.escape_debug())
            }
            SocketNameTooLong => write!(
                f,
                "socket name longer than {MAX_SOCKET_NAME} bytes (the whole call must fit in {MAX_FIELD})"
            ),
            SocketNameChar(c) => write!(
                f,
                "character {c:?} is not allowed in a socket name (A-Z a-z 0-9 _ . -)"
            ),
            EmptyTarget => f.write_str("empty target"),
            TargetTooLong => write!(f, "target longer than {MAX_FIELD} bytes"),
            QubeName(e) => e.fmt(f),
            DisposableTemplate(e) => write!(f, "disposable template: {e}"),
            UnknownKeyword(k) => write!(
                f,
                "unknown target keyword '@{}' (use a qube name, @default, @adminvm, @dispvm or @dispvm+TEMPLATE)",
                k.escape_debug()
            ),
            EmptyService => f.write_str("empty service name"),
            CallStartsWithPlus => f.write_str("a call starts with the service name, not '+'"),
            CallTooLong => write!(f, "call longer than {MAX_FIELD} bytes"),
            CallChar(c) => write!(
                f,
                "character {c:?} is not allowed in a call (A-Z a-z 0-9 _ . - +)"
            ),
            ServiceWithPlus(s) => write!(
                f,
                "service name '{}' contains '+'; give the argument separately",
                s.escape_debug()
            ),
            EmptyFdName => f.write_str("empty FileDescriptorName"),
            CallInFdName(e, call) => write!(f, "{e} in '{}'", call.escape_debug()),
            TooManyWords => {
                f.write_str("more than two words (the form is TARGET or 'TARGET SERVICE+ARG')")
            }
            DefaultUnknown(name) => write!(
                f,
                "'{}' is systemd's default name if the socket unit of that name passed it, \
                 else a qube's: set FileDescriptorName= in the socket unit",
                name.escape_debug()
            ),
            ListenPid(pid) => write!(f, "LISTEN_PID={pid:?} is not a process id"),
            ListenFds(fds) => write!(f, "LISTEN_FDS={fds:?} is not a number of sockets"),
            TooManyFds(fds) => write!(f, "LISTEN_FDS={fds} is more than {MAX_FDS} sockets"),
            NamesForFds { names, fds } => write!(
                f,
                "LISTEN_FDNAMES has {names} names for LISTEN_FDS={fds} sockets"
            ),
            NotAscii { var, value } => write!(
                f,
                "{var}={value:?} is not ASCII: systemd passes only ASCII there (FileDescriptorName= in systemd.socket(5))"
            ),
            NotServiceApplet(applet) => {
                write!(f, "{} is not a service applet", applet.escape_debug())
            }
            TooManyArguments(n) => write!(f, "expected at most one argument (the call's), got {n}"),
            ArgumentNotUtf8(bad) => {
                write!(f, "QREXEC_SERVICE_ARGUMENT {bad:?} is not valid UTF-8")
            }
            ArgumentDiffers { argv, env } => write!(
                f,
                "argument '{}' differs from QREXEC_SERVICE_ARGUMENT '{}'",
                argv.escape_debug(),
                env.escape_debug()
            ),
            StdinSocket(s) => write!(f, "--stdin-socket takes auto, yes or no, not '{s}'"),
            SshHost(host, e) => write!(f, "host '{}': {e}", host.escape_debug()),
        }
    }
}

impl std::error::Error for ParseError {}

impl From<QubeNameError> for ParseError {
    fn from(e: QubeNameError) -> Self {
        ParseError::QubeName(e)
    }
}

#[cfg(test)]
mod tests {
    use crate::activation;
    use crate::argument::{LoopbackAddr, Port, SocketName, TcpBind};
    use crate::call::{Call, FdName, Target};

    /// The texts the black-box tests and users see, unchanged by the move
    /// from strings to typed errors.
    #[test]
    fn messages() {
        let text = |r: Result<(), super::ParseError>| r.unwrap_err().to_string();
        for (got, want) in [
            (
                text(Port::parse("0a").map(drop)),
                "port '0a' is not a number from 1 to 65535 without leading zeros",
            ),
            (
                text(LoopbackAddr::parse("10.0.0.1").map(drop)),
                "bind address '10.0.0.1' is outside 127.0.0.0/8: the bind side stays on the loopback interface",
            ),
            (
                text(LoopbackAddr::parse("127.255.255.255").map(drop)),
                "bind address '127.255.255.255' is the broadcast address of 127.0.0.0/8, not a host",
            ),
            (
                text(LoopbackAddr::parse("x\n").map(drop)),
                "bind address 'x\\n' is not an IPv4 address like 127.0.1.1",
            ),
            (
                text(TcpBind::parse("2049").map(drop)),
                "'2049' is not PORT-BINDADDR (for example 2049-127.0.1.1)",
            ),
            (
                text(SocketName::parse(".x").map(drop)),
                "socket name '.x' starts with '.'",
            ),
            (
                text(SocketName::parse("a/b").map(drop)),
                "character '/' is not allowed in a socket name (A-Z a-z 0-9 _ . -)",
            ),
            (
                text(Target::parse("@dispvm+2x").map(drop)),
                "disposable template: a qube name starts with a letter",
            ),
            (
                text(Target::parse("@tag+x").map(drop)),
                "unknown target keyword '@tag+x' (use a qube name, @default, @adminvm, @dispvm or @dispvm+TEMPLATE)",
            ),
            (
                text(Call::new("a+b", None).map(drop)),
                "service name 'a+b' contains '+'; give the argument separately",
            ),
            (
                text(FdName::parse(Some("work qubes.X;y")).map(drop)),
                "character ';' is not allowed in a call (A-Z a-z 0-9 _ . - +) in 'qubes.X;y'",
            ),
            (
                text(FdName::parse(Some("a b c")).map(drop)),
                "more than two words (the form is TARGET or 'TARGET SERVICE+ARG')",
            ),
            (
                text(activation::parse(Some("x"), Some("1"), None, 1).map(drop)),
                "LISTEN_PID=\"x\" is not a process id",
            ),
            (
                text(activation::parse(Some("1"), Some("99999"), None, 1).map(drop)),
                "LISTEN_FDS=99999 is more than 4096 sockets",
            ),
            (
                text(activation::parse(Some("1"), Some("1"), Some("a:b"), 1).map(drop)),
                "LISTEN_FDNAMES has 2 names for LISTEN_FDS=1 sockets",
            ),
        ] {
            assert_eq!(got, want);
        }
    }
}
