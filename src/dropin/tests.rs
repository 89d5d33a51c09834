//! The resolution end to end: files as text, sockets as getsockname says.

use std::path::PathBuf;

use super::search;
use super::*;
use crate::sys::socket::SockAddr;

const UNIT: &str = "qrexec-connect-tcp@1234.socket";

/// The template's own drop-in, installed with the package.
const SERVICE_CONF: &str = "[Socket]\nService=qrexec-connect-tcp@%i.service\n";
const GITWEB: &str = "[Socket]\nListenStream=127.0.0.1:1234\nFileDescriptorName=gitweb\n";
const WORK: &str = "[Socket]\nListenStream=127.0.0.2:1234\nFileDescriptorName=work\n";

fn values() -> Specifiers {
    Specifiers {
        unit: UNIT.into(),
        runtime_dir: Some("/run/user/1000".into()),
        home: Some("/home/user".into()),
        user: Some("user".into()),
        uid: 1000,
    }
}

fn sources(files: &[(&str, &str)]) -> Vec<Source> {
    files
        .iter()
        .map(|(label, text)| Source::read(label, text, &values()).unwrap())
        .collect()
}

fn addrs(list: &[&str]) -> Vec<SockAddr> {
    list.iter()
        .map(|a| match a.strip_prefix('@') {
            Some(name) => SockAddr::UnixAbstract((*name).into()),
            None if a.starts_with('/') => SockAddr::UnixPath((*a).into()),
            None => SockAddr::Inet(a.parse().unwrap()),
        })
        .collect()
}

fn no_ifaces(_: &str) -> Option<u32> {
    None
}

fn run(files: &[(&str, &str)], name: &str, fds: &[&str]) -> Result<Vec<(String, String)>, String> {
    resolve(UNIT, name, &addrs(fds), &sources(files), &no_ifaces)
        .map(|all| all.into_iter().map(|r| (r.name, r.source)).collect())
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn the_seed_example() {
    let files = [
        (
            "/usr/lib/systemd/user/qrexec-connect-tcp@.socket",
            "[Socket]\n",
        ),
        ("gitweb.conf", GITWEB),
        ("service.conf", SERVICE_CONF),
        ("work.conf", WORK),
    ];
    assert_eq!(
        run(&files, "work", &["127.0.0.1:1234", "127.0.0.2:1234"]).unwrap(),
        pairs(&[("gitweb", "gitweb.conf"), ("work", "work.conf")])
    );
}

#[test]
fn three_drop_ins_for_three_qubes() {
    let third = "[Socket]\nFileDescriptorName=@dispvm+web\nListenStream=/run/user/1000/x.sock\n";
    let files = [("a.conf", GITWEB), ("b.conf", WORK), ("c.conf", third)];
    assert_eq!(
        run(
            &files,
            "@dispvm+web",
            &["127.0.0.1:1234", "127.0.0.2:1234", "/run/user/1000/x.sock"]
        )
        .unwrap(),
        pairs(&[
            ("gitweb", "a.conf"),
            ("work", "b.conf"),
            ("@dispvm+web", "c.conf")
        ])
    );
}

#[test]
fn v4_and_v6_in_one_drop_in() {
    let both =
        "[Socket]\nListenStream=127.0.0.1:%i\nListenStream=[::1]:%i\nFileDescriptorName=work\n";
    let gitweb = "[Socket]\nListenStream=@gitweb\nFileDescriptorName=gitweb\n";
    let files = [("gitweb.conf", gitweb), ("work.conf", both)];
    assert_eq!(
        run(&files, "work", &["@gitweb", "127.0.0.1:1234", "[::1]:1234"]).unwrap(),
        pairs(&[
            ("gitweb", "gitweb.conf"),
            ("work", "work.conf"),
            ("work", "work.conf")
        ])
    );
    // A port alone is one dual-stack socket on [::].
    let any = "[Socket]\nListenStream=8080\nFileDescriptorName=work\n";
    let files = [("gitweb.conf", gitweb), ("work.conf", any)];
    assert_eq!(
        run(&files, "work", &["@gitweb", "[::]:8080"]).unwrap(),
        pairs(&[("gitweb", "gitweb.conf"), ("work", "work.conf")])
    );
}

#[test]
fn a_masked_drop_in_is_not_read() {
    let listing = vec![
        (
            PathBuf::from("/home/user/.config/systemd/user/qrexec-connect-tcp@1234.socket.d"),
            vec!["work.conf".into()],
        ),
        (
            PathBuf::from("/etc/systemd/user/qrexec-connect-tcp@1234.socket.d"),
            vec!["gitweb.conf".into(), "work.conf".into()],
        ),
    ];
    let chosen = search::select(&listing);
    assert_eq!(chosen.len(), 2);
    assert!(chosen[1].starts_with("/home/user"), "{chosen:?}");
    // /etc's work.conf said 127.0.0.9; the one read says 127.0.0.2.
    let files = [("gitweb.conf", GITWEB), ("work.conf", WORK)];
    assert!(run(&files, "work", &["127.0.0.1:1234", "127.0.0.9:1234"]).is_err());
    assert!(run(&files, "work", &["127.0.0.1:1234", "127.0.0.2:1234"]).is_ok());
}

#[test]
fn an_empty_listen_line_removes_the_ports_before() {
    let reset = "[Socket]\nListenStream=\nListenStream=127.0.0.3:1234\nFileDescriptorName=work\n";
    let files = [("a.conf", GITWEB), ("b.conf", reset)];
    assert_eq!(
        run(&files, "work", &["127.0.0.3:1234"]).unwrap(),
        pairs(&[("work", "b.conf")])
    );
    let e = run(&files, "work", &["127.0.0.1:1234", "127.0.0.3:1234"]).unwrap_err();
    assert!(e.contains("2 sockets") && e.contains("1 ports"), "{e}");
}

#[test]
fn refuses_an_address_no_file_declares() {
    let files = [("gitweb.conf", GITWEB), ("work.conf", WORK)];
    let e = run(&files, "work", &["127.0.0.1:1234", "127.0.0.3:1234"]).unwrap_err();
    assert!(e.starts_with(UNIT), "{e}");
    assert!(
        e.contains("127.0.0.3:1234") && e.contains("gitweb.conf, work.conf"),
        "{e}"
    );
}

#[test]
fn refuses_an_address_two_files_declare() {
    // With ReusePort=yes both lines bind.
    let twin = "[Socket]\nListenStream=127.0.0.1:1234\nFileDescriptorName=work\n";
    let files = [("gitweb.conf", GITWEB), ("work.conf", twin)];
    let e = run(&files, "work", &["127.0.0.1:1234", "127.0.0.1:1234"]).unwrap_err();
    assert!(
        e.contains("more than one file") && e.contains("gitweb.conf, work.conf"),
        "{e}"
    );
}

#[test]
fn refuses_positions_that_disagree() {
    let files = [("gitweb.conf", GITWEB), ("work.conf", WORK)];
    let e = run(&files, "work", &["127.0.0.2:1234", "127.0.0.1:1234"]).unwrap_err();
    assert!(
        e.contains("127.0.0.2:1234") && e.contains("passed where"),
        "{e}"
    );
}

#[test]
fn refuses_a_drop_in_without_a_name_beside_named_ones() {
    let unnamed = "[Socket]\nListenStream=127.0.0.3:1234\n";
    let files = [
        ("gitweb.conf", GITWEB),
        ("other.conf", unnamed),
        ("work.conf", WORK),
    ];
    let e = run(
        &files,
        "work",
        &["127.0.0.1:1234", "127.0.0.3:1234", "127.0.0.2:1234"],
    )
    .unwrap_err();
    assert!(e.contains("other.conf declares sockets without"), "{e}");
    // All unnamed: the unit's name for every one, nothing to choose.
    let files = [
        ("a.conf", unnamed),
        ("b.conf", "[Socket]\nListenStream=127.0.0.4:1234\n"),
    ];
    assert_eq!(
        run(&files, UNIT, &["127.0.0.3:1234", "127.0.0.4:1234"]).unwrap(),
        pairs(&[(UNIT, "a.conf"), (UNIT, "b.conf")])
    );
}

#[test]
fn refuses_files_changed_since_systemd_read_them() {
    let files = [("gitweb.conf", GITWEB), ("work.conf", WORK)];
    let e = run(&files, "gitweb", &["127.0.0.1:1234", "127.0.0.2:1234"]).unwrap_err();
    assert!(e.contains("daemon-reload"), "{e}");
    let e = run(&files, "work", &["127.0.0.1:1234"]).unwrap_err();
    assert!(e.contains("1 sockets"), "{e}");
}

#[test]
fn refuses_files_it_cannot_read_as_systemd() {
    for (text, why) in [
        ("[Socket]\nListenStream=%H:1234\n", "%H"),
        ("[Socket]\nListenStream=localhost:1234\n", "localhost"),
        ("[Socket]\nFileDescriptorName=a:b\n", "not valid"),
        ("[Socket]\nListenUSBFunction=/dev/x\n", "counted"),
        ("[Socket\n", "section"),
    ] {
        let e = Source::read("x.conf", text, &values()).unwrap_err();
        assert!(e.starts_with("x.conf") && e.contains(why), "{e}");
    }
    // systemd drops a ListenSequentialPacket= that is not a Unix socket.
    let s = Source::read(
        "x.conf",
        "[Socket]\nListenSequentialPacket=127.0.0.1:1\n",
        &values(),
    )
    .unwrap();
    assert!(s.entries.is_empty());
}

#[test]
fn specifiers_in_listen_lines() {
    let unix = "[Socket]\nListenStream=%t/qrexec-connect-unix/S.%i\nFileDescriptorName=vault\n";
    let other = "[Socket]\nListenStream=%h/s\nFileDescriptorName=work\n";
    let files = [("a.conf", unix), ("b.conf", other)];
    assert_eq!(
        run(
            &files,
            "work",
            &["/run/user/1000/qrexec-connect-unix/S.1234", "/home/user/s"]
        )
        .unwrap(),
        pairs(&[("vault", "a.conf"), ("work", "b.conf")])
    );
}
