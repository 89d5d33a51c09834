//! A stand-in for `qrexec-client-vm(1)`, for the tests of qrexec-connect
//! only: it is never installed.
//!
//! It takes the same command line, delivers targets and calls as mangled as
//! qrexec would (names.rs), decides by a policy file (policy.rs), finds and
//! starts services the way qrexec-agent does (agent.rs), relays both
//! directions with the same half-close behaviour (relay.rs) and exits with
//! the same statuses: 126 refused, 127 no such service, 125 not startable,
//! 1 qrexec not running, else the service's own. Every run is recorded under
//! `$QREXEC_STANDIN_ROOT/calls/` (record.rs) for the tests to read.
//!
//! The "world" is a directory given by `QREXEC_STANDIN_ROOT` (missing: qrexec
//! is not running, status 1). `QREXEC_STANDIN_SOURCE` names the calling
//! qube (default `client`). `QREXEC_STANDIN_OLD=1` or
//! `--no-stdin-socket-support` plays a qrexec older than 4.2.19, without
//! `--use-stdin-socket`.
#![deny(unsafe_code)]

/// `eprintln!` in one `write(2)`, as C's `fprintf(stderr, ...)` does: a
/// reader of our stderr gets whole lines (std's unbuffered stderr writes
/// each piece of a format separately).
macro_rules! say {
    ($($arg: tt)*) => {{
        use std::io::Write as _;
        let line = format!("{}\n", format_args!($($arg)*));
        let _ = std::io::stderr().write_all(line.as_bytes());
    }};
}

pub mod agent;
pub mod names;
pub mod options;
pub mod policy;
pub mod record;
mod relay;
mod sys;

use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock, PoisonError};

use agent::Service;
use policy::Decision;
use record::{Concurrency, Record, Snapshot};
use relay::Caller;

/// The name the real program prints its messages under.
const PROGRAM: &str = "qrexec-client-vm";
/// For messages only the stand-in prints (the real one would log them elsewhere).
const TAG: &str = "qrexec-client-vm (stand-in)";
/// Signals that end a run; the service goes with it.
const ENDING_SIGNALS: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

/// The running executable service, for the signal watcher; locked while the
/// service starts, so that the watcher cannot miss one just started.
static CHILD: Mutex<i32> = Mutex::new(0);
static ENDING: OnceLock<Ending> = OnceLock::new();

/// What must happen once, however the run ends: leave the concurrency count
/// and write `status`.
struct Ending {
    record: Option<PathBuf>,
    concurrency: Option<Concurrency>,
    counted: AtomicBool,
    done: AtomicBool,
}

/// Returns false when the run had already ended (by a signal).
fn finish(status: &str) -> bool {
    let Some(ending) = ENDING.get() else {
        return true;
    };
    if ending.done.swap(true, Ordering::SeqCst) {
        return false;
    }
    if ending.counted.load(Ordering::SeqCst)
        && let Some(c) = &ending.concurrency
    {
        c.leave();
    }
    if let Some(dir) = &ending.record {
        record::write_atomic(dir, "status", status.as_bytes());
    }
    true
}

fn count_in() {
    if let Some(ending) = ENDING.get()
        && let Some(c) = &ending.concurrency
    {
        c.enter();
        ending.counted.store(true, Ordering::SeqCst);
    }
}

fn watch_signals() {
    let signal = sys::wait_signal(&ENDING_SIGNALS);
    // Held to the end: no service starts after this.
    let child = CHILD.lock().unwrap_or_else(PoisonError::into_inner);
    // The end is claimed before the service is ended: ending it first would
    // let the main thread take the service's status (143) for the run's.
    if !finish(&format!("signal {signal}")) {
        // The run had ended on its own (ssh's SIGHUP at its exit races the
        // end of the call): the main thread is writing that status, and
        // exits by it.
        return;
    }
    if *child > 0 {
        sys::kill(*child, libc::SIGTERM);
    }
    sys::die_by(signal);
}

/// The whole program; returns the exit status.
pub fn main() -> u8 {
    // First, before anything opens an fd or changes a signal disposition.
    let snapshot = Snapshot::take();
    sys::ignore_sigpipe();
    sys::block_signals(&ENDING_SIGNALS);
    let args: Vec<Vec<u8>> = std::env::args_os().map(OsStringExt::into_vec).collect();
    let root = std::env::var_os("QREXEC_STANDIN_ROOT")
        .map(PathBuf::from)
        .filter(|p| p.is_dir());
    let mut record = root.as_deref().and_then(|r| match Record::create(r) {
        Ok(record) => Some(record),
        Err(e) => {
            say!("{TAG}: cannot record this call under {}: {e}", r.display());
            None
        }
    });
    if let Some(r) = record.as_mut() {
        r.start(&args, &snapshot);
    }
    let _ = ENDING.set(Ending {
        record: record.as_ref().map(|r| r.dir().to_owned()),
        concurrency: root.as_deref().map(Concurrency::new),
        counted: AtomicBool::new(false),
        done: AtomicBool::new(false),
    });
    std::thread::spawn(watch_signals);
    let mut notes = Notes(record);
    let code = run(&args, root.as_deref(), &mut notes);
    notes.flush();
    if !finish(&format!("exit {code}")) {
        // A signal ended the run (its service went first): the watcher is
        // about to end the process by that signal, which must win.
        loop {
            std::thread::park();
        }
    }
    code
}

/// The record, when there is one.
struct Notes(Option<Record>);

impl Notes {
    fn set(&mut self, key: &str, value: impl Into<String>) {
        if let Some(r) = &mut self.0 {
            r.set(key, value);
        }
    }

    fn flag(&mut self, key: &str, value: bool) {
        if let Some(r) = &mut self.0 {
            r.set_flag(key, value);
        }
    }

    fn flush(&self) {
        if let Some(r) = &self.0 {
            r.flush();
        }
    }

    fn raw(&self, name: &str, bytes: &[u8]) {
        if let Some(r) = &self.0 {
            r.raw(name, bytes);
        }
    }
}

fn refused(notes: &mut Notes, why: &str) -> u8 {
    notes.set("decision", why);
    say!("Request refused");
    126
}

fn run(args: &[Vec<u8>], root: Option<&Path>, notes: &mut Notes) -> u8 {
    let rest = &args[1.min(args.len())..];
    let old = std::env::var("QREXEC_STANDIN_OLD").is_ok_and(|v| !v.is_empty() && v != "0")
        || options::wants_old(rest);
    notes.flag("old_qrexec", old);
    let options = match options::parse(rest, old) {
        Ok(options) => options,
        Err(refusal) => {
            if let Some(message) = &refusal.message {
                say!("{PROGRAM}: {message}");
            }
            if refusal.show_usage {
                eprint!("{}", options::usage(PROGRAM, old));
            }
            notes.set("refused", "command line");
            return refusal.status;
        }
    };
    if options.help {
        eprint!("{}", options::usage(PROGRAM, old));
        notes.flag("help", true);
        return 0;
    }
    notes.flag("use_stdin_socket", options.use_stdin_socket);
    // A test's switch, taken by one call: shut stderr down for writing, as
    // no qrexec-client-vm does, to see its caller cope.
    if root.is_some_and(|r| std::fs::remove_file(r.join("shut-stderr-once")).is_ok()) {
        notes.flag("shut_stderr", sys::shutdown_write(sys::stdio(2)).is_ok());
    }
    if let Some(size) = options.buffer_size {
        notes.set("buffer_size", size.to_string());
    }
    if options.use_stdin_socket {
        match sys::socket_type(sys::stdio(0)) {
            Ok(libc::SOCK_STREAM) => {}
            Ok(other) => {
                say!(
                    "{PROGRAM}: stdin was a socket of type {other}, not SOCK_STREAM ({})",
                    libc::SOCK_STREAM
                );
                return 2;
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTSOCK) => {
                say!("{PROGRAM}: --use-stdin-socket passed, but stdin not a socket");
                return 2;
            }
            Err(e) => {
                say!("{PROGRAM}: getsockopt(0, SOL_SOCKET, SO_TYPE): {e}");
                return 2;
            }
        }
    }
    let [target_raw, call_raw, local @ ..] = options.words.as_slice() else {
        eprint!("{}", options::usage(PROGRAM, old));
        notes.set("refused", "command line");
        return 2;
    };
    notes.raw("target_raw", target_raw);
    notes.raw("call_raw", call_raw);
    if !local.is_empty() {
        let program = String::from_utf8_lossy(&local[0]);
        notes.set("refused", "local program");
        if options.use_stdin_socket {
            say!("{PROGRAM}: cannot spawn a local process with --use-stdin-socket");
            eprint!("{}", options::usage(PROGRAM, old));
        } else {
            say!(
                "{TAG}: words after SERVICE+ARG name a local program ('{program}'), which the \
                 stand-in does not run; a caller must put options before TARGET and '--' before it"
            );
        }
        return 2;
    }
    let Some(root) = root else {
        // What qrexec-client-vm says when qrexec-agent's socket is missing.
        say!("{PROGRAM}: connect: No such file or directory");
        return 1;
    };
    let target =
        String::from_utf8(names::deliver_target(target_raw)).expect("ASCII by construction");
    let call = String::from_utf8(names::deliver_call(call_raw)).expect("ASCII by construction");
    let (service, argument) = names::split_call(&call);
    let source = std::env::var("QREXEC_STANDIN_SOURCE").unwrap_or_else(|_| "client".into());
    notes.set("target", &target);
    notes.set("call", &call);
    notes.set("service", service);
    notes.set("argument", argument);
    notes.set("source", &source);
    notes.flush();
    count_in();

    let policy = std::fs::read_to_string(root.join("policy")).unwrap_or_default();
    let rules = match policy::parse(&policy) {
        Ok(rules) => rules,
        Err(e) => {
            say!("{TAG}: {e}");
            return refused(notes, "policy error");
        }
    };
    let chosen = match policy::evaluate(&rules, service, argument, &source, &target) {
        Decision::Allow { target, line } => {
            notes.set("decision", format!("allow (policy line {line})"));
            target
        }
        Decision::Deny { line: Some(line) } => {
            return refused(notes, &format!("deny (policy line {line})"));
        }
        Decision::Deny { line: None } => return refused(notes, "deny (no policy line)"),
        Decision::Invalid { line, why } => {
            say!("{TAG}: policy line {line}: {why}");
            return refused(notes, &format!("invalid (policy line {line})"));
        }
    };
    // A disposable is a fresh copy of its template: it has the template's services.
    let qube_name = chosen.strip_prefix("@dispvm:").unwrap_or(&chosen);
    notes.set("resolved_target", &chosen);
    notes.set("qube", qube_name);
    let qube = root.join("qubes").join(qube_name);
    if qube_name.is_empty() || qube_name.contains('/') || !qube.is_dir() {
        return refused(notes, "no such qube");
    }

    let Some(found) = agent::find_service(&qube, &call, service, argument) else {
        notes.set("service_kind", "missing");
        say!(
            "{TAG}: no service {call} (nor {service}) in qube {qube_name}: looked in {}",
            agent::SERVICE_DIRS.join(" and ")
        );
        return 127;
    };
    notes.set("service_kind", found.kind());
    let caller = Caller {
        stdin_socket: options.use_stdin_socket,
        prefix: options.prefix_data.clone(),
    };
    let config = agent::rpc_config(&qube, &call, service);
    match found {
        Service::Unstartable(path, why) => {
            notes.set("service_path", path.display().to_string());
            say!("{TAG}: cannot start {}: {why}", path.display());
            125
        }
        Service::Executable(path) => {
            notes.set("service_path", path.display().to_string());
            let mut env = vec![
                (
                    "PATH".to_owned(),
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".to_owned(),
                ),
                ("HOME".to_owned(), qube.display().to_string()),
                ("QREXEC_SERVICE_FULL_NAME".to_owned(), call.clone()),
                ("QREXEC_SERVICE_ARGUMENT".to_owned(), argument.to_owned()),
                ("QREXEC_REMOTE_DOMAIN".to_owned(), source.clone()),
                (
                    "QREXEC_AGENT_PID".to_owned(),
                    std::process::id().to_string(),
                ),
            ];
            match target.strip_prefix('@') {
                Some(keyword) => {
                    env.push(("QREXEC_REQUESTED_TARGET_TYPE".into(), "keyword".into()));
                    env.push(("QREXEC_REQUESTED_TARGET_KEYWORD".into(), keyword.into()));
                }
                None => {
                    env.push(("QREXEC_REQUESTED_TARGET_TYPE".into(), "name".into()));
                    env.push(("QREXEC_REQUESTED_TARGET".into(), target.clone()));
                }
            }
            env.extend(agent::qube_env(&qube));
            notes.flush();
            relay::executable(&caller, &path, argument, env, &qube)
        }
        Service::Socket(path) => {
            notes.set("service_path", path.display().to_string());
            let stream = match UnixStream::connect(&path) {
                Ok(stream) => stream,
                Err(e) => {
                    say!("{TAG}: cannot connect to {}: {e}", path.display());
                    return 125;
                }
            };
            let skip = agent::is_true(config.get("skip-service-descriptor"));
            notes.flag("service_descriptor", !skip);
            if !skip {
                let descriptor = format!("{call} {source}\0");
                if let Err(e) = std::io::Write::write_all(&mut &stream, descriptor.as_bytes()) {
                    say!("{TAG}: cannot send the service descriptor: {e}");
                    return 125;
                }
            }
            notes.flush();
            relay::connection(&caller, OwnedFd::from(stream))
        }
        Service::Tcp { host, port } => {
            notes.set("service_path", format!("/dev/tcp/{host}/{port}"));
            let port: u16 = port.parse().expect("checked by find_service");
            match TcpStream::connect((host.as_str(), port)) {
                Ok(stream) => {
                    notes.flush();
                    relay::connection(&caller, OwnedFd::from(stream))
                }
                Err(e) => {
                    say!("{TAG}: cannot connect to {host} port {port}: {e}");
                    125
                }
            }
        }
    }
}
