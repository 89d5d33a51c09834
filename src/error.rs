//! The one error type of the program, and the exit status each kind maps to.
//!
//! Statuses follow the LSB init-script conventions that systemd also uses
//! (`systemd.exec(5)`, "Process Exit Codes"): 1 generic failure, 2 invalid
//! argument, 3 unsupported feature, 6 not configured.

use std::fmt;
use std::io;

/// Everything that can end an applet early.
#[derive(Debug)]
pub enum Error {
    /// A bad command line, argument, fd name or environment value (status 2).
    Usage(String),
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

    /// The process exit status for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
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
            Error::Io { op, source } => write!(f, "failed to {op}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

pub type Result<T> = std::result::Result<T, Error>;

/// Adds the operation to an `io::Result`, turning it into our `Result`.
pub trait Context<T> {
    fn context(self, op: impl FnOnce() -> String) -> Result<T>;
}

impl<T> Context<T> for io::Result<T> {
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
        assert_eq!(Error::Unsupported("x".into()).exit_code(), 3);
        assert_eq!(Error::NotConfigured("x".into()).exit_code(), 6);
        assert_eq!(Error::Unavailable("x".into()).exit_code(), 1);
        let e = Error::io("bind", io::Error::from_raw_os_error(libc::EADDRINUSE));
        assert_eq!(e.exit_code(), 1);
        assert!(e.to_string().starts_with("failed to bind: "));
    }
}
