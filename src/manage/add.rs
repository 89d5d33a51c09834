//! `qrexec-connect add KIND SPEC...`: checks everything, writes the one file
//! of the forward atomically, then has the user manager load, enable and
//! start its socket, and prints the dom0 policy line the forward needs.

use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;

use super::spec::{Forward, Listen, USAGE};
use super::unit::{Layout, ONE_SERVICE};
use super::{list, policy, systemctl};
use crate::error::{Error, IoContext as _, Result};

/// The option that lets a TCP forward listen where other hosts reach it.
pub const ALLOW_REMOTE: &str = "--allow-remote";

pub fn run(args: &[&str]) -> Result<u8> {
    let about = format!("{USAGE}; a TCP address that is not loopback needs {ALLOW_REMOTE}");
    if let Some(code) = super::help(args, "add [--allow-remote] KIND SPEC...", &about)? {
        return Ok(code);
    }
    let allow_remote = args.contains(&ALLOW_REMOTE);
    let words: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != ALLOW_REMOTE)
        .collect();
    let forward = Forward::parse(&words).map_err(|e| Error::Usage(e.to_string()))?;
    let warning = remote(&forward, allow_remote)?;
    let layout = Layout::of(&forward);
    let path = systemctl::config_dir()?.join(&layout.file);
    check(&forward, &layout, &path)?;
    write_atomic(&path, &layout.text)?;
    let done = activate(&layout).map_err(|e| {
        Error::Unavailable(format!(
            "wrote {}, but {e}; `qrexec-connect remove {}` takes it back",
            path.display(),
            forward.listen
        ))
    })?;
    if let Some(warning) = warning {
        println!("{warning}");
    }
    print!("{}", report(&forward, &layout, &path, &done));
    Ok(0)
}

/// A TCP forward on an address that is not loopback: any host that reaches
/// it calls the qube with this qube's rights in dom0's policy, and nothing
/// in qrexec tells those hosts apart from this qube's own programs. So it
/// is refused unless [`ALLOW_REMOTE`] says so; then the warning to print.
fn remote(forward: &Forward, allowed: bool) -> Result<Option<String>> {
    let Listen::Tcp(addr) = &forward.listen else {
        return Ok(None);
    };
    if addr.ip().to_canonical().is_loopback() {
        return Ok(None);
    }
    let risk = format!(
        "{} is not a loopback address: any host that can reach it can use this forward \
         with this qube's rights (calling {} {})",
        addr.ip(),
        forward.target,
        forward.call()
    );
    match allowed {
        true => Ok(Some(format!("warning: {risk}"))),
        false => Err(Error::Usage(format!(
            "{risk}; add {ALLOW_REMOTE} if that is what you want"
        ))),
    }
}

/// Refuses, before anything is written or reloaded, a forward that could
/// not work: its file or address already taken, or our units missing.
fn check(forward: &Forward, layout: &Layout, path: &Path) -> Result<()> {
    if path.symlink_metadata().is_ok() {
        return Err(Error::Usage(format!(
            "{} exists: {} already has a forward to {}",
            path.display(),
            layout.socket,
            forward.target
        )));
    }
    let shown = systemctl::expand(&forward.listen.to_string());
    if let Some(row) = list::forwards()?.iter().find(|r| r.listen == shown) {
        return Err(Error::Usage(format!(
            "{shown} is already forwarded, to {} by {}",
            row.qube, row.socket
        )));
    }
    // An instance without a drop-in has no Listen line ("bad-setting"),
    // but its template, once installed, is its fragment.
    let (needed, installed) = if layout.whole_unit {
        if systemctl::property(&layout.socket, "LoadState")? == "loaded" {
            return Err(Error::Usage(format!(
                "a unit {} exists already",
                layout.socket
            )));
        }
        (
            ONE_SERVICE,
            systemctl::property(ONE_SERVICE, "LoadState")? == "loaded",
        )
    } else {
        let fragment = systemctl::property(&layout.socket, "FragmentPath")?;
        (layout.socket.as_str(), !fragment.is_empty())
    };
    if !installed {
        return Err(Error::NotConfigured(format!(
            "{needed} is not installed: install qrexec-connect's units first (sudo make install-client)"
        )));
    }
    match &forward.listen {
        Listen::Tcp(addr) => TcpListener::bind(addr).map(drop).map_err(|e| {
            Error::Usage(match e.kind() {
                std::io::ErrorKind::AddrInUse => format!("{addr} is in use by another program"),
                _ => format!("cannot listen on {addr}: {e}"),
            })
        }),
        Listen::Unix(_) if Path::new(&shown).symlink_metadata().is_ok() => Err(Error::Usage(
            format!("{shown} exists: another socket or file is there"),
        )),
        Listen::Unix(_) => Ok(()),
    }
}

/// Writes `text` to a temporary file beside `path` and renames it over, so
/// that systemd never reads half a file.
fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let dir = path.parent().expect("a unit file is in a directory");
    fs::create_dir_all(dir).context(|| format!("create {}", dir.display()))?;
    let name = path.file_name().expect("a file name").to_string_lossy();
    let temporary = dir.join(format!(".{name}.tmp"));
    let write = || -> std::io::Result<()> {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    };
    write().map_err(|e| {
        let _ = fs::remove_file(&temporary);
        Error::io(format!("write {}", path.display()), e)
    })
}

/// Loads the new file, enables the socket, and makes it listen on the new
/// address ([`systemctl::restart_socket`]). Returns what it did.
fn activate(layout: &Layout) -> Result<Vec<String>> {
    systemctl::run(&["daemon-reload"])?;
    systemctl::run(&["enable", &layout.socket])?;
    let mut done = vec![format!(
        "enabled {}: it listens again after every boot",
        layout.socket
    )];
    done.extend(systemctl::restart_socket(&layout.socket, &layout.service)?);
    Ok(done)
}

/// What `add` prints: what it did, how to try it, and the policy line.
fn report(forward: &Forward, layout: &Layout, path: &Path, done: &[String]) -> String {
    let call = forward.call();
    let source = policy::source();
    let mut out = format!("wrote {}\n", path.display());
    for line in done {
        out.push_str(&format!("{line}\n"));
    }
    out.push_str(&format!(
        "{} -> {} {call}\n\
         try it: connect to {}; `qrexec-connect list` shows it, `journalctl --user -u {}` its connections\n\
         dom0 needs this line in /etc/qubes/policy.d/30-user.policy:\n",
        forward.listen,
        forward.target,
        systemctl::expand(&forward.listen.to_string()),
        layout.service,
    ));
    for line in policy::header(source.as_deref()).iter().skip(1) {
        out.push_str(&format!("{line}\n"));
    }
    let source = source.as_deref().unwrap_or(policy::UNKNOWN_SOURCE);
    out.push_str(&format!(
        "{}\n",
        policy::line(source, forward.target.as_str(), call.as_str())
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(spec: &str) -> Forward {
        Forward::parse(&["tcp", spec]).unwrap()
    }

    #[test]
    fn remote_addresses_need_allow_remote() {
        for local in ["2222:work:22", "127.0.0.2:2222:work:22", "[::1]:22:work"] {
            assert_eq!(remote(&forward(local), false).unwrap(), None, "{local}");
        }
        for spec in ["0.0.0.0:2222:work:22", "10.137.0.5:22:work", "[::]:22:work"] {
            let refused = remote(&forward(spec), false).unwrap_err();
            assert_eq!(refused.exit_code(), 2, "{spec}");
            let text = refused.to_string();
            assert!(
                text.contains("is not a loopback address: any host that can reach it")
                    && text.ends_with("add --allow-remote if that is what you want"),
                "{text}"
            );
            let warning = remote(&forward(spec), true).unwrap().unwrap();
            assert!(warning.starts_with("warning: "), "{warning}");
            assert!(
                warning.contains("with this qube's rights (calling work qubes.ConnectTCP+22)"),
                "{warning}"
            );
        }
        let unix = Forward::parse(&["unix", "/run/x", "vault", "ssh"]).unwrap();
        assert_eq!(remote(&unix, false).unwrap(), None);
    }
}
