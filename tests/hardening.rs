//! The confinement of the user services (docs/security.md): every service
//! unit carries it, and under a real systemd user manager the daemon and
//! each qrexec-client-vm it starts run with it (no new privileges, a
//! seccomp filter, umask 0077, namespaces of their own, AF_UNIX alone)
//! while the connection is served; and every socket unit makes its socket
//! and the directories for it the user's alone.
mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;

use common::lab;
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
    "RestrictAddressFamilies=AF_UNIX",
    "SystemCallFilter=@system-service",
    "SystemCallErrorNumber=EPERM",
    "UMask=0077",
    "KeyringMode=private",
    "PrivateUsers=yes",
    "ProtectSystem=strict",
    "ProtectHome=read-only",
    "PrivateTmp=yes",
    "ProtectKernelTunables=yes",
    "ProtectKernelModules=yes",
    "ProtectKernelLogs=yes",
    "ProtectControlGroups=yes",
    "ProtectHostname=yes",
];

/// What qrexec-client-vm needs and the confinement must leave: /dev/xen/*
/// (no PrivateDevices=; ProtectClock= implies a device allow-list), and
/// every address family but AF_UNIX stays closed.
const NOT_CONFINEMENT: &[&str] = &["PrivateDevices=", "ProtectClock=", "AF_INET", "AF_VSOCK"];

/// The lines of every socket unit (the templates and the one-service
/// drop-in): the socket and its directories are the user's alone.
const SOCKET_ACCESS: &[&str] = &["SocketMode=0600", "DirectoryMode=0700"];

/// The fixture's drop-in that widens RestrictAddressFamilies= for the
/// stand-in (tests/common/user_manager.rs), inside the manager's namespace.
const TEST_DROP_IN: &str = "/run/systemd/user/qrexec-.service.d/50-test-standin.conf";

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
        for word in NOT_CONFINEMENT {
            assert!(
                !text
                    .lines()
                    .any(|l| !l.starts_with('#') && l.contains(word)),
                "{} has {word}",
                unit.display()
            );
        }
    }
}

#[test]
fn every_socket_unit_is_the_users_alone() {
    let units = Path::new(REPO).join("units");
    let mut files = vec![units.join("qrexec-connect-.socket.d/service.conf")];
    files.extend(
        fs::read_dir(&units)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "socket")),
    );
    assert!(files.len() >= 4, "{files:?}");
    for file in files {
        let text = fs::read_to_string(&file).unwrap();
        for line in SOCKET_ACCESS {
            assert!(
                text.lines().any(|l| l.trim() == *line),
                "{} lacks {line}",
                file.display()
            );
        }
    }
}

/// A user manager with the units as `make install` installs them and the
/// stand-in's world in place of Qubes; the stage must outlive it.
fn installed_manager(world: &World, stage: &TempDir) -> Option<UserManager> {
    make_install(stage.path());
    lab::start(lab::installed_setup(world, stage.path()), world)
}

/// The permission bits and group of `path`.
fn mode_and_gid(path: &Path) -> (u32, u32) {
    let meta = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.permissions().mode() & 0o7777, meta.gid())
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

/// `/proc/PID/ns/NAME`, the namespace a process is in.
fn namespace(pid: u32, name: &str) -> std::path::PathBuf {
    fs::read_link(format!("/proc/{pid}/ns/{name}")).unwrap()
}

/// The mount options of the file system at `point` as process `pid` sees it.
fn mount_options(pid: u32, point: &str) -> String {
    let info = fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    // The last mount at a point is the one seen there.
    info.lines()
        .rev()
        .find_map(|l| {
            let mut fields = l.split_whitespace().skip(4);
            (fields.next()? == point).then(|| fields.next().unwrap_or_default().to_owned())
        })
        .unwrap_or_default()
}

#[test]
fn the_daemon_and_qrexec_client_vm_run_confined() {
    let stage = TempDir::new("hardening-stage");
    let world = World::new();
    world
        .qube("work")
        .service("qubes.ConnectTCP+7070", "exec cat");
    world.policy("qubes.ConnectTCP +7070 dev work allow\n");
    let Some(m) = installed_manager(&world, &stage) else {
        return;
    };
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
    let manager = m.pid();
    for (what, pid) in [("daemon", daemon), ("qrexec-client-vm", child)] {
        assert_eq!(status_field(pid, "NoNewPrivs"), "1", "{what}");
        assert_eq!(status_field(pid, "Seccomp"), "2", "{what}: a filter");
        assert_eq!(status_field(pid, "Umask"), "0077", "{what}");
        // PrivateUsers=, ProtectSystem= and the rest: namespaces of its own.
        for ns in ["user", "mnt", "uts"] {
            assert_ne!(namespace(pid, ns), namespace(manager, ns), "{what}: {ns}");
        }
        assert_eq!(namespace(pid, "net"), namespace(manager, "net"), "{what}");
        for (point, state) in [
            ("/", "ro"),
            ("/usr/local", "ro"),
            ("/sys/fs/cgroup", "ro"),
            ("/run/user", "ro"),
            ("/tmp", "rw"),
        ] {
            let options = mount_options(pid, point);
            assert!(
                options.split(',').next() == Some(state),
                "{what}: {point} is {options:?}, not {state}"
            );
        }
        let runtime = format!("{}/qrexec-connect", m.runtime_dir().display());
        assert!(
            mount_options(pid, &runtime).starts_with("rw"),
            "{what}: {runtime}"
        );
        // ProtectKernelModules=: CAP_SYS_MODULE (16) out of the bounding set.
        let bounding = u64::from_str_radix(&status_field(pid, "CapBnd"), 16).unwrap();
        assert_eq!(bounding & 1 << 16, 0, "{what}: CapBnd {bounding:x}");
    }
    // A private /tmp: the manager's home (under the host's /tmp) is not there.
    let home = m.home().strip_prefix("/").unwrap();
    assert!(
        !Path::new(&format!("/proc/{daemon}/root"))
            .join(home)
            .exists()
    );
    assert!(m.home().exists());
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    conn.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "{rest:?}");
    m.wait_until("the connection to be served", DEADLINE, || {
        m.property(service, "StatusText").contains("1 served")
    });
    assert_eq!(m.is_active(service), "active");
    // The RuntimeDirectory= cache is written under ProtectSystem=strict and
    // ProtectHome=read-only.
    let cache = m.outside(m.runtime_dir().join("qrexec-connect/stdin-socket"));
    let text = fs::read_to_string(&cache).unwrap_or_else(|e| panic!("{}: {e}", cache.display()));
    assert!(!text.is_empty());
}

/// Under the units as shipped (the fixture's widening drop-in removed):
/// RestrictAddressFamilies=AF_UNIX is in effect (the stand-in cannot open a
/// TCP connection), and a call whose far end is a Unix socket owned by root
/// (as qrexec-agent's /var/run/qubes/qrexec-agent is) is served through a
/// Unix listener, under PrivateUsers=, which maps root to nobody.
#[test]
fn the_shipped_units_serve_with_af_unix_alone() {
    let stage = TempDir::new("hardening-stage");
    let world = World::new();
    // Root's directory and socket, world-connectable, outside the world.
    let agent = TempDir::new("hardening-agent");
    fs::set_permissions(agent.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let socket = agent.path().join("qrexec-agent");
    let listener = UnixListener::bind(&socket).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o666)).unwrap();
    let work = world.qube("work");
    work.socket_service("qubes.ConnectUnix+echo", &socket);
    work.rpc_config("qubes.ConnectUnix+echo", "skip-service-descriptor=true\n");
    // A TCP service: the stand-in opens an AF_INET socket for it.
    let tcp = work.dir().join("etc/qubes-rpc/qubes.ConnectUnix+tcp");
    std::os::unix::fs::symlink("/dev/tcp/127.0.0.1/9", tcp).unwrap();
    world.policy("qubes.ConnectUnix * dev work allow\n");
    let Some(m) = installed_manager(&world, &stage) else {
        return;
    };
    fs::remove_file(m.outside(TEST_DROP_IN)).unwrap();
    m.write_user_unit(
        "qrexec-connect-unix@echo.socket.d/work.conf",
        "[Socket]\nListenStream=%t/qrexec-connect-unix/echo\nFileDescriptorName=work\n",
    );
    m.write_user_unit(
        "qrexec-connect-unix@tcp.socket.d/work.conf",
        "[Socket]\nListenStream=%t/qrexec-connect-unix/tcp\nFileDescriptorName=work\n",
    );
    m.systemctl_ok(&["daemon-reload"]);
    let service = "qrexec-connect-unix@echo.service";
    assert_eq!(m.property(service, "RestrictAddressFamilies"), "AF_UNIX");
    m.systemctl_ok(&[
        "start",
        "qrexec-connect-unix@echo.socket",
        "qrexec-connect-unix@tcp.socket",
    ]);

    let path = m.outside(m.runtime_dir().join("qrexec-connect-unix/echo"));
    let mut conn = UnixStream::connect(&path).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    conn.write_all(b"unix alone\n").unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let (mut far, _) = listener.accept().unwrap();
    far.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    far.read_to_end(&mut got).unwrap();
    assert_eq!(got, b"unix alone\n");
    far.write_all(b"served\n").unwrap();
    drop(far);
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"served\n");
    m.wait_until("the connection to be served", DEADLINE, || {
        m.property(service, "StatusText").contains("1 served")
    });

    // AF_INET is closed: the stand-in's TCP connection fails at socket(2).
    let path = m.outside(m.runtime_dir().join("qrexec-connect-unix/tcp"));
    let mut conn = UnixStream::connect(&path).unwrap();
    conn.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer).unwrap();
    assert!(answer.is_empty(), "{answer:?}");
    let refused = "qrexec-connect-unix@tcp.service";
    m.wait_until("the stand-in's failure is logged", DEADLINE, || {
        m.journal(&[&format!("_SYSTEMD_USER_UNIT={refused}")])
            .contains("Address family not supported")
    });
}

/// A Unix socket outside `%t` (whose 0700 hides everything in it) is
/// created 0600 in a directory made 0700, by a template instance and by a
/// one-service socket alike; the README's drop-in widens both on purpose.
#[test]
fn unix_sockets_outside_the_runtime_directory_are_the_users_alone() {
    let stage = TempDir::new("hardening-stage");
    let world = World::new();
    let Some(m) = installed_manager(&world, &stage) else {
        return;
    };
    let group = m.user().gid;
    let widen = "[Socket]\nSocketMode=0660\nSocketGroup=qrc-test\nDirectoryMode=0750\n";
    let sockets = [
        ("qrexec-connect-unix@tmpl.socket", "tmpl", None),
        ("qrexec-connect-one.socket", "one", None),
        ("qrexec-connect-unix@wide.socket", "wide", Some(widen)),
        ("qrexec-connect-widened.socket", "widened", Some(widen)),
    ];
    for (unit, name, widened) in sockets {
        let listen = format!("ListenStream=%h/forwards-{name}/S.{name}");
        if unit.starts_with("qrexec-connect-unix@") {
            m.write_user_unit(
                &format!("{unit}.d/work.conf"),
                &format!("[Socket]\n{listen}\nFileDescriptorName=work\n"),
            );
        } else {
            m.write_user_unit(
                unit,
                &format!("[Socket]\n{listen}\nFileDescriptorName=work qubes.ConnectUnix+{name}\n"),
            );
        }
        if let Some(text) = widened {
            m.write_user_unit(&format!("{unit}.d/widen.conf"), text);
        }
    }
    m.systemctl_ok(&["daemon-reload"]);
    for (unit, name, widened) in sockets {
        m.systemctl_ok(&["start", unit]);
        let dir = m.home().join(format!("forwards-{name}"));
        let (socket, dir) = (
            mode_and_gid(&dir.join(format!("S.{name}"))),
            mode_and_gid(&dir),
        );
        let (want_socket, want_dir) = if widened.is_some() {
            ((0o660, group), (0o750, group))
        } else {
            ((0o600, group), (0o700, group))
        };
        assert_eq!(
            (socket.0, dir.0),
            (want_socket.0, want_dir.0),
            "{unit}: socket {:o}, directory {:o}",
            socket.0,
            dir.0
        );
        assert_eq!(socket.1, want_socket.1, "{unit}: the socket's group");
    }
}
