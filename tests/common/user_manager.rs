//! A real systemd user manager (`systemd --user`, see systemd(1) and
//! user@.service(5)) for tests, started on a machine without systemd as
//! PID 1.
//!
//! The recipe, as root:
//! - a private mount namespace (`unshare --mount --propagation private`), in
//!   which a fresh tmpfs on `/run` holds `/run/systemd/system` (the manager's
//!   "booted under systemd" check) and `/run/user/UID` (its `%t`), and a tmpfs
//!   on `/var/log` holds the journal;
//! - a cgroup v2 directory chowned to the test user, the shell moved into it
//!   before it becomes the manager (without a delegated cgroup the manager
//!   exits 1 without a word: it cannot create `init.scope`). It is named like
//!   the real one, `SLICE/user@UID.service`, so that journald files each
//!   message under its user unit and `journalctl --user -u` works. On a
//!   hybrid host the same directory in the v1 `name=systemd` hierarchy too,
//!   where the manager also places its units' processes;
//! - a `systemd-journald` of its own, so that `systemctl --user status` and
//!   `journalctl --user` show what the units logged;
//! - `systemd --user` run as the unprivileged test user ([`TEST_USER`],
//!   created when missing) with `XDG_RUNTIME_DIR=/run/user/UID`.
//!
//! Each [`UserManager`] has its own namespace, cgroup, runtime directory,
//! home and journal, so tests may run in parallel, each with its own
//! manager. Commands such as `systemctl --user` run inside the namespace as
//! the test user ([`UserManager::command`]); the test itself reaches paths
//! inside through `/proc/PID/root` ([`UserManager::outside`]).
//!
//! Where this cannot run (not root, no unshare, no systemd, no cgroup v2) the
//! fixture says so loudly and the test is skipped; under `CI=true` that is a
//! failure instead.
#![allow(dead_code)]

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt, chown};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// The unprivileged user the managers run as (created with a regular uid,
/// so that journald keeps a per-user journal for it).
pub const TEST_USER: &str = "qrc-test";

const SYSTEMD: &str = "/usr/lib/systemd/systemd";
const JOURNALD: &str = "/usr/lib/systemd/systemd-journald";
/// How long the manager may take to start, and any command inside to run.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const COMMAND_TIMEOUT_SECS: u32 = 60;

/// Runs inside the new mount namespace as root, then becomes the manager.
/// Arguments: CGROUP COMPAT-CGROUP-OR-EMPTY UID GID NBINDS JOURNALD SYSTEMD
/// [SRC DST]... [KEY=VALUE]... (the manager's environment).
const SETUP: &str = r#"
set -eu
cgroup=$1 compat=$2 uid=$3 gid=$4 nbinds=$5 journald=$6 systemd=$7
shift 7
mount -t tmpfs -o mode=0755 qrc-run /run
mkdir -p /run/systemd/system /run/systemd/journal /run/systemd/journald.conf.d "/run/user/$uid"
# PID 1 creates it at boot; without it a user manager cannot give a service
# a mount namespace of its own (PrivateUsers=, ProtectSystem=, PrivateTmp=).
mkdir -m 0755 /run/systemd/unit-root
# The tests' widening of the units' confinement: the stand-in that plays the
# other qube connects to /dev/tcp services over TCP (docs/security.md).
mkdir -p /run/systemd/user/qrexec-.service.d
printf '[Service]\nRestrictAddressFamilies=AF_INET AF_INET6\n' \
    > /run/systemd/user/qrexec-.service.d/50-test-standin.conf
chown "$uid:$gid" "/run/user/$uid"
chmod 0700 "/run/user/$uid"
# Write to /var/log/journal from the start, as after systemd-journal-flush.
: > /run/systemd/journal/flushed
printf '[Journal]\nStorage=persistent\nReadKMsg=no\nForwardToSyslog=no\nForwardToWall=no\n' \
    > /run/systemd/journald.conf.d/50-test.conf
mount -t tmpfs -o mode=0755 qrc-log /var/log
mkdir -m 2755 /var/log/journal
chgrp systemd-journal /var/log/journal 2>/dev/null || true
while [ "$nbinds" -gt 0 ]; do
    mount --bind "$1" "$2"
    shift 2
    nbinds=$((nbinds - 1))
done
sh -c 'echo $$ > "$1/journald.scope/cgroup.procs" &&
       { [ -z "$2" ] || echo $$ > "$2/journald.scope/cgroup.procs"; } && exec "$3"' \
    journald "$cgroup" "$compat" "$journald" < /dev/null &
tries=0
until [ -S /run/systemd/journal/stdout ]; do
    tries=$((tries + 1))
    if [ "$tries" -gt 400 ]; then echo "systemd-journald did not start" >&2; exit 1; fi
    sleep 0.05
done
echo $$ > "$cgroup/user@$uid.service/cgroup.procs"
[ -z "$compat" ] || echo $$ > "$compat/user@$uid.service/cgroup.procs"
exec setpriv --reuid="$uid" --regid="$gid" --init-groups env -i "$@" "$systemd" --user
"#;

/// The test user, created on first use.
#[derive(Debug)]
pub struct TestUser {
    pub name: &'static str,
    pub uid: u32,
    pub gid: u32,
}

/// Options for a new manager.
#[derive(Default)]
pub struct Setup {
    env: Vec<(String, String)>,
    binds: Vec<(PathBuf, PathBuf)>,
}

impl Setup {
    /// Adds a variable to the manager's environment, which its services
    /// inherit.
    pub fn env(mut self, key: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        let value = value.as_ref().to_str().expect("UTF-8 environment value");
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Bind-mounts `outside` over `inside` in the manager's namespace only,
    /// e.g. a `make install DESTDIR=...` tree's `usr/local` over `/usr/local`.
    pub fn bind(mut self, outside: impl Into<PathBuf>, inside: impl Into<PathBuf>) -> Self {
        self.binds.push((outside.into(), inside.into()));
        self
    }

    /// Starts the manager and waits until it has finished starting up.
    /// `None` (after a loud message) where a manager cannot run here, unless
    /// `CI=true`, where that panics.
    pub fn start(self) -> Option<UserManager> {
        if let Err(why) = prerequisites() {
            return unavailable(&why);
        }
        let user = match test_user() {
            Ok(user) => user,
            Err(why) => return unavailable(&why),
        };
        let Some(hierarchies) = Hierarchies::find() else {
            return unavailable("no cgroup v2 hierarchy is mounted");
        };
        remove_stale(&hierarchies);
        match UserManager::spawn(self, user, &hierarchies) {
            Ok(manager) => Some(manager),
            // Everything needed is here: failing to start is a failure.
            Err(e) => panic!("the systemd user manager did not start: {e}"),
        }
    }
}

/// A running `systemd --user`; stopped and cleaned up on drop.
pub struct UserManager {
    child: Child,
    pid: u32,
    user: &'static TestUser,
    /// Our cgroup trees: the v2 one, then the v1 compat one if any.
    cgroups: Vec<PathBuf>,
    base: PathBuf,
    home: PathBuf,
}

impl UserManager {
    /// A manager with nothing added.
    pub fn start() -> Option<UserManager> {
        Setup::default().start()
    }

    /// Options for a manager.
    pub fn setup() -> Setup {
        Setup::default()
    }

    fn spawn(
        setup: Setup,
        user: &'static TestUser,
        hierarchies: &Hierarchies,
    ) -> Result<Self, String> {
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let n = COUNT.fetch_add(1, Ordering::Relaxed);
        let tag = format!("qrc_test_{}_{n}", std::process::id());
        let fail = |what: &str, e: io::Error| format!("{what}: {e}");

        // Everything on disk is created before the manager, so that a
        // failure part-way leaves nothing behind once `manager` drops.
        let base = std::env::temp_dir().join(format!("{tag}.d"));
        let mut partial = Partial {
            base: Some(base.clone()),
            cgroups: Vec::new(),
        };
        fs::create_dir(&base).map_err(|e| fail("create the test directory", e))?;
        // The user must reach its home and whatever the test installs here.
        fs::set_permissions(&base, fs::Permissions::from_mode(0o755))
            .map_err(|e| fail("chmod the test directory", e))?;
        let home = base.join("home");
        fs::create_dir(&home).map_err(|e| fail("create the home", e))?;
        chown(&home, Some(user.uid), Some(user.gid)).map_err(|e| fail("chown the home", e))?;

        let slice = format!("{tag}.slice");
        let cgroup = delegate(&hierarchies.v2.join(&slice), user, &mut partial.cgroups)?;
        let compat = match &hierarchies.compat {
            Some(root) => Some(delegate(&root.join(&slice), user, &mut partial.cgroups)?),
            None => None,
        };

        let log = fs::File::create(base.join("manager.log"))
            .map_err(|e| fail("create the manager's log", e))?;
        let runtime = format!("/run/user/{}", user.uid);
        let mut env = vec![
            ("HOME".to_owned(), home.display().to_string()),
            ("USER".to_owned(), user.name.to_owned()),
            ("LOGNAME".to_owned(), user.name.to_owned()),
            ("XDG_RUNTIME_DIR".to_owned(), runtime),
            ("PATH".to_owned(), "/usr/local/bin:/usr/bin:/bin".to_owned()),
            ("LANG".to_owned(), "C.UTF-8".to_owned()),
            // As user@.service, whose stderr is the journal: "Listening
            // on ...", "Started ..." go there, not to our log file.
            ("SYSTEMD_LOG_TARGET".to_owned(), "journal".to_owned()),
        ];
        env.extend(setup.env);
        let mut command = Command::new("unshare");
        command
            .args(["--mount", "--propagation", "private", "--"])
            .args(["sh", "-c", SETUP, "qrc-setup"])
            .arg(&cgroup)
            .arg(compat.as_deref().unwrap_or(Path::new("")))
            .arg(user.uid.to_string())
            .arg(user.gid.to_string())
            .arg(setup.binds.len().to_string())
            .args([JOURNALD, SYSTEMD]);
        for (outside, inside) in &setup.binds {
            command.arg(outside).arg(inside);
        }
        for (key, value) in &env {
            command.arg(format!("{key}={value}"));
        }
        let stderr = log.try_clone().map_err(|e| fail("dup the log", e))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| fail("run unshare", e))?;
        // unshare, sh and setpriv each exec the next: this pid becomes the
        // manager's.
        let pid = child.id();
        partial.base = None;
        let mut manager = UserManager {
            child,
            pid,
            user,
            cgroups: std::mem::take(&mut partial.cgroups),
            base,
            home,
        };
        manager.wait_started()?;
        Ok(manager)
    }

    fn wait_started(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                return Err(format!(
                    "it exited ({status}) while starting; its output:\n{}",
                    self.manager_log()
                ));
            }
            let state = self.systemctl(&["is-system-running"]);
            let state = String::from_utf8_lossy(&state.stdout);
            match state.trim() {
                "running" => return Ok(()),
                // A stock user unit failed (none of ours are loaded yet):
                // say which, but the manager works.
                "degraded" => {
                    let failed = self.systemctl(&["--failed", "--plain", "--no-legend"]);
                    eprintln!(
                        "user manager degraded at start: {}",
                        String::from_utf8_lossy(&failed.stdout).trim()
                    );
                    return Ok(());
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not running after {START_TIMEOUT:?} (state {:?}); its output:\n{}",
                    state.trim(),
                    self.manager_log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The manager's pid (outside the namespace, which shares the pid
    /// namespace).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn user(&self) -> &'static TestUser {
        self.user
    }

    /// The test user's home (`%h`), the same path inside and outside.
    pub fn home(&self) -> &Path {
        &self.home
    }

    /// A scratch directory of this manager, readable by the test user and
    /// removed on drop.
    pub fn scratch(&self) -> &Path {
        &self.base
    }

    /// `%t` inside the namespace: `/run/user/UID`.
    pub fn runtime_dir(&self) -> PathBuf {
        PathBuf::from(format!("/run/user/{}", self.user.uid))
    }

    /// The path by which the test (outside the namespace) reaches `inside`.
    pub fn outside(&self, inside: impl AsRef<Path>) -> PathBuf {
        let inside = inside.as_ref();
        let relative = inside.strip_prefix("/").unwrap_or(inside);
        PathBuf::from(format!("/proc/{}/root", self.pid)).join(relative)
    }

    /// `~/.config/systemd/user`.
    pub fn user_unit_dir(&self) -> PathBuf {
        self.home.join(".config/systemd/user")
    }

    /// Writes a unit or drop-in under `~/.config/systemd/user`, e.g.
    /// `qrexec-connect-tcp@1234.socket.d/gitweb.conf`, owned by the user.
    /// Run `daemon-reload` after.
    pub fn write_user_unit(&self, relative: &str, content: &str) -> PathBuf {
        let path = self.user_unit_dir().join(relative);
        self.write_owned(&path, content);
        path
    }

    /// Writes a file under the home, creating and chowning what is missing.
    pub fn write_owned(&self, path: &Path, content: &str) {
        assert!(
            path.starts_with(&self.home),
            "{} is not under the home",
            path.display()
        );
        let mut missing = Vec::new();
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| !d.exists()) {
            missing.push(d.to_owned());
            dir = d.parent();
        }
        for d in missing.iter().rev() {
            fs::create_dir(d).unwrap_or_else(|e| panic!("mkdir {}: {e}", d.display()));
            chown(d, Some(self.user.uid), Some(self.user.gid)).unwrap();
        }
        fs::write(path, content).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        chown(path, Some(self.user.uid), Some(self.user.gid)).unwrap();
    }

    /// A command run inside the namespace as the test user, with the user
    /// session's environment plus `env`, bounded in time.
    pub fn command(&self, env: &[(&str, &str)], program: &str) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--target={}", self.pid))
            .args(["--mount", "--"])
            .arg("setpriv")
            .arg(format!("--reuid={}", self.user.uid))
            .arg(format!("--regid={}", self.user.gid))
            .args(["--init-groups", "env", "-i"])
            .arg(format!("HOME={}", self.home.display()))
            .arg(format!("USER={}", self.user.name))
            .arg(format!("LOGNAME={}", self.user.name))
            .arg(format!("XDG_RUNTIME_DIR={}", self.runtime_dir().display()))
            .arg("PATH=/usr/local/bin:/usr/bin:/bin")
            .arg("LANG=C.UTF-8")
            .arg("SYSTEMD_COLORS=0")
            .arg("SYSTEMD_PAGER=");
        for (key, value) in env {
            command.arg(format!("{key}={value}"));
        }
        command
            .args(["timeout", "--kill-after=5"])
            .arg(COMMAND_TIMEOUT_SECS.to_string())
            .arg(program)
            .stdin(Stdio::null());
        command
    }

    /// Runs a program inside as the user and returns what it did.
    pub fn run(&self, env: &[(&str, &str)], argv: &[&str]) -> Output {
        let (program, args) = argv.split_first().expect("a program");
        self.command(env, program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run {argv:?}: {e}"))
    }

    /// `systemctl --user ARGS`, whatever its status.
    pub fn systemctl(&self, args: &[&str]) -> Output {
        let mut argv = vec!["systemctl", "--user", "--no-pager"];
        argv.extend_from_slice(args);
        self.run(&[], &argv)
    }

    /// `systemctl --user ARGS`, which must succeed; its stdout.
    pub fn systemctl_ok(&self, args: &[&str]) -> String {
        let out = self.systemctl(args);
        assert!(
            out.status.success(),
            "systemctl --user {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// One property of a unit (`systemctl --user show -P`).
    pub fn property(&self, unit: &str, name: &str) -> String {
        self.systemctl_ok(&["show", "-P", name, unit])
            .trim()
            .to_owned()
    }

    /// `systemctl --user is-active UNIT`'s answer.
    pub fn is_active(&self, unit: &str) -> String {
        let out = self.systemctl(&["is-active", unit]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Polls `condition` until it holds, at most `timeout`; on timeout
    /// panics with the journal, saying what was awaited.
    pub fn wait_until(&self, what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !condition() {
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting until {what}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The journal of this manager's namespace, read as root (every
    /// message, the manager's own included), with journalctl `matches`
    /// such as `_SYSTEMD_USER_UNIT=foo.service`.
    pub fn journal(&self, matches: &[&str]) -> String {
        let out = Command::new("journalctl")
            .arg("--directory")
            .arg(self.outside("/var/log/journal"))
            .args(["--no-pager", "--quiet", "-o", "short-precise"])
            .args(matches)
            .stdin(Stdio::null())
            .output()
            .expect("run journalctl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// What the setup script and the manager wrote before the journal.
    fn manager_log(&self) -> String {
        fs::read_to_string(self.base.join("manager.log")).unwrap_or_default()
    }

    fn stop(&mut self) {
        // SIGTERM: the manager stops its units (their ExecStop, their
        // draining) and exits.
        signal(self.pid, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) {
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // journald, and anything the manager left.
        for cgroup in &self.cgroups {
            kill_cgroup(cgroup);
        }
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- journal of the user manager (pid {}) ---\n{}--- end of journal ---",
                self.pid,
                self.journal(&[])
            );
        }
        self.stop();
        for cgroup in &self.cgroups {
            remove_cgroup(cgroup);
        }
        let _ = fs::remove_dir_all(&self.base);
    }
}

/// Cleans up what `UserManager::spawn` created when it fails part-way.
struct Partial {
    base: Option<PathBuf>,
    cgroups: Vec<PathBuf>,
}

impl Drop for Partial {
    fn drop(&mut self) {
        for cgroup in &self.cgroups {
            remove_cgroup(cgroup);
        }
        if let Some(base) = &self.base {
            let _ = fs::remove_dir_all(base);
        }
    }
}

fn unavailable(why: &str) -> Option<UserManager> {
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true but no systemd user manager can run here: {why}");
    }
    eprintln!(
        "\n**********************************************************************\n\
         SKIPPED: this test needs a real systemd user manager: {why}\n\
         **********************************************************************\n"
    );
    None
}

fn prerequisites() -> Result<(), String> {
    // /proc/self belongs to the effective user.
    let euid = fs::metadata("/proc/self")
        .map_err(|e| format!("stat /proc/self: {e}"))?
        .uid();
    if euid != 0 {
        return Err(format!("not root (euid {euid})"));
    }
    for tool in [
        "unshare",
        "nsenter",
        "setpriv",
        "journalctl",
        "systemctl",
        "timeout",
    ] {
        let found = Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Err(format!("{tool} is missing"));
        }
    }
    for binary in [SYSTEMD, JOURNALD] {
        if !Path::new(binary).exists() {
            return Err(format!("{binary} is missing"));
        }
    }
    Ok(())
}

/// The test user, created with useradd when missing.
pub fn test_user() -> Result<&'static TestUser, String> {
    static USER: OnceLock<Result<TestUser, String>> = OnceLock::new();
    USER.get_or_init(|| {
        // Other test processes may be creating it at the same moment.
        for _ in 0..20 {
            if let Some((uid, gid)) = lookup_user(TEST_USER) {
                return Ok(TestUser {
                    name: TEST_USER,
                    uid,
                    gid,
                });
            }
            let out = Command::new("useradd")
                .args(["--no-create-home", "--home-dir", "/nonexistent"])
                .args(["--shell", "/usr/sbin/nologin", "--user-group"])
                .args(["--comment", "qrexec-connect tests", TEST_USER])
                .output()
                .map_err(|e| format!("run useradd: {e}"))?;
            if !out.status.success() && lookup_user(TEST_USER).is_none() {
                eprintln!(
                    "useradd {TEST_USER}: {}; retrying",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        Err(format!("cannot create the user {TEST_USER}"))
    })
    .as_ref()
    .map_err(Clone::clone)
}

/// The uid and gid of the user `name`, if there is one.
pub fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let out = Command::new("getent")
        .args(["passwd", name])
        .output()
        .ok()?;
    let line = String::from_utf8(out.stdout).ok()?;
    let fields: Vec<&str> = line.trim().split(':').collect();
    Some((fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?))
}

/// The cgroup hierarchies a manager is placed in.
struct Hierarchies {
    /// Where cgroup v2 is mounted: `/sys/fs/cgroup` on a unified host,
    /// `/sys/fs/cgroup/unified` on a hybrid one.
    v2: PathBuf,
    /// On a hybrid host, the v1 `name=systemd` hierarchy, which systemd
    /// also keeps its units in.
    compat: Option<PathBuf>,
}

impl Hierarchies {
    fn find() -> Option<Hierarchies> {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
        let mut v2 = Vec::new();
        let mut compat = None;
        for line in mountinfo.lines() {
            let Some((before, after)) = line.split_once(" - ") else {
                continue;
            };
            let Some(mount_point) = before.split_whitespace().nth(4) else {
                continue;
            };
            let mut after = after.split_whitespace();
            match (after.next(), after.nth(1)) {
                (Some("cgroup2"), _) => v2.push(PathBuf::from(mount_point)),
                (Some("cgroup"), Some(options))
                    if options.split(',').any(|o| o == "name=systemd") =>
                {
                    compat = Some(PathBuf::from(mount_point));
                }
                _ => {}
            }
        }
        v2.sort_by_key(|p| p != Path::new("/sys/fs/cgroup"));
        let v2 = v2.into_iter().next()?;
        Some(Hierarchies { v2, compat })
    }
}

/// Creates `slice/user@UID.service`, delegated to the user, and
/// `slice/journald.scope`; records `slice` for removal.
fn delegate(slice: &Path, user: &TestUser, created: &mut Vec<PathBuf>) -> Result<PathBuf, String> {
    let fail = |what: &str, e: io::Error| format!("{what} {}: {e}", slice.display());
    fs::create_dir(slice).map_err(|e| fail("create", e))?;
    created.push(slice.to_owned());
    let delegated = slice.join(format!("user@{}.service", user.uid));
    fs::create_dir(&delegated).map_err(|e| fail("create the manager's cgroup in", e))?;
    fs::create_dir(slice.join("journald.scope"))
        .map_err(|e| fail("create journald's cgroup in", e))?;
    // Delegation: the directory and its files (cgroup.procs,
    // cgroup.subtree_control, ...) belong to the user.
    chown(&delegated, Some(user.uid), Some(user.gid)).map_err(|e| fail("chown", e))?;
    for entry in fs::read_dir(&delegated).map_err(|e| fail("list", e))? {
        let path = entry.map_err(|e| fail("list", e))?.path();
        chown(&path, Some(user.uid), Some(user.gid)).map_err(|e| fail("chown files in", e))?;
    }
    Ok(slice.to_owned())
}

/// Removes the cgroups of test processes that died without cleaning up.
fn remove_stale(hierarchies: &Hierarchies) {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        for root in std::iter::once(&hierarchies.v2).chain(&hierarchies.compat) {
            let Ok(entries) = fs::read_dir(root) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(rest) = name.strip_prefix("qrc_test_") else {
                    continue;
                };
                let owner = rest.split('_').next().unwrap_or_default();
                if !Path::new("/proc").join(owner).exists() {
                    kill_cgroup(&entry.path());
                    remove_cgroup(&entry.path());
                }
            }
        }
    });
}

fn signal(pid: u32, signal: libc::c_int) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes plain integers; the pid is our own child's, not
    // yet reaped, so it cannot name another process.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Kills every process in a cgroup tree (cgroup.kill, Linux 5.14) and waits
/// until it is empty.
fn kill_cgroup(cgroup: &Path) {
    if fs::write(cgroup.join("cgroup.kill"), "1").is_err() {
        for pid in cgroup_pids(cgroup) {
            signal(pid, libc::SIGKILL);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let events = fs::read_to_string(cgroup.join("cgroup.events")).unwrap_or_default();
        if !events.contains("populated 1") {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("warning: {} still has processes", cgroup.display());
}

fn cgroup_pids(cgroup: &Path) -> Vec<u32> {
    let mut pids: Vec<u32> = fs::read_to_string(cgroup.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    if let Ok(entries) = fs::read_dir(cgroup) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                pids.extend(cgroup_pids(&entry.path()));
            }
        }
    }
    pids
}

/// Removes a cgroup tree, children first (cgroup directories are removed
/// with rmdir, their files go with them).
fn remove_cgroup(cgroup: &Path) {
    if let Ok(entries) = fs::read_dir(cgroup) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&entry.path());
            }
        }
    }
    if let Err(e) = fs::remove_dir(cgroup) {
        if e.kind() != io::ErrorKind::NotFound {
            eprintln!("warning: rmdir {}: {e}", cgroup.display());
        }
    }
}
