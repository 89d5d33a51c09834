//! qrexec-connect installed under a real `systemd --user` manager
//! (user_manager.rs) with the stand-in's world in place of Qubes, and what
//! the tests of it share: the manager's set-up, TCP and Unix servers standing
//! for the services in qubes, loopback addresses of a test's own, and the
//! assertions that a connection reached a qube (or nothing).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{chown, symlink};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::{self, JoinHandle};

use super::user_manager::{Setup, TestUser, UserManager};
use super::{DEADLINE as WAIT, World};

/// The client qube's name, as in policy-examples/.
pub const CLIENT: &str = "dev";

/// A manager set-up with the stand-in's world in place of Qubes: the
/// stand-in, run by the user's services, reads and records in `world`, and
/// its calls come from [`CLIENT`].
pub fn world_setup(world: &World) -> Setup {
    let mut setup = UserManager::setup().env("QREXEC_STANDIN_SOURCE", CLIENT);
    for (key, value) in world.env_for_other_user() {
        setup = setup.env(&key, value);
    }
    setup
}

/// [`world_setup`] with `stage`, where `make install` put qrexec-connect,
/// bind-mounted over /usr/local, so that the units and links are exactly
/// where a user's would be. The host's own /usr/local is hidden from the
/// manager's services; nothing they run lives there.
pub fn installed_setup(world: &World, stage: &Path) -> Setup {
    world_setup(world).bind(stage.join("usr/local"), "/usr/local")
}

/// Starts `setup`'s manager and hands `world` to its user, whose services
/// run the stand-in that records its calls there.
pub fn start(setup: Setup, world: &World) -> Option<UserManager> {
    let manager = setup.start()?;
    let user = manager.user();
    chown(world.root(), Some(user.uid), Some(user.gid)).unwrap();
    Some(manager)
}

/// Shows `paths` to the manager's services, read-only. The test home (and
/// what else a test keeps there) is under /tmp, which the services'
/// PrivateTmp= hides; a real one (/home/user) they see read-only
/// (ProtectHome=), and the client applets read their socket unit's drop-ins
/// there when two sockets share a name.
pub fn show_to_services(manager: &UserManager, paths: &[&Path]) {
    let conf = manager.outside("/run/systemd/user/qrexec-.service.d/50-test-home.conf");
    fs::create_dir_all(conf.parent().unwrap()).unwrap();
    let paths: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    fs::write(
        conf,
        format!("[Service]\nBindReadOnlyPaths={}\n", paths.join(" ")),
    )
    .unwrap();
}

/// In `qube`, `SERVICE+ARG` connects to a TCP port, as Qubes'
/// qubes.ConnectTCP symlink to /dev/tcp does.
pub fn tcp_service(world: &World, qube: &str, call: &str, to: SocketAddr) {
    symlink(
        format!("/dev/tcp/{}/{}", to.ip(), to.port()),
        services(world, qube).join(call),
    )
    .unwrap();
}

/// In `qube`, the service links `make install-service` installed into
/// `stage` (qubes.ConnectUnix, qubes.ConnectTCPBind, ...: our service
/// applets).
pub fn installed_services(world: &World, stage: &Path, qube: &str) {
    let dir = services(world, qube);
    for entry in fs::read_dir(stage.join("usr/local/etc/qubes-rpc")).unwrap() {
        let entry = entry.unwrap();
        let target = fs::read_link(entry.path()).unwrap();
        symlink(target, dir.join(entry.file_name())).unwrap();
    }
}

/// A qube's service directory (/usr/local/etc/qubes-rpc in it).
fn services(world: &World, qube: &str) -> std::path::PathBuf {
    let dir = world.qube(qube).dir().join("usr/local/etc/qubes-rpc");
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// A loopback address no other test of this process uses (and, by the pid
/// in it, most likely no other process either). A test file takes its own
/// range of last octets from `first` on, so that two test binaries whose
/// pids agree in the other octets do not meet.
pub fn loopback_from(first: u8) -> Ipv4Addr {
    static COUNT: AtomicUsize = AtomicUsize::new(0);
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let pid = std::process::id();
    Ipv4Addr::new(
        127,
        100 + (pid % 100) as u8,
        (pid / 100 % 250) as u8,
        first + n as u8,
    )
}

pub fn socket_addr(ip: Ipv4Addr, port: u16) -> SocketAddr {
    SocketAddr::from((ip, port))
}

/// A TCP server standing for a service in a qube: each connection is
/// handed to its handler in a thread of its own, until the server is dropped.
pub struct Backend {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Backend {
    /// Answers each connection, once its client has finished sending, with
    /// `NAME` and a line, then what it received.
    pub fn start(name: &str) -> Backend {
        let name = name.to_owned();
        Backend::serve("127.0.0.1:0", move |stream| answer_as(&name, stream))
    }

    /// Stands for an NFS server: answers each connection with the address
    /// it came from.
    pub fn peer_reporter(addr: &str) -> Backend {
        Backend::serve(addr, |mut stream| {
            let peer = stream
                .peer_addr()
                .map(|p| p.ip().to_string())
                .unwrap_or_default();
            let _ = stream.write_all(peer.as_bytes());
        })
    }

    fn serve(addr: &str, handle: impl Fn(TcpStream) + Clone + Send + 'static) -> Backend {
        let listener =
            TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} for a backend: {e}"));
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let handle = handle.clone();
                thread::spawn(move || handle(stream));
            }
        });
        Backend {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A Unix socket server at `path`, owned by `owner`, standing for a service
/// in a qube that qubes.ConnectUnix reaches: answers as [`Backend::start`]
/// does, until the test process ends (it holds nothing a test waits for).
pub fn unix_backend(path: &Path, name: &str, owner: &TestUser) {
    let dir = path.parent().unwrap();
    fs::create_dir_all(dir).unwrap();
    chown(dir, Some(owner.uid), Some(owner.gid)).unwrap();
    let listener = UnixListener::bind(path).unwrap();
    chown(path, Some(owner.uid), Some(owner.gid)).unwrap();
    let name = name.to_owned();
    thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            answer_as(&name, stream);
        }
    });
}

/// A backend's answer: once the client has finished sending, `NAME` and a
/// line, then what it received.
fn answer_as(name: &str, mut stream: impl Read + Write) {
    let mut received = Vec::new();
    if stream.read_to_end(&mut received).is_ok() {
        let _ = stream.write_all(format!("{name}\n").as_bytes());
        let _ = stream.write_all(&received);
    }
}

/// Sends `data`, half-closes, and returns the whole answer.
pub fn exchange(addr: SocketAddr, data: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream.write_all(data).unwrap();
    stream.shutdown(Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    stream
        .read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("read from {addr}: {e}"));
    answer
}

/// Asserts that a connection to `addr` reached the backend named `qube`
/// with all its bytes.
pub fn assert_reaches(addr: SocketAddr, qube: &str) {
    let data: Vec<u8> = (0..64 * 1024).map(|i| (i * 7 % 251) as u8).collect();
    let answer = exchange(addr, &data);
    let expected = [format!("{qube}\n").into_bytes(), data].concat();
    assert!(
        answer == expected,
        "{addr} answered {} bytes starting {:?}, expected {qube}'s echo of {} bytes",
        answer.len(),
        String::from_utf8_lossy(&answer[..answer.len().min(40)]),
        expected.len()
    );
}

/// Asserts that a connection to `addr` reaches `qube`'s backend, and that
/// qrexec-client-vm was called once for it, with the target `qube`.
pub fn assert_routed(world: &World, addr: SocketAddr, qube: &str) {
    let targets = || -> Vec<String> {
        world
            .calls()
            .iter()
            .filter_map(|r| r.target_raw())
            .collect()
    };
    let before = targets();
    assert_reaches(addr, qube);
    let mut new = targets();
    for old in before {
        if let Some(i) = new.iter().position(|t| *t == old) {
            new.swap_remove(i);
        }
    }
    assert_eq!(new, [qube], "the calls made for {addr}");
}

/// Asserts that a connection to `addr` is closed (or reset) with no answer,
/// as a refused call leaves it.
pub fn assert_no_answer(addr: SocketAddr) {
    let mut stream = TcpStream::connect_timeout(&addr, WAIT)
        .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let _ = stream.write_all(b"refused");
    let _ = stream.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => assert!(answer.is_empty(), "{addr} answered {answer:?}"),
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{addr}: {e}"),
    }
}

/// Asserts that a connection to `addr` gets nothing back (if it is accepted
/// at all): the service it starts refuses to run. Then that `service` fails
/// with status 2.
pub fn assert_fails_to_start(manager: &UserManager, addr: SocketAddr, service: &str) {
    let answer = TcpStream::connect(addr).and_then(|mut s| {
        s.set_read_timeout(Some(WAIT))?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).map(|_| buf)
    });
    assert!(answer.as_ref().map_or(true, Vec::is_empty), "{answer:?}");
    manager.wait_until("the service has failed", WAIT, || {
        manager.is_active(service) == "failed"
    });
    assert_eq!(manager.property(service, "ExecMainStatus"), "2");
}

/// A connection to `addr` through `service` with 1 MiB to send, half of
/// it sent and open in the service: for what happens to a connection while
/// the service stops.
pub struct HalfSent {
    stream: TcpStream,
    data: Vec<u8>,
}

impl HalfSent {
    pub fn open(manager: &UserManager, addr: SocketAddr, service: &str) -> HalfSent {
        let data: Vec<u8> = (0..1 << 20).map(|i| (i % 253) as u8).collect();
        let mut stream = TcpStream::connect_timeout(&addr, WAIT).unwrap();
        stream.set_read_timeout(Some(WAIT)).unwrap();
        stream.write_all(&data[..data.len() / 2]).unwrap();
        manager.wait_until("the connection is open in the service", WAIT, || {
            manager
                .property(service, "StatusText")
                .starts_with("1 active")
        });
        HalfSent { stream, data }
    }

    /// Sends the rest, half-closes, and asserts that the answer is the
    /// backend `qube`'s echo of every byte.
    pub fn finish(mut self, qube: &str) {
        let data = &self.data;
        self.stream.write_all(&data[data.len() / 2..]).unwrap();
        self.stream.shutdown(Shutdown::Write).unwrap();
        let mut answer = Vec::new();
        self.stream.read_to_end(&mut answer).unwrap();
        let expected = [format!("{qube}\n").as_bytes(), data].concat();
        assert!(
            answer == expected,
            "the connection lost bytes: {} of {}",
            answer.len(),
            expected.len()
        );
    }
}
