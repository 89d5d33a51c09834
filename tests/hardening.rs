//! The confinement of the user services (docs/security.md): every service
//! unit carries it, and under a real systemd user manager the daemon and
//! each qrexec-client-vm it starts run with it (no new privileges, a
//! seccomp filter, umask 0077) while the connection is served.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::chown;
use std::path::Path;

use common::user_manager::UserManager;
use common::{DEADLINE, TempDir, World, make_install, wait_for};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The lines of docs/security.md, in every service unit.
const CONFINEMENT: &[&str] = &[
    "NoNewPrivileges=yes",
    "LockPersonality=yes",
    "RestrictRealtime=yes",
    "RestrictSUIDSGID=yes",
    "RestrictNamespaces=yes",
    "SystemCallArchitectures=native",
    "MemoryDenyWriteExecute=yes",
    "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_VSOCK",
    "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM",
    "UMask=0077",
    "KeyringMode=private",
];

/// The runtime directory of every service unit, where the answer of
/// `qrexec-client-vm -h` is cached (src/stdin_socket.rs): the user's alone,
/// and kept when a unit stops, which is when the next start needs it.
const RUNTIME_DIRECTORY: &[&str] = &[
    "RuntimeDirectory=qrexec-connect",
    "RuntimeDirectoryMode=0700",
    "RuntimeDirectoryPreserve=yes",
];

#[test]
fn every_service_unit_is_confined() {
    let units: Vec<_> = fs::read_dir(Path::new(REPO).join("units"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "service"))
        .collect();
    assert!(units.len() >= 4, "{units:?}");
    for unit in units {
        let text = fs::read_to_string(&unit).unwrap();
        for line in CONFINEMENT.iter().chain(RUNTIME_DIRECTORY) {
            assert!(
                text.lines().any(|l| l.trim() == *line),
                "{} lacks {line}",
                unit.display()
            );
        }
    }
}

/// `/proc/PID/status` field `name`.
fn status_field(pid: u32, name: &str) -> String {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
        .unwrap_or_default()
}

#[test]
fn the_daemon_and_qrexec_client_vm_run_confined() {
    let stage = TempDir::new("hardening-stage");
    make_install(stage.path());
    let world = World::new();
    world
        .qube("work")
        .service("qubes.ConnectTCP+7070", "exec cat");
    world.policy("qubes.ConnectTCP +7070 dev work allow\n");
    let mut setup = UserManager::setup()
        .bind(stage.path().join("usr/local"), "/usr/local")
        .env("QREXEC_STANDIN_SOURCE", "dev");
    for (key, value) in world.env_for_other_user() {
        setup = setup.env(&key, value);
    }
    let Some(m) = setup.start() else { return };
    let user = m.user();
    chown(world.root(), Some(user.uid), Some(user.gid)).unwrap();
    let pid = std::process::id();
    let ip = Ipv4Addr::new(127, 90 + (pid % 100) as u8, (pid / 100 % 250) as u8, 7);
    m.write_user_unit(
        "qrexec-connect-tcp@7070.socket.d/work.conf",
        &format!("[Socket]\nListenStream={ip}:7070\nFileDescriptorName=work\n"),
    );
    m.systemctl_ok(&["daemon-reload"]);
    m.systemctl_ok(&["start", "qrexec-connect-tcp@7070.socket"]);
    let service = "qrexec-connect-tcp@7070.service";

    let mut conn = TcpStream::connect(SocketAddr::from((ip, 7070))).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    conn.write_all(b"confined\n").unwrap();
    let mut echo = [0u8; 9];
    conn.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"confined\n");
    // The connection is open: the daemon and its qrexec-client-vm both run.
    let daemon: u32 = m.property(service, "MainPID").parse().unwrap();
    let child: u32 = wait_for("the connection's qrexec-client-vm", || {
        fs::read_to_string(format!("/proc/{daemon}/task/{daemon}/children"))
            .ok()?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    });
    for (what, pid) in [("daemon", daemon), ("qrexec-client-vm", child)] {
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{what}");
        assert_eq!(status_field(pid, "Seccomp"), "2", "{what}: a filter");
        assert_eq!(status_field(pid, "Umask"), "0077", "{what}");
    }
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    m.wait_until("the connection to be served", DEADLINE, || {
        m.property(service, "StatusText").contains("1 served")
    });
    assert_eq!(m.is_active(service), "active");
}
