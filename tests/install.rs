//! `make install` into a temporary DESTDIR: every file, mode and link
//! target, for each PREFIX layout, and `make uninstall` removing them.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::{TempDir, binary, make};

const REPO: &str = env!("CARGO_MANIFEST_DIR");

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
    // The man pages go with the binary, whichever side (man/).
    dir(&format!("{prefix}/share/man/man1"));
    dir(&format!("{prefix}/share/man/man8"));
    if client {
        dir(&format!(
            "{prefix}/lib/systemd/user/qrexec-connect-.socket.d"
        ));
        dir(&format!(
            "{prefix}/lib/systemd/user/qrexec-connect-socks.socket.d"
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
    for page in ["man1/qrexec-connect.1", "man8/qrexec-connect-service.8"] {
        expected.insert(format!("{prefix}/share/man/{page}"), "644".into());
    }
    if client {
        expected.insert(
            "etc/ssh/ssh_config.d/30-qrexec-connect.conf".into(),
            "644".into(),
        );
        for name in [
            "qrexec-connect-socks",
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
            "qrexec-connect-socks.socket",
            "qrexec-connect-socks.service",
            "qrexec-connect-socks.socket.d/service.conf",
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
            format!(
                "qrexec-connect-socks.service: ExecStart={p}/qrexec-connect-socks --exit-idle-time 60"
            ),
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
    let dest = TempDir::new("install");
    make(dest.path(), &["install"]);
    assert_layout(
        dest.path(),
        &layout("usr/local", "usr/local/etc/qubes-rpc", true, true),
    );
    assert_units(dest.path(), "usr/local");
    assert_eq!(
        fs::read(dest.path().join("usr/local/bin/qrexec-connect")).unwrap(),
        fs::read(binary()).unwrap()
    );

    // The links give the applets their names.
    let bin = dest.path().join("usr/local/bin");
    let version = Command::new(bin.join("qrexec-connect"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(version.status.success());
    // The version, then the commit when built from git (build.rs).
    let version = String::from_utf8_lossy(&version.stdout);
    let expected = format!("qrexec-connect {}", env!("CARGO_PKG_VERSION"));
    assert!(
        version.trim() == expected || version.starts_with(&format!("{expected} (")),
        "{version}"
    );
    let help = Command::new(bin.join("qrexec-connect-tcp-bind"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&help.stdout).contains("qrexec-connect-tcp-bind"),
        "{help:?}"
    );

    make(dest.path(), &["uninstall"]);
    assert_only_dirs(dest.path());
}

#[test]
fn install_under_usr_puts_services_in_etc() {
    let dest = TempDir::new("install");
    make(dest.path(), &["install", "PREFIX=/usr"]);
    assert_layout(dest.path(), &layout("usr", "etc/qubes-rpc", true, true));
    assert_units(dest.path(), "usr");
    make(dest.path(), &["uninstall", "PREFIX=/usr"]);
    assert_only_dirs(dest.path());
}

#[test]
fn install_one_side() {
    let client = TempDir::new("install");
    make(client.path(), &["install-client"]);
    assert_layout(
        client.path(),
        &layout("usr/local", "usr/local/etc/qubes-rpc", true, false),
    );

    let service = TempDir::new("install");
    make(service.path(), &["install-service"]);
    assert_layout(
        service.path(),
        &layout("usr/local", "usr/local/etc/qubes-rpc", false, true),
    );

    // Seed 001's README installs qubes.ConnectNFS with this target.
    let nfs = TempDir::new("install");
    make(nfs.path(), &["install-connectnfs"]);
    assert_layout(
        nfs.path(),
        &layout("usr/local", "usr/local/etc/qubes-rpc", false, true),
    );
}

#[test]
fn uninstall_keeps_what_is_not_ours() {
    let dest = TempDir::new("install");
    make(dest.path(), &["install"]);
    let units = dest.path().join("usr/local/lib/systemd/user");
    // A user's own drop-in beside ours, and another program's unit.
    fs::write(
        units.join("qrexec-connect-.socket.d/local.conf"),
        "[Socket]\n",
    )
    .unwrap();
    fs::write(units.join("other.service"), "[Service]\n").unwrap();
    make(dest.path(), &["uninstall"]);
    let left: Vec<String> = tree(dest.path())
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
    let dest = TempDir::new("install");
    let out = Command::new("make")
        .arg("-C")
        .arg(REPO)
        .arg(format!("DESTDIR={}", dest.path().display()))
        .arg("BINARY=/nonexistent/qrexec-connect")
        .arg("install")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("run make first"),
        "{out:?}"
    );
    assert!(tree(dest.path()).is_empty());
}
