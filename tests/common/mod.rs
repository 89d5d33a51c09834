//! Fixtures for the integration tests: the qrexec stand-in and the world it
//! plays (qubes, policy, services, call records), and the real
//! `systemd-socket-activate` starting our binary with several listeners.
//!
//! Nothing here sleeps instead of waiting: every wait polls a condition until
//! a deadline, and every process a fixture starts is killed (with its whole
//! process group) by pid when the fixture is dropped.
//!
//! What does not need the binary (temporary directories, waits, the libc
//! calls) lives in the `qrexec-test-support` crate (tests/support), shared
//! with the stand-in and the bench, and is re-exported here: every test file
//! takes its fixtures from this one module.
#![allow(dead_code)] // each test file uses its own part

pub mod lab;
pub mod user_manager;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

// Each test file uses its own part of these too.
#[allow(unused_imports)]
pub use test_support::{DEADLINE, Killed, TempDir, sys::kill, wait_for, wait_until};

/// The binary under test.
pub fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_qrexec-connect"))
}

/// `make ARGS DESTDIR=destdir` in the repository with the binary under
/// test; fails the test with make's output when make fails.
pub fn make(destdir: &Path, args: &[&str]) -> std::process::Output {
    let out = Command::new("make")
        .arg("-C")
        .arg(env!("CARGO_MANIFEST_DIR"))
        .arg("--no-print-directory")
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("BINARY={}", binary().display()))
        .args(args)
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `make install DESTDIR=destdir` of the binary under test (units, links and
/// all, as a user installs them), for tests that run the installed files.
pub fn make_install(destdir: &Path) {
    make(destdir, &["install"]);
}

/// A new ed25519 key pair without a passphrase at `path` (and `path.pub`),
/// by `ssh-keygen`.
pub fn ssh_keygen(path: &Path, comment: &str) {
    let out = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .output()
        .expect("run ssh-keygen");
    assert!(out.status.success(), "ssh-keygen: {out:?}");
}

/// The qrexec-client-vm stand-in, built once per test binary. It is a
/// workspace member of its own, so `cargo test` of this package does not
/// build it: cargo is asked to, and it lands next to our binary.
pub fn standin() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let dir = binary().parent().expect("binary in a directory");
        let mut cargo = Command::new(env!("CARGO"));
        cargo
            .args([
                "build",
                "--quiet",
                "-p",
                "qrexec-standin",
                "--manifest-path",
            ])
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"));
        if dir.file_name().is_some_and(|n| n == "release") {
            cargo.arg("--release");
        }
        let status = cargo.status().expect("run cargo");
        assert!(status.success(), "building the qrexec stand-in failed");
        let path = dir.join("qrexec-client-vm");
        assert!(path.exists(), "{} not built", path.display());
        path
    })
}

/// The world the stand-in plays: `$QREXEC_STANDIN_ROOT` with its policy,
/// qubes, services and the records of every call.
pub struct World {
    dir: TempDir,
}

impl Default for World {
    fn default() -> Self {
        Self::new()
    }
}

impl World {
    pub fn new() -> Self {
        let dir = TempDir::new("world");
        fs::create_dir_all(dir.path().join("bin")).unwrap();
        World { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Replaces the policy (see the stand-in's policy.rs for the format).
    pub fn policy(&self, text: &str) {
        fs::write(self.root().join("policy"), text).unwrap();
    }

    /// Creates (or opens) the qube `name`.
    pub fn qube(&self, name: &str) -> Qube {
        let dir = self.root().join("qubes").join(name);
        fs::create_dir_all(dir.join("etc/qubes-rpc")).unwrap();
        Qube { dir }
    }

    /// A symlink named `applet` to the binary: started by that name.
    pub fn applet(&self, applet: &str) -> PathBuf {
        let link = self.root().join("bin").join(applet);
        if !link.exists() {
            symlink(binary(), &link).unwrap();
        }
        link
    }

    /// The variables a daemon needs to use the stand-in on this world.
    pub fn env(&self) -> Vec<(String, OsString)> {
        vec![
            ("QREXEC_STANDIN_ROOT".into(), self.root().into()),
            ("QREXEC_CLIENT_VM".into(), standin().into()),
        ]
    }

    /// `env()` for a world whose calls come from another user (the systemd
    /// user manager's test user): the stand-in is copied into the world,
    /// because the build directory may sit below a directory only root can
    /// enter (a clone in `mktemp -d`, mode 0700).
    pub fn env_for_other_user(&self) -> Vec<(String, OsString)> {
        let bin = self.root().join("bin");
        fs::create_dir_all(&bin).unwrap();
        let copy = bin.join("qrexec-client-vm");
        fs::copy(standin(), &copy).unwrap();
        vec![
            ("QREXEC_STANDIN_ROOT".into(), self.root().into()),
            ("QREXEC_CLIENT_VM".into(), copy.into()),
        ]
    }

    /// Every run of the stand-in, in no particular order.
    pub fn records(&self) -> Vec<Record> {
        let Ok(dir) = fs::read_dir(self.root().join("calls")) else {
            return Vec::new();
        };
        dir.flatten().map(|e| Record(e.path())).collect()
    }

    /// The runs that got as far as a call (not `-h`, not a refused command line).
    pub fn calls(&self) -> Vec<Record> {
        self.records()
            .into_iter()
            .filter(|r| r.0.join("call_raw").exists())
            .collect()
    }

    /// Waits until `n` calls have finished; returns every finished call.
    pub fn finished_calls(&self, n: usize) -> Vec<Record> {
        wait_for(&format!("{n} finished calls"), || {
            let done: Vec<Record> = self
                .calls()
                .into_iter()
                .filter(|r| r.status().is_some())
                .collect();
            (done.len() >= n).then_some(done)
        })
    }

    /// Calls running now, most at once, all started (the stand-in's counter).
    pub fn concurrency(&self) -> (u64, u64, u64) {
        let text = fs::read_to_string(self.root().join("concurrency")).unwrap_or_default();
        let n: Vec<u64> = text
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect();
        match n.as_slice() {
            [running, max, started] => (*running, *max, *started),
            _ => (0, 0, 0),
        }
    }
}

/// A world with the qube `work`, whose `qubes.ConnectTCP` runs `script`,
/// allowed for every argument.
pub fn work_world(script: &str) -> World {
    let world = World::new();
    world.qube("work").service("qubes.ConnectTCP", script);
    world.policy("qubes.ConnectTCP * client work allow\n");
    world
}

/// A world with the qube `work`, whose `qubes.ConnectTCP` echoes (`cat`),
/// allowed for every argument.
pub fn echo_world() -> World {
    work_world("exec cat")
}

/// A world where qube `work` has `qubes.ConnectTCP+1234` as a socket
/// service linked to `socket` (qrexec's own way to connect a call to a Unix
/// socket), without the service descriptor prefix; allowed.
pub fn socket_world(socket: &Path) -> World {
    let world = World::new();
    let work = world.qube("work");
    work.socket_service("qubes.ConnectTCP+1234", socket);
    work.rpc_config("qubes.ConnectTCP+1234", "skip-service-descriptor=true\n");
    world.policy("qubes.ConnectTCP +1234 client work allow\n");
    world
}

/// `qrexec-connect-tcp`, started by that name.
pub fn tcp_applet() -> Program {
    Program::Applet("qrexec-connect-tcp".into())
}

/// `qrexec-connect-tcp 1234 ARGS` with one TCP listener named `work`.
pub fn echo_daemon(world: &World, args: &[&str]) -> Daemon {
    Activate::tcp_to_work(world).args(args).start()
}

/// A qube of the world: a directory with services and configuration.
pub struct Qube {
    dir: PathBuf,
}

impl Qube {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// An executable service in `etc/qubes-rpc`: a shell script.
    pub fn service(&self, name: &str, script: &str) -> PathBuf {
        let path = self.dir.join("etc/qubes-rpc").join(name);
        fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    /// A socket service: a symlink to the Unix socket at `socket`.
    pub fn socket_service(&self, name: &str, socket: &Path) {
        symlink(socket, self.dir.join("etc/qubes-rpc").join(name)).unwrap();
    }

    /// An rpc-config file, such as `skip-service-descriptor=true`.
    pub fn rpc_config(&self, name: &str, text: &str) {
        let dir = self.dir.join("etc/qubes/rpc-config");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(name), text).unwrap();
    }

    /// One more variable in the environment of this qube's services.
    pub fn env(&self, key: &str, value: &str) {
        let mut file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("env"))
            .unwrap();
        writeln!(file, "{key}={value}").unwrap();
    }
}

/// One run of the stand-in, as it recorded itself.
#[derive(Debug)]
pub struct Record(PathBuf);

impl Record {
    fn text(&self, name: &str) -> Option<String> {
        fs::read(self.0.join(name))
            .ok()
            .map(|b| String::from_utf8_lossy(&b).into_owned())
    }

    fn nul_list(&self, name: &str) -> Vec<String> {
        self.text(name)
            .unwrap_or_default()
            .split_terminator('\0')
            .map(str::to_owned)
            .collect()
    }

    pub fn argv(&self) -> Vec<String> {
        self.nul_list("argv")
    }

    /// argv without argv[0].
    pub fn args(&self) -> Vec<String> {
        self.argv().into_iter().skip(1).collect()
    }

    pub fn env(&self) -> BTreeMap<String, String> {
        self.nul_list("environ")
            .into_iter()
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k.into(), v.into())))
            .collect()
    }

    /// The fds open when the stand-in started.
    pub fn fds(&self) -> Vec<i32> {
        self.text("fds")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.split(' ').next()?.parse().ok())
            .collect()
    }

    pub fn info(&self, key: &str) -> Option<String> {
        self.text("info")?
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('=').map(str::to_owned))
    }

    /// The target and call as qrexec-client-vm was given them.
    pub fn target_raw(&self) -> Option<String> {
        self.text("target_raw")
    }

    pub fn call_raw(&self) -> Option<String> {
        self.text("call_raw")
    }

    /// `exit N` or `signal N` once finished.
    pub fn status(&self) -> Option<String> {
        self.text("status")
    }
}

/// What a listener listens on.
#[derive(Clone, Debug)]
pub enum Listen {
    Tcp4,
    Tcp6,
    /// A Unix socket path, made in the daemon's temporary directory.
    Unix,
    /// An abstract Unix socket.
    Abstract,
}

/// A listener's address once chosen.
#[derive(Clone, Debug)]
pub enum Address {
    Inet(SocketAddr),
    Unix(PathBuf),
    Abstract(String),
}

impl Address {
    /// As `systemd-socket-activate --listen` takes it.
    fn arg(&self) -> String {
        match self {
            Address::Inet(a) => a.to_string(),
            Address::Unix(p) => p.display().to_string(),
            Address::Abstract(name) => format!("@{name}"),
        }
    }

    /// As qrexec-connect names it in messages.
    pub fn shown(&self) -> String {
        self.arg()
    }

    /// Connects only to make systemd-socket-activate start its program,
    /// which may refuse to run and close the socket, resetting this
    /// connection before or after it is made: the outcome does not matter.
    pub fn poke(&self) {
        let _ = match self {
            Address::Inet(a) => TcpStream::connect(a).map(drop),
            Address::Unix(p) => UnixStream::connect(p).map(drop),
            Address::Abstract(name) => {
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|a| UnixStream::connect_addr(&a))
                    .map(drop)
            }
        };
    }

    pub fn connect(&self) -> Conn {
        let conn = match self {
            Address::Inet(a) => TcpStream::connect(a).map(Conn::Tcp),
            Address::Unix(p) => UnixStream::connect(p).map(Conn::Unix),
            Address::Abstract(name) => {
                std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                    .and_then(|a| UnixStream::connect_addr(&a))
                    .map(Conn::Unix)
            }
        }
        .unwrap_or_else(|e| panic!("connect to {}: {e}", self.arg()));
        conn.set_read_timeout(Some(DEADLINE)).unwrap();
        conn
    }
}

/// A client connection of any family.
pub enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    pub fn shutdown_write(&self) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.shutdown(Shutdown::Write),
            Conn::Unix(s) => s.shutdown(Shutdown::Write),
        }
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_read_timeout(t),
            Conn::Unix(s) => s.set_read_timeout(t),
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Conn::Tcp(s) => s.set_write_timeout(t),
            Conn::Unix(s) => s.set_write_timeout(t),
        }
    }

    /// A second handle on the same connection (one thread reads, one writes).
    pub fn try_clone(&self) -> io::Result<Conn> {
        Ok(match self {
            Conn::Tcp(s) => Conn::Tcp(s.try_clone()?),
            Conn::Unix(s) => Conn::Unix(s.try_clone()?),
        })
    }

    /// Closes with a reset (RST, by SO_LINGER 0) instead of an orderly end;
    /// a Unix socket has no reset and is just closed.
    pub fn reset(self) {
        if let Conn::Tcp(s) = &self {
            test_support::sys::set_linger_zero(s.as_fd()).expect("SO_LINGER");
        }
    }

    /// Sends `request`, ends our side, returns everything until EOF or a
    /// reset: a call that fails before reading what we sent closes the
    /// connection with unread data, which TCP reports as a reset.
    pub fn exchange_or_reset(&mut self, request: &[u8]) -> Vec<u8> {
        let mut reply = Vec::new();
        let sent = self.write_all(request).and_then(|()| self.shutdown_write());
        match sent.and_then(|()| self.read_to_end(&mut reply)) {
            Ok(_) => reply,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionReset
                        | io::ErrorKind::BrokenPipe
                        | io::ErrorKind::NotConnected
                ) =>
            {
                reply
            }
            Err(e) => panic!("exchange: {e}"),
        }
    }

    /// Sends `request`, ends our side, returns everything until EOF.
    pub fn exchange(&mut self, request: &[u8]) -> Vec<u8> {
        self.write_all(request).unwrap();
        self.shutdown_write().unwrap();
        let mut reply = Vec::new();
        self.read_to_end(&mut reply).unwrap();
        reply
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How the binary is started.
#[derive(Clone, Debug)]
pub enum Program {
    /// Through a symlink named after the applet (argv[0]).
    Applet(String),
    /// As `qrexec-connect APPLET ...` (the applet or its short name).
    Multicall(String),
    /// As plain `qrexec-connect`.
    Plain,
}

/// Builds a `systemd-socket-activate` command line around our binary.
pub struct Activate<'w> {
    world: &'w World,
    listeners: Vec<(Listen, String)>,
    program: Program,
    args: Vec<String>,
    env: Vec<(String, OsString)>,
    accept: bool,
    datagram: bool,
    notify: bool,
}

impl<'w> Activate<'w> {
    pub fn new(world: &'w World, program: Program) -> Self {
        Activate {
            world,
            listeners: Vec::new(),
            program,
            args: Vec::new(),
            env: world.env(),
            accept: false,
            datagram: false,
            notify: false,
        }
    }

    /// `qrexec-connect-tcp 1234` with one TCP listener named `work`: the
    /// set-up most tests start from.
    pub fn tcp_to_work(world: &'w World) -> Self {
        Activate::new(world, tcp_applet())
            .listen(Listen::Tcp4, "work")
            .args(["1234"])
    }

    /// One more listener with FileDescriptorName `name` (all empty: unnamed).
    pub fn listen(mut self, what: Listen, name: &str) -> Self {
        self.listeners.push((what, name.to_owned()));
        self
    }

    pub fn args<S: AsRef<str>>(mut self, args: impl IntoIterator<Item = S>) -> Self {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// A variable passed on to the daemon (`-E`); replaces one of the same name.
    pub fn env(mut self, key: &str, value: impl Into<OsString>) -> Self {
        self.env.retain(|(k, _)| k != key);
        self.env.push((key.to_owned(), value.into()));
        self
    }

    pub fn without_env(mut self, key: &str) -> Self {
        self.env.retain(|(k, _)| k != key);
        self
    }

    /// `--accept`: one process per connection, given the connected socket.
    pub fn accept(mut self) -> Self {
        self.accept = true;
        self
    }

    /// `--datagram`: every listener a datagram socket (which we refuse).
    pub fn datagram(mut self) -> Self {
        self.datagram = true;
        self
    }

    /// Gives the daemon a NOTIFY_SOCKET, read by [`Daemon::notifications`].
    pub fn notify(mut self) -> Self {
        self.notify = true;
        self
    }

    /// Starts systemd-socket-activate and waits until it listens on every
    /// address. TCP ports are picked free beforehand (it does not take port
    /// 0); one taken meanwhile by someone else means another try.
    pub fn start(self) -> Daemon {
        standin();
        let mut last_error = String::new();
        for _attempt in 0..5 {
            match self.try_start() {
                Ok(daemon) => return daemon,
                Err(stderr) if stderr.contains("Address already in use") => last_error = stderr,
                Err(stderr) => panic!("systemd-socket-activate failed:\n{stderr}"),
            }
        }
        panic!("systemd-socket-activate kept failing:\n{last_error}");
    }

    fn try_start(&self) -> Result<Daemon, String> {
        let dir = TempDir::new("activate");
        let free_port = |ip: &str| {
            TcpListener::bind((ip, 0))
                .and_then(|l| l.local_addr())
                .unwrap_or_else(|e| panic!("bind {ip}: {e}"))
        };
        let addresses: Vec<Address> = self
            .listeners
            .iter()
            .enumerate()
            .map(|(i, (what, _))| match what {
                Listen::Tcp4 => Address::Inet(free_port("127.0.0.1")),
                Listen::Tcp6 => Address::Inet(free_port("::1")),
                Listen::Unix => Address::Unix(dir.path().join(format!("listener-{i}.sock"))),
                Listen::Abstract => Address::Abstract(format!(
                    "qrexec-connect-test-{}-{}",
                    dir.path().file_name().unwrap().to_string_lossy(),
                    i
                )),
            })
            .collect();
        let mut command = Command::new("systemd-socket-activate");
        for a in &addresses {
            command.arg(format!("--listen={}", a.arg()));
        }
        if self.accept {
            command.arg("--accept");
        }
        if self.datagram {
            command.arg("--datagram");
        }
        // All names empty: no --fdname, so no LISTEN_FDNAMES at all.
        if self.listeners.iter().any(|(_, name)| !name.is_empty()) {
            let names: Vec<&str> = self.listeners.iter().map(|(_, n)| n.as_str()).collect();
            command.arg(format!("--fdname={}", names.join(":")));
        }
        let notify = self.notify.then(|| {
            let path = dir.path().join("notify.sock");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket.set_nonblocking(true).unwrap();
            (path, socket)
        });
        let mut env = self.env.clone();
        if let Some((path, _)) = &notify {
            env.push(("NOTIFY_SOCKET".into(), path.into()));
        }
        for (key, value) in &env {
            let mut kv = OsString::from(format!("{key}="));
            kv.push(value);
            command.arg("-E").arg(kv);
        }
        match &self.program {
            Program::Applet(name) => {
                command.arg(self.world.applet(name));
            }
            Program::Multicall(name) => {
                command.arg(binary()).arg(name);
            }
            Program::Plain => {
                command.arg(binary());
            }
        }
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        // Not glibc's posix_spawn, whose child ignores signals 32 and 33.
        test_support::sys::fork_exec(&mut command);
        let mut child = command.spawn().expect("run systemd-socket-activate");
        let stderr = Output::capture(child.stderr.take().unwrap());
        let mut daemon = Daemon {
            pid: child.id() as i32,
            child,
            stderr,
            addresses,
            notify: notify.map(|(_, s)| s),
            _dir: dir,
        };
        let listening = daemon.addresses.len();
        let start = Instant::now();
        loop {
            let text = daemon.stderr();
            if text.matches("Listening on ").count() >= listening {
                return Ok(daemon);
            }
            if let Ok(Some(_)) = daemon.child.try_wait() {
                return Err(daemon.wait_stderr_closed());
            }
            assert!(
                start.elapsed() < DEADLINE,
                "systemd-socket-activate did not listen:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Everything a process writes to a pipe, gathered by a thread.
#[derive(Clone)]
pub struct Output {
    text: Arc<Mutex<Vec<u8>>>,
    closed: Arc<Mutex<bool>>,
}

impl Output {
    pub fn capture(mut pipe: impl Read + Send + 'static) -> Self {
        let out = Output {
            text: Arc::default(),
            closed: Arc::default(),
        };
        let (text, closed) = (out.text.clone(), out.closed.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                text.lock().unwrap().extend_from_slice(&buf[..n]);
            }
            *closed.lock().unwrap() = true;
        });
        out
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.text.lock().unwrap()).into_owned()
    }

    pub fn is_closed(&self) -> bool {
        *self.closed.lock().unwrap()
    }
}

/// Our binary under systemd-socket-activate (the same process once it execs).
pub struct Daemon {
    pub pid: i32,
    child: Child,
    stderr: Output,
    addresses: Vec<Address>,
    notify: Option<UnixDatagram>,
    _dir: TempDir,
}

impl Daemon {
    /// The address of listener `i` (in the order given to [`Activate::listen`]).
    pub fn address(&self, i: usize) -> &Address {
        &self.addresses[i]
    }

    pub fn connect(&self, i: usize) -> Conn {
        self.address(i).connect()
    }

    /// What systemd-socket-activate and the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.text()
    }

    /// Waits until stderr contains `needle`; returns all of it.
    pub fn wait_stderr(&self, needle: &str) -> String {
        self.wait_stderr_count(needle, 1)
    }

    /// Waits until stderr contains `needle` `n` times.
    pub fn wait_stderr_count(&self, needle: &str, n: usize) -> String {
        let start = Instant::now();
        loop {
            let text = self.stderr();
            if text.matches(needle).count() >= n {
                return text;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "timed out waiting for {n} times {needle:?} on stderr:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until every writer closed stderr; returns all of it.
    pub fn wait_stderr_closed(&self) -> String {
        wait_until("stderr to close", || self.stderr.is_closed());
        self.stderr()
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let child = &mut self.child;
        let status = wait_for("the daemon to exit", || child.try_wait().unwrap());
        self.wait_stderr_closed();
        status
    }

    /// Sends `signal` to the daemon (our own child, not reaped while `self` lives).
    pub fn signal(&self, signal: i32) {
        let _ = kill(self.pid, signal);
    }

    /// Every message received on NOTIFY_SOCKET so far (in order).
    pub fn notifications(&self) -> Vec<String> {
        let socket = self.notify.as_ref().expect("started with .notify()");
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = socket.recv(&mut buf) {
            all.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        all
    }

    /// Processes started by the daemon that are still there (not zombies).
    pub fn children(&self) -> Vec<i32> {
        let path = format!("/proc/{0}/task/{0}/children", self.pid);
        fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect()
    }
}

impl Daemon {
    /// Processes in the daemon's process group, zombies left out: the
    /// fixture starts it in a group of its own, and qrexec-client-vm and the
    /// services stay in it.
    pub fn group_members(&self) -> Vec<i32> {
        let pgid = self.pid.to_string();
        fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
                    return false;
                };
                let rest = &stat[stat.rfind(')').unwrap() + 2..];
                // state ppid pgrp ...
                rest.split(' ').nth(2) == Some(pgid.as_str()) && !rest.starts_with('Z')
            })
            .collect()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The whole group: the daemon and every qrexec stand-in and service.
        let _ = kill(-self.pid, libc::SIGKILL);
        let _ = self.child.wait();
    }
}

/// Runs `check` on every case of a table-driven test, in order; a failing
/// case fails the test with its own assertion message prefixed by the case,
/// `case X: ...` (the panic above it in the output says where).
pub fn each_case<C: std::fmt::Debug>(cases: &[C], check: impl Fn(&C)) {
    for case in cases {
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(case))) {
            let why = panic
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| panic.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            panic!("case {case:?}: {why}");
        }
    }
}

/// Runs the binary directly (no sockets): its status, stdout and stderr.
pub fn run(program: &Program, args: &[&str], world: &World) -> (Option<i32>, String, String) {
    let mut command = match program {
        Program::Applet(name) => Command::new(world.applet(name)),
        Program::Multicall(name) => {
            let mut c = Command::new(binary());
            c.arg(name);
            c
        }
        Program::Plain => Command::new(binary()),
    };
    let out = command
        .args(args)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS")
        .env_remove("LISTEN_FDNAMES")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
