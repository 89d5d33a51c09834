//! Bytes through the client daemon, checked by sha256 in both directions:
//! many connections at once on every kind of listener, and one large one.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use common::{Activate, Conn, Listen, Program, World, echo_world, tcp_applet};

type Digest256 = [u8; 32];

fn sha256(bytes: &[u8]) -> Digest256 {
    Sha256::digest(bytes).into()
}

/// Reproducible bytes for connection `seed` (xorshift64*).
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 56) as u8
        })
        .collect()
}

/// What the service side of one connection saw.
#[derive(Debug)]
struct Seen {
    descriptor: String,
    received: Digest256,
    length: usize,
}

/// A socket service run by the test: it reads qrexec's service descriptor,
/// then answers every byte with its complement (so the two directions carry
/// different bytes), and reports the sha256 of what it received.
fn complement_server(path: &Path) -> Arc<Mutex<Vec<Seen>>> {
    let listener = UnixListener::bind(path).unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let report = seen.clone();
    // Ends with the test process.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let report = report.clone();
            std::thread::spawn(move || serve(conn.unwrap(), &report));
        }
    });
    seen
}

fn serve(conn: UnixStream, report: &Mutex<Vec<Seen>>) {
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    let mut descriptor = Vec::new();
    reader.read_until(0, &mut descriptor).unwrap();
    descriptor.pop();
    let mut hasher = Sha256::new();
    let mut length = 0;
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = reader.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        length += n;
        let answer: Vec<u8> = buf[..n].iter().map(|b| !b).collect();
        writer.write_all(&answer).unwrap();
    }
    writer.shutdown(std::net::Shutdown::Write).unwrap();
    report.lock().unwrap().push(Seen {
        descriptor: String::from_utf8(descriptor).unwrap(),
        received: hasher.finalize().into(),
        length,
    });
}

#[test]
fn thousand_connections_two_hundred_at_once() {
    const ROUNDS: u64 = 5;
    const AT_ONCE: u64 = 200;
    let world = World::new();
    let work = world.qube("work");
    let socket = work.dir().join("complement.sock");
    let seen = complement_server(&socket);
    work.socket_service("qubes.ConnectTCP", &socket);
    world.policy("qubes.ConnectTCP +1234 client work allow\n");
    let daemon = Activate::new(&world, Program::Applet("qrexec-connect-tcp".into()))
        .listen(Listen::Tcp4, "work")
        .listen(Listen::Tcp6, "work")
        .listen(Listen::Unix, "work qubes.ConnectTCP+1234")
        .listen(Listen::Abstract, "work")
        .args(["1234"])
        .start();

    // sha256 of what each connection sent -> how many sent it.
    let mut sent: BTreeMap<(Digest256, usize), usize> = BTreeMap::new();
    for round in 0..ROUNDS {
        let batch: Vec<(Conn, Vec<u8>)> = (0..AT_ONCE)
            .map(|i| {
                let k = round * AT_ONCE + i;
                let data = payload(k, 1 + (k as usize * 7919) % 16384);
                let mut conn = daemon.connect((k % 4) as usize);
                conn.write_all(&data).unwrap();
                (conn, data)
            })
            .collect();
        // Every answer is complete before any connection ends, so all 200
        // calls of the round run at once.
        let batch: Vec<(Conn, Vec<u8>)> = batch
            .into_iter()
            .map(|(mut conn, data)| {
                let mut answer = vec![0u8; data.len()];
                conn.read_exact(&mut answer).unwrap();
                let expected: Vec<u8> = data.iter().map(|b| !b).collect();
                assert_eq!(sha256(&answer), sha256(&expected), "service to client");
                (conn, data)
            })
            .collect();
        for (mut conn, data) in batch {
            assert_eq!(conn.exchange(b""), b"", "nothing after the answer");
            *sent.entry((sha256(&data), data.len())).or_default() += 1;
        }
    }

    let total = (ROUNDS * AT_ONCE) as usize;
    let calls = world.finished_calls(total);
    assert_eq!(calls.len(), total);
    assert!(
        calls
            .iter()
            .all(|r| r.status().as_deref() == Some("exit 0"))
    );
    let (running, max, started) = world.concurrency();
    assert_eq!((running, started), (0, total as u64));
    assert!(max >= AT_ONCE, "at most {max} calls ran at once");

    let seen = seen.lock().unwrap();
    assert_eq!(seen.len(), total);
    let mut received: BTreeMap<(Digest256, usize), usize> = BTreeMap::new();
    for s in seen.iter() {
        assert_eq!(s.descriptor, "qubes.ConnectTCP+1234 client");
        *received.entry((s.received, s.length)).or_default() += 1;
    }
    assert_eq!(received, sent, "client to service");
    daemon.wait_stderr_count(": done after ", total);
}

#[test]
fn large_transfer_both_ways() {
    const SIZE: usize = 16 << 20;
    let world = echo_world();
    let daemon = Activate::new(&world, tcp_applet())
        .listen(Listen::Tcp6, "work")
        .args(["1234"])
        .start();
    let data = payload(42, SIZE);
    let expected = sha256(&data);
    let mut conn = daemon.connect(0);
    let Conn::Tcp(stream) = &conn else {
        unreachable!("a TCP listener")
    };
    let mut writer = stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || {
        writer.write_all(&data).unwrap();
        writer.shutdown(std::net::Shutdown::Write).unwrap();
    });
    let mut echoed = Vec::with_capacity(SIZE);
    conn.read_to_end(&mut echoed).unwrap();
    sender.join().unwrap();
    assert_eq!(echoed.len(), SIZE);
    assert_eq!(sha256(&echoed), expected);
    assert_eq!(
        world.finished_calls(1)[0].status().as_deref(),
        Some("exit 0")
    );
}
