//! Faults around the client daemon, each on its own: what it logs, that the
//! one connection concerned ends cleanly, and that the daemon still serves
//! the next one. Through the real systemd-socket-activate and the qrexec
//! stand-in; the service in qube `work` echoes (`cat`).

mod common;

use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use common::{
    Activate, Daemon, Listen, Program, World, echo_world, socket_world, wait_for, wait_until,
};

const CALL: &str = "qubes.ConnectTCP+1234";

/// `qrexec-connect-tcp 1234` for `work` with NOTIFY_SOCKET, set up further.
fn daemon_with(world: &World, setup: impl FnOnce(Activate) -> Activate) -> Daemon {
    setup(Activate::tcp_to_work(world).notify()).start()
}

/// One request and its echo: the daemon serves.
fn assert_serves(daemon: &Daemon) {
    let reply = daemon.connect(0).exchange(b"still serving\n");
    assert_eq!(reply, b"still serving\n", "{}", daemon.stderr());
}

/// A connection whose qrexec call fails ends with EOF and nothing else.
fn assert_closed_without_data(daemon: &Daemon) {
    let mut conn = daemon.connect(0);
    let _ = conn.write_all(b"hello\n");
    let mut got = Vec::new();
    let _ = conn.read_to_end(&mut got);
    assert!(got.is_empty(), "{got:?}");
}

/// The stand-in's exit statuses, in the order the calls finished.
fn finished_statuses(world: &World, n: usize) -> Vec<String> {
    world
        .finished_calls(n)
        .iter()
        .filter_map(|r| r.status())
        .collect()
}

fn copy_executable(from: &Path, to: &Path, mode: u32) {
    fs::copy(from, to).unwrap();
    fs::set_permissions(to, fs::Permissions::from_mode(mode)).unwrap();
}

#[test]
fn qrexec_client_vm_missing_then_installed() {
    let world = echo_world();
    let dir = common::TempDir::new("faults-missing");
    let path = dir.path().join("qrexec-client-vm");
    let mut daemon = daemon_with(&world, |a| a.env("QREXEC_CLIENT_VM", &path));
    assert_closed_without_data(&daemon);
    let text = daemon.wait_stderr("connection closed");
    assert!(
        text.contains(&format!(
            "-> work {CALL}: cannot run {}: No such file or directory",
            path.display()
        )),
        "{text}"
    );
    assert!(daemon.is_running(), "one failed spawn is not fatal");
    copy_executable(common::standin(), &path, 0o755);
    assert_serves(&daemon);
    assert!(daemon.is_running());
}

#[test]
fn qrexec_client_vm_not_executable_then_fixed() {
    let world = echo_world();
    let dir = common::TempDir::new("faults-noexec");
    let path = dir.path().join("qrexec-client-vm");
    copy_executable(common::standin(), &path, 0o644);
    let daemon = daemon_with(&world, |a| a.env("QREXEC_CLIENT_VM", &path));
    assert_closed_without_data(&daemon);
    let text = daemon.wait_stderr("connection closed");
    assert!(text.contains("Permission denied"), "{text}");
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    assert_serves(&daemon);
}

#[test]
fn refused_by_policy_then_allowed() {
    let world = echo_world();
    world.policy("qubes.ConnectTCP +1234 client work deny\n");
    let daemon = daemon_with(&world, |a| a);
    assert_closed_without_data(&daemon);
    let text = daemon.wait_stderr("refused by policy");
    assert!(
        text.contains(&format!("-> work {CALL}: Request refused")),
        "qrexec-client-vm's stderr line: {text}"
    );
    assert!(text.contains("(status 126)"), "{text}");
    world.policy("qubes.ConnectTCP +1234 client work allow\n");
    assert_serves(&daemon);
    assert_eq!(finished_statuses(&world, 2).len(), 2);
}

#[test]
fn no_such_service_then_installed() {
    let world = World::new();
    world.qube("work");
    world.policy("qubes.ConnectTCP +1234 client work allow\n");
    let daemon = daemon_with(&world, |a| a);
    assert_closed_without_data(&daemon);
    daemon.wait_stderr(&format!(
        "-> work {CALL}: no such service in work (status 127)"
    ));
    world.qube("work").service(CALL, "exec cat");
    assert_serves(&daemon);
}

#[test]
fn qrexec_client_vm_killed_mid_stream() {
    let world = echo_world();
    let mut daemon = daemon_with(&world, |a| a);
    let mut conn = daemon.connect(0);
    conn.write_all(b"first half\n").unwrap();
    let mut half = [0u8; 11];
    conn.read_exact(&mut half).unwrap();
    let child = wait_for("the connection's qrexec-client-vm", || {
        daemon.children().first().copied()
    });
    common::kill(child, libc::SIGKILL).unwrap();
    // The client sees the end of the connection, not a hang.
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    daemon.wait_stderr("qrexec-client-vm was killed by SIGKILL");
    assert!(daemon.is_running());
    assert_serves(&daemon);
}

/// The client resets the connection (RST) in the middle of a call.
#[test]
fn client_resets_mid_stream() {
    let world = echo_world();
    let daemon = daemon_with(&world, |a| a);
    let mut conn = daemon.connect(0);
    conn.write_all(b"some\n").unwrap();
    let mut echo = [0u8; 5];
    conn.read_exact(&mut echo).unwrap();
    conn.reset();
    // Its qrexec call ends and is reaped.
    let statuses = finished_statuses(&world, 1);
    assert_eq!(statuses.len(), 1);
    daemon.wait_stderr(&format!("-> work {CALL}: "));
    wait_until("the call to be reaped", || daemon.children().is_empty());
    assert_serves(&daemon);
}

#[test]
fn sighup_and_sigpipe_are_ignored_and_logged() {
    let world = echo_world();
    let mut daemon = daemon_with(&world, |a| a);
    assert_serves(&daemon);
    daemon.signal(libc::SIGHUP);
    daemon.wait_stderr("received SIGHUP, ignoring");
    daemon.signal(libc::SIGPIPE);
    daemon.wait_stderr("received SIGPIPE, ignoring");
    assert!(daemon.is_running());
    assert_serves(&daemon);
}

/// Starts an echo server on a Unix socket, serving until the test ends.
fn unix_echo(path: &Path) {
    let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut data = Vec::new();
                let _ = s.read_to_end(&mut data);
                let _ = s.write_all(&data);
            });
        }
    });
}

#[test]
fn service_socket_missing_then_started() {
    let dir = common::TempDir::new("faults-sock-missing");
    let socket = dir.path().join("service.sock");
    let world = socket_world(&socket);
    let daemon = daemon_with(&world, |a| a);
    assert_closed_without_data(&daemon);
    daemon.wait_stderr(&format!(
        "-> work {CALL}: the service exists in work but could not be started (status 125)"
    ));
    unix_echo(&socket);
    assert_serves(&daemon);
}

#[test]
fn service_socket_refusing_then_listening() {
    let dir = common::TempDir::new("faults-sock-refusing");
    let socket = dir.path().join("service.sock");
    // A socket file nobody listens on: connecting is refused.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    let world = socket_world(&socket);
    let daemon = daemon_with(&world, |a| a);
    assert_closed_without_data(&daemon);
    let text = daemon.wait_stderr("(status 125)");
    assert!(text.contains("Connection refused"), "{text}");
    fs::remove_file(&socket).unwrap();
    unix_echo(&socket);
    assert_serves(&daemon);
}

#[test]
fn service_closes_early() {
    let dir = common::TempDir::new("faults-sock-early");
    let socket = dir.path().join("service.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let world = socket_world(&socket);
    let daemon = daemon_with(&world, |a| a);
    // The service accepts and hangs up at once, before reading anything.
    let early = std::thread::spawn(move || drop(listener.accept().unwrap()));
    assert_closed_without_data(&daemon);
    early.join().unwrap();
    daemon.wait_stderr(&format!("-> work {CALL}: "));
    let statuses = finished_statuses(&world, 1);
    assert_eq!(statuses.len(), 1);
    fs::remove_file(&socket).unwrap();
    unix_echo(&socket);
    assert_serves(&daemon);
}

/// Writes the process made so far (`syscw` of /proc/PID/io).
fn write_calls(pid: i32) -> u64 {
    fs::read_to_string(format!("/proc/{pid}/io"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("syscw: "))
        .and_then(|n| n.trim().parse().ok())
        .expect("syscw")
}

/// systemd-socket-activate with the daemon behind it, its stderr a pipe the
/// test closes once it listens; the process group is killed on drop.
struct BrokenStderr {
    child: std::process::Child,
}

impl Drop for BrokenStderr {
    fn drop(&mut self) {
        let _ = common::kill(-(self.child.id() as i32), libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// With stderr a broken pipe, logging "received SIGPIPE" raises SIGPIPE
/// again: the daemon must not chase its own signal in a loop.
#[test]
fn broken_stderr_is_not_a_busy_loop() {
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let world = echo_world();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut cmd = std::process::Command::new("systemd-socket-activate");
    cmd.arg(format!("--listen={port}"))
        .arg("--fdname=work")
        .args(world.env().iter().flat_map(|(k, v)| {
            let mut kv = std::ffi::OsString::from(format!("{k}="));
            kv.push(v);
            [std::ffi::OsString::from("-E"), kv]
        }))
        .arg(common::binary())
        .args(["qrexec-connect-tcp", "1234"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().unwrap();
    let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
    let daemon = BrokenStderr { child };
    // systemd-socket-activate writes to stderr until it execs (and would die
    // of SIGPIPE before): a thread reads it until the daemon has logged its
    // listener, then closes the pipe.
    let (lines, seen) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines() {
            let Ok(line) = line else { return };
            let done = line.contains("-> work qubes.ConnectTCP+1234");
            if lines.send(line).is_err() || done {
                return;
            }
        }
    });
    let wait_line = |needle: &str| loop {
        let line = seen
            .recv_timeout(common::DEADLINE)
            .unwrap_or_else(|_| panic!("no {needle:?} on stderr"));
        if line.contains(needle) {
            return;
        }
    };
    wait_line("Listening on");
    let pid = daemon.child.id() as i32;
    let exchange = move || {
        let mut c = std::net::TcpStream::connect(port).unwrap();
        c.set_read_timeout(Some(common::DEADLINE)).unwrap();
        c.write_all(b"ping\n").unwrap();
        c.shutdown(std::net::Shutdown::Write).unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).unwrap();
        back
    };
    // The first connection starts the daemon; once it has logged its
    // listener, its stderr is a broken pipe.
    let first = std::thread::spawn(exchange);
    wait_line("-> work qubes.ConnectTCP+1234");
    assert_eq!(first.join().unwrap(), b"ping\n");
    common::kill(pid, libc::SIGPIPE).unwrap();
    let before = write_calls(pid);
    let start = std::time::Instant::now();
    while start.elapsed() < std::time::Duration::from_secs(1) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let writes = write_calls(pid) - before;
    assert!(writes < 100, "{writes} writes in a second: a busy loop");
    assert_eq!(exchange(), b"ping\n");
}

/// End to end through our own service applet: `qubes.ConnectUnix` in the
/// vault finds no socket linked in its allow-list; its one line reaches the
/// client qube's log on that connection, and once the socket is linked the
/// next connection goes through.
#[test]
fn service_applet_socket_missing_end_to_end() {
    use std::os::unix::fs::symlink;
    let world = World::new();
    let vault = world.qube("vault");
    symlink(
        world.applet("qubes.ConnectUnix"),
        vault.dir().join("etc/qubes-rpc/qubes.ConnectUnix"),
    )
    .unwrap();
    let runtime = common::TempDir::new("faults-runtime");
    let allow_list = runtime.path().join("qubes.ConnectUnix");
    fs::create_dir_all(&allow_list).unwrap();
    vault.env("XDG_RUNTIME_DIR", &runtime.path().display().to_string());
    world.policy("qubes.ConnectUnix +ssh-agent client vault allow\n");
    let daemon = Activate::new(&world, Program::Applet("qrexec-connect-unix".into()))
        .listen(Listen::Unix, "vault")
        .args(["ssh-agent"])
        .start();
    assert_closed_without_data(&daemon);
    let text = daemon.wait_stderr("(status 1");
    assert!(
        text.contains(
            "-> vault qubes.ConnectUnix+ssh-agent: qubes.ConnectUnix: error: no socket 'ssh-agent'"
        ),
        "the service's one line, on the connection's log:\n{text}"
    );
    let socket = runtime.path().join("S.agent");
    unix_echo(&socket);
    symlink(&socket, allow_list.join("ssh-agent")).unwrap();
    assert_serves(&daemon);
}

/// A refusal is followed by the dom0 policy line that would allow the call,
/// once for the listener, however many of its connections are refused;
/// with no `qubesdb-read` here, a placeholder stands for this qube.
#[test]
fn refusal_names_the_policy_line_once() {
    let world = echo_world();
    world.policy("qubes.ConnectTCP +1234 client work deny\n");
    let daemon = daemon_with(&world, |a| a.env("PATH", "/usr/bin:/bin"));
    assert_closed_without_data(&daemon);
    assert_closed_without_data(&daemon);
    let text = daemon.wait_stderr_count("(status 126)", 2);
    let line = "qubes.ConnectTCP  +1234  <this-qube>  work  allow";
    assert_eq!(text.matches(line).count(), 1, "{text}");
    let hint = text.lines().find(|l| l.contains(line)).unwrap();
    assert!(
        hint.contains("/etc/qubes/policy.d/30-user.policy"),
        "{hint}"
    );
    assert!(text.find(hint).unwrap() > text.find("(status 126)").unwrap());
}
