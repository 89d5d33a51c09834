//! `qrexec-connect-bench`: runs every peer of the benchmark side by side and
//! writes RESULTS.md and the plots (`bench/run` builds and calls it).
//!
//! Also usable by hand against any listener:
//! `qrexec-connect-bench rate 127.0.0.1:PORT PARALLELISM SECONDS` and
//! `qrexec-connect-bench bulk 127.0.0.1:PORT MIB` (the peer must echo);
//! `rate socks5h://127.0.0.1:PORT ...` goes through a SOCKS5 proxy to
//! `work.qube:PORT`.

mod client;
mod report;
mod service;

use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use qrexec_connect_bench::pattern::Pattern;
use qrexec_connect_bench::{load, procs, sys};
use report::Results;

const USAGE: &str =
    "usage: qrexec-connect-bench run --release DIR [--out DIR] [--results FILE] [--plots DIR]
                              [--repeats N] [--seconds S] [--bulk-mib M] [--quick]
                              [--only client|service]
       qrexec-connect-bench rate [socks5h://]ADDR PARALLELISM SECONDS
       qrexec-connect-bench bulk ADDR MIB";

/// Everything a measurement needs to know.
pub struct Setup {
    /// The repository, stripped from paths shown in RESULTS.md.
    pub root: PathBuf,
    /// Links named as the programs are invoked (qrexec-client-vm,
    /// qrexec-connect-tcp, qubes.ConnectUnix, ...) to the release binaries.
    pub bin: PathBuf,
    /// The stand-in's real path, to tell stand-ins from forwarders in /proc.
    pub standin: PathBuf,
    pub out: PathBuf,
    pub socat: Option<PathBuf>,
    pub activate: Option<PathBuf>,
    /// The applets the release binary has (`qrexec-connect --list`).
    pub applets: Vec<String>,
    pub repeats: usize,
    pub seconds: f64,
    pub max_connections: u64,
    pub parallelism: Vec<usize>,
    pub bulk_bytes: u64,
    pub open_levels: Vec<usize>,
    pub first_samples: usize,
    /// Slices of each rate and bulk point, the peers taking turns.
    pub slices: usize,
    /// `$RUNTIME_DIRECTORY` of ours.
    pub runtime: PathBuf,
    /// `$RUNTIME_DIRECTORY` of the SOCKS applet (never emptied).
    pub runtime_socks: PathBuf,
    pub spawn_samples: usize,
    pub notify_path: PathBuf,
    pub notify: mpsc::Receiver<(Instant, String)>,
    pub pattern: Pattern,
    pub started: Instant,
}

impl Setup {
    /// A path as shown in RESULTS.md: relative to the repository.
    pub fn show(&self, text: &str) -> String {
        let root = format!("{}/", self.root.display());
        text.replace(&root, "")
    }

    /// A progress line on stderr.
    pub fn progress(&self, what: &str) {
        eprintln!("[{:>5.1}s] {what}", self.started.elapsed().as_secs_f64());
    }

    /// Messages on the notify socket since the last call are dropped.
    pub fn drain_notify(&self) {
        while self.notify.try_recv().is_ok() {}
    }
}

/// Shell-quotes an argument list for RESULTS.md.
pub fn shell_line(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@$".contains(c))
            {
                a.clone()
            } else {
                format!("'{a}'")
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Rotates `items` left by `by`: each repeat starts with another peer.
pub fn rotated<T: Copy>(items: &[T], by: usize) -> Vec<T> {
    let mut v = items.to_vec();
    if !v.is_empty() {
        let n = by % v.len();
        v.rotate_left(n);
    }
    v
}

struct Args {
    release: Option<PathBuf>,
    out: PathBuf,
    results: PathBuf,
    plots: PathBuf,
    repeats: usize,
    seconds: f64,
    bulk_mib: u64,
    quick: bool,
    only: Option<String>,
}

fn parse_run(args: &[String]) -> Result<Args, String> {
    let mut a = Args {
        release: None,
        out: "bench/out".into(),
        results: "bench/RESULTS.md".into(),
        plots: "bench".into(),
        repeats: 3,
        seconds: 2.0,
        bulk_mib: 1024,
        quick: false,
        only: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{flag} needs a value"));
        let bad = |e: &dyn std::fmt::Display| format!("{flag}: {e}");
        match flag.as_str() {
            "--release" => a.release = Some(value()?.into()),
            "--out" => a.out = value()?.into(),
            "--results" => a.results = value()?.into(),
            "--plots" => a.plots = value()?.into(),
            "--repeats" => a.repeats = value()?.parse().map_err(|e| bad(&e))?,
            "--seconds" => a.seconds = value()?.parse().map_err(|e| bad(&e))?,
            "--bulk-mib" => a.bulk_mib = value()?.parse().map_err(|e| bad(&e))?,
            "--quick" => a.quick = true,
            "--only" => a.only = Some(value()?),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    if a.quick {
        a.repeats = 1;
        a.seconds = 0.5;
        a.bulk_mib = 128;
    }
    if a.repeats == 0 || a.seconds.is_nan() || a.seconds <= 0.0 || a.bulk_mib == 0 {
        return Err("--repeats, --seconds and --bulk-mib must be positive".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("run") => parse_run(&args[1..]).and_then(run),
        Some("rate") if args.len() == 4 => manual_rate(&args[1..]),
        Some("bulk") if args.len() == 3 => manual_bulk(&args[1..]),
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("qrexec-connect-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn manual_rate(args: &[String]) -> Result<(), String> {
    let (text, socks) = match args[0].strip_prefix("socks5h://") {
        Some(rest) => (rest, true),
        None => (args[0].as_str(), false),
    };
    let addr: SocketAddr = text.parse().map_err(|e| format!("{}: {e}", args[0]))?;
    let via = if socks {
        load::Via::Socks5 { port: addr.port() }
    } else {
        load::Via::Direct
    };
    let p: usize = args[1].parse().map_err(|e| format!("{}: {e}", args[1]))?;
    let secs: f64 = args[2].parse().map_err(|e| format!("{}: {e}", args[2]))?;
    let r = load::rate(addr, via, p, Duration::from_secs_f64(secs), u64::MAX);
    let lat = &r.latencies_ms;
    println!(
        "{:.0} connections/s ({} in {:.2}s, {} errors{}), latency p50 {:.3} ms, p99 {:.3} ms",
        r.per_second(),
        r.completed,
        r.elapsed.as_secs_f64(),
        r.errors,
        r.first_error.map(|e| format!(": {e}")).unwrap_or_default(),
        qrexec_connect_bench::stats::percentile(lat, 50.0),
        qrexec_connect_bench::stats::percentile(lat, 99.0),
    );
    Ok(())
}

fn manual_bulk(args: &[String]) -> Result<(), String> {
    let addr: SocketAddr = args[0].parse().map_err(|e| format!("{}: {e}", args[0]))?;
    let mib: u64 = args[1].parse().map_err(|e| format!("{}: {e}", args[1]))?;
    let (reader, writer) = client::connect_bulk(addr)?;
    let bytes = mib << 20;
    let t = load::bulk(
        reader,
        writer,
        |w: &TcpStream| {
            let _ = w.shutdown(std::net::Shutdown::Write);
        },
        bytes,
        &Pattern::new(),
    )?;
    println!(
        "{:.0} MB/s each way ({mib} MiB verified in {:.2}s)",
        bytes as f64 / 1e6 / t.as_secs_f64(),
        t.as_secs_f64()
    );
    Ok(())
}

fn run(a: Args) -> Result<(), String> {
    let started = Instant::now();
    let release = a.release.ok_or("--release DIR is required")?;
    let root = std::env::current_dir().map_err(|e| e.to_string())?;
    let abs = |p: &Path| {
        if p.is_absolute() {
            p.to_owned()
        } else {
            root.join(p)
        }
    };
    let (release, out) = (abs(&release), abs(&a.out));
    // Only what an earlier run made: --out may name a directory with other things in it.
    for made in ["bin", "logs", "run", "plots", "runtime", "runtime-socks"] {
        let _ = std::fs::remove_dir_all(out.join(made));
    }
    for made in ["echo.sock", "notify.sock"] {
        let _ = std::fs::remove_file(out.join(made));
    }
    let bin = out.join("bin");
    for dir in [
        &out,
        &bin,
        &out.join("logs"),
        &out.join("runtime"),
        &out.join("runtime-socks"),
        &abs(&a.plots),
    ] {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    let binary = release.join("qrexec-connect");
    let standin = release.join("bench-qrexec-client-vm");
    for p in [
        &binary,
        &standin,
        &release.join("bench-client-floor"),
        &release.join("bench-splice-relay"),
    ] {
        if !p.exists() {
            return Err(format!(
                "{} is missing: build the release binaries first (bench/run does)",
                p.display()
            ));
        }
    }
    let link = |target: &Path, name: &str| {
        std::os::unix::fs::symlink(target, bin.join(name)).map_err(|e| format!("link {name}: {e}"))
    };
    link(&standin, "qrexec-client-vm")?;
    link(&release.join("bench-client-floor"), "bench-client-floor")?;
    link(&release.join("bench-splice-relay"), "bench-splice-relay")?;
    for name in [
        "qrexec-connect-tcp",
        "qrexec-connect-socks",
        "qubes.ConnectUnix",
        "qubes.ConnectTCPBind",
    ] {
        link(&binary, name)?;
    }
    let listed = std::process::Command::new(&binary)
        .arg("--list")
        .output()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let applets = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();

    // Everything we start, and everything they start, is reaped by us.
    sys::set_child_subreaper().map_err(|e| format!("PR_SET_CHILD_SUBREAPER: {e}"))?;
    let nofile = sys::raise_nofile().map_err(|e| format!("RLIMIT_NOFILE: {e}"))?;
    let notify_path = out.join("notify.sock");
    let notify_socket =
        UnixDatagram::bind(&notify_path).map_err(|e| format!("{}: {e}", notify_path.display()))?;
    let (tx, notify) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = notify_socket.recv(&mut buf) {
            let at = Instant::now();
            if tx
                .send((at, String::from_utf8_lossy(&buf[..n]).into_owned()))
                .is_err()
            {
                return;
            }
        }
    });

    let setup = Setup {
        root: root.clone(),
        bin,
        standin: std::fs::canonicalize(&standin).map_err(|e| e.to_string())?,
        out: out.clone(),
        socat: procs::which("socat"),
        activate: procs::which("systemd-socket-activate"),
        applets,
        repeats: a.repeats,
        seconds: a.seconds,
        max_connections: 200_000,
        parallelism: vec![1, 4, 16, 64, 256],
        bulk_bytes: a.bulk_mib << 20,
        open_levels: vec![0, 100, 250, 500, 1000],
        first_samples: if a.quick { 3 } else { 10 },
        slices: if a.quick { 2 } else { 4 },
        runtime: out.join("runtime"),
        runtime_socks: out.join("runtime-socks"),
        spawn_samples: if a.quick { 5 } else { 20 },
        notify_path,
        notify,
        pattern: Pattern::new(),
        started,
    };
    let mut results = Results::default();
    let machine = machine_line(&setup, &binary, nofile);
    setup.progress(&machine.join("; "));
    let load_before = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let (do_client, do_service) = match a.only.as_deref() {
        None => (true, true),
        Some("client") => (true, false),
        Some("service") => (false, true),
        Some(other) => return Err(format!("--only client|service, not {other}")),
    };
    if do_client {
        client::run(&setup, &mut results);
    }
    if do_service {
        service::run(&setup, &mut results)?;
    }
    let load_after = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let plots = abs(&a.plots);
    let text = write_results(
        &setup,
        &mut results,
        &Report {
            machine,
            binary: &binary,
            load: (load_before, load_after),
            plots: &plots,
            do_client,
            do_service,
        },
    );
    let results_file = abs(&a.results);
    std::fs::write(&results_file, text).map_err(|e| format!("{}: {e}", results_file.display()))?;
    setup.progress(&format!(
        "wrote {}",
        setup.show(&results_file.display().to_string())
    ));
    Ok(())
}

pub struct Report<'a> {
    machine: Vec<String>,
    binary: &'a Path,
    load: (String, String),
    plots: &'a Path,
    do_client: bool,
    do_service: bool,
}

/// Cores, kernel, versions and the binary, for the head of RESULTS.md.
fn machine_line(s: &Setup, binary: &Path, nofile: u64) -> Vec<String> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|k| k.trim().to_owned())
        .unwrap_or_default();
    let socat = s.socat.as_ref().and_then(|p| {
        let out = std::process::Command::new(p).arg("-V").output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find(|l| l.contains("socat version"))
            .map(|l| l.trim().to_owned())
    });
    let systemd = s
        .activate
        .as_ref()
        .and_then(|p| procs::first_line(&p.display().to_string(), &["--version"]));
    let size = std::fs::metadata(binary).map_or(0, |m| m.len());
    vec![
        format!("{cores} cores ({model})"),
        format!("kernel {kernel}"),
        socat.unwrap_or_else(|| "socat not installed".into()),
        systemd.unwrap_or_else(|| "systemd-socket-activate not installed".into()),
        format!(
            "qrexec-connect {} bytes ({:.2} MiB), {}",
            report::num(size as f64),
            size as f64 / (1 << 20) as f64,
            elf_kind(binary)
        ),
        format!("open files limit raised to {nofile} for every peer"),
    ]
}

/// "static" when the ELF file asks for no program interpreter (PT_INTERP).
fn elf_kind(path: &Path) -> String {
    let Ok(bytes) = std::fs::read(path) else {
        return "unreadable".into();
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return "not a 64-bit ELF file".into();
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(bytes[0x20..0x28].try_into().unwrap()) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    let etype = u16_at(0x10);
    let interp = (0..phnum).any(|i| {
        let o = phoff + i * phentsize;
        o + 4 <= bytes.len() && u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) == 3
    });
    match (interp, etype) {
        (true, _) => "dynamically linked".into(),
        (false, 3) => "static-pie".into(),
        (false, _) => "static".into(),
    }
}

fn write_results(s: &Setup, r: &mut Results, rep: &Report<'_>) -> String {
    let mut md = String::new();
    let commit = procs::first_line("git", &["describe", "--always", "--dirty"]).unwrap_or_default();
    md.push_str("# Benchmark results\n\n");
    md.push_str(&format!(
        "Written by `bench/run` (commit `{commit}`, {} repeats, {} s per rate point, {} MiB bulk). \
         Every figure was measured once per repeat with the peers in rotated order; \
         a cell shows the **median** of the repeats, (min–max), and ×ratio to the floor's median. \
         See [README.md](README.md) for what each figure means.\n\n",
        s.repeats,
        s.seconds,
        s.bulk_bytes >> 20
    ));
    md.push_str("Machine:\n");
    for l in &rep.machine {
        md.push_str(&format!("- {l}\n"));
    }
    md.push_str(&format!(
        "- load average before: {}, after: {}\n\n",
        rep.load
            .0
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" "),
        rep.load
            .1
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let load: f64 = rep
        .load
        .0
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if load > cores as f64 / 2.0 {
        md.push_str(&format!(
            "**The machine was busy when this run started (load average {load} on {cores} cores): \
             the figures are noisy, and even ratios within the run are uncertain. Run again on an idle machine.**\n\n"
        ));
    }
    let goals = goals(s, r, rep);
    md.push_str(&goals);
    if rep.do_client
        && let Some(noise) = client::noise(s, r)
    {
        md.push_str(&noise);
    }
    if rep.do_client {
        md.push_str(&client::report(s, r, rep.plots));
    }
    if rep.do_service {
        md.push_str(&service::report(s, r));
    }
    // Profiles are read, not measured: a hand-written section, kept across runs.
    if let Ok(profile) = std::fs::read_to_string(s.root.join("bench/PROFILE.md")) {
        md.push('\n');
        md.push_str(&profile);
    }
    md.push_str(PREDECESSOR);
    md.push_str("\n## Commands\n\n`bin/` is `bench/out/bin/`, links named as each program is invoked to the release binaries (`qrexec-client-vm` is the echo stand-in); PORT and ECHOPORT are free ports picked at run time.\n\n");
    for (peer, line) in &r.commands {
        md.push_str(&format!("- {peer}: `{line}`\n"));
    }
    if !r.notes.is_empty() {
        md.push_str("\n## Notes from the run\n\n");
        for n in &r.notes {
            md.push_str(&format!("- {n}\n"));
        }
    }
    md
}

const PREDECESSOR: &str = "
## The Python predecessor: not measured

The predecessor's Python daemon is not available on this machine (no network besides package registries), so it was not run. \
For comparison only, the figures issue 5 cites for it, from another run on a 2-core machine, **not measured here** and not comparable ratio for ratio:

| cited (issue 5, not measured here) | Python predecessor |
|---|---:|
| connections/s, 1 at a time | 745 |
| connections/s, 16 in parallel | 734 |
| bulk MB/s each way | 272 |
| idle RSS | 22 MiB |
| first connection (socket activation) | 80 ms |
";

/// The goals, each with what this run measured.
fn goals(s: &Setup, r: &Results, rep: &Report<'_>) -> String {
    let mut rows: Vec<(String, String, Option<bool>)> = Vec::new();
    if rep.do_client {
        rows.extend(client::goals(s, r));
    }
    if rep.do_service {
        rows.extend(service::goals(r));
    }
    let size = std::fs::metadata(rep.binary).map_or(0, |m| m.len()) as f64;
    let kind = elf_kind(rep.binary);
    rows.push((
        "binary static, at most 1.5 MiB stripped".into(),
        format!("{:.2} MiB, {kind}", size / (1 << 20) as f64),
        Some(size <= 1.5 * (1 << 20) as f64 && kind.starts_with("static")),
    ));
    let mut md =
        String::from("## Goals (issue 5)\n\n| goal | measured (medians) | met |\n|---|---|---|\n");
    for (goal, measured, met) in rows {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "not measured",
        };
        md.push_str(&format!("| {goal} | {measured} | {met} |\n"));
    }
    md.push('\n');
    md
}

/// A peer's command line for RESULTS.md, with the port shown as `port_name`.
pub fn show_command(s: &Setup, argv: &[String]) -> String {
    s.show(&shell_line(argv)).replace("bench/out/bin/", "bin/")
}
