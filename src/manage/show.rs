//! What the user manager knows, read from `systemctl --user show` output
//! (systemctl(1): `KEY=VALUE` lines, one block per unit, blocks separated
//! by an empty line) and from the STATUS= text our daemon sends
//! (sd_notify(3)): pure functions from text to the rows of `list`.

use std::fmt;

use super::unit;
use crate::call::FdName;

/// The properties `list` asks for, of socket units and of services.
pub const SOCKET_PROPERTIES: &str =
    "Id,LoadState,ActiveState,SubState,Listen,FileDescriptorName,Triggers,FragmentPath,DropInPaths";
pub const SERVICE_PROPERTIES: &str = "Id,ActiveState,SubState,StatusText";

/// One unit's properties, in the order systemctl printed them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Props(Vec<(String, String)>);

impl Props {
    /// The last value of `key` (systemctl prints a list such as `Listen=` once per item).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A property that is a space-separated list, such as `Triggers=`.
    pub fn words<'a>(&'a self, key: &str) -> impl Iterator<Item = &'a str> + 'a {
        self.get(key).unwrap_or_default().split_whitespace()
    }
}

/// Splits `systemctl show UNIT...` output into one [`Props`] per unit.
pub fn parse_show(text: &str) -> Vec<Props> {
    let mut units = Vec::new();
    let mut current = Props::default();
    for line in text.lines() {
        match line.split_once('=') {
            Some((key, value)) => current.0.push((key.to_owned(), value.to_owned())),
            None if line.is_empty() && !current.0.is_empty() => {
                units.push(std::mem::take(&mut current))
            }
            None => {}
        }
    }
    if !current.0.is_empty() {
        units.push(current);
    }
    units
}

/// The daemon's counters, from its `STATUS=N active, N served, N refused, N failed`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub active: u64,
    pub served: u64,
    pub refused: u64,
    pub failed: u64,
}

impl Counters {
    pub fn parse(status: &str) -> Option<Counters> {
        let mut counters = Counters::default();
        let mut fields = status.split(", ");
        for (name, slot) in [
            ("active", &mut counters.active),
            ("served", &mut counters.served),
            ("refused", &mut counters.refused),
            ("failed", &mut counters.failed),
        ] {
            let (number, word) = fields.next()?.split_once(' ')?;
            if word != name {
                return None;
            }
            *slot = number.parse().ok()?;
        }
        fields.next().is_none().then_some(counters)
    }
}

/// Where a forward stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// The socket listens; its service starts at the next connection.
    Listening,
    /// The service runs and serves the socket.
    Serving,
    /// The socket or its service failed (`systemctl --user status` says why).
    Failed,
    /// Neither listens: stopped, or not started since it was added.
    Stopped,
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            State::Listening => "listening",
            State::Serving => "serving",
            State::Failed => "failed",
            State::Stopped => "stopped",
        })
    }
}

/// One row of `list`: one address of one socket unit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Row {
    /// The address as systemd shows it: `127.0.0.1:22`, `[::1]:22`, a path.
    pub listen: String,
    /// The target: the FileDescriptorName of the drop-in that names this
    /// address, else the unit's.
    pub qube: String,
    /// The call, when the unit says it (`None`: the daemon's `--service`).
    pub call: Option<String>,
    pub socket: String,
    pub service: String,
    pub state: State,
    /// The service's counters (shared by every address it serves), while it runs.
    pub counters: Option<Counters>,
    /// The file whose ListenStream= gives this address, if one does.
    pub file: Option<String>,
}

/// The rows of every socket unit whose service is ours. `read` returns a
/// unit file's text; `expand` turns a ListenStream= value into the address
/// systemd shows (`%t/x` into `/run/user/UID/x`).
pub fn rows(
    sockets: &[Props],
    services: &[Props],
    read: impl Fn(&str) -> Option<String>,
    expand: impl Fn(&str) -> String,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for socket in sockets
        .iter()
        .filter(|s| s.get("LoadState") == Some("loaded"))
    {
        let Some(service) = socket.words("Triggers").find(|s| unit::is_ours(s)) else {
            continue;
        };
        let service_props = services.iter().find(|s| s.get("Id") == Some(service));
        let files: Vec<(&str, unit::SocketLines)> = socket
            .get("FragmentPath")
            .into_iter()
            .chain(socket.words("DropInPaths"))
            .filter(|path| !path.is_empty())
            .filter_map(|path| Some((path, unit::socket_lines(&read(path)?))))
            .collect();
        let unit_name = socket.get("FileDescriptorName");
        for listen in socket.all("Listen") {
            // `127.0.0.1:22 (Stream)`
            let listen = listen.rsplit_once(" (").map_or(listen, |(addr, _)| addr);
            let file = files
                .iter()
                .rev()
                .find(|(_, lines)| lines.listen.iter().any(|l| expand(l) == listen));
            let name = file.and_then(|(_, l)| l.fd_name.as_deref()).or(unit_name);
            let id = socket.get("Id").unwrap_or_default();
            let (qube, call) = target_and_call(name, id, service);
            let state = state(socket, service_props);
            rows.push(Row {
                listen: listen.to_owned(),
                qube,
                call,
                socket: socket.get("Id").unwrap_or_default().to_owned(),
                service: service.to_owned(),
                state,
                // A stopped service keeps its last StatusText: stale.
                counters: service_props
                    .filter(|_| state == State::Serving)
                    .and_then(|s| s.get("StatusText"))
                    .and_then(Counters::parse),
                file: file.map(|(path, _)| (*path).to_owned()),
            });
        }
    }
    rows.sort_by(|a, b| (&a.socket, &a.listen).cmp(&(&b.socket, &b.listen)));
    rows
}

/// What a FileDescriptorName means under this service, as the daemon reads
/// it: the name of the socket unit that passes it (`socket`, which triggers
/// `service`) is systemd's default.
fn target_and_call(name: Option<&str>, socket: &str, service: &str) -> (String, Option<String>) {
    let from_service = unit::templated_call(service).map(|c| c.to_string());
    let parsed = match name {
        Some(name) if name == socket => Ok(FdName::Unnamed),
        _ => FdName::parse(name),
    };
    match parsed {
        Ok(FdName::Unnamed) => ("@default".to_owned(), from_service),
        Ok(FdName::Target(target)) => (target.to_string(), from_service),
        Ok(FdName::Full(target, call)) => (target.to_string(), Some(call.to_string())),
        Err(_) => (name.unwrap_or_default().to_owned(), None),
    }
}

fn state(socket: &Props, service: Option<&Props>) -> State {
    let service_state = service.and_then(|s| s.get("ActiveState"));
    match (socket.get("ActiveState"), service_state) {
        (Some("failed"), _) | (_, Some("failed")) => State::Failed,
        (_, Some("active" | "activating" | "reloading" | "deactivating")) => State::Serving,
        (Some("active"), _) => State::Listening,
        _ => State::Stopped,
    }
}

#[cfg(test)]
mod tests {
    use super::super::unit::ONE_SERVICE;
    use super::*;

    const SHOW: &str = "Id=qrexec-connect-tcp@22.socket
LoadState=loaded
ActiveState=active
SubState=running
Listen=127.0.0.1:2222 (Stream)
Listen=127.0.0.2:2222 (Stream)
FileDescriptorName=work
Triggers=qrexec-connect-tcp@22.service
FragmentPath=/usr/local/lib/systemd/user/qrexec-connect-tcp@.socket
DropInPaths=/usr/local/lib/systemd/user/qrexec-connect-tcp@.socket.d/service.conf /h/dev.conf /h/work.conf

Id=sshd.socket
LoadState=loaded
ActiveState=active
Listen=[::]:22 (Stream)
Triggers=sshd.service

Id=qrexec-connect-web.socket
LoadState=loaded
ActiveState=failed
Listen=/run/web (Stream)
FileDescriptorName=@default qubes.ConnectTCP+80
Triggers=qrexec-connect.service
FragmentPath=/h/qrexec-connect-web.socket
DropInPaths=
";

    #[test]
    fn parses_show_blocks() {
        let units = parse_show(SHOW);
        assert_eq!(units.len(), 3);
        assert_eq!(units[0].all("Listen").count(), 2);
        assert_eq!(units[0].words("DropInPaths").count(), 3);
        assert_eq!(units[2].get("DropInPaths"), Some(""));
        assert_eq!(units[1].get("Nope"), None);
    }

    #[test]
    fn rows_name_each_address_by_its_drop_in() {
        let services = parse_show(
            "Id=qrexec-connect-tcp@22.service\nActiveState=active\n\
             StatusText=1 active, 5 served, 2 refused, 0 failed\n",
        );
        let read = |path: &str| match path {
            "/h/dev.conf" => {
                Some("[Socket]\nListenStream=127.0.0.1:2222\nFileDescriptorName=dev\n".into())
            }
            "/h/work.conf" => {
                Some("[Socket]\nListenStream=127.0.0.2:2222\nFileDescriptorName=work\n".into())
            }
            "/h/qrexec-connect-web.socket" => Some("[Socket]\nListenStream=%t/web\n".into()),
            _ => Some(String::new()),
        };
        let rows = rows(&parse_show(SHOW), &services, read, |l: &str| {
            l.replace("%t", "/run")
        });
        assert_eq!(rows.len(), 3, "{rows:?}");
        let r = &rows[0];
        assert_eq!(
            (
                r.listen.as_str(),
                r.qube.as_str(),
                r.call.as_deref(),
                r.state
            ),
            (
                "127.0.0.1:2222",
                "dev",
                Some("qubes.ConnectTCP+22"),
                State::Serving
            )
        );
        assert_eq!(r.file.as_deref(), Some("/h/dev.conf"));
        assert_eq!(
            r.counters,
            Some(Counters {
                active: 1,
                served: 5,
                refused: 2,
                failed: 0
            })
        );
        assert_eq!(
            (rows[1].qube.as_str(), rows[1].file.as_deref()),
            ("work", Some("/h/work.conf"))
        );
        let web = &rows[2];
        assert_eq!(
            (
                web.socket.as_str(),
                web.qube.as_str(),
                web.call.as_deref(),
                web.state
            ),
            (
                "qrexec-connect-web.socket",
                "@default",
                Some("qubes.ConnectTCP+80"),
                State::Failed
            )
        );
        assert_eq!(web.file.as_deref(), Some("/h/qrexec-connect-web.socket"));
        assert_eq!(web.counters, None);
        // A stopped service keeps its last STATUS=: not shown.
        let stopped = parse_show(
            "Id=qrexec-connect-tcp@22.service\nActiveState=inactive\n\
             StatusText=1 active, 5 served, 2 refused, 0 failed\n",
        );
        let again = super::rows(
            &parse_show(SHOW),
            &stopped,
            |_: &str| None,
            |l: &str| l.to_owned(),
        );
        assert_eq!(
            (again[0].state, again[0].counters),
            (State::Listening, None)
        );
    }

    #[test]
    fn unit_names_fall_back() {
        assert_eq!(
            target_and_call(
                Some("qrexec-connect-tcp@22.socket"),
                "qrexec-connect-tcp@22.socket",
                "qrexec-connect-tcp@22.service"
            ),
            (
                "@default".to_owned(),
                Some("qubes.ConnectTCP+22".to_owned())
            )
        );
        assert_eq!(
            target_and_call(Some("work"), "qrexec-connect-w.socket", ONE_SERVICE),
            ("work".to_owned(), None)
        );
        assert_eq!(
            target_and_call(Some("my.socket"), "work-1234.socket", ONE_SERVICE),
            ("my.socket".to_owned(), None),
            "another unit's name is a qube's"
        );
        assert_eq!(
            target_and_call(Some("a b c"), "qrexec-connect-w.socket", ONE_SERVICE),
            ("a b c".to_owned(), None)
        );
    }

    #[test]
    fn counters() {
        assert_eq!(
            Counters::parse("0 active, 1 served, 0 refused, 1 failed"),
            Some(Counters {
                active: 0,
                served: 1,
                refused: 0,
                failed: 1
            })
        );
        for bad in [
            "",
            "0 active, 1 served, 0 refused",
            "0 active, 1 served, 0 refused, 1 failed, 2 more",
            "x active, 1 served, 0 refused, 1 failed",
            "0 served, 1 active, 0 refused, 1 failed",
            "Ready",
        ] {
            assert_eq!(Counters::parse(bad), None, "{bad:?}");
        }
    }
}
