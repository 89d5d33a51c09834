//! Gives `qrexec-connect --version` the commit it was built from: the
//! version from Cargo.toml, then the short commit in parentheses, e.g.
//! `0.1.0 (abc1234)`, in the `QREXEC_CONNECT_VERSION` the binary reads with
//! `env!`.
//!
//! The commit comes from `$QREXEC_CONNECT_COMMIT` when set (a packager that
//! builds from a tarball may pass it), else from git when this directory is
//! the top of a git work tree. A build from a tarball without either prints
//! the version alone.

use std::path::Path;
use std::process::Command;

fn main() {
    let version = env!("CARGO_PKG_VERSION");
    println!("cargo:rerun-if-env-changed=QREXEC_CONNECT_COMMIT");
    let commit = std::env::var("QREXEC_CONNECT_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit);
    match commit {
        Some(commit) => println!("cargo:rustc-env=QREXEC_CONNECT_VERSION={version} ({commit})"),
        None => println!("cargo:rustc-env=QREXEC_CONNECT_VERSION={version}"),
    }
}

/// `git rev-parse --short HEAD` of this package's own work tree, and the
/// files whose change means another commit (so that cargo reruns us).
fn git_commit() -> Option<String> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").ok()?;
    // A tarball unpacked inside some other repository is not that commit.
    let top = git(&["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != Path::new(&manifest_dir).canonicalize().ok()? {
        return None;
    }
    let mut watched = vec!["HEAD".to_owned(), "packed-refs".to_owned()];
    watched.extend(git(&["symbolic-ref", "-q", "HEAD"]));
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name]) {
            if Path::new(&path).exists() {
                println!("cargo:rerun-if-changed={path}");
            }
        }
    }
    git(&["rev-parse", "--short=7", "HEAD"])
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_owned())
}
