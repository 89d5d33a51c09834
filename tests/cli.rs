//! The binary's command line and start-up: applet dispatch, refusals with
//! their exit statuses, and that it is statically linked.

mod common;

use std::net::UdpSocket;
use std::process::Command;

use common::{Activate, Address, Listen, Program, World, binary, run, standin};

fn applet(name: &str) -> Program {
    Program::Applet(name.into())
}

#[test]
fn lists_and_dispatches_applets() {
    let world = World::new();
    let names = [
        "qrexec-connect",
        "qrexec-connect-tcp",
        "qrexec-connect-tcp-bind",
        "qrexec-connect-unix",
    ];
    let (code, out, _) = run(&Program::Multicall("--list".into()), &[], &world);
    assert_eq!(code, Some(0));
    for name in names {
        assert!(
            out.lines()
                .any(|l| l.split_whitespace().next() == Some(name)),
            "{name} not listed:\n{out}"
        );
    }

    let (code, _, err) = run(&Program::Multicall("nope".into()), &[], &world);
    assert_eq!(code, Some(2));
    assert!(err.contains("unknown applet 'nope'"), "{err}");
    assert!(
        err.contains("qrexec-connect-unix"),
        "the list follows:\n{err}"
    );
    let (code, _, err) = run(&applet("qrexec-connect-bogus"), &[], &world);
    assert_eq!(code, Some(2));
    assert!(err.contains("qrexec-connect-tcp"), "{err}");

    // Each way of naming the applet reaches it: its own --help, and its
    // own name when it finds no sockets.
    for program in [
        applet("qrexec-connect-tcp"),
        Program::Multicall("qrexec-connect-tcp".into()),
        Program::Multicall("tcp".into()),
    ] {
        let (code, out, _) = run(&program, &["--help"], &world);
        assert_eq!(code, Some(0), "{program:?}");
        assert!(out.contains("qrexec-connect-tcp"), "{program:?}:\n{out}");
        let (code, _, err) = run(&program, &["1234"], &world);
        assert_eq!(code, Some(6), "{program:?}");
        assert!(
            err.starts_with("qrexec-connect-tcp: "),
            "{program:?}:\n{err}"
        );
    }
}

#[test]
fn without_sockets_explains_and_exits_6() {
    let world = World::new();
    for (program, args) in [
        (applet("qrexec-connect-tcp"), &["1234"][..]),
        (applet("qrexec-connect-unix"), &["gpg-agent-ssh"][..]),
        (Program::Plain, &[][..]),
    ] {
        let (code, out, err) = run(&program, args, &world);
        assert_eq!(code, Some(6), "{program:?}: {err}");
        assert_eq!(out, "");
        assert!(err.contains("LISTEN_FDS"), "{err}");
        assert!(
            err.contains("systemd-socket-activate --listen=") && err.contains("--fdname="),
            "no example in:\n{err}"
        );
    }
}

#[test]
fn bad_arguments_exit_2() {
    let world = World::new();
    for (program, args) in [
        (applet("qrexec-connect-tcp"), &["0"][..]),
        (applet("qrexec-connect-tcp"), &["1234", "junk"][..]),
        (applet("qrexec-connect-tcp"), &["1234", "--", "--"][..]),
        (
            applet("qrexec-connect-tcp"),
            &["--stdin-socket=maybe", "1234"][..],
        ),
        (
            applet("qrexec-connect-tcp"),
            &["--max-connections=0", "1234"][..],
        ),
        (applet("qrexec-connect-tcp-bind"), &["2049-10.0.0.1"][..]),
        (applet("qrexec-connect-unix"), &["../x"][..]),
        (Program::Plain, &["--argument", "1"][..]),
        (Program::Plain, &["--service=qubes.X/y"][..]),
        (applet("qrexec-connect-socks"), &["--max-starting=0"][..]),
        // Past a day: a deadline must not overflow the clock.
        (
            applet("qrexec-connect-socks"),
            &["--starting-ms=18446744073709551615"][..],
        ),
    ] {
        let (code, _, err) = run(&program, args, &world);
        assert_eq!(code, Some(2), "{program:?} {args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{program:?} {args:?}: {err}");
    }
}

/// A bad FileDescriptorName stops the daemon at start-up, naming the socket,
/// its address and the value, before qrexec-client-vm is ever run, which
/// would have called something else without a word.
#[test]
fn bad_fd_names_exit_2_before_qrexec_mangles_them() {
    let world = World::new();
    world.policy("* * client @anyvm allow\n");
    for (bad, target_delivered, call_delivered) in [
        ("wo/rk", "wo_rk", "qubes.ConnectTCP+1234"),
        ("wo$rk", "wo@rk", "qubes.ConnectTCP+1234"),
        (
            "work qubes.ConnectTCP+1234;id",
            "work",
            "qubes.ConnectTCP+1234_id",
        ),
        (
            "work qubes.ConnectUnix+a@b",
            "work",
            "qubes.ConnectUnix+a_b",
        ),
    ] {
        let mut daemon = Activate::new(&world, applet("qrexec-connect-tcp"))
            .listen(Listen::Tcp4, "personal")
            .listen(Listen::Tcp4, bad)
            .args(["1234"])
            .start();
        // systemd-socket-activate starts it at the first connection.
        daemon.address(0).poke();
        assert_eq!(daemon.wait_exit().code(), Some(2), "{bad}");
        let text = daemon.stderr();
        let Address::Inet(addr) = daemon.address(1) else {
            unreachable!()
        };
        assert!(
            text.contains(&format!("socket {addr}")) && text.contains(bad),
            "{bad}: the message names the socket and the value:\n{text}"
        );
        assert!(
            world.records().is_empty(),
            "{bad}: qrexec-client-vm was run"
        );

        // What qrexec would have made of it.
        let (target, call) = bad
            .split_once(' ')
            .unwrap_or((bad, "qubes.ConnectTCP+1234"));
        let out = Command::new(standin())
            .args(["--", target, call])
            .env("QREXEC_STANDIN_ROOT", world.root())
            .output()
            .unwrap();
        assert_ne!(out.status.code(), Some(2));
        let calls = world.calls();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].info("target").as_deref(), Some(target_delivered));
        assert_eq!(calls[0].info("call").as_deref(), Some(call_delivered));
        std::fs::remove_dir_all(world.root().join("calls")).unwrap();
    }

    for (bad, why) in [
        ("@dispvm+", "disposable template"),
        (&"a".repeat(64)[..], "longer than"),
        ("work  qubes.X", "more than two words"),
    ] {
        let mut daemon = Activate::new(&world, applet("qrexec-connect-tcp"))
            .listen(Listen::Unix, bad)
            .args(["1234"])
            .start();
        daemon.address(0).poke();
        assert_eq!(daemon.wait_exit().code(), Some(2), "{bad}");
        let text = daemon.stderr();
        assert!(text.contains(why), "{bad}:\n{text}");
        assert!(text.contains(&daemon.address(0).shown()), "{bad}:\n{text}");
    }
}

#[test]
fn datagram_socket_exits_3() {
    let world = World::new();
    let mut daemon = Activate::new(&world, applet("qrexec-connect-tcp"))
        .listen(Listen::Tcp4, "work")
        .args(["1234"])
        .datagram()
        .start();
    let Address::Inet(addr) = daemon.address(0).clone() else {
        unreachable!()
    };
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .send_to(b"wake up", addr)
        .unwrap();
    assert_eq!(daemon.wait_exit().code(), Some(3));
    let text = daemon.stderr();
    assert!(text.contains("datagram"), "{text}");
    assert!(text.contains("'work'"), "{text}");
}

/// The binary runs in any template, whatever its glibc: no dynamic
/// dependencies. (The test profile's binary; the release profile uses the
/// same target flags.)
#[test]
fn statically_linked() {
    let out = Command::new("readelf")
        .arg("--dynamic")
        .arg(binary())
        .output()
        .expect("readelf (binutils)");
    assert!(out.status.success());
    let dynamic = String::from_utf8_lossy(&out.stdout);
    assert!(!dynamic.contains("(NEEDED)"), "{dynamic}");
    if let Ok(out) = Command::new("file").arg("--brief").arg(binary()).output() {
        let kind = String::from_utf8_lossy(&out.stdout);
        assert!(kind.contains("static-pie linked"), "{kind}");
    }
}

/// An AF_VSOCK listener (seed 003's transport) is taken and named at
/// start-up. Only listened on: nothing on this machine may be connected to
/// over VSOCK. python3 makes the socket because systemd-socket-activate would
/// start us only at a first connection.
#[test]
fn vsock_listener_is_served() {
    use std::io::{BufRead, BufReader};
    if !std::path::Path::new("/dev/vsock").exists() {
        eprintln!("SKIPPED: no /dev/vsock here");
        return;
    }
    let script = "import socket, os, sys\n\
        s = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)\n\
        s.bind((socket.VMADDR_CID_ANY, socket.VMADDR_PORT_ANY))\n\
        s.listen()\n\
        os.dup2(s.fileno(), 3)\n\
        os.set_inheritable(3, True)\n\
        os.environ.update(LISTEN_PID=str(os.getpid()), LISTEN_FDS='1', LISTEN_FDNAMES='work')\n\
        os.execv(sys.argv[1], ['qrexec-connect-tcp', '22', '--stdin-socket', 'yes'])\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .arg(binary())
        .env("QREXEC_CLIENT_VM", standin())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().expect("a line").unwrap();
    assert!(
        first.starts_with("qrexec-connect-tcp: vsock:4294967295:")
            && first.ends_with(" -> work qubes.ConnectTCP+22"),
        "{first}"
    );
    // SIGTERM, as systemd stops it: drained (nothing open) and exit 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(child.wait().unwrap().code(), Some(0));
}

/// `--use-stdin-socket` came with qrexec 4.2.19, in the Qubes R4.2 updates
/// of May 2024: nothing may send a reader to R4.3 for it (issue 15, item 11).
#[test]
fn stdin_socket_is_dated_to_qubes_r4_2() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["README.md", "src/qrexec.rs", "docs/security.md"] {
        let text = std::fs::read_to_string(root.join(file)).unwrap();
        let flat = text.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(!flat.contains("R4.3"), "{file} dates it to R4.3");
    }
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    assert!(readme.contains("qrexec 4.2.19, in the Qubes R4.2 updates of May 2024"));
}

/// `connection` and `my.socket` are qube names: in the listening form they
/// are the target, not systemd's default name (issue 15, item 6), while a
/// socket unit's name that cannot be a qube (a template instance's `@`)
/// still means `@default`, and so does `connection` for `Accept=yes`.
#[test]
fn qube_names_like_systemd_defaults_are_targets() {
    let world = World::new();
    let daemon = Activate::new(&world, applet("qrexec-connect-tcp"))
        .listen(Listen::Tcp4, "connection")
        .listen(Listen::Tcp4, "my.socket")
        .listen(Listen::Unix, "qrexec-connect-tcp@22.socket")
        .args(["22"])
        .start();
    daemon.address(0).poke();
    let text = daemon.wait_stderr_count(" -> ", 3);
    for (i, target) in ["connection", "my.socket", "@default"].iter().enumerate() {
        let line = format!(
            "{} -> {target} qubes.ConnectTCP+22",
            daemon.address(i).shown()
        );
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }
    assert!(
        text.contains("socket ") && text.contains("calls the qube my.socket"),
        "a name like a socket unit's is pointed out:\n{text}"
    );

    let accepted = Activate::new(&world, applet("qrexec-connect-tcp"))
        .listen(Listen::Unix, "connection")
        .args(["22", "--stdin-socket", "no"])
        .accept()
        .start();
    accepted.address(0).poke();
    let text = accepted.wait_stderr(" after ");
    assert!(
        text.contains(" -> @default qubes.ConnectTCP+22: "),
        "{text}"
    );
}
