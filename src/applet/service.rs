//! The service-side applets, run by qrexec-agent in the service qube for a
//! call `SERVICE+ARG`: each connects to one local socket chosen by the
//! argument and relays the call's stdin and stdout to it (`crate::relay`).
//!
//! - `qubes.ConnectUnix+NAME`: the Unix socket
//!   `$XDG_RUNTIME_DIR/qubes.ConnectUnix/NAME` (`/run/user/UID/...` where
//!   XDG_RUNTIME_DIR is unset). That directory is the allow-list: the user's
//!   socket units link their sockets in (`Symlinks=`); the name is one path
//!   component, never hidden, so nothing outside it is reachable.
//! - `qubes.ConnectTCPBind+PORT-BINDADDR`: TCP `127.0.0.1:PORT` from the
//!   source address BINDADDR in 127.0.0.0/8.
//! - `qubes.ConnectNFS+BINDADDR`: TCP `127.0.0.1:2049` from BINDADDR, so
//!   that NFS exports can differ per client.
//!
//! The argument comes from `QREXEC_SERVICE_ARGUMENT`, which qrexec-agent
//! always sets (empty for a call without one), and which it also passes as
//! argv[1] when it is not empty. Should the two differ, something other than
//! qrexec started us with a command line we cannot trust to mean the same
//! call: that is refused (status 2). Without the variable (started by hand),
//! argv[1] is the argument.
//!
//! The argument is checked before anything else; a bad one is one line on
//! stderr and status 2, with no file-system or network access at all. A
//! socket that is not there is one line saying how to provide it, status 1.
//! stdout carries relayed data and nothing else.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::info;

use crate::argument::{LoopbackAddr, Port, SocketName, TcpBind};
use crate::error::{Error, Result};
use crate::logging;
use crate::relay::{self, End, Mode};
use crate::sys::{self, process, socket};

/// The port of `qubes.ConnectNFS`: NFS (RFC 7530).
pub const NFS_PORT: u16 = 2049;
/// The directory in the user's runtime directory that holds the sockets
/// `qubes.ConnectUnix` may reach.
pub const UNIX_DIR: &str = "qubes.ConnectUnix";
/// Set to `copy` to relay with read/write instead of splice (tests, benchmarks).
pub const RELAY_ENV: &str = "QREXEC_CONNECT_RELAY";

/// Where a service applet connects, as its argument says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Destination {
    /// A name in the `qubes.ConnectUnix/` directory.
    Unix(SocketName),
    /// `127.0.0.1:port` from `bind`.
    Tcp { port: Port, bind: LoopbackAddr },
}

impl Destination {
    /// Parses the argument of the service `applet` (pure: no file-system access).
    pub fn parse(applet: &str, argument: &str) -> std::result::Result<Self, String> {
        match applet {
            "qubes.ConnectUnix" => Ok(Destination::Unix(SocketName::parse(argument)?)),
            "qubes.ConnectTCPBind" => {
                let TcpBind { port, bind } = TcpBind::parse(argument)?;
                Ok(Destination::Tcp { port, bind })
            }
            "qubes.ConnectNFS" => Ok(Destination::Tcp {
                port: Port::parse(&NFS_PORT.to_string())?,
                bind: LoopbackAddr::parse(argument)?,
            }),
            _ => Err(format!("{} is not a service applet", applet.escape_debug())),
        }
    }

    /// Connects to it; a missing or refusing peer says how to provide it.
    fn connect(&self, applet: &str, runtime_dir: &Path) -> Result<OwnedFd> {
        match self {
            Destination::Unix(name) => connect_unix(name, runtime_dir),
            Destination::Tcp { port, bind } => connect_tcp(applet, *port, *bind),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Unix(name) => write!(f, "{name}"),
            Destination::Tcp { port, bind } => write!(f, "127.0.0.1:{port} from {bind}"),
        }
    }
}

/// Picks the call's argument from `QREXEC_SERVICE_ARGUMENT` (`env`) and the
/// command line (`args`, after the applet name).
pub fn call_argument(args: &[&str], env: Option<OsString>) -> std::result::Result<String, String> {
    if args.len() > 1 {
        return Err(format!(
            "expected at most one argument (the call's), got {}",
            args.len()
        ));
    }
    let Some(env) = env else {
        return Ok(args.first().copied().unwrap_or("").to_owned());
    };
    let env = env
        .into_string()
        .map_err(|bad| format!("QREXEC_SERVICE_ARGUMENT {bad:?} is not valid UTF-8"))?;
    match args.first() {
        Some(&arg) if arg != env => Err(format!(
            "argument '{}' differs from QREXEC_SERVICE_ARGUMENT '{}'",
            arg.escape_debug(),
            env.escape_debug()
        )),
        _ => Ok(env),
    }
}

/// The runtime directory of `qubes.ConnectUnix`: XDG_RUNTIME_DIR when it is
/// an absolute path (PAM's systemd module ran), else `/run/user/UID`, as
/// Qubes' own services do.
pub fn runtime_dir(xdg: Option<OsString>, uid: u32) -> PathBuf {
    match xdg.map(PathBuf::from) {
        Some(dir) if dir.is_absolute() => dir,
        _ => PathBuf::from(format!("/run/user/{uid}")),
    }
}

fn connect_unix(name: &SocketName, runtime_dir: &Path) -> Result<OwnedFd> {
    let dir = runtime_dir.join(UNIX_DIR);
    let path = dir.join(name.as_str());
    match UnixStream::connect(&path) {
        Ok(stream) => Ok(stream.into()),
        Err(e) => Err(match e.raw_os_error() {
            Some(libc::ENOENT | libc::ENOTDIR) => Error::Unavailable(format!(
                "no socket '{name}' in {}/: link it there, e.g. with \
                 'Symlinks=%t/{UNIX_DIR}/{name}' in a drop-in of its socket unit",
                dir.display()
            )),
            Some(libc::ECONNREFUSED) => Error::Unavailable(format!(
                "nothing listens on {} (connection refused): start the service \
                 behind socket '{name}', or re-link it with 'Symlinks=%t/{UNIX_DIR}/{name}'",
                path.display()
            )),
            _ => Error::Unavailable(format!("cannot connect to {}: {e}", path.display())),
        }),
    }
}

fn connect_tcp(applet: &str, port: Port, bind: LoopbackAddr) -> Result<OwnedFd> {
    let remote = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port.get());
    let fd = socket::tcp_v4().map_err(|e| Error::io("create a TCP socket", e))?;
    socket::bind_v4_for_connect(fd.as_fd(), bind.get()).map_err(|e| {
        Error::Unavailable(format!(
            "cannot connect from {bind}: {e}; the address must be on the loopback interface"
        ))
    })?;
    match socket::connect_v4(fd.as_fd(), remote) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            let server = if applet == "qubes.ConnectNFS" {
                "the NFS server (nfs-server.service)"
            } else {
                "the server"
            };
            return Err(Error::Unavailable(format!(
                "nothing listens on TCP port {port} of 127.0.0.1 (connection refused \
                 from {bind}): start {server} on 127.0.0.1:{port}"
            )));
        }
        Err(e) => {
            return Err(Error::Unavailable(format!(
                "cannot connect to {remote} from {bind}: {e}"
            )));
        }
    }
    // Bytes go on as soon as they arrive: the caller already chose how to
    // batch them, and Nagle's delay would only add latency.
    let _ = socket::set_nodelay(fd.as_fd());
    Ok(fd)
}

/// Runs a service applet: checks the argument, connects, relays.
pub fn run(name: &'static str, args: &[&str]) -> Result<u8> {
    logging::init_service(name);
    let env_argument = std::env::var_os("QREXEC_SERVICE_ARGUMENT");
    if env_argument.is_none() && matches!(args, ["--help" | "-h"]) {
        print!("{}", help(name));
        return Ok(0);
    }
    let argument = call_argument(args, env_argument).map_err(Error::Usage)?;
    let destination = Destination::parse(name, &argument).map_err(Error::Usage)?;
    let mode = match std::env::var(RELAY_ENV).as_deref() {
        Ok("copy") => Mode::Copy,
        _ => Mode::Splice,
    };

    logging::attach_journal();
    let runtime = runtime_dir(std::env::var_os("XDG_RUNTIME_DIR"), process::uid());
    let remote = std::env::var("QREXEC_REMOTE_DOMAIN").unwrap_or_else(|_| "?".into());
    let connected = destination.connect(name, &runtime)?;

    let stdin = stdio(0)?;
    let stdout = stdio(1)?;
    let started = Instant::now();
    crate::sys::single_malloc_arena();
    let (totals, result) = relay::run(
        End::new(stdin, "stdin"),
        End::new(stdout, "stdout"),
        End::new(connected, destination.to_string()),
        mode,
    );
    let summary = format!(
        "{} bytes sent, {} received, {:.3} s",
        totals.sent,
        totals.received,
        started.elapsed().as_secs_f64()
    );
    match result {
        Ok(()) => {
            info!(
                QREXEC_REMOTE_DOMAIN = remote.as_str(), QREXEC_SERVICE_ARGUMENT = argument.as_str();
                "connection from {remote} to {destination}: {summary}"
            );
            Ok(0)
        }
        Err(e) => Err(Error::io(
            format!("relay the connection from {remote} to {destination} ({summary})"),
            io::Error::other(e.to_string()),
        )),
    }
}

/// Takes stdin or stdout for the relay, blocking whatever the caller left:
/// the relay's loops wait in the kernel, never spin on EAGAIN.
fn stdio(fd: i32) -> Result<OwnedFd> {
    // The Rust runtime opens /dev/null on any of fds 0-2 found closed.
    let owned = sys::take_inherited_fd(fd);
    let what = if fd == 0 { "stdin" } else { "stdout" };
    sys::set_nonblocking(owned.as_fd(), false)
        .map_err(|e| Error::io(format!("make {what} blocking"), e))?;
    Ok(owned)
}

fn help(name: &str) -> String {
    let (argument, what) = match name {
        "qubes.ConnectUnix" => (
            "NAME",
            "the Unix socket $XDG_RUNTIME_DIR/qubes.ConnectUnix/NAME",
        ),
        "qubes.ConnectTCPBind" => ("PORT-BINDADDR", "TCP 127.0.0.1:PORT from BINDADDR"),
        _ => ("BINDADDR", "TCP 127.0.0.1:2049 (NFS) from BINDADDR"),
    };
    format!(
        "Usage: {name} {argument}\n\n\
         qrexec service: relays the call's stdin and stdout to {what}.\n\
         qrexec-agent runs it for a call {name}+{argument}, with the argument in\n\
         QREXEC_SERVICE_ARGUMENT. Install it as a symlink to qrexec-connect named\n\
         {name} in /etc/qubes-rpc or /usr/local/etc/qubes-rpc.\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations() {
        assert_eq!(
            Destination::parse("qubes.ConnectUnix", "gpg-agent-ssh")
                .unwrap()
                .to_string(),
            "gpg-agent-ssh"
        );
        assert_eq!(
            Destination::parse("qubes.ConnectTCPBind", "8080-127.0.1.2")
                .unwrap()
                .to_string(),
            "127.0.0.1:8080 from 127.0.1.2"
        );
        assert_eq!(
            Destination::parse("qubes.ConnectNFS", "127.0.1.1")
                .unwrap()
                .to_string(),
            "127.0.0.1:2049 from 127.0.1.1"
        );
        for (applet, bad) in [
            ("qubes.ConnectUnix", ""),
            ("qubes.ConnectUnix", ".."),
            ("qubes.ConnectTCPBind", "2049"),
            ("qubes.ConnectTCPBind", "2049-10.0.0.1"),
            ("qubes.ConnectNFS", ""),
            ("qubes.ConnectNFS", "2049-127.0.1.1"),
            ("qubes.ConnectNFS", "127.255.255.255"),
            ("qubes.ConnectSomething", "x"),
        ] {
            assert!(Destination::parse(applet, bad).is_err(), "{applet} {bad:?}");
        }
    }

    #[test]
    fn argument_from_env_or_argv() {
        let env = |s: &str| Some(OsString::from(s));
        assert_eq!(call_argument(&["a"], env("a")).unwrap(), "a");
        assert_eq!(call_argument(&[], env("a")).unwrap(), "a");
        assert_eq!(call_argument(&[], env("")).unwrap(), "");
        assert_eq!(call_argument(&["a"], None).unwrap(), "a");
        assert_eq!(call_argument(&[], None).unwrap(), "");
        assert!(call_argument(&["b"], env("a")).is_err());
        assert!(call_argument(&["a"], env("")).is_err());
        assert!(call_argument(&["a", "b"], env("a")).is_err());
        assert!(call_argument(&["a", "b"], None).is_err());
        // A refusal is one line, whatever the two values hold.
        let e = call_argument(&["a\nb"], env("a\rb")).unwrap_err();
        assert!(!e.chars().any(char::is_control), "{e:?}");
        use std::os::unix::ffi::OsStringExt;
        assert!(call_argument(&[], Some(OsString::from_vec(vec![0xff]))).is_err());
    }

    #[test]
    fn runtime_directory() {
        let dir = |s: &str| Some(OsString::from(s));
        assert_eq!(
            runtime_dir(dir("/run/user/1000"), 5),
            Path::new("/run/user/1000")
        );
        assert_eq!(runtime_dir(None, 1000), Path::new("/run/user/1000"));
        assert_eq!(runtime_dir(dir(""), 1000), Path::new("/run/user/1000"));
        assert_eq!(runtime_dir(dir("relative"), 7), Path::new("/run/user/7"));
    }
}
