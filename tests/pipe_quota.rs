//! A caller that holds many idle calls must not spend the service user's
//! pipe quota (issue 15, item 3): `/proc/sys/fs/pipe-user-pages-soft` pages
//! of pipe per user (64 MiB by default), past which every new pipe of that
//! user gets two pages (8 KiB). The relays run as an unprivileged user of
//! their own (root is exempt from the quota), and a process of that user
//! then makes a pipe and says what it got.
//!
//! A relay's pipes cannot be looked at from outside while it waits: a
//! splice that waits for data holds the pipe's lock, and an open of
//! `/proc/PID/fd/N` waits for it. How they grow and shrink is read from
//! strace instead.

mod common;

use std::fs;
use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::{UnixListener, UnixStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;

use common::{DEADLINE, TempDir, wait_for, wait_until};

/// The kernel's default pipe (16 pages).
const DEFAULT_PIPE: usize = 64 << 10;
/// The pipe out of TCP that each relay raised before (`relay::TCP_PIPE_SIZE`).
const MIB: usize = 1 << 20;

/// A uid of this test process's own: the quota is per user, and nothing
/// else runs as this one (the service applets need no passwd entry).
fn private_uid() -> u32 {
    3_000_000_000 + std::process::id()
}

fn is_root() -> bool {
    // SAFETY: getuid takes no arguments and always succeeds.
    unsafe { libc::getuid() == 0 }
}

/// The binary, copied where the unprivileged user can run it (the build
/// directory may sit below a directory only root can enter).
fn binary_for(dir: &TempDir) -> PathBuf {
    let copy = dir.path().join("qrexec-connect");
    fs::copy(common::binary(), &copy).unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    copy
}

/// A service applet run as `uid` on one end of a socketpair (its stdin and
/// stdout), with the other end and the server's side of its connection.
struct Relay {
    child: Child,
    ours: UnixStream,
    /// Kept open while the relay is held.
    server: Option<Box<dyn Stream>>,
}

trait Stream: Read + Write + Send {}
impl Stream for TcpStream {}
impl Stream for UnixStream {}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Relay {
    /// Starts `applet ARGUMENT` as `uid` with `theirs` as stdin and stdout,
    /// takes its connection from `accept`, and sends one byte each way, so
    /// that both directions are running.
    fn start(
        mut cmd: Command,
        theirs: UnixStream,
        ours: UnixStream,
        accept: impl FnMut() -> Option<Box<dyn Stream>>,
    ) -> Relay {
        let theirs = OwnedFd::from(theirs);
        cmd.stdin(Stdio::from(theirs.try_clone().unwrap()))
            .stdout(Stdio::from(theirs))
            .stderr(Stdio::inherit());
        let child = cmd.spawn().expect("start the service applet");
        let mut server = wait_for("the relay's connection", accept);
        let mut relay = Relay {
            child,
            ours,
            server: None,
        };
        relay.ours.set_read_timeout(Some(DEADLINE)).unwrap();
        relay.ours.write_all(b"?").unwrap();
        let mut byte = [0];
        server.read_exact(&mut byte).unwrap();
        server.write_all(b"!").unwrap();
        relay.ours.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"!");
        relay.server = Some(server);
        relay
    }
}

/// `applet ARGUMENT` started as qrexec-agent starts it, as `uid`.
fn service_command(binary: &Path, applet: &str, argument: &str, uid: u32) -> Command {
    let mut cmd = Command::new(binary);
    cmd.arg0(applet)
        .arg(argument)
        .env("QREXEC_SERVICE_ARGUMENT", argument)
        .env("QREXEC_REMOTE_DOMAIN", "hostile-qube")
        .uid(uid)
        .gid(uid);
    cmd
}

/// What a new pipe of `uid` gets: its capacity, and whether it can still be
/// raised to 1 MiB. A child made as `uid` (std sets the ids before running
/// `pre_exec`) makes the pipe, writes both on its stdout and execs `true`.
fn new_pipe_of(uid: u32) -> (usize, bool) {
    let mut cmd = Command::new("true");
    cmd.uid(uid).gid(uid).stdout(Stdio::piped());
    let probe = || {
        let mut fds = [-1; 2];
        // SAFETY: `fds` is a writable array of two ints, as pipe2 requires.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fcntl on the pipe just made; it takes plain integers.
        let size = unsafe { libc::fcntl(fds[0], libc::F_GETPIPE_SZ) };
        // SAFETY: as above.
        let raised = unsafe { libc::fcntl(fds[0], libc::F_SETPIPE_SZ, MIB as libc::c_int) };
        let out = [size, raised];
        // SAFETY: `out` is readable for its size; fd 1 is the piped stdout.
        unsafe { libc::write(1, out.as_ptr().cast(), size_of_val(&out)) };
        Ok(())
    };
    // SAFETY: the closure runs in the forked child before exec and calls
    // only async-signal-safe functions (pipe2, fcntl, write), on its stack.
    unsafe { cmd.pre_exec(probe) };
    let out = cmd.output().expect("run the probe");
    assert!(out.status.success(), "probe: {out:?}");
    let word = |i: usize| i32::from_ne_bytes(out.stdout[i * 4..i * 4 + 4].try_into().unwrap());
    // -1 (EPERM) when the user's pipes are over the quota.
    let raised = word(1);
    (word(0) as usize, raised >= MIB as i32)
}

fn soft_limit_pages() -> usize {
    fs::read_to_string("/proc/sys/fs/pipe-user-pages-soft")
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn accept_tcp(listener: &TcpListener) -> Option<Box<dyn Stream>> {
    let (stream, _) = listener.accept().ok()?;
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    Some(Box::new(stream))
}

fn accept_unix(listener: &UnixListener) -> Option<Box<dyn Stream>> {
    let (stream, _) = listener.accept().ok()?;
    stream.set_nonblocking(false).unwrap();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    Some(Box::new(stream))
}

#[test]
fn idle_tcp_relays_leave_the_users_pipe_quota_alone() {
    if !is_root() {
        eprintln!("skipped: running the relays as another user needs root");
        return;
    }
    let pages = soft_limit_pages();
    if pages == 0 {
        eprintln!("skipped: pipe-user-pages-soft is 0, no quota to spend");
        return;
    }
    // Enough relays to spend the quota at 1 MiB each, as each TCP relay's
    // pipe was: 70 at the default 16384 pages.
    let relays = (pages * 4096 / MIB + 6).min(300);
    let dir = TempDir::new("pipe-quota");
    let binary = binary_for(&dir);
    let uid = private_uid();
    assert_eq!(new_pipe_of(uid), (DEFAULT_PIPE, true), "before any relay");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let argument = format!("{}-127.0.0.2", listener.local_addr().unwrap().port());

    let mut held = Vec::new();
    for _ in 0..relays {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let cmd = service_command(&binary, "qubes.ConnectTCPBind", &argument, uid);
        held.push(Relay::start(cmd, theirs, ours, || accept_tcp(&listener)));
    }
    assert_eq!(
        new_pipe_of(uid),
        (DEFAULT_PIPE, true),
        "with {relays} idle qubes.ConnectTCPBind calls held, a new pipe of their \
         user gets (capacity, can be raised to 1 MiB); pipe-user-pages-soft {pages}"
    );
}

/// strace, if installed.
fn strace() -> Option<PathBuf> {
    ["/usr/bin/strace", "/bin/strace"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A Unix relay (both directions through a pipe of its own) grows the pipe
/// of a bulk transfer and shrinks it back once idle, and relays on.
#[test]
fn a_unix_relay_grows_its_pipe_for_bulk_and_gives_it_back_when_idle() {
    let Some(strace) = strace() else {
        eprintln!("skipped: no strace");
        return;
    };
    let dir = TempDir::new("pipe-quota-unix");
    let runtime = dir.path().join("runtime");
    let links = runtime.join("qubes.ConnectUnix");
    fs::create_dir_all(&links).unwrap();
    fs::set_permissions(&runtime, fs::Permissions::from_mode(0o700)).unwrap();
    let socket = dir.path().join("server.sock");
    let listener = UnixListener::bind(&socket).unwrap();
    listener.set_nonblocking(true).unwrap();
    symlink(&socket, links.join("bulk")).unwrap();
    let applet = dir.path().join("qubes.ConnectUnix");
    symlink(common::binary(), &applet).unwrap();
    let trace = dir.path().join("trace");

    let mut cmd = Command::new(strace);
    cmd.args(["-f", "-qq", "-e", "trace=fcntl", "-e", "signal=none", "-o"])
        .arg(&trace)
        .arg(&applet)
        .arg("bulk")
        .env("QREXEC_SERVICE_ARGUMENT", "bulk")
        .env("XDG_RUNTIME_DIR", &runtime);
    let (ours, theirs) = UnixStream::pair().unwrap();
    let mut relay = Relay::start(cmd, theirs, ours, || accept_unix(&listener));
    let resizes = || -> Vec<String> {
        let text = fs::read_to_string(&trace).unwrap_or_default();
        text.lines()
            .filter_map(|l| l.split_once("F_SETPIPE_SZ, ")?.1.split_once(')'))
            .map(|(size, _)| size.to_owned())
            .collect()
    };
    assert_eq!(
        resizes(),
        [] as [String; 0],
        "an idle relay keeps the default pipe"
    );

    const BULK: usize = 64 << 20;
    let mut server = relay.server.take().unwrap();
    let mut ours = relay.ours.try_clone().unwrap();
    let writer = thread::spawn(move || {
        let chunk = vec![7u8; MIB];
        for _ in 0..BULK / MIB {
            server.write_all(&chunk).unwrap();
        }
        server
    });
    let mut buf = vec![0; MIB];
    let mut got = 0;
    while got < BULK {
        let n = ours.read(&mut buf).unwrap();
        assert!(n > 0, "the relay ended after {got} bytes");
        assert!(buf[..n].iter().all(|&b| b == 7));
        got += n;
    }
    let mut server = writer.join().unwrap();
    wait_until("the idle relay's pipe back at the default size", || {
        resizes()
            .last()
            .is_some_and(|s| s == &DEFAULT_PIPE.to_string())
    });
    assert_eq!(resizes()[0], (256 << 10).to_string(), "grown for bulk");

    // Still relaying both ways, then ending as usual.
    relay.ours.write_all(b"?").unwrap();
    relay.ours.shutdown(Shutdown::Write).unwrap();
    let mut rest = Vec::new();
    server.read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"?");
    drop(server);
    let mut end = Vec::new();
    relay.ours.read_to_end(&mut end).unwrap();
    assert!(end.is_empty());
    let status = wait_for("the relay to end", || relay.child.try_wait().unwrap());
    assert!(status.success(), "{status}");
}
