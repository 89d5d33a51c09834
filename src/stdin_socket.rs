//! Whether `qrexec-client-vm(1)` knows `--use-stdin-socket`, asked once per
//! installed program rather than at every start.
//!
//! Its `-h` usage lists the options it knows (qrexec 4.2.19 and later; older
//! ones refuse `-h` with a usage that lacks the flag). Asking costs a fork and
//! an exec before READY=1, so it delays the first connection each time socket
//! activation or `--exit-idle-time` starts the service again. The answer is
//! therefore kept in the unit's runtime directory (`RuntimeDirectory=`,
//! systemd.exec(5), which sets `$RUNTIME_DIRECTORY`), keyed by the program's
//! `stat(2)`: device, inode, size, and mtime and ctime to the nanosecond. An
//! upgrade replaces or rewrites the file, which changes the key, and the next
//! start asks again. The file holds one line:
//!
//! ```text
//! v1 DEV INO SIZE MTIME.NS CTIME.NS yes|no
//! ```

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use log::debug;

use crate::qrexec::STDIN_SOCKET_FLAG;

/// The cache's name in the runtime directory.
pub const CACHE_FILE: &str = "stdin-socket";
/// A valid line is some 80 bytes; a larger file is not ours.
const MAX_LEN: u64 = 256;

/// A time stamp of `stat(2)`: seconds and nanoseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub secs: i64,
    pub nanos: i64,
}

/// What identifies one installed qrexec-client-vm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Key {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime: Stamp,
    pub ctime: Stamp,
}

impl Key {
    pub fn from_metadata(m: &Metadata) -> Self {
        Key {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: Stamp {
                secs: m.mtime(),
                nanos: m.mtime_nsec(),
            },
            ctime: Stamp {
                secs: m.ctime(),
                nanos: m.ctime_nsec(),
            },
        }
    }

    /// `stat(2)` of `program`, following symlinks (as `execve(2)` does).
    pub fn of(program: &Path) -> io::Result<Self> {
        fs::metadata(program).map(|m| Key::from_metadata(&m))
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:09}", self.secs, self.nanos)
    }
}

/// The cache's content for `key` and its answer.
pub fn format(key: &Key, supported: bool) -> String {
    format!(
        "v1 {} {} {} {} {} {}\n",
        key.dev,
        key.ino,
        key.size,
        key.mtime,
        key.ctime,
        if supported { "yes" } else { "no" }
    )
}

/// The key and answer of a cache's content; `None` unless it is exactly
/// what [`format`] writes (one spelling of each number, one line).
pub fn parse(text: &str) -> Option<(Key, bool)> {
    fn stamp(word: &str) -> Option<Stamp> {
        let (secs, nanos) = word.split_once('.')?;
        let nanos: i64 = nanos.parse().ok()?;
        (0..1_000_000_000).contains(&nanos).then_some(Stamp {
            secs: secs.parse().ok()?,
            nanos,
        })
    }
    let words: Vec<&str> = text.strip_suffix('\n')?.split(' ').collect();
    let ["v1", dev, ino, size, mtime, ctime, answer] = words.as_slice() else {
        return None;
    };
    let key = Key {
        dev: dev.parse().ok()?,
        ino: ino.parse().ok()?,
        size: size.parse().ok()?,
        mtime: stamp(mtime)?,
        ctime: stamp(ctime)?,
    };
    let supported = match *answer {
        "yes" => true,
        "no" => false,
        _ => return None,
    };
    // Anything another spelling would let through (`+5`, `007`, short
    // nanoseconds) is refused: what we did not write, we do not trust.
    (format(&key, supported) == text).then_some((key, supported))
}

/// Why the cache gave no answer.
#[derive(Debug)]
pub enum Miss {
    Missing,
    Unreadable(io::Error),
    Malformed,
    /// An answer about another program, or an earlier version of this one.
    Stale,
}

impl fmt::Display for Miss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Miss::Missing => f.write_str("no cache yet"),
            Miss::Unreadable(e) => write!(f, "cache unreadable: {e}"),
            Miss::Malformed => f.write_str("cache malformed"),
            Miss::Stale => f.write_str("cache stale"),
        }
    }
}

/// The answer a cache's content holds for the program `key` identifies.
pub fn lookup(text: &str, key: &Key) -> Result<bool, Miss> {
    match parse(text) {
        None => Err(Miss::Malformed),
        Some((cached, supported)) if cached == *key => Ok(supported),
        Some(_) => Err(Miss::Stale),
    }
}

/// The cache's directory from `$RUNTIME_DIRECTORY`: systemd sets one path per
/// `RuntimeDirectory=` entry, `:`-separated, and ours comes first. None when
/// unset, empty or relative (not systemd's).
pub fn cache_dir(runtime_directory: Option<&OsStr>) -> Option<PathBuf> {
    let first = runtime_directory?.as_bytes().split(|&b| b == b':').next()?;
    let dir = Path::new(OsStr::from_bytes(first));
    dir.is_absolute().then(|| dir.to_owned())
}

/// Runs `program -h` and looks for the flag in what it prints. `Err` when it
/// cannot be run.
pub fn probe(program: &Path) -> io::Result<bool> {
    let out = Command::new(program)
        .arg("-h")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()?;
    let mentions = |text: &[u8]| {
        text.windows(STDIN_SOCKET_FLAG.len())
            .any(|w| w == STDIN_SOCKET_FLAG.as_bytes())
    };
    Ok(mentions(&out.stdout) || mentions(&out.stderr))
}

/// Whether `program` supports the flag: from the cache in `cache_dir` when
/// it holds an answer for this very file, else by [`probe`], whose answer
/// then replaces the cache. `Err` only when the probe cannot run; a cache
/// that cannot be read or written costs a probe, nothing more.
pub fn detect(program: &Path, cache_dir: Option<&Path>) -> io::Result<bool> {
    let shown = program.display();
    let words = |supported: bool| {
        if supported {
            "supported"
        } else {
            "not supported"
        }
    };
    let uncached = |why: &str| -> io::Result<bool> {
        let supported = probe(program)?;
        debug!(
            "asked {shown} -h ({why}): {STDIN_SOCKET_FLAG} {}",
            words(supported)
        );
        Ok(supported)
    };
    let Some(dir) = cache_dir else {
        return uncached("no $RUNTIME_DIRECTORY to cache it in");
    };
    // A bare name is looked up in $PATH by exec, but would be stat'ed in the
    // working directory: the key would describe another file.
    if !program.as_os_str().as_bytes().contains(&b'/') {
        return uncached("a name looked up in $PATH, not cached");
    }
    let key = match Key::of(program) {
        Ok(key) => key,
        Err(e) => return uncached(&format!("cannot stat it: {e}")),
    };
    let file = dir.join(CACHE_FILE);
    let miss = match read(&file) {
        Ok(text) => match lookup(&text, &key) {
            Ok(supported) => {
                debug!(
                    "{shown}: {STDIN_SOCKET_FLAG} {} (cached in {})",
                    words(supported),
                    file.display()
                );
                return Ok(supported);
            }
            Err(miss) => miss,
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => Miss::Missing,
        Err(e) => Miss::Unreadable(e),
    };
    let supported = probe(program)?;
    // Replaced while it answered: the answer may be the old program's.
    let kept = match Key::of(program) {
        Ok(after) if after == key => match write_atomic(dir, &format(&key, supported)) {
            Ok(()) => format!("cached in {}", file.display()),
            Err(e) => format!("cannot cache it in {}: {e}, ignoring", file.display()),
        },
        _ => "not cached: the file changed meanwhile".to_owned(),
    };
    debug!(
        "asked {shown} -h ({miss}): {STDIN_SOCKET_FLAG} {}; {kept}",
        words(supported)
    );
    Ok(supported)
}

/// The cache's content. Not through a symlink, and without waiting on a FIFO
/// someone left in its place: a bad file costs a probe, never the start.
fn read(file: &Path) -> io::Result<String> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(file)?;
    let mut text = String::new();
    opened.take(MAX_LEN).read_to_string(&mut text)?;
    Ok(text)
}

/// Replaces the cache whole: a starting unit that reads it meanwhile sees
/// the old content or the new, never part of one. The temporary name holds
/// our pid, so units starting together do not write into each other's.
fn write_atomic(dir: &Path, text: &str) -> io::Result<()> {
    let temporary = dir.join(format!(".{CACHE_FILE}.{}", std::process::id()));
    // Left by an earlier process of the same pid that died midway.
    let _ = fs::remove_file(&temporary);
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut f| f.write_all(text.as_bytes()))
        .and_then(|()| fs::rename(&temporary, dir.join(CACHE_FILE)));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: Key = Key {
        dev: 64769,
        ino: 1_234_567,
        size: 48_880,
        mtime: Stamp {
            secs: 1_700_000_000,
            nanos: 5,
        },
        ctime: Stamp {
            secs: 1_700_000_001,
            nanos: 999_999_999,
        },
    };

    #[test]
    fn one_line_round_trips() {
        let text = format(&KEY, true);
        assert_eq!(
            text,
            "v1 64769 1234567 48880 1700000000.000000005 1700000001.999999999 yes\n"
        );
        assert_eq!(parse(&text), Some((KEY, true)));
        assert_eq!(parse(&format(&KEY, false)), Some((KEY, false)));
        // Before 1970: seconds negative, nanoseconds still counted upwards.
        let old = Key {
            mtime: Stamp {
                secs: -2,
                nanos: 500_000_000,
            },
            ..KEY
        };
        assert_eq!(parse(&format(&old, false)), Some((old, false)));
    }

    #[test]
    fn refuses_anything_else() {
        let good = format(&KEY, true);
        for bad in [
            String::new(),
            "\n".into(),
            good.trim_end().into(),
            good.replace("v1", "v2"),
            good.replace("yes", "maybe"),
            good.replace("yes", "YES"),
            good.replace(' ', "  "),
            good.replace("64769", "+64769"),
            good.replace("64769", "064769"),
            good.replace("64769", "-1"),
            good.replace(".000000005", ".5"),
            good.replace(".000000005", ""),
            good.replace(".999999999", ".1000000000"),
            format!("{good}{good}"),
            format!("{} extra\n", good.trim_end()),
            good.replace("48880 ", ""),
        ] {
            assert_eq!(parse(&bad), None, "{bad:?}");
            assert!(
                matches!(lookup(&bad, &KEY), Err(Miss::Malformed)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn answers_only_for_the_same_file() {
        assert!(lookup(&format(&KEY, true), &KEY).unwrap());
        assert!(!lookup(&format(&KEY, false), &KEY).unwrap());
        let changed = [
            Key { dev: 1, ..KEY },
            Key { ino: 1, ..KEY },
            Key { size: 1, ..KEY },
            Key {
                mtime: Stamp {
                    nanos: 6,
                    ..KEY.mtime
                },
                ..KEY
            },
            Key {
                ctime: Stamp {
                    secs: 1_700_000_002,
                    ..KEY.ctime
                },
                ..KEY
            },
        ];
        for other in changed {
            assert!(
                matches!(lookup(&format(&other, true), &KEY), Err(Miss::Stale)),
                "{other:?}"
            );
        }
    }

    #[test]
    fn runtime_directory_first_of_the_list() {
        let dir = |v: &str| cache_dir(Some(OsStr::new(v)));
        assert_eq!(
            dir("/run/user/1000/qrexec-connect"),
            Some("/run/user/1000/qrexec-connect".into())
        );
        assert_eq!(dir("/run/a:/run/b"), Some("/run/a".into()));
        assert_eq!(cache_dir(None), None);
        assert_eq!(dir(""), None);
        assert_eq!(dir(":/run/b"), None);
        assert_eq!(dir("relative/dir"), None);
    }
}
