//! What each run leaves for the tests, readable with `std::fs` alone.
//!
//! ```text
//! $QREXEC_STANDIN_ROOT/calls/PID[.N]/
//!   argv        argv, each word followed by NUL
//!   environ     the environment, each KEY=VALUE followed by NUL
//!   fds         the fds open at start: "N -> LINK" lines (only 0, 1, 2 expected)
//!   target_raw  the target as given (bytes), call_raw the call as given
//!   info        KEY=VALUE lines: what the run saw and decided
//!   status      written last: "exit N" or "signal N"
//! $QREXEC_STANDIN_ROOT/concurrency
//!   "RUNNING MAX STARTED": calls running now, most at once, all started
//!   (updated under a lock of concurrency.lock, replaced whole)
//! ```
//!
//! `info` and `status` are written whole and renamed into place, so a reader
//! never sees half of one; `status` existing means the run is over and
//! every other file complete. `info` of a running call is as of its last
//! milestone (names parsed, service found).

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::sys;

/// What the process was given, looked at before it opens anything.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// `(fd, link)` of every fd open at start.
    pub fds: Vec<(i32, String)>,
    pub stdin: &'static str,
    pub stdio_same_socket: bool,
    pub stdin_nonblocking: bool,
    pub sig_blocked: String,
    pub sig_ignored: String,
}

fn kind(mode: u32) -> &'static str {
    match mode {
        libc::S_IFSOCK => "socket",
        libc::S_IFIFO => "pipe",
        libc::S_IFREG => "file",
        libc::S_IFCHR => "chardev",
        libc::S_IFDIR => "directory",
        _ => "other",
    }
}

impl Snapshot {
    pub fn take() -> Self {
        let pid = std::process::id();
        let own_dir = format!("/proc/{pid}/fd");
        let mut fds: Vec<(i32, String)> = fs::read_dir("/proc/self/fd")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| {
                        let fd = e.file_name().to_str()?.parse().ok()?;
                        let link = fs::read_link(e.path()).ok()?;
                        Some((fd, link.to_string_lossy().into_owned()))
                    })
                    // The directory being read is itself an open fd.
                    .filter(|(_, link)| *link != own_dir)
                    .collect()
            })
            .unwrap_or_default();
        fds.sort();
        let stat0 = sys::fstat(0);
        let stat1 = sys::fstat(1);
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_default()
        };
        Snapshot {
            fds,
            stdin: stat0.as_ref().map_or("closed", |s| kind(s.0)),
            stdio_same_socket: match (&stat0, &stat1) {
                (Ok(a), Ok(b)) => a.0 == libc::S_IFSOCK && a == b,
                _ => false,
            },
            stdin_nonblocking: sys::is_nonblocking(0).unwrap_or(false),
            sig_blocked: field("SigBlk:"),
            sig_ignored: field("SigIgn:"),
        }
    }
}

/// One run's record directory.
pub struct Record {
    dir: PathBuf,
    info: Vec<(String, String)>,
}

fn yes(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

impl Record {
    /// Creates `calls/PID` (or `PID.N` if a recycled pid left one).
    pub fn create(root: &Path) -> io::Result<Self> {
        let calls = root.join("calls");
        fs::create_dir_all(&calls)?;
        let pid = std::process::id();
        for n in 0.. {
            let name = if n == 0 {
                pid.to_string()
            } else {
                format!("{pid}.{n}")
            };
            match fs::create_dir(calls.join(&name)) {
                Ok(()) => {
                    return Ok(Record {
                        dir: calls.join(name),
                        info: Vec::new(),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        unreachable!()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes a file that no reader looks at before `status` exists.
    fn write(&self, name: &str, bytes: &[u8]) {
        if let Err(e) = fs::write(self.dir.join(name), bytes) {
            say!("qrexec-client-vm (stand-in): cannot record {name}: {e}");
        }
    }

    /// Records argv, the environment and what the snapshot saw.
    pub fn start(&mut self, args: &[Vec<u8>], snapshot: &Snapshot) {
        let nul_joined = |items: &mut dyn Iterator<Item = Vec<u8>>| {
            items.fold(Vec::new(), |mut all, mut item| {
                item.push(0);
                all.extend(item);
                all
            })
        };
        self.write("argv", &nul_joined(&mut args.iter().cloned()));
        self.write(
            "environ",
            &nul_joined(&mut std::env::vars_os().map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend(v.as_bytes());
                kv
            })),
        );
        let fds: String = snapshot
            .fds
            .iter()
            .map(|(fd, link)| format!("{fd} -> {link}\n"))
            .collect();
        self.write("fds", fds.as_bytes());
        self.info = vec![
            ("pid".into(), std::process::id().to_string()),
            ("stdin".into(), snapshot.stdin.into()),
            ("stdio_same_socket".into(), yes(snapshot.stdio_same_socket)),
            ("stdin_nonblocking".into(), yes(snapshot.stdin_nonblocking)),
            ("sig_blocked".into(), snapshot.sig_blocked.clone()),
            ("sig_ignored".into(), snapshot.sig_ignored.clone()),
        ];
        self.flush();
    }

    pub fn raw(&self, name: &str, bytes: &[u8]) {
        self.write(name, bytes);
    }

    /// Adds (or replaces) one `info` line, written at the next [`flush`].
    /// Values never hold a newline.
    ///
    /// [`flush`]: Record::flush
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into().replace('\n', "\\n");
        match self.info.iter_mut().find(|(k, _)| k == key) {
            Some(entry) => entry.1 = value,
            None => self.info.push((key.into(), value)),
        }
    }

    pub fn set_flag(&mut self, key: &str, value: bool) {
        self.set(key, yes(value));
    }

    /// Replaces `info` whole. Only at a few points of a run: each
    /// replacement costs a rename, slow on some file systems, and a test
    /// makes a thousand calls.
    pub fn flush(&self) {
        let text: String = self
            .info
            .iter()
            .map(|(k, v)| format!("{k}={v}\n"))
            .collect();
        write_atomic(&self.dir, "info", text.as_bytes());
    }
}

/// Writes `dir/name` whole: a temporary file renamed into place.
pub fn write_atomic(dir: &Path, name: &str, bytes: &[u8]) {
    let tmp = dir.join(format!(".{name}.tmp"));
    let result = fs::write(&tmp, bytes).and_then(|()| fs::rename(&tmp, dir.join(name)));
    if let Err(e) = result {
        say!("qrexec-client-vm (stand-in): cannot record {name}: {e}");
    }
}

/// The `concurrency` counter. Writers take an exclusive `flock` of
/// `concurrency.lock`, then replace `concurrency` whole, so that readers
/// need no lock.
pub struct Concurrency {
    root: PathBuf,
}

impl Concurrency {
    pub fn new(root: &Path) -> Self {
        Concurrency {
            root: root.to_owned(),
        }
    }

    fn update(&self, delta: i64) -> io::Result<()> {
        let lock: File = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.root.join("concurrency.lock"))?;
        sys::lock_exclusive(lock.as_fd())?;
        let text = fs::read_to_string(self.root.join("concurrency")).unwrap_or_default();
        let mut numbers = text
            .split_whitespace()
            .map(|n| n.parse::<i64>().unwrap_or(0));
        let running = numbers.next().unwrap_or(0) + delta;
        let max = numbers.next().unwrap_or(0).max(running);
        let started = numbers.next().unwrap_or(0) + delta.max(0);
        let tmp = self
            .root
            .join(format!(".concurrency.{}", std::process::id()));
        fs::write(&tmp, format!("{running} {max} {started}\n"))?;
        fs::rename(&tmp, self.root.join("concurrency"))
        // Closing `lock` releases the lock.
    }

    pub fn enter(&self) {
        if let Err(e) = self.update(1) {
            say!("qrexec-client-vm (stand-in): cannot count this call: {e}");
        }
    }

    pub fn leave(&self) {
        if let Err(e) = self.update(-1) {
            say!("qrexec-client-vm (stand-in): cannot count this call's end: {e}");
        }
    }
}
