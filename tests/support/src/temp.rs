//! Temporary directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Where temporary directories go: `$TMPDIR` when set, else /dev/shm when
/// there is one. Every call the stand-in serves writes a record of a few
/// files; on a disk file system mounted with `discard`, a replaced file
/// costs milliseconds, on tmpfs microseconds.
pub fn scratch_base() -> PathBuf {
    let shm = Path::new("/dev/shm");
    if std::env::var_os("TMPDIR").is_none()
        && fs::metadata(shm).is_ok_and(|m| m.is_dir() && !m.permissions().readonly())
    {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    }
}

/// A directory removed with everything in it when dropped.
pub struct TempDir(PathBuf);

impl TempDir {
    /// A new, empty directory named after `what`, this process and a counter.
    pub fn new(what: &str) -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::SeqCst);
        let path = scratch_base().join(format!("qc-{what}-{}-{n}", std::process::id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).expect("create a temporary directory");
        TempDir(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
