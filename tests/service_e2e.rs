//! End to end, one test per service applet: a client connects to the client
//! daemon (under the real systemd-socket-activate), which calls the qrexec
//! stand-in, which runs our service applet in the target qube as
//! qrexec-agent would (installed as a symlink in its qubes-rpc directory),
//! which relays to the real server.
//!
//! The qubes.ConnectNFS test needs port 2049 of 127.0.0.1; it is the only
//! test in this binary that takes it.

mod common;

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::symlink;
use std::os::unix::net::UnixListener;
use std::thread::{self, JoinHandle};

use common::{Activate, DEADLINE, Listen, Program, Qube, TempDir, World, wait_for};
use sha2::{Digest, Sha256};

/// 4 MiB and a bit: more than any buffer on the way.
const LEN: usize = (4 << 20) + 7;

fn request() -> Vec<u8> {
    (0..LEN).map(|i| (i * 7 + i / 4093) as u8).collect()
}

fn digest(data: &[u8]) -> String {
    Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The server's side of one connection: reads to end of file, then answers
/// with the length and digest of what it read.
fn answer(mut conn: impl Read + Write) {
    let mut got = Vec::new();
    conn.read_to_end(&mut got).unwrap();
    writeln!(conn, "{} {}", got.len(), digest(&got)).unwrap();
}

/// Accepts one connection on a TCP listener and answers it; gives the peer.
fn tcp_server(listener: TcpListener) -> JoinHandle<SocketAddr> {
    thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let (conn, peer) = wait_for("the service to connect", || listener.accept().ok());
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        answer(conn);
        peer
    })
}

/// Installs `applet` in the qube as qrexec-agent finds it: a symlink named
/// after the service in its qubes-rpc directory.
fn install(world: &World, qube: &Qube, applet: &str) {
    symlink(
        world.applet(applet),
        qube.dir().join("etc/qubes-rpc").join(applet),
    )
    .unwrap();
}

/// Sends the request through the daemon's first listener and checks the
/// server's answer and the stand-in's record of the call.
fn exchange(world: &World, daemon: &common::Daemon, call: &str) {
    let request = request();
    let reply = daemon.connect(0).exchange(&request);
    assert_eq!(
        String::from_utf8(reply).unwrap(),
        format!("{LEN} {}\n", digest(&request))
    );
    let calls = world.finished_calls(1);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].call_raw().as_deref(), Some(call));
    assert_eq!(calls[0].status().as_deref(), Some("exit 0"));
}

#[test]
fn connect_unix_end_to_end() {
    let world = World::new();
    let qube = world.qube("vault");
    install(&world, &qube, "qubes.ConnectUnix");
    // The agent's socket, linked into the allow-list as a Symlinks= drop-in would.
    let runtime = TempDir::new("runtime");
    let allow_list = runtime.path().join("qubes.ConnectUnix");
    fs::create_dir_all(&allow_list).unwrap();
    let socket = runtime.path().join("S.agent");
    let listener = UnixListener::bind(&socket).unwrap();
    symlink(&socket, allow_list.join("ssh-agent")).unwrap();
    qube.env("XDG_RUNTIME_DIR", &runtime.path().display().to_string());
    world.policy("qubes.ConnectUnix +ssh-agent client vault allow\n");
    let server = thread::spawn(move || {
        listener.set_nonblocking(true).unwrap();
        let (conn, _) = wait_for("the service to connect", || listener.accept().ok());
        conn.set_nonblocking(false).unwrap();
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        answer(conn);
    });

    let daemon = Activate::new(&world, Program::Applet("qrexec-connect-unix".into()))
        .listen(Listen::Unix, "vault")
        .args(["ssh-agent"])
        .start();
    exchange(&world, &daemon, "qubes.ConnectUnix+ssh-agent");
    server.join().unwrap();
}

#[test]
fn connect_tcp_bind_end_to_end() {
    let world = World::new();
    let qube = world.qube("web");
    install(&world, &qube, "qubes.ConnectTCPBind");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let argument = format!("{port}-127.0.1.5");
    world.policy(&format!(
        "qubes.ConnectTCPBind +{argument} client web allow\n"
    ));
    let server = tcp_server(listener);

    let daemon = Activate::new(&world, Program::Applet("qrexec-connect-tcp-bind".into()))
        .listen(Listen::Tcp4, "web")
        .args([argument.as_str()])
        .start();
    exchange(&world, &daemon, &format!("qubes.ConnectTCPBind+{argument}"));
    let peer = server.join().unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 1, 5)));
}

#[test]
fn connect_nfs_end_to_end() {
    let world = World::new();
    let qube = world.qube("nfs-server");
    install(&world, &qube, "qubes.ConnectNFS");
    let listener = TcpListener::bind("127.0.0.1:2049")
        .expect("port 2049 of 127.0.0.1 must be free for the qubes.ConnectNFS test");
    world.policy("qubes.ConnectNFS +127.0.1.6 client nfs-server allow\n");
    let server = tcp_server(listener);

    // The whole call in the socket's name, as in the seed's NFS example.
    let daemon = Activate::new(&world, Program::Plain)
        .listen(Listen::Tcp4, "nfs-server qubes.ConnectNFS+127.0.1.6")
        .start();
    exchange(&world, &daemon, "qubes.ConnectNFS+127.0.1.6");
    let peer = server.join().unwrap();
    assert_eq!(peer.ip(), IpAddr::V4(Ipv4Addr::new(127, 0, 1, 6)));
}
