//! `qrexec-connect add/list/remove/policy` under a real `systemd --user`
//! manager (tests/common/user_manager.rs), with the units as `make install`
//! installs them and the qrexec stand-in in place of Qubes, as in
//! tests/systemd.rs.
//!
//! The user's unit directory is `$XDG_CONFIG_HOME/systemd/user` in a
//! directory that outlives one manager, so that a reboot is a new manager
//! (a fresh /run, nothing started) reading the same files. The client qube is
//! called `dev`; this is not a qube (no `qubesdb-read`), so the policy lines
//! carry the placeholder source, which the test replaces with `dev`.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::chown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;

use common::lab::{
    self, Backend, CLIENT, HalfSent, assert_no_answer, assert_reaches, assert_routed, unix_backend,
};
use common::user_manager::UserManager;
use common::{DEADLINE as WAIT, TempDir, World, make_install};

const MARKER: &str = "# written by qrexec-connect add; qrexec-connect remove deletes it";
/// What `policy` writes where `qubesdb-read /name` is missing.
const PLACEHOLDER: &str = "<this-qube>";

/// A loopback address no other test of this process uses.
fn loopback() -> Ipv4Addr {
    lab::loopback_from(101)
}

/// A manager with qrexec-connect installed, the stand-in's world, and the
/// user's unit files in `config`, which survive the manager.
struct Lab {
    manager: UserManager,
    world: World,
    stage: TempDir,
    config: TempDir,
}

impl Lab {
    fn start() -> Option<Lab> {
        let stage = TempDir::new("stage");
        make_install(stage.path());
        let world = World::new();
        world.policy("");
        let config = TempDir::new("config");
        let manager = Self::manager(&stage, &world, &config)?;
        let user = manager.user();
        chown(config.path(), Some(user.uid), Some(user.gid)).unwrap();
        Some(Lab {
            manager,
            world,
            stage,
            config,
        })
    }

    fn manager(stage: &TempDir, world: &World, config: &TempDir) -> Option<UserManager> {
        let setup = lab::installed_setup(world, stage.path()).env("XDG_CONFIG_HOME", config.path());
        let manager = lab::start(setup, world)?;
        lab::show_to_services(&manager, &[manager.home(), config.path()]);
        // Written after the manager started: loaded by this reload (a real
        // home needs neither).
        let reload = manager.systemctl(&["daemon-reload"]);
        assert!(reload.status.success(), "daemon-reload: {reload:?}");
        Some(manager)
    }

    /// Stops the manager (its units with it) and starts a new one on the
    /// same files, as at the next boot.
    fn reboot(self) -> Lab {
        let Lab {
            manager,
            world,
            stage,
            config,
        } = self;
        drop(manager);
        let manager = Self::manager(&stage, &world, &config).expect("the manager starts again");
        Lab {
            manager,
            world,
            stage,
            config,
        }
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("XDG_CONFIG_HOME", self.config.path().to_str().unwrap())]
    }

    /// `qrexec-connect ARGS` as the user.
    fn qc(&self, args: &[&str]) -> Output {
        let mut argv = vec!["qrexec-connect"];
        argv.extend_from_slice(args);
        self.manager.run(&self.env(), &argv)
    }

    /// `qrexec-connect ARGS`, which must succeed; its stdout.
    fn qc_ok(&self, args: &[&str]) -> String {
        let out = self.qc(args);
        assert!(
            out.status.success(),
            "qrexec-connect {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// `systemctl --user ARGS` with the user's unit directory.
    fn systemctl(&self, args: &[&str]) -> String {
        let mut argv = vec!["systemctl", "--user", "--no-pager"];
        argv.extend_from_slice(args);
        let out = self.manager.run(&self.env(), &argv);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn units(&self) -> PathBuf {
        self.config.path().join("systemd/user")
    }

    /// A file the user wrote by hand, under the unit directory.
    fn write_by_hand(&self, relative: &str, text: &str) -> PathBuf {
        let user = self.manager.user();
        let path = self.units().join(relative);
        let mut dir = path.parent().unwrap().to_owned();
        let mut missing = Vec::new();
        while !dir.exists() {
            missing.push(dir.clone());
            dir = dir.parent().unwrap().to_owned();
        }
        for d in missing.iter().rev() {
            fs::create_dir(d).unwrap();
            chown(d, Some(user.uid), Some(user.gid)).unwrap();
        }
        fs::write(&path, text).unwrap();
        chown(&path, Some(user.uid), Some(user.gid)).unwrap();
        path
    }

    /// In `qube`, `SERVICE+ARG` connects to a TCP port, as Qubes'
    /// qubes.ConnectTCP symlink to /dev/tcp does.
    fn tcp_service(&self, qube: &str, call: &str, to: SocketAddr) {
        lab::tcp_service(&self.world, qube, call, to);
    }

    /// In `qube`, the service links `make install-service` installed
    /// (qubes.ConnectUnix, qubes.ConnectTCPBind, ...: our service applets).
    fn installed_services(&self, qube: &str) {
        lab::installed_services(&self.world, self.stage.path(), qube);
    }

    /// Every file under the unit directory, with its content.
    fn snapshot(&self) -> Vec<(PathBuf, String)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
            for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() && !path.is_symlink() {
                    walk(&path, out);
                } else {
                    out.push((path.clone(), fs::read_to_string(&path).unwrap_or_default()));
                }
            }
        }
        let mut out = Vec::new();
        walk(self.config.path(), &mut out);
        out.sort();
        out
    }

    /// How often the manager has reloaded its units so far.
    fn reloads(&self) -> usize {
        self.manager.journal(&[]).matches("Reloading").count()
    }
}

/// Asserts that every row of `list` is a row of `systemctl --user
/// list-sockets` (the address and the socket unit, whose service is ours),
/// and that `list` leaves none of those out.
fn assert_list_is_list_sockets(lab: &Lab) {
    let list = lab.qc_ok(&["list"]);
    let mut ours: Vec<(String, String)> = list
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[0].to_owned(), cells[3].to_owned())
        })
        .collect();
    let sockets = lab.systemctl(&["list-sockets", "--all", "--full", "--no-legend"]);
    let mut theirs: Vec<(String, String)> = sockets
        .lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            [listen, unit, service, ..] if service.starts_with("qrexec-connect") => {
                Some((listen.to_owned(), unit.to_owned()))
            }
            _ => None,
        })
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs, "list:\n{list}\nlist-sockets:\n{sockets}");
}

/// Asserts that the counters `list` shows for `service` are those of its
/// STATUS= and of its journal: one end line per connection, with
/// QREXEC_STATUS=0 when served and 126 when refused. The service must have
/// started once only (the journal keeps earlier runs' lines).
fn assert_counters_are_the_journals(lab: &Lab, service: &str) {
    let json = lab.qc_ok(&["list", "--json"]);
    let status = lab.systemctl(&["show", "-P", "StatusText", service]);
    // Every field of every entry, one per line (journalctl -o export).
    let entries = lab
        .manager
        .journal(&["-o", "export", &format!("_SYSTEMD_USER_UNIT={service}")]);
    let ends: Vec<&str> = entries
        .lines()
        .filter_map(|l| l.strip_prefix("QREXEC_STATUS="))
        .collect();
    let count = |status: &str| ends.iter().filter(|s| **s == status).count();
    let (served, refused) = (count("0"), count("126"));
    let (active, failed) = (0, ends.len() - served - refused);
    assert_eq!(
        status,
        format!("{active} active, {served} served, {refused} refused, {failed} failed"),
        "StatusText against the journal's end lines"
    );
    let counters = format!(
        "\"counters\":{{\"active\":{active},\"served\":{served},\"refused\":{refused},\"failed\":{failed}}}"
    );
    let rows: Vec<&str> = json
        .split("},{")
        .filter(|r| r.contains(&format!("\"service\":\"{service}\"")))
        .collect();
    assert!(!rows.is_empty(), "{json}");
    for row in rows {
        assert!(row.contains(&counters), "{counters} in {row}");
    }
}

fn assert_refused(addr: SocketAddr) {
    let e = TcpStream::connect_timeout(&addr, WAIT).expect_err("nothing listens");
    assert_eq!(
        e.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{addr}: {e}"
    );
}

/// The policy lines (not comments) of `policy` output, for `dev`.
fn policy_lines(text: &str) -> Vec<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.replace(PLACEHOLDER, CLIENT))
        .collect()
}

/// The whitespace-separated cells of the `list` row for `listen`.
fn list_row(list: &str, listen: &str) -> Vec<String> {
    let line = list
        .lines()
        .find(|l| l.split_whitespace().next() == Some(listen))
        .unwrap_or_else(|| panic!("no row for {listen} in:\n{list}"));
    line.split_whitespace().map(str::to_owned).collect()
}

/// The README's quick path: add, the policy line in dom0, connect, list
/// with the counters, then remove, beside a forward written by hand that
/// remove refuses to touch.
#[test]
fn add_connect_list_policy_remove() {
    let Some(lab) = Lab::start() else { return };
    let work = Backend::start("work");
    lab.tcp_service("work", "qubes.ConnectTCP+22", work.addr);
    let ip = loopback();
    let listen = SocketAddr::from((ip, 2222));

    let out = lab.qc_ok(&["add", "tcp", &format!("{ip}:2222:work:22")]);
    let dropin = lab.units().join("qrexec-connect-tcp@22.socket.d/work.conf");
    assert!(
        out.contains(&format!("wrote {}", dropin.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!("{listen} -> work qubes.ConnectTCP+22")),
        "{out}"
    );
    assert!(
        out.contains("qubes.ConnectTCP  +22  <this-qube>  work  allow"),
        "{out}"
    );
    assert_eq!(
        fs::read_to_string(&dropin).unwrap(),
        format!("{MARKER}\n[Socket]\nListenStream={listen}\nFileDescriptorName=work\n")
    );
    assert_eq!(
        lab.systemctl(&["is-active", "qrexec-connect-tcp@22.socket"]),
        "active"
    );
    assert_eq!(
        lab.systemctl(&["is-enabled", "qrexec-connect-tcp@22.socket"]),
        "enabled"
    );

    // Refused until dom0 has the line `policy` prints, which is all it needs.
    assert_no_answer(listen);
    let policy = lab.qc_ok(&["policy"]);
    let lines = policy_lines(&policy);
    assert_eq!(
        lines,
        ["qubes.ConnectTCP  +22  dev  work  allow"],
        "{policy}"
    );
    lab.world.policy(&lines.join("\n"));
    assert_reaches(listen, "work");
    let calls = lab.world.finished_calls(2);
    let mut statuses: Vec<String> = calls.iter().filter_map(|c| c.status()).collect();
    statuses.sort();
    assert_eq!(statuses, ["exit 0", "exit 126"]);
    for call in &calls {
        assert_eq!(call.target_raw().as_deref(), Some("work"));
        assert_eq!(call.call_raw().as_deref(), Some("qubes.ConnectTCP+22"));
    }

    let m = &lab.manager;
    m.wait_until("the daemon reports both connections", WAIT, || {
        list_row(&lab.qc_ok(&["list"]), &listen.to_string())[5..] == ["0", "1", "1", "0"]
    });
    assert_counters_are_the_journals(&lab, "qrexec-connect-tcp@22.service");
    assert_list_is_list_sockets(&lab);
    let list = lab.qc_ok(&["list"]);
    let row = list_row(&list, &listen.to_string());
    assert_eq!(
        row,
        [
            &listen.to_string(),
            "work",
            "qubes.ConnectTCP+22",
            "qrexec-connect-tcp@22.socket",
            "serving",
            "0",
            "1",
            "1",
            "0"
        ],
        "{list}"
    );
    let sockets = lab.systemctl(&["list-sockets", "--all", "--full"]);
    assert!(
        sockets
            .lines()
            .any(|l| l.contains(&listen.to_string()) && l.contains("qrexec-connect-tcp@22.socket")),
        "list-sockets disagrees with list:\n{sockets}"
    );
    let json = lab.qc_ok(&["list", "--json"]);
    assert!(
        json.contains(&format!(
            "{{\"listen\":\"{listen}\",\"qube\":\"work\",\"call\":\"qubes.ConnectTCP+22\",\
             \"socket\":\"qrexec-connect-tcp@22.socket\",\"service\":\"qrexec-connect-tcp@22.service\",\
             \"state\":\"serving\",\"counters\":{{\"active\":0,\"served\":1,\"refused\":1,\"failed\":0}},\
             \"file\":\"{}\"}}",
            dropin.display()
        )),
        "{json}"
    );

    // A forward written by hand: listed, and remove will not delete it.
    let by_hand = SocketAddr::from((ip, 2323));
    let hand = lab.write_by_hand(
        "qrexec-connect-tcp@23.socket.d/gitweb.conf",
        &format!("[Socket]\nListenStream={by_hand}\nFileDescriptorName=gitweb\n"),
    );
    lab.systemctl(&["daemon-reload"]);
    lab.systemctl(&["enable", "--now", "qrexec-connect-tcp@23.socket"]);
    assert_list_is_list_sockets(&lab);
    // The line for work's port 22 allows nothing else: not gitweb's 23.
    assert_no_answer(by_hand);
    assert_eq!(
        lab.world
            .finished_calls(3)
            .iter()
            .filter(|c| c.status().as_deref() == Some("exit 126"))
            .filter(|c| c.target_raw().as_deref() == Some("gitweb"))
            .count(),
        1
    );
    let list = lab.qc_ok(&["list"]);
    assert_eq!(
        list_row(&list, &by_hand.to_string())[1..5],
        [
            "gitweb",
            "qubes.ConnectTCP+23",
            "qrexec-connect-tcp@23.socket",
            "serving"
        ]
    );
    assert_eq!(
        policy_lines(&lab.qc_ok(&["policy"])),
        [
            "qubes.ConnectTCP  +22  dev  work  allow",
            "qubes.ConnectTCP  +23  dev  gitweb  allow"
        ]
    );
    let out = lab.qc(&["remove", &by_hand.to_string()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&hand.display().to_string())
            && stderr.contains("not written by qrexec-connect add"),
        "{stderr}"
    );
    assert!(hand.exists());

    let out = lab.qc_ok(&["remove", &listen.to_string()]);
    assert!(
        out.contains(&format!("deleted {}", dropin.display())),
        "{out}"
    );
    assert!(!dropin.exists() && !dropin.parent().unwrap().exists());
    assert_refused(listen);
    assert_ne!(
        lab.systemctl(&["is-enabled", "qrexec-connect-tcp@22.socket"]),
        "enabled"
    );
    assert_eq!(
        lab.systemctl(&["is-active", "qrexec-connect-tcp@22.service"]),
        "inactive"
    );
    let list = lab.qc_ok(&["list"]);
    assert!(!list.contains(&listen.to_string()), "{list}");
    assert_list_is_list_sockets(&lab);
    // The hand-written one is untouched and still listens.
    assert_eq!(
        fs::read_to_string(&hand).unwrap(),
        format!("[Socket]\nListenStream={by_hand}\nFileDescriptorName=gitweb\n")
    );
    TcpStream::connect_timeout(&by_hand, WAIT).expect("the hand-written forward still listens");
}

/// Adding while the forwards serve, in the order a user goes: the first
/// forward serves a connection, then a second qube on the same port (a
/// second drop-in in the same instance directory) is added while a
/// connection is open: that connection finishes with all its bytes (the
/// service drains it), and each address then reaches its own qube. Then a
/// second one-service socket while qrexec-connect.service runs, a reboot
/// (every forward comes back by itself), and the removal of one of the two
/// drop-ins while its service runs.
#[test]
fn add_while_serving_and_after_a_reboot() {
    let Some(lab) = Lab::start() else { return };
    let (work, other) = (Backend::start("work"), Backend::start("other"));
    lab.tcp_service("work", "qubes.ConnectTCP+22", work.addr);
    lab.tcp_service("other", "qubes.ConnectTCP+22", other.addr);
    lab.tcp_service("work", "qubes.ConnectTCP+23", work.addr);
    lab.world.policy(
        "qubes.ConnectTCP  +22  dev  work  allow\nqubes.ConnectTCP  +22  dev  other  allow\n\
         qubes.ConnectTCP  +23  dev  work  allow\n",
    );
    let (ip, ip2) = (loopback(), loopback());
    let (first, second) = (SocketAddr::from((ip, 2222)), SocketAddr::from((ip2, 2222)));
    let (socket, service) = (
        "qrexec-connect-tcp@22.socket",
        "qrexec-connect-tcp@22.service",
    );
    lab.qc_ok(&["add", "tcp", &format!("{ip}:2222:work:22")]);
    assert_routed(&lab.world, first, "work");
    assert_eq!(lab.systemctl(&["is-active", service]), "active");

    let out = add_during_a_connection(
        &lab,
        first,
        &["add", "tcp", &format!("{ip2}:2222:other:22")],
    );
    assert!(
        out.contains(&format!(
            "restarted {socket} and {service} (its open connections drained first)"
        )),
        "{out}"
    );
    assert!(out.contains(&format!("enabled {socket}")), "{out}");
    assert!(
        lab.units()
            .join("qrexec-connect-tcp@22.socket.d/other.conf")
            .exists()
    );
    let sockets = lab.systemctl(&["list-sockets", "--all", "--full", "--no-legend"]);
    for addr in [first, second] {
        assert!(
            sockets
                .lines()
                .any(|l| l.split_whitespace().collect::<Vec<_>>()
                    == [&addr.to_string(), socket, service]),
            "{addr} not listed:\n{sockets}"
        );
    }
    assert_routed(&lab.world, second, "other");
    assert_routed(&lab.world, first, "work");
    assert_routed(&lab.world, second, "other");
    assert_list_is_list_sockets(&lab);

    // The one-service form, twice, the second while its service runs.
    let call = SocketAddr::from((ip, 8000));
    let out = lab.qc_ok(&[
        "add",
        "call",
        &call.to_string(),
        "work",
        "qubes.ConnectTCP+23",
    ]);
    let unit = lab
        .units()
        .join("qrexec-connect-work-qubes.ConnectTCP-23.socket");
    assert!(out.contains(&format!("wrote {}", unit.display())), "{out}");
    assert_reaches(call, "work");
    assert_eq!(
        lab.systemctl(&["is-active", "qrexec-connect.service"]),
        "active"
    );
    let call2 = SocketAddr::from((ip2, 8000));
    let out = lab.qc_ok(&[
        "add",
        "call",
        &call2.to_string(),
        "work",
        "qubes.ConnectTCP+22",
    ]);
    assert!(
        out.contains(
            "restarted qrexec-connect.service (its open connections drained first) so that \
             qrexec-connect-work-qubes.ConnectTCP-22.socket could start"
        ),
        "{out}"
    );
    assert_reaches(call2, "work");
    assert_reaches(call, "work");

    let lab = lab.reboot();
    for socket in [
        socket,
        "qrexec-connect-work-qubes.ConnectTCP-23.socket",
        "qrexec-connect-work-qubes.ConnectTCP-22.socket",
    ] {
        assert_eq!(
            lab.systemctl(&["is-active", socket]),
            "active",
            "{socket} after the reboot"
        );
    }
    assert_routed(&lab.world, second, "other");
    assert_routed(&lab.world, first, "work");
    assert_reaches(call, "work");
    let list = lab.qc_ok(&["list"]);
    assert_eq!(
        list_row(&list, &call.to_string())[1..5],
        [
            "work",
            "qubes.ConnectTCP+23",
            "qrexec-connect-work-qubes.ConnectTCP-23.socket",
            "serving"
        ]
    );
    // The one service serves both sockets.
    assert_eq!(list_row(&list, &call2.to_string())[4], "serving");
    assert_list_is_list_sockets(&lab);
    let out = lab.qc_ok(&["remove", "qrexec-connect-work-qubes.ConnectTCP-23.socket"]);
    assert!(
        out.contains(
            "stopped qrexec-connect.service (its open connections drained first); \
             it starts again at the next connection to its other sockets"
        ),
        "{out}"
    );
    assert!(!unit.exists());
    assert_refused(call);
    assert_reaches(call2, "work");

    // One of the two drop-ins, while their service runs.
    assert_eq!(lab.systemctl(&["is-active", service]), "active");
    let out = lab.qc_ok(&["remove", &second.to_string()]);
    let other_conf = lab
        .units()
        .join("qrexec-connect-tcp@22.socket.d/other.conf");
    assert!(
        out.contains(&format!("deleted {}", other_conf.display())),
        "{out}"
    );
    assert!(
        out.contains(&format!(
            "restarted {socket} and {service} (its open connections drained first)"
        )),
        "{out}"
    );
    assert!(!other_conf.exists());
    assert!(
        lab.units()
            .join("qrexec-connect-tcp@22.socket.d/work.conf")
            .exists()
    );
    assert_refused(second);
    assert_routed(&lab.world, first, "work");
    assert_eq!(lab.systemctl(&["is-enabled", socket]), "enabled");
}

/// `add unix` and `add tcp-bind` under the real manager, with the qube's
/// service side played by our own service applets (`make install-service`):
/// a Unix socket path reaches the socket qubes.ConnectUnix relays to, and
/// the tcp-bind port reaches the server from the bind address. dom0's
/// policy is what `policy` prints, and nothing more.
#[test]
fn add_unix_and_tcp_bind() {
    let Some(lab) = Lab::start() else { return };
    let m = &lab.manager;
    lab.installed_services("vault");
    lab.installed_services("nfs-server");
    let runtime = m.runtime_dir();
    unix_backend(
        &m.outside(runtime.join("qubes.ConnectUnix/echo")),
        "vault",
        m.user(),
    );
    let nfs = Backend::peer_reporter("127.0.0.1:0");
    let port = nfs.addr.port();

    let out = lab.qc_ok(&[
        "add",
        "unix",
        "%t/qrexec-connect-unix/S.echo",
        "vault",
        "echo",
    ]);
    let dropin = lab
        .units()
        .join("qrexec-connect-unix@echo.socket.d/vault.conf");
    assert!(
        out.contains(&format!("wrote {}", dropin.display())),
        "{out}"
    );
    assert!(
        out.contains("qubes.ConnectUnix  +echo  <this-qube>  vault  allow"),
        "{out}"
    );
    let ip = loopback();
    let nfs_listen = SocketAddr::from((ip, 2049));
    let out = lab.qc_ok(&[
        "add",
        "tcp-bind",
        &format!("{ip}:2049:nfs-server:{port}-127.0.1.1"),
    ]);
    let bind_unit = format!("qrexec-connect-tcp-bind@{port}-127.0.1.1.socket");
    assert!(
        out.contains(&format!(
            "wrote {}",
            lab.units()
                .join(format!("{bind_unit}.d/nfs-server.conf"))
                .display()
        )),
        "{out}"
    );

    let lines = policy_lines(&lab.qc_ok(&["policy"]));
    assert_eq!(
        lines,
        [
            format!("qubes.ConnectTCPBind  +{port}-127.0.1.1  dev  nfs-server  allow"),
            "qubes.ConnectUnix  +echo  dev  vault  allow".to_owned(),
        ]
    );
    lab.world.policy(&lines.join("\n"));

    let client = m.outside(runtime.join("qrexec-connect-unix/S.echo"));
    let mut stream = UnixStream::connect(&client)
        .unwrap_or_else(|e| panic!("connect to {}: {e}", client.display()));
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(b"through the unix forward").unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    assert_eq!(answer, "vault\nthrough the unix forward");

    let mut stream = TcpStream::connect_timeout(&nfs_listen, WAIT).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.shutdown(std::net::Shutdown::Write).unwrap();
    let mut peer = String::new();
    stream.read_to_string(&mut peer).unwrap();
    assert_eq!(peer, "127.0.1.1", "the server sees the bind address");

    let calls = lab.world.finished_calls(2);
    let mut made: Vec<(String, String)> = calls
        .iter()
        .map(|c| (c.target_raw().unwrap(), c.call_raw().unwrap()))
        .collect();
    made.sort();
    assert_eq!(
        made,
        [
            (
                "nfs-server".to_owned(),
                format!("qubes.ConnectTCPBind+{port}-127.0.1.1")
            ),
            ("vault".to_owned(), "qubes.ConnectUnix+echo".to_owned()),
        ]
    );
    let m = &lab.manager;
    let unix_listen = runtime.join("qrexec-connect-unix/S.echo");
    let unix_listen = unix_listen.to_str().unwrap();
    m.wait_until("both daemons report their connection", WAIT, || {
        let list = lab.qc_ok(&["list"]);
        [unix_listen.to_owned(), nfs_listen.to_string()]
            .iter()
            .all(|l| list_row(&list, l)[5..] == ["0", "1", "0", "0"])
    });
    assert_counters_are_the_journals(&lab, "qrexec-connect-unix@echo.service");
    assert_counters_are_the_journals(&lab, &bind_unit.replace(".socket", ".service"));
    assert_list_is_list_sockets(&lab);
    let list = lab.qc_ok(&["list"]);
    let unix_row = list_row(
        &list,
        &runtime
            .join("qrexec-connect-unix/S.echo")
            .display()
            .to_string(),
    );
    assert_eq!(
        unix_row[1..4],
        [
            "vault",
            "qubes.ConnectUnix+echo",
            "qrexec-connect-unix@echo.socket"
        ]
    );
    assert_eq!(list_row(&list, &nfs_listen.to_string())[3], bind_unit);

    lab.qc_ok(&["remove", "%t/qrexec-connect-unix/S.echo"]);
    assert!(!dropin.exists());
    assert!(
        UnixStream::connect(&client).is_err(),
        "the unix forward still listens"
    );
    lab.qc_ok(&["remove", &bind_unit]);
    assert_refused(nfs_listen);
    drop(nfs);
}

/// Runs `qrexec-connect ARGS` (which restarts the service of `addr`) while
/// a connection to `addr` is open, half sent: the connection must finish
/// with all its bytes. Returns what the command printed.
fn add_during_a_connection(lab: &Lab, addr: SocketAddr, args: &[&str]) -> String {
    let m = &lab.manager;
    let service = "qrexec-connect-tcp@22.service";
    let connection = HalfSent::open(m, addr, service);
    let out = thread::scope(|scope| {
        let command = scope.spawn(|| lab.qc(args));
        m.wait_until("the service is draining", WAIT, || {
            m.property(service, "ActiveState") == "deactivating"
        });
        connection.finish("work");
        command.join().unwrap()
    });
    assert!(
        out.status.success(),
        "qrexec-connect {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Bad input: one line on stderr, status 2, nothing written, nothing reloaded.
#[test]
fn bad_input_changes_nothing() {
    let Some(lab) = Lab::start() else { return };
    let ip = loopback();
    lab.qc_ok(&["add", "tcp", &format!("{ip}:2222:work:22")]);
    let busy = TcpListener::bind((ip, 2424)).unwrap();
    lab.manager
        .wait_until("add's reload is in the journal", WAIT, || lab.reloads() > 0);
    let before = lab.snapshot();
    let reloads = lab.reloads();
    let cases: Vec<Vec<String>> = [
        "add tcp 2222:wo/rk:22".to_owned(),
        "add tcp 2222:work:022".to_owned(),
        "add tcp 0:work:22".to_owned(),
        "add tcp 2222:@anyvm:22".to_owned(),
        format!("add tcp {ip}:2222:@dispvm:web-dvm:22"),
        "add tcp-bind 2049:nfs:2049-10.0.0.1".to_owned(),
        "add unix relative/S.ssh vault ssh".to_owned(),
        "add unix /tmp/S.ssh vault a+b".to_owned(),
        "add call 8000 work qubes.X/y".to_owned(),
        "add udp 53:dns".to_owned(),
        "add".to_owned(),
        // Other hosts could reach it: refused without --allow-remote.
        "add tcp 0.0.0.0:2525:work:22".to_owned(),
        "add call [::]:2525 work qubes.ConnectTCP+22".to_owned(),
        // Already configured: the same qube on the same port, and the same
        // address through another port.
        format!("add tcp {ip}:2222:work:22"),
        format!("add tcp {ip}:2222:work:23"),
        // In use by another program.
        format!("add tcp {ip}:2424:work:24"),
        "remove 127.0.0.1:1".to_owned(),
        "list --yaml".to_owned(),
    ]
    .iter()
    .map(|c| c.split(' ').map(str::to_owned).collect())
    .collect();
    for case in &cases {
        let args: Vec<&str> = case.iter().map(String::as_str).collect();
        let out = lab.qc(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{case:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{case:?}: {stderr}");
        assert!(stderr.starts_with("qrexec-connect "), "{case:?}: {stderr}");
        assert!(out.stdout.is_empty(), "{case:?}");
    }
    assert_eq!(lab.snapshot(), before, "a refused command wrote something");
    assert_eq!(
        lab.reloads(),
        reloads,
        "a refused command reloaded the manager"
    );
    drop(busy);
}
