//! Reading the drop-ins of the socket unit that started us, and resolving
//! the sockets it passed under one name (impure; the decisions are in
//! [`resolve_groups`], pure).
//!
//! Which socket unit: systemd passes no unit name in `LISTEN_*`. A
//! socket's default name is its unit's, but the sockets we must tell apart
//! are exactly those given a `FileDescriptorName=`, so the name says
//! nothing then. Our own unit is certain: the manager puts the service in
//! its cgroup (`/proc/self/cgroup`) before it runs, and no setting of the
//! unit changes that. A templated service `foo@bar.service` is triggered
//! by `foo@bar.socket`; other socket units pointing at it with `Service=`
//! are told apart by their fds matching none of its Listen lines.

use std::path::PathBuf;

use crate::activation::Passed;
use crate::error::{Error, Result};
use crate::sys::socket::SockAddr;

use super::resolve::{self, Resolved, Source};
use super::search::{self, UserEnv};
use super::specifier::Specifiers;
use crate::own_unit::OwnUnit;

/// The socket unit that triggers a templated service instance:
/// `foo@bar.service` -> `foo@bar.socket`; `None` for a plain service.
pub fn socket_unit_of(service: &str) -> Option<String> {
    let stem = service.strip_suffix(".service")?;
    let (_, instance) = stem.split_once('@')?;
    (!instance.is_empty()).then(|| format!("{stem}.socket"))
}

/// The name of `uid` in the text of `/etc/passwd`.
pub fn passwd_name(passwd: &str, uid: u32) -> Option<String> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        let id = fields.nth(1)?;
        (id.parse() == Ok(uid) && !name.is_empty()).then(|| name.to_owned())
    })
}

/// Names each fd of a group that shares its name and belongs to `unit`.
/// A group belongs to the unit when the unit's files give it that name or
/// declare one of its addresses; other groups (sockets of another unit
/// with `Service=`) keep their name: `None`.
pub fn resolve_groups(
    unit: &str,
    fds: &[(SockAddr, Option<String>)],
    sources: &[Source],
    ifindex: &dyn Fn(&str) -> Option<u32>,
) -> std::result::Result<Vec<Option<Resolved>>, String> {
    let mut out: Vec<Option<Resolved>> = vec![None; fds.len()];
    let effective = resolve::effective_name(sources).unwrap_or(unit);
    for (i, (_, name)) in fds.iter().enumerate() {
        let Some(name) = name else { continue };
        let group: Vec<usize> = (0..fds.len())
            .filter(|&j| fds[j].1.as_ref() == Some(name))
            .collect();
        if group.len() < 2 || group[0] != i {
            continue;
        }
        let addrs: Vec<SockAddr> = group.iter().map(|&j| fds[j].0.clone()).collect();
        let ours =
            name == effective || addrs.iter().any(|a| resolve::declares(sources, a, ifindex));
        if !ours {
            continue;
        }
        let resolved = resolve::resolve(unit, name, &addrs, sources, ifindex)?;
        for (j, r) in group.into_iter().zip(resolved) {
            out[j] = Some(r);
        }
    }
    Ok(out)
}

/// `/sys/class/net/NAME/ifindex`: an interface's index, `None` if absent.
fn ifindex(name: &str) -> Option<u32> {
    if name.contains('/') || name.starts_with('.') {
        return None;
    }
    let text = std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex")).ok()?;
    text.trim().parse().ok()
}

fn read_text(path: &std::path::Path) -> Result<String> {
    let bytes =
        std::fs::read(path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
    String::from_utf8(bytes).map_err(|_| Error::Usage(format!("{} is not UTF-8", path.display())))
}

/// The unit file and drop-ins of `unit` in systemd's order, read.
pub fn load_sources(unit: &str, env: &UserEnv, values: &Specifiers) -> Result<Vec<Source>> {
    let path = search::user_unit_path(env);
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if let Some(fragment) = search::find_fragment(&path, unit) {
        files.push((fragment.display().to_string(), fragment));
    }
    let dirs = search::dropin_dirs(&path, unit);
    let listing = search::list_conf_files(&dirs)
        .map_err(|e| Error::io(format!("list the drop-ins of {unit}"), e))?;
    for file in search::select(&listing) {
        let label = file
            .file_name()
            .map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        files.push((label, file));
    }
    files
        .iter()
        .map(|(label, path)| {
            let text = read_text(path)?;
            Source::read(label, &text, values).map_err(|e| Error::Usage(format!("{unit}: {e}")))
        })
        .collect()
}

/// For each passed fd, the drop-in its name comes from, when systemd
/// passed several fds of our templated socket unit under one name; `None`
/// where the name systemd passed stands. Reads nothing unless two fds share
/// a name. Refuses (status 2, one line) whenever the files do not say one
/// thing.
pub fn resolve_names(passed: &[Passed], own: Option<&OwnUnit>) -> Result<Vec<Option<Resolved>>> {
    let shared = passed
        .iter()
        .enumerate()
        .any(|(i, p)| p.name.is_some() && passed[..i].iter().any(|q| q.name == p.name));
    if !shared {
        return Ok(vec![None; passed.len()]);
    }
    let Some(unit) = own.and_then(|own| socket_unit_of(&own.service)) else {
        return Ok(vec![None; passed.len()]);
    };
    let env = UserEnv::from_env();
    let uid = crate::sys::process::uid();
    let values = Specifiers {
        unit: unit.clone(),
        runtime_dir: env.runtime_dir.clone(),
        home: env.home.clone().filter(|h| h.starts_with('/')),
        user: std::fs::read_to_string("/etc/passwd")
            .ok()
            .and_then(|p| passwd_name(&p, uid)),
        uid,
    };
    let sources = load_sources(&unit, &env, &values)?;
    let fds: Vec<(SockAddr, Option<String>)> = passed
        .iter()
        .map(|p| (p.addr.clone(), p.name.clone()))
        .collect();
    let resolved = resolve_groups(&unit, &fds, &sources, &ifindex).map_err(Error::Usage)?;
    // Sockets sharing a name left as they are: another unit's (Service=),
    // unless a home hidden from the service (ProtectHome=tmpfs) hid the
    // drop-ins that would have claimed them.
    let kept = (0..fds.len()).any(|i| {
        resolved[i].is_none()
            && fds[i].1.is_some()
            && fds.iter().filter(|f| f.1 == fds[i].1).count() > 1
    });
    if let Some(home) = values
        .home
        .as_ref()
        .filter(|h| kept && std::fs::metadata(h).is_err())
    {
        return Err(Error::Usage(format!(
            "{unit}: sockets arrived under one name and their drop-ins cannot be read: \
             the home {home} is hidden from the service (ProtectHome=?)"
        )));
    }
    Ok(resolved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_of_a_templated_service() {
        assert_eq!(
            socket_unit_of("qrexec-connect-tcp@1234.service").as_deref(),
            Some("qrexec-connect-tcp@1234.socket")
        );
        assert_eq!(socket_unit_of("qrexec-connect.service"), None);
        assert_eq!(socket_unit_of("a@.service"), None);
        assert_eq!(socket_unit_of("a@b.socket"), None);
    }

    #[test]
    fn user_names() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\nuser:x:1000:1000::/home/user:/bin/bash\n";
        assert_eq!(passwd_name(passwd, 1000).as_deref(), Some("user"));
        assert_eq!(passwd_name(passwd, 1001), None);
    }

    fn values() -> Specifiers {
        Specifiers {
            unit: "t@1.socket".into(),
            ..Specifiers::default()
        }
    }

    #[test]
    fn groups_of_another_unit_keep_their_name() {
        let read = |l: &str, t: &str| Source::read(l, t, &values()).unwrap();
        let sources = [
            read(
                "a.conf",
                "[Socket]\nListenStream=127.0.0.1:1\nFileDescriptorName=a\n",
            ),
            read(
                "b.conf",
                "[Socket]\nListenStream=127.0.0.2:1\nFileDescriptorName=b\n",
            ),
        ];
        let fd = |a: &str, n: &str| (SockAddr::Inet(a.parse().unwrap()), Some(n.to_owned()));
        let none = |_: &str| None;
        // Ours: both named b, resolved.
        let ours = [
            fd("127.0.0.1:1", "b"),
            fd("127.0.0.2:1", "b"),
            fd("[::1]:2", "w"),
            fd("127.0.0.9:2", "w"),
        ];
        let got = resolve_groups("t@1.socket", &ours, &sources, &none).unwrap();
        let names: Vec<Option<&str>> = got
            .iter()
            .map(|r| r.as_ref().map(|r| r.name.as_str()))
            .collect();
        assert_eq!(names, [Some("a"), Some("b"), None, None]);
        // One of ours shares its name with another unit's socket: refused.
        let mixed = [
            fd("127.0.0.1:1", "b"),
            fd("127.0.0.2:1", "b"),
            fd("127.0.0.9:2", "b"),
        ];
        assert!(resolve_groups("t@1.socket", &mixed, &sources, &none).is_err());
    }
}
