//! The service side: relays started as qrexec-agent starts a service (stdin
//! and stdout two separate socketpairs) that connect the call to a local
//! echo server over a Unix socket or TCP.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qrexec_connect_bench::stats::median;
use qrexec_connect_bench::{copy, load, procs, sys};

use crate::report::{Results, Table};
use crate::{Setup, rotated, show_command};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Peer {
    OursUnix,
    SocatUnix,
    FloorUnix,
    DirectUnix,
    OursTcp,
    SocatTcp,
    FloorTcp,
    DirectTcp,
}

const PEERS: [Peer; 8] = [
    Peer::OursUnix,
    Peer::SocatUnix,
    Peer::FloorUnix,
    Peer::DirectUnix,
    Peer::OursTcp,
    Peer::SocatTcp,
    Peer::FloorTcp,
    Peer::DirectTcp,
];
const NAMES: [&str; 8] = [
    "qubes.ConnectUnix",
    "socat UNIX-CONNECT",
    "floor (unix)",
    "direct (unix)",
    "qubes.ConnectTCPBind",
    "socat TCP",
    "floor (tcp)",
    "direct (tcp)",
];
/// The socket name the Unix peers are asked for.
const NAME: &str = "bench";
/// The source address of the TCP peers (inside 127.0.0.0/8, as the rules ask).
const BIND: &str = "127.0.1.1";
/// A relay gets this long to exit after the last byte.
const EXIT_LIMIT: Duration = Duration::from_secs(10);

fn floor_of(peer: &str) -> Option<&'static str> {
    Some(
        if peer.contains("Unix") || peer.contains("UNIX") || peer.contains("(unix)") {
            "floor (unix)"
        } else {
            "floor (tcp)"
        },
    )
}

/// Where the echo servers listen.
struct Echo {
    /// `$XDG_RUNTIME_DIR` for the relays: holds `qubes.ConnectUnix/bench`,
    /// a link to the Unix echo socket.
    runtime: PathBuf,
    unix: PathBuf,
    port: u16,
}

/// A program's argv and the environment it is started with.
type Invocation = (Vec<String>, Vec<(String, String)>);

impl Peer {
    fn name(self) -> &'static str {
        NAMES[self as usize]
    }

    fn is_direct(self) -> bool {
        matches!(self, Peer::DirectUnix | Peer::DirectTcp)
    }

    /// Its command line and environment; Err when a program or applet is missing.
    fn argv(self, s: &Setup, echo: &Echo, port: &str) -> Result<Invocation, String> {
        let bin = |name: &str| s.bin.join(name).display().to_string();
        let socat = || {
            s.socat
                .as_ref()
                .map(|p| p.display().to_string())
                .ok_or("socat is not installed")
        };
        let applet = |name: &str| {
            if s.applets.iter().any(|a| a == name) {
                Ok(bin(name))
            } else {
                Err(format!("this qrexec-connect has no {name} applet"))
            }
        };
        let link = echo
            .runtime
            .join("qubes.ConnectUnix")
            .join(NAME)
            .display()
            .to_string();
        let tcp_arg = format!("{port}-{BIND}");
        let qrexec_env = |service: &str, arg: &str| {
            vec![
                ("QREXEC_SERVICE_ARGUMENT".into(), arg.to_owned()),
                (
                    "QREXEC_SERVICE_FULL_NAME".into(),
                    format!("{service}+{arg}"),
                ),
                ("QREXEC_REMOTE_DOMAIN".into(), "bench-client".into()),
                ("XDG_RUNTIME_DIR".into(), echo.runtime.display().to_string()),
            ]
        };
        Ok(match self {
            Peer::OursUnix => (
                vec![applet("qubes.ConnectUnix")?, NAME.into()],
                qrexec_env("qubes.ConnectUnix", NAME),
            ),
            Peer::OursTcp => (
                vec![applet("qubes.ConnectTCPBind")?, tcp_arg.clone()],
                qrexec_env("qubes.ConnectTCPBind", &tcp_arg),
            ),
            Peer::SocatUnix => (
                vec![socat()?, "STDIO".into(), format!("UNIX-CONNECT:{link}")],
                vec![],
            ),
            Peer::SocatTcp => (
                vec![
                    socat()?,
                    "STDIO".into(),
                    format!("TCP:127.0.0.1:{port},bind={BIND}"),
                ],
                vec![],
            ),
            Peer::FloorUnix => (vec![bin("bench-splice-relay"), "unix".into(), link], vec![]),
            Peer::FloorTcp => (
                vec![
                    bin("bench-splice-relay"),
                    "tcp".into(),
                    format!("127.0.0.1:{port}"),
                    BIND.into(),
                ],
                vec![],
            ),
            Peer::DirectUnix => (
                vec![format!("(the load generator connects to {link})")],
                vec![],
            ),
            Peer::DirectTcp => (
                vec![format!("(the load generator connects to 127.0.0.1:{port})")],
                vec![],
            ),
        })
    }
}

/// Starts the echo servers: a thread per connection splicing it back to itself.
fn start_echo(s: &Setup) -> Result<Echo, String> {
    let runtime = s.out.join("run");
    let links = runtime.join("qubes.ConnectUnix");
    std::fs::create_dir_all(&links).map_err(|e| format!("{}: {e}", links.display()))?;
    let unix = s.out.join("echo.sock");
    let ul = UnixListener::bind(&unix).map_err(|e| format!("{}: {e}", unix.display()))?;
    std::os::unix::fs::symlink(&unix, links.join(NAME)).map_err(|e| e.to_string())?;
    let tl = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = tl.local_addr().map_err(|e| e.to_string())?.port();
    std::thread::spawn(move || {
        for c in ul.incoming().flatten() {
            std::thread::spawn(move || echo(OwnedFd::from(c)));
        }
    });
    std::thread::spawn(move || {
        for c in tl.incoming().flatten() {
            std::thread::spawn(move || echo(OwnedFd::from(c)));
        }
    });
    Ok(Echo {
        runtime,
        unix,
        port,
    })
}

fn echo(c: OwnedFd) {
    let _ = copy::splice(c.as_fd(), c.as_fd());
    copy::end_write(c.as_fd());
}

/// One service call: what the caller writes to and reads from, and the relay.
struct Call {
    input: Box<dyn Writer>,
    output: Box<dyn Reader>,
    relay: Option<procs::Proc>,
}

trait Writer: Write + Send {
    fn half_close(&self);
}
trait Reader: std::io::Read + Send {}

impl Writer for UnixStream {
    fn half_close(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}
impl Writer for TcpStream {
    fn half_close(&self) {
        let _ = self.shutdown(Shutdown::Write);
    }
}
impl Reader for UnixStream {}
impl Reader for TcpStream {}

/// Starts `peer` for one call (or, for 'direct', connects).
fn call(s: &Setup, echo: &Echo, peer: Peer) -> Result<Call, String> {
    match peer {
        Peer::DirectUnix => {
            let c = UnixStream::connect(&echo.unix).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(load::TIMEOUT))
                .map_err(|e| e.to_string())?;
            c.set_write_timeout(Some(load::TIMEOUT))
                .map_err(|e| e.to_string())?;
            let w = c.try_clone().map_err(|e| e.to_string())?;
            Ok(Call {
                input: Box::new(w),
                output: Box::new(c),
                relay: None,
            })
        }
        Peer::DirectTcp => {
            let c = TcpStream::connect(("127.0.0.1", echo.port)).map_err(|e| e.to_string())?;
            c.set_read_timeout(Some(load::TIMEOUT))
                .map_err(|e| e.to_string())?;
            c.set_write_timeout(Some(load::TIMEOUT))
                .map_err(|e| e.to_string())?;
            let w = c.try_clone().map_err(|e| e.to_string())?;
            Ok(Call {
                input: Box::new(w),
                output: Box::new(c),
                relay: None,
            })
        }
        _ => {
            let (argv, env) = peer.argv(s, echo, &echo.port.to_string())?;
            // As qrexec-agent starts a service: stdin and stdout two
            // separate socketpairs, stderr a pipe (here a log file).
            let (input, child_in) = UnixStream::pair().map_err(|e| e.to_string())?;
            let (output, child_out) = UnixStream::pair().map_err(|e| e.to_string())?;
            input
                .set_write_timeout(Some(load::TIMEOUT))
                .map_err(|e| e.to_string())?;
            output
                .set_read_timeout(Some(load::TIMEOUT))
                .map_err(|e| e.to_string())?;
            let log = s
                .out
                .join("logs")
                .join(format!("service-{}.log", peer.name()));
            let log = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .map_err(|e| format!("{}: {e}", log.display()))?;
            let relay = {
                // The command holds the child's ends: dropped right after the
                // spawn, so that EOF reaches us when the relay closes them.
                let mut cmd = Command::new(&argv[0]);
                cmd.args(&argv[1..])
                    .envs(env)
                    .stdin(Stdio::from(OwnedFd::from(child_in)))
                    .stdout(Stdio::from(OwnedFd::from(child_out)))
                    .stderr(log);
                procs::Proc::spawn(&mut cmd).map_err(|e| format!("{}: {e}", argv[0]))?
            };
            Ok(Call {
                input: Box::new(input),
                output: Box::new(output),
                relay: Some(relay),
            })
        }
    }
}

pub fn run(s: &Setup, r: &mut Results) -> Result<(), String> {
    let echo = start_echo(s)?;
    for peer in PEERS {
        match peer.argv(s, &echo, "ECHOPORT") {
            Ok((argv, env)) => {
                let mut line: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v}")).collect();
                line.extend(argv);
                let shown = if peer.is_direct() {
                    s.show(&line.join(" "))
                } else {
                    show_command(s, &line)
                };
                r.command(peer.name(), shown)
            }
            Err(why) => {
                r.unavailable.insert(peer.name().into(), why);
            }
        }
    }
    let peers: Vec<Peer> = PEERS
        .into_iter()
        .filter(|p| !r.unavailable.contains_key(p.name()))
        .collect();
    for rep in 0..s.repeats {
        bulk_point(s, r, &echo, &peers, rep);
        spawn_point(s, r, &echo, &peers, rep);
    }
    Ok(())
}

/// MB/s each way through the relay, verified, and the relay's CPU per GiB:
/// `s.slices` calls per peer moving an equal share of `s.bulk_bytes`, the
/// peers taking turns so that a change in the machine's speed falls on all.
fn bulk_point(s: &Setup, r: &mut Results, echo: &Echo, peers: &[Peer], rep: usize) {
    let share = (s.bulk_bytes / s.slices as u64).max(1);
    let mut seconds = vec![0.0f64; peers.len()];
    let mut cpu = vec![Duration::ZERO; peers.len()];
    let mut failed: Vec<Option<String>> = vec![None; peers.len()];
    let order: Vec<usize> = (0..peers.len()).collect();
    for k in 0..s.slices {
        for i in rotated(&order, rep + k) {
            if failed[i].is_some() {
                continue;
            }
            match bulk_once(s, r, echo, peers[i], share) {
                Ok((t, c)) => {
                    seconds[i] += t.as_secs_f64();
                    cpu[i] += c;
                }
                Err(e) => failed[i] = Some(e),
            }
        }
    }
    for (i, &peer) in peers.iter().enumerate() {
        if let Some(e) = &failed[i] {
            r.note(format!("{} bulk: {e}", peer.name()));
            continue;
        }
        let bytes = (share * s.slices as u64) as f64;
        let mbps = bytes / 1e6 / seconds[i];
        let per_gib = cpu[i].as_secs_f64() / (bytes / (1u64 << 30) as f64);
        r.add("svc MB/s", peer.name(), mbps);
        if !peer.is_direct() {
            r.add("svc cpu s/GiB", peer.name(), per_gib);
        }
        s.progress(&format!(
            "service {:<20} bulk {mbps:>6.0} MB/s each way  cpu {per_gib:.2} s/GiB",
            peer.name(),
        ));
    }
}

/// One call moving `bytes` each way: its time, and the relay's CPU time.
fn bulk_once(
    s: &Setup,
    r: &mut Results,
    echo: &Echo,
    peer: Peer,
    bytes: u64,
) -> Result<(Duration, Duration), String> {
    let cpu0 = sys::children_cpu();
    let Call {
        input,
        output,
        relay,
    } = call(s, echo, peer)?;
    let result = crate::load::bulk(output, input, |w| w.half_close(), bytes, &s.pattern);
    let exited = relay.map(|p| p.wait_exit(EXIT_LIMIT));
    let cpu = sys::children_cpu().saturating_sub(cpu0);
    let t = result?;
    if exited == Some(false) {
        r.note(format!(
            "{} did not exit after the bulk transfer; killed",
            peer.name()
        ));
    }
    Ok((t, cpu))
}

/// Start to first echoed byte, and to exit after the caller's EOF: the
/// median of `s.spawn_samples` calls per peer, the peers taking turns.
fn spawn_point(s: &Setup, r: &mut Results, echo: &Echo, peers: &[Peer], rep: usize) {
    let mut firsts: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    let mut exits: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    let mut failed: Vec<Option<String>> = vec![None; peers.len()];
    let order: Vec<usize> = (0..peers.len()).collect();
    for k in 0..s.spawn_samples {
        for i in rotated(&order, rep + k) {
            if failed[i].is_some() {
                continue;
            }
            match spawn_once(s, echo, peers[i]) {
                Ok((first, exit)) => {
                    firsts[i].push(first);
                    exits[i].push(exit);
                }
                Err(e) => failed[i] = Some(e),
            }
        }
    }
    for (i, &peer) in peers.iter().enumerate() {
        if let Some(e) = &failed[i] {
            r.note(format!("{} start: {e}", peer.name()));
            continue;
        }
        r.add("svc first ms", peer.name(), median(&firsts[i]));
        r.add("svc exit ms", peer.name(), median(&exits[i]));
        s.progress(&format!(
            "service {:<20} start to first byte {:.2} ms, to exit {:.2} ms (median of {})",
            peer.name(),
            median(&firsts[i]),
            median(&exits[i]),
            firsts[i].len()
        ));
    }
}

/// One call: milliseconds to the first echoed byte and to the relay's exit.
fn spawn_once(s: &Setup, echo: &Echo, peer: Peer) -> Result<(f64, f64), String> {
    let t0 = Instant::now();
    let Call {
        mut input,
        mut output,
        relay,
    } = call(s, echo, peer)?;
    let first = input
        .write_all(load::LINE)
        .and_then(|()| load::read_line_echo(&mut output, t0));
    input.half_close();
    let eof = load::expect_eof(&mut output);
    let exited = relay.map(|p| p.wait_exit(EXIT_LIMIT));
    let end = t0.elapsed();
    let first = first.map_err(|e| e.to_string())?;
    eof.map_err(|e| format!("after the echo: {e}"))?;
    if exited == Some(false) {
        return Err("did not exit after EOF".into());
    }
    Ok((first.as_secs_f64() * 1e3, end.as_secs_f64() * 1e3))
}

/// The service side's part of the goals table.
pub fn goals(r: &Results) -> Vec<(String, String, Option<bool>)> {
    let mut rows = Vec::new();
    for (ours, floor) in [
        ("qubes.ConnectUnix", "floor (unix)"),
        ("qubes.ConnectTCPBind", "floor (tcp)"),
    ] {
        let mbps = r.ratio("svc MB/s", ours, floor);
        let socat = if ours.contains("Unix") {
            "socat UNIX-CONNECT"
        } else {
            "socat TCP"
        };
        let vs_socat = r.ratio("svc MB/s", ours, socat);
        let first = r.ratio("svc first ms", ours, floor);
        let cpu = r.ratio("svc cpu s/GiB", ours, floor);
        let met = |x: f64, ok: bool| (!x.is_nan()).then_some(ok);
        let shown = |x: f64| {
            if x.is_nan() {
                "–".to_owned()
            } else {
                format!("×{x:.2}")
            }
        };
        rows.push((
            format!("{ours}: MB/s ≥ 0.9 × splice floor"),
            format!("{} ({} socat)", shown(mbps), shown(vs_socat)),
            met(mbps, mbps >= 0.9),
        ));
        rows.push((
            format!("{ours}: time to first byte ≤ 1.2 × floor"),
            shown(first),
            met(first, first <= 1.2),
        ));
        rows.push((
            format!("{ours}: CPU per GiB ≤ floor"),
            shown(cpu),
            met(cpu, cpu <= 1.0),
        ));
    }
    rows
}

/// The service side's sections of RESULTS.md.
pub fn report(s: &Setup, r: &Results) -> String {
    let floor = |p: &str| floor_of(p);
    let table = |columns| {
        Table {
            columns,
            peers: &NAMES,
            floor: &floor,
        }
        .render(r)
    };
    let mut md = String::from(
        "## Service side\n\nPeers, started as qrexec-agent starts a service (stdin and stdout two separate socketpairs, QREXEC_* variables set): **ours** (`qubes.ConnectUnix`, `qubes.ConnectTCPBind` from 127.0.1.1), **socat** as the predecessor's scripts ran it, the **floor** (`bench-splice-relay`: connect, then splice each way in its own thread), and **direct** (the load generator uses the socket itself: what qrexec's own socket services cost, no relay process). All talk to the same echo server (splice, in the load generator). Ratios are to the floor of the same transport.\n\n",
    );
    md.push_str(&format!("### Throughput\n\n{} MiB each way through one call, echoed and verified; CPU is the relay process's own (user + system).\n\n", s.bulk_bytes >> 20));
    md.push_str(&table(vec![
        ("MB/s each way".into(), "svc MB/s".into()),
        ("CPU s per GiB".into(), "svc cpu s/GiB".into()),
    ]));
    md.push_str(&format!("\n### Start-up (ms)\n\nFrom spawning the relay (for direct: connect()) to the first echoed byte of one line, and to the relay's exit after the caller's EOF; median of {} calls per repeat.\n\n", s.spawn_samples));
    md.push_str(&table(vec![
        ("first byte".into(), "svc first ms".into()),
        ("exit".into(), "svc exit ms".into()),
    ]));
    md.push('\n');
    md
}
