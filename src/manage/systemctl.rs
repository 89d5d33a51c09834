//! `systemctl --user` as a child process (systemctl(1)), and where the
//! user's own unit files live (systemd.unit(5), "User Unit Search Path").

use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// Runs `systemctl --user ARGS`; its stdout, or its stderr's first line as the error.
pub fn run(args: &[&str]) -> Result<String> {
    let out = Command::new("systemctl")
        .args(["--user", "--no-pager", "--no-ask-password"])
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::io("run systemctl --user", e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let why = stderr
            .lines()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        return Err(Error::Unavailable(format!(
            "systemctl --user {} failed ({}): {why}",
            args.join(" "),
            out.status
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `systemctl --user show -P PROPERTY UNIT`.
pub fn property(unit: &str, property: &str) -> Result<String> {
    Ok(run(&["show", "-P", property, unit])?.trim().to_owned())
}

/// Whether a unit is active (or on its way there or back).
pub fn is_active(unit: &str) -> Result<bool> {
    Ok(matches!(
        property(unit, "ActiveState")?.as_str(),
        "active" | "activating" | "reloading" | "deactivating"
    ))
}

/// `~/.config/systemd/user` (`$XDG_CONFIG_HOME/systemd/user`).
pub fn config_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            Some(home) => PathBuf::from(home).join(".config"),
            None => return Err(Error::NotConfigured("HOME is not set".into())),
        },
    };
    Ok(base.join("systemd/user"))
}

/// How systemd expands `%t` and `%h` at the start of a Listen line.
pub fn expand(value: &str) -> String {
    let var = |name| std::env::var(name).unwrap_or_default();
    if let Some(rest) = value.strip_prefix("%t/") {
        format!("{}/{rest}", var("XDG_RUNTIME_DIR"))
    } else if let Some(rest) = value.strip_prefix("%h/") {
        format!("{}/{rest}", var("HOME"))
    } else {
        value.to_owned()
    }
}

/// Makes a socket unit listen on what its files now say, and returns what
/// it did, for the user. A socket binds new addresses only when it starts
/// again, and systemd refuses to start a socket whose service runs ("Socket
/// service ... already active, refusing"), even with `restart`: so a
/// running service stops with the socket, in one transaction (the service
/// first, draining its open connections), then the socket starts alone and
/// the service starts again at the next connection.
pub fn restart_socket(socket: &str, service: &str) -> Result<Vec<String>> {
    let listening = is_active(socket)?;
    let serving = is_active(service)?;
    match (listening, serving) {
        (_, true) => run(&["stop", socket, service])?,
        (true, false) => run(&["stop", socket])?,
        (false, false) => String::new(),
    };
    run(&["start", socket])?;
    if !is_active(socket)? {
        return Err(Error::Unavailable(format!(
            "{socket} did not start: see systemctl --user status {socket}"
        )));
    }
    const DRAINED: &str = "its open connections drained first";
    Ok(vec![match (listening, serving) {
        (true, true) => format!(
            "restarted {socket} and {service} ({DRAINED}): the socket listens on \
             every address of its files again, the service starts at its next connection"
        ),
        (false, true) => format!(
            "restarted {service} ({DRAINED}) so that {socket} could start: \
             the service starts again at its next connection"
        ),
        (true, false) => format!("restarted {socket}: it listens on every address of its files"),
        (false, false) => format!("started {socket}"),
    }])
}
