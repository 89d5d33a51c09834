//! The client daemon under the real systemd-socket-activate, calling the
//! qrexec stand-in: where each connection goes, what qrexec-client-vm is
//! given, and how connections end.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::time::Duration;

use common::{
    Activate, Conn, Listen, Program, World, echo_daemon, echo_world, standin, tcp_applet,
    wait_until, work_world,
};

/// Reads one byte, or None when nothing arrives within `wait`.
fn read_within(conn: &mut Conn, wait: Duration) -> Option<usize> {
    conn.set_read_timeout(Some(wait)).unwrap();
    let result = match conn.read(&mut [0u8; 1]) {
        Ok(n) => Some(n),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("read: {e}"),
    };
    conn.set_read_timeout(Some(common::DEADLINE)).unwrap();
    result
}

/// Each qube's `qubes.ConnectTCP`/`qubes.ConnectUnix` says where it runs and
/// what it was called with, then echoes.
const IDENTIFY: &str =
    "echo \"$QUBE $QREXEC_SERVICE_FULL_NAME arg=$1 from=$QREXEC_REMOTE_DOMAIN\"; exec cat";

fn identifying_qube(world: &World, name: &str) {
    let qube = world.qube(name);
    qube.env("QUBE", name);
    qube.service("qubes.ConnectTCP", IDENTIFY);
    qube.service("qubes.ConnectUnix", IDENTIFY);
}

/// The bits of `/proc/PID/status` SigIgn of this test process, less SIGPIPE
/// (which Rust's runtime ignores in every test binary, and resets for children).
fn our_ignored_signals() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let ign = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .unwrap()
        .trim();
    u64::from_str_radix(ign, 16).unwrap() & !(1 << (libc::SIGPIPE - 1))
}

#[test]
fn several_listeners_each_to_its_own_target() {
    let world = World::new();
    for qube in ["work", "personal", "vault", "dvm"] {
        identifying_qube(&world, qube);
    }
    world.policy(
        "qubes.ConnectTCP  +1234       client work        allow\n\
         qubes.ConnectTCP  +22         client @default    allow target=personal\n\
         qubes.ConnectUnix +gpg-agent  client vault       allow\n\
         qubes.ConnectTCP  +1234       client @dispvm:dvm allow\n",
    );
    let mut daemon = Activate::new(&world, Program::Applet("qrexec-connect-tcp".into()))
        .listen(Listen::Tcp4, "work")
        .listen(Listen::Tcp6, "@default qubes.ConnectTCP+22")
        .listen(Listen::Unix, "vault qubes.ConnectUnix+gpg-agent")
        .listen(Listen::Abstract, "@dispvm+dvm")
        .args(["1234"])
        .notify()
        .start();
    let expected = [
        ("work", "qubes.ConnectTCP+1234", "work"),
        ("@default", "qubes.ConnectTCP+22", "personal"),
        ("vault", "qubes.ConnectUnix+gpg-agent", "vault"),
        ("@dispvm:dvm", "qubes.ConnectTCP+1234", "dvm"),
    ];
    for (i, (_, call, qube)) in expected.iter().enumerate() {
        let reply = daemon.connect(i).exchange(format!("hello {i}").as_bytes());
        let arg = call.split_once('+').unwrap().1;
        assert_eq!(
            String::from_utf8(reply).unwrap(),
            format!("{qube} {call} arg={arg} from=client\nhello {i}"),
            "listener {i}"
        );
    }
    let text = daemon.wait_stderr_count("-> ", 4 + 4);
    for (i, (target, call, _)) in expected.iter().enumerate() {
        let line = format!("{} -> {target} {call}", daemon.address(i).shown());
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }

    let calls = world.finished_calls(4);
    assert_eq!(calls.len(), 4);
    let ignored_here = our_ignored_signals();
    for (target, call, qube) in expected {
        let record = calls
            .iter()
            .find(|r| r.target_raw().as_deref() == Some(target))
            .unwrap_or_else(|| panic!("no call to {target}"));
        assert_eq!(
            record.args(),
            ["--use-stdin-socket", "--", target, call],
            "{target}"
        );
        assert_eq!(record.call_raw().as_deref(), Some(call));
        assert_eq!(record.info("qube").as_deref(), Some(qube));
        assert_eq!(record.status().as_deref(), Some("exit 0"));
        let env = record.env();
        for name in [
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
        ] {
            assert!(!env.contains_key(name), "{name} passed on to {target}");
        }
        assert!(env.contains_key("QREXEC_STANDIN_ROOT"), "-E variables kept");
        assert_eq!(
            record.fds(),
            [0, 1, 2],
            "fds inherited by the call to {target}"
        );
        assert_eq!(record.info("stdin").as_deref(), Some("socket"));
        assert_eq!(record.info("stdio_same_socket").as_deref(), Some("yes"));
        assert_eq!(record.info("stdin_nonblocking").as_deref(), Some("no"));
        let blocked = u64::from_str_radix(&record.info("sig_blocked").unwrap(), 16).unwrap();
        assert_eq!(blocked, 0, "signals blocked in the call to {target}");
        let ignored = u64::from_str_radix(&record.info("sig_ignored").unwrap(), 16).unwrap();
        // glibc's posix_spawn sets its two internal signals (32 SIGCANCEL, 33
        // SIGSETXID) to SIG_IGN in the child before exec; the child's own
        // libc installs its handlers for them.
        let glibc_internal = 0b11 << 31;
        assert_eq!(
            ignored & !ignored_here & !glibc_internal,
            0,
            "signals ignored in the call to {target} that this test does not ignore"
        );
    }
    let mut notes = daemon.notifications();
    assert_eq!(notes.first().map(String::as_str), Some("READY=1"));
    // STATUS= follows the counts, at most once a second.
    wait_until("STATUS= with 4 served", || {
        notes.extend(daemon.notifications());
        notes
            .iter()
            .any(|n| n == "STATUS=0 active, 4 served, 0 refused, 0 failed")
    });
    assert!(daemon.is_running());
}

/// Seed 000's second address of one instance: a second socket unit with
/// `Service=` the same service gives the daemon two fds, each with its own
/// name. Each must reach its own target, whatever the order of connections.
#[test]
fn two_sockets_of_one_instance_two_targets() {
    let world = World::new();
    for qube in ["work", "personal"] {
        identifying_qube(&world, qube);
    }
    world.policy("qubes.ConnectTCP +1234 client @anyvm allow\n");
    let daemon = Activate::new(&world, Program::Multicall("tcp".into()))
        .listen(Listen::Tcp4, "work")
        .listen(Listen::Tcp4, "personal")
        .args(["1234", "--", "--buffer-size=65536"])
        .start();
    for (i, qube) in [1, 0, 0, 1, 1, 0]
        .into_iter()
        .map(|i| (i, ["work", "personal"][i]))
    {
        let reply = daemon.connect(i).exchange(b"x");
        let want = format!("{qube} qubes.ConnectTCP+1234 arg=1234 from=client\nx");
        assert_eq!(String::from_utf8(reply).unwrap(), want);
    }
    let calls = world.finished_calls(6);
    for qube in ["work", "personal"] {
        let to_qube: Vec<_> = calls
            .iter()
            .filter(|r| r.target_raw().as_deref() == Some(qube))
            .collect();
        assert_eq!(to_qube.len(), 3, "calls to {qube}");
        for r in to_qube {
            assert_eq!(
                r.args(),
                [
                    "--buffer-size=65536",
                    "--use-stdin-socket",
                    "--",
                    qube,
                    "qubes.ConnectTCP+1234"
                ],
                "options after our `--` go before qrexec-client-vm's"
            );
            assert_eq!(r.info("buffer_size").as_deref(), Some("65536"));
        }
    }
}

#[test]
fn unnamed_sockets_call_default() {
    let world = World::new();
    identifying_qube(&world, "personal");
    world.policy("qubes.ConnectUnix +ssh-agent client @default allow target=personal\n");
    let daemon = Activate::new(&world, Program::Applet("qrexec-connect-unix".into()))
        .listen(Listen::Unix, "")
        .listen(Listen::Abstract, "")
        .args(["ssh-agent"])
        .start();
    for i in 0..2 {
        let reply = daemon.connect(i).exchange(b"");
        assert_eq!(
            String::from_utf8(reply).unwrap(),
            "personal qubes.ConnectUnix+ssh-agent arg=ssh-agent from=client\n"
        );
    }
    let text = daemon.wait_stderr_count("exit", 0);
    assert_eq!(
        text.matches("without a FileDescriptorName").count(),
        1,
        "logged once:\n{text}"
    );
    for r in world.finished_calls(2) {
        assert_eq!(r.target_raw().as_deref(), Some("@default"));
    }
}

#[test]
fn plain_applet_with_service_option() {
    let world = World::new();
    identifying_qube(&world, "work");
    world.policy("qubes.ConnectTCP +80 client work allow\n");
    let daemon = Activate::new(&world, Program::Plain)
        .listen(Listen::Tcp6, "work")
        .args(["--service", "qubes.ConnectTCP", "--argument", "80"])
        .start();
    let reply = daemon.connect(0).exchange(b"");
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        "work qubes.ConnectTCP+80 arg=80 from=client\n"
    );
}

#[test]
fn policy_refusal() {
    let world = echo_world();
    world.policy("qubes.ConnectTCP * client work deny\n");
    let mut daemon = echo_daemon(&world, &[]);
    assert_eq!(daemon.connect(0).exchange_or_reset(b"hello"), b"");
    let text = daemon.wait_stderr("refused by policy");
    assert!(text.contains("Request refused"), "{text}");
    assert!(text.contains("(status 126)"), "{text}");
    assert_eq!(
        world.finished_calls(1)[0].status().as_deref(),
        Some("exit 126")
    );
    assert!(daemon.is_running());
}

#[test]
fn missing_service() {
    let world = echo_world();
    world.policy("* * client work allow\n");
    let mut daemon = Activate::new(&world, Program::Applet("qrexec-connect-unix".into()))
        .listen(Listen::Unix, "work")
        .args(["gpg-agent"])
        .start();
    assert_eq!(daemon.connect(0).exchange_or_reset(b"hello"), b"");
    let text = daemon.wait_stderr("no such service in work (status 127)");
    assert!(text.contains("qubes.ConnectUnix+gpg-agent"), "{text}");
    assert!(daemon.is_running());
}

#[test]
fn client_hangs_up_mid_stream() {
    let world = echo_world();
    world.qube("work").service("qubes.ConnectTCP", "exec yes");
    let mut daemon = echo_daemon(&world, &[]);
    let mut conn = daemon.connect(0);
    let mut first = vec![0u8; 1 << 20];
    conn.read_exact(&mut first).unwrap();
    assert!(first.starts_with(b"y\ny\n"));
    drop(conn);
    // qrexec-client-vm's write fails, it closes the service's output, the
    // service's next write fails (ECONNRESET when data was left unread:
    // `yes` says so and exits 1; else SIGPIPE), and the connection is
    // released like any other.
    let call = &world.finished_calls(1)[0];
    assert_ne!(call.status().as_deref(), Some("exit 0"));
    let text = daemon.wait_stderr(" after ");
    let line = "-> work qubes.ConnectTCP+1234: ";
    assert!(
        text.contains(&format!("{line}failed (status 1"))
            || text.contains(&format!("{line}the service in work was killed by SIGPIPE")),
        "{text}"
    );
    wait_until("no child left", || daemon.children().is_empty());
    assert!(daemon.is_running());
    let mut again = [0u8; 4];
    daemon.connect(0).read_exact(&mut again).unwrap();
    assert_eq!(&again, b"y\ny\n");
}

/// SIGTERM with 100 connections open: no new connection is served, every
/// open one finishes with all its bytes, then the daemon exits 0.
#[test]
fn sigterm_drains_open_connections() {
    let n = 100;
    let world = echo_world();
    let mut daemon = Activate::tcp_to_work(&world)
        .args(["--drain-timeout", "120"])
        .notify()
        .start();
    let byte = |i: usize, base: u8| base + (i % 26) as u8;
    let mut open: Vec<Conn> = (0..n).map(|_| daemon.connect(0)).collect();
    for (i, conn) in open.iter_mut().enumerate() {
        conn.write_all(&[byte(i, b'a'); 1000]).unwrap();
        let mut echoed = [0u8; 1000];
        conn.read_exact(&mut echoed).unwrap();
        assert_eq!(echoed, [byte(i, b'a'); 1000], "connection {i} echoes");
    }
    wait_until(&format!("{n} calls running"), || {
        world.concurrency().0 == n as u64
    });
    daemon.signal(libc::SIGTERM);
    daemon.wait_stderr("received SIGTERM: no new connections");
    wait_until("STOPPING=1", || {
        daemon.notifications().iter().any(|m| m == "STOPPING=1")
    });
    // Not accepted any more: it waits in the backlog, and is reset at exit.
    let mut late = daemon.connect(0);
    late.write_all(b"too late\n").unwrap();
    assert!(daemon.is_running(), "open connections keep it running");
    // Open connections still carry data both ways, to the end.
    for (i, conn) in open.iter_mut().enumerate() {
        let tail = vec![byte(i, b'A'); 100_000];
        let reply = conn.exchange(&tail);
        assert_eq!(reply, tail, "connection {i} finished intact");
    }
    assert_eq!(daemon.wait_exit().code(), Some(0));
    let text = daemon.stderr();
    assert!(text.contains("all connections finished, exiting"), "{text}");
    let statuses: Vec<String> = world
        .finished_calls(n)
        .iter()
        .filter_map(|r| r.status())
        .collect();
    assert!(
        statuses.iter().all(|s| s == "exit 0"),
        "every drained call ended by itself: {statuses:?}"
    );
    assert_eq!(world.calls().len(), n, "a call after SIGTERM");
    let mut rest = Vec::new();
    let _ = late.read_to_end(&mut rest);
    assert_eq!(rest, b"", "nothing served after SIGTERM");
}

/// Connections that do not finish within --drain-timeout get SIGTERM, and
/// SIGTERM is enough: the daemon exits 0 and nothing it started is left.
#[test]
fn drain_timeout_ends_calls_with_sigterm() {
    let world = echo_world();
    let mut daemon = echo_daemon(&world, &["--drain-timeout", "1"]);
    let mut open: Vec<Conn> = (0..5).map(|_| daemon.connect(0)).collect();
    for conn in &mut open {
        conn.write_all(b"never ends\n").unwrap();
        let mut echoed = [0u8; 11];
        conn.read_exact(&mut echoed).unwrap();
    }
    wait_until("5 calls running", || world.concurrency().0 == 5);
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit().code(), Some(0));
    let text = daemon.stderr();
    assert!(
        text.contains("5 connections still open after 1s, ending them (SIGTERM)"),
        "{text}"
    );
    assert!(
        !text.contains("killing them"),
        "SIGTERM was enough:\n{text}"
    );
    wait_until("every process of the daemon's group to end", || {
        daemon.group_members().is_empty()
    });
    // Each call ended by that SIGTERM: qrexec-client-vm killed by it, or
    // exiting 143 for its service killed by it (forwarded), as the daemon
    // logs and the stand-in records.
    assert_eq!(text.matches(" killed by SIGTERM").count(), 5, "{text}");
    for call in world.finished_calls(5) {
        let status = call.status();
        assert!(
            matches!(status.as_deref(), Some("signal 15" | "exit 143")),
            "the call ended by SIGTERM, not {status:?}"
        );
    }
    for mut conn in open {
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest);
    }
}

#[test]
fn exits_when_idle() {
    let world = echo_world();
    let mut daemon = echo_daemon(&world, &["--exit-idle-time", "1"]);
    assert_eq!(daemon.connect(0).exchange(b"once"), b"once");
    assert_eq!(daemon.wait_exit().code(), Some(0));
    assert!(daemon.stderr().contains("no connection for 1s"));
}

#[test]
fn max_connections_holds_the_rest_in_the_backlog() {
    let world = echo_world();
    let daemon = echo_daemon(&world, &["--max-connections", "3"]);
    let mut conns: Vec<Conn> = (0..10).map(|_| daemon.connect(0)).collect();
    for conn in &mut conns {
        conn.write_all(b"x").unwrap();
    }
    wait_until("3 calls running", || world.concurrency().0 == 3);
    // In accept order, each finished connection lets the next one in.
    for (i, mut conn) in conns.into_iter().enumerate() {
        let mut reply = [0u8; 1];
        conn.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"x", "connection {i}");
        assert_eq!(conn.exchange(b""), b"");
    }
    let (_, max, started) = world.concurrency();
    assert_eq!((max, started), (3, 10), "{}", daemon.stderr());
}

/// Answers, ends its output, then keeps reading: a request/response
/// protocol where the client waits for EOF before it closes.
const ANSWER_THEN_READ: &str = "echo reply; exec >&-; cat > \"$HOME/rest\"";

#[test]
fn older_qrexec_without_stdin_socket() {
    let world = work_world(ANSWER_THEN_READ);
    let work = world.qube("work");
    let daemon = Activate::new(&world, tcp_applet())
        .listen(Listen::Tcp4, "work")
        .args(["1234"])
        .env("QREXEC_STANDIN_OLD", "1")
        .start();
    let mut conn = daemon.connect(0);
    conn.write_all(b"request").unwrap();
    let mut reply = [0u8; 6];
    conn.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"reply\n");
    // The older qrexec only closes its fd 1: no EOF while it runs.
    assert_eq!(read_within(&mut conn, Duration::from_millis(300)), None);
    conn.shutdown_write().unwrap();
    assert_eq!(read_within(&mut conn, common::DEADLINE), Some(0));
    let text = daemon.wait_stderr("does not support --use-stdin-socket");
    assert_eq!(text.matches("does not support").count(), 1, "{text}");
    let call = &world.finished_calls(1)[0];
    assert_eq!(call.args(), ["--", "work", "qubes.ConnectTCP+1234"]);
    assert_eq!(std::fs::read(work.dir().join("rest")).unwrap(), b"request");
}

#[test]
fn current_qrexec_gives_eof_at_once() {
    let world = work_world(ANSWER_THEN_READ);
    let work = world.qube("work");
    let daemon = echo_daemon(&world, &[]);
    let mut conn = daemon.connect(0);
    conn.write_all(b"request").unwrap();
    let mut reply = Vec::new();
    // EOF while our side is still open, and what we send after still arrives.
    conn.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"reply\n");
    conn.write_all(b" and more").unwrap();
    conn.shutdown_write().unwrap();
    let call = &world.finished_calls(1)[0];
    assert_eq!(call.status().as_deref(), Some("exit 0"));
    assert_eq!(
        std::fs::read(work.dir().join("rest")).unwrap(),
        b"request and more"
    );
    let probes = world
        .records()
        .into_iter()
        .filter(|r| r.info("help").is_some())
        .count();
    assert_eq!(probes, 1, "-h asked once, at start-up");
    assert!(!daemon.stderr().contains("does not support"));
}

#[test]
fn stdin_socket_option_overrides_detection() {
    // yes, against an older qrexec: every call fails, and says why.
    let world = echo_world();
    let mut daemon = Activate::new(&world, tcp_applet())
        .listen(Listen::Tcp4, "work")
        .args(["1234", "--stdin-socket", "yes"])
        .env("QREXEC_STANDIN_OLD", "1")
        .start();
    assert_eq!(daemon.connect(0).exchange_or_reset(b"x"), b"");
    let text = daemon.wait_stderr("failed (status 2: qrexec-client-vm refused its options");
    assert!(
        text.contains("unrecognized option '--use-stdin-socket'"),
        "{text}"
    );
    assert!(daemon.is_running());
    drop(daemon);

    // no, against the current one: not asked, not passed.
    let world = echo_world();
    let daemon = echo_daemon(&world, &["--stdin-socket=no"]);
    assert_eq!(daemon.connect(0).exchange(b"x"), b"x");
    let records = world.records();
    assert_eq!(records.len(), 1, "no -h probe");
    assert_eq!(records[0].args(), ["--", "work", "qubes.ConnectTCP+1234"]);
}

#[test]
fn accepted_connection_served_as_one() {
    let world = echo_world();
    world
        .qube("work")
        .service("qubes.ConnectTCP", "cat; exit 3");
    let daemon = Activate::new(&world, tcp_applet())
        .listen(Listen::Tcp4, "work")
        .args(["1234"])
        .accept()
        .notify()
        .start();
    for round in 1..=2 {
        assert_eq!(daemon.connect(0).exchange(b"accepted"), b"accepted");
        // systemd-socket-activate reports its child's status.
        let text = daemon.wait_stderr_count("died with code 3", round);
        // The same end-of-connection line as the daemon's, duration included.
        assert_eq!(
            text.matches(
                "-> work qubes.ConnectTCP+1234: the service in work failed (status 3) after "
            )
            .count(),
            round,
            "{text}"
        );
    }
    // A Type=notify unit with Accept=yes must not wait for READY=1 in vain.
    assert_eq!(daemon.notifications(), ["READY=1", "READY=1"]);
    let calls = world.finished_calls(2);
    assert!(
        calls
            .iter()
            .all(|r| r.target_raw().as_deref() == Some("work"))
    );
    assert!(calls.iter().all(|r| r.fds() == [0, 1, 2]));
}

#[test]
fn service_stderr_logged_by_whole_lines() {
    let world = echo_world();
    // One line in two writes, a moment apart: two reads for the daemon.
    world.qube("work").service(
        "qubes.ConnectTCP",
        "printf 'first half, ' >&2; sleep 0.2; echo 'second half' >&2; echo 'next line' >&2",
    );
    let daemon = echo_daemon(&world, &[]);
    assert_eq!(daemon.connect(0).exchange(b""), b"");
    let text = daemon.wait_stderr(": done after ");
    assert!(
        text.contains("-> work qubes.ConnectTCP+1234: first half, second half\n"),
        "{text}"
    );
    assert!(
        text.contains("-> work qubes.ConnectTCP+1234: next line\n"),
        "{text}"
    );
}

#[test]
fn sighup_is_ignored_sigint_drains() {
    let world = echo_world();
    let mut daemon = echo_daemon(&world, &[]);
    assert_eq!(daemon.connect(0).exchange(b"x"), b"x");
    daemon.signal(libc::SIGHUP);
    daemon.wait_stderr("received SIGHUP, ignoring");
    assert_eq!(daemon.connect(0).exchange(b"y"), b"y");
    daemon.signal(libc::SIGINT);
    assert_eq!(daemon.wait_exit().code(), Some(0));
    assert!(daemon.stderr().contains("received SIGINT"));
}

/// The daemon's open descriptors, from /proc.
fn open_fds(pid: i32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
fn no_descriptor_per_open_connection() {
    let world = echo_world();
    let daemon = echo_daemon(&world, &[]);
    assert_eq!(daemon.connect(0).exchange(b"warm\n"), b"warm\n");
    wait_until("the first call to end", || world.concurrency().0 == 0);
    let idle = open_fds(daemon.pid);
    let mut conns: Vec<Conn> = (0..20).map(|_| daemon.connect(0)).collect();
    for conn in &mut conns {
        conn.write_all(b"x").unwrap();
    }
    wait_until("20 calls running", || world.concurrency().0 == 20);
    // Every child has its socket and the shared stderr; the daemon keeps
    // neither (each spawn copies the daemon's descriptor table).
    assert_eq!(open_fds(daemon.pid), idle, "{}", daemon.stderr());
    for mut conn in conns {
        let mut reply = [0u8; 1];
        conn.read_exact(&mut reply).unwrap();
        assert_eq!(conn.exchange(b""), b"");
    }
}

#[test]
fn stderr_lines_of_concurrent_calls_keep_their_connection() {
    let world = World::new();
    // Each call says which it is on stderr, in pieces that interleave with
    // the other calls' pieces, then echoes.
    world.qube("work").service(
        "qubes.ConnectTCP",
        "read id; for i in 1 2 3; do printf \"call $id part $i, \" >&2; sleep 0.05; done; \
         echo \"call $id end\" >&2; echo \"$id\"",
    );
    world.policy("qubes.ConnectTCP * client work allow\n");
    let daemon = echo_daemon(&world, &[]);
    let mut conns: Vec<(u16, Conn)> = (0..8)
        .map(|_| daemon.connect(0))
        .enumerate()
        .map(|(i, c)| (i as u16, c))
        .collect();
    for (id, conn) in &mut conns {
        writeln!(conn, "{id}").unwrap();
    }
    let ports: Vec<(u16, u16)> = conns
        .iter_mut()
        .map(|(id, conn)| {
            let Conn::Tcp(tcp) = &*conn else {
                unreachable!("a TCP listener")
            };
            let port = tcp.local_addr().unwrap().port();
            assert_eq!(conn.exchange(b""), format!("{id}\n").into_bytes());
            (*id, port)
        })
        .collect();
    let text = daemon.wait_stderr_count(": done after ", 8);
    for (id, port) in ports {
        let whole = format!(
            "127.0.0.1:{port} -> work qubes.ConnectTCP+1234: call {id} part 1, call {id} part 2, call {id} part 3, call {id} end\n"
        );
        assert!(text.contains(&whole), "no line {whole:?} in:\n{text}");
    }
}

#[test]
fn a_stderr_flood_is_counted_not_logged_and_others_go_on() {
    let world = World::new();
    world.qube("work").service(
        "qubes.ConnectTCP",
        "read mode; if [ \"$mode\" = flood ]; then head -c 1000000 /dev/zero | tr '\\0' x >&2; \
         else echo calm here >&2; fi; echo \"$mode\"",
    );
    world.policy("qubes.ConnectTCP * client work allow\n");
    let daemon = echo_daemon(&world, &[]);
    let mut flood = daemon.connect(0);
    let mut calm = daemon.connect(0);
    flood.write_all(b"flood\n").unwrap();
    calm.write_all(b"calm\n").unwrap();
    assert_eq!(calm.exchange(b""), b"calm\n");
    assert_eq!(flood.exchange(b""), b"flood\n");
    let text = daemon.wait_stderr_count(": done after ", 2);
    // 64 KiB of it logged (in lines of 4 KiB), the rest only counted.
    assert!(
        text.contains(": 934464 more bytes of stderr not logged"),
        "{text}"
    );
    assert_eq!(text.matches(&"x".repeat(4096)).count(), 16, "{text}");
    assert!(
        text.contains("qubes.ConnectTCP+1234: calm here\n"),
        "{text}"
    );
}

#[test]
fn a_child_that_shuts_the_shared_stderr_does_not_silence_the_next() {
    let world = World::new();
    world.qube("work").service(
        "qubes.ConnectTCP",
        "echo said by $QREXEC_REMOTE_DOMAIN >&2; exec cat",
    );
    world.policy("qubes.ConnectTCP * client work allow\n");
    let daemon = echo_daemon(&world, &[]);
    // The first call shuts its stderr (every child's) down for writing.
    std::fs::write(world.root().join("shut-stderr-once"), "").unwrap();
    assert_eq!(daemon.connect(0).exchange(b"one\n"), b"one\n");
    daemon.wait_stderr("a child shut down the children's stderr; making a new one");
    assert_eq!(daemon.connect(0).exchange(b"two\n"), b"two\n");
    let text = daemon.wait_stderr_count(": done after ", 2);
    assert!(
        text.contains("-> work qubes.ConnectTCP+1234: said by client\n"),
        "{text}"
    );
}

/// The Accept=yes form reads its child's stderr from a pipe of its own, with
/// the daemon's limits: a flood of short lines is 100 lines and a count.
#[test]
fn accepted_connection_stderr_has_the_daemons_limits() {
    let world = echo_world();
    world
        .qube("work")
        .service("qubes.ConnectTCP", "yes a | head -c 1000000 >&2; exec cat");
    let daemon = Activate::new(&world, tcp_applet())
        .listen(Listen::Tcp4, "work")
        .args(["1234"])
        .accept()
        .start();
    assert_eq!(daemon.connect(0).exchange(b"accepted"), b"accepted");
    let text = daemon.wait_stderr(": done after ");
    assert_eq!(
        text.matches("-> work qubes.ConnectTCP+1234: a\n").count(),
        100,
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );
    assert!(
        text.contains("-> work qubes.ConnectTCP+1234: 999800 more bytes of stderr not logged\n"),
        "{}",
        &text[text.len().saturating_sub(2000)..]
    );
}

/// 64 KiB of one-byte lines would be 32,768 journal entries per connection:
/// twenty such connections would pass journald's rate limit (10,000 per
/// 30 s per unit), and it would drop the unit's other lines. Each logs 100.
#[test]
fn a_flood_of_short_lines_is_capped_in_lines() {
    let world = World::new();
    world
        .qube("work")
        .service("qubes.ConnectTCP", "yes a | head -c 65536 >&2; exec cat");
    world.policy("qubes.ConnectTCP * client work allow\n");
    let daemon = echo_daemon(&world, &[]);
    let conns: Vec<Conn> = (0..20).map(|_| daemon.connect(0)).collect();
    for mut conn in conns {
        assert_eq!(conn.exchange(b"x"), b"x");
    }
    let text = daemon.wait_stderr_count(": done after ", 20);
    let tail = &text[text.len().saturating_sub(2000)..];
    assert_eq!(
        text.matches("-> work qubes.ConnectTCP+1234: a\n").count(),
        20 * 100,
        "{tail}"
    );
    assert_eq!(
        text.matches(": 65336 more bytes of stderr not logged\n")
            .count(),
        20,
        "{tail}"
    );
}

/// A process that is not the daemon's child (here a wrapper's) writes to
/// the shared stderr: its lines are whole, and all such writers share one
/// budget of 100 lines (a window of 30 s), the rest counted by the exit.
#[test]
fn other_writers_on_the_shared_stderr_share_one_budget() {
    use std::os::unix::fs::PermissionsExt as _;
    let world = echo_world();
    let wrapper = world.root().join("bin/wrapped-qrexec-client-vm");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n\
             (printf 'first half, ' >&2; sleep 0.2; echo 'second half' >&2)\n\
             yes a | head -n 10000 >&2\n\
             exec '{}' \"$@\"\n",
            standin().display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut daemon = Activate::new(&world, tcp_applet())
        .listen(Listen::Tcp4, "work")
        .args(["1234", "--stdin-socket=no"])
        .env("QREXEC_CLIENT_VM", &wrapper)
        .start();
    assert_eq!(daemon.connect(0).exchange(b"x"), b"x");
    daemon.wait_stderr(": done after ");
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.wait_exit().code(), Some(0));
    let text = daemon.stderr();
    let tail = &text[text.len().saturating_sub(2000)..];
    assert!(
        text.contains(" on the children's stderr: first half, second half\n"),
        "{tail}"
    );
    // 100 lines a window: a second window only on a machine that took 30 s.
    let lines = text.matches(" on the children's stderr: a\n").count() + 1;
    assert!((100..=200).contains(&lines), "{lines} lines: {tail}");
    if lines == 100 {
        assert!(
            text.contains(
                ": 19802 more bytes from other processes on the children's stderr not logged\n"
            ),
            "{tail}"
        );
    }
}
