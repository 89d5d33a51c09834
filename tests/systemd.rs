//! qrexec-connect under a real systemd user manager (tests/common/user_manager.rs):
//! the units as `make install` installs them (bind-mounted over /usr/local in
//! the manager's namespace), the user's drop-ins exactly as the README shows
//! them, the qrexec-client-vm stand-in in place of Qubes, and real servers.
//!
//! The client qube is called `dev` (as in policy-examples/). Each test listens
//! on loopback addresses of its own, so tests may run in parallel.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{PermissionsExt, chown};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::{fs, thread};

use common::lab::{self, Backend, CLIENT, HalfSent, assert_reaches, exchange, socket_addr};
use common::user_manager::{Setup, UserManager};
use common::{DEADLINE as WAIT, TempDir, World, make_install};
use qrexec_connect::stdin_socket;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A loopback address no other test of this process uses.
fn loopback() -> Ipv4Addr {
    lab::loopback_from(1)
}

/// A user manager with qrexec-connect installed (`make install` into a
/// DESTDIR, bind-mounted over /usr/local, so that the units and links are
/// exactly where a user's would be) and the stand-in's world in place of
/// Qubes. The host's own /usr/local is hidden from the manager's services;
/// nothing they run lives there.
struct Lab {
    manager: UserManager,
    world: World,
    stage: TempDir,
}

impl Lab {
    fn start() -> Option<Lab> {
        Lab::start_with(|_, setup| setup)
    }

    /// A lab whose manager is set up further by `more`, given the staging
    /// directory (which lives as long as the lab).
    fn start_with(more: impl FnOnce(&Path, Setup) -> Setup) -> Option<Lab> {
        let stage = TempDir::new("stage");
        make_install(stage.path());
        let world = World::new();
        world.policy("");
        let setup = lab::installed_setup(&world, stage.path());
        let manager = lab::start(more(stage.path(), setup), &world)?;
        lab::show_to_services(&manager, &[manager.home()]);
        Some(Lab {
            manager,
            world,
            stage,
        })
    }

    /// dom0's policy, in the format of policy-examples/.
    fn policy(&self, text: &str) {
        self.world.policy(text);
    }

    /// dom0's policy: these files of policy-examples/, as shipped.
    fn policy_examples(&self, names: &[&str]) {
        let text: String = names
            .iter()
            .map(|name| {
                let path = Path::new(REPO).join("policy-examples").join(name);
                fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
            })
            .collect();
        self.policy(&text);
    }

    /// In `qube`, `SERVICE+ARG` connects to a TCP port, as Qubes'
    /// qubes.ConnectTCP symlink to /dev/tcp does.
    fn tcp_service(&self, qube: &str, call: &str, to: SocketAddr) {
        lab::tcp_service(&self.world, qube, call, to);
    }

    /// In `qube`, the service links `make install-service` installed.
    fn installed_services(&self, qube: &str) {
        lab::installed_services(&self.world, self.stage.path(), qube);
    }

    /// A drop-in `NAME.conf` for the socket unit `unit` that listens on
    /// `ip:port` for the FileDescriptorName `name`, as the README shows it.
    fn listen(&self, unit: &str, name: &str, ip: Ipv4Addr, port: u16) {
        self.manager.write_user_unit(
            &format!("{unit}.socket.d/{name}.conf"),
            &format!("[Socket]\nListenStream={ip}:{port}\nFileDescriptorName={name}\n"),
        );
    }

    /// A [`Backend`] named `qube` that `qube`'s qubes.ConnectTCP+1234 reaches.
    fn backend(&self, qube: &str) -> Backend {
        let backend = Backend::start(qube);
        self.tcp_service(qube, "qubes.ConnectTCP+1234", backend.addr);
        backend
    }

    /// Seed 000's set-up that most tests start from: port 1234 of a
    /// loopback address of its own forwarded to `gitweb` by
    /// `qrexec-connect-tcp@1234.socket.d/gitweb.conf`, with the shipped
    /// policy. Returns the backend (serving while it lives) and the address.
    fn gitweb_on_1234(&self) -> (Backend, Ipv4Addr) {
        let gitweb = self.backend("gitweb");
        self.policy_examples(&["30-qrexec-connect-tcp.policy"]);
        let ip = loopback();
        self.listen("qrexec-connect-tcp@1234", "gitweb", ip, 1234);
        (gitweb, ip)
    }

    /// [`Lab::gitweb_on_1234`], loaded and its socket unit started.
    fn gitweb_started(&self) -> (Backend, Ipv4Addr) {
        let (gitweb, ip) = self.gitweb_on_1234();
        self.reload();
        self.manager
            .systemctl_ok(&["start", "qrexec-connect-tcp@1234.socket"]);
        (gitweb, ip)
    }

    /// Two qubes behind port 1234, `gitweb` and `work`, with the shipped
    /// policy, and two loopback addresses of their own, `gitweb` listening
    /// on the first through `qrexec-connect-tcp@1234.socket.d/gitweb.conf`.
    fn gitweb_and_work_on_1234(&self) -> ([Backend; 2], Ipv4Addr, Ipv4Addr) {
        let backends = [self.backend("gitweb"), self.backend("work")];
        self.policy_examples(&["30-qrexec-connect-tcp.policy"]);
        let (first, second) = (loopback(), loopback());
        self.listen("qrexec-connect-tcp@1234", "gitweb", first, 1234);
        (backends, first, second)
    }

    /// Asserts that a connection to `addr` reaches `qube`'s backend, and
    /// that qrexec-client-vm was called once for it, with the target `qube`.
    fn assert_routed(&self, addr: SocketAddr, qube: &str) {
        lab::assert_routed(&self.world, addr, qube);
    }

    fn reload(&self) {
        self.manager.systemctl_ok(&["daemon-reload"]);
    }

    /// The journal lines of one user unit.
    fn log(&self, unit: &str) -> String {
        self.manager
            .journal(&[&format!("_SYSTEMD_USER_UNIT={unit}")])
    }
}

/// Seed 000: `qrexec-connect-tcp@1234.socket.d/gitweb.conf` forwards the port
/// to `gitweb`; the service starts at the first connection and is active
/// (running) only through READY=1.
#[test]
fn seed_000_tcp_port_to_a_named_qube() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let (_gitweb, ip) = lab.gitweb_on_1234();
    lab.reload();
    m.systemctl_ok(&["enable", "--now", "qrexec-connect-tcp@1234.socket"]);
    let service = "qrexec-connect-tcp@1234.service";
    assert_eq!(m.is_active("qrexec-connect-tcp@1234.socket"), "active");
    assert_eq!(
        m.systemctl_ok(&["is-enabled", "qrexec-connect-tcp@1234.socket"])
            .trim(),
        "enabled"
    );
    assert_eq!(
        m.is_active(service),
        "inactive",
        "started before any connection"
    );

    assert_reaches(socket_addr(ip, 1234), "gitweb");
    assert_eq!(m.is_active(service), "active");
    assert_eq!(m.property(service, "SubState"), "running");
    // Type=notify: active only after READY=1; STATUS= comes from the daemon.
    assert_eq!(m.property(service, "Type"), "notify");
    m.wait_until("the daemon reports the connection served", WAIT, || {
        m.property(service, "StatusText").contains("1 served")
    });
    let status = m.systemctl_ok(&["status", service]);
    assert!(status.contains("active (running)"), "{status}");
    assert!(
        status.contains(&format!("{ip}:1234 -> gitweb qubes.ConnectTCP+1234")),
        "the journal should show the listener:\n{status}"
    );
}

/// Bad FileDescriptorName: the service fails to start, and status and the
/// journal say why in one line.
#[test]
fn bad_file_descriptor_name_fails_with_the_reason() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let ip = loopback();
    m.write_user_unit(
        "qrexec-connect-tcp@1234.socket.d/bad.conf",
        &format!("[Socket]\nListenStream={ip}:1234\nFileDescriptorName=my#qube\n"),
    );
    lab.reload();
    m.systemctl_ok(&["start", "qrexec-connect-tcp@1234.socket"]);
    let service = "qrexec-connect-tcp@1234.service";
    // The connection starts the service, which refuses to run: nothing comes
    // back.
    lab::assert_fails_to_start(m, socket_addr(ip, 1234), service);
    assert_eq!(m.property(service, "Result"), "exit-code");
    let reason = format!(
        "socket {ip}:1234 has a bad FileDescriptorName \"my#qube\": character '#' is not allowed"
    );
    // `systemctl status` shows the log only from the unit's last start on;
    // a daemon that fails at once may log before systemd records that
    // start, so the reason is asserted in the unit's journal, where users
    // look (`journalctl --user -u`).
    let status = String::from_utf8_lossy(&m.systemctl(&["status", service]).stdout).into_owned();
    assert!(
        status.contains("Active: failed (Result: exit-code)"),
        "{status}"
    );
    assert!(status.contains("(code=exited, status=2)"), "{status}");
    assert_eq!(
        m.property("qrexec-connect-tcp@1234.socket", "Result"),
        "service-start-limit-hit"
    );
    let journal = m.run(
        &[],
        &[
            "journalctl",
            "--user",
            "-u",
            "qrexec-connect*",
            "--no-pager",
        ],
    );
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(
        journal.contains(&reason),
        "journal lacks {reason:?}:\n{journal}"
    );
    // One line each time: the reason is not spread over several.
    let lines = journal
        .lines()
        .filter(|l| l.contains("FileDescriptorName"))
        .count();
    assert_eq!(lines, journal.matches(&reason).count(), "{journal}");
}

/// The same port to a second qube, the other way (no file reading): a
/// second socket unit with `Service=qrexec-connect-tcp@1234.service`. Each address
/// reaches its own qube, through one service that holds both sockets. Added
/// as the README says, while the first serves.
#[test]
fn same_port_to_two_qubes_through_a_second_socket() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let (_backends, first, second) = lab.gitweb_and_work_on_1234();
    lab.reload();
    m.systemctl_ok(&["enable", "--now", "qrexec-connect-tcp@1234.socket"]);
    assert_reaches(socket_addr(first, 1234), "gitweb");
    // Named outside the qrexec-connect- prefix, whose drop-in would send it
    // to qrexec-connect.service instead.
    m.write_user_unit(
        "work-1234.socket",
        &format!(
            "[Socket]\nListenStream={second}:1234\nFileDescriptorName=work\n\
             Service=qrexec-connect-tcp@1234.service\n\n\
             [Install]\nWantedBy=sockets.target\n"
        ),
    );
    lab.reload();
    m.systemctl_ok(&[
        "stop",
        "qrexec-connect-tcp@1234.socket",
        "qrexec-connect-tcp@1234.service",
    ]);
    m.systemctl_ok(&["enable", "--now", "work-1234.socket"]);
    m.systemctl_ok(&["start", "qrexec-connect-tcp@1234.socket"]);
    let service = "qrexec-connect-tcp@1234.service";
    assert_eq!(m.property("work-1234.socket", "Triggers"), service);
    assert_eq!(
        m.property("qrexec-connect-tcp@1234.socket", "Triggers"),
        service
    );

    // Whichever connection starts the service, it gets both sockets.
    assert_reaches(socket_addr(second, 1234), "work");
    assert_reaches(socket_addr(first, 1234), "gitweb");
    assert_reaches(socket_addr(second, 1234), "work");
    let log = lab.log(service);
    assert!(
        log.contains(&format!("{first}:1234 -> gitweb qubes.ConnectTCP+1234")),
        "{log}"
    );
    assert!(
        log.contains(&format!("{second}:1234 -> work qubes.ConnectTCP+1234")),
        "{log}"
    );
    let listening = m.systemctl_ok(&["list-sockets", "--no-legend"]);
    let row = |addr: Ipv4Addr, socket: &str| {
        listening.lines().any(|l| {
            l.split_whitespace().collect::<Vec<_>>() == [&format!("{addr}:1234"), socket, service]
        })
    };
    assert!(row(first, "qrexec-connect-tcp@1234.socket"), "{listening}");
    assert!(row(second, "work-1234.socket"), "{listening}");
}

/// Seed 000 verbatim: `gitweb.conf` forwards 127.0.0.1:1234 to `gitweb`;
/// then, with the socket listening and its service running, `work.conf` in
/// the same instance directory adds 127.0.0.2:1234 for `work`, and the
/// README's commands (daemon-reload, restart the socket) bring it in.
/// systemd still gives the unit one FileDescriptorName, the last drop-in's,
/// and passes it for both sockets; each address reaches its own qube, named
/// by the drop-in that declares it.
#[test]
fn seed_000_two_drop_ins_two_qubes() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let (_gitweb, _work) = (lab.backend("gitweb"), lab.backend("work"));
    lab.policy_examples(&["30-qrexec-connect-tcp.policy"]);
    let unit = "qrexec-connect-tcp@1234.socket";
    let service = "qrexec-connect-tcp@1234.service";
    m.write_user_unit(
        "qrexec-connect-tcp@1234.socket.d/gitweb.conf",
        "[Socket]\nListenStream=127.0.0.1:1234\nFileDescriptorName=gitweb\n",
    );
    lab.reload();
    m.systemctl_ok(&["enable", "--now", unit]);
    let (first, second) = (
        socket_addr(Ipv4Addr::new(127, 0, 0, 1), 1234),
        socket_addr(Ipv4Addr::new(127, 0, 0, 2), 1234),
    );
    lab.assert_routed(first, "gitweb");
    assert_eq!(m.is_active(service), "active");

    m.write_user_unit(
        "qrexec-connect-tcp@1234.socket.d/work.conf",
        "[Socket]\nListenStream=127.0.0.2:1234\nFileDescriptorName=work\n",
    );
    lab.reload();
    // A restart of the socket alone is refused while its service runs
    // ("Socket service ... already active, refusing"): both stop, in one
    // transaction (the service first, draining), then the socket starts.
    m.systemctl_ok(&["stop", unit, service]);
    m.systemctl_ok(&["start", unit]);
    assert_eq!(m.property(unit, "FileDescriptorName"), "work");
    let listening = m.systemctl_ok(&["list-sockets", "--no-legend"]);
    for addr in [first, second] {
        assert!(
            listening
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == [&addr.to_string(), unit, service]),
            "{listening}"
        );
    }
    lab.assert_routed(second, "work");
    lab.assert_routed(first, "gitweb");
    lab.assert_routed(second, "work");
    let log = lab.log(service);
    for line in [
        "127.0.0.1:1234 -> gitweb qubes.ConnectTCP+1234 (drop-in gitweb.conf)",
        "127.0.0.2:1234 -> work qubes.ConnectTCP+1234 (drop-in work.conf)",
    ] {
        assert!(log.contains(line), "{line:?} missing:\n{log}");
    }
}

/// Three drop-ins of one instance, three qubes: each address reaches the
/// qube its own drop-in names.
#[test]
fn three_drop_ins_three_qubes() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let qubes = ["gitweb", "personal", "work"];
    let _backends = qubes.map(|q| lab.backend(q));
    let policy: String = qubes
        .iter()
        .map(|q| format!("qubes.ConnectTCP +1234 {CLIENT} {q} allow\n"))
        .collect();
    lab.policy(&policy);
    let ips = qubes.map(|_| loopback());
    for (qube, ip) in qubes.iter().zip(ips) {
        lab.listen("qrexec-connect-tcp@1234", qube, ip, 1234);
    }
    lab.reload();
    m.systemctl_ok(&["start", "qrexec-connect-tcp@1234.socket"]);
    for (qube, ip) in qubes.iter().zip(ips).rev() {
        lab.assert_routed(socket_addr(ip, 1234), qube);
    }
    let log = lab.log("qrexec-connect-tcp@1234.service");
    for (qube, ip) in qubes.iter().zip(ips) {
        let line = format!("{ip}:1234 -> {qube} qubes.ConnectTCP+1234 (drop-in {qube}.conf)");
        assert!(log.contains(&line), "{line:?} missing:\n{log}");
    }
}

/// A port of [::1] no other test of this process uses.
fn v6_port() -> u16 {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed) as u32;
    (20000 + (std::process::id() * 7 + n) % 10000) as u16
}

/// One drop-in with a v4 and a v6 address for one qube, beside another
/// drop-in: both of its addresses reach its qube.
#[test]
fn v4_and_v6_in_one_drop_in() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let (_backends, first, second) = lab.gitweb_and_work_on_1234();
    let port = v6_port();
    m.write_user_unit(
        "qrexec-connect-tcp@1234.socket.d/work.conf",
        &format!(
            "[Socket]\nListenStream={second}:1234\nListenStream=[::1]:{port}\n\
             FileDescriptorName=work\n"
        ),
    );
    lab.reload();
    m.systemctl_ok(&["start", "qrexec-connect-tcp@1234.socket"]);
    let v6 = SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
    lab.assert_routed(v6, "work");
    lab.assert_routed(socket_addr(first, 1234), "gitweb");
    lab.assert_routed(socket_addr(second, 1234), "work");
    let log = lab.log("qrexec-connect-tcp@1234.service");
    let line = format!("[::1]:{port} -> work qubes.ConnectTCP+1234 (drop-in work.conf)");
    assert!(log.contains(&line), "{line:?} missing:\n{log}");
}

/// A drop-in in /etc/systemd/user (here a directory bind-mounted there in
/// the manager's namespace) is masked by one of the same name in
/// ~/.config, as systemd masks it; one of another name there applies.
#[test]
fn a_drop_in_in_etc_masked_by_one_in_the_home() {
    let etc = |stage: &Path| stage.join("etc-systemd-user");
    let Some(lab) = Lab::start_with(|stage, setup| {
        fs::create_dir_all(etc(stage)).unwrap();
        setup.bind(etc(stage), "/etc/systemd/user")
    }) else {
        return;
    };
    let m = &lab.manager;
    let (_backends, first, second) = lab.gitweb_and_work_on_1234();
    let _personal = lab.backend("personal");
    lab.policy(&format!(
        "{}qubes.ConnectTCP +1234 {CLIENT} personal allow\n",
        fs::read_to_string(Path::new(REPO).join("policy-examples/30-qrexec-connect-tcp.policy"))
            .unwrap()
    ));
    let third = loopback();
    lab.listen("qrexec-connect-tcp@1234", "work", second, 1234);
    let dir = etc(lab.stage.path()).join("qrexec-connect-tcp@1234.socket.d");
    fs::create_dir_all(&dir).unwrap();
    // Masked: were it read, `second` would be declared twice, or go to vault.
    fs::write(
        dir.join("work.conf"),
        format!("[Socket]\nListenStream={second}:1234\nFileDescriptorName=vault\n"),
    )
    .unwrap();
    fs::write(
        dir.join("personal.conf"),
        format!("[Socket]\nListenStream={third}:1234\nFileDescriptorName=personal\n"),
    )
    .unwrap();
    lab.reload();
    let unit = "qrexec-connect-tcp@1234.socket";
    let applied = m.property(unit, "DropInPaths");
    assert!(
        applied.contains("/etc/systemd/user/qrexec-connect-tcp@1234.socket.d/personal.conf")
            && !applied.contains("/etc/systemd/user/qrexec-connect-tcp@1234.socket.d/work.conf"),
        "{applied}"
    );
    m.systemctl_ok(&["start", unit]);
    lab.assert_routed(socket_addr(second, 1234), "work");
    lab.assert_routed(socket_addr(third, 1234), "personal");
    lab.assert_routed(socket_addr(first, 1234), "gitweb");
    let log = lab.log("qrexec-connect-tcp@1234.service");
    assert!(
        log.contains(&format!(
            "{third}:1234 -> personal qubes.ConnectTCP+1234 (drop-in personal.conf)"
        )) && log.contains(&format!(
            "{second}:1234 -> work qubes.ConnectTCP+1234 (drop-in work.conf)"
        )),
        "{log}"
    );
}

/// A drop-in with a Listen line and no FileDescriptorName beside one that
/// names its qube: which qube the first address is for, the files do not
/// say. The service refuses to start (status 2) with one line naming the
/// socket unit and the files, and nothing is called.
#[test]
fn an_unnamed_drop_in_beside_a_named_one_is_refused() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let (_gitweb, first) = lab.gitweb_on_1234();
    let second = loopback();
    m.write_user_unit(
        "qrexec-connect-tcp@1234.socket.d/extra.conf",
        &format!("[Socket]\nListenStream={second}:1234\n"),
    );
    lab.reload();
    let unit = "qrexec-connect-tcp@1234.socket";
    let service = "qrexec-connect-tcp@1234.service";
    m.systemctl_ok(&["start", unit]);
    // Both sockets carry the unit's one name, gitweb.
    assert_eq!(m.property(unit, "FileDescriptorName"), "gitweb");
    lab::assert_fails_to_start(m, socket_addr(second, 1234), service);
    let status = String::from_utf8_lossy(&m.systemctl(&["status", service]).stdout).into_owned();
    assert!(status.contains("(code=exited, status=2)"), "{status}");
    let reason = "qrexec-connect-tcp@1234.socket: extra.conf declares sockets without a \
                  FileDescriptorName of its own while other files name theirs \
                  (extra.conf, gitweb.conf)";
    // In the unit's journal, as in bad_file_descriptor_name_fails_with_the_reason.
    let journal = m.run(&[], &["journalctl", "--user", "-u", service, "--no-pager"]);
    let journal = String::from_utf8_lossy(&journal.stdout);
    assert!(
        journal.contains(reason),
        "journal lacks {reason:?}:\n{journal}"
    );
    assert!(
        !journal.contains(" -> "),
        "no listener was set up:\n{journal}"
    );
    assert!(lab.world.calls().is_empty(), "nothing is called");
    let _ = first;
}

/// Two drop-ins of one instance, and a service that cannot see the home
/// where they are (here the lab's view of it taken away again, as
/// ProtectHome=tmpfs would hide a real one): it cannot tell the sockets
/// apart, so it refuses to start rather than send both to the last name.
#[test]
fn drop_ins_hidden_from_the_service_are_refused() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let (_backends, first, second) = lab.gitweb_and_work_on_1234();
    lab.listen("qrexec-connect-tcp@1234", "work", second, 1234);
    m.write_user_unit(
        "qrexec-connect-tcp@1234.service.d/zz-hide.conf",
        "[Service]\nBindReadOnlyPaths=\n",
    );
    lab.reload();
    let service = "qrexec-connect-tcp@1234.service";
    m.systemctl_ok(&["start", "qrexec-connect-tcp@1234.socket"]);
    lab::assert_fails_to_start(m, socket_addr(first, 1234), service);
    let reason = format!(
        "qrexec-connect-tcp@1234.socket: sockets arrived under one name and their drop-ins \
         cannot be read: the home {} is hidden from the service (ProtectHome=?)",
        m.home().display()
    );
    let log = lab.log(service);
    assert!(log.contains(&reason), "{reason:?} missing:\n{log}");
    assert!(lab.world.calls().is_empty(), "nothing is called");
}

/// The drop-ins are read only when systemd passed two sockets under one
/// name: with names of their own (the second-socket-unit form) the service
/// opens no drop-in directory, which its trace shows (strace, with the
/// confinement's system call filter lifted for it); with the seed's two
/// drop-ins, it does.
#[test]
fn drop_ins_are_read_only_for_sockets_that_share_a_name() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let (_backends, first, second) = lab.gitweb_and_work_on_1234();
    let trace = m.runtime_dir().join("qrexec-connect/trace");
    m.write_user_unit(
        "qrexec-connect-tcp@1234.service.d/trace.conf",
        &format!(
            "[Service]\nSystemCallFilter=\nNotifyAccess=all\nExecStart=\n\
             ExecStart=strace -D -qq -e trace=%%file,accept4 -o {} \
             /usr/local/bin/qrexec-connect-tcp %i\n",
            trace.display()
        ),
    );
    m.write_user_unit(
        "work-1234.socket",
        &format!(
            "[Socket]\nListenStream={second}:1234\nFileDescriptorName=work\n\
             Service=qrexec-connect-tcp@1234.service\n"
        ),
    );
    lab.reload();
    let (unit, service) = (
        "qrexec-connect-tcp@1234.socket",
        "qrexec-connect-tcp@1234.service",
    );
    m.systemctl_ok(&["start", unit, "work-1234.socket"]);
    let traced = |what: &str| {
        let mut text = String::new();
        m.wait_until(what, WAIT, || {
            text = fs::read_to_string(m.outside(&trace)).unwrap_or_default();
            text.contains("accept4(")
        });
        text
    };
    lab.assert_routed(socket_addr(second, 1234), "work");
    lab.assert_routed(socket_addr(first, 1234), "gitweb");
    let text = traced("the daemon with distinct names accepts");
    assert!(text.contains("/proc/self/cgroup"), "{text}");
    assert!(!text.contains(".socket.d"), "{text}");

    m.systemctl_ok(&["stop", unit, service, "work-1234.socket"]);
    fs::remove_file(m.outside(&trace)).unwrap();
    lab.listen("qrexec-connect-tcp@1234", "work", second, 1234);
    lab.reload();
    m.systemctl_ok(&["start", unit]);
    lab.assert_routed(socket_addr(second, 1234), "work");
    let text = traced("the daemon with shared names accepts");
    assert!(
        text.contains("/qrexec-connect-tcp@1234.socket.d"),
        "the drop-ins are read: {text}"
    );
}

/// Seed 001's one-service form: any `qrexec-connect-NAME.socket` whose
/// FileDescriptorName is `TARGET SERVICE+ARG` goes to the one
/// qrexec-connect.service, with no other line; side by side, a templated
/// socket (which the prefix drop-in also matches) keeps its own service.
#[test]
fn seed_001_one_service_beside_a_template() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let (_gitweb, _work) = (lab.backend("gitweb"), lab.backend("work"));
    lab.policy_examples(&[
        "30-qrexec-connect-default.policy",
        "30-qrexec-connect-tcp.policy",
    ]);
    let (a, b, c) = (loopback(), loopback(), loopback());
    m.write_user_unit(
        "qrexec-connect-gitweb.socket",
        &format!(
            "[Socket]\n\
             # Arbitrary IP address port on the service qube:\n\
             ListenStream={a}:1234\n\
             # Arguments you would use with qrexec-client-vm:\n\
             FileDescriptorName=@default qubes.ConnectTCP+1234\n\n\
             # Each user-generated socket unit needs its own Install section.\n\
             [Install]\n\
             WantedBy=sockets.target\n"
        ),
    );
    m.write_user_unit(
        "qrexec-connect-gitweb-work.socket",
        &format!(
            "[Socket]\nListenStream={b}:2345\nFileDescriptorName=work qubes.ConnectTCP+1234\n\n\
             [Install]\nWantedBy=sockets.target\n"
        ),
    );
    lab.listen("qrexec-connect-tcp@1234", "work", c, 1234);
    lab.reload();
    m.systemctl_ok(&["enable", "--now", "qrexec-connect-gitweb.socket"]);
    m.systemctl_ok(&["start", "qrexec-connect-tcp@1234.socket"]);
    let one = "qrexec-connect.service";
    // The README's order: the second socket unit comes while the one
    // service runs, which it must stop first.
    assert_reaches(socket_addr(a, 1234), "gitweb");
    assert_eq!(m.is_active(one), "active");
    m.systemctl_ok(&["stop", one]);
    m.systemctl_ok(&["enable", "--now", "qrexec-connect-gitweb-work.socket"]);

    let templated = "qrexec-connect-tcp@1234.service";
    assert_eq!(m.property("qrexec-connect-gitweb.socket", "Triggers"), one);
    assert_eq!(
        m.property("qrexec-connect-gitweb-work.socket", "Triggers"),
        one
    );
    assert_eq!(
        m.property("qrexec-connect-tcp@1234.socket", "Triggers"),
        templated
    );
    // The template's service.conf masks the prefix one.
    let drop_ins = m.property("qrexec-connect-tcp@1234.socket", "DropInPaths");
    assert!(!drop_ins.contains("qrexec-connect-.socket.d"), "{drop_ins}");
    assert!(
        drop_ins.contains("qrexec-connect-tcp@.socket.d/service.conf"),
        "{drop_ins}"
    );

    assert_reaches(socket_addr(a, 1234), "gitweb");
    let pid = m.property(one, "MainPID");
    assert_reaches(socket_addr(b, 2345), "work");
    assert_reaches(socket_addr(c, 1234), "work");
    assert_eq!(
        m.property(one, "MainPID"),
        pid,
        "one service serves both sockets"
    );
    assert_eq!(m.is_active(templated), "active");

    let log = lab.log(one);
    assert!(
        log.contains(&format!("{a}:1234 -> @default qubes.ConnectTCP+1234")),
        "{log}"
    );
    assert!(
        log.contains(&format!("{b}:2345 -> work qubes.ConnectTCP+1234")),
        "{log}"
    );
    assert!(!log.contains(&format!("{c}:1234")), "{log}");
    let log = lab.log(templated);
    assert!(
        log.contains(&format!("{c}:1234 -> work qubes.ConnectTCP+1234")),
        "{log}"
    );
    assert!(!log.contains(&format!("{a}:1234")), "{log}");
}

/// `--exit-idle-time` in a drop-in: the service exits when idle, the socket
/// stays, and connections made while it is stopped start it again and are
/// all served; `qrexec-client-vm -h` is asked at the first start only.
#[test]
fn exit_idle_time_scales_to_zero_and_back() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let (_gitweb, ip) = lab.gitweb_started();
    let service = "qrexec-connect-tcp@1234.service";
    let addr = socket_addr(ip, 1234);
    // The README's order: the drop-in comes while the service runs, which
    // keeps its command line until it is stopped.
    assert_reaches(addr, "gitweb");
    m.write_user_unit(
        "qrexec-connect-tcp@1234.service.d/idle.conf",
        "[Service]\nExecStart=\nExecStart=/usr/local/bin/qrexec-connect-tcp --exit-idle-time 1 %i\n",
    );
    lab.reload();
    assert_eq!(m.is_active(service), "active");
    m.systemctl_ok(&["stop", service]);

    let mut invocations = Vec::new();
    for round in 0..3 {
        // A burst of connections while the service is stopped.
        let clients: Vec<_> = (0..8)
            .map(|_| thread::spawn(move || assert_reaches(addr, "gitweb")))
            .collect();
        for client in clients {
            client.join().unwrap();
        }
        invocations.push(m.property(service, "InvocationID"));
        m.wait_until(
            &format!("round {round}: the service exits idle"),
            WAIT,
            || m.is_active(service) == "inactive",
        );
        assert_eq!(m.property(service, "Result"), "success");
        assert_eq!(m.property(service, "ExecMainStatus"), "0");
        assert_eq!(m.is_active("qrexec-connect-tcp@1234.socket"), "active");
    }
    invocations.dedup();
    assert_eq!(
        invocations.len(),
        3,
        "started again each round: {invocations:?}"
    );
    // `--stdin-socket auto` asked qrexec-client-vm -h at the first start
    // only: the answer waited in the units' runtime directory, which
    // RuntimeDirectoryPreserve= keeps while the service is stopped.
    let probes = lab.world.records();
    let probes = probes.iter().filter(|r| r.args() == ["-h"]).count();
    assert_eq!(probes, 1, "three starts, one -h");
    let dir = m.outside(m.runtime_dir().join("qrexec-connect"));
    let mode = |path: &Path| fs::metadata(path).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir), 0o700);
    let cache = dir.join(stdin_socket::CACHE_FILE);
    assert_eq!(mode(&cache), 0o600);
    let text = fs::read_to_string(&cache).unwrap();
    let program = lab.world.root().join("bin/qrexec-client-vm");
    assert_eq!(
        stdin_socket::parse(&text),
        Some((stdin_socket::Key::of(&program).unwrap(), true)),
        "{text:?}"
    );
}

/// `systemctl --user stop` while a connection is open: the service drains
/// (the connection finishes with all its bytes), exits 0, and nothing is
/// left failed.
#[test]
fn stop_during_traffic_drains() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let (_gitweb, ip) = lab.gitweb_started();
    let service = "qrexec-connect-tcp@1234.service";

    let connection = HalfSent::open(m, socket_addr(ip, 1234), service);
    m.systemctl_ok(&["stop", "--no-block", service]);
    m.wait_until("the service is draining", WAIT, || {
        m.property(service, "ActiveState") == "deactivating"
    });
    // The rest of the traffic, after the stop.
    connection.finish("gitweb");

    m.wait_until("the service has stopped", WAIT, || {
        m.is_active(service) == "inactive"
    });
    assert_eq!(m.property(service, "Result"), "success");
    assert_eq!(m.property(service, "ExecMainStatus"), "0");
    let failed = m.systemctl_ok(&["list-units", "--failed", "--plain", "--no-legend"]);
    assert!(!failed.contains("qrexec-connect"), "{failed}");
    let log = lab.log(service);
    assert!(log.contains("done after"), "{log}");
}

/// Answers every passphrase prompt of gpg-agent (it asks for one to protect
/// a key that ssh-add hands it); nobody is there to type one.
const PINENTRY: &str = r#"#!/bin/sh
echo "OK ready"
while read -r command rest; do
    case $command in
        GETPIN) printf 'D qrc-test-passphrase\nOK\n' ;;
        BYE) echo OK; exit 0 ;;
        *) echo OK ;;
    esac
done
"#;

/// Seed 000's split-SSH: on the service side gpg-agent's ssh socket is linked
/// into `%t/qubes.ConnectUnix/` by a `Symlinks=` drop-in and holds a key
/// added with ssh-add; on the client side `qrexec-connect-unix@gpg-agent-ssh`
/// listens on `%t/qrexec-connect-unix/S.gpg-agent.ssh`, and `ssh-add -l`
/// there lists that key. (One manager plays both qubes.)
#[test]
fn seed_000_split_ssh() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let user = m.user();
    let runtime = m.runtime_dir();

    // Service qube: gpg-agent with a key.
    let pinentry = m.scratch().join("pinentry");
    fs::write(&pinentry, PINENTRY).unwrap();
    fs::set_permissions(&pinentry, fs::Permissions::from_mode(0o755)).unwrap();
    let gnupg = m.home().join(".gnupg");
    m.write_owned(
        &gnupg.join("gpg-agent.conf"),
        &format!("pinentry-program {}\n", pinentry.display()),
    );
    fs::set_permissions(&gnupg, fs::Permissions::from_mode(0o700)).unwrap();
    let key = m.home().join("id_ed25519");
    common::ssh_keygen(&key, "split-ssh-test-key");
    for file in [key.clone(), key.with_extension("pub")] {
        chown(&file, Some(user.uid), Some(user.gid)).unwrap();
    }
    let fingerprint = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(key.with_extension("pub"))
        .output()
        .unwrap();
    let fingerprint = String::from_utf8(fingerprint.stdout).unwrap();
    let fingerprint = fingerprint.split_whitespace().nth(1).unwrap().to_owned();

    // gpg-agent is running, as it usually is by the time one sets this up.
    let agent = format!("{}/gnupg/S.gpg-agent.ssh", runtime.display());
    m.systemctl_ok(&["start", "gpg-agent-ssh.socket"]);
    m.run(&[("SSH_AUTH_SOCK", &agent)], &["ssh-add", "-l"]);
    assert_eq!(m.is_active("gpg-agent.service"), "active");
    m.write_user_unit(
        "gpg-agent-ssh.socket.d/qubes.ConnectUnix.conf",
        "[Socket]\nSymlinks=%t/qubes.ConnectUnix/gpg-agent-ssh\n",
    );
    lab.reload();
    m.systemctl_ok(&["stop", "gpg-agent-ssh.socket", "gpg-agent.service"]);
    m.systemctl_ok(&["start", "gpg-agent-ssh.socket"]);
    let linked = m.outside(runtime.join("qubes.ConnectUnix/gpg-agent-ssh"));
    assert_eq!(fs::read_link(&linked).unwrap(), Path::new(&agent));
    let added = m.run(
        &[("SSH_AUTH_SOCK", &agent)],
        &["ssh-add", key.to_str().unwrap()],
    );
    assert!(added.status.success(), "ssh-add: {added:?}");
    lab.installed_services("vault");
    lab.policy_examples(&["30-qrexec-connect-split-ssh.policy"]);

    // Client qube.
    m.write_user_unit(
        "qrexec-connect-unix@gpg-agent-ssh.socket.d/@default.conf",
        "[Socket]\nListenStream=%t/qrexec-connect-unix/S.gpg-agent.ssh\nFileDescriptorName=@default\n",
    );
    lab.reload();
    m.systemctl_ok(&["start", "qrexec-connect-unix@gpg-agent-ssh.socket"]);
    let client = format!("{}/qrexec-connect-unix/S.gpg-agent.ssh", runtime.display());
    let listed = m.run(&[("SSH_AUTH_SOCK", &client)], &["ssh-add", "-l"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        listed.status.success()
            && text.contains(&fingerprint)
            && text.contains("split-ssh-test-key"),
        "ssh-add -l through {client}: {listed:?}\n{}",
        lab.log("qrexec-connect-unix@gpg-agent-ssh.service")
    );
    let log = lab.log("qrexec-connect-unix@gpg-agent-ssh.service");
    assert!(
        log.contains(&format!(
            "{client} -> @default qubes.ConnectUnix+gpg-agent-ssh"
        )),
        "{log}"
    );
}

/// NFS with a bind address per client, as policy-examples/ allows it:
/// `qrexec-connect-tcp-bind@PORT-127.0.1.1` reaches the server's port from
/// 127.0.1.1, which its exports tell apart; the address policy-examples/
/// gives to another client is refused. (The server listens on a port of its
/// own rather than 2049, which other tests on this machine may hold; so
/// qubes.ConnectNFS, fixed to 2049, is left to the service applets' tests.)
#[test]
fn nfs_with_a_bind_address_per_client() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let nfs = Backend::peer_reporter("127.0.0.1:0");
    let port = nfs.addr.port();
    lab.installed_services("nfs-server");
    let example = Path::new(REPO).join("policy-examples/30-qrexec-connect-nfs.policy");
    let policy = fs::read_to_string(example).unwrap();
    assert!(
        policy.contains("qubes.ConnectTCPBind  +2049-127.0.1.1  dev"),
        "{policy}"
    );
    lab.policy(&policy.replace("+2049-", &format!("+{port}-")));
    let (a, c) = (loopback(), loopback());
    // The README's two commands, for the bind address `from`.
    let enable = |from: &str, ip: Ipv4Addr| {
        let unit = format!("qrexec-connect-tcp-bind@{port}-{from}");
        lab.listen(&unit, "nfs-server", ip, 2049);
        lab.reload();
        m.systemctl_ok(&["enable", "--now", &format!("{unit}.socket")]);
    };
    enable("127.0.1.1", a);
    assert_eq!(exchange(socket_addr(a, 2049), b""), b"127.0.1.1");
    // Another instance, while the first serves.
    enable("127.0.1.2", c);
    assert_eq!(exchange(socket_addr(a, 2049), b""), b"127.0.1.1");
    assert_eq!(exchange(socket_addr(c, 2049), b""), b"");
    let refused = format!("qrexec-connect-tcp-bind@{port}-127.0.1.2.service");
    m.wait_until("the refusal is logged", WAIT, || {
        lab.log(&refused).contains("refused by policy")
    });
    drop(nfs);
}

/// A socket unit without FileDescriptorName= passes its own name, and the
/// service named like it takes that for systemd's default (@default), read
/// from its own cgroup: `gitweb.socket` would also be a valid qube name. A
/// second socket of another name sent to the same service (`Service=`)
/// without a name of its own is systemd's default too: the service asks its
/// manager which socket units trigger it (issue 15, item 6).
#[test]
fn own_socket_units_default_name_is_default() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let gitweb = Backend::start("gitweb");
    lab.tcp_service("gitweb", "qubes.ConnectTCP+1234", gitweb.addr);
    lab.policy(&format!(
        "qubes.ConnectTCP +1234 {CLIENT} @default allow target=gitweb\n"
    ));
    let (a, b) = (loopback(), loopback());
    m.write_user_unit(
        "gitweb.socket",
        &format!("[Socket]\nListenStream={a}:1234\n"),
    );
    m.write_user_unit(
        "other.socket",
        &format!("[Socket]\nListenStream={b}:1234\nService=gitweb.service\n"),
    );
    m.write_user_unit(
        "gitweb.service",
        "[Service]\nType=notify\nExecStart=/usr/local/bin/qrexec-connect-tcp 1234\n",
    );
    lab.reload();
    m.systemctl_ok(&["start", "gitweb.socket", "other.socket"]);
    assert_reaches(socket_addr(a, 1234), "gitweb");
    let log = lab.log("gitweb.service");
    assert!(
        log.contains(&format!("{a}:1234 -> @default qubes.ConnectTCP+1234")),
        "{log}"
    );
    assert_reaches(socket_addr(b, 1234), "gitweb");
    let log = lab.log("gitweb.service");
    assert!(
        log.contains(&format!("{b}:1234 -> @default qubes.ConnectTCP+1234"))
            && !log.contains("calls the qube"),
        "{log}"
    );
}

/// The one-service form without FileDescriptorName=: `work-1234.socket`
/// (`Service=qrexec-connect.service`) passes its own name, a valid qube
/// name, which the service recognises exactly as systemd's default, since
/// its manager says that socket unit triggers it: @default, with the call
/// of `--service`. A socket unit that sets `FileDescriptorName=my.socket`
/// calls the qube `my.socket` (issue 15, item 6).
#[test]
fn other_socket_units_default_name_is_default_exactly() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let (_gitweb, _my) = (lab.backend("gitweb"), lab.backend("my.socket"));
    lab.policy(&format!(
        "qubes.ConnectTCP +1234 {CLIENT} @default allow target=gitweb\n\
         qubes.ConnectTCP +1234 {CLIENT} my.socket allow\n"
    ));
    let (a, b) = (loopback(), loopback());
    let one = "qrexec-connect.service";
    m.write_user_unit(
        "qrexec-connect.service.d/call.conf",
        "[Service]\nExecStart=\n\
         ExecStart=/usr/local/bin/qrexec-connect --service qubes.ConnectTCP --argument 1234\n",
    );
    m.write_user_unit(
        "work-1234.socket",
        &format!("[Socket]\nListenStream={a}:1234\nService={one}\n"),
    );
    m.write_user_unit(
        "named-1234.socket",
        &format!("[Socket]\nListenStream={b}:1234\nFileDescriptorName=my.socket\nService={one}\n"),
    );
    lab.reload();
    m.systemctl_ok(&["start", "work-1234.socket", "named-1234.socket"]);
    let triggers = m.property(one, "TriggeredBy");
    assert!(
        triggers.contains("work-1234.socket") && triggers.contains("named-1234.socket"),
        "{triggers}"
    );
    assert_eq!(
        m.property("work-1234.socket", "FileDescriptorName"),
        "work-1234.socket"
    );
    assert_reaches(socket_addr(a, 1234), "gitweb");
    assert_reaches(socket_addr(b, 1234), "my.socket");
    let log = lab.log(one);
    assert!(
        log.contains(&format!("{a}:1234 -> @default qubes.ConnectTCP+1234"))
            && log.contains(&format!("{b}:1234 -> my.socket qubes.ConnectTCP+1234")),
        "{log}"
    );
}

/// When the manager cannot say which socket units trigger the service
/// (here: no systemctl on its PATH), a name that may be a socket unit's
/// default or a qube's is never guessed: the service refuses to start,
/// with one line naming the socket and telling to set FileDescriptorName=.
#[test]
fn unknown_default_name_refuses_to_start() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    let ip = loopback();
    let one = "qrexec-connect.service";
    m.write_user_unit(
        "qrexec-connect.service.d/call.conf",
        "[Service]\nEnvironment=PATH=/nonexistent\nExecStart=\n\
         ExecStart=/usr/local/bin/qrexec-connect --service qubes.ConnectTCP --argument 1234\n",
    );
    m.write_user_unit(
        "work-1234.socket",
        &format!("[Socket]\nListenStream={ip}:1234\nService={one}\n"),
    );
    lab.reload();
    m.systemctl_ok(&["start", "work-1234.socket"]);
    lab::assert_fails_to_start(m, socket_addr(ip, 1234), one);
    let reason = format!(
        "socket {ip}:1234 is named \"work-1234.socket\", which is systemd's default name \
         if the socket unit of that name passed it, else a qube's; asking which socket units \
         trigger {one} failed (cannot run systemctl: "
    );
    let log = lab.log(one);
    assert!(log.contains(&reason), "no {reason:?} in:\n{log}");
    assert!(
        log.contains("): set FileDescriptorName= in the socket unit (a qube, or @default)"),
        "{log}"
    );
}
