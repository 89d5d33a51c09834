//! Connecting to a destination: the Unix socket in the user's
//! `qubes.ConnectUnix/` allow-list (checked to be the user's own first), or
//! TCP on 127.0.0.1 from a loopback source address. A missing or refusing
//! peer says how to provide it.

use std::ffi::OsString;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use super::{Destination, UNIX_DIR};
use crate::applet::Kind;
use crate::argument::{LoopbackAddr, Port, SocketName};
use crate::error::{Error, IoContext as _, Result};
use crate::sys::{process, socket};

impl Destination {
    /// Connects to it; a missing or refusing peer says how to provide it.
    pub(super) fn connect(&self, kind: Kind, runtime_dir: &Path) -> Result<OwnedFd> {
        match self {
            Destination::Unix(name) => connect_unix(name, runtime_dir),
            Destination::Tcp { port, bind } => connect_tcp(kind, *port, *bind),
        }
    }
}

/// The runtime directory of `qubes.ConnectUnix`: XDG_RUNTIME_DIR when it is
/// an absolute path (PAM's systemd module ran), else `/run/user/UID`, as
/// Qubes' own services do.
pub(super) fn runtime_dir(xdg: Option<OsString>, uid: u32) -> PathBuf {
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

#[cfg(test)]
mod tests {
    use super::*;

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
