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
//! argv[1] is the argument. Installed as `SERVICE+ARG` (qrexec's file for
//! one argument only, e.g. `/etc/qubes-rpc/qubes.ConnectUnix+gpg-agent-ssh`),
//! the call's argument must be ARG.
//!
//! `qubes.ConnectUnix` follows links only in a directory that is the user's
//! own and that no one else may write to: whoever can add a link there
//! chooses what a caller reaches.
//!
//! The argument is checked before anything else; a bad one is one line on
//! stderr and status 2, with no file-system or network access at all. A
//! socket that is not there is one line saying how to provide it, status 1.
//! stdout carries relayed data and nothing else.

use std::ffi::OsString;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Instant;

use log::info;

use super::{APPLETS, Applet, Kind};
use crate::argument::{LoopbackAddr, Port, SocketName, TcpBind};
use crate::error::{Error, IoContext as _, ParseError, Result};
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
    /// Parses the argument of the service applet named `applet` (pure: no
    /// file-system access).
    pub fn parse(applet: &str, argument: &str) -> std::result::Result<Self, ParseError> {
        match APPLETS
            .iter()
            .find(|a| a.name == applet && a.kind.is_service())
        {
            Some(applet) => Destination::of(applet.kind, argument),
            None => Err(ParseError::NotServiceApplet(applet.to_owned())),
        }
    }

    /// Parses the argument of the service applet `kind`.
    pub fn of(kind: Kind, argument: &str) -> std::result::Result<Self, ParseError> {
        match kind {
            Kind::ConnectUnix => Ok(Destination::Unix(SocketName::parse(argument)?)),
            Kind::ConnectTcpBind => {
                let TcpBind { port, bind } = TcpBind::parse(argument)?;
                Ok(Destination::Tcp { port, bind })
            }
            Kind::ConnectNfs => Ok(Destination::Tcp {
                port: Port::parse(&NFS_PORT.to_string())?,
                bind: LoopbackAddr::parse(argument)?,
            }),
            Kind::Plain | Kind::Tcp | Kind::TcpBind | Kind::Unix | Kind::SshProxy | Kind::Socks => {
                unreachable!("{kind:?} is a client applet")
            }
        }
    }

    /// Connects to it; a missing or refusing peer says how to provide it.
    fn connect(&self, kind: Kind, runtime_dir: &Path) -> Result<OwnedFd> {
        match self {
            Destination::Unix(name) => connect_unix(name, runtime_dir),
            Destination::Tcp { port, bind } => connect_tcp(kind, *port, *bind),
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
pub fn call_argument(
    args: &[&str],
    env: Option<OsString>,
) -> std::result::Result<String, ParseError> {
    if args.len() > 1 {
        return Err(ParseError::TooManyArguments(args.len()));
    }
    let Some(env) = env else {
        return Ok(args.first().copied().unwrap_or("").to_owned());
    };
    let env = env.into_string().map_err(ParseError::ArgumentNotUtf8)?;
    match args.first() {
        Some(&arg) if arg != env => Err(ParseError::ArgumentDiffers {
            argv: arg.to_owned(),
            env,
        }),
        _ => Ok(env),
    }
}

/// Checks the call's argument against the one pinned by the name we were
/// started under (`SERVICE+ARG`). Started by hand under that name with no
/// argument at all (`given` false), the pinned one is the call's.
fn pinned_argument(
    name: &str,
    pinned: Option<&str>,
    argument: String,
    given: bool,
) -> Result<String> {
    match pinned {
        None => Ok(argument),
        Some(pinned) if !given => Ok(pinned.to_owned()),
        Some(pinned) if pinned == argument => Ok(argument),
        Some(pinned) => Err(Error::Usage(format!(
            "started as {name}+{} for that argument only, but the call's argument is '{}'",
            pinned.escape_debug(),
            argument.escape_debug()
        ))),
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

/// Refuses the allow-list directory unless it is ours and only we may write
/// to it; a missing one is left to the connect, which says how to make it.
fn check_unix_dir(dir: &Path, uid: u32) -> Result<()> {
    let meta = match std::fs::metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        stat => stat.context(|| format!("stat {}", dir.display()))?,
    };
    let mode = meta.permissions().mode() & 0o7777;
    let why = if meta.uid() != uid {
        format!(
            "it belongs to uid {}, not to this user (uid {uid})",
            meta.uid()
        )
    } else if mode & 0o022 != 0 {
        format!("its mode {mode:04o} lets others add links; make it 0700 (chmod go-w)")
    } else {
        return Ok(());
    };
    Err(Error::Unavailable(format!(
        "not following links in {}: {why}; its links say which sockets a caller may reach",
        dir.display()
    )))
}

fn connect_unix(name: &SocketName, runtime_dir: &Path) -> Result<OwnedFd> {
    let dir = runtime_dir.join(UNIX_DIR);
    check_unix_dir(&dir, process::uid())?;
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

fn connect_tcp(kind: Kind, port: Port, bind: LoopbackAddr) -> Result<OwnedFd> {
    let remote = SocketAddrV4::new(Ipv4Addr::LOCALHOST, port.get());
    let fd = socket::tcp_v4().context(|| "create a TCP socket".into())?;
    socket::bind_v4_for_connect(fd.as_fd(), bind.get()).map_err(|e| {
        Error::Unavailable(format!(
            "cannot connect from {bind}: {e}; the address must be on the loopback interface"
        ))
    })?;
    match socket::connect_v4(fd.as_fd(), remote) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            let server = if kind == Kind::ConnectNfs {
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
pub fn run(applet: &'static Applet, pinned: Option<&str>, args: &[&str]) -> Result<u8> {
    let name = applet.name;
    logging::init_service(name);
    let env_argument = std::env::var_os("QREXEC_SERVICE_ARGUMENT");
    if env_argument.is_none() && matches!(args, ["--help" | "-h"]) {
        print!("{}", help(applet.kind, name));
        return Ok(0);
    }
    let given = env_argument.is_some() || !args.is_empty();
    let argument = call_argument(args, env_argument)?;
    let argument = pinned_argument(name, pinned, argument, given)?;
    let destination = Destination::of(applet.kind, &argument)?;
    let mode = match std::env::var(RELAY_ENV).as_deref() {
        Ok("copy") => Mode::Copy,
        _ => Mode::Splice,
    };

    logging::attach_journal();
    let runtime = runtime_dir(std::env::var_os("XDG_RUNTIME_DIR"), process::uid());
    let remote = std::env::var("QREXEC_REMOTE_DOMAIN").unwrap_or_else(|_| "?".into());
    let connected = destination.connect(applet.kind, &runtime)?;
    relay_call(connected, &destination, mode, &remote, &argument)
}

/// Relays stdin and stdout to the connected socket until both directions
/// end; logs the totals.
fn relay_call(
    connected: OwnedFd,
    destination: &Destination,
    mode: Mode,
    remote: &str,
    argument: &str,
) -> Result<u8> {
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
                QREXEC_REMOTE_DOMAIN = remote, QREXEC_SERVICE_ARGUMENT = argument;
                "connection from {remote} to {destination}: {summary}"
            );
            Ok(0)
        }
        Err(e) => Err(e.during(format_args!(
            "relaying the connection from {remote} to {destination} ({summary})"
        ))),
    }
}

/// Takes stdin or stdout for the relay, blocking whatever the caller left:
/// the relay's loops wait in the kernel, never spin on EAGAIN.
fn stdio(fd: i32) -> Result<OwnedFd> {
    // The Rust runtime opens /dev/null on any of fds 0-2 found closed.
    let owned = sys::take_inherited_fd(fd);
    let what = if fd == 0 { "stdin" } else { "stdout" };
    sys::set_nonblocking(owned.as_fd(), false).context(|| format!("make {what} blocking"))?;
    Ok(owned)
}

fn help(kind: Kind, name: &str) -> String {
    let (argument, what) = match kind {
        Kind::ConnectUnix => (
            "NAME",
            "the Unix socket $XDG_RUNTIME_DIR/qubes.ConnectUnix/NAME",
        ),
        Kind::ConnectTcpBind => ("PORT-BINDADDR", "TCP 127.0.0.1:PORT from BINDADDR"),
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
        let e = call_argument(&["a\nb"], env("a\rb"))
            .unwrap_err()
            .to_string();
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

    #[test]
    fn pinned_by_the_name() {
        let pinned = |pin, argument: &str, given| {
            pinned_argument("qubes.ConnectUnix", pin, argument.to_owned(), given)
        };
        assert_eq!(pinned(None, "x", true).unwrap(), "x");
        assert_eq!(pinned(Some("agent"), "agent", true).unwrap(), "agent");
        assert_eq!(pinned(Some("agent"), "", false).unwrap(), "agent");
        let e = pinned(Some("agent"), "other", true).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "started as qubes.ConnectUnix+agent for that argument only, but the call's argument is 'other'"
        );
        assert!(
            pinned(Some("agent"), "", true).is_err(),
            "an empty argument given"
        );
    }

    #[test]
    fn unix_dir_must_be_ours_and_private() {
        let dir = std::env::temp_dir().join(format!("qc-unix-dir-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let uid = process::uid();
        let set_mode =
            |mode| std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode)).unwrap();
        set_mode(0o700);
        assert!(check_unix_dir(&dir, uid).is_ok());
        assert!(
            check_unix_dir(&dir.join("absent"), uid).is_ok(),
            "left to connect"
        );
        let other = check_unix_dir(&dir, uid + 1).unwrap_err().to_string();
        assert!(other.contains(&format!("belongs to uid {uid}")), "{other}");
        for mode in [0o770, 0o702, 0o1777] {
            set_mode(mode);
            let e = check_unix_dir(&dir, uid).unwrap_err().to_string();
            assert!(e.contains(&format!("mode {mode:04o}")), "{e}");
        }
        std::fs::remove_dir(&dir).unwrap();
    }
}
