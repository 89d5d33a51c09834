//! The client daemon under the real systemd-socket-activate, calling the
//! qrexec stand-in: where each connection goes, what qrexec-client-vm is
//! given, and how connections end.

mod common;

use common::{Activate, Listen, Program, World};

/// Each qube's `qubes.ConnectTCP`/`qubes.ConnectUnix` says where it runs and
/// what it was called with, then echoes.
const IDENTIFY: &str =
    "echo \"$QUBE $QREXEC_SERVICE_FULL_NAME arg=$1 from=$QREXEC_REMOTE_DOMAIN\"; exec cat";

fn identifying_qube(world: &World, name: &str) {
    let qube = world.qube(name);
    qube.env("QUBE", name);
    qube.service("qubes.ConnectTCP", IDENTIFY);
    qube.service("qubes.ConnectUnix", IDENTIFY);
}

/// The bits of `/proc/PID/status` SigIgn of this test process, less SIGPIPE
/// (which Rust's runtime ignores in every test binary, and resets for children).
fn our_ignored_signals() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let ign = status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .unwrap()
        .trim();
    u64::from_str_radix(ign, 16).unwrap() & !(1 << (libc::SIGPIPE - 1))
}

#[test]
fn several_listeners_each_to_its_own_target() {
    let world = World::new();
    for qube in ["work", "personal", "vault", "dvm"] {
        identifying_qube(&world, qube);
    }
    world.policy(
        "qubes.ConnectTCP  +1234       client work        allow\n\
         qubes.ConnectTCP  +22         client @default    allow target=personal\n\
         qubes.ConnectUnix +gpg-agent  client vault       allow\n\
         qubes.ConnectTCP  +1234       client @dispvm:dvm allow\n",
    );
    let mut daemon = Activate::new(&world, Program::Applet("qrexec-connect-tcp".into()))
        .listen(Listen::Tcp4, "work")
        .listen(Listen::Tcp6, "@default qubes.ConnectTCP+22")
        .listen(Listen::Unix, "vault qubes.ConnectUnix+gpg-agent")
        .listen(Listen::Abstract, "@dispvm+dvm")
        .args(["1234"])
        .notify()
        .start();
    let expected = [
        ("work", "qubes.ConnectTCP+1234", "work"),
        ("@default", "qubes.ConnectTCP+22", "personal"),
        ("vault", "qubes.ConnectUnix+gpg-agent", "vault"),
        ("@dispvm:dvm", "qubes.ConnectTCP+1234", "dvm"),
    ];
    for (i, (_, call, qube)) in expected.iter().enumerate() {
        let reply = daemon.connect(i).exchange(format!("hello {i}").as_bytes());
        let arg = call.split_once('+').unwrap().1;
        assert_eq!(
            String::from_utf8(reply).unwrap(),
            format!("{qube} {call} arg={arg} from=client\nhello {i}"),
            "listener {i}"
        );
    }
    let text = daemon.wait_stderr_count("-> ", 4 + 4);
    for (i, (target, call, _)) in expected.iter().enumerate() {
        let line = format!("{} -> {target} {call}", daemon.address(i).shown());
        assert!(text.contains(&line), "no {line:?} in:\n{text}");
    }

    let calls = world.finished_calls(4);
    assert_eq!(calls.len(), 4);
    let ignored_here = our_ignored_signals();
    for (target, call, qube) in expected {
        let record = calls
            .iter()
            .find(|r| r.target_raw().as_deref() == Some(target))
            .unwrap_or_else(|| panic!("no call to {target}"));
        assert_eq!(
            record.args(),
            ["--use-stdin-socket", "--", target, call],
            "{target}"
        );
        assert_eq!(record.call_raw().as_deref(), Some(call));
        assert_eq!(record.info("qube").as_deref(), Some(qube));
        assert_eq!(record.status().as_deref(), Some("exit 0"));
        let env = record.env();
        for name in [
            "LISTEN_PID",
            "LISTEN_FDS",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
        ] {
            assert!(!env.contains_key(name), "{name} passed on to {target}");
        }
        assert!(env.contains_key("QREXEC_STANDIN_ROOT"), "-E variables kept");
        assert_eq!(
            record.fds(),
            [0, 1, 2],
            "fds inherited by the call to {target}"
        );
        assert_eq!(record.info("stdin").as_deref(), Some("socket"));
        assert_eq!(record.info("stdio_same_socket").as_deref(), Some("yes"));
        assert_eq!(record.info("stdin_nonblocking").as_deref(), Some("no"));
        let blocked = u64::from_str_radix(&record.info("sig_blocked").unwrap(), 16).unwrap();
        assert_eq!(blocked, 0, "signals blocked in the call to {target}");
        let ignored = u64::from_str_radix(&record.info("sig_ignored").unwrap(), 16).unwrap();
        // glibc's posix_spawn sets its two internal signals (32 SIGCANCEL, 33
        // SIGSETXID) to SIG_IGN in the child before exec; the child's own
        // libc installs its handlers for them.
        let glibc_internal = 0b11 << 31;
        assert_eq!(
            ignored & !ignored_here & !glibc_internal,
            0,
            "signals ignored in the call to {target} that this test does not ignore"
        );
    }
    let notes = daemon.notifications();
    assert!(notes.iter().any(|n| n == "READY=1"), "{notes:?}");
    assert!(daemon.is_running());
}
