//! `--stdin-socket auto` remembers qrexec-client-vm's `-h` answer in
//! `$RUNTIME_DIRECTORY` (src/stdin_socket.rs): the daemon, started again and
//! again by the real systemd-socket-activate as socket activation and
//! `--exit-idle-time` do, asks once per installed program.
//!
//! Each test has its own copy of the stand-in, whose time stamps it may
//! change, and its own runtime directory. Every run of the stand-in is
//! recorded; a run with the single argument `-h` is a probe.

mod common;

use std::ffi::OsString;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use common::{Activate, Daemon, TempDir, World, echo_world, standin, wait_until};
use qrexec_connect::stdin_socket::{CACHE_FILE, Key, format, parse};

const FLAG: &str = "--use-stdin-socket";
const UNSUPPORTED: &str = "does not support --use-stdin-socket";

/// A world whose qube `work` echoes, with a copy of the stand-in of its own.
fn echo_world_own_standin() -> (World, PathBuf) {
    let world = echo_world();
    let program = world.root().join("bin/qrexec-client-vm");
    fs::copy(standin(), &program).unwrap();
    (world, program)
}

/// Starts `qrexec-connect-tcp -v 1234` on `program`, with
/// `RUNTIME_DIRECTORY=runtime` when given, and serves one connection
/// (systemd-socket-activate starts the daemon at the first one) to its end.
fn start_and_serve(
    world: &World,
    program: &Path,
    runtime: Option<OsString>,
    extra_env: &[(&str, &str)],
) -> Daemon {
    let mut activate = Activate::tcp_to_work(world)
        .args(["-v"])
        .env("QREXEC_CLIENT_VM", program);
    if let Some(runtime) = runtime {
        activate = activate.env("RUNTIME_DIRECTORY", runtime);
    }
    for (key, value) in extra_env {
        activate = activate.env(key, *value);
    }
    let daemon = activate.start();
    assert_eq!(daemon.connect(0).exchange(b"hello"), b"hello");
    // Its qrexec-client-vm records the call before it relays, and must
    // finish recording before the daemon's process group is killed.
    wait_until("every call to finish", || {
        world.calls().iter().all(|r| r.status().is_some())
    });
    daemon
}

/// Runs of `qrexec-client-vm -h` so far.
fn probes(world: &World) -> usize {
    world
        .records()
        .iter()
        .filter(|r| r.args() == ["-h"])
        .count()
}

/// Waits for the `n` calls made so far; asserts each was given the flag
/// (or not).
fn assert_calls(world: &World, n: usize, with_flag: bool) {
    let calls = world.finished_calls(n);
    assert_eq!(calls.len(), n);
    let expected: &[&str] = if with_flag {
        &[FLAG, "--", "work", "qubes.ConnectTCP+1234"]
    } else {
        &["--", "work", "qubes.ConnectTCP+1234"]
    };
    for call in calls {
        assert_eq!(call.args(), expected);
    }
}

/// The cache's answer, asserting it is about `program` as it is now.
fn cached_answer(cache: &Path, program: &Path) -> bool {
    let text = fs::read_to_string(cache).unwrap();
    let (key, supported) = parse(&text).unwrap_or_else(|| panic!("malformed cache {text:?}"));
    assert_eq!(key, Key::of(program).unwrap(), "{text:?}");
    supported
}

/// Sets the program's mtime, as an upgrade in place would change it.
fn set_mtime(program: &Path, secs: u64) {
    // Opened for reading: a file open for writing could not be executed.
    fs::File::open(program)
        .unwrap()
        .set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
        .unwrap();
}

#[test]
fn first_start_asks_the_next_read_the_cache() {
    let (world, program) = echo_world_own_standin();
    let runtime = TempDir::new("runtime");
    let second = TempDir::new("runtime-second");
    // systemd lists every RuntimeDirectory= entry; the first is the cache's.
    let mut list = OsString::from(runtime.path());
    list.push(":");
    list.push(second.path());
    let cache = runtime.path().join(CACHE_FILE);

    let daemon = start_and_serve(&world, &program, Some(list.clone()), &[]);
    assert_calls(&world, 1, true);
    assert_eq!(probes(&world), 1);
    let text = daemon.wait_stderr("; cached in ");
    assert!(
        text.contains("-h (no cache yet): --use-stdin-socket supported"),
        "{text}"
    );
    drop(daemon);
    assert!(cached_answer(&cache, &program));
    assert_eq!(
        fs::metadata(&cache).unwrap().permissions().mode() & 0o7777,
        0o600
    );
    let names: Vec<_> = fs::read_dir(runtime.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [CACHE_FILE], "no temporary file left");
    assert_eq!(fs::read_dir(second.path()).unwrap().count(), 0);

    // Started again: no probe, and the flag still passed.
    let written = fs::read_to_string(&cache).unwrap();
    for round in 2..=3 {
        let daemon = start_and_serve(&world, &program, Some(list.clone()), &[]);
        assert_calls(&world, round, true);
        assert_eq!(probes(&world), 1, "start {round}");
        let text = daemon.wait_stderr("(cached in ");
        assert!(!text.contains(UNSUPPORTED), "{text}");
    }
    assert_eq!(fs::read_to_string(&cache).unwrap(), written);

    // Upgraded in place: a new mtime, a new probe, a new entry.
    set_mtime(&program, 1_000_000_000);
    let daemon = start_and_serve(&world, &program, Some(list), &[]);
    assert_calls(&world, 4, true);
    assert_eq!(probes(&world), 2);
    let text = daemon.wait_stderr("; cached in ");
    assert!(text.contains("-h (cache stale)"), "{text}");
    assert!(cached_answer(&cache, &program));
    assert_ne!(fs::read_to_string(&cache).unwrap(), written);
}

#[test]
fn a_malformed_or_stale_cache_is_replaced() {
    let (world, program) = echo_world_own_standin();
    let runtime = TempDir::new("runtime");
    let cache = runtime.path().join(CACHE_FILE);

    fs::write(&cache, "garbage\n").unwrap();
    let daemon = start_and_serve(&world, &program, Some(runtime.path().into()), &[]);
    assert_eq!(probes(&world), 1);
    assert!(
        daemon
            .wait_stderr("; cached in ")
            .contains("-h (cache malformed)")
    );
    drop(daemon);
    assert!(cached_answer(&cache, &program));

    // An answer "no" for another file (another inode) is not this file's.
    let key = Key::of(&program).unwrap();
    let other = Key {
        ino: key.ino + 1,
        ..key
    };
    fs::write(&cache, format(&other, false)).unwrap();
    let daemon = start_and_serve(&world, &program, Some(runtime.path().into()), &[]);
    assert_calls(&world, 2, true);
    assert_eq!(probes(&world), 2);
    let text = daemon.wait_stderr("; cached in ");
    assert!(text.contains("-h (cache stale)"), "{text}");
    assert!(!text.contains(UNSUPPORTED), "{text}");
    assert!(cached_answer(&cache, &program));
}

#[test]
fn a_cached_no_is_honoured() {
    // An older qrexec: asked once, then remembered; the info line at every start.
    let (world, program) = echo_world_own_standin();
    let runtime = TempDir::new("runtime");
    let cache = runtime.path().join(CACHE_FILE);
    let old = [("QREXEC_STANDIN_OLD", "1")];
    for start in 1..=2 {
        let daemon = start_and_serve(&world, &program, Some(runtime.path().into()), &old);
        assert_calls(&world, start, false);
        assert_eq!(probes(&world), 1, "start {start}");
        let text = daemon.wait_stderr(UNSUPPORTED);
        assert_eq!(text.matches(UNSUPPORTED).count(), 1, "{text}");
        if start == 2 {
            assert!(text.contains("--use-stdin-socket not supported (cached in "));
        }
        assert!(!cached_answer(&cache, &program));
    }

    // An entry with this very file's key is believed, even against the
    // program: the cache, not a probe, decided.
    let (world, program) = echo_world_own_standin();
    let runtime = TempDir::new("runtime");
    let cache = runtime.path().join(CACHE_FILE);
    fs::write(&cache, format(&Key::of(&program).unwrap(), false)).unwrap();
    let daemon = start_and_serve(&world, &program, Some(runtime.path().into()), &[]);
    assert_calls(&world, 1, false);
    assert_eq!(probes(&world), 0);
    daemon.wait_stderr(UNSUPPORTED);
}

#[test]
fn without_runtime_directory_every_start_asks() {
    let (world, program) = echo_world_own_standin();
    let unset = || None;
    let empty = || Some(OsString::new());
    let relative = || Some(OsString::from(CACHE_FILE));
    for (start, runtime) in [unset, unset, empty, relative].into_iter().enumerate() {
        let daemon = start_and_serve(&world, &program, runtime(), &[]);
        assert_calls(&world, start + 1, true);
        assert_eq!(probes(&world), start + 1);
        daemon.wait_stderr("-h (no $RUNTIME_DIRECTORY to cache it in)");
    }
    // Nothing written: not in the world, not in the working directory
    // (which a relative RUNTIME_DIRECTORY would have named).
    let left: Vec<_> = fs::read_dir(world.root())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(CACHE_FILE))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert!(!Path::new(CACHE_FILE).exists());
}
