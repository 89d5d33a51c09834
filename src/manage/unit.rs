//! The unit files `add` writes and `list` reads: pure functions from a
//! forward to its unit name and file text, and back from a file to what it
//! listens on (systemd.socket(5), systemd.unit(5) for drop-ins).
//!
//! The layout is the README's: a templated forward is a drop-in named after
//! the qube in the instance's directory,
//! `qrexec-connect-tcp@22.socket.d/work.conf`; a `call` forward is a
//! `qrexec-connect-NAME.socket` of its own, served by `qrexec-connect.service`.
//! Every file `add` writes starts with [`MARKER`], which is how `remove`
//! tells them from files a person wrote.

use super::spec::{Forward, Kind};
use crate::call::{Call, Target};

/// The first line of every file `add` writes.
pub const MARKER: &str = "# written by qrexec-connect add; qrexec-connect remove deletes it";

/// The templated units: the prefix before `@`, and the service it calls.
pub const TEMPLATES: &[(&str, &str)] = &[
    ("qrexec-connect-tcp", "qubes.ConnectTCP"),
    ("qrexec-connect-tcp-bind", "qubes.ConnectTCPBind"),
    ("qrexec-connect-unix", "qubes.ConnectUnix"),
];

/// The service of the one-service form.
pub const ONE_SERVICE: &str = "qrexec-connect.service";

/// Whether `add` wrote this file.
pub fn is_marked(text: &str) -> bool {
    text.lines().next() == Some(MARKER)
}

/// Where a forward lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The socket unit, e.g. `qrexec-connect-tcp@22.socket`.
    pub socket: String,
    /// The service its connections go to.
    pub service: String,
    /// The file `add` writes, relative to `~/.config/systemd/user`.
    pub file: String,
    /// Its content.
    pub text: String,
    /// Whether the file is a whole unit (the `call` form) or a drop-in.
    pub whole_unit: bool,
}

impl Layout {
    pub fn of(forward: &Forward) -> Layout {
        let qube = fd_target(&forward.target);
        let (prefix, instance) = match &forward.kind {
            Kind::Tcp(port) => (TEMPLATES[0].0, port.to_string()),
            Kind::TcpBind(bind) => (TEMPLATES[1].0, bind.to_string()),
            Kind::Unix(name) => (TEMPLATES[2].0, name.to_string()),
            Kind::Call(call) => {
                let socket = format!("qrexec-connect-{}.socket", call_unit_name(&qube, call));
                let text = format!(
                    "{MARKER}\n[Socket]\nListenStream={}\nFileDescriptorName={qube} {call}\n\n\
                     [Install]\nWantedBy=sockets.target\n",
                    forward.listen
                );
                return Layout {
                    file: socket.clone(),
                    socket,
                    service: ONE_SERVICE.to_owned(),
                    text,
                    whole_unit: true,
                };
            }
        };
        let socket = format!("{prefix}@{instance}.socket");
        Layout {
            file: format!("{socket}.d/{qube}.conf"),
            service: format!("{prefix}@{instance}.service"),
            text: format!(
                "{MARKER}\n[Socket]\nListenStream={}\nFileDescriptorName={qube}\n",
                forward.listen
            ),
            socket,
            whole_unit: false,
        }
    }
}

/// A target as a FileDescriptorName spells it: a name cannot hold `:`, so
/// `@dispvm:T` is `@dispvm+T` (which [`Target::parse`] reads back).
pub fn fd_target(target: &Target) -> String {
    target.as_str().replace(':', "+")
}

/// `TARGET-SERVICE[-ARG]` with what a unit name cannot hold (`@`, `+`, `:`)
/// made `_` or `-`.
fn call_unit_name(target: &str, call: &Call) -> String {
    format!("{target}-{call}")
        .chars()
        .map(|c| match c {
            '+' => '-',
            c if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') => c,
            _ => '_',
        })
        .collect()
}

/// The call a templated service makes, from its name:
/// `qrexec-connect-tcp@22.service` is `qubes.ConnectTCP+22`.
pub fn templated_call(service: &str) -> Option<Call> {
    let (prefix, instance) = service.strip_suffix(".service")?.split_once('@')?;
    let (_, rpc) = TEMPLATES.iter().find(|(p, _)| *p == prefix)?;
    Call::new(rpc, Some(instance)).ok()
}

/// Whether connections to this service are ours to list.
pub fn is_ours(service: &str) -> bool {
    service == ONE_SERVICE || templated_call(service).is_some()
}

/// What a socket unit file or drop-in says in its `[Socket]` section.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SocketLines {
    /// `ListenStream=` values, after any empty assignment that resets them.
    pub listen: Vec<String>,
    /// Whether an empty `ListenStream=` reset the earlier files' list.
    pub reset: bool,
    pub fd_name: Option<String>,
}

/// Reads the `[Socket]` lines that say where a forward listens and goes.
pub fn socket_lines(text: &str) -> SocketLines {
    let mut lines = SocketLines::default();
    let mut in_socket = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_socket = line == "[Socket]";
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        if !in_socket || line.starts_with(['#', ';']) {
            continue;
        }
        match (key.trim(), value.trim()) {
            ("ListenStream", "") => {
                lines.listen.clear();
                lines.reset = true;
            }
            ("ListenStream", value) => lines.listen.push(value.to_owned()),
            ("FileDescriptorName", value) => lines.fd_name = Some(value.to_owned()),
            _ => {}
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(words: &str) -> Layout {
        Layout::of(&Forward::parse(&words.split(' ').collect::<Vec<_>>()).unwrap())
    }

    #[test]
    fn templated_layouts() {
        let l = layout("tcp 2222:work:22");
        assert_eq!(l.socket, "qrexec-connect-tcp@22.socket");
        assert_eq!(l.service, "qrexec-connect-tcp@22.service");
        assert_eq!(l.file, "qrexec-connect-tcp@22.socket.d/work.conf");
        assert_eq!(
            l.text,
            format!("{MARKER}\n[Socket]\nListenStream=127.0.0.1:2222\nFileDescriptorName=work\n")
        );
        assert!(is_marked(&l.text) && !l.whole_unit);
        let l = layout("tcp [::1]:80:@dispvm+web-dvm");
        assert_eq!(
            l.file,
            "qrexec-connect-tcp@80.socket.d/@dispvm+web-dvm.conf"
        );
        assert!(
            l.text
                .contains("ListenStream=[::1]:80\nFileDescriptorName=@dispvm+web-dvm\n")
        );
        let l = layout("tcp-bind 2049:nfs:2049-127.0.1.1");
        assert_eq!(
            l.file,
            "qrexec-connect-tcp-bind@2049-127.0.1.1.socket.d/nfs.conf"
        );
        let l = layout("unix %t/s/S.ssh @default gpg-agent-ssh");
        assert_eq!(
            l.file,
            "qrexec-connect-unix@gpg-agent-ssh.socket.d/@default.conf"
        );
        assert!(l.text.contains("ListenStream=%t/s/S.ssh\n"));
    }

    #[test]
    fn call_layout() {
        let l = layout("call 8000 @default my.Service+a.b");
        assert_eq!(l.socket, "qrexec-connect-_default-my.Service-a.b.socket");
        assert_eq!(l.file, l.socket);
        assert_eq!(l.service, ONE_SERVICE);
        assert!(l.whole_unit);
        assert_eq!(
            l.text,
            format!(
                "{MARKER}\n[Socket]\nListenStream=127.0.0.1:8000\n\
                 FileDescriptorName=@default my.Service+a.b\n\n[Install]\nWantedBy=sockets.target\n"
            )
        );
        assert_eq!(
            socket_lines(&l.text).fd_name.as_deref(),
            Some("@default my.Service+a.b")
        );
    }

    #[test]
    fn templated_calls() {
        assert_eq!(
            templated_call("qrexec-connect-tcp@22.service")
                .unwrap()
                .as_str(),
            "qubes.ConnectTCP+22"
        );
        assert_eq!(
            templated_call("qrexec-connect-tcp-bind@2049-127.0.1.1.service")
                .unwrap()
                .as_str(),
            "qubes.ConnectTCPBind+2049-127.0.1.1"
        );
        assert!(templated_call("qrexec-connect.service").is_none());
        assert!(templated_call("foo@22.service").is_none());
        assert!(templated_call("qrexec-connect-tcp@22.socket").is_none());
        assert!(is_ours(ONE_SERVICE) && is_ours("qrexec-connect-unix@x.service"));
        assert!(!is_ours("sshd.service"));
    }

    #[test]
    fn reads_socket_lines() {
        let text = "# a comment\n[Unit]\nListenStream=nope\n[Socket]\nListenStream=1.2.3.4:5\n\
                    ;ListenStream=commented\nListenStream = 127.0.0.1:22 \nFileDescriptorName=work\n\
                    [Install]\nWantedBy=sockets.target\n";
        let lines = socket_lines(text);
        assert_eq!(lines.listen, ["1.2.3.4:5", "127.0.0.1:22"]);
        assert_eq!(lines.fd_name.as_deref(), Some("work"));
        assert!(!lines.reset);
        let lines = socket_lines("[Socket]\nListenStream=a\nListenStream=\nListenStream=b\n");
        assert_eq!((lines.listen, lines.reset), (vec!["b".to_owned()], true));
        assert!(!is_marked("[Socket]\n"));
        assert!(!is_marked(&format!("\n{MARKER}\n")));
    }
}
