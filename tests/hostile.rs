//! Hostile input, black-box against the real binary: every bad socket name,
//! applet argument and LISTEN_* value is refused with a one-line reason and
//! its exit status (2 bad name/argument/environment, 3 unsupported passed fd,
//! 6 nothing to serve), before anything is done with the sockets.
//!
//! "Before anything" is checked three ways for each case: QREXEC_CLIENT_VM
//! is a script that records every run (it must never run, not even for the
//! `-h` probe of `--stdin-socket=auto`), the passed listener has a connection
//! waiting that is still in its backlog afterwards (the test accepts it), and
//! NOTIFY_SOCKET never receives READY=1. A control case with a good
//! configuration shows that each of the three does notice when the binary
//! serves.
//!
//! The sockets are passed as systemd does: at fd 3 and up, with LISTEN_PID
//! the pid of the process that reads them. A small `sh` wrapper moves the fds
//! the test hands over as stdin/stdout to 3 and 4, sets LISTEN_PID=$$ and
//! execs the binary, so its pid is the shell's.

mod common;

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use common::{DEADLINE, TempDir, kill};

/// The binary under test, as strace and the wrapper name it.
const BIN: &str = env!("CARGO_BIN_EXE_qrexec-connect");

/// The binary, started under strace by the wrapper, which writes its pid to
/// DIR/pid. Both are killed by pid if the test ends before they do.
struct Running {
    strace: Child,
    pidfile: PathBuf,
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.strace.try_wait() {
            if let Some(pid) = self.binary_pid() {
                let _ = kill(pid as i32, libc::SIGKILL);
            }
            let _ = kill(self.strace.id() as i32, libc::SIGKILL);
            let _ = self.strace.wait();
        }
    }
}

impl Running {
    fn start(mut cmd: Command, dir: &Path) -> Self {
        Running {
            strace: cmd.spawn().unwrap(),
            pidfile: dir.join("pid"),
        }
    }

    fn binary_pid(&self) -> Option<u32> {
        fs::read_to_string(&self.pidfile).ok()?.trim().parse().ok()
    }

    /// The binary's exit status, as strace passes it on.
    fn wait_deadline(&mut self) -> Option<ExitStatus> {
        let end = Instant::now() + DEADLINE;
        while Instant::now() < end {
            if let Some(status) = self.strace.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }
}

/// The start of the `sh -c` script: record the pid that the binary will
/// have, since LISTEN_PID must be it.
fn wrapper_start(dir: &Path) -> String {
    format!("echo $$ > '{}'; ", dir.join("pid").display())
}

/// What is at one passed fd.
#[derive(Clone, Copy, Debug)]
enum Fd {
    /// A listening Unix socket with one connection waiting.
    Listener,
    /// A listening TCP socket on 127.0.0.1 with one connection waiting.
    TcpListener,
    Udp,
    UnixDatagram,
    Fifo,
    File,
    DevNull,
    /// Nothing: the fd is closed although LISTEN_FDS counts it.
    Closed,
}

#[derive(Clone, Debug)]
enum ListenPid {
    Ours,
    Is(&'static str),
}

#[derive(Clone, Debug)]
struct Case {
    applet: &'static str,
    args: Vec<String>,
    fds: Vec<Fd>,
    /// LISTEN_FDNAMES; `None`: unset.
    names: Option<String>,
    /// LISTEN_FDS; `None`: the number of fds.
    listen_fds: Option<String>,
    listen_pid: ListenPid,
    status: i32,
    /// Part of the one line on stderr that says why.
    reason: String,
}

fn case(applet: &'static str, args: &[&str], status: i32, reason: &str) -> Case {
    Case {
        applet,
        args: args.iter().map(|s| s.to_string()).collect(),
        fds: vec![Fd::Listener],
        names: Some("work".into()),
        listen_fds: None,
        listen_pid: ListenPid::Ours,
        status,
        reason: reason.into(),
    }
}

impl Case {
    fn names(mut self, names: &str) -> Self {
        self.names = Some(names.into());
        self
    }
    fn fds(mut self, fds: &[Fd]) -> Self {
        self.fds = fds.to_vec();
        self
    }
    fn listen_fds(mut self, n: &str) -> Self {
        self.listen_fds = Some(n.into());
        self
    }
    fn listen_pid(mut self, pid: &'static str) -> Self {
        self.listen_pid = ListenPid::Is(pid);
        self
    }
}

/// What one run showed.
struct Outcome {
    status: Option<i32>,
    stderr: String,
    /// What the QREXEC_CLIENT_VM script recorded (one line per run).
    client_vm_runs: String,
    /// Listeners whose waiting connection was taken by the binary.
    accepted: Vec<usize>,
    /// What arrived on NOTIFY_SOCKET.
    notified: Vec<String>,
    /// System calls the binary made that a refusal must not make.
    forbidden: Vec<String>,
}

/// Holds a passed object and, for listeners, the test's copy of the socket
/// and the connection waiting in its backlog.
struct Placed {
    fd: Option<OwnedFd>,
    listener: Option<Waiting>,
}

/// The test's copy of a passed listener and the client waiting on it (kept
/// open, so that its connection stays in the backlog).
enum Waiting {
    Unix(UnixListener, #[allow(dead_code)] UnixStream),
    Tcp(TcpListener, #[allow(dead_code)] TcpStream),
}

impl Waiting {
    /// Whether the waiting connection is still in the backlog.
    fn still_waiting(&self) -> bool {
        let result = match self {
            Waiting::Unix(l, _) => {
                l.set_nonblocking(true).unwrap();
                l.accept().map(drop)
            }
            Waiting::Tcp(l, _) => {
                l.set_nonblocking(true).unwrap();
                l.accept().map(drop)
            }
        };
        match result {
            Ok(()) => true,
            Err(e) if e.kind() == ErrorKind::WouldBlock => false,
            Err(e) => panic!("accept on the test's copy: {e}"),
        }
    }
}

fn place(kind: Fd, dir: &Path, index: usize) -> Placed {
    let plain = |fd: OwnedFd| Placed {
        fd: Some(fd),
        listener: None,
    };
    match kind {
        Fd::Listener => {
            let path = dir.join(format!("listener{index}"));
            let l = UnixListener::bind(&path).unwrap();
            let client = UnixStream::connect(&path).unwrap();
            Placed {
                fd: Some(l.try_clone().unwrap().into()),
                listener: Some(Waiting::Unix(l, client)),
            }
        }
        Fd::TcpListener => {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            Placed {
                fd: Some(l.try_clone().unwrap().into()),
                listener: Some(Waiting::Tcp(l, client)),
            }
        }
        Fd::Udp => plain(UdpSocket::bind("127.0.0.1:0").unwrap().into()),
        Fd::UnixDatagram => plain(
            UnixDatagram::bind(dir.join(format!("dgram{index}")))
                .unwrap()
                .into(),
        ),
        Fd::Fifo => {
            let path = dir.join(format!("fifo{index}"));
            let ok = Command::new("mkfifo").arg(&path).status().unwrap();
            assert!(ok.success(), "mkfifo");
            // Read and write: opening a FIFO so does not wait for a peer.
            let f = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            plain(f.into())
        }
        Fd::File => {
            let path = dir.join(format!("file{index}"));
            fs::write(&path, b"not a socket\n").unwrap();
            plain(fs::File::open(&path).unwrap().into())
        }
        Fd::DevNull => plain(fs::File::open("/dev/null").unwrap().into()),
        Fd::Closed => Placed {
            fd: None,
            listener: None,
        },
    }
}

/// `sh` under `strace -f`, recording the calls that touch files, sockets and
/// processes into DIR/trace.
fn traced_sh(dir: &Path) -> Command {
    let found = Command::new("strace")
        .arg("-V")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(found, "these tests need strace (.ci/run installs it)");
    let mut cmd = Command::new("strace");
    cmd.args([
        "-f",
        "-qq",
        "-s",
        "4096",
        "-e",
        "trace=%file,%network,%process",
    ])
    .arg("-o")
    .arg(dir.join("trace"))
    .arg("sh");
    cmd
}

/// The system calls of the binary (from its execve on) that show it did
/// something with its input: any file opened but its own /proc/self, any
/// socket call but inspecting the passed fds and creating the unbound
/// sd_notify socket, any new process or program.
fn forbidden_syscalls(dir: &Path) -> Vec<String> {
    let trace = fs::read_to_string(dir.join("trace")).expect("strace wrote a trace");
    let exec = format!("execve(\"{BIN}\"");
    let Some(start) = trace.find(&exec) else {
        return vec!["the binary was never executed".into()];
    };
    let mut lines = trace[start..].lines();
    lines.next();
    lines
        .filter(|line| {
            let call = strip_pid(line);
            let name = call.split('(').next().unwrap_or("");
            let path = call.split('"').nth(1);
            let allowed = match name {
                "exit" | "exit_group" | "getsockopt" | "getsockname" | "getpeername" => true,
                "socket" => call.starts_with("socket(AF_UNIX, SOCK_DGRAM"),
                "readlink" | "openat" | "newfstatat" | "statx" | "fstat" | "stat" => {
                    path.is_none_or(|p| p.is_empty() || p.starts_with("/proc/self/"))
                }
                _ => false,
            };
            !allowed && !call.starts_with("+++") && !call.starts_with("---")
        })
        .map(str::to_owned)
        .collect()
}

/// "PID  name(args) = result" (strace pads the pid) -> "name(args) = result".
fn strip_pid(line: &str) -> &str {
    line.trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start()
}

/// Writes `dir/qrexec-client-vm`, a shell script that runs `body`.
fn client_vm(dir: &Path, body: &str) -> PathBuf {
    let script = dir.join("qrexec-client-vm");
    fs::write(&script, format!("#!/bin/sh\n{body}")).unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// [`client_vm`] that runs the shell lines `first` and appends its
/// arguments, one call a line, to `record`.
fn recording_client_vm(dir: &Path, record: &Path, first: &str) -> PathBuf {
    client_vm(
        dir,
        &format!("{first}echo \"$*\" >> '{}'\n", record.display()),
    )
}

/// Runs the binary as `qrexec-connect APPLET ARGS...` with the case's fds and
/// environment, and reports what it did.
fn run(case: &Case) -> Outcome {
    assert!(case.fds.len() <= 2, "the wrapper places at most two fds");
    let dir = TempDir::new("hostile");
    let record = dir.path().join("client-vm-runs");
    let script = recording_client_vm(dir.path(), &record, "");
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify.set_nonblocking(true).unwrap();

    let mut placed: Vec<Placed> = case
        .fds
        .iter()
        .enumerate()
        .map(|(i, &k)| place(k, dir.path(), i))
        .collect();

    // fd 0 -> 3 and fd 1 -> 4; a Closed entry is closed explicitly, whatever
    // the shell may have inherited there.
    let mut wrapper = wrapper_start(dir.path());
    for (i, p) in placed.iter().enumerate() {
        let fd = 3 + i;
        match p.fd {
            Some(_) => wrapper += &format!("exec {fd}<&{i}; "),
            None => wrapper += &format!("exec {fd}<&-; "),
        }
    }
    wrapper += "exec </dev/null >&2; ";
    if let ListenPid::Ours = case.listen_pid {
        wrapper += "LISTEN_PID=$$; export LISTEN_PID; ";
    }
    wrapper += "exec \"$@\"";

    let mut cmd = traced_sh(dir.path());
    cmd.arg("-c")
        .arg(&wrapper)
        .arg("sh")
        .arg(BIN)
        .arg(case.applet)
        .args(&case.args);
    for var in [
        "LISTEN_PID",
        "LISTEN_FDS",
        "LISTEN_FDNAMES",
        "NOTIFY_SOCKET",
        "JOURNAL_STREAM",
        "QREXEC_CLIENT_VM",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("QREXEC_CLIENT_VM", &script)
        .env("NOTIFY_SOCKET", &notify_path)
        .env(
            "LISTEN_FDS",
            case.listen_fds
                .clone()
                .unwrap_or_else(|| case.fds.len().to_string()),
        );
    if let ListenPid::Is(pid) = case.listen_pid {
        cmd.env("LISTEN_PID", pid);
    }
    if let Some(names) = &case.names {
        cmd.env("LISTEN_FDNAMES", names);
    }
    let mut stdio = placed.iter_mut().map(|p| p.fd.take());
    cmd.stdin(match stdio.next().flatten() {
        Some(fd) => Stdio::from(fd),
        None => Stdio::null(),
    });
    cmd.stdout(match stdio.next().flatten() {
        Some(fd) => Stdio::from(fd),
        None => Stdio::null(),
    });
    cmd.stderr(Stdio::piped());

    let mut child = Running::start(cmd, dir.path());
    let status = child.wait_deadline();
    let mut stderr = String::new();
    if status.is_some() {
        child
            .strace
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut stderr)
            .unwrap();
    }
    drop(child);

    let accepted = placed
        .iter()
        .enumerate()
        .filter(|(_, p)| p.listener.as_ref().is_some_and(|w| !w.still_waiting()))
        .map(|(i, _)| i)
        .collect();
    let mut notified = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        notified.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    Outcome {
        status: status.map(|s| s.code().unwrap_or(-1)),
        stderr,
        client_vm_runs: fs::read_to_string(&record).unwrap_or_default(),
        accepted,
        notified,
        forbidden: forbidden_syscalls(dir.path()),
    }
}

/// Runs every case and fails with the list of those that went wrong.
fn check_all(cases: &[Case]) {
    let mut wrong = Vec::new();
    for case in cases {
        let out = run(case);
        let mut problems = Vec::new();
        if out.status != Some(case.status) {
            problems.push(format!("status {:?}, want {}", out.status, case.status));
        }
        let prefix = format!("{}: ", case.applet);
        let one_line = out.stderr.ends_with('\n') && out.stderr.matches('\n').count() == 1;
        if !one_line || !out.stderr.starts_with(&prefix) {
            problems.push("stderr is not one line from the applet".into());
        }
        if !out.stderr.contains(&case.reason) {
            problems.push(format!("reason {:?} missing", case.reason));
        }
        if !out.client_vm_runs.is_empty() {
            problems.push(format!("qrexec-client-vm ran: {:?}", out.client_vm_runs));
        }
        if !out.accepted.is_empty() {
            problems.push(format!("accepted on listeners {:?}", out.accepted));
        }
        if !out.notified.is_empty() {
            problems.push(format!("notified {:?}", out.notified));
        }
        if !out.forbidden.is_empty() {
            problems.push(format!("system calls {:?}", out.forbidden));
        }
        if !problems.is_empty() {
            wrong.push(format!(
                "{} {:?} fds={:?} LISTEN_FDS={:?} LISTEN_FDNAMES={:?} LISTEN_PID={:?}: {}\n    stderr: {:?}",
                case.applet,
                case.args,
                case.fds,
                case.listen_fds,
                case.names,
                case.listen_pid,
                problems.join("; "),
                out.stderr
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} cases wrong:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

/// The harness sees serving when it happens: a good configuration accepts
/// the waiting connection, runs qrexec-client-vm and sends READY=1.
#[test]
fn control_a_good_configuration_serves() {
    let dir = TempDir::new("hostile");
    let record = dir.path().join("runs");
    let environment = dir.path().join("environment");
    let script = recording_client_vm(
        dir.path(),
        &record,
        &format!("export -p > '{}'\n", environment.display()),
    );
    let notify_path = dir.path().join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let path = dir.path().join("listener");
    let listener = UnixListener::bind(&path).unwrap();
    let listener_copy = listener.try_clone().unwrap();
    let mut client = UnixStream::connect(&path).unwrap();

    let wrapper = wrapper_start(dir.path())
        + "exec 3<&0 </dev/null; LISTEN_PID=$$; export LISTEN_PID; exec \"$@\"";
    let mut cmd = traced_sh(dir.path());
    cmd.args(["-c", &wrapper, "sh", BIN, "qrexec-connect-tcp", "22"])
        .env_remove("JOURNAL_STREAM")
        .env("QREXEC_CLIENT_VM", &script)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", "work")
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = Running::start(cmd, dir.path());
    let end = Instant::now() + DEADLINE;
    let mut notified = String::new();
    let want_call = "-- work qubes.ConnectTCP+22";
    loop {
        let mut buf = [0u8; 256];
        if let Ok(n) = notify.recv(&mut buf) {
            notified += &String::from_utf8_lossy(&buf[..n]);
            notified.push('\n');
        }
        let runs = fs::read_to_string(&record).unwrap_or_default();
        if notified.contains("READY=1") && runs.contains(want_call) {
            break;
        }
        assert!(
            Instant::now() < end,
            "no READY=1 ({notified:?}) or no run ({runs:?})"
        );
        assert!(child.strace.try_wait().unwrap().is_none(), "exited early");
    }
    // The stand-in script exited without reading: the connection is closed.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = client.write_all(b"x");
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).unwrap_or(0), 0);
    kill(child.binary_pid().unwrap() as i32, libc::SIGTERM).unwrap();
    let status = child.wait_deadline().expect("exits after SIGTERM");
    assert_eq!(status.code(), Some(0));
    let waiting = Waiting::Unix(listener_copy, client);
    assert!(!waiting.still_waiting(), "the connection was accepted");
    let seen = forbidden_syscalls(dir.path());
    for call in ["accept4(", "clone", "execve("] {
        assert!(
            seen.iter().any(|l| l.contains(call)),
            "{call} not seen in {seen:#?}"
        );
    }
    // The child gets none of the socket activation variables (the script
    // lists its environment with the builtin `export -p`, no other program).
    let environment = fs::read_to_string(&environment).unwrap();
    assert!(environment.contains("export PATH="), "{environment}");
    for var in [
        "LISTEN_PID=",
        "LISTEN_FDS=",
        "LISTEN_FDNAMES=",
        "NOTIFY_SOCKET=",
    ] {
        assert!(
            !environment
                .lines()
                .any(|l| l.starts_with(&format!("export {var}"))),
            "{var} passed on"
        );
    }
    // No shell anywhere: qrexec-client-vm is executed directly, once for the
    // -h probe and once for the connection, with the call as separate words.
    let script = script.display();
    let execs: Vec<&str> = seen
        .iter()
        .map(|l| strip_pid(l))
        .filter(|call| call.starts_with("execve("))
        .collect();
    assert_eq!(execs.len(), 2, "{execs:#?}");
    assert!(
        execs[0].starts_with(&format!(r#"execve("{script}", ["{script}", "-h"]"#)),
        "{execs:#?}"
    );
    assert!(
        execs[1].starts_with(&format!(
            r#"execve("{script}", ["{script}", "--", "work", "qubes.ConnectTCP+22"]"#
        )),
        "{execs:#?}"
    );
}

#[test]
fn bad_fd_names_are_refused() {
    let long_call = format!("qubes.ConnectTCP+{}", "1".repeat(47));
    let too_long_call = format!("work {long_call}");
    let cases = [
        ("", "empty FileDescriptorName"),
        (&"a".repeat(255), "longer than 63"),
        (&"a".repeat(32), "qube name longer than 31"),
        (
            &format!("@dispvm+{}", "a".repeat(32)),
            "qube name longer than 31",
        ),
        ("wörk", "'ö' is not allowed"),
        ("work\u{7}", "'\\u{7}' is not allowed"),
        ("wo\trk", "'\\t' is not allowed"),
        ("work\n", "'\\n' is not allowed"),
        ("wo/rk", "'/' is not allowed"),
        ("work;reboot", "';' is not allowed"),
        ("../work", "starts with a letter"),
        ("work vm qubes.ConnectTCP+22", "more than two words"),
        (" work", "empty target"),
        ("work ", "empty service name"),
        ("work  qubes.X", "more than two words"),
        ("a$b", "'$' is not allowed"),
        ("$", "unknown target keyword"),
        ("$$default", "unknown target keyword"),
        ("@default$", "unknown target keyword"),
        ("$anyvm", "unknown target keyword"),
        ("@tag+work", "unknown target keyword"),
        ("2work", "starts with a letter"),
        ("work qubes.ConnectTCP+2/2", "'/' is not allowed in a call"),
        ("work qubes.Connect$TCP", "'$' is not allowed in a call"),
        ("work +22", "starts with the service name"),
        ("work qubes.ConnectTCP+22;x", "';' is not allowed in a call"),
        (&too_long_call, "call longer than 63"),
    ];
    let mut all: Vec<Case> = cases
        .iter()
        .map(|(name, reason)| case("qrexec-connect-tcp", &["22"], 2, reason).names(name))
        .collect();
    // The plain applet needs the whole call in the name.
    all.push(
        case(
            "qrexec-connect",
            &[],
            2,
            "needs 'TARGET SERVICE+ARG' here, or --service",
        )
        .names("work"),
    );
    all.push(
        case("qrexec-connect", &[], 2, "needs 'TARGET SERVICE+ARG'").names("qrexec-connect.socket"),
    );
    // The second of two sockets is bad: refused all the same, naming it.
    all.push(
        case(
            "qrexec-connect-unix",
            &["gpg-agent-ssh"],
            2,
            "bad FileDescriptorName \"wo/rk\"",
        )
        .fds(&[Fd::Listener, Fd::TcpListener])
        .names("work:wo/rk"),
    );
    check_all(&all);
}

#[test]
fn bad_applet_arguments_are_refused() {
    let long_name = "a".repeat(300);
    let cases: &[(&'static str, &[&str], &str)] = &[
        ("qrexec-connect-tcp", &["0"], "port '0'"),
        ("qrexec-connect-tcp", &["65536"], "port '65536'"),
        ("qrexec-connect-tcp", &["-1"], "-1"),
        ("qrexec-connect-tcp", &["--", "-1"], "port '-1'"),
        ("qrexec-connect-tcp", &["+22"], "port '+22'"),
        ("qrexec-connect-tcp", &["0022"], "port '0022'"),
        ("qrexec-connect-tcp", &["22 "], "port '22 '"),
        ("qrexec-connect-tcp", &["ssh"], "port 'ssh'"),
        ("qrexec-connect-tcp", &["2\n2"], "port '2\\n2'"),
        ("qrexec-connect-tcp", &[], "missing PORT"),
        ("qrexec-connect-tcp", &["22", "--service", "x"], "--service"),
        (
            "qrexec-connect-tcp-bind",
            &["2049"],
            "'2049' is not PORT-BINDADDR",
        ),
        ("qrexec-connect-tcp-bind", &["2049-"], "bind address ''"),
        ("qrexec-connect-tcp-bind", &["-127.0.0.1"], "-127.0.0.1"),
        ("qrexec-connect-tcp-bind", &["--", "-127.0.0.1"], "port ''"),
        (
            "qrexec-connect-tcp-bind",
            &["2049-10.0.0.1"],
            "outside 127.0.0.0/8",
        ),
        (
            "qrexec-connect-tcp-bind",
            &["2049-::1"],
            "bind address '::1'",
        ),
        (
            "qrexec-connect-tcp-bind",
            &["2049-127.0.0.1-x"],
            "bind address '127.0.0.1-x'",
        ),
        (
            "qrexec-connect-tcp-bind",
            &["2049-127.000.0.1"],
            "127.000.0.1",
        ),
        ("qrexec-connect-unix", &["."], "starts with '.'"),
        ("qrexec-connect-unix", &[".."], "starts with '.'"),
        ("qrexec-connect-unix", &[".hidden"], "starts with '.'"),
        ("qrexec-connect-unix", &["a/b"], "'/' is not allowed"),
        ("qrexec-connect-unix", &[""], "empty socket name"),
        (
            "qrexec-connect-unix",
            &[&long_name],
            "socket name longer than",
        ),
        ("qrexec-connect-unix", &["a+b"], "'+' is not allowed"),
        ("qrexec-connect-unix", &["a b"], "' ' is not allowed"),
        (
            "qrexec-connect",
            &["--argument", "1"],
            "--argument needs --service",
        ),
        (
            "qrexec-connect",
            &["--service", "a b"],
            "' ' is not allowed",
        ),
        ("qrexec-connect", &["--service", "a+b"], "contains '+'"),
        ("qrexec-connect", &["--max-connections", "0"], "at least 1"),
        (
            "qrexec-connect",
            &["--stdin-socket", "maybe"],
            "auto, yes or no",
        ),
    ];
    let all: Vec<Case> = cases
        .iter()
        .map(|(applet, args, reason)| case(applet, args, 2, reason))
        .collect();
    check_all(&all);
}

#[test]
fn bad_environment_is_refused() {
    let tcp = |status, reason| case("qrexec-connect-tcp", &["22"], status, reason);
    let all = [
        tcp(6, "none were passed").listen_fds("0").names(""),
        tcp(2, "LISTEN_FDS=\"-1\"").listen_fds("-1"),
        tcp(2, "LISTEN_FDS=99999 is more than").listen_fds("99999"),
        tcp(2, "LISTEN_FDS=\"abc\"").listen_fds("abc"),
        tcp(2, "LISTEN_FDS=\"\"").listen_fds(""),
        tcp(2, "LISTEN_FDNAMES has 2 names for LISTEN_FDS=1").names("work:work"),
        tcp(2, "LISTEN_FDNAMES has 1 names for LISTEN_FDS=2")
            .fds(&[Fd::Listener, Fd::Listener])
            .names("work"),
        // Another process's sockets: not ours to take.
        tcp(6, "none were passed").listen_pid("1"),
        tcp(2, "LISTEN_PID=\"x\"").listen_pid("x"),
        tcp(2, "LISTEN_PID=\"\"").listen_pid(""),
    ];
    check_all(&all);
}

#[test]
fn unsupported_passed_fds_are_refused() {
    let tcp = |reason| case("qrexec-connect-tcp", &["22"], 3, reason);
    let all = [
        tcp("is a datagram socket").fds(&[Fd::Udp]),
        tcp("is a datagram socket").fds(&[Fd::UnixDatagram]),
        tcp("is a FIFO").fds(&[Fd::Fifo]),
        tcp("is a regular file").fds(&[Fd::File]),
        tcp("is a character device").fds(&[Fd::DevNull]),
        // A closed fd counted by LISTEN_FDS is a passed fd we cannot serve.
        tcp("fd 3 (socket 1 of LISTEN_FDS) is not open").fds(&[Fd::Closed]),
        tcp("fd 4 (socket 2 of LISTEN_FDS) is not open")
            .fds(&[Fd::Listener, Fd::Closed])
            .names("work:work"),
        // A bad fd after a good one: the good listener is not served either.
        tcp("is a FIFO")
            .fds(&[Fd::TcpListener, Fd::Fifo])
            .names("work:work"),
    ];
    check_all(&all);
}

/// What the remote service writes to stderr reaches the client qube's log
/// through qrexec-client-vm: terminal escapes, bells and carriage returns
/// in it are logged escaped, on the connection's one line.
#[test]
fn remote_stderr_is_logged_escaped() {
    let dir = TempDir::new("hostile");
    let script = client_vm(
        dir.path(),
        "printf 'evil \\033[2J\\033[31mred\\007 \\rfake line\\n' >&2\n",
    );
    let log = dir.path().join("stderr");
    let path = dir.path().join("listener");
    let listener = UnixListener::bind(&path).unwrap();
    let mut client = UnixStream::connect(&path).unwrap();
    let wrapper = wrapper_start(dir.path())
        + "exec 3<&0 </dev/null; LISTEN_PID=$$; export LISTEN_PID; exec \"$@\"";
    let mut cmd = traced_sh(dir.path());
    cmd.args([
        "-c",
        &wrapper,
        "sh",
        BIN,
        "qrexec-connect-tcp",
        "--stdin-socket",
        "no",
        "22",
    ])
    .env_remove("JOURNAL_STREAM")
    .env_remove("NOTIFY_SOCKET")
    .env("QREXEC_CLIENT_VM", &script)
    .env("LISTEN_FDS", "1")
    .env("LISTEN_FDNAMES", "work")
    .stdin(Stdio::from(OwnedFd::from(listener)))
    .stdout(Stdio::null())
    .stderr(Stdio::from(fs::File::create(&log).unwrap()));
    let mut child = Running::start(cmd, dir.path());
    // The connection ends when the script exits.
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(client.read_to_end(&mut rest).unwrap(), 0);
    let end = Instant::now() + DEADLINE;
    while !fs::read_to_string(&log).unwrap().contains("done after") {
        assert!(Instant::now() < end, "no end-of-connection line");
        std::thread::sleep(Duration::from_millis(10));
    }
    kill(child.binary_pid().unwrap() as i32, libc::SIGTERM).unwrap();
    assert_eq!(child.wait_deadline().and_then(|s| s.code()), Some(0));
    let text = fs::read_to_string(&log).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("evil"))
        .unwrap_or_else(|| panic!("no stderr line logged:\n{text}"));
    assert!(
        line.ends_with(r"evil \u{1b}[2J\u{1b}[31mred\u{7} \rfake line"),
        "{line:?}"
    );
    assert!(!text.contains('\u{1b}') && !text.contains('\r'), "{text:?}");
}

/// A lone `-` among the words for qrexec-client-vm is no option: its getopt
/// would take it for the target (issue 15, item 9).
#[test]
fn lone_dash_for_qrexec_client_vm_is_refused() {
    let not_an_option = "\"-\" is not an option for qrexec-client-vm";
    check_all(&[
        case("qrexec-connect-tcp", &["22", "--", "-"], 2, not_an_option),
        case(
            "qrexec-connect-tcp",
            &["22", "--", "--buffer-size=65536", "-"],
            2,
            not_an_option,
        ),
        case(
            "qrexec-connect",
            &["--service", "qubes.ConnectTCP", "--", "-"],
            2,
            not_an_option,
        ),
    ]);
}

/// LISTEN_FDNAMES that is not even UTF-8 did not come from systemd, which
/// passes only ASCII: refused, never taken for unset, which would have sent
/// every connection to @default (issue 15, item 6).
#[test]
fn non_utf8_fd_names_are_refused() {
    use std::os::unix::ffi::OsStrExt;
    let dir = TempDir::new("hostile");
    let record = dir.path().join("runs");
    let script = recording_client_vm(dir.path(), &record, "");
    let path = dir.path().join("listener");
    let listener = UnixListener::bind(&path).unwrap();
    let listener_copy = listener.try_clone().unwrap();
    let client = UnixStream::connect(&path).unwrap();
    let wrapper = wrapper_start(dir.path())
        + "exec 3<&0 </dev/null; LISTEN_PID=$$; export LISTEN_PID; exec \"$@\"";
    let mut cmd = Command::new("sh");
    cmd.args(["-c", &wrapper, "sh", BIN, "qrexec-connect-tcp", "22"])
        .env_remove("JOURNAL_STREAM")
        .env_remove("NOTIFY_SOCKET")
        .env("QREXEC_CLIENT_VM", &script)
        .env("LISTEN_FDS", "1")
        .env("LISTEN_FDNAMES", std::ffi::OsStr::from_bytes(b"w\xffrk"))
        .stdin(Stdio::from(OwnedFd::from(listener)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = Running::start(cmd, dir.path());
    let status = child.wait_deadline();
    assert_eq!(status.and_then(|s| s.code()), Some(2), "not refused");
    let mut stderr = String::new();
    let mut pipe = child.strace.stderr.take().unwrap();
    pipe.read_to_string(&mut stderr).unwrap();
    assert_eq!(
        stderr,
        "qrexec-connect-tcp: error: LISTEN_FDNAMES=\"w\\xFFrk\" is not ASCII: systemd passes \
         only ASCII there (FileDescriptorName= in systemd.socket(5))\n"
    );
    assert!(fs::read_to_string(&record).is_err(), "qrexec-client-vm ran");
    assert!(Waiting::Unix(listener_copy, client).still_waiting());
}
