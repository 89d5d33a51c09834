//! `make install` into a temporary DESTDIR: every file, mode and link
//! target, for each PREFIX layout, and `make uninstall` removing them.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

const BINARY: &str = env!("CARGO_BIN_EXE_qrexec-connect");
const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("qrc-install-{}-{n}", std::process::id()));
        fs::create_dir(&path).unwrap();
        Scratch(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn make(destdir: &Path, args: &[&str]) -> Output {
    let out = Command::new("make")
        .arg("-C")
        .arg(REPO)
        .arg("--no-print-directory")
        .arg(format!("DESTDIR={}", destdir.display()))
        .arg(format!("BINARY={BINARY}"))
        .args(args)
        .output()
        .expect("run make");
    assert!(
        out.status.success(),
        "make {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Every entry under `root`: path -> `MODE` for files and directories,
/// `-> TARGET` for symlinks.
fn tree(root: &Path) -> BTreeMap<String, String> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let meta = fs::symlink_metadata(&path).unwrap();
            let name = path.strip_prefix(root).unwrap().display().to_string();
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&path).unwrap();
                out.insert(name, format!("-> {}", target.display()));
            } else {
                out.insert(
                    name.clone(),
                    format!("{:o}", meta.permissions().mode() & 0o7777),
                );
                if meta.is_dir() {
                    walk(root, &path, out);
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

/// The installed layout for a prefix (`usr/local` or `usr`) and its qrexec
/// service directory.
fn layout(prefix: &str, qrexec_dir: &str, client: bool, service: bool) -> BTreeMap<String, String> {
    let bindir = format!("/{prefix}/bin");
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    let mut dir = |path: &str| {
        let mut p = String::new();
        for part in path.split('/') {
            p = if p.is_empty() {
                part.to_owned()
            } else {
                format!("{p}/{part}")
            };
            expected.insert(p.clone(), "755".into());
        }
    };
    dir(&format!("{prefix}/bin"));
    if client {
        dir(&format!(
            "{prefix}/lib/systemd/user/qrexec-connect-.socket.d"
        ));
        for t in ["tcp", "tcp-bind", "unix"] {
            dir(&format!(
                "{prefix}/lib/systemd/user/qrexec-connect-{t}@.socket.d"
            ));
        }
    }
    if client {
        dir("etc/ssh/ssh_config.d");
    }
    if service {
        dir(qrexec_dir);
    }
    expected.insert(format!("{prefix}/bin/qrexec-connect"), "755".into());
    if client {
        expected.insert(
            "etc/ssh/ssh_config.d/30-qrexec-connect.conf".into(),
            "644".into(),
        );
        for name in [
            "qrexec-connect-ssh-proxy",
            "qrexec-connect-tcp",
            "qrexec-connect-tcp-bind",
            "qrexec-connect-unix",
        ] {
            expected.insert(format!("{prefix}/bin/{name}"), "-> qrexec-connect".into());
        }
        let units = format!("{prefix}/lib/systemd/user");
        for file in [
            "qrexec-connect.service",
            "qrexec-connect-.socket.d/service.conf",
            "qrexec-connect-tcp@.socket",
            "qrexec-connect-tcp@.service",
            "qrexec-connect-tcp@.socket.d/service.conf",
            "qrexec-connect-tcp-bind@.socket",
            "qrexec-connect-tcp-bind@.service",
            "qrexec-connect-tcp-bind@.socket.d/service.conf",
            "qrexec-connect-unix@.socket",
            "qrexec-connect-unix@.service",
            "qrexec-connect-unix@.socket.d/service.conf",
        ] {
            expected.insert(format!("{units}/{file}"), "644".into());
        }
    }
    if service {
        for name in [
            "qubes.ConnectUnix",
            "qubes.ConnectTCPBind",
            "qubes.ConnectNFS",
        ] {
            expected.insert(
                format!("{qrexec_dir}/{name}"),
                format!("-> {bindir}/qrexec-connect"),
            );
        }
    }
    expected
}

fn assert_layout(root: &Path, expected: &BTreeMap<String, String>) {
    let actual = tree(root);
    let show = |m: &BTreeMap<String, String>| {
        m.iter()
            .map(|(k, v)| format!("  {v:>5} {k}\n"))
            .collect::<String>()
    };
    assert_eq!(
        &actual,
        expected,
        "installed:\n{}expected:\n{}",
        show(&actual),
        show(expected)
    );
}

/// Each unit as installed is the repository's with @BINDIR@ filled in.
fn assert_units(root: &Path, prefix: &str) {
    let units = root.join(prefix).join("lib/systemd/user");
    let mut exec_starts = Vec::new();
    for (name, mode) in tree(&units) {
        if mode != "644" {
            continue;
        }
        let installed = fs::read_to_string(units.join(&name)).unwrap();
        let source = fs::read_to_string(Path::new(REPO).join("units").join(&name)).unwrap();
        assert_eq!(
            installed,
            source.replace("@BINDIR@", &format!("/{prefix}/bin")),
            "{name}"
        );
        assert!(!installed.contains("@BINDIR@"), "{name}");
        exec_starts.extend(
            installed
                .lines()
                .filter(|l| l.starts_with("ExecStart="))
                .map(|l| format!("{name}: {l}")),
        );
    }
    let p = format!("/{prefix}/bin");
    assert_eq!(
        exec_starts,
        [
            format!("qrexec-connect-tcp-bind@.service: ExecStart={p}/qrexec-connect-tcp-bind %i"),
            format!("qrexec-connect-tcp@.service: ExecStart={p}/qrexec-connect-tcp %i"),
            format!("qrexec-connect-unix@.service: ExecStart={p}/qrexec-connect-unix %i"),
            format!("qrexec-connect.service: ExecStart={p}/qrexec-connect"),
        ]
    );
}

/// Nothing but (empty) directories left.
fn assert_only_dirs(root: &Path) {
    let left: Vec<String> = tree(root)
        .into_iter()
        .filter(|(_, mode)| mode != "755")
        .map(|(name, mode)| format!("{mode} {name}"))
        .collect();
    assert!(left.is_empty(), "left after uninstall: {left:?}");
}

#[test]
fn install_under_usr_local() {
    let dest = Scratch::new();
    make(&dest.0, &["install"]);
    assert_layout(
        &dest.0,
        &layout("usr/local", "usr/local/etc/qubes-rpc", true, true),
    );
    assert_units(&dest.0, "usr/local");
    assert_eq!(
        fs::read(dest.0.join("usr/local/bin/qrexec-connect")).unwrap(),
        fs::read(BINARY).unwrap()
    );

    // The links give the applets their names.
    let bin = dest.0.join("usr/local/bin");
    let version = Command::new(bin.join("qrexec-connect"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("qrexec-connect {}", env!("CARGO_PKG_VERSION"))
    );
    let help = Command::new(bin.join("qrexec-connect-tcp-bind"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("qrexec-connect-tcp-bind"),
        "{help:?}"
    );

    make(&dest.0, &["uninstall"]);
    assert_only_dirs(&dest.0);
}

#[test]
fn install_under_usr_puts_services_in_etc() {
    let dest = Scratch::new();
    make(&dest.0, &["install", "PREFIX=/usr"]);
    assert_layout(&dest.0, &layout("usr", "etc/qubes-rpc", true, true));
    assert_units(&dest.0, "usr");
    make(&dest.0, &["uninstall", "PREFIX=/usr"]);
    assert_only_dirs(&dest.0);
}

#[test]
fn install_one_side() {
    let client = Scratch::new();
    make(&client.0, &["install-client"]);
    assert_layout(
        &client.0,
        &layout("usr/local", "usr/local/etc/qubes-rpc", true, false),
    );

    let service = Scratch::new();
    make(&service.0, &["install-service"]);
    assert_layout(
        &service.0,
        &layout("usr/local", "usr/local/etc/qubes-rpc", false, true),
    );

    // Seed 001's README installs qubes.ConnectNFS with this target.
    let nfs = Scratch::new();
    make(&nfs.0, &["install-connectnfs"]);
    assert_layout(
        &nfs.0,
        &layout("usr/local", "usr/local/etc/qubes-rpc", false, true),
    );
}

#[test]
fn uninstall_keeps_what_is_not_ours() {
    let dest = Scratch::new();
    make(&dest.0, &["install"]);
    let units = dest.0.join("usr/local/lib/systemd/user");
    // A user's own drop-in beside ours, and another program's unit.
    fs::write(
        units.join("qrexec-connect-.socket.d/local.conf"),
        "[Socket]\n",
    )
    .unwrap();
    fs::write(units.join("other.service"), "[Service]\n").unwrap();
    make(&dest.0, &["uninstall"]);
    let left: Vec<String> = tree(&dest.0)
        .into_iter()
        .filter(|(_, mode)| mode != "755")
        .map(|(name, _)| name)
        .collect();
    assert_eq!(
        left,
        [
            "usr/local/lib/systemd/user/other.service",
            "usr/local/lib/systemd/user/qrexec-connect-.socket.d/local.conf",
        ]
    );
}

#[test]
fn install_without_a_built_binary_fails_and_says_why() {
    let dest = Scratch::new();
    let out = Command::new("make")
        .arg("-C")
        .arg(REPO)
        .arg(format!("DESTDIR={}", dest.0.display()))
        .arg("BINARY=/nonexistent/qrexec-connect")
        .arg("install")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run make first"),
        "{out:?}"
    );
    assert!(tree(&dest.0).is_empty());
}
