//! The one error type of the program, and the exit status each kind maps to.
//!
//! Statuses follow the LSB init-script conventions that systemd also uses
//! (`systemd.exec(5)`, "Process Exit Codes"): 1 generic failure, 2 invalid
//! argument, 3 unsupported feature, 6 not configured.
//!
//! Failed system calls carry what we were doing ([`IoContext::context`]);
//! refused values carry why ([`ParseError`], from the pure parsers).

use std::fmt;
use std::io;

pub use crate::parse_error::{ParseError, QubeNameError};

/// Everything that can end an applet early.
#[derive(Debug)]
pub enum Error {
    /// A bad command line, argument, fd name or environment value (status 2).
    Usage(String),
    /// A value a parser refused (status 2).
    Parse(ParseError),
    /// A passed file descriptor of a kind we cannot serve (status 3).
    Unsupported(String),
    /// Started without sockets to serve (status 6).
    NotConfigured(String),
    /// The peer we were asked to reach is not there (status 1).
    Unavailable(String),
    /// A system call failed (status 1).
    Io { op: String, source: io::Error },
}

impl Error {
    /// Wraps an `io::Error` with what we were doing when it happened.
    pub fn io(op: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            op: op.into(),
            source,
        }
    }

    /// Says what a failed operation was part of, keeping its cause:
    /// `failed to read from stdin while relaying ...: Broken pipe`.
    pub fn during(self, what: impl fmt::Display) -> Self {
        match self {
            Error::Io { op, source } => Error::Io {
                op: format!("{op} while {what}"),
                source,
            },
            other => other,
        }
    }

    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) | Error::Parse(_) => 2,
            Error::Unsupported(_) => 3,
            Error::NotConfigured(_) => 6,
            Error::Unavailable(_) | Error::Io { .. } => 1,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Usage(msg)
            | Error::Unsupported(msg)
            | Error::NotConfigured(msg)
            | Error::Unavailable(msg) => f.write_str(msg),
            Error::Parse(e) => e.fmt(f),
            Error::Io { op, source } => write!(f, "failed to {op}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            Error::Parse(e) => Some(e),
            _ => None,
        }
    }
}

impl From<ParseError> for Error {
    fn from(e: ParseError) -> Self {
        Error::Parse(e)
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Adds the operation to an `io::Result`, turning it into our `Result`.
pub trait IoContext<T> {
    fn context(self, op: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn context(self, op: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| Error::io(op(), source))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_follow_lsb() {
        assert_eq!(Error::Usage("x".into()).exit_code(), 2);
        assert_eq!(Error::Parse(ParseError::EmptyTarget).exit_code(), 2);
        assert_eq!(Error::Unsupported("x".into()).exit_code(), 3);
        assert_eq!(Error::NotConfigured("x".into()).exit_code(), 6);
        assert_eq!(Error::Unavailable("x".into()).exit_code(), 1);
        let e = Error::io("bind", io::Error::from_raw_os_error(libc::EADDRINUSE));
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().starts_with("failed to bind: "));
    }

    #[test]
    fn during_keeps_the_cause() {
        let e = Error::io("read from stdin", io::Error::from_raw_os_error(libc::EPIPE))
            .during("relaying the connection");
        assert!(
            e.to_string()
                .starts_with("failed to read from stdin while relaying the connection: "),
            "{e}"
        );
        let source = std::error::Error::source(&e).unwrap();
        let io = source.downcast_ref::<io::Error>().unwrap();
        assert_eq!(io.raw_os_error(), Some(libc::EPIPE));
        assert_eq!(
            Error::Usage("x".into()).during("y").to_string(),
            "x",
            "only a failed operation takes the context"
        );
    }
}
