//! `qrexec-connect-socks`, the SOCKS5 front door: real clients (curl, and
//! raw RFC 1928 clients for what curl never sends) through the real
//! systemd-socket-activate or a real `systemd --user`, the qrexec stand-in
//! for Qubes, and real TCP servers behind the calls.

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::symlink;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use common::lab;
use common::{
    Activate, Address, Conn, DEADLINE, Daemon, Listen, Program, TempDir, World, each_case,
    make_install, wait_until,
};

const SUCCEEDED: [u8; 10] = [5, 0, 0, 1, 0, 0, 0, 0, 0, 0];

/// A reply with code `code`.
fn reply(code: u8) -> Vec<u8> {
    vec![5, code, 0, 1, 0, 0, 0, 0, 0, 0]
}

/// A CONNECT request to a domain name.
fn request(name: &str, port: u16) -> Vec<u8> {
    let mut buf = vec![5, 1, 0, 3, name.len() as u8];
    buf.extend_from_slice(name.as_bytes());
    buf.extend_from_slice(&port.to_be_bytes());
    buf
}

/// A TCP server on 127.0.0.1 standing for a service in a qube: each
/// connection goes to `handle` in a thread of its own. It lives as long
/// as the test's process (the test ends with it).
fn server(handle: impl Fn(TcpStream) + Clone + Send + 'static) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let handle = handle.clone();
            thread::spawn(move || handle(stream));
        }
    });
    addr
}

/// Echoes what it reads until EOF, then closes.
fn echo_server() -> SocketAddr {
    server(|mut stream| {
        let mut got = Vec::new();
        if stream.read_to_end(&mut got).is_ok() {
            let _ = stream.write_all(&got);
        }
    })
}

/// The body every GET of [`http_server`] gets.
fn body() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 31 % 253) as u8).collect()
}

/// HTTP/1.0 for one request a connection: the headers, then [`body`].
fn http_server() -> SocketAddr {
    server(|mut stream| {
        let mut head = Vec::new();
        let mut byte = [0u8];
        while !head.ends_with(b"\r\n\r\n") {
            match stream.read(&mut byte) {
                Ok(1) => head.push(byte[0]),
                _ => return,
            }
        }
        let body = body();
        let _ = write!(
            stream,
            "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let _ = stream.write_all(&body);
    })
}

/// In qube `work`, `qubes.ConnectTCP+PORT` reaches `to`, as Qubes' own
/// qubes.ConnectTCP does (the stand-in's /dev/tcp link).
fn tcp_service(world: &World, port: u16, to: SocketAddr) {
    let dir = world.qube("work").dir().join("etc/qubes-rpc");
    symlink(
        format!("/dev/tcp/{}/{}", to.ip(), to.port()),
        dir.join(format!("qubes.ConnectTCP+{port}")),
    )
    .unwrap();
}

/// `qrexec-connect-socks ARGS` on one TCP listener.
fn socks_daemon(world: &World, args: &[&str]) -> Daemon {
    Activate::new(world, Program::Applet("qrexec-connect-socks".into()))
        .listen(Listen::Tcp4, "")
        .args(args)
        .start()
}

/// A world whose qube `work` serves `port` with `to`, allowed.
fn world_with(port: u16, to: SocketAddr) -> World {
    let world = World::new();
    tcp_service(&world, port, to);
    world.policy("qubes.ConnectTCP * client work allow\n");
    world
}

/// The handshake of a CONNECT to `name:port`, answered with success.
fn connect(addr: &Address, name: &str, port: u16) -> Conn {
    let mut conn = addr.connect();
    conn.write_all(&[5, 1, 0]).unwrap();
    let mut method = [0u8; 2];
    conn.read_exact(&mut method).unwrap();
    assert_eq!(method, [5, 0]);
    conn.write_all(&request(name, port)).unwrap();
    let mut reply = [0u8; 10];
    conn.read_exact(&mut reply).unwrap();
    assert_eq!(reply, SUCCEEDED);
    conn
}

/// Everything until EOF; a reset counts as the end too.
fn read_all(conn: &mut Conn) -> Vec<u8> {
    let mut got = Vec::new();
    match conn.read_to_end(&mut got) {
        Ok(_) => got,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => got,
        Err(e) => panic!("read: {e} after {got:?}"),
    }
}

fn curl(proxy: &Address, url: &str) -> std::process::Output {
    Command::new("curl")
        .args(["--silent", "--show-error", "--max-time", "60", "--proxy"])
        .arg(format!("socks5h://{}", proxy.shown()))
        .arg(url)
        .output()
        .expect("run curl")
}

/// curl through the proxy reaches a real HTTP server in `work`, byte-exact,
/// by the call `work qubes.ConnectTCP+PORT`, logged like any connection.
#[test]
fn curl_reaches_an_http_server_in_a_qube() {
    let http = http_server();
    let world = world_with(8080, http);
    let daemon = socks_daemon(&world, &[]);
    let out = curl(daemon.address(0), "http://work.qube:8080/file");
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        daemon.stderr()
    );
    assert!(
        out.stdout == body(),
        "{} bytes, not the body",
        out.stdout.len()
    );
    let calls = world.finished_calls(1);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].target_raw().as_deref(), Some("work"));
    assert_eq!(
        calls[0].call_raw().as_deref(),
        Some("qubes.ConnectTCP+8080")
    );
    assert_eq!(calls[0].status().as_deref(), Some("exit 0"));
    let text = daemon.wait_stderr("-> work qubes.ConnectTCP+8080: done after");
    assert!(
        text.contains(&format!("{} -> SOCKS5", daemon.address(0).shown())),
        "the listener line: {text}"
    );
}

/// 64 clients at once all get their bytes back, and the stand-in never has
/// more than the default 8 calls at once (the window made long enough that
/// only the end of a call frees its place). The clients hold their calls
/// open in batches of 8, so that the limit is reached, not just respected.
#[test]
fn a_burst_of_64_starts_at_most_8_at_once() {
    let world = Arc::new(world_with(7, echo_server()));
    let daemon = socks_daemon(&world, &["--starting-ms", "3600000"]);
    let addr = daemon.address(0).clone();
    let through = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..64)
        .map(|i| {
            let (addr, world, through) = (addr.clone(), world.clone(), through.clone());
            thread::spawn(move || {
                let mut conn = connect(&addr, "work.qube", 7);
                let batch = (through.fetch_add(1, Ordering::SeqCst) / 8 + 1) * 8;
                wait_until("the batch through", || {
                    through.load(Ordering::SeqCst) >= batch
                });
                wait_until("8 calls at once once", || world.concurrency().1 >= 8);
                let data = format!("client {i}\n").repeat(100);
                conn.write_all(data.as_bytes()).unwrap();
                conn.shutdown_write().unwrap();
                assert_eq!(read_all(&mut conn), data.as_bytes(), "client {i}");
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    world.finished_calls(64);
    let (running, max, started) = world.concurrency();
    assert_eq!((running, max, started), (0, 8, 64), "{}", daemon.stderr());
}

/// A call that lasts counts as starting for --starting-ms only: with one
/// place, a second call starts while the first still runs.
#[test]
fn a_long_call_frees_its_place_after_the_window() {
    let world = world_with(7, echo_server());
    let daemon = socks_daemon(&world, &["--max-starting", "1", "--starting-ms", "100"]);
    let first = connect(daemon.address(0), "work.qube", 7);
    let mut second = connect(daemon.address(0), "work.qube", 7);
    wait_until("two calls running at once", || world.concurrency().0 == 2);
    second.shutdown_write().unwrap();
    assert_eq!(read_all(&mut second), b"");
    drop(first);
}

/// A call dom0 refuses: the client got success, then the connection
/// closes; the log says why and, once, the policy line that would allow it.
#[test]
fn refused_by_policy() {
    let world = world_with(8080, http_server());
    world.policy("qubes.ConnectTCP * client work deny\n");
    let daemon = socks_daemon(&world, &[]);
    for _ in 0..2 {
        let mut conn = connect(daemon.address(0), "work.qube", 8080);
        let _ = conn.write_all(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(read_all(&mut conn), b"");
    }
    let out = curl(daemon.address(0), "http://work.qube:8080/");
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    let text = daemon.wait_stderr_count("(status 126)", 3);
    assert!(
        text.contains("-> work qubes.ConnectTCP+8080: refused by policy"),
        "{text}"
    );
    let line = "qubes.ConnectTCP  +8080  <this-qube>  work  allow";
    assert_eq!(text.matches(line).count(), 1, "{text}");
}

/// Each malformed or hostile handshake gets its exact reply and EOF, no
/// call is made, and a connection already through keeps working.
#[test]
fn malformed_and_hostile_handshakes_get_their_replies() {
    let world = world_with(7, echo_server());
    let daemon = socks_daemon(&world, &[]);
    let mut through = connect(daemon.address(0), "work.qube", 7);
    through.write_all(b"before ").unwrap();
    let greeted = |rest: &[u8]| [&[5u8, 1, 0][..], rest].concat();
    let accepted = |rest: Vec<u8>| [vec![5u8, 0], rest].concat();
    let mut bind = request("work.qube", 7);
    bind[1] = 2;
    let mut udp = request("work.qube", 7);
    udp[1] = 3;
    let mut v5 = request("work.qube", 7);
    v5[0] = 4;
    #[rustfmt::skip]
    let cases: Vec<(&str, Vec<u8>, Vec<u8>)> = vec![
        ("SOCKS4", vec![4, 1, 0, 80, 127, 0, 0, 1, 0], vec![]),
        ("HTTP", b"GET / HTTP/1.1\r\nHost: work.qube\r\n\r\n".to_vec(), vec![]),
        ("no method 0", vec![5, 2, 1, 2], vec![5, 0xff]),
        ("no method at all", vec![5, 0], vec![5, 0xff]),
        ("IPv4", greeted(&[5, 1, 0, 1, 127, 0, 0, 1, 0, 7]), accepted(reply(8))),
        ("IPv6", greeted(&[&[5u8, 1, 0, 4][..], &[0; 15], &[1, 0, 7]].concat()), accepted(reply(8))),
        ("unknown address type", greeted(&[5, 1, 0, 9]), accepted(reply(8))),
        ("BIND", greeted(&bind), accepted(reply(7))),
        ("UDP ASSOCIATE", greeted(&udp), accepted(reply(7))),
        ("request version 4", greeted(&v5), accepted(vec![])),
        ("not a qube", greeted(&request("example.com", 80)), accepted(reply(2))),
        ("port 0", greeted(&request("work.qube", 0)), accepted(reply(2))),
        ("bad qube name", greeted(&request("2work.qube", 7)), accepted(reply(4))),
        ("a keyword", greeted(&request("@default.qube", 7)), accepted(reply(4))),
        ("a rewritten name", greeted(&request("wo$rk.qube", 7)), accepted(reply(4))),
        ("control bytes", greeted(&request("a\nb.qube", 7)), accepted(reply(4))),
    ];
    each_case(&cases, |(_, send, expected)| {
        let mut conn = daemon.address(0).connect();
        conn.write_all(send).unwrap();
        assert_eq!(&read_all(&mut conn), expected);
    });
    through.write_all(b"and after").unwrap();
    through.shutdown_write().unwrap();
    assert_eq!(read_all(&mut through), b"before and after");
    // Asked once the first call has answered: its record is written by then.
    assert_eq!(
        world.calls().len(),
        1,
        "only the call of the first connection"
    );
    let text = daemon.wait_stderr("'example.com' is not a name QUBE.qube");
    assert!(text.contains("BIND (0x02) asked"), "{text}");
    assert!(text.contains("'a\\nb.qube'"), "escaped: {text}");
}

/// Clients that send nothing, or a byte now and then, are closed 10 s after
/// they connected; while 64 of them hold every handshake place, the next
/// connection waits in the backlog and is served once they are gone.
#[test]
fn silent_clients_are_closed_at_the_deadline() {
    let world = world_with(7, echo_server());
    let daemon = socks_daemon(&world, &[]);
    let addr = daemon.address(0).clone();
    // Connected first, so accepted among the first 64 (the backlog is FIFO).
    let mut dripping = addr.connect();
    let mut silent: Vec<Conn> = (0..63).map(|_| addr.connect()).collect();
    let dripping = thread::spawn(move || {
        for byte in [5u8, 1, 0] {
            dripping.write_all(&[byte]).unwrap();
            thread::sleep(Duration::from_secs(3));
        }
        read_all(&mut dripping)
    });
    // The 65th: accepted only when a place frees, at the others' deadline.
    let mut late = connect(&addr, "work.qube", 7);
    let mut closed = 0;
    for conn in &mut silent {
        conn.set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        closed += usize::from(matches!(conn.read(&mut [0u8]), Ok(0)));
    }
    assert!(
        closed > 0,
        "none of the 63 closed before the 65th was served"
    );
    for conn in &mut silent {
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        assert_eq!(read_all(conn), b"");
    }
    // The dripping client got its method reply, and nothing after.
    assert_eq!(dripping.join().unwrap(), [5, 0]);
    late.write_all(b"served").unwrap();
    late.shutdown_write().unwrap();
    assert_eq!(read_all(&mut late), b"served");
    daemon.wait_stderr("-> work qubes.ConnectTCP+7: done");
    let text = daemon.wait_stderr_count("no whole request within 10s", 64);
    assert_eq!(
        text.matches("no whole request within 10s").count(),
        64,
        "{text}"
    );
    assert_eq!(world.calls().len(), 1);
}

/// Under a real `systemd --user`, the shipped units (with a drop-in for the
/// address and a shorter idle time): the first connection starts the
/// service, which exits when idle and starts again for the next.
#[test]
fn idle_exit_and_restart_under_systemd() {
    let stage = TempDir::new("stage");
    make_install(stage.path());
    let world = World::new();
    world.policy("qubes.ConnectTCP +7 dev work allow\n");
    let echo = echo_server();
    tcp_service(&world, 7, echo);
    let Some(m) = lab::start(lab::installed_setup(&world, stage.path()), &world) else {
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    m.write_user_unit(
        "qrexec-connect-socks.socket.d/listen.conf",
        &format!("[Socket]\nListenStream=\nListenStream=127.0.0.1:{port}\n"),
    );
    m.write_user_unit(
        "qrexec-connect-socks.service.d/idle.conf",
        "[Service]\nExecStart=\nExecStart=/usr/local/bin/qrexec-connect-socks --exit-idle-time 1\n",
    );
    m.systemctl_ok(&["daemon-reload"]);
    m.systemctl_ok(&["enable", "--now", "qrexec-connect-socks.socket"]);
    let service = "qrexec-connect-socks.service";
    assert_eq!(m.is_active(service), "inactive");
    let addr = Address::Inet(SocketAddr::from(([127, 0, 0, 1], port)));
    let mut invocations = Vec::new();
    for round in 0..2 {
        let mut conn = connect(&addr, "work.qube", 7);
        conn.write_all(format!("round {round}").as_bytes()).unwrap();
        conn.shutdown_write().unwrap();
        assert_eq!(read_all(&mut conn), format!("round {round}").as_bytes());
        invocations.push(m.property(service, "InvocationID"));
        m.wait_until("the service exits idle", DEADLINE, || {
            m.is_active(service) == "inactive"
        });
        assert_eq!(m.property(service, "Result"), "success");
        assert_eq!(m.is_active("qrexec-connect-socks.socket"), "active");
    }
    assert_ne!(invocations[0], invocations[1], "started again");
    let log = m.journal(&[&format!("_SYSTEMD_USER_UNIT={service}")]);
    assert!(log.contains("-> work qubes.ConnectTCP+7: done"), "{log}");
}
