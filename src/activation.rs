//! The socket activation protocol of `sd_listen_fds(3)`: the service manager
//! passes sockets as fds 3, 4, ... and describes them in LISTEN_PID,
//! LISTEN_FDS and LISTEN_FDNAMES (`FileDescriptorName=` in `systemd.socket(5)`).
//!
//! [`parse`] is pure; [`take`] reads and removes the variables and takes the
//! fds, closing them to every child (FD_CLOEXEC).

use std::ffi::OsString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use crate::error::{Error, IoContext as _, ParseError, Result};
use crate::sys::{self, socket::SockAddr, socket::SocketInfo};

/// The first passed fd (`SD_LISTEN_FDS_START`).
pub const FIRST_FD: i32 = 3;
/// More fds than any socket unit passes: a larger LISTEN_FDS is a mistake.
pub const MAX_FDS: usize = 4096;

/// Parses the three variables; `Ok(None)` when they are not meant for us
/// (unset, LISTEN_PID of another process, or no fds).
///
/// Returns one entry per fd: its name, or `None` when LISTEN_FDNAMES is unset.
pub fn parse(
    listen_pid: Option<&str>,
    listen_fds: Option<&str>,
    listen_fdnames: Option<&str>,
    our_pid: u32,
) -> std::result::Result<Option<Vec<Option<String>>>, ParseError> {
    let (Some(pid), Some(fds)) = (listen_pid, listen_fds) else {
        return Ok(None);
    };
    match pid.parse::<u32>() {
        Ok(pid) if pid == our_pid => {}
        Ok(_) => return Ok(None),
        Err(_) => return Err(ParseError::ListenPid(pid.to_owned())),
    }
    if fds.is_empty() || !fds.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ParseError::ListenFds(fds.to_owned()));
    }
    let count = match fds.parse::<usize>() {
        Ok(0) => return Ok(None),
        Ok(n) if n <= MAX_FDS => n,
        _ => return Err(ParseError::TooManyFds(fds.to_owned())),
    };
    let Some(names) = listen_fdnames else {
        return Ok(Some(vec![None; count]));
    };
    let names: Vec<Option<String>> = names.split(':').map(|n| Some(n.to_owned())).collect();
    if names.len() != count {
        return Err(ParseError::NamesForFds {
            names: names.len(),
            fds: count,
        });
    }
    Ok(Some(names))
}

/// One fd passed to us, checked to be a stream socket of a family we serve.
pub struct Passed {
    pub fd: OwnedFd,
    /// Its FileDescriptorName, `None` when LISTEN_FDNAMES was unset.
    pub name: Option<String>,
    pub addr: SockAddr,
    /// A listening socket; otherwise one accepted connection (`Accept=yes`).
    pub listening: bool,
}

/// Reads and removes LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, then takes
/// the passed fds. `Ok(None)`: started without sockets.
pub fn take() -> Result<Option<Vec<Passed>>> {
    let vars =
        ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"].map(|name| (name, std::env::var_os(name)));
    for (name, _) in &vars {
        sys::remove_env(name);
    }
    let [pid, fds, names] = vars.map(|(name, value)| value.map(|v| text(name, v)).transpose());
    let parsed = parse(
        pid?.as_deref(),
        fds?.as_deref(),
        names?.as_deref(),
        std::process::id(),
    )?;
    let Some(names) = parsed else {
        return Ok(None);
    };
    // Take every fd first, so that each is closed on exec even if a later one
    // is refused.
    let mut taken = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let raw = FIRST_FD + i as i32;
        if !sys::fd_is_open(raw) {
            return Err(Error::Unsupported(format!(
                "fd {raw} (socket {} of LISTEN_FDS) is not open",
                i + 1
            )));
        }
        let fd = sys::take_inherited_fd(raw);
        sys::set_cloexec(fd.as_fd()).context(|| format!("set FD_CLOEXEC on fd {raw}"))?;
        taken.push((fd, name));
    }
    taken
        .into_iter()
        .map(check)
        .collect::<Result<Vec<_>>>()
        .map(Some)
}

/// A LISTEN_* value as text. systemd writes only ASCII there (its
/// `fdname_is_valid()` refuses anything else), so bytes that are not even
/// UTF-8 did not come from it: refused, never read as unset. Other
/// non-ASCII text goes on to the parsers, which accept only ASCII and name
/// the character.
fn text(var: &'static str, value: OsString) -> std::result::Result<String, ParseError> {
    value
        .into_string()
        .map_err(|value| ParseError::NotAscii { var, value })
}

fn describe(name: &Option<String>) -> String {
    match name {
        Some(name) => format!("'{}'", name.escape_debug()),
        None => "(unnamed)".to_owned(),
    }
}

/// Refuses anything but a stream socket of AF_INET, AF_INET6, AF_UNIX or AF_VSOCK.
fn check((fd, name): (OwnedFd, Option<String>)) -> Result<Passed> {
    use sys::FileKind;
    let raw = fd.as_raw_fd();
    let what = |kind: &str| {
        Error::Unsupported(format!(
            "passed fd {raw} {} is {kind}, not a stream socket",
            describe(&name)
        ))
    };
    match sys::file_kind(fd.as_fd()).context(|| format!("fstat fd {raw}"))? {
        FileKind::Socket => {}
        FileKind::Fifo => return Err(what("a FIFO")),
        FileKind::Regular => return Err(what("a regular file")),
        FileKind::CharDevice => return Err(what("a character device")),
        FileKind::Other => return Err(what("not a socket")),
    }
    let SocketInfo {
        domain,
        kind,
        listening,
    } = sys::socket::socket_info(fd.as_fd()).context(|| format!("inspect socket fd {raw}"))?;
    let addr =
        sys::socket::local_addr(fd.as_fd()).context(|| format!("get the address of fd {raw}"))?;
    if kind != libc::SOCK_STREAM {
        let kind = match kind {
            libc::SOCK_DGRAM => "a datagram socket",
            libc::SOCK_SEQPACKET => "a seqpacket socket",
            _ => "a non-stream socket",
        };
        return Err(Error::Unsupported(format!(
            "passed fd {raw} {} ({addr}) is {kind}; only stream sockets (ListenStream=) can be forwarded",
            describe(&name)
        )));
    }
    if !matches!(
        domain,
        libc::AF_INET | libc::AF_INET6 | libc::AF_UNIX | libc::AF_VSOCK
    ) {
        return Err(Error::Unsupported(format!(
            "passed fd {raw} {} ({addr}) is of address family {domain}; supported are IPv4, IPv6, Unix and VSOCK",
            describe(&name)
        )));
    }
    Ok(Passed {
        fd,
        name,
        addr,
        listening,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PID: u32 = 4242;

    #[test]
    fn not_for_us() {
        assert_eq!(parse(None, None, None, PID), Ok(None));
        assert_eq!(parse(None, Some("1"), None, PID), Ok(None));
        assert_eq!(
            parse(Some("1"), Some("1"), None, PID),
            Ok(None),
            "other pid"
        );
        assert_eq!(parse(Some("4242"), Some("0"), None, PID), Ok(None));
    }

    #[test]
    fn names_per_fd() {
        assert_eq!(
            parse(Some("4242"), Some("2"), None, PID),
            Ok(Some(vec![None, None]))
        );
        assert_eq!(
            parse(
                Some("4242"),
                Some("2"),
                Some("work:@default qubes.ConnectTCP+1"),
                PID
            ),
            Ok(Some(vec![
                Some("work".into()),
                Some("@default qubes.ConnectTCP+1".into())
            ]))
        );
        // An empty name is kept: it is refused later, with the socket's address.
        assert_eq!(
            parse(Some("4242"), Some("2"), Some("work:"), PID),
            Ok(Some(vec![Some("work".into()), Some(String::new())]))
        );
    }

    #[test]
    fn refuses_malformed() {
        let fds = |s: &str| ParseError::ListenFds(s.into());
        let names = |names, fds| ParseError::NamesForFds { names, fds };
        for (pid, count, fdnames, why) in [
            ("x", "1", None, ParseError::ListenPid("x".into())),
            ("4242", "-1", None, fds("-1")),
            ("4242", "+1", None, fds("+1")),
            ("4242", "abc", None, fds("abc")),
            ("4242", "", None, fds("")),
            (
                "4242",
                "99999",
                None,
                ParseError::TooManyFds("99999".into()),
            ),
            ("4242", "2", Some("a"), names(1, 2)),
            ("4242", "1", Some("a:b"), names(2, 1)),
        ] {
            assert_eq!(
                parse(Some(pid), Some(count), fdnames, PID),
                Err(why),
                "{pid} {count} {fdnames:?}"
            );
        }
    }

    #[test]
    fn only_utf8_values() {
        use std::os::unix::ffi::OsStringExt;
        assert_eq!(text("LISTEN_FDNAMES", "work".into()), Ok("work".into()));
        let e = text("LISTEN_FDNAMES", OsString::from_vec(b"w\xffrk".to_vec())).unwrap_err();
        assert_eq!(
            e.to_string(),
            "LISTEN_FDNAMES=\"w\\xFFrk\" is not ASCII: systemd passes only ASCII there \
             (FileDescriptorName= in systemd.socket(5))"
        );
    }
}
