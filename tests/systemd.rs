//! qrexec-connect under a real systemd user manager: the installed units,
//! as users write their drop-ins (see tests/common/user_manager.rs).

mod common;

use common::user_manager::UserManager;

#[test]
fn manager_starts() {
    let Some(manager) = UserManager::start() else {
        return;
    };
    let out = manager.systemctl_ok(&["list-units", "--plain", "--no-legend"]);
    assert!(out.contains("default.target"), "{out}");
    let journal = manager.run(&[], &["journalctl", "--user", "--no-pager"]);
    eprintln!("{}", String::from_utf8_lossy(&journal.stdout));
}
