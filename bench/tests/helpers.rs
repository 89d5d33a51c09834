//! The bench's helper programs do what the figures assume they do: the
//! stand-in echoes and half-closes like qrexec-client-vm, the floors relay
//! and spawn. Real sockets, real processes, each killed by pid on drop.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qrexec_connect_bench::pattern::Pattern;
use qrexec_connect_bench::{copy, load, procs};
use test_support::Killed;

const STANDIN: &str = env!("CARGO_BIN_EXE_bench-qrexec-client-vm");
const FLOOR: &str = env!("CARGO_BIN_EXE_bench-client-floor");
const RELAY: &str = env!("CARGO_BIN_EXE_bench-splice-relay");
const LIMIT: Duration = Duration::from_secs(10);

/// The exit code of `child`, or None when it has not exited within LIMIT.
fn exit_code(mut child: Killed) -> Option<i32> {
    let deadline = Instant::now() + LIMIT;
    while Instant::now() < deadline {
        if let Some(status) = child.0.try_wait().unwrap() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn timeouts(s: &UnixStream) {
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.set_write_timeout(Some(LIMIT)).unwrap();
}

/// Runs `cmd` with stdin and stdout two socketpairs, as qrexec-agent does.
fn with_pairs(cmd: &mut Command) -> (UnixStream, UnixStream, Killed) {
    let (input, child_in) = UnixStream::pair().unwrap();
    let (output, child_out) = UnixStream::pair().unwrap();
    timeouts(&input);
    timeouts(&output);
    let child = cmd
        .stdin(Stdio::from(OwnedFd::from(child_in)))
        .stdout(Stdio::from(OwnedFd::from(child_out)))
        .spawn()
        .unwrap();
    (input, output, Killed(child))
}

#[test]
fn standin_lists_the_flag_and_needs_target_and_call() {
    let help = Command::new(STANDIN).arg("-h").output().unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--use-stdin-socket"));
    let bare = Command::new(STANDIN).arg("work").output().unwrap();
    assert_eq!(bare.status.code(), Some(2));
}

#[test]
fn standin_echoes_and_shuts_down_the_socket_at_eof() {
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    timeouts(&ours);
    let fd = OwnedFd::from(theirs);
    let child = Command::new(STANDIN)
        .args(["--use-stdin-socket", "--", "work", "qubes.ConnectTCP+22"])
        .stdin(Stdio::from(fd.try_clone().unwrap()))
        .stdout(Stdio::from(fd))
        .spawn()
        .unwrap();
    let child = Killed(child);
    ours.write_all(b"ping\n").unwrap();
    let mut echo = [0u8; 5];
    ours.read_exact(&mut echo).unwrap();
    assert_eq!(&echo, b"ping\n");
    ours.shutdown(Shutdown::Write).unwrap();
    // EOF comes from the stand-in's shutdown, before or as it exits.
    load::expect_eof(&mut ours).unwrap();
    assert_eq!(exit_code(child), Some(0));
}

#[test]
fn standin_without_the_flag_closes_stdout_only() {
    let (mut input, mut output, child) = with_pairs(Command::new(STANDIN).args(["work", "echo"]));
    input.write_all(b"abc").unwrap();
    input.shutdown(Shutdown::Write).unwrap();
    let mut all = Vec::new();
    output.read_to_end(&mut all).unwrap();
    assert_eq!(all, b"abc");
    assert_eq!(exit_code(child), Some(0));
}

#[test]
fn splice_relay_moves_verified_bytes_both_ways_and_half_closes() {
    let dir = std::env::temp_dir().join(format!("bench-relay-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("echo.sock");
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path).unwrap();
    let server = std::thread::spawn(move || {
        let (c, _) = listener.accept().unwrap();
        let fd = OwnedFd::from(c);
        copy::splice(std::os::fd::AsFd::as_fd(&fd), std::os::fd::AsFd::as_fd(&fd)).unwrap();
        copy::end_write(std::os::fd::AsFd::as_fd(&fd));
    });
    let (input, output, child) = with_pairs(Command::new(RELAY).arg("unix").arg(&path));
    let bytes = 8 << 20;
    load::bulk(
        output,
        input,
        |w: &UnixStream| {
            let _ = w.shutdown(Shutdown::Write);
        },
        bytes,
        &Pattern::new(),
    )
    .unwrap();
    assert_eq!(exit_code(child), Some(0));
    server.join().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn client_floor_spawns_the_program_per_connection() {
    let Some(activate) = procs::which("systemd-socket-activate") else {
        panic!("systemd-socket-activate is needed (Debian package systemd)");
    };
    let port = procs::free_port();
    let child = Command::new(activate)
        .args(["-l", &format!("127.0.0.1:{port}"), FLOOR, STANDIN])
        .args(["--use-stdin-socket", "--", "work", "qubes.ConnectTCP+1"])
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _child = Killed(child);
    let deadline = Instant::now() + LIMIT;
    while !procs::listening(port) {
        assert!(Instant::now() < deadline, "no listener on {port}");
        std::thread::sleep(Duration::from_millis(2));
    }
    let addr = ([127, 0, 0, 1], port).into();
    for _ in 0..3 {
        load::one_line(addr, load::Via::Direct).unwrap();
    }
    let r = load::rate(addr, load::Via::Direct, 4, Duration::from_millis(200), 100);
    assert_eq!(r.errors, 0, "{:?}", r.first_error);
    assert!(r.completed > 0);
    // The connection stays usable for bulk transfer.
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let w = s.try_clone().unwrap();
    load::bulk(
        &s,
        w,
        |w: &TcpStream| {
            let _ = w.shutdown(Shutdown::Write);
        },
        1 << 20,
        &Pattern::new(),
    )
    .unwrap();
}
