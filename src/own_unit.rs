//! The systemd unit we run in, and the socket units that pass it sockets.
//!
//! A socket unit without `FileDescriptorName=` names its sockets after
//! itself (systemd.socket(5)), and LISTEN_FDNAMES does not say which names
//! were given that way. A service can learn its own unit from its cgroup
//! (cgroups(7), `/proc/self/cgroup`), and ask its manager which socket units
//! trigger it (`systemctl show -p TriggeredBy`, systemctl(1)): together they
//! tell systemd's default names from names a user wrote.

use std::io::Read;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

/// How long the manager may take to say which socket units trigger us:
/// this runs before READY=1, only for a name that needs it.
const SYSTEMCTL_TIMEOUT: Duration = Duration::from_secs(5);

/// Which service manager runs a unit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Manager {
    /// PID 1 (`systemctl --system`).
    System,
    /// A user's manager, `user@UID.service` (`systemctl --user`).
    User,
}

/// The service we run in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnUnit {
    /// `NAME.service`.
    pub service: String,
    /// `NAME.socket`: the socket unit systemd pairs with it by default.
    pub socket: String,
    pub manager: Manager,
}

impl OwnUnit {
    /// Ours, from `/proc/self/cgroup`; `None` outside a service (a
    /// terminal's scope, a container's root).
    pub fn current() -> Option<Self> {
        let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        Self::from_cgroup(&text)
    }

    /// The pure part of [`OwnUnit::current`]: the unified (`0::`) line, else
    /// the `name=systemd` one of a hybrid hierarchy. The last unit in the
    /// path is ours: a `.service` (below it, the subgroups a service with
    /// `Delegate=` makes), not a `.scope` or `.slice`. A `user@UID.service`
    /// above it means a user's manager runs it.
    pub fn from_cgroup(text: &str) -> Option<Self> {
        let path = |prefix: &str| {
            text.lines()
                .find_map(|line| line.strip_prefix(prefix))
                .filter(|path| *path != "/")
        };
        let path = path("0::").or_else(|| {
            text.lines()
                .find_map(|line| line.split_once(":name=systemd:").map(|(_, p)| p))
        })?;
        let units: Vec<&str> = path
            .split('/')
            // systemd escapes a cgroup name that could clash with a kernel
            // file by prefixing `_` (cg_escape(): `io.service` is `_io.service`).
            .map(|c| c.strip_prefix('_').unwrap_or(c))
            .filter(|c| {
                [".service", ".scope", ".slice"]
                    .iter()
                    .any(|s| c.ends_with(s))
            })
            .collect();
        let (last, above) = units.split_last()?;
        let name = last.strip_suffix(".service")?;
        if name.is_empty() {
            return None;
        }
        let user = above
            .iter()
            .any(|u| u.starts_with("user@") && u.ends_with(".service"));
        Some(OwnUnit {
            service: (*last).to_owned(),
            socket: format!("{name}.socket"),
            manager: if user { Manager::User } else { Manager::System },
        })
    }

    /// The units that trigger ours (its `TriggeredBy=`: the socket units
    /// whose `Service=` it is, or that its `Sockets=` lists), as its manager
    /// says. `Err` says why it could not be asked.
    pub fn triggered_by(&self) -> Result<Vec<String>, String> {
        let scope = match self.manager {
            Manager::System => "--system",
            Manager::User => "--user",
        };
        let child = Command::new("systemctl")
            .args([scope, "--no-pager", "--no-ask-password", "show"])
            .args(["-p", "TriggeredBy", "--value", &self.service])
            .env_remove("SYSTEMD_PAGER")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run systemctl: {e}"))?;
        let (status, stdout, stderr) = wait_output(child, SYSTEMCTL_TIMEOUT)?;
        if !status.success() {
            let why = stderr.lines().find(|l| !l.trim().is_empty());
            return Err(format!(
                "systemctl {scope} show failed ({status}): {}",
                why.unwrap_or("no message")
            ));
        }
        Ok(stdout.split_whitespace().map(str::to_owned).collect())
    }
}

/// A child's status, stdout and stderr (lossy UTF-8), or why not: it is
/// killed if it has not finished within `timeout`.
fn wait_output(
    mut child: Child,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, String, String), String> {
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let (sender, receiver) = mpsc::channel();
    // The pipes are read on a thread of their own so that the wait can end.
    thread::spawn(move || {
        let _ = sender.send((read_all(out), read_all(err)));
    });
    match receiver.recv_timeout(timeout) {
        Ok((stdout, stderr)) => {
            let status = child
                .wait()
                .map_err(|e| format!("cannot wait for systemctl: {e}"))?;
            Ok((status, stdout, stderr))
        }
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "systemctl did not answer within {} s",
                timeout.as_secs()
            ))
        }
    }
}

/// What a pipe holds until its end, as lossy UTF-8.
fn read_all(pipe: Option<impl Read>) -> String {
    let mut bytes = Vec::new();
    if let Some(mut pipe) = pipe {
        let _ = pipe.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_unit_from_the_cgroup() {
        let unit = |service: &str, socket: &str, manager| {
            Some(OwnUnit {
                service: service.into(),
                socket: socket.into(),
                manager,
            })
        };
        for (cgroup, want) in [
            (
                "0::/user.slice/user-1000.slice/user@1000.service/app.slice/qrexec-connect-tcp@22.service\n",
                unit(
                    "qrexec-connect-tcp@22.service",
                    "qrexec-connect-tcp@22.socket",
                    Manager::User,
                ),
            ),
            (
                "12:pids:/user.slice\n1:name=systemd:/user.slice/user@1000.service/app.slice/gitweb.service\n0::/\n",
                unit("gitweb.service", "gitweb.socket", Manager::User),
            ),
            // systemd's escape of a name that could be a kernel file's.
            (
                "0::/user.slice/user@1000.service/app.slice/_io.service\n",
                unit("io.service", "io.socket", Manager::User),
            ),
            // In a delegated subgroup of the service.
            (
                "0::/user.slice/user@1000.service/app.slice/x.service/payload\n",
                unit("x.service", "x.socket", Manager::User),
            ),
            (
                "0::/system.slice/x.service\n",
                unit("x.service", "x.socket", Manager::System),
            ),
            // The user's manager itself is PID 1's.
            (
                "0::/user.slice/user-1000.slice/user@1000.service/init.scope\n",
                None,
            ),
            (
                "0::/user.slice/user-1000.slice/user@1000.service\n",
                unit("user@1000.service", "user@1000.socket", Manager::System),
            ),
            // A terminal's scope below a service is no service of ours.
            (
                "0::/user.slice/user@1000.service/app.slice/app-x.slice/vte-spawn-1.scope\n",
                None,
            ),
            ("0::/\n", None),
            ("0::/user.slice/user-1000.slice/session-2.scope\n", None),
            ("", None),
            ("0::/a/.service\n", None),
        ] {
            assert_eq!(OwnUnit::from_cgroup(cgroup), want, "{cgroup:?}");
        }
    }
}
