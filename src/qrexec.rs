//! The `qrexec-client-vm(1)` command: how we run it for one connection, and
//! what its exit status means.
//!
//! `qrexec-client-vm [OPTIONS] -- TARGET SERVICE+ARG`: options must come
//! before the target (getopt stops at the first non-option) and anything after
//! the call would be run as a local program, hence the `--`.
//! `--use-stdin-socket` (qrexec 4.2.19, in the Qubes R4.2 updates of May
//! 2024) makes it treat fd 0 as a socket it may `shutdown(SHUT_WR)` when the
//! service closes its output, so the local client sees EOF at once; older
//! versions only close fd 1, which a client whose socket is both stdin and
//! stdout never notices.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::PathBuf;

use crate::call::{Call, Target};
use crate::error::ParseError;
use crate::sys::process::{Exit, Pid, signal_name};
use crate::sys::spawn::Program;

/// Where qrexec-client-vm is installed in every Qubes VM.
pub const DEFAULT_PATH: &str = "/usr/bin/qrexec-client-vm";
/// The qrexec-client-vm to run: `given` (`--qrexec-client-vm`), else
/// `env` (`$QREXEC_CLIENT_VM`), else [`DEFAULT_PATH`].
pub fn client_vm_path(given: Option<PathBuf>, env: Option<OsString>) -> PathBuf {
    given
        .or_else(|| env.map(PathBuf::from))
        .unwrap_or_else(|| DEFAULT_PATH.into())
}

/// The option that marks fd 0 as a socket; its presence in `-h` tells support.
pub const STDIN_SOCKET_FLAG: &str = "--use-stdin-socket";

/// Whether to pass `--use-stdin-socket` (`--stdin-socket=auto|yes|no`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StdinSocket {
    Auto,
    Yes,
    No,
}

impl std::str::FromStr for StdinSocket {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        match s {
            "auto" => Ok(StdinSocket::Auto),
            "yes" => Ok(StdinSocket::Yes),
            "no" => Ok(StdinSocket::No),
            _ => Err(ParseError::StdinSocket(s.to_owned())),
        }
    }
}

/// How to run qrexec-client-vm for each connection.
#[derive(Debug)]
pub struct Client {
    pub path: PathBuf,
    /// Extra options given after `--` on our command line (e.g. `--buffer-size=N`).
    pub options: Vec<OsString>,
    pub stdin_socket: bool,
}

/// A running qrexec-client-vm: its pid and the read end of its stderr.
pub struct Spawned {
    pub pid: Pid,
    pub stderr: OwnedFd,
}

impl Client {
    /// The arguments after the program name.
    pub fn args<'a>(&'a self, target: &'a Target, call: &'a Call) -> Vec<&'a OsStr> {
        let mut args: Vec<&OsStr> = self.options.iter().map(OsString::as_os_str).collect();
        if self.stdin_socket {
            args.push(OsStr::new(STDIN_SOCKET_FLAG));
        }
        args.extend([
            OsStr::new("--"),
            OsStr::new(target.as_str()),
            OsStr::new(call.as_str()),
        ]);
        args
    }

    /// The program for one route, built once and started for each of its
    /// connections, so a spawn allocates nothing of ours.
    pub fn program(&self, target: &Target, call: &Call) -> io::Result<Program> {
        Program::new(&self.path, &self.args(target, call))
    }

    /// Starts qrexec-client-vm for one connection, its stderr a new pipe.
    pub fn spawn(&self, connection: OwnedFd, target: &Target, call: &Call) -> io::Result<Spawned> {
        let (stderr, child_stderr) = crate::sys::pipe()?;
        let pid = spawn(
            &self.program(target, call)?,
            connection,
            child_stderr.as_fd(),
        )?;
        Ok(Spawned { pid, stderr })
    }
}

/// Starts `program` with `connection` as its stdin and stdout and `stderr`
/// as its stderr; returns its pid. Our copy of the connection is closed on
/// return: the child holds the only one.
pub fn spawn(program: &Program, connection: OwnedFd, stderr: BorrowedFd<'_>) -> io::Result<Pid> {
    program.spawn(connection.as_fd(), stderr)
}

/// What an exit status of qrexec-client-vm means, in words, for the log.
pub struct Outcome<'a> {
    pub exit: Exit,
    pub target: &'a Target,
}

impl Outcome<'_> {
    pub fn is_success(&self) -> bool {
        self.exit == Exit::Code(0)
    }

    pub fn is_refusal(&self) -> bool {
        self.exit == Exit::Code(126)
    }

    /// The status a process standing in for qrexec-client-vm should exit with.
    pub fn code(&self) -> u8 {
        match self.exit {
            Exit::Code(code) => code as u8,
            Exit::Signal(sig) => 128u8.wrapping_add(sig as u8),
        }
    }
}

impl fmt::Display for Outcome<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let target = self.target;
        match self.exit {
            Exit::Code(0) => f.write_str("done"),
            Exit::Code(1) => {
                f.write_str("failed (status 1: qrexec is not running here, or the service failed)")
            }
            Exit::Code(2) => write!(
                f,
                "failed (status 2: qrexec-client-vm refused its options, or the service in {target} failed)"
            ),
            Exit::Code(125) => write!(
                f,
                "the service exists in {target} but could not be started (status 125)"
            ),
            Exit::Code(126) => write!(
                f,
                "refused by policy, or {target} does not exist or cannot start (status 126)"
            ),
            Exit::Code(127) => write!(f, "no such service in {target} (status 127)"),
            Exit::Code(255) => write!(f, "the connection to {target} closed early (status 255)"),
            Exit::Code(code) if code > 128 => write!(
                f,
                "the service in {target} was killed by {} (status {code})",
                signal_name(code - 128)
            ),
            Exit::Code(code) => write!(f, "the service in {target} failed (status {code})"),
            Exit::Signal(sig) => write!(
                f,
                "qrexec-client-vm was killed by {} ({sig})",
                signal_name(sig)
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(exit: Exit) -> String {
        let target = Target::parse("work").unwrap();
        Outcome {
            exit,
            target: &target,
        }
        .to_string()
    }

    #[test]
    fn statuses_in_words() {
        assert_eq!(words(Exit::Code(0)), "done");
        assert!(words(Exit::Code(126)).starts_with("refused by policy"));
        assert_eq!(
            words(Exit::Code(127)),
            "no such service in work (status 127)"
        );
        assert!(words(Exit::Code(125)).contains("could not be started"));
        assert!(words(Exit::Code(255)).contains("closed early"));
        assert!(words(Exit::Code(143)).contains("SIGTERM"));
        assert!(words(Exit::Signal(9)).contains("qrexec-client-vm was killed by SIGKILL"));
        assert!(words(Exit::Code(3)).contains("status 3"));
    }

    #[test]
    fn options_before_the_target() {
        let client = Client {
            path: DEFAULT_PATH.into(),
            options: vec!["--buffer-size=4096".into()],
            stdin_socket: true,
        };
        let target = Target::parse("work").unwrap();
        let call = Call::parse("qubes.ConnectTCP+22").unwrap();
        assert_eq!(
            client.args(&target, &call),
            [
                "--buffer-size=4096",
                "--use-stdin-socket",
                "--",
                "work",
                "qubes.ConnectTCP+22"
            ]
        );
    }

    #[test]
    fn stdin_socket_option() {
        assert_eq!("auto".parse(), Ok(StdinSocket::Auto));
        assert_eq!("yes".parse(), Ok(StdinSocket::Yes));
        assert_eq!("no".parse(), Ok(StdinSocket::No));
        assert!("maybe".parse::<StdinSocket>().is_err());
    }
}
