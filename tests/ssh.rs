//! `ssh work.qube`: the real ssh client, with the ssh_config drop-in
//! (`ssh/30-qrexec-connect.conf`) as its config, runs
//! `qrexec-connect-ssh-proxy %h %p`, which becomes the qrexec stand-in
//! calling `work qubes.ConnectTCP+PORT`; in the qube `work`, that service
//! reaches a real sshd (Debian's openssh-server) on a loopback port, started
//! by the test with a throw-away host key, one authorized key, no PAM and no
//! root login.
//!
//! sshd needs root (it changes to the user who logs in), and the user needs
//! a shell that runs commands: [`SSH_USER`] is created for that, since the
//! systemd tests' user has `nologin`.

mod common;

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output as ProcessOutput, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use common::{DEADLINE, Output, Program, Record, TempDir, World, make_install, run, wait_until};

/// The unprivileged user ssh logs in as.
const SSH_USER: &str = "qrc-ssh";
const APPLET: &str = "qrexec-connect-ssh-proxy";
const SSHD: &str = "/usr/sbin/sshd";

/// Why this machine cannot run these tests, if it cannot; under `CI=true`
/// that fails the test instead of skipping it.
fn unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let why = if unsafe { libc::geteuid() } != 0 {
        Some("sshd needs root to change to the user who logs in".to_owned())
    } else if !Path::new(SSHD).exists() {
        Some(format!(
            "{SSHD} is missing (apt-get install openssh-server)"
        ))
    } else {
        ["ssh", "scp", "ssh-keygen", "sha256sum", "git"]
            .into_iter()
            .find(|tool| {
                Command::new("sh")
                    .args(["-c", &format!("command -v {tool}")])
                    .stdout(Stdio::null())
                    .status()
                    .map_or(true, |s| !s.success())
            })
            .map(|tool| format!("{tool} is missing (apt-get install openssh-client coreutils git)"))
    }?;
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "cannot run the ssh tests under CI: {why}"
    );
    eprintln!("skipped: {why}");
    Some(why)
}

/// The login user: a shell that runs commands, home `/`, and the password
/// `*` (no password at all), since sshd without PAM refuses an account
/// locked with `!`, useradd's default.
fn ssh_user() -> (u32, u32) {
    static USER: OnceLock<(u32, u32)> = OnceLock::new();
    *USER.get_or_init(|| {
        if common::user_manager::lookup_user(SSH_USER).is_none() {
            let out = Command::new("useradd")
                .args(["--no-create-home", "--home-dir", "/", "--shell", "/bin/sh"])
                .args(["--user-group", "--password", "*"])
                .args(["--comment", "qrexec-connect ssh tests", SSH_USER])
                .output()
                .expect("run useradd");
            assert!(
                out.status.success() || common::user_manager::lookup_user(SSH_USER).is_some(),
                "useradd {SSH_USER}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        common::user_manager::lookup_user(SSH_USER).expect("the ssh test user")
    })
}

fn keygen(path: &Path) {
    common::ssh_keygen(path, "qrexec-connect test");
}

/// A real sshd on 127.0.0.1, in the foreground, killed by pid when dropped.
struct Sshd {
    port: u16,
    child: Child,
    log: Output,
    host_key: String,
}

impl Sshd {
    /// Starts sshd letting in [`SSH_USER`] with the key `client_key`.
    fn start(dir: &Path, client_key: &Path) -> Sshd {
        ssh_user();
        let host_key = dir.join("host_key");
        keygen(&host_key);
        let authorized = dir.join("authorized_keys");
        fs::copy(client_key.with_extension("pub"), &authorized).unwrap();
        // sshd refuses to start without its privilege separation directory,
        // which the package's own service creates.
        fs::create_dir_all("/run/sshd").unwrap();
        // sshd cannot be given port 0: a free port is found and released
        // for it, which another program may take first (tests of other
        // binaries run at the same time); then sshd gets another one.
        let (port, child, log) = (0..10)
            .find_map(|_| Sshd::spawn(dir, &host_key, &authorized))
            .expect("a free port for sshd, ten times taken before sshd bound it");
        // Whatever sshd says, a connection is what counts.
        TcpStream::connect(("127.0.0.1", port)).expect("connect to sshd");
        let host_key = fs::read_to_string(host_key.with_extension("pub")).unwrap();
        Sshd {
            port,
            child,
            log,
            host_key,
        }
    }

    /// sshd on a free port of 127.0.0.1, once it listens; `None` if the
    /// port was taken before sshd could bind it.
    fn spawn(dir: &Path, host_key: &Path, authorized: &Path) -> Option<(u16, Child, Output)> {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = dir.join("sshd_config");
        fs::write(
            &config,
            format!(
                "ListenAddress 127.0.0.1:{port}\n\
                 HostKey {host_key}\n\
                 PidFile {pid}\n\
                 AuthorizedKeysFile {authorized}\n\
                 AllowUsers {SSH_USER}\n\
                 PermitRootLogin no\n\
                 UsePAM no\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 StrictModes no\n\
                 Subsystem sftp internal-sftp\n",
                host_key = host_key.display(),
                pid = dir.join("sshd.pid").display(),
                authorized = authorized.display(),
            ),
        )
        .unwrap();
        let mut child = Command::new(SSHD)
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start sshd");
        let log = Output::capture(child.stderr.take().unwrap());
        let listening = format!("Server listening on 127.0.0.1 port {port}.");
        wait_until("sshd to listen or exit", || {
            log.is_closed() || log.text().contains(&listening)
        });
        let text = log.text();
        if text.contains(&listening) {
            return Some((port, child, log));
        }
        let _ = child.wait();
        assert!(
            text.contains("Address already in use"),
            "sshd exited:\n{text}"
        );
        None
    }

    /// The host key as known_hosts holds it: `TYPE BASE64`.
    fn key(&self) -> String {
        self.host_key
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        // Each session is a child of the listener, which reaps it: let the
        // sessions of finished clients end first, so that none is orphaned.
        let children = format!("/proc/{0}/task/{0}/children", self.child.id());
        let start = Instant::now();
        while fs::read_to_string(&children).is_ok_and(|c| !c.trim().is_empty())
            && start.elapsed() < DEADLINE
        {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A world with the qube `work` serving `qubes.ConnectTCP` the way Qubes
/// does (relay to `localhost:PORT`), an sshd behind it, and an ssh client
/// config made of the drop-in as installed plus this test's keys.
struct Setup {
    world: World,
    sshd: Sshd,
    dir: TempDir,
    config: PathBuf,
}

impl Setup {
    fn new() -> Option<Setup> {
        if unavailable().is_some() {
            return None;
        }
        let world = World::new();
        let dir = TempDir::new("ssh");
        let client_key = dir.path().join("id_ed25519");
        keygen(&client_key);
        let sshd = Sshd::start(dir.path(), &client_key);

        // Qubes' own qubes.ConnectTCP is socat to localhost:PORT; our
        // qubes.ConnectTCPBind from 127.0.0.1 makes the same connection.
        let bind = world.applet("qubes.ConnectTCPBind");
        world.qube("work").service(
            "qubes.ConnectTCP",
            &format!(
                "arg=\"$QREXEC_SERVICE_ARGUMENT-127.0.0.1\"\n\
                 QREXEC_SERVICE_ARGUMENT=\"$arg\" exec {} \"$arg\"",
                bind.display()
            ),
        );
        world.policy(&format!(
            "qubes.ConnectTCP +{} client work allow\n",
            sshd.port
        ));

        let proxy = world.applet(APPLET);
        let bindir = proxy.parent().unwrap().display().to_string();
        let dropin = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("ssh/30-qrexec-connect.conf"),
        )
        .unwrap();
        let config = dir.path().join("ssh_config");
        fs::write(
            &config,
            format!(
                "{}\nHost *\n    User {SSH_USER}\n    Port {}\n    IdentityFile {}\n    \
                 IdentitiesOnly yes\n    UserKnownHostsFile {}\n    \
                 GlobalKnownHostsFile /dev/null\n    BatchMode yes\n    \
                 StrictHostKeyChecking accept-new\n",
                dropin.replace("@BINDIR@", &bindir),
                sshd.port,
                client_key.display(),
                dir.path().join("known_hosts").display(),
            ),
        )
        .unwrap();
        Some(Setup {
            world,
            sshd,
            dir,
            config,
        })
    }

    /// `PROGRAM -F CONFIG ARGS...` with the stand-in's environment.
    fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new(program);
        command
            .arg("-F")
            .arg(&self.config)
            .args(args)
            .envs(self.world.env())
            .stdin(Stdio::null());
        command
    }

    fn ssh(&self, args: &[&str]) -> ProcessOutput {
        self.command("ssh", args).output().expect("run ssh")
    }

    fn call(&self) -> String {
        format!("qubes.ConnectTCP+{}", self.sshd.port)
    }

    fn known_hosts(&self) -> String {
        fs::read_to_string(self.dir.path().join("known_hosts")).unwrap_or_default()
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Bytes no text conversion or line handling would leave alone.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn sha256(path: &Path) -> String {
    Sha256::digest(fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Every call the stand-in got was `work qubes.ConnectTCP+PORT`, on pipes.
fn assert_calls(setup: &Setup, records: &[Record]) {
    for record in records {
        assert_eq!(
            record.args(),
            ["--", "work", &setup.call()],
            "no --use-stdin-socket: ssh gives pipes"
        );
        assert_eq!(record.target_raw().as_deref(), Some("work"));
        assert_eq!(record.info("use_stdin_socket").as_deref(), Some("no"));
    }
}

#[test]
fn ssh_runs_a_command_and_known_hosts_gets_the_qube_name() {
    let Some(setup) = Setup::new() else { return };
    let out = setup.ssh(&["work.qube", "echo hello from; id -un"]);
    assert!(
        out.status.success(),
        "{out:?}\nsshd:\n{}",
        setup.sshd.log.text()
    );
    assert_eq!(text(&out.stdout), format!("hello from\n{SSH_USER}\n"));
    let port = setup.sshd.port;
    assert!(
        text(&out.stderr).contains(&format!("Permanently added '[work.qube]:{port}'")),
        "{}",
        text(&out.stderr)
    );
    // ssh files the key under the name it was given: no HostKeyAlias, and
    // no IP address, which a qube does not have.
    assert_eq!(
        setup.known_hosts(),
        format!("[work.qube]:{port} {}\n", setup.sshd.key())
    );
    let calls = setup.world.finished_calls(1);
    assert_eq!(calls.len(), 1);
    assert_calls(&setup, &calls);
    // ssh ends its ProxyCommand with SIGHUP when it is done, unless the
    // call has ended already (sshconnect.c, ssh_kill_proxy_command).
    let status = calls[0].status().unwrap();
    assert!(status == "exit 0" || status == "signal 1", "{status}");

    // The next connection finds the key by that name, strictly.
    let out = setup.ssh(&["-o", "StrictHostKeyChecking=yes", "work.qube", "true"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(text(&out.stderr), "");
    assert_calls(&setup, &setup.world.finished_calls(2));
}

#[test]
fn scp_copies_both_ways_byte_exact() {
    let Some(setup) = Setup::new() else { return };
    let (uid, gid) = ssh_user();
    let remote = setup.dir.path().join("remote");
    fs::create_dir(&remote).unwrap();
    chown(&remote, Some(uid), Some(gid)).unwrap();
    let local = setup.dir.path().join("local");
    fs::write(&local, payload(3 * 1024 * 1024 + 7)).unwrap();

    let there = remote.join("copy");
    let out = setup
        .command("scp", &[])
        .arg(&local)
        .arg(format!("work.qube:{}", there.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "scp up: {out:?}");
    assert_eq!(fs::read(&there).unwrap(), fs::read(&local).unwrap());

    // The qube's own view of it, and the way back.
    let out = setup.ssh(&["work.qube", &format!("sha256sum {}", there.display())]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        text(&out.stdout).split_whitespace().next(),
        Some(sha256(&local).as_str())
    );
    let back = setup.dir.path().join("back");
    let out = setup
        .command("scp", &[])
        .arg(format!("work.qube:{}", there.display()))
        .arg(&back)
        .output()
        .unwrap();
    assert!(out.status.success(), "scp down: {out:?}");
    assert_eq!(sha256(&back), sha256(&local));
    assert_eq!(fs::read(&back).unwrap(), fs::read(&local).unwrap());
    assert_calls(&setup, &setup.world.finished_calls(3));
}

#[test]
fn a_refused_call_ends_ssh_with_the_reason_and_qrexecs_status() {
    let Some(setup) = Setup::new() else { return };
    setup.world.policy("qubes.ConnectTCP * client work deny\n");
    let out = setup.ssh(&["work.qube", "true"]);
    assert_eq!(out.status.code(), Some(255), "{out:?}");
    let err = text(&out.stderr);
    assert_eq!(
        err.lines().next(),
        Some("Request refused"),
        "qrexec-client-vm's line comes first:\n{err}"
    );
    let calls = setup.world.finished_calls(1);
    assert_calls(&setup, &calls);
    assert_eq!(calls[0].status().as_deref(), Some("exit 126"));

    // The applet is qrexec-client-vm by then: its status is the call's.
    let port = setup.sshd.port.to_string();
    let out = Command::new(setup.world.applet(APPLET))
        .args(["work.qube", &port])
        .envs(setup.world.env())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(126), "{out:?}");
    assert_eq!(text(&out.stderr), "Request refused\n");
}

#[test]
fn bad_names_and_ports_are_one_line_and_no_call() {
    let Some(setup) = Setup::new() else { return };
    // Through ssh: the name as ssh passes it (%h), our line first.
    for (args, line) in [
        (
            &["2work.qube", "true"][..],
            "qrexec-connect-ssh-proxy: host '2work.qube': a qube name starts with a letter",
        ),
        (
            &["-o", "HostName=@anyvm", "x.qube", "true"][..],
            "qrexec-connect-ssh-proxy: host '@anyvm': unknown target keyword '@anyvm' \
             (use a qube name, @default, @adminvm, @dispvm or @dispvm+TEMPLATE)",
        ),
    ] {
        let out = setup.ssh(args);
        assert_eq!(out.status.code(), Some(255), "{args:?}: {out:?}");
        let err = text(&out.stderr);
        assert_eq!(err.lines().next(), Some(line), "{args:?}:\n{err}");
    }

    // The applet itself: exactly one line, status 2.
    let world = &setup.world;
    for (args, line) in [
        (
            &["wo/rk.qube", "22"][..],
            "host 'wo/rk.qube': character '/' is not allowed in a qube name (A-Z a-z 0-9 _ . -)",
        ),
        (
            &["work.qube", "022"][..],
            "port '022' is not a number from 1 to 65535 without leading zeros",
        ),
        (
            &["work.qube", "65536"][..],
            "port '65536' is not a number from 1 to 65535 without leading zeros",
        ),
        (
            &["work.qube"][..],
            "Required positional arguments not provided: port",
        ),
    ] {
        let (code, out, err) = run(&Program::Applet(APPLET.into()), args, world);
        assert_eq!(code, Some(2), "{args:?}: {err}");
        assert_eq!(out, "");
        assert_eq!(err, format!("{APPLET}: {line}\n"), "{args:?}");
    }
    assert!(world.records().is_empty(), "qrexec-client-vm was run");
}

/// The drop-in as `make install` puts it: the installed applet's absolute
/// path, for `*.qube` only.
#[test]
fn installed_dropin_points_at_the_installed_applet() {
    if unavailable().is_some() {
        return;
    }
    let dest = TempDir::new("ssh-install");
    make_install(dest.path());
    let conf = dest
        .path()
        .join("etc/ssh/ssh_config.d/30-qrexec-connect.conf");
    let proxy = "/usr/local/bin/qrexec-connect-ssh-proxy";
    assert_eq!(
        fs::read_link(dest.path().join(&proxy[1..])).unwrap(),
        Path::new("qrexec-connect")
    );
    let resolved = |host: &str| {
        let out = Command::new("ssh")
            .arg("-F")
            .arg(&conf)
            .args(["-G", host])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        text(&out.stdout)
            .lines()
            .filter(|l| l.starts_with("proxycommand "))
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    assert_eq!(
        resolved("work.qube"),
        [format!("proxycommand {proxy} %h %p")]
    );
    assert!(resolved("example.org").is_empty());
}

/// `git clone ssh://work.qube/PATH`: git runs ssh, which runs our ProxyCommand.
#[test]
fn git_clones_over_ssh() {
    let Some(setup) = Setup::new() else { return };
    let git = |dir: &Path, args: &[&str]| {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=test", "-c", "user.email=test@example.org"])
            .args(args)
            .env(
                "GIT_SSH_COMMAND",
                format!("ssh -F {}", setup.config.display()),
            )
            .envs(setup.world.env())
            .stdin(Stdio::null())
            .output()
            .expect("run git");
        assert!(out.status.success(), "git {args:?}: {out:?}");
    };
    let repo = setup.dir.path().join("repo");
    fs::create_dir(&repo).unwrap();
    git(&repo, &["init", "-q"]);
    fs::write(repo.join("file"), payload(100_000)).unwrap();
    git(&repo, &["add", "file"]);
    git(&repo, &["commit", "-q", "-m", "one"]);
    // git-upload-pack runs as the ssh user, and git refuses a repository
    // someone else owns.
    let (uid, gid) = ssh_user();
    let status = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(&repo)
        .status()
        .unwrap();
    assert!(status.success());

    let url = format!("ssh://work.qube{}", repo.display());
    git(setup.dir.path(), &["clone", "-q", &url, "clone"]);
    assert_eq!(
        fs::read(setup.dir.path().join("clone/file")).unwrap(),
        payload(100_000)
    );
    assert_calls(&setup, &setup.world.finished_calls(1));
}
