//! The processes the driver starts: each owned by pid, stopped by pid, and
//! every descendant reaped by the driver (a child subreaper), so that their
//! CPU time is counted and none outlives a measurement.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::sys;

/// How long a stopped process gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// A started process, killed and reaped by pid when dropped.
pub struct Proc {
    pub pid: u32,
    reaped: bool,
}

impl Proc {
    pub fn spawn(cmd: &mut Command) -> io::Result<Proc> {
        let child = cmd.spawn()?;
        // From here on the pid is ours to reap; std's Child neither waits nor
        // kills when dropped.
        Ok(Proc {
            pid: child.id(),
            reaped: false,
        })
    }

    /// Whether it has ended (reaping it if so).
    pub fn exited(&mut self) -> bool {
        if !self.reaped && !matches!(sys::try_reap(self.pid as i32), Ok(None)) {
            self.reaped = true;
        }
        self.reaped
    }

    /// Waits up to `limit` for it to end by itself (killing it otherwise);
    /// whether it ended by itself.
    pub fn wait_exit(mut self, limit: Duration) -> bool {
        if !self.reaped && !sys::wait_for_exit(self.pid, limit).unwrap_or(false) {
            return false;
        }
        self.exited()
    }

    /// SIGTERM, then SIGKILL after the grace period; reaps it.
    pub fn stop(mut self) {
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.reaped {
            return;
        }
        sys::kill(self.pid, libc::SIGTERM);
        if !sys::wait_for_exit(self.pid, GRACE).unwrap_or(false) {
            sys::kill(self.pid, libc::SIGKILL);
        }
        let _ = sys::wait(self.pid);
        self.reaped = true;
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if !self.reaped {
            sys::kill(self.pid, libc::SIGKILL);
            let _ = sys::wait(self.pid);
        }
    }
}

/// Reaps every child of ours but the `Proc`s in `keep` (still running
/// peers): the stopped ones and their descendants orphaned to us (we are a
/// subreaper). Waits up to `limit` for them to end by themselves, then kills
/// the rest by pid. Returns how many had to be killed.
pub fn reap_orphans(limit: Duration, keep: &[u32]) -> usize {
    let deadline = Instant::now() + limit;
    let me = sys::getpid();
    loop {
        let left: Vec<u32> = parents()
            .into_iter()
            .filter(|&(pid, ppid)| ppid == me && !keep.contains(&pid))
            .map(|(pid, _)| pid)
            .collect();
        // By pid: a wait for any child could reap a peer still running.
        let left: Vec<u32> = left
            .into_iter()
            .filter(|&pid| matches!(sys::try_reap(pid as i32), Ok(None)))
            .collect();
        if left.is_empty() {
            return 0;
        }
        if Instant::now() >= deadline {
            for &pid in &left {
                sys::kill(pid, libc::SIGKILL);
            }
            for &pid in &left {
                let _ = sys::wait(pid);
            }
            return left.len();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// (pid, parent pid) of every process, from /proc/PID/stat.
pub fn parents() -> Vec<(u32, u32)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let name = e.ok()?.file_name();
        let pid: u32 = name.to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        let rest = &stat[stat.rfind(')')? + 2..];
        let ppid = rest.split(' ').nth(1)?.parse().ok()?;
        Some((pid, ppid))
    })
    .collect()
}

/// Every descendant of `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for (pid, ppid) in parents() {
        children.entry(ppid).or_default().push(pid);
    }
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if let Some(c) = children.get(&p) {
            out.extend(c);
            todo.extend(c);
        }
    }
    out
}

/// The program a process runs (`/proc/PID/exe`).
pub fn exe(pid: u32) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok()
}

/// Resident and proportional set size in KiB (`/proc/PID/smaps_rollup`).
pub fn rss_pss(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some((field("Rss:")?, field("Pss:")?))
}

/// Whether a TCP socket listens on 127.0.0.1:`port` (`/proc/net/tcp`):
/// asking by connecting would start a socket-activated daemon.
pub fn listening(port: u16) -> bool {
    let want = format!("0100007F:{port:04X}");
    std::fs::read_to_string("/proc/net/tcp").is_ok_and(|t| {
        t.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && f[1] == want && f[3] == "0A"
        })
    })
}

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0")
}

/// Runs a command and returns its first line of output (stdout, else
/// stderr), for version lines.
pub fn first_line(program: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(program).args(args).output().ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .next()
        .map(|l| l.trim().to_owned())
}

/// The path of `program` on PATH.
pub fn which(program: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(program))
            .find(|p| is_executable(p))
    })
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    p.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}
