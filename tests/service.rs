//! Black-box tests of the service applets (`qubes.ConnectUnix`,
//! `qubes.ConnectTCPBind`, `qubes.ConnectNFS`): the real binary, started
//! under each service name the way qrexec-agent starts it (argument in
//! QREXEC_SERVICE_ARGUMENT and argv[1], stdin and stdout two socketpairs, or
//! two pipes), against real servers on Unix sockets and 127.0.0.1.
//!
//! qubes.ConnectNFS always connects to port 2049: its tests take that port
//! one at a time (`NFS_PORT`).

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Shutdown, SocketAddr, TcpListener};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::symlink;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use common::{Conn, DEADLINE, Killed, TempDir, binary, each_case, wait_for};
use sha2::{Digest, Sha256};
use test_support::sys;
const REMOTE: &str = "client-qube";
const NFS: u16 = 2049;
const MIB: u64 = 1 << 20;

const UNIX: &str = "qubes.ConnectUnix";
const TCP_BIND: &str = "qubes.ConnectTCPBind";
const CONNECT_NFS: &str = "qubes.ConnectNFS";

// ---------------------------------------------------------------------------
// Fixtures

/// Port 2049 is one per machine: NFS tests take turns.
fn nfs_port() -> MutexGuard<'static, ()> {
    static NFS_PORT: Mutex<()> = Mutex::new(());
    NFS_PORT
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until `fd` is ready for `events` (POLLIN, POLLOUT); false at the timeout.
fn ready_within(fd: impl AsFd, events: libc::c_short, timeout: Duration) -> bool {
    sys::poll(fd.as_fd(), events, Some(timeout)).expect("poll")
}

/// Waits until `fd` is readable (a connection to accept, data to read).
fn readable_within(fd: impl AsFd, timeout: Duration) -> bool {
    ready_within(fd, libc::POLLIN, timeout)
}

/// Fails a read or write that could not start before the deadline: a
/// service that stops relaying fails the test instead of hanging it.
fn within_deadline(fd: impl AsFd, events: libc::c_short) -> io::Result<()> {
    if ready_within(fd, events, DEADLINE) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the service relayed nothing for too long",
        ))
    }
}

/// A listening socket the service should (or must not) reach.
enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

impl Listener {
    fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        match self {
            Listener::Unix(l) => l.as_fd(),
            Listener::Tcp(l) => l.as_fd(),
        }
    }

    /// Accepts one connection, failing the test if none comes in time.
    fn accept(&self) -> (Conn, Option<SocketAddr>) {
        assert!(
            readable_within(self.fd(), DEADLINE),
            "the service never connected"
        );
        let (conn, peer) = match self {
            Listener::Unix(l) => (Conn::Unix(l.accept().unwrap().0), None),
            Listener::Tcp(l) => {
                let (s, peer) = l.accept().unwrap();
                (Conn::Tcp(s), Some(peer))
            }
        };
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        conn.set_write_timeout(Some(DEADLINE)).unwrap();
        (conn, peer)
    }

    /// Whether a connection is waiting, without accepting it: after the
    /// service has exited, any connection it made is in the backlog.
    fn was_reached(&self) -> bool {
        readable_within(self.fd(), Duration::ZERO)
    }
}

/// Accepts one connection in a thread and runs `handler` on it.
fn serve<T: Send + 'static>(
    listener: Listener,
    handler: impl FnOnce(Conn) -> T + Send + 'static,
) -> JoinHandle<(Option<SocketAddr>, T)> {
    thread::spawn(move || {
        let (conn, peer) = listener.accept();
        (peer, handler(conn))
    })
}

/// Where one service applet connects, set up for a test.
struct Setup {
    applet: &'static str,
    argument: String,
    /// The source address a TCP service must connect from.
    bind: Option<Ipv4Addr>,
    runtime_dir: Option<PathBuf>,
    listener: Option<Listener>,
    dir: TempDir,
    _nfs: Option<MutexGuard<'static, ()>>,
}

impl Setup {
    fn new(applet: &'static str) -> Self {
        let dir = TempDir::new("svc");
        let (argument, bind, runtime_dir, listener, nfs) = match applet {
            UNIX => {
                // The real socket lives elsewhere; the allow-list holds a link.
                let real = dir.path().join("real");
                fs::create_dir(&real).unwrap();
                let listener = UnixListener::bind(real.join("agent.sock")).unwrap();
                let runtime = dir.path().join("runtime");
                fs::create_dir_all(runtime.join(UNIX)).unwrap();
                symlink(
                    real.join("agent.sock"),
                    runtime.join(UNIX).join("test-agent"),
                )
                .unwrap();
                (
                    "test-agent".to_owned(),
                    None,
                    Some(runtime),
                    Listener::Unix(listener),
                    None,
                )
            }
            TCP_BIND => {
                let listener = TcpListener::bind("127.0.0.1:0").unwrap();
                let port = listener.local_addr().unwrap().port();
                let bind = Ipv4Addr::new(127, 0, 1, 1);
                (
                    format!("{port}-{bind}"),
                    Some(bind),
                    None,
                    Listener::Tcp(listener),
                    None,
                )
            }
            CONNECT_NFS => {
                let guard = nfs_port();
                let listener = TcpListener::bind(("127.0.0.1", NFS))
                    .expect("port 2049 of 127.0.0.1 must be free for the qubes.ConnectNFS tests");
                let bind = Ipv4Addr::new(127, 0, 2, 49);
                (
                    bind.to_string(),
                    Some(bind),
                    None,
                    Listener::Tcp(listener),
                    Some(guard),
                )
            }
            _ => unreachable!(),
        };
        Setup {
            applet,
            argument,
            bind,
            runtime_dir,
            listener: Some(listener),
            dir,
            _nfs: nfs,
        }
    }

    fn take_listener(&mut self) -> Listener {
        self.listener.take().unwrap()
    }

    /// The command qrexec-agent would run for this call.
    fn command(&self) -> Command {
        service_command(self.applet, &self.argument, self.runtime_dir.as_deref())
    }

    /// Checks the TCP source address the server saw.
    fn check_peer(&self, peer: Option<SocketAddr>) {
        if let Some(bind) = self.bind {
            assert_eq!(peer.unwrap().ip(), IpAddr::V4(bind), "wrong source address");
        }
    }
}

/// `applet` as qrexec-agent runs it: argv[0] the service name, argv[1] the
/// argument when not empty, the argument also in QREXEC_SERVICE_ARGUMENT.
fn service_command(applet: &str, argument: &str, runtime_dir: Option<&Path>) -> Command {
    let mut cmd = Command::new(binary());
    cmd.arg0(applet)
        .env_clear()
        .env("QREXEC_SERVICE_ARGUMENT", argument)
        .env("QREXEC_SERVICE_FULL_NAME", format!("{applet}+{argument}"))
        .env("QREXEC_REMOTE_DOMAIN", REMOTE);
    if !argument.is_empty() {
        cmd.arg(argument);
    }
    if let Some(dir) = runtime_dir {
        cmd.env("XDG_RUNTIME_DIR", dir);
    }
    cmd
}

/// How the service's stdin and stdout are connected.
#[derive(Clone, Copy, Debug)]
enum Stdio2 {
    /// Two separate socketpairs, as qrexec-agent gives them.
    Sockets,
    /// Two pipes.
    Pipes,
}

/// A pipe (read end, write end), close-on-exec so that no other child
/// started meanwhile holds it open.
fn pipe() -> (fs::File, fs::File) {
    let (read, write) = sys::pipe().expect("pipe2");
    (read.into(), write.into())
}

/// Our end of the service's stdin.
enum Input {
    Socket(UnixStream),
    Pipe(fs::File),
}

impl Write for Input {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Input::Socket(s) => {
                within_deadline(&*s, libc::POLLOUT)?;
                s.write(buf)
            }
            Input::Pipe(p) => {
                within_deadline(&*p, libc::POLLOUT)?;
                p.write(buf)
            }
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Input {
    /// End of file for the service, as qrexec-agent signals it.
    fn close(self) {
        match self {
            Input::Socket(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
            Input::Pipe(p) => drop(p),
        }
    }
}

/// Our end of the service's stdout.
enum Output {
    Socket(UnixStream),
    Pipe(fs::File),
}

impl Read for Output {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Output::Socket(s) => {
                within_deadline(&*s, libc::POLLIN)?;
                s.read(buf)
            }
            Output::Pipe(p) => {
                within_deadline(&*p, libc::POLLIN)?;
                p.read(buf)
            }
        }
    }
}

/// A running service applet; killed by pid if the test ends early.
struct Service {
    child: Child,
    input: Option<Input>,
    output: Option<Output>,
    stderr: Option<JoinHandle<String>>,
}

impl Service {
    fn spawn(mut cmd: Command, stdio: Stdio2) -> Self {
        let (their_in, input, their_out, output): (OwnedFd, Input, OwnedFd, Output) = match stdio {
            Stdio2::Sockets => {
                let (ours_in, theirs_in) = UnixStream::pair().unwrap();
                let (ours_out, theirs_out) = UnixStream::pair().unwrap();
                (
                    theirs_in.into(),
                    Input::Socket(ours_in),
                    theirs_out.into(),
                    Output::Socket(ours_out),
                )
            }
            Stdio2::Pipes => {
                let (their_in, ours_in) = pipe();
                let (ours_out, their_out) = pipe();
                (
                    their_in.into(),
                    Input::Pipe(ours_in),
                    their_out.into(),
                    Output::Pipe(ours_out),
                )
            }
        };
        cmd.stdin(Stdio::from(their_in))
            .stdout(Stdio::from(their_out))
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("start the service");
        let mut err = child.stderr.take().unwrap();
        let stderr = thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        Service {
            child,
            input: Some(input),
            output: Some(output),
            stderr: Some(stderr),
        }
    }

    fn input(&mut self) -> Input {
        self.input.take().unwrap()
    }

    fn output(&mut self) -> Output {
        self.output.take().unwrap()
    }

    /// Waits for the service to exit; returns its status and stderr.
    fn wait(mut self) -> (ExitStatus, String) {
        let status = wait_exit(&mut self.child);
        let stderr = self.stderr.take().unwrap().join().unwrap();
        (status, stderr)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Waits for `child` to exit; fails the test after the deadline.
fn wait_exit(child: &mut Child) -> ExitStatus {
    wait_for("the service to exit", || child.try_wait().unwrap())
}

// ---------------------------------------------------------------------------
// Data

/// A deterministic stream of `len` bytes: 64 KiB blocks of seeded noise,
/// each stamped with its index, so a lost, repeated or swapped block shows.
struct Stream {
    block: Vec<u8>,
    len: u64,
}

impl Stream {
    fn new(seed: u64, len: u64) -> Self {
        let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let block = (0..1 << 16)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        Stream { block, len }
    }

    /// Writes the stream; returns the SHA-256 of what was written, or the
    /// error that stopped it.
    fn send(&mut self, out: &mut dyn Write) -> io::Result<[u8; 32]> {
        let mut hash = Sha256::new();
        let mut left = self.len;
        let mut index = 0u64;
        while left > 0 {
            let n = left.min(self.block.len() as u64) as usize;
            self.block[..8].copy_from_slice(&index.to_le_bytes());
            hash.update(&self.block[..n]);
            out.write_all(&self.block[..n])?;
            left -= n as u64;
            index += 1;
        }
        Ok(hash.finalize().into())
    }
}

/// Reads to end of file; returns how many bytes and their SHA-256.
fn digest_to_eof(input: &mut dyn Read) -> (u64, [u8; 32]) {
    let mut hash = Sha256::new();
    let mut buf = vec![0; 1 << 16];
    let mut total = 0;
    loop {
        match input.read(&mut buf) {
            Ok(0) => return (total, hash.finalize().into()),
            Ok(n) => {
                hash.update(&buf[..n]);
                total += n as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => panic!("read failed after {total} bytes: {e}"),
        }
    }
}

fn hex(digest: &[u8; 32]) -> String {
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

fn assert_clean_exit(status: ExitStatus, stderr: &str) {
    assert_eq!(status.code(), Some(0), "status {status}, stderr: {stderr}");
    assert_eq!(stderr, "", "nothing on stderr when all went well");
}

/// stderr is exactly one line, prefixed with the applet's name.
fn assert_one_line(stderr: &str, applet: &str) -> String {
    assert!(
        stderr.ends_with('\n') && stderr.matches('\n').count() == 1,
        "not one line: {stderr:?}"
    );
    assert!(stderr.starts_with(&format!("{applet}: ")), "{stderr:?}");
    stderr.trim_end().to_owned()
}

// ---------------------------------------------------------------------------
// Relaying

/// The client sends a stream and closes its side; the server reads to end of
/// file and only then answers with the digest of what it read.
fn request_then_digest(applet: &'static str, stdio: Stdio2) {
    let mut setup = Setup::new(applet);
    let server = serve(setup.take_listener(), |mut conn| {
        let (len, digest) = digest_to_eof(&mut conn);
        conn.write_all(format!("{len} {}\n", hex(&digest)).as_bytes())
            .unwrap();
    });
    let mut service = Service::spawn(setup.command(), stdio);
    let mut input = service.input();
    let sent = Stream::new(1, 3 * MIB + 17).send(&mut input).unwrap();
    input.close();
    let mut answer = String::new();
    service.output().read_to_string(&mut answer).unwrap();
    assert_eq!(answer, format!("{} {}\n", 3 * MIB + 17, hex(&sent)));
    let (peer, ()) = server.join().unwrap();
    setup.check_peer(peer);
    let (status, stderr) = service.wait();
    assert_clean_exit(status, &stderr);
}

/// Every applet, over socketpairs and over pipes.
const EVERY_APPLET_AND_STDIO: &[(&str, Stdio2)] = &[
    (UNIX, Stdio2::Sockets),
    (UNIX, Stdio2::Pipes),
    (TCP_BIND, Stdio2::Sockets),
    (TCP_BIND, Stdio2::Pipes),
    (CONNECT_NFS, Stdio2::Sockets),
    (CONNECT_NFS, Stdio2::Pipes),
];

#[test]
fn half_close() {
    each_case(EVERY_APPLET_AND_STDIO, |&(applet, stdio)| {
        request_then_digest(applet, stdio)
    });
}

/// The server speaks first and ends its side; the client reads that end of
/// file while its own side is still open, then sends, and the server gets it.
fn server_ends_first(applet: &'static str, stdio: Stdio2) {
    let mut setup = Setup::new(applet);
    let server = serve(setup.take_listener(), |mut conn| {
        conn.write_all(b"greeting").unwrap();
        let _ = conn.shutdown_write();
        let mut late = Vec::new();
        conn.read_to_end(&mut late).unwrap();
        late
    });
    let mut service = Service::spawn(setup.command(), stdio);
    let mut output = service.output();
    let mut greeting = Vec::new();
    output.read_to_end(&mut greeting).unwrap();
    assert_eq!(greeting, b"greeting");
    let mut input = service.input();
    input.write_all(b"after the server's end").unwrap();
    input.close();
    let (_, late) = server.join().unwrap();
    assert_eq!(late, b"after the server's end");
    let (status, stderr) = service.wait();
    assert_clean_exit(status, &stderr);
}

#[test]
fn server_ends_first_then_the_client_sends() {
    each_case(
        &[(UNIX, Stdio2::Sockets), (TCP_BIND, Stdio2::Pipes)],
        |&(applet, stdio)| server_ends_first(applet, stdio),
    );
}

/// `len` bytes each way at once, each stream checked by SHA-256 at its end.
fn integrity(applet: &'static str, stdio: Stdio2, len: u64, env: &[(&str, &str)]) {
    let mut setup = Setup::new(applet);
    let server = serve(setup.take_listener(), move |conn| {
        let mut reader = conn.try_clone().unwrap();
        let received = thread::spawn(move || digest_to_eof(&mut reader));
        let mut conn = conn;
        let sent = Stream::new(3, len).send(&mut conn).unwrap();
        let _ = conn.shutdown_write();
        (sent, received.join().unwrap())
    });
    let mut cmd = setup.command();
    cmd.envs(env.iter().copied());
    let mut service = Service::spawn(cmd, stdio);
    let mut input = service.input();
    let client = thread::spawn(move || {
        let sent = Stream::new(2, len).send(&mut input).unwrap();
        input.close();
        sent
    });
    let (received_len, received) = digest_to_eof(&mut service.output());
    let client_sent = client.join().unwrap();
    let (peer, (server_sent, (server_received_len, server_received))) = server.join().unwrap();
    setup.check_peer(peer);
    assert_eq!(server_received_len, len, "bytes that reached the server");
    assert_eq!(hex(&server_received), hex(&client_sent), "stdin -> server");
    assert_eq!(received_len, len, "bytes that reached stdout");
    assert_eq!(hex(&received), hex(&server_sent), "server -> stdout");
    let (status, stderr) = service.wait();
    assert_clean_exit(status, &stderr);
}

/// 256 MiB each way through splice for each applet, and 64 MiB through the
/// read/write fallback (`QREXEC_CONNECT_RELAY=copy`).
#[test]
fn each_way_at_once_intact() {
    let splice: &[(&str, &str)] = &[];
    let copy: &[(&str, &str)] = &[("QREXEC_CONNECT_RELAY", "copy")];
    each_case(
        &[
            (UNIX, Stdio2::Sockets, 256 * MIB, splice),
            (TCP_BIND, Stdio2::Pipes, 256 * MIB, splice),
            (CONNECT_NFS, Stdio2::Sockets, 256 * MIB, splice),
            (TCP_BIND, Stdio2::Sockets, 64 * MIB, copy),
        ],
        |&(applet, stdio, len, env)| integrity(applet, stdio, len, env),
    );
}

/// splice(2) refuses a file opened with O_APPEND (EINVAL): stdout appended
/// to a file still gets every byte, through the read/write fallback.
#[test]
fn splice_einval_falls_back_to_read_write() {
    let mut setup = Setup::new(UNIX);
    let len = 8 * MIB + 5;
    let server = serve(setup.take_listener(), move |mut conn| {
        let sent = Stream::new(4, len).send(&mut conn).unwrap();
        let _ = conn.shutdown_write();
        sent
    });
    let out_path = setup.dir.path().join("appended");
    fs::write(&out_path, b"").unwrap();
    let out = fs::OpenOptions::new().append(true).open(&out_path).unwrap();
    let trace = setup.dir.path().join("trace");
    let mut cmd = match strace() {
        Some(strace) => {
            let mut cmd = Command::new(strace);
            cmd.args(["-f", "-qq", "-e", "trace=splice", "-o"])
                .arg(&trace)
                .arg(applet_link(&setup.dir, UNIX))
                .arg(&setup.argument);
            cmd
        }
        None => setup.command(),
    };
    cmd.env_clear()
        .env("QREXEC_SERVICE_ARGUMENT", &setup.argument)
        .env("XDG_RUNTIME_DIR", setup.runtime_dir.as_ref().unwrap())
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(Stdio::piped());
    let mut child = Killed(cmd.spawn().unwrap());
    let mut err = child.0.stderr.take().unwrap();
    let stderr = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_exit(&mut child.0);
    let (_, sent) = server.join().unwrap();
    assert_clean_exit(status, &stderr.join().unwrap());
    let mut file = fs::File::open(&out_path).unwrap();
    let (got_len, got) = digest_to_eof(&mut file);
    assert_eq!((got_len, hex(&got)), (len, hex(&sent)));
    if strace().is_some() {
        let trace = fs::read_to_string(&trace).unwrap();
        assert!(
            trace.lines().any(|l| l.contains("= -1 EINVAL")),
            "splice never failed with EINVAL, so the fallback was not exercised:\n{trace}"
        );
    }
}

#[test]
fn peer_reset_ends_the_relay() {
    let mut setup = Setup::new(TCP_BIND);
    let server = serve(setup.take_listener(), |mut conn| {
        let mut some = [0; 4096];
        conn.read_exact(&mut some).unwrap();
        conn.reset();
    });
    let mut service = Service::spawn(setup.command(), Stdio2::Sockets);
    let mut input = service.input();
    // Keeps sending until the service is gone (EPIPE).
    let client = thread::spawn(move || Stream::new(5, 1 << 30).send(&mut input).is_err());
    let mut output = service.output();
    let reader = thread::spawn(move || digest_to_eof(&mut output));
    server.join().unwrap();
    let (status, stderr) = service.wait();
    assert!(client.join().unwrap(), "the client could send 1 GiB");
    reader.join().unwrap();
    assert_eq!(status.signal(), None, "killed by a signal: {status}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = assert_one_line(&stderr, TCP_BIND);
    assert!(
        line.contains("reset by peer") || line.contains("Broken pipe"),
        "{line}"
    );
}

/// The caller closes its end of stdout: the relay ends with EPIPE, not with
/// SIGPIPE.
fn closed_stdout(stdio: Stdio2) {
    let mut setup = Setup::new(UNIX);
    let server = serve(setup.take_listener(), |mut conn| {
        // Ends with an error once the service is gone.
        let _ = Stream::new(6, 1 << 30).send(&mut conn);
    });
    let mut service = Service::spawn(setup.command(), stdio);
    drop(service.output());
    let (status, stderr) = service.wait();
    server.join().unwrap();
    assert_eq!(status.signal(), None, "killed by a signal: {status}");
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = assert_one_line(&stderr, UNIX);
    assert!(
        line.contains("stdout") && line.contains("Broken pipe"),
        "{line}"
    );
}

#[test]
fn closed_stdout_is_epipe_not_sigpipe() {
    each_case(&[Stdio2::Pipes, Stdio2::Sockets], |&stdio| {
        closed_stdout(stdio)
    });
}

// ---------------------------------------------------------------------------
// Peers that are not there

/// Runs a service that is not expected to relay anything (stdin empty);
/// kills it at the deadline.
fn run_to_end(mut cmd: Command) -> (ExitStatus, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = Killed(cmd.spawn().unwrap());
    let mut out = child.0.stdout.take().unwrap();
    let mut err = child.0.stderr.take().unwrap();
    let stdout = thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let stderr = thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let status = wait_exit(&mut child.0);
    assert_eq!(
        stdout.join().unwrap(),
        b"",
        "stdout carries relayed data only"
    );
    (status, stderr.join().unwrap())
}

#[test]
fn missing_unix_socket_says_how_to_link_it() {
    let dir = TempDir::new("svc");
    fs::create_dir_all(dir.path().join(UNIX)).unwrap();
    let (status, stderr) = run_to_end(service_command(UNIX, "gpg-agent-ssh", Some(dir.path())));
    assert_eq!(status.code(), Some(1));
    let line = assert_one_line(&stderr, UNIX);
    assert!(line.contains("'gpg-agent-ssh'"), "{line}");
    assert!(
        line.contains(&format!("{}/{UNIX}/", dir.path().display())),
        "{line}"
    );
    assert!(
        line.contains("Symlinks=%t/qubes.ConnectUnix/gpg-agent-ssh"),
        "{line}"
    );
}

#[test]
fn dangling_link_is_a_missing_socket() {
    let dir = TempDir::new("svc");
    fs::create_dir_all(dir.path().join(UNIX)).unwrap();
    symlink(
        dir.path().join("gone.sock"),
        dir.path().join(UNIX).join("agent"),
    )
    .unwrap();
    let (status, stderr) = run_to_end(service_command(UNIX, "agent", Some(dir.path())));
    assert_eq!(status.code(), Some(1));
    let line = assert_one_line(&stderr, UNIX);
    assert!(
        line.contains("no socket 'agent'") && line.contains("Symlinks="),
        "{line}"
    );
}

#[test]
fn socket_without_listener_is_refused() {
    let dir = TempDir::new("svc");
    fs::create_dir_all(dir.path().join(UNIX)).unwrap();
    let path = dir.path().join(UNIX).join("agent");
    drop(UnixListener::bind(&path).unwrap());
    let (status, stderr) = run_to_end(service_command(UNIX, "agent", Some(dir.path())));
    assert_eq!(status.code(), Some(1));
    let line = assert_one_line(&stderr, UNIX);
    assert!(line.contains("connection refused"), "{line}");
    assert!(line.contains(&path.display().to_string()), "{line}");
}

#[test]
fn without_xdg_runtime_dir_uses_run_user_uid() {
    let uid = sys::getuid();
    // A name nobody has linked, so the message shows where it was looked for.
    let name = format!("qc-test-absent-{}", std::process::id());
    let (status, stderr) = run_to_end(service_command(UNIX, &name, None));
    assert_eq!(status.code(), Some(1));
    let line = assert_one_line(&stderr, UNIX);
    assert!(line.contains(&format!("/run/user/{uid}/{UNIX}/")), "{line}");
}

#[test]
fn refused_tcp_port_names_it() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (status, stderr) = run_to_end(service_command(
        TCP_BIND,
        &format!("{port}-127.0.1.1"),
        None,
    ));
    assert_eq!(status.code(), Some(1));
    let line = assert_one_line(&stderr, TCP_BIND);
    assert!(line.contains(&format!("TCP port {port}")), "{line}");
    assert!(line.contains("127.0.1.1"), "{line}");
}

#[test]
fn refused_nfs_port_names_the_nfs_server() {
    let _port = nfs_port();
    let (status, stderr) = run_to_end(service_command(CONNECT_NFS, "127.0.1.1", None));
    assert_eq!(status.code(), Some(1));
    let line = assert_one_line(&stderr, CONNECT_NFS);
    assert!(
        line.contains("TCP port 2049") && line.contains("NFS server"),
        "{line}"
    );
}

// ---------------------------------------------------------------------------
// Bad arguments: status 2, one line, and nothing touched

/// strace, if installed: with it, the bad-argument tests prove that no
/// file-system or network call was made. CI installs it.
fn strace() -> Option<PathBuf> {
    let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join("strace"))
        .find(|p| p.is_file());
    if found.is_none() && std::env::var_os("CI").is_some() {
        panic!("strace is missing (apt-get install strace)");
    }
    found
}

/// A link named like the applet, so that strace can start it under that name.
fn applet_link(dir: &TempDir, applet: &str) -> PathBuf {
    let bin = dir.path().join("bin");
    let _ = fs::create_dir(&bin);
    let link = bin.join(applet);
    if !link.exists() {
        symlink(binary(), &link).unwrap();
    }
    link
}

/// Runs `applet` with a bad `argument` (in the environment and `argv`, as
/// qrexec would) next to `traps`, listeners where a lax parser could lead:
/// it exits 2 with one line, `APPLET: error: REASON`, and touches nothing.
fn refuses(
    applet: &'static str,
    argument: &str,
    argv: &[&str],
    traps: &[Listener],
    runtime: &Path,
    reason: &str,
) {
    let dir = TempDir::new("svc");
    let trace = dir.path().join("trace");
    let traced = strace();
    let mut cmd = match &traced {
        Some(strace) => {
            let mut cmd = Command::new(strace);
            cmd.args(["-f", "-qq", "-e", "trace=%file,%network", "-o"])
                .arg(&trace)
                .arg(applet_link(&dir, applet));
            cmd
        }
        None => {
            let mut cmd = Command::new(binary());
            cmd.arg0(applet);
            cmd
        }
    };
    cmd.args(argv)
        .env_clear()
        .env("QREXEC_SERVICE_ARGUMENT", argument)
        .env("QREXEC_REMOTE_DOMAIN", REMOTE)
        .env("XDG_RUNTIME_DIR", runtime);
    let (status, stderr) = run_to_end(cmd);
    assert_eq!(status.code(), Some(2), "{argument:?}: {stderr}");
    assert_eq!(
        stderr,
        format!("{applet}: error: {reason}\n"),
        "{argument:?}: the one line and its reason"
    );
    for (i, trap) in traps.iter().enumerate() {
        assert!(!trap.was_reached(), "{argument:?} reached trap {i}");
    }
    if traced.is_some() {
        let trace = fs::read_to_string(&trace).unwrap();
        let touched: Vec<&str> = trace
            .lines()
            .skip(1) // the execve of the applet itself
            .filter(|line| !is_runtime_start_up(line))
            .collect();
        assert!(
            touched.is_empty(),
            "{argument:?}: file-system or network calls before the refusal:\n{}",
            touched.join("\n")
        );
    }
}

/// What the static Rust runtime does at start-up, whatever the arguments:
/// glibc reads /proc/self/exe, std reads /proc/self/maps for the stack guard.
fn is_runtime_start_up(line: &str) -> bool {
    // `PID  call(...) = result`, the pid padded to a width.
    let Some(call) = line.split_once(' ').map(|(_, rest)| rest.trim_start()) else {
        return false;
    };
    call.starts_with("readlink(\"/proc/self/exe\"")
        || call.starts_with("openat(AT_FDCWD, \"/proc/self/maps\"")
        || (call.starts_with("newfstatat(")
            && call.contains(", \"\", ")
            && call.contains("AT_EMPTY_PATH"))
}

/// A runtime directory whose allow-list holds a listening socket under each
/// of `names`, and under `outside` relative to the runtime directory.
fn unix_traps(dir: &TempDir, names: &[&str], outside: &[&str]) -> (PathBuf, Vec<Listener>) {
    let runtime = dir.path().join("runtime");
    let list = runtime.join(UNIX);
    fs::create_dir_all(&list).unwrap();
    let mut traps = Vec::new();
    for name in names {
        let path = list.join(name);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        traps.push(Listener::Unix(UnixListener::bind(path).unwrap()));
    }
    for name in outside {
        traps.push(Listener::Unix(
            UnixListener::bind(runtime.join(name)).unwrap(),
        ));
    }
    (runtime, traps)
}

/// The argument as qrexec passes it in argv: none when it is empty.
fn argv_of(argument: &str) -> Vec<&str> {
    [argument].into_iter().filter(|a| !a.is_empty()).collect()
}

/// A bad socket name for qubes.ConnectUnix: the name, listeners under these
/// names in the allow-list and outside it (where a lax parser could lead),
/// and the reason it is refused.
#[test]
fn unix_refuses_bad_names() {
    // "qubes.ConnectUnix+" and the name must fit qrexec's 63 bytes.
    let long = "a".repeat(63 - "qubes.ConnectUnix+".len() + 1);
    let not_allowed =
        |c: &str| format!("character '{c}' is not allowed in a socket name (A-Z a-z 0-9 _ . -)");
    let starts_with_dot = |name: &str| format!("socket name '{name}' starts with '.'");
    let cases: &[(&str, &[&str], &[&str], String)] = &[
        ("", &[], &[], "empty socket name".into()),
        (".", &[], &[], starts_with_dot(".")),
        ("..", &[], &[], starts_with_dot("..")),
        (".hidden", &[".hidden"], &[], starts_with_dot(".hidden")),
        (
            "../outside",
            &[],
            &["outside"],
            starts_with_dot("../outside"),
        ),
        ("sub/agent", &["sub/agent"], &[], not_allowed("/")),
        ("an agent", &["an agent"], &[], not_allowed(" ")),
        ("a+b", &["a+b"], &[], not_allowed("+")),
        // One that qrexec would replace with '_'.
        ("agent*", &["agent*"], &[], not_allowed("*")),
        ("agént", &["agént"], &[], not_allowed("é")),
        ("agent\nx", &["agent\nx"], &[], not_allowed("\\n")),
        (
            &long,
            &[long.as_str()],
            &[],
            "socket name longer than 45 bytes (the whole call must fit in 63)".into(),
        ),
    ];
    each_case(cases, |(argument, names, outside, reason)| {
        let dir = TempDir::new("svc");
        let (runtime, traps) = unix_traps(&dir, names, outside);
        refuses(UNIX, argument, &argv_of(argument), &traps, &runtime, reason);
    });
}

/// argv that is not the argument in the environment, as qrexec gives it.
#[test]
fn unix_refuses_argv_other_than_the_argument() {
    // (QREXEC_SERVICE_ARGUMENT, argv, reason)
    let cases: &[(&str, &[&str], &str)] = &[
        (
            "agent",
            &["other"],
            "argument 'other' differs from QREXEC_SERVICE_ARGUMENT 'agent'",
        ),
        (
            "",
            &["agent"],
            "argument 'agent' differs from QREXEC_SERVICE_ARGUMENT ''",
        ),
        (
            "agent",
            &["agent", "agent"],
            "expected at most one argument (the call's), got 2",
        ),
    ];
    each_case(cases, |(argument, argv, reason)| {
        let dir = TempDir::new("svc");
        let (runtime, traps) = unix_traps(&dir, &["agent", "other"], &[]);
        refuses(UNIX, argument, argv, &traps, &runtime, reason);
    });
}

/// Why a bind address is refused (qubes.ConnectTCPBind and qubes.ConnectNFS).
fn not_ipv4(address: &str) -> String {
    format!("bind address '{address}' is not an IPv4 address like 127.0.1.1")
}

fn outside_loopback(address: &str) -> String {
    format!(
        "bind address '{address}' is outside 127.0.0.0/8: the bind side stays on the loopback interface"
    )
}

fn broadcast(address: &str) -> String {
    format!("bind address '{address}' is the broadcast address of 127.0.0.0/8, not a host")
}

/// A bad PORT-BINDADDR for qubes.ConnectTCPBind, with a trap listening on
/// 127.0.0.1 at the port it names: `{port}` in the argument and the reason
/// is the trap's port, `{port+65536}` that plus 65536 (taken modulo 65536,
/// it would be the trap's port).
#[test]
fn tcp_bind_refuses_bad_arguments() {
    let no_pair = "'{arg}' is not PORT-BINDADDR (for example 2049-127.0.1.1)";
    let port =
        |p: &str| format!("port '{p}' is not a number from 1 to 65535 without leading zeros");
    let cases: &[(&str, String)] = &[
        ("", no_pair.into()),
        ("{port}", no_pair.into()),
        ("-127.0.1.1", port("")),
        ("0-127.0.1.1", port("0")),
        ("{port+65536}-127.0.1.1", port("{port+65536}")),
        ("0{port}-127.0.1.1", port("0{port}")),
        ("+{port}-127.0.1.1", port("+{port}")),
        ("{port}-", not_ipv4("")),
        ("{port}-10.0.0.1", outside_loopback("10.0.0.1")),
        ("{port}-::1", not_ipv4("::1")),
        ("{port}-127.255.255.255", broadcast("127.255.255.255")),
        ("{port}-127.1", not_ipv4("127.1")),
        ("{port}-127.0.0.01", not_ipv4("127.0.0.01")),
        ("{port}-127.0.1.1-x", not_ipv4("127.0.1.1-x")),
    ];
    each_case(cases, |(argument, reason)| {
        let dir = TempDir::new("svc");
        let trap = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = trap.local_addr().unwrap().port();
        let fill = |text: &str| {
            text.replace("{port+65536}", &(u32::from(port) + 65536).to_string())
                .replace("{port}", &port.to_string())
        };
        let argument = fill(argument);
        let reason = fill(reason).replace("{arg}", &argument);
        let traps = [Listener::Tcp(trap)];
        refuses(
            TCP_BIND,
            &argument,
            &argv_of(&argument),
            &traps,
            dir.path(),
            &reason,
        );
    });
}

/// A bad BINDADDR for qubes.ConnectNFS, with a trap on port 2049.
#[test]
fn nfs_refuses_bad_arguments() {
    let cases: &[(&str, String)] = &[
        ("", not_ipv4("")),
        ("10.0.0.1", outside_loopback("10.0.0.1")),
        ("::1", not_ipv4("::1")),
        ("127.255.255.255", broadcast("127.255.255.255")),
        ("127.1", not_ipv4("127.1")),
        // inet_aton(3) would read it as 127.0.1.1.
        ("2130706689", not_ipv4("2130706689")),
        ("2049-127.0.1.1", not_ipv4("2049-127.0.1.1")),
        ("localhost", not_ipv4("localhost")),
    ];
    each_case(cases, |(argument, reason)| {
        let _port = nfs_port();
        let dir = TempDir::new("svc");
        let trap = Listener::Tcp(TcpListener::bind(("127.0.0.1", NFS)).unwrap());
        refuses(
            CONNECT_NFS,
            argument,
            &argv_of(argument),
            &[trap],
            dir.path(),
            reason,
        );
    });
}

// ---------------------------------------------------------------------------
// The journal

/// With a journal reachable, one line per connection goes there, with the
/// applet as identifier; nothing goes to stderr. The journal socket is the
/// test's own, mounted over /run in a private mount namespace (root only).
#[test]
fn one_journal_line_per_connection() {
    if sys::geteuid() != 0 {
        eprintln!("skipped: needs root for a private mount namespace");
        return;
    }
    // A container without CAP_SYS_ADMIN cannot make one, even as root.
    let probe = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .status();
    if !probe.is_ok_and(|s| s.success()) {
        eprintln!("skipped: unshare --mount is not permitted here");
        return;
    }
    let mut setup = Setup::new(UNIX);
    let run = setup.dir.path().join("run");
    fs::create_dir_all(run.join("systemd/journal")).unwrap();
    let journal = UnixDatagram::bind(run.join("systemd/journal/socket")).unwrap();
    let server = serve(setup.take_listener(), |mut conn| {
        let (len, _) = digest_to_eof(&mut conn);
        conn.write_all(b"0123456789").unwrap();
        len
    });
    let link = applet_link(&setup.dir, UNIX);
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(r#"mount --bind "$1" /run && exec "$2" "$3""#)
        .arg("sh")
        .arg(&run)
        .arg(&link)
        .arg(&setup.argument)
        .env("QREXEC_SERVICE_ARGUMENT", &setup.argument)
        .env("QREXEC_REMOTE_DOMAIN", REMOTE)
        .env("XDG_RUNTIME_DIR", setup.runtime_dir.as_ref().unwrap());
    let mut service = Service::spawn(cmd, Stdio2::Sockets);
    let mut input = service.input();
    input.write_all(b"hello").unwrap();
    input.close();
    let mut answer = Vec::new();
    service.output().read_to_end(&mut answer).unwrap();
    assert_eq!(answer, b"0123456789");
    assert_eq!(server.join().unwrap().1, 5);
    let (status, stderr) = service.wait();
    assert_clean_exit(status, &stderr);

    let mut entries = Vec::new();
    journal.set_nonblocking(true).unwrap();
    let mut buf = vec![0; 1 << 16];
    while let Ok(n) = journal.recv(&mut buf) {
        // The logger's empty probe when it connects carries nothing.
        if n > 0 {
            entries.push(journal_fields(&buf[..n]));
        }
    }
    assert_eq!(entries.len(), 1, "{entries:#?}");
    let field = |name: &str| {
        entries[0]
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(field("SYSLOG_IDENTIFIER"), Some(UNIX));
    assert_eq!(field("PRIORITY"), Some("5"), "info");
    let message = field("MESSAGE").unwrap();
    assert!(
        message.starts_with(&format!(
            "connection from {REMOTE} to test-agent: 5 bytes sent, 10 received, "
        )),
        "{message}"
    );
    assert_eq!(field("QREXEC_REMOTE_DOMAIN"), Some(REMOTE));
    assert_eq!(field("QREXEC_SERVICE_ARGUMENT"), Some("test-agent"));
}

/// Decodes a datagram of the journal's native protocol: `KEY=value\n`, or
/// `KEY\n`, a little-endian u64 length, the value and `\n`.
fn journal_fields(mut data: &[u8]) -> Vec<(String, String)> {
    let mut fields = Vec::new();
    while !data.is_empty() {
        let end = data.iter().position(|&b| b == b'\n').unwrap();
        let line = &data[..end];
        data = &data[end + 1..];
        let (key, value) = match line.iter().position(|&b| b == b'=') {
            Some(eq) => (&line[..eq], &line[eq + 1..]),
            None => {
                let len = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
                let value = &data[8..8 + len];
                data = &data[8 + len + 1..];
                (line, value)
            }
        };
        fields.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    fields
}

#[test]
fn help_only_when_started_by_hand() {
    let out = Command::new(binary())
        .arg0(TCP_BIND)
        .arg("--help")
        .env_remove("QREXEC_SERVICE_ARGUMENT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(
        help.starts_with("Usage: qubes.ConnectTCPBind PORT-BINDADDR"),
        "{help}"
    );
    // From qrexec, `--help` is just a (bad) argument, never an option.
    let dir = TempDir::new("svc");
    refuses(
        TCP_BIND,
        "--help",
        &["--help"],
        &[],
        dir.path(),
        "port '' is not a number from 1 to 65535 without leading zeros",
    );
}

/// Installed as qrexec's file for one argument only
/// (`/etc/qubes-rpc/qubes.ConnectUnix+agent`), the applet is the service
/// before the `+`, and the call's argument must be the one after it
/// (issue 15, item 7).
#[test]
fn per_argument_service_name_runs_its_applet_for_its_argument_only() {
    let dir = TempDir::new("service");
    fs::create_dir_all(dir.path().join(UNIX)).unwrap();
    let path = dir.path().join(UNIX).join("agent");
    drop(UnixListener::bind(&path).unwrap());
    let pinned = "qubes.ConnectUnix+agent";
    // The applet runs: it reaches the socket, which refuses.
    let (status, stderr) = run_to_end(service_command(pinned, "agent", Some(dir.path())));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = assert_one_line(&stderr, UNIX);
    assert!(line.contains("connection refused"), "{line}");
    // Another argument under that name is refused before anything.
    let (status, stderr) = run_to_end(service_command(pinned, "other", Some(dir.path())));
    assert_eq!(status.code(), Some(2), "{stderr}");
    let line = assert_one_line(&stderr, UNIX);
    assert!(
        line.ends_with(
            "started as qubes.ConnectUnix+agent for that argument only, \
             but the call's argument is 'other'"
        ),
        "{line}"
    );
}

/// Under a name that is no applet's, started by qrexec, the caller's
/// argument (argv[1]) must not choose the applet (issue 15, item 7).
#[test]
fn unknown_service_name_never_takes_the_applet_from_the_argument() {
    let dir = TempDir::new("service");
    fs::create_dir_all(dir.path().join(UNIX)).unwrap();
    for argument in [UNIX, TCP_BIND, "qrexec-connect-tcp", "--list"] {
        let (status, stderr) =
            run_to_end(service_command("qubes.Other", argument, Some(dir.path())));
        assert_eq!(status.code(), Some(2), "{argument}: {stderr}");
        assert!(
            stderr.starts_with(
                "qrexec-connect: started by qrexec as unknown name 'qubes.Other'; install it \
                 under an applet's name (SERVICE or SERVICE+ARG); the applets are:\n"
            ),
            "{argument}: {stderr}"
        );
    }
}

/// The allow-list directory is trusted only when it is the user's and no
/// one else may write to it: whoever adds a link there chooses what a
/// caller reaches (issue 15, item 10).
#[test]
fn unix_directory_writable_by_others_or_not_ours_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("service");
    let allow = dir.path().join(UNIX);
    fs::create_dir_all(&allow).unwrap();
    let target = dir.path().join("agent.sock");
    let _listener = UnixListener::bind(&target).unwrap();
    symlink(&target, allow.join("agent")).unwrap();
    for mode in [0o777, 0o1777, 0o775, 0o757] {
        fs::set_permissions(&allow, fs::Permissions::from_mode(mode)).unwrap();
        let (status, stderr) = run_to_end(service_command(UNIX, "agent", Some(dir.path())));
        assert_eq!(status.code(), Some(1), "{mode:o}: {stderr}");
        let line = assert_one_line(&stderr, UNIX);
        assert!(
            line.contains(&format!("not following links in {}", allow.display()))
                && line.contains(&format!("its mode {mode:04o} lets others add links")),
            "{line}"
        );
    }
    fs::set_permissions(&allow, fs::Permissions::from_mode(0o700)).unwrap();
    // Another user's directory (tests run as root: uid 65534 is nobody).
    std::os::unix::fs::chown(&allow, Some(65534), None).unwrap();
    let (status, stderr) = run_to_end(service_command(UNIX, "agent", Some(dir.path())));
    assert_eq!(status.code(), Some(1), "{stderr}");
    let line = assert_one_line(&stderr, UNIX);
    assert!(line.contains("it belongs to uid 65534"), "{line}");
}
