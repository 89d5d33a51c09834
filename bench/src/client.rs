//! The client side: forwarders that accept TCP connections on 127.0.0.1 and
//! hand each to the stand-in for qrexec-client-vm.

use std::fs::OpenOptions;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use qrexec_connect_bench::load::Via;
use qrexec_connect_bench::stats::{median, min_max, percentile};
use qrexec_connect_bench::{load, procs, sys};

use crate::report::{self, Results, Series, Table};
use crate::{Setup, rotated, show_command};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Peer {
    Ours,
    /// The SOCKS5 applet as users get it: at most 8 calls starting at once.
    Socks,
    /// The same with the limit out of reach, at P above 8 only: the
    /// handshake's own cost.
    SocksUnlimited,
    Socat,
    Accept,
    Floor,
    /// A second floor, in the rate and bulk points only: how far two equal
    /// peers measure apart in the same run, i.e. how much a ratio means.
    FloorAgain,
}

pub const PEERS: [Peer; 7] = [
    Peer::Ours,
    Peer::Socks,
    Peer::SocksUnlimited,
    Peer::Socat,
    Peer::Accept,
    Peer::Floor,
    Peer::FloorAgain,
];
const NAMES: [&str; 7] = [
    "qrexec-connect-tcp",
    "qrexec-connect-socks",
    "qrexec-connect-socks --max-starting 1024",
    "socat",
    "Accept=yes",
    "floor",
    "floor, again",
];
const FLOOR: &str = "floor";
/// The SOCKS applet's default `--max-starting`.
const SOCKS_MAX_STARTING: usize = 8;
/// Its `--max-starting` for the second row: more than any P.
const SOCKS_UNLIMITED: &str = "1024";
/// A peer gets this long to start listening.
const START_LIMIT: Duration = Duration::from_secs(15);
/// Stand-ins and forks left after a measurement get this long to end.
const REAP_LIMIT: Duration = Duration::from_secs(10);

impl Peer {
    pub fn name(self) -> &'static str {
        NAMES[self as usize]
    }

    fn is_socks(self) -> bool {
        matches!(self, Peer::Socks | Peer::SocksUnlimited)
    }

    /// Whether it runs at parallelism `p`: without the limit only where the
    /// limit could hold a call back.
    fn rates_at(self, p: usize) -> bool {
        self != Peer::SocksUnlimited || p > SOCKS_MAX_STARTING
    }

    /// Whether its bulk transfer and memory are measured: not the SOCKS
    /// applet's, which hands the socket over as qrexec-connect-tcp does
    /// (the bytes take the same path), and would start 1,000 held
    /// connections 8 at a time, 500 ms each.
    fn bulk_and_memory(self) -> bool {
        !self.is_socks()
    }

    /// Whether its first connection is measured (the limit plays no part).
    fn first_connection(self) -> bool {
        !matches!(self, Peer::FloorAgain | Peer::SocksUnlimited)
    }

    /// Its command line, listening on `port`; None when a program is missing.
    fn argv(self, s: &Setup, port: &str) -> Result<Vec<String>, String> {
        let bin = |name: &str| s.bin.join(name).display().to_string();
        let activate = || {
            s.activate
                .as_ref()
                .map(|p| p.display().to_string())
                .ok_or("systemd-socket-activate is not installed")
        };
        let listen = format!("127.0.0.1:{port}");
        let call = format!("qubes.ConnectTCP+{port}");
        let standin = bin("qrexec-client-vm");
        Ok(match self {
            Peer::Ours => vec![
                activate()?,
                "-l".into(),
                listen,
                "--fdname=bench".into(),
                "-E".into(),
                "NOTIFY_SOCKET".into(),
                "-E".into(),
                "RUNTIME_DIRECTORY".into(),
                bin("qrexec-connect-tcp"),
                port.into(),
                "--qrexec-client-vm".into(),
                standin,
            ],
            Peer::Socks | Peer::SocksUnlimited => {
                let name = "qrexec-connect-socks";
                if !s.applets.iter().any(|a| a == name) {
                    return Err(format!("this qrexec-connect has no {name} applet"));
                }
                let mut argv = vec![
                    activate()?,
                    "-l".into(),
                    listen,
                    "-E".into(),
                    "RUNTIME_DIRECTORY".into(),
                    bin(name),
                    "--qrexec-client-vm".into(),
                    standin,
                ];
                if self == Peer::SocksUnlimited {
                    argv.extend(["--max-starting".into(), SOCKS_UNLIMITED.into()]);
                }
                argv
            }
            Peer::Socat => vec![
                s.socat
                    .as_ref()
                    .ok_or("socat is not installed")?
                    .display()
                    .to_string(),
                format!("TCP-LISTEN:{port},reuseaddr,fork,bind=127.0.0.1"),
                format!("EXEC:{standin} bench {call}"),
            ],
            Peer::Accept => vec![
                activate()?,
                "-l".into(),
                listen,
                "--accept".into(),
                "--inetd".into(),
                standin,
                "--use-stdin-socket".into(),
                "--".into(),
                "bench".into(),
                call,
            ],
            Peer::Floor | Peer::FloorAgain => vec![
                activate()?,
                "-l".into(),
                listen,
                bin("bench-client-floor"),
                standin,
                "--use-stdin-socket".into(),
                "--".into(),
                "bench".into(),
                call,
            ],
        })
    }
}

/// A peer listening on 127.0.0.1.
struct Running {
    proc: procs::Proc,
    addr: SocketAddr,
    /// How the load reaches the echo through it.
    via: Via,
}

/// Starts `peer` on a free port and waits until it listens (by /proc, so a
/// socket-activated daemon is not started by the check).
fn start(s: &Setup, peer: Peer) -> Result<Running, String> {
    let log = s
        .out
        .join("logs")
        .join(format!("client-{}.log", peer.name()));
    for _ in 0..3 {
        let port = procs::free_port();
        let argv = peer.argv(s, &port.to_string())?;
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut cmd = Command::new(&argv[0]);
        cmd.args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .env_remove("LISTEN_FDS")
            .env_remove("LISTEN_PID")
            .env_remove("LISTEN_FDNAMES");
        if peer == Peer::Ours {
            cmd.env("NOTIFY_SOCKET", &s.notify_path)
                .env("RUNTIME_DIRECTORY", &s.runtime);
        }
        if peer.is_socks() {
            cmd.env("RUNTIME_DIRECTORY", &s.runtime_socks);
        }
        let mut proc = procs::Proc::spawn(&mut cmd).map_err(|e| format!("{}: {e}", argv[0]))?;
        let deadline = Instant::now() + START_LIMIT;
        loop {
            if procs::listening(port) {
                return Ok(Running {
                    proc,
                    addr: SocketAddr::from(([127, 0, 0, 1], port)),
                    via: if peer.is_socks() {
                        Via::Socks5 { port }
                    } else {
                        Via::Direct
                    },
                });
            }
            if proc.exited() {
                // Most likely the port was taken meanwhile: another one.
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not listen within {START_LIMIT:?}",
                    peer.name()
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Err(format!(
        "{} failed to start three times (see bench/out/logs)",
        peer.name()
    ))
}

/// Stops the peer and reaps everything it left, sparing the peers still
/// running (`keep`); notes stragglers.
fn stop(r: &mut Results, peer: Peer, running: Running, keep: &[u32]) {
    running.proc.stop();
    let killed = procs::reap_orphans(REAP_LIMIT, keep);
    if killed > 0 {
        r.note(format!(
            "{}: {killed} processes were still running after a measurement and were killed",
            peer.name()
        ));
    }
}

/// Opens a connection for bulk transfer: (reader, writer), with timeouts.
pub fn connect_bulk(addr: SocketAddr) -> Result<(TcpStream, TcpStream), String> {
    let s = TcpStream::connect_timeout(&addr, load::TIMEOUT)
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(load::TIMEOUT))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(load::TIMEOUT))
        .map_err(|e| e.to_string())?;
    let w = s.try_clone().map_err(|e| e.to_string())?;
    Ok((s, w))
}

pub fn run(s: &Setup, r: &mut Results) {
    for peer in PEERS {
        match peer.argv(s, "PORT") {
            Ok(argv) => r.command(peer.name(), show_command(s, &argv)),
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
        for &p in &s.parallelism {
            rate_point(s, r, &peers, p, rep);
        }
        let bulk: Vec<Peer> = peers
            .iter()
            .copied()
            .filter(|p| p.bulk_and_memory())
            .collect();
        bulk_point(s, r, &bulk, rep);
        let once: Vec<Peer> = peers
            .iter()
            .copied()
            .filter(|&p| p.first_connection())
            .collect();
        for peer in rotated(&once, rep) {
            if !peer.bulk_and_memory() {
                continue;
            }
            if let Err(e) = memory_point(s, r, peer) {
                r.note(format!("{} memory: {e}", peer.name()));
            }
        }
        first_point(s, r, &once, rep);
    }
}

/// Every peer listening at once, for one interleaved point.
struct Side {
    running: Vec<(Peer, Running)>,
}

impl Side {
    /// Starts every peer and makes one connection to each (which starts the
    /// socket-activated ones); a peer that fails is noted and left out.
    fn start(s: &Setup, r: &mut Results, peers: &[Peer], what: &str) -> Side {
        let mut side = Side {
            running: Vec::new(),
        };
        for &peer in peers {
            match start(s, peer) {
                Ok(running) => side.running.push((peer, running)),
                Err(e) => r.note(format!("{} {what}: {e}", peer.name())),
            }
        }
        let mut i = 0;
        while i < side.running.len() {
            let (peer, running) = &side.running[i];
            match load::one_line(running.addr, running.via) {
                Ok(_) => i += 1,
                Err(e) => {
                    let peer = *peer;
                    r.note(format!(
                        "{} {what}: first connection: {}",
                        peer.name(),
                        load::describe(&e)
                    ));
                    let (_, running) = side.running.remove(i);
                    let keep = side.pids();
                    stop(r, peer, running, &keep);
                }
            }
        }
        side
    }

    fn pids(&self) -> Vec<u32> {
        self.running.iter().map(|(_, x)| x.proc.pid).collect()
    }

    /// Stops the peers one at a time, and returns the CPU time each used,
    /// with everything it started, since `Side::start` (the time of its
    /// reaped descendants reaches us as it is reaped).
    fn stop(mut self, r: &mut Results) -> Vec<(Peer, Duration)> {
        let mut cpu = Vec::new();
        while let Some((peer, running)) = self.running.pop() {
            let before = sys::children_cpu();
            let keep = self.pids();
            stop(r, peer, running, &keep);
            cpu.push((peer, sys::children_cpu().saturating_sub(before)));
        }
        cpu.reverse();
        cpu
    }
}

/// Connections per second, latency and CPU per connection at parallelism
/// `p`. Every peer listens at once, and the load visits them in turn, in
/// `s.slices` slices each (fewer for a peer whose slices outlast the point's
/// time): a change in the machine's speed during the point (frequent on a
/// shared host) then falls on every peer alike instead of on whichever ran
/// at that moment.
fn rate_point(s: &Setup, r: &mut Results, peers: &[Peer], p: usize, rep: usize) {
    let peers: Vec<Peer> = peers.iter().copied().filter(|x| x.rates_at(p)).collect();
    let side = Side::start(s, r, &peers, &format!("at parallelism {p}"));
    let slice = Duration::from_secs_f64(s.seconds / s.slices as f64);
    let mut totals: Vec<load::Rate> = side.running.iter().map(|_| load::Rate::default()).collect();
    let order: Vec<usize> = (0..side.running.len()).collect();
    let budget = Duration::from_secs_f64(s.seconds);
    for k in 0..s.slices {
        for i in rotated(&order, rep + k) {
            // A slice lasts until its last connection ends: a peer that
            // keeps connections waiting for seconds (socat's backlog of 5,
            // SYN retransmissions) has had its time after one slice.
            if totals[i].elapsed >= budget {
                continue;
            }
            let (addr, via) = (side.running[i].1.addr, side.running[i].1.via);
            let max = s.max_connections / s.slices as u64;
            totals[i].add(load::rate(addr, via, p, slice, max));
        }
    }
    let counted: Vec<Peer> = side.running.iter().map(|(peer, _)| *peer).collect();
    let cpu = side.stop(r);
    for ((peer, rate), (_, cpu)) in counted.into_iter().zip(totals).zip(cpu) {
        let name = peer.name();
        if rate.errors > 0 {
            r.note(format!(
                "{name} at parallelism {p}: {} failed connections ({})",
                rate.errors,
                rate.first_error.as_deref().unwrap_or("?")
            ));
        }
        if rate.completed == 0 {
            r.note(format!(
                "{name} at parallelism {p}: no connection completed"
            ));
            continue;
        }
        // The warm-up connection ran on the peer too.
        let cpu_per_conn = cpu.as_secs_f64() * 1e3 / (rate.completed + 1) as f64;
        let (p50, p99) = (
            percentile(&rate.latencies_ms, 50.0),
            percentile(&rate.latencies_ms, 99.0),
        );
        r.add(&format!("conn/s@{p}"), name, rate.per_second());
        r.add(&format!("p50@{p}"), name, p50);
        r.add(&format!("p99@{p}"), name, p99);
        r.add(&format!("cpu/conn@{p}"), name, cpu_per_conn);
        s.progress(&format!(
            "client {name:<18} P={p:<3} {:>6.0} conn/s  p50 {p50:.2} ms  p99 {p99:.2} ms  cpu {cpu_per_conn:.3} ms/conn",
            rate.per_second(),
        ));
    }
}

/// MB/s each way over one connection, and CPU per GiB: `s.slices` transfers
/// of an equal share of `s.bulk_bytes` per peer, the peers in turn, all
/// listening at once (see `rate_point`).
fn bulk_point(s: &Setup, r: &mut Results, peers: &[Peer], rep: usize) {
    let side = Side::start(s, r, peers, "bulk");
    let share = (s.bulk_bytes / s.slices as u64).max(1);
    let mut seconds = vec![0.0f64; side.running.len()];
    let mut failed: Vec<Option<String>> = vec![None; side.running.len()];
    let order: Vec<usize> = (0..side.running.len()).collect();
    for k in 0..s.slices {
        for i in rotated(&order, rep + k) {
            if failed[i].is_some() {
                continue;
            }
            match bulk_once(s, side.running[i].1.addr, share) {
                Ok(t) => seconds[i] += t.as_secs_f64(),
                Err(e) => failed[i] = Some(e),
            }
        }
    }
    let counted: Vec<Peer> = side.running.iter().map(|(peer, _)| *peer).collect();
    let cpu = side.stop(r);
    for (((peer, secs), failed), (_, cpu)) in counted.into_iter().zip(seconds).zip(failed).zip(cpu)
    {
        if let Some(e) = failed {
            r.note(format!("{} bulk: {e}", peer.name()));
            continue;
        }
        let bytes = (share * s.slices as u64) as f64;
        let mbps = bytes / 1e6 / secs;
        let gib = bytes / (1u64 << 30) as f64;
        r.add("bulk MB/s", peer.name(), mbps);
        r.add("bulk cpu s/GiB", peer.name(), cpu.as_secs_f64() / gib);
        s.progress(&format!(
            "client {:<18} bulk {mbps:>6.0} MB/s each way  cpu {:.2} s/GiB",
            peer.name(),
            cpu.as_secs_f64() / gib
        ));
    }
}

/// One verified transfer of `bytes` each way over a new connection.
fn bulk_once(s: &Setup, addr: SocketAddr, bytes: u64) -> Result<Duration, String> {
    let (reader, writer) = connect_bulk(addr)?;
    let t = load::bulk(
        &reader,
        writer,
        |w: &TcpStream| {
            let _ = w.shutdown(Shutdown::Write);
        },
        bytes,
        &s.pattern,
    );
    load::no_time_wait(&reader);
    t
}

/// The daemon's RSS and PSS after one connection, then with more and more
/// open at once; and the PSS of every forwarder process (not the stand-ins).
fn memory_point(s: &Setup, r: &mut Results, peer: Peer) -> Result<(), String> {
    let running = start(s, peer)?;
    let result = memory_levels(s, r, peer, &running);
    stop(r, peer, running, &[]);
    result
}

fn memory_levels(s: &Setup, r: &mut Results, peer: Peer, running: &Running) -> Result<(), String> {
    load::one_line(running.addr, running.via).map_err(|e| format!("first connection: {e}"))?;
    let root = running.proc.pid;
    // Idle means the first connection's stand-in has gone too.
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline && !idle(root) {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut open: Vec<TcpStream> = Vec::new();
    let mut line = Vec::new();
    for &level in &s.open_levels {
        while open.len() < level {
            let mut c = TcpStream::connect_timeout(&running.addr, load::TIMEOUT)
                .map_err(|e| format!("connection {}: {e}", open.len() + 1))?;
            c.set_read_timeout(Some(load::TIMEOUT))
                .map_err(|e| e.to_string())?;
            std::io::Write::write_all(&mut c, load::LINE).map_err(|e| e.to_string())?;
            load::read_line_echo(&mut c, Instant::now())
                .map_err(|e| format!("connection {}: {}", open.len() + 1, load::describe(&e)))?;
            open.push(c);
        }
        let (rss, pss) = procs::rss_pss(root).ok_or("the daemon is gone")?;
        let total: u64 = std::iter::once(root)
            .chain(procs::descendants(root))
            .filter(|&pid| procs::exe(pid).is_some_and(|e| e != s.standin))
            .filter_map(|pid| procs::rss_pss(pid).map(|(_, pss)| pss))
            .sum();
        r.add(&format!("rss@{level}"), peer.name(), rss as f64);
        r.add(&format!("pss@{level}"), peer.name(), pss as f64);
        r.add(&format!("fwd-pss@{level}"), peer.name(), total as f64);
        line.push(format!("{level}: {rss}/{pss}/{total}"));
    }
    let first = *s.open_levels.first().unwrap_or(&0);
    let last = *s.open_levels.last().unwrap_or(&0);
    let growth = r
        .get(&format!("rss@{last}"), peer.name())
        .last()
        .copied()
        .unwrap_or(f64::NAN)
        - r.get(&format!("rss@{first}"), peer.name())
            .last()
            .copied()
            .unwrap_or(f64::NAN);
    r.add("rss growth", peer.name(), growth);
    for c in &open {
        let _ = c.shutdown(Shutdown::Write);
    }
    for mut c in open {
        if load::expect_eof(&mut c).is_ok() {
            load::no_time_wait(&c);
        }
    }
    s.progress(&format!(
        "client {:<18} memory KiB rss/pss/forwarders pss by open connections: {}",
        peer.name(),
        line.join(", ")
    ));
    Ok(())
}

/// Whether `root` has no running descendant (zombies have no exe).
fn idle(root: u32) -> bool {
    procs::descendants(root)
        .into_iter()
        .all(|pid| procs::exe(pid).is_none())
}

/// Time from connect() to the first echoed byte on a freshly started peer
/// (for socket-activated ones, the daemon starts on this connection), and
/// for ours, to READY=1. Ours keeps in `$RUNTIME_DIRECTORY` whether the
/// installed qrexec-client-vm knows `--use-stdin-socket` (its `-h`), as a
/// unit with `RuntimeDirectory=` does; it is also measured cold, with that
/// directory emptied first (a first start after boot or an upgrade), which
/// runs the probe. The peers' samples are interleaved.
fn first_point(s: &Setup, r: &mut Results, peers: &[Peer], rep: usize) {
    let mut firsts: Vec<Vec<f64>> = vec![Vec::new(); peers.len()];
    let mut failed: Vec<bool> = vec![false; peers.len()];
    let mut readies = Vec::new();
    let mut colds = Vec::new();
    let order: Vec<usize> = (0..peers.len()).collect();
    for k in 0..s.first_samples {
        for i in rotated(&order, rep + k) {
            let peer = peers[i];
            if failed[i] {
                continue;
            }
            let sample = first_sample(s, r, peer, Some(&mut readies)).and_then(|warm| {
                if peer == Peer::Ours {
                    empty_runtime_dir(s)?;
                    colds.push(first_sample(s, r, peer, None)?);
                }
                Ok(warm)
            });
            match sample {
                Ok(ms) => firsts[i].push(ms),
                Err(e) => {
                    r.note(format!("{} first connection: {e}", peer.name()));
                    failed[i] = true;
                }
            }
        }
    }
    for (i, &peer) in peers.iter().enumerate() {
        if failed[i] || firsts[i].is_empty() {
            continue;
        }
        let name = peer.name();
        let firsts = &firsts[i];
        r.add("first ms", name, median(firsts));
        let mut extra = String::new();
        if peer == Peer::Ours {
            if !readies.is_empty() {
                r.add("ready ms", name, median(&readies));
                extra += &format!(", READY=1 after {:.2} ms", median(&readies));
            }
            if !colds.is_empty() {
                r.add("first ms, cold", name, median(&colds));
                extra += &format!(", cold {:.2} ms", median(&colds));
            }
        }
        let (lo, hi) = min_max(firsts);
        s.progress(&format!(
            "client {name:<18} first connection {:.2} ms (of {} starts: {lo:.2}-{hi:.2}){extra}",
            median(firsts),
            firsts.len(),
        ));
    }
}

/// Empties ours' `$RUNTIME_DIRECTORY`, as a reboot would.
fn empty_runtime_dir(s: &Setup) -> Result<(), String> {
    let show = |e: std::io::Error| format!("{}: {e}", s.runtime.display());
    if s.runtime.exists() {
        std::fs::remove_dir_all(&s.runtime).map_err(show)?;
    }
    std::fs::create_dir_all(&s.runtime).map_err(show)
}

/// One start of `peer` and its first connection: milliseconds from
/// connect() to the first echoed byte; READY=1's time goes to `readies`.
fn first_sample(
    s: &Setup,
    r: &mut Results,
    peer: Peer,
    readies: Option<&mut Vec<f64>>,
) -> Result<f64, String> {
    let running = start(s, peer)?;
    s.drain_notify();
    let t0 = Instant::now();
    let result = load::connect(running.addr, running.via)
        .and_then(|mut c| {
            std::io::Write::write_all(&mut c, load::LINE)?;
            load::echo_and_eof(&mut c, t0)
        })
        .map_err(|e| load::describe(&e));
    if let Some(readies) = readies.filter(|_| peer == Peer::Ours) {
        let deadline = t0 + Duration::from_secs(2);
        let mut ready = None;
        while let Ok((at, msg)) = s
            .notify
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if msg.lines().any(|l| l == "READY=1") {
                ready = Some(at.saturating_duration_since(t0));
                break;
            }
        }
        match ready {
            Some(t) => readies.push(t.as_secs_f64() * 1e3),
            None => r.note("qrexec-connect-tcp sent no READY=1 within 2 s".into()),
        }
    }
    stop(r, peer, running, &[]);
    Ok(result?.as_secs_f64() * 1e3)
}

/// The client side's part of the goals table.
pub fn goals(s: &Setup, r: &Results) -> Vec<(String, String, Option<bool>)> {
    let ours = Peer::Ours.name();
    let mut rows = Vec::new();
    let ratios: Vec<(usize, f64)> = s
        .parallelism
        .iter()
        .map(|&p| (p, r.ratio(&format!("conn/s@{p}"), ours, FLOOR)))
        .collect();
    let worst = ratios.iter().map(|(_, x)| *x).fold(f64::INFINITY, f64::min);
    rows.push((
        "client connections/s ≥ 0.95 × floor at every parallelism".into(),
        ratios
            .iter()
            .map(|(p, x)| format!("{p}: ×{x:.2}"))
            .collect::<Vec<_>>()
            .join(", "),
        (!worst.is_nan()).then_some(worst >= 0.95),
    ));
    let bulk = r.ratio("bulk MB/s", ours, FLOOR);
    rows.push((
        "client bulk ≥ 0.95 × floor".into(),
        format!("×{bulk:.2}"),
        (!bulk.is_nan()).then_some(bulk >= 0.95),
    ));
    let first = s.open_levels.first().copied().unwrap_or(0);
    let last = s.open_levels.last().copied().unwrap_or(0);
    let idle = r.median(&format!("rss@{first}"), ours);
    rows.push((
        "daemon idle RSS ≤ 1.5 MiB".into(),
        format!("{:.2} MiB", idle / 1024.0),
        (!idle.is_nan()).then_some(idle <= 1.5 * 1024.0),
    ));
    let growth = r.median("rss growth", ours);
    rows.push((
        format!("daemon RSS with {last} open connections ≤ idle + 64 KiB"),
        format!("+{} KiB", report::num(growth)),
        (!growth.is_nan()).then_some(growth <= 64.0),
    ));
    let first_conn = r.ratio("first ms", ours, FLOOR);
    rows.push((
        "first connection (socket activation) ≤ 1.2 × floor".into(),
        format!(
            "{} ms, ×{first_conn:.2}; READY=1 after {} ms; cold (the probe runs) {} ms, ×{:.2}",
            report::num(r.median("first ms", ours)),
            report::num(r.median("ready ms", ours)),
            report::num(r.median("first ms, cold", ours)),
            r.median("first ms, cold", ours) / r.median("first ms", FLOOR)
        ),
        (!first_conn.is_nan()).then_some(first_conn <= 1.2),
    ));
    rows
}

/// How far the floor and its second copy measured apart: what a ratio to
/// the floor can mean in this run.
pub fn noise(s: &Setup, r: &Results) -> Option<String> {
    let again = Peer::FloorAgain.name();
    let ratios: Vec<String> = s
        .parallelism
        .iter()
        .map(|&p| {
            (
                format!("P={p}"),
                r.ratio(&format!("conn/s@{p}"), again, FLOOR),
            )
        })
        .chain([("bulk".to_owned(), r.ratio("bulk MB/s", again, FLOOR))])
        .filter(|(_, x)| !x.is_nan())
        .map(|(what, x)| format!("{what} ×{x:.2}"))
        .collect();
    (!ratios.is_empty()).then(|| {
        format!(
            "The floor against a second copy of itself, measured alongside in the same points \
             (client side): {}. Two equal peers measure that far apart here, so a ratio within \
             that distance of a goal does not tell whether it is met.\n\n",
            ratios.join(", ")
        )
    })
}

/// The SOCKS applet beside qrexec-connect-tcp: the same medians, with ratios
/// to qrexec-connect-tcp's (the tables above give them to the floor's).
fn socks_report(s: &Setup, r: &Results) -> String {
    let tcp = Peer::Ours.name();
    let to_tcp = |_: &str| Some(tcp);
    let mut columns: Vec<(String, String)> = s
        .parallelism
        .iter()
        .map(|p| (format!("conn/s P={p}"), format!("conn/s@{p}")))
        .collect();
    columns.push(("first byte (ms)".into(), "first ms".into()));
    let peers = [tcp, Peer::Socks.name(), Peer::SocksUnlimited.name()];
    let table = Table {
        columns,
        peers: &peers,
        floor: &to_tcp,
    };
    format!(
        "### SOCKS5 beside qrexec-connect-tcp\n\nThe medians above again, each with its ratio to qrexec-connect-tcp's in this run: what a SOCKS5 handshake per connection costs, and at P above {SOCKS_MAX_STARTING} the limit on calls starting at once (the stand-in's calls end within a millisecond or two, so the limit lets {SOCKS_MAX_STARTING} connections run at once; with `--max-starting {SOCKS_UNLIMITED}` none waits).\n\n{}\n",
        table.render(r)
    )
}

/// The client side's sections of RESULTS.md, and its plots.
pub fn report(s: &Setup, r: &Results, plots: &Path) -> String {
    let names = |keep: fn(Peer) -> bool| -> Vec<&'static str> {
        PEERS
            .into_iter()
            .filter(|&p| keep(p))
            .map(Peer::name)
            .collect()
    };
    let all = names(|_| true);
    let bulk_peers = names(Peer::bulk_and_memory);
    let memory_peers = names(|p| p.bulk_and_memory() && p != Peer::FloorAgain);
    let first_peers = names(Peer::first_connection);
    let by_p = |fig: &str| -> Vec<(String, String)> {
        s.parallelism
            .iter()
            .map(|p| (format!("P={p}"), format!("{fig}@{p}")))
            .collect()
    };
    let table = |peers: &[&str], columns| {
        let floor = |_: &str| Some(FLOOR);
        Table {
            columns,
            peers,
            floor: &floor,
        }
        .render(r)
    };
    let mut md = String::from(
        "## Client side\n\nPeers: **qrexec-connect-tcp** (ours, under `systemd-socket-activate`), **qrexec-connect-socks** (ours, the SOCKS5 proxy, under `systemd-socket-activate`: each connection a SOCKS5 handshake for `work.qube:PORT` first; as users get it, with at most 8 calls starting at once, and at P above 8 also with `--max-starting 1024`: the handshake's cost alone; see the README), **socat** as `qvm-connect-tcp` runs it, **Accept=yes** (`systemd-socket-activate --accept --inetd` starting the stand-in per connection), and the **floor** (`bench-client-floor`: accept and `posix_spawn`, nothing else), and in the rate and bulk points a second floor (**floor, again**): two equal peers measured side by side, which shows how far apart the machine's noise puts them. Each runs the same compiled echo stand-in for qrexec-client-vm.\n\n",
    );
    md.push_str("### Connections per second\n\nOne line of request and its echo per connection, P connections at a time; higher is better.\n\n");
    md.push_str(&table(&all, by_p("conn/s")));
    md.push_str("\n![connections per second by parallelism](conn-rate.png)\n\n");
    md.push_str("### Latency, p50 (ms)\n\nconnect() to EOF after the echo; lower is better.\n\n");
    md.push_str(&table(&all, by_p("p50")));
    md.push_str("\n### Latency, p99 (ms)\n\n");
    md.push_str(&table(&all, by_p("p99")));
    md.push_str("\n### CPU per connection (ms)\n\nUser + system time of the peer and everything it started (stand-ins included, so the floor is the stand-in's own cost plus the least forwarding), over the connections of the point; lower is better.\n\n");
    md.push_str(&table(&all, by_p("cpu/conn")));
    md.push_str(&format!("\n### Bulk\n\n{} MiB each way over one connection, echoed and verified; CPU per GiB as above.\n\n", s.bulk_bytes >> 20));
    md.push_str(&table(
        &bulk_peers,
        vec![
            ("MB/s each way".into(), "bulk MB/s".into()),
            ("CPU s per GiB".into(), "bulk cpu s/GiB".into()),
        ],
    ));
    let last = s.open_levels.last().copied().unwrap_or(0);
    let first = s.open_levels.first().copied().unwrap_or(0);
    md.push_str(&format!("\n### Memory (KiB)\n\nThe daemon (the listening process) after one connection (idle) and with {last} connections open at once; 'forwarders PSS' adds every process the peer forked that is not a stand-in (socat forks one per connection). Lower is better.\n\n"));
    md.push_str(&table(
        &memory_peers,
        vec![
            ("RSS idle".into(), format!("rss@{first}")),
            ("PSS idle".into(), format!("pss@{first}")),
            (format!("RSS @{last}"), format!("rss@{last}")),
            (format!("PSS @{last}"), format!("pss@{last}")),
            ("RSS growth".into(), "rss growth".into()),
            (format!("forwarders PSS @{last}"), format!("fwd-pss@{last}")),
        ],
    ));
    md.push_str("\n![daemon RSS by open connections](rss.png)\n\n");
    md.push_str(&format!("### First connection (ms)\n\nconnect() to the first echoed byte on a freshly started peer, median of {} starts per repeat; for the socket-activated peers (ours and the floor) the daemon starts on that connection, and qrexec-connect-socks' time includes the SOCKS5 handshake (two round trips) before the line is sent. READY=1: connect() to our READY=1 on NOTIFY_SOCKET. Ours learns whether qrexec-client-vm knows `--use-stdin-socket` by running `qrexec-client-vm -h` and keeps the answer in `$RUNTIME_DIRECTORY` (as its units set it) for the starts after; 'cold' is ours with that directory emptied before each start, as after a reboot or an upgrade of qrexec-client-vm (samples interleaved with the others).\n\n", s.first_samples));
    md.push_str(&table(
        &first_peers,
        vec![
            ("first byte".into(), "first ms".into()),
            ("READY=1".into(), "ready ms".into()),
            ("first byte, cold".into(), "first ms, cold".into()),
        ],
    ));
    md.push('\n');
    md.push_str(&socks_report(s, r));
    let data = s.out.join("plots");
    let _ = std::fs::create_dir_all(&data);
    let series = |fig: &dyn Fn(usize) -> String, xs: &[usize], scale: f64| -> Vec<Series> {
        PEERS
            .iter()
            .map(|p| Series {
                title: p.name().into(),
                points: xs
                    .iter()
                    .filter_map(|&x| {
                        let v = r.get(&fig(x), p.name());
                        (!v.is_empty()).then(|| {
                            let (lo, hi) = min_max(v);
                            (x as f64, median(v) * scale, lo * scale, hi * scale)
                        })
                    })
                    .collect(),
            })
            .collect()
    };
    let plotted = [
        report::plot(
            &data,
            &plots.join("conn-rate.png"),
            "conn-rate",
            "set title 'Connections per second (one line echoed), median and range of repeats'\nset logscale x 2\nset xlabel 'connections at once'\nset ylabel 'connections/s'\nset yrange [0:*]",
            &series(&|p| format!("conn/s@{p}"), &s.parallelism, 1.0),
        ),
        report::plot(
            &data,
            &plots.join("rss.png"),
            "rss",
            "set title 'Daemon RSS (and socat total PSS) by open connections, median and range of repeats'\nset xlabel 'open connections'\nset ylabel 'MiB'\nset logscale y\nset yrange [0.5:*]",
            &{
                let mut all = series(&|n| format!("rss@{n}"), &s.open_levels, 1.0 / 1024.0);
                let socat = Peer::Socat.name();
                let mut total = series(&|n| format!("fwd-pss@{n}"), &s.open_levels, 1.0 / 1024.0)
                    .swap_remove(Peer::Socat as usize);
                total.title = format!("{socat}: PSS of all its processes");
                all.push(total);
                all
            },
        ),
    ];
    for p in plotted {
        if let Err(e) = p {
            md.push_str(&format!("(plot not made: {e})\n\n"));
        }
    }
    md
}
