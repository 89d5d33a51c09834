//! Why `qrexec-connect add` refused a spec: one variant per reason, each
//! shown as one line that quotes the value with its control characters
//! escaped. Values the daemon's own parsers refuse keep their
//! [`ParseError`].

use std::fmt;

use super::spec::USAGE;
use crate::error::ParseError;

/// A refused spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpecError {
    /// A port, call, socket name or PORT-BINDADDR, as the daemon refuses it.
    Parse(ParseError),
    /// The qube, and why it is none.
    Qube(String, ParseError),
    /// Nothing after `add`.
    Nothing,
    UnknownKind(String),
    /// A known kind with too few or too many words after it.
    WordCount(String),
    NotTcp(String),
    NotTcpBind(String),
    /// `[::1:22`: an IPv6 address without its `]:`.
    Ipv6Unclosed(String),
    NotIpv6(String),
    NotIpv4(String),
    /// A Unix socket path, and what is wrong with it.
    SocketPath(String, PathProblem),
}

/// What is wrong with a Unix socket path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PathProblem {
    NotAbsolute,
    TooLong,
    Char(char),
    Percent,
    DotComponent,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpecError::Parse(e) => e.fmt(f),
            SpecError::Qube(qube, e) => write!(f, "qube '{}': {e}", qube.escape_debug()),
            SpecError::Nothing => write!(f, "what to add? {USAGE}"),
            SpecError::UnknownKind(kind) => {
                write!(f, "unknown kind '{}'; {USAGE}", kind.escape_debug())
            }
            SpecError::WordCount(kind) => {
                write!(f, "wrong number of words after '{kind}'; {USAGE}")
            }
            SpecError::NotTcp(spec) => write!(
                f,
                "'{}' is not [ADDR:]LOCALPORT:QUBE[:PORT] (for example 2222:work:22)",
                spec.escape_debug()
            ),
            SpecError::NotTcpBind(spec) => write!(
                f,
                "'{}' is not [ADDR:]LOCALPORT:QUBE:PORT-BINDADDR (for example 2049:nfs:2049-127.0.1.1)",
                spec.escape_debug()
            ),
            SpecError::Ipv6Unclosed(s) => write!(
                f,
                "'{}': an IPv6 address is written [ADDR]:PORT",
                s.escape_debug()
            ),
            SpecError::NotIpv6(s) => write!(f, "'{}' is not an IPv6 address", s.escape_debug()),
            SpecError::NotIpv4(s) => write!(
                f,
                "'{}' is not an IPv4 address (write IPv6 as [::1])",
                s.escape_debug()
            ),
            SpecError::SocketPath(path, why) => {
                write!(f, "socket path '{}': {why}", path.escape_debug())
            }
        }
    }
}

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathProblem::NotAbsolute => f.write_str("must be absolute, or start with %t/ or %h/"),
            PathProblem::TooLong => f.write_str("too long for a Unix socket"),
            PathProblem::Char(c) => write!(f, "contains {c:?}"),
            PathProblem::Percent => {
                f.write_str("only a leading %t/ or %h/ is expanded; no other % or \\")
            }
            PathProblem::DotComponent => f.write_str("has a . or .. component, or ends with /"),
        }
    }
}

impl std::error::Error for SpecError {}

impl From<ParseError> for SpecError {
    fn from(e: ParseError) -> Self {
        SpecError::Parse(e)
    }
}

#[cfg(test)]
mod tests {
    use super::super::spec::{Forward, USAGE};
    use crate::manage::spec::MAX_SOCKET_PATH;

    fn add(words: &str) -> Result<Forward, super::SpecError> {
        Forward::parse(&words.split(' ').collect::<Vec<_>>())
    }

    /// The texts `add` prints, as they were when these were strings.
    #[test]
    fn messages() {
        let text = |words: &str| add(words).unwrap_err().to_string();
        for (words, want) in [
            ("tcp 2222:wo/rk:22", "qube 'wo/rk': character '/' is not allowed in a qube name (A-Z a-z 0-9 _ . -)".to_owned()),
            ("", format!("unknown kind ''; {USAGE}")),
            ("tcp", format!("wrong number of words after 'tcp'; {USAGE}")),
            ("tcp 2222", "'2222' is not [ADDR:]LOCALPORT:QUBE[:PORT] (for example 2222:work:22)".to_owned()),
            ("tcp-bind 2049", "'2049' is not [ADDR:]LOCALPORT:QUBE:PORT-BINDADDR (for example 2049:nfs:2049-127.0.1.1)".to_owned()),
            ("tcp [::1:22:w", "'[::1:22:w': an IPv6 address is written [ADDR]:PORT".to_owned()),
            ("tcp [x]:22:w", "'x' is not an IPv6 address".to_owned()),
            ("tcp 1.2:22:w:1", "'1.2' is not an IPv4 address (write IPv6 as [::1])".to_owned()),
            ("unix a w s", "socket path 'a': must be absolute, or start with %t/ or %h/".to_owned()),
            ("unix /a\tb w s", "socket path '/a\\tb': contains '\\t'".to_owned()),
            ("unix /a%b w s", "socket path '/a%b': only a leading %t/ or %h/ is expanded; no other % or \\".to_owned()),
            ("unix /a/. w s", "socket path '/a/.': has a . or .. component, or ends with /".to_owned()),
            ("call 0 w q", "port '0' is not a number from 1 to 65535 without leading zeros".to_owned()),
        ] {
            assert_eq!(text(words), want, "{words:?}");
        }
        assert_eq!(
            Forward::parse(&[]).unwrap_err().to_string(),
            format!("what to add? {USAGE}")
        );
        let long = format!("/{}", "a".repeat(MAX_SOCKET_PATH));
        assert_eq!(
            text(&format!("unix {long} w s")),
            format!("socket path '{long}': too long for a Unix socket")
        );
    }
}
