//! The drop-ins src/dropin/search.rs finds for a unit are the ones a real
//! systemd user manager applies (`systemctl --user show -p DropInPaths`),
//! in its order: per directory of the search path the instance's, the
//! template's and the dash prefixes' directories, then the top-level
//! `socket.d/`; files by name, an earlier directory masking a later one.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::user_manager::UserManager;
use qrexec_connect::dropin::search::{self, UserEnv};

const UNIT: &str = "qrc-probe-x@1.socket";

/// Writes a file inside the manager's namespace (as root, readable by all).
fn write_inside(m: &UserManager, inside: &Path, content: &str) {
    let outside = m.outside(inside);
    fs::create_dir_all(outside.parent().unwrap()).unwrap();
    fs::write(&outside, content).unwrap();
}

#[test]
fn drop_ins_as_the_user_manager_applies_them() {
    let Some(m) = UserManager::start() else {
        return;
    };
    let conf = |name: &str| format!("[Socket]\n# {name}\n");
    let home = m.home().to_owned();
    let runtime = m.runtime_dir();
    m.write_user_unit(
        "qrc-probe-x@.socket",
        "[Socket]\nListenStream=@qrc-probe-%i\n",
    );
    for relative in [
        "qrc-probe-x@1.socket.d/b.conf",
        "qrc-probe-x@1.socket.d/.hidden.conf",
        "qrc-probe-x@1.socket.d/notes.txt",
        "qrc-probe-.socket.d/a.conf",
        "qrc-probe-@1.socket.d/d.conf",
        "socket.d/zz-top.conf",
    ] {
        m.write_user_unit(relative, &conf(relative));
    }
    let data = home.join(".local/share/systemd/user");
    for relative in [
        "qrc-probe-x@.socket.d/b.conf",
        "qrc-probe-x@.socket.d/c.conf",
    ] {
        m.write_owned(&data.join(relative), &conf(relative));
    }
    // Later in the search path than ~/.config: masked by the prefix
    // directory's a.conf there, though the instance's directory is more
    // specific.
    write_inside(
        &m,
        &runtime.join("systemd/user/qrc-probe-x@1.socket.d/a.conf"),
        &conf("runtime a"),
    );
    m.systemctl_ok(&["daemon-reload"]);
    let theirs = m.property(UNIT, "DropInPaths");
    let fragment = m.property(UNIT, "FragmentPath");

    let env = UserEnv {
        home: Some(home.display().to_string()),
        runtime_dir: Some(runtime.display().to_string()),
        ..UserEnv::default()
    };
    let path = search::user_unit_path(&env);
    let dirs = search::dropin_dirs(&path, UNIT);
    let outside: Vec<PathBuf> = dirs.iter().map(|d| m.outside(d)).collect();
    let listing: Vec<(PathBuf, Vec<String>)> = search::list_conf_files(&outside)
        .unwrap()
        .into_iter()
        .map(|(dir, mut names)| {
            names.sort();
            let inside = dirs[outside.iter().position(|o| *o == dir).unwrap()].clone();
            (inside, names)
        })
        .collect();
    let ours: Vec<String> = search::select(&listing)
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    assert_eq!(ours.join(" "), theirs, "search path: {path:?}");
    assert_eq!(ours.len(), 5, "{ours:?}");

    let outside_path: Vec<PathBuf> = path.iter().map(|d| m.outside(d)).collect();
    let found = search::find_fragment(&outside_path, UNIT).unwrap();
    let prefix = m.outside("/");
    assert_eq!(
        Path::new("/").join(found.strip_prefix(&prefix).unwrap()),
        Path::new(&fragment)
    );
}
