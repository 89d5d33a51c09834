//! The stand-in, run as a program with real sockets: what a caller sees
//! (bytes, EOF, statuses, stderr) and what it records.

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{PermissionsExt, symlink};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use test_support::{DEADLINE, TempDir, wait_until};

const STANDIN: &str = env!("CARGO_BIN_EXE_qrexec-client-vm");

/// A world directory (`$QREXEC_STANDIN_ROOT`), removed at the end.
struct World {
    root: PathBuf,
    _dir: TempDir,
}

impl World {
    fn new(name: &str) -> Self {
        let dir = TempDir::new(&format!("standin-{name}"));
        World {
            root: dir.path().to_owned(),
            _dir: dir,
        }
    }

    fn policy(&self, text: &str) {
        fs::write(self.root.join("policy"), text).unwrap();
    }

    fn qube(&self, name: &str) -> PathBuf {
        let dir = self.root.join("qubes").join(name);
        fs::create_dir_all(dir.join("etc/qubes-rpc")).unwrap();
        dir
    }

    fn service(&self, qube: &str, name: &str, script: &str) -> PathBuf {
        let path = self.qube(qube).join("etc/qubes-rpc").join(name);
        fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(STANDIN);
        c.args(args)
            .env("QREXEC_STANDIN_ROOT", &self.root)
            .env_remove("QREXEC_STANDIN_OLD")
            .env_remove("QREXEC_STANDIN_SOURCE");
        c
    }

    fn output(&self, args: &[&str], input: &[u8]) -> Output {
        let mut child = self
            .command(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(input).unwrap();
        child.wait_with_output().unwrap()
    }

    /// Runs with one end of a socketpair as stdin and stdout (as
    /// qrexec-connect does); returns the child and our end.
    fn on_socket(&self, args: &[&str]) -> (Child, UnixStream) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let child = self
            .command(args)
            .stdin(Stdio::from(OwnedFd::from(theirs.try_clone().unwrap())))
            .stdout(Stdio::from(OwnedFd::from(theirs)))
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        ours.set_read_timeout(Some(DEADLINE)).unwrap();
        (child, ours)
    }

    /// The record of the one call made so far, once finished.
    fn only_record(&self) -> Record {
        let mut dirs: Vec<PathBuf> = fs::read_dir(self.root.join("calls"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        assert_eq!(dirs.len(), 1, "{dirs:?}");
        Record(dirs.pop().unwrap())
    }

    fn concurrency(&self) -> Vec<u64> {
        fs::read_to_string(self.root.join("concurrency"))
            .unwrap_or_default()
            .split_whitespace()
            .map(|n| n.parse().unwrap())
            .collect()
    }
}

struct Record(PathBuf);

impl Record {
    fn info(&self, key: &str) -> Option<String> {
        fs::read_to_string(self.0.join("info"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}=")).map(str::to_owned))
    }

    fn file(&self, name: &str) -> Vec<u8> {
        fs::read(self.0.join(name)).unwrap_or_default()
    }

    fn status(&self) -> String {
        String::from_utf8(self.file("status")).unwrap()
    }
}

/// Whether a process has ended (an orphan may linger as a zombie until
/// whoever adopted it reaps it).
fn gone(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => true,
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn help_lists_the_flag_unless_old() {
    let w = World::new("help");
    let out = w.output(&["-h"], b"");
    assert_eq!(out.status.code(), Some(0));
    assert!(
        stderr(&out).contains("--use-stdin-socket"),
        "{}",
        stderr(&out)
    );
    assert!(stderr(&out).contains("--buffer-size"));

    for out in [w.output(&["--no-stdin-socket-support", "-h"], b""), {
        let mut c = w.command(&["-h"]);
        c.env("QREXEC_STANDIN_OLD", "1")
            .stderr(Stdio::piped())
            .output()
            .unwrap()
    }] {
        assert_eq!(out.status.code(), Some(2), "older qrexec has no -h");
        assert!(stderr(&out).contains("invalid option -- 'h'"));
        assert!(stderr(&out).contains("usage:"));
        assert!(!stderr(&out).contains("--use-stdin-socket"));
    }
    let out = w.output(
        &[
            "--no-stdin-socket-support",
            "--use-stdin-socket",
            "--",
            "work",
            "qubes.X",
        ],
        b"",
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("unrecognized option '--use-stdin-socket'"));

    let out = w.output(&["--use-stdin-socket", "--", "work", "qubes.X"], b"");
    assert_eq!(out.status.code(), Some(2), "stdin is a pipe here");
    assert!(stderr(&out).contains("stdin not a socket"));
}

/// The service answers, ends its output, then reads the rest of its input.
const HALF_CLOSE: &str = "echo reply; exec >&-; cat > \"$HOME/got\"";

#[test]
fn stdin_socket_half_close_both_ways() {
    let w = World::new("half");
    w.policy("qubes.Half * client work allow\n");
    let qube = w.qube("work");
    w.service("work", "qubes.Half", HALF_CLOSE);
    let (mut child, mut sock) = w.on_socket(&["--use-stdin-socket", "--", "work", "qubes.Half"]);
    sock.write_all(b"request ").unwrap();
    // EOF arrives while our side still sends.
    let mut reply = Vec::new();
    sock.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"reply\n");
    sock.write_all(b"and more").unwrap();
    sock.shutdown(Shutdown::Write).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    assert_eq!(fs::read(qube.join("got")).unwrap(), b"request and more");

    let r = w.only_record();
    assert_eq!(r.info("use_stdin_socket").as_deref(), Some("yes"));
    assert_eq!(r.info("stdin").as_deref(), Some("socket"));
    assert_eq!(r.info("stdio_same_socket").as_deref(), Some("yes"));
    // Whatever else is open was inherited by this test process itself.
    let fds = String::from_utf8(r.file("fds")).unwrap();
    let link = |fd: &str| {
        fds.lines()
            .find_map(|l| l.strip_prefix(&format!("{fd} -> ")))
            .map(str::to_owned)
    };
    assert!(link("0").unwrap().starts_with("socket:"), "{fds}");
    assert_eq!(link("0"), link("1"));
    assert!(link("2").is_some());
    assert_eq!(r.status(), "exit 0");
}

#[test]
fn older_qrexec_only_closes_stdout() {
    let w = World::new("old");
    w.policy("qubes.Half * client work allow\n");
    let qube = w.qube("work");
    w.service("work", "qubes.Half", HALF_CLOSE);
    let (mut child, mut sock) = w.on_socket(&["--no-stdin-socket-support", "work", "qubes.Half"]);
    sock.write_all(b"request").unwrap();
    let mut reply = [0u8; 6];
    sock.read_exact(&mut reply).unwrap();
    assert_eq!(&reply, b"reply\n");
    // close(1) of a socket that is also fd 0: nothing reaches us.
    sock.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let e = sock.read(&mut [0u8; 1]).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        "{e}"
    );
    sock.shutdown(Shutdown::Write).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(0));
    // Now the process is gone, and so is the socket's other end.
    sock.set_read_timeout(Some(DEADLINE)).unwrap();
    assert_eq!(sock.read(&mut [0u8; 1]).unwrap(), 0);
    assert_eq!(fs::read(qube.join("got")).unwrap(), b"request");
    assert_eq!(w.only_record().info("old_qrexec").as_deref(), Some("yes"));
}

#[test]
fn mangles_silently_and_records_both() {
    let w = World::new("mangle");
    w.policy("* * client @anyvm allow\n");
    w.qube("wo_rk@");
    let out = w.output(&["--", "wo/rk$", "qubes.X+a b:c"], b"");
    // The mangled target exists and has no such service: qrexec went on.
    assert_eq!(out.status.code(), Some(127), "{}", stderr(&out));
    let r = w.only_record();
    assert_eq!(r.file("target_raw"), b"wo/rk$");
    assert_eq!(r.file("call_raw"), b"qubes.X+a b:c");
    assert_eq!(r.info("target").as_deref(), Some("wo_rk@"));
    assert_eq!(r.info("call").as_deref(), Some("qubes.X+a_b_c"));
    assert_eq!(r.info("argument").as_deref(), Some("a_b_c"));

    let long = "a".repeat(70);
    w.output(&["--", &long, "qubes.X"], b"");
    let truncated = fs::read_dir(w.root.join("calls"))
        .unwrap()
        .map(|e| Record(e.unwrap().path()))
        .find(|r| r.file("target_raw").len() == 70)
        .unwrap();
    assert_eq!(truncated.info("target"), Some("a".repeat(63)));
    assert_eq!(
        w.output(&["--", "$default", "qubes.X"], b"").status.code(),
        Some(126),
        "@default needs target="
    );
}

#[test]
fn statuses() {
    let w = World::new("status");
    w.policy(
        "qubes.Deny * @anyvm @anyvm deny\n\
         qubes.Default * client @default allow target=work\n\
         * * client @anyvm allow\n",
    );
    w.service("work", "qubes.Three", "echo out; echo err >&2; exit 3");
    w.service("work", "qubes.Kill", "kill -TERM $$");
    w.service(
        "work",
        "qubes.Default",
        "echo \"$QREXEC_REQUESTED_TARGET_KEYWORD\"",
    );
    let plain = w.qube("work").join("etc/qubes-rpc/qubes.Plain");
    fs::write(&plain, "#!/bin/sh\n").unwrap();
    fs::set_permissions(&plain, fs::Permissions::from_mode(0o644)).unwrap();

    let out = w.output(&["--", "work", "qubes.Three"], b"");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(out.stdout, b"out\n");
    assert_eq!(stderr(&out), "err\n", "the service's stderr reaches ours");
    let code = |args: &[&str]| w.output(args, b"").status.code();

    assert_eq!(code(&["--", "work", "qubes.Kill"]), Some(128 + 15));
    assert_eq!(code(&["--", "work", "qubes.Plain"]), Some(125));
    assert_eq!(code(&["--", "work", "qubes.Missing+1"]), Some(127));
    assert_eq!(code(&["--", "nowhere", "qubes.Three"]), Some(126));
    let out = w.output(&["--", "work", "qubes.Deny"], b"");
    assert_eq!(
        (out.status.code(), stderr(&out)),
        (Some(126), "Request refused\n".into())
    );
    let out = w.output(&["--", "@default", "qubes.Default"], b"");
    assert_eq!(
        (out.status.code(), out.stdout),
        (Some(0), b"default\n".to_vec())
    );

    let out = w.output(&["work", "qubes.Three", "/bin/true"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("local program"), "{}", stderr(&out));
    let out = w.output(&["work"], b"");
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("usage:"));
    let out = w.output(&["--buffer-size=x", "work", "qubes.Three"], b"");
    assert_eq!(out.status.code(), Some(1));

    let out = Command::new(STANDIN)
        .args(["--", "work", "qubes.Three"])
        .env_remove("QREXEC_STANDIN_ROOT")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "qrexec is not running");
}

#[test]
fn service_environment() {
    let w = World::new("env");
    w.policy("* * @anyvm @anyvm allow\n");
    let qube = w.qube("work");
    fs::write(qube.join("env"), "XDG_RUNTIME_DIR=/run/user/1000\n").unwrap();
    w.service(
        "work",
        "qubes.Env",
        "env > \"$HOME/seen-env\"; echo \"$#:$1\"; pwd",
    );
    let mut c = w.command(&["--", "work", "qubes.Env+arg"]);
    let out = c
        .env("QREXEC_STANDIN_SOURCE", "vault")
        .env("LEAK", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let expected = format!("1:arg\n{}\n", qube.display());
    assert_eq!(String::from_utf8_lossy(&out.stdout), expected);
    let env = fs::read_to_string(qube.join("seen-env")).unwrap();
    for line in [
        "QREXEC_SERVICE_FULL_NAME=qubes.Env+arg",
        "QREXEC_SERVICE_ARGUMENT=arg",
        "QREXEC_REMOTE_DOMAIN=vault",
        "QREXEC_REQUESTED_TARGET=work",
        "XDG_RUNTIME_DIR=/run/user/1000",
        &format!("HOME={}", qube.display()),
    ] {
        assert!(env.lines().any(|l| l == line), "{line} not in\n{env}");
    }
    assert!(env.contains("QREXEC_AGENT_PID="));
    assert!(
        !env.contains("LEAK") && !env.contains("QREXEC_STANDIN"),
        "{env}"
    );

    let out = w.output(&["--", "work", "qubes.Env"], b"");
    assert_eq!(out.stdout.split(|&b| b == b'\n').next(), Some(&b"0:"[..]));
    let env = fs::read_to_string(qube.join("seen-env")).unwrap();
    assert!(env.lines().any(|l| l == "QREXEC_SERVICE_ARGUMENT="));
}

#[test]
fn socket_services() {
    let w = World::new("socket");
    w.policy("* * client work allow\n");
    let qube = w.qube("work");
    let path = qube.join("agent.sock");
    let listener = UnixListener::bind(&path).unwrap();
    symlink(&path, qube.join("etc/qubes-rpc/qubes.ConnectUnix")).unwrap();
    let server = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap();
            conn.write_all(b"pong").unwrap();
            seen.push(got);
        }
        seen
    });
    let (mut child, mut sock) = w.on_socket(&[
        "--use-stdin-socket",
        "--",
        "work",
        "qubes.ConnectUnix+agent",
    ]);
    sock.write_all(b"ping").unwrap();
    sock.shutdown(Shutdown::Write).unwrap();
    let mut reply = Vec::new();
    sock.read_to_end(&mut reply).unwrap();
    assert_eq!(reply, b"pong");
    assert_eq!(child.wait().unwrap().code(), Some(0));

    let config = qube.join("etc/qubes/rpc-config");
    fs::create_dir_all(&config).unwrap();
    fs::write(
        config.join("qubes.ConnectUnix"),
        "skip-service-descriptor=true\n",
    )
    .unwrap();
    let out = w.output(&["--", "work", "qubes.ConnectUnix+agent"], b"raw");
    assert_eq!((out.status.code(), out.stdout), (Some(0), b"pong".to_vec()));
    let seen = server.join().unwrap();
    assert_eq!(seen[0], b"qubes.ConnectUnix+agent client\0ping");
    assert_eq!(seen[1], b"raw");

    // The socket file is still there, nobody listens: 125.
    let out = w.output(&["--", "work", "qubes.ConnectUnix+agent"], b"");
    assert_eq!(out.status.code(), Some(125), "{}", stderr(&out));
}

#[test]
fn tcp_services() {
    let w = World::new("tcp");
    w.policy("* * client work allow\n");
    let qube = w.qube("work");
    symlink(
        "/dev/tcp/127.0.0.1",
        qube.join("etc/qubes-rpc/qubes.ConnectTCP"),
    )
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        conn.write_all(&got).unwrap();
        got
    });
    let call = format!("qubes.ConnectTCP+{port}");
    let out = w.output(&["--", "work", &call], b"no descriptor");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(out.stdout, b"no descriptor");
    assert_eq!(server.join().unwrap(), b"no descriptor");
    // The listener is gone: connection refused, 125.
    assert_eq!(
        w.output(&["--", "work", &call], b"").status.code(),
        Some(125)
    );
}

#[test]
fn counts_concurrent_calls_and_dies_by_signal() {
    let w = World::new("count");
    w.policy("* * client work allow\n");
    let qube = w.qube("work");
    w.service("work", "qubes.Hold", "cat; echo done");
    w.service(
        "work",
        "qubes.Sleep",
        "echo $$ > \"$HOME/pid\"; exec sleep 600",
    );
    let held: Vec<(Child, UnixStream)> = (0..3)
        .map(|_| w.on_socket(&["--use-stdin-socket", "--", "work", "qubes.Hold"]))
        .collect();
    wait_until("3 running", || w.concurrency().first() == Some(&3));
    for (mut child, sock) in held {
        sock.shutdown(Shutdown::Write).unwrap();
        assert_eq!(child.wait().unwrap().code(), Some(0));
    }
    assert_eq!(w.concurrency(), [0, 3, 3]);

    let (mut child, _sock) = w.on_socket(&["--use-stdin-socket", "--", "work", "qubes.Sleep"]);
    let pid_file = qube.join("pid");
    wait_until("the service", || {
        fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n'))
    });
    let service_pid: i32 = fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    test_support::sys::kill(child.id() as i32, libc::SIGTERM).unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(child.wait().unwrap().signal(), Some(15));
    assert_eq!(w.concurrency()[0], 0, "left the count on SIGTERM");
    let record = fs::read_dir(w.root.join("calls"))
        .unwrap()
        .map(|e| Record(e.unwrap().path()))
        .find(|r| r.info("call").as_deref() == Some("qubes.Sleep"))
        .unwrap();
    assert_eq!(record.status(), "signal 15");
    wait_until("the service to end", || gone(service_pid));
}

/// Whether process `pid` holds a `flock(2)` lock, or waits for one: a
/// line of /proc/locks (`N: FLOCK ADVISORY WRITE PID ...`, with `->` after
/// `N:` for a waiter).
fn flock_of(pid: u32, waiting: bool) -> bool {
    let pid = pid.to_string();
    fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .any(|line| {
            let mut fields = line.split_whitespace().skip(1).peekable();
            if fields.next_if_eq(&"->").is_some() != waiting {
                return false;
            }
            fields.next() == Some("FLOCK") && fields.nth(2) == Some(pid.as_str())
        })
}

/// ssh sends its ProxyCommand SIGHUP as it exits, just when the call ends
/// on its own: a signal that comes while the run records its own end must
/// not end the process before the status is written. The counter's lock,
/// held here, stops the run inside that recording.
#[test]
fn a_signal_while_the_run_records_its_end_keeps_the_status() {
    let w = World::new("late-signal");
    w.policy("* * client work allow\n");
    w.service("work", "qubes.Hold", "cat >/dev/null");
    let mut child = w
        .command(&["--", "work", "qubes.Hold"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_until("the call to count itself in", || {
        w.concurrency().first() == Some(&1)
    });
    let mut holder = Command::new("flock")
        .arg(w.root.join("concurrency.lock"))
        .arg("cat")
        .stdin(Stdio::piped())
        .spawn()
        .expect("run flock(1)");
    wait_until("flock(1) to hold the counter's lock", || {
        flock_of(holder.id(), false)
    });
    // The service ends, and so does the run: it waits for the lock to
    // count itself out, and only then writes its status.
    drop(child.stdin.take());
    let pid = child.id();
    wait_until("the run to wait for the lock", || flock_of(pid, true));
    test_support::sys::kill(pid as i32, libc::SIGHUP).unwrap();
    // Only the waiting thread is left once the signal is handled (or
    // nothing: the bug this test is about).
    wait_until("the signal to be handled", || {
        gone(pid as i32)
            || fs::read_dir(format!("/proc/{pid}/task")).map_or(true, |t| t.count() == 1)
    });
    drop(holder.stdin.take());
    assert!(holder.wait().unwrap().success());

    use std::os::unix::process::ExitStatusExt;
    let status = child.wait().unwrap();
    let record = w.only_record();
    assert_eq!(record.status(), "exit 0", "{status:?}");
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert!(status.signal().is_none());
    assert_eq!(w.concurrency(), [0, 1, 1]);
}
