//! The target side, as qrexec-agent does it, over a directory tree:
//!
//! ```text
//! $QREXEC_STANDIN_ROOT/
//!   policy                                  the policy (see policy.rs)
//!   qubes/NAME/                             a qube exists when its directory does
//!   qubes/NAME/env                          KEY=VALUE lines added to services' environment
//!   qubes/NAME/usr/local/etc/qubes-rpc/     services, looked up first here,
//!   qubes/NAME/etc/qubes-rpc/               then here
//!   qubes/NAME/usr/local/etc/qubes/rpc-config/SERVICE[+ARG]
//!   qubes/NAME/etc/qubes/rpc-config/SERVICE[+ARG]
//! ```
//!
//! A service file is looked up as `SERVICE+ARG` in every directory first,
//! then as `SERVICE`. An executable file is run; a socket (or a symlink to
//! one) is connected to, after the service descriptor `SERVICE+ARG SOURCE\0`
//! unless its rpc-config says `skip-service-descriptor=true`; a symlink to
//! `/dev/tcp/HOST/PORT` (or `/dev/tcp/HOST`, the port being the argument)
//! is a TCP connection. Anything else found is a service that cannot start.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Where services are looked up in a qube, in order.
pub const SERVICE_DIRS: [&str; 2] = ["usr/local/etc/qubes-rpc", "etc/qubes-rpc"];
/// Where rpc-config files are looked up in a qube, in order.
pub const CONFIG_DIRS: [&str; 2] = ["usr/local/etc/qubes/rpc-config", "etc/qubes/rpc-config"];

/// What was found for a call in a qube.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Service {
    Executable(PathBuf),
    Socket(PathBuf),
    Tcp {
        host: String,
        port: String,
    },
    /// Found but cannot be started: why.
    Unstartable(PathBuf, String),
}

impl Service {
    pub fn kind(&self) -> &'static str {
        match self {
            Service::Executable(_) => "executable",
            Service::Socket(_) => "socket",
            Service::Tcp { .. } => "tcp",
            Service::Unstartable(..) => "unstartable",
        }
    }
}

/// The names to look up for a call: `SERVICE+ARG` first when it has `+`.
fn candidates<'a>(full: &'a str, service: &'a str) -> Vec<&'a str> {
    if full != service {
        vec![full, service]
    } else {
        vec![service]
    }
}

/// Finds the service file for `full` (`SERVICE+ARG`) in the qube at `qube`.
pub fn find_service(qube: &Path, full: &str, service: &str, argument: &str) -> Option<Service> {
    for name in candidates(full, service) {
        for dir in SERVICE_DIRS {
            let path = qube.join(dir).join(name);
            let Ok(meta) = fs::symlink_metadata(&path) else {
                continue;
            };
            if meta.file_type().is_symlink()
                && let Ok(link) = fs::read_link(&path)
                && let Some(rest) = link.to_str().and_then(|l| l.strip_prefix("/dev/tcp/"))
            {
                return Some(tcp(&path, rest, argument));
            }
            return Some(match fs::metadata(&path) {
                Ok(m) if m.file_type().is_socket() => Service::Socket(path),
                Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
                    Service::Executable(path)
                }
                Ok(m) if m.is_file() => Service::Unstartable(path, "not executable".into()),
                Ok(_) => Service::Unstartable(path, "neither a file nor a socket".into()),
                Err(e) => Service::Unstartable(path, format!("dangling: {e}")),
            });
        }
    }
    None
}

fn tcp(path: &Path, spec: &str, argument: &str) -> Service {
    let (host, port) = match spec.split_once('/') {
        Some((host, port)) => (host, port),
        None => (spec, argument),
    };
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Service::Unstartable(
            path.to_owned(),
            format!("/dev/tcp/{spec} with argument {argument:?} names no host and port"),
        );
    }
    Service::Tcp {
        host: host.to_owned(),
        port: port.to_owned(),
    }
}

/// The rpc-config of a call: the first file found for `SERVICE+ARG`, else
/// for `SERVICE`; `key=value` lines, `#` comments, values maybe quoted.
pub fn rpc_config(qube: &Path, full: &str, service: &str) -> BTreeMap<String, String> {
    for name in candidates(full, service) {
        for dir in CONFIG_DIRS {
            if let Ok(text) = fs::read_to_string(qube.join(dir).join(name)) {
                return parse_config(&text);
            }
        }
    }
    BTreeMap::new()
}

pub fn parse_config(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| {
            let v = v.trim();
            let unquoted = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .or_else(|| v.strip_prefix('"').and_then(|v| v.strip_suffix('"')))
                .unwrap_or(v);
            (k.trim().to_owned(), unquoted.to_owned())
        })
        .collect()
}

/// Whether an rpc-config value means yes.
pub fn is_true(value: Option<&String>) -> bool {
    value.is_some_and(|v| matches!(v.as_str(), "true" | "1" | "yes"))
}

/// The `env` file of a qube: `KEY=VALUE` lines for its services.
pub fn qube_env(qube: &Path) -> Vec<(String, String)> {
    fs::read_to_string(qube.join("env"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::os::unix::net::UnixListener;

    fn tmp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "qrexec-standin-agent-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        for d in SERVICE_DIRS.iter().chain(CONFIG_DIRS.iter()) {
            fs::create_dir_all(dir.join(d)).unwrap();
        }
        dir
    }

    fn write(path: PathBuf, mode: u32) -> PathBuf {
        fs::write(&path, "#!/bin/sh\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn lookup_order() {
        let q = tmp("order");
        let etc = q.join("etc/qubes-rpc");
        let local = q.join("usr/local/etc/qubes-rpc");
        assert_eq!(find_service(&q, "s+a", "s", "a"), None);

        let plain_etc = write(etc.join("s"), 0o755);
        assert_eq!(
            find_service(&q, "s+a", "s", "a"),
            Some(Service::Executable(plain_etc))
        );
        let plain_local = write(local.join("s"), 0o755);
        assert_eq!(
            find_service(&q, "s+a", "s", "a"),
            Some(Service::Executable(plain_local.clone()))
        );
        // SERVICE+ARG in any directory comes before SERVICE in the first.
        let arg_etc = write(etc.join("s+a"), 0o644);
        assert_eq!(
            find_service(&q, "s+a", "s", "a"),
            Some(Service::Unstartable(arg_etc, "not executable".into()))
        );
        assert_eq!(
            find_service(&q, "s", "s", ""),
            Some(Service::Executable(plain_local))
        );

        let sock = q.join("sock");
        let _listener = UnixListener::bind(&sock).unwrap();
        symlink(&sock, local.join("u")).unwrap();
        assert_eq!(
            find_service(&q, "u+x", "u", "x"),
            Some(Service::Socket(local.join("u")))
        );
        symlink("/dev/tcp/127.0.0.1", etc.join("t")).unwrap();
        assert_eq!(
            find_service(&q, "t+8080", "t", "8080"),
            Some(Service::Tcp {
                host: "127.0.0.1".into(),
                port: "8080".into()
            })
        );
        assert!(matches!(
            find_service(&q, "t+x", "t", "x"),
            Some(Service::Unstartable(..))
        ));
        symlink("/dev/tcp/::1/22", etc.join("t6")).unwrap();
        assert_eq!(
            find_service(&q, "t6", "t6", ""),
            Some(Service::Tcp {
                host: "::1".into(),
                port: "22".into()
            })
        );
        symlink("/nonexistent", etc.join("d")).unwrap();
        assert!(matches!(
            find_service(&q, "d", "d", ""),
            Some(Service::Unstartable(..))
        ));
        fs::remove_dir_all(&q).unwrap();
    }

    #[test]
    fn configs() {
        let q = tmp("config");
        fs::write(
            q.join("etc/qubes/rpc-config/s"),
            "# c\nskip-service-descriptor = true\nwait-for-session='1'\n",
        )
        .unwrap();
        let c = rpc_config(&q, "s+a", "s");
        assert!(is_true(c.get("skip-service-descriptor")));
        assert_eq!(c.get("wait-for-session").map(String::as_str), Some("1"));
        fs::write(q.join("usr/local/etc/qubes/rpc-config/s+a"), "x=\"y\"\n").unwrap();
        let c = rpc_config(&q, "s+a", "s");
        assert!(!is_true(c.get("skip-service-descriptor")));
        assert_eq!(c.get("x").map(String::as_str), Some("y"));
        assert!(rpc_config(&q, "other", "other").is_empty());

        fs::write(q.join("env"), "XDG_RUNTIME_DIR=/run/user/1000\n\nA=b=c\n").unwrap();
        assert_eq!(
            qube_env(&q),
            [
                ("XDG_RUNTIME_DIR".to_owned(), "/run/user/1000".to_owned()),
                ("A".to_owned(), "b=c".to_owned())
            ]
        );
        fs::remove_dir_all(&q).unwrap();
    }
}
