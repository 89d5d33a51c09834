//! The packages and the man pages.
//!
//! Always: each man page renders with neither `groff -ww` nor `man -l`
//! warning, names every applet, verb and option, and every file gives the same
//! version (Cargo.toml, `version`, `debian/changelog`, the man pages).
//!
//! When `.ci/run` has built them (`make deb rpm`, then
//! `QREXEC_CONNECT_PACKAGES=DIR`; under `CI=true` they must be there): the
//! .deb installs on this machine with `apt-get install ./FILE.deb`, every
//! file, mode and link is as listed here, `--version` matches, the
//! installed units under /usr serve one socket-activated connection under
//! a real `systemd --user`, `apt-get purge` leaves the machine as it was;
//! the .rpm has exactly the .deb's files; a second build gives the same
//! bytes. This installs into the real /usr: one test, under a lock, and it
//! refuses to start when qrexec-connect is already installed.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use common::lab;
use common::{DEADLINE as WAIT, TempDir, World};
use sha2::{Digest, Sha256};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const VERSION: &str = env!("CARGO_PKG_VERSION");
const PAGES: [&str; 2] = ["man/qrexec-connect.1", "man/qrexec-connect-service.8"];

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn repo(path: &str) -> PathBuf {
    Path::new(REPO).join(path)
}

/// `REL`, the package release (qubes-builder's `rel` file).
fn release() -> String {
    fs::read_to_string(repo("rel")).unwrap().trim().to_owned()
}

#[test]
fn man_pages_render_without_warnings() {
    for page in PAGES {
        let path = repo(page);
        let path = path.to_str().unwrap();
        for width in ["60", "80", "120"] {
            let out = Command::new("man")
                .args(["-l", path])
                .env("MANWIDTH", width)
                .env("MAN_DISABLE_SECCOMP", "1")
                .stdin(Stdio::null())
                .output()
                .expect("run man");
            assert!(out.status.success(), "man -l {page}: {out:?}");
            assert!(
                out.stderr.is_empty(),
                "man -l {page} at {width} columns warns:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(out.stdout.len() > 1000, "{page} renders to nothing");
        }
        let out = run("groff", &["-ww", "-z", "-mandoc", path]);
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "groff -ww {page}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// The pages as plain ASCII text, for what they must mention.
fn rendered(page: &str) -> String {
    run_ok(
        "groff",
        &[
            "-mandoc",
            "-Tascii",
            "-P-cbou",
            "-rLL=200n",
            repo(page).to_str().unwrap(),
        ],
    )
}

#[test]
fn man_pages_name_every_applet_and_option() {
    let text: String = PAGES.iter().map(|p| rendered(p)).collect();
    let binary = common::binary().to_str().unwrap();
    let list = run_ok(binary, &["--list"]);
    let applets: Vec<&str> = list
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(applets.len(), 9, "{list}");
    for applet in &applets {
        assert!(text.contains(applet), "no man page names {applet}");
        let help = run(binary, &[applet, "--help"]);
        for option in options(&help) {
            assert!(
                text.contains(&option),
                "the man pages lack {option} of {applet}"
            );
        }
    }
    // The verbs of the plain applet: each, its forms (`add tcp`, ...) and
    // its options.
    for verb in ["add", "list", "remove", "policy"] {
        let help = run(binary, &[verb, "--help"]);
        let usage = String::from_utf8_lossy(&help.stdout);
        assert!(
            help.status.success() && usage.starts_with(&format!("Usage: qrexec-connect {verb}")),
            "qrexec-connect {verb} --help: {help:?}"
        );
        assert!(
            text.contains(&format!("qrexec-connect {verb}")),
            "no man page names qrexec-connect {verb}"
        );
        for form in forms(&usage, verb) {
            assert!(text.contains(&form), "the man pages lack {form}");
        }
        for option in options(&help) {
            assert!(
                text.contains(&option),
                "the man pages lack {option} of qrexec-connect {verb}"
            );
        }
    }
    for word in [
        "FileDescriptorName",
        "@dispvm+TEMPLATE",
        "EXIT STATUS",
        "ENVIRONMENT",
        "FILES",
        "EXAMPLES",
        "--list",
        "--version",
        "/etc/ssh/ssh_config.d/30-qrexec-connect.conf",
    ] {
        assert!(text.contains(word), "the man pages lack {word}");
    }
}

/// The forms a verb's `--help` names: `VERB WORD` where WORD is followed by
/// an argument in capitals or brackets, or ends the line (`add tcp [ADDR:]...`,
/// `add unix PATH ...`, `list [--json]`), not by prose (`list every forward`).
fn forms(usage: &str, verb: &str) -> Vec<String> {
    let words: Vec<&str> = usage.split([' ', ',']).collect();
    let mut found = Vec::new();
    for (i, pair) in words.windows(2).enumerate() {
        let [first, kind] = pair else { continue };
        let (kind, end) = match kind.split_once('\n') {
            Some((kind, _)) => (kind, true),
            None => (*kind, i + 2 == words.len()),
        };
        let argument = words
            .get(i + 2)
            .and_then(|w| w.chars().next())
            .is_some_and(|c| c.is_ascii_uppercase() || c == '[');
        if *first == verb && !kind.is_empty() && (end || argument) {
            found.push(format!("{verb} {kind}"));
        }
    }
    found
}

/// The long options a `--help` output names.
fn options(help: &Output) -> BTreeSet<String> {
    String::from_utf8_lossy(&help.stdout)
        .split(|c: char| c.is_whitespace() || "[]<>,|".contains(c))
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(str::to_owned)
        .collect()
}

#[test]
fn one_version_everywhere() {
    assert_eq!(fs::read_to_string(repo("version")).unwrap().trim(), VERSION);
    let changelog = fs::read_to_string(repo("debian/changelog")).unwrap();
    let first = changelog.lines().next().unwrap();
    assert!(
        first.starts_with(&format!("qrexec-connect ({VERSION}-{}) ", release())),
        "debian/changelog starts {first:?}"
    );
    let ours = fs::read_to_string(repo("CHANGELOG.md")).unwrap();
    assert!(ours.contains(&format!("\n## {VERSION} (")), "CHANGELOG.md");
    for page in PAGES {
        let text = fs::read_to_string(repo(page)).unwrap();
        assert!(
            text.contains(&format!("\n.Os qrexec-connect {VERSION}\n")),
            "{page} is not at {VERSION}"
        );
    }
    let out = run_ok(common::binary().to_str().unwrap(), &["--version"]);
    assert!(
        out.starts_with(&format!("qrexec-connect {VERSION}")),
        "{out}"
    );
}

/// Where `make deb rpm` put the packages, or `None` (with a note) when they
/// were not built; under `CI=true` they must have been.
fn packages() -> Option<PathBuf> {
    match std::env::var_os("QREXEC_CONNECT_PACKAGES") {
        Some(dir) => Some(PathBuf::from(dir)),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI=true but QREXEC_CONNECT_PACKAGES is not set: .ci/run builds the packages")
        }
        None => {
            eprintln!(
                "SKIPPED: the packages were not built (make && make deb rpm, then \
                 QREXEC_CONNECT_PACKAGES=target/packages); this installs into /usr"
            );
            None
        }
    }
}

fn deb_name() -> String {
    format!("qrexec-connect_{VERSION}-{}_amd64.deb", release())
}

fn rpm_name() -> String {
    format!("qrexec-connect-{VERSION}-{}.x86_64.rpm", release())
}

/// The release binary `make` built, which both packages hold.
fn release_binary() -> PathBuf {
    repo("target/x86_64-unknown-linux-gnu/release/qrexec-connect")
}

/// The names in a directory of the repository, sorted.
fn names_in(dir: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(repo(dir))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// The user units and drop-ins, relative to units/ (as the Makefile lists them).
fn units() -> Vec<String> {
    let mut units = Vec::new();
    for name in names_in("units") {
        if name.ends_with(".d") {
            for conf in names_in(&format!("units/{name}")) {
                units.push(format!("{name}/{conf}"));
            }
        } else {
            units.push(name);
        }
    }
    units
}

/// The directories the package owns (the others, such as /usr/bin, are
/// the system's): the units' drop-in directories and the documentation's.
fn own_dirs() -> BTreeSet<String> {
    names_in("units")
        .into_iter()
        .filter(|name| name.ends_with(".d"))
        .map(|name| format!("/usr/lib/systemd/user/{name}"))
        .chain([
            "/usr/share/doc/qrexec-connect".to_owned(),
            "/usr/share/doc/qrexec-connect/policy-examples".to_owned(),
        ])
        .collect()
}

/// Every file of the package: path -> `MODE` or `-> TARGET`.
fn expected_files() -> BTreeMap<String, String> {
    let mut files = BTreeMap::new();
    let mut add = |path: String, what: &str| files.insert(path, what.to_owned());
    add("/usr/bin/qrexec-connect".into(), "755");
    for applet in names_in("links/bin") {
        add(format!("/usr/bin/{applet}"), "-> qrexec-connect");
    }
    for service in names_in("links/qubes-rpc") {
        add(
            format!("/etc/qubes-rpc/{service}"),
            "-> /usr/bin/qrexec-connect",
        );
    }
    for unit in units() {
        add(format!("/usr/lib/systemd/user/{unit}"), "644");
    }
    for conf in names_in("ssh") {
        add(format!("/etc/ssh/ssh_config.d/{conf}"), "644");
    }
    add("/usr/share/man/man1/qrexec-connect.1.gz".into(), "644");
    add(
        "/usr/share/man/man8/qrexec-connect-service.8.gz".into(),
        "644",
    );
    for doc in ["README.md", "CHANGELOG.md", "copyright"] {
        add(format!("/usr/share/doc/qrexec-connect/{doc}"), "644");
    }
    for entry in fs::read_dir(repo("policy-examples")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        add(
            format!("/usr/share/doc/qrexec-connect/policy-examples/{name}"),
            "644",
        );
    }
    files
}

/// What is at `path` on this machine, in `expected_files`' terms.
fn on_disk(path: &str) -> Option<String> {
    let meta = fs::symlink_metadata(path).ok()?;
    Some(if meta.file_type().is_symlink() {
        format!("-> {}", fs::read_link(path).unwrap().display())
    } else {
        format!("{:o}", meta.permissions().mode() & 0o7777)
    })
}

/// The entries of a package, by `ls -l`'s mode string: path -> `MODE` or
/// `-> TARGET`, and its directories apart. `lines` are `PERMS PATH [TARGET]`.
fn entries(lines: &[(String, String, String)]) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let mut files = BTreeMap::new();
    let mut dirs = BTreeSet::new();
    for (perms, path, target) in lines {
        let path = path.trim_end_matches('/').to_owned();
        match perms.chars().next() {
            Some('d') => {
                dirs.insert(path);
            }
            Some('l') => {
                files.insert(path, format!("-> {target}"));
            }
            _ => {
                let mode = perms[1..]
                    .chars()
                    .fold(0, |m, c| m << 1 | u32::from(c != '-'));
                files.insert(path, format!("{mode:o}"));
            }
        }
    }
    (files, dirs)
}

fn deb_entries(deb: &Path) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let listing = run_ok("dpkg-deb", &["-c", deb.to_str().unwrap()]);
    let lines: Vec<(String, String, String)> = listing
        .lines()
        .map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let path = fields[5].trim_start_matches('.').to_owned();
            let target = fields.get(7).copied().unwrap_or("").to_owned();
            (fields[0].to_owned(), path, target)
        })
        .collect();
    entries(&lines)
}

fn rpm_entries(rpm: &Path) -> (BTreeMap<String, String>, BTreeSet<String>) {
    let listing = run_ok(
        "rpm",
        &[
            "-qp",
            "--qf",
            "[%{FILEMODES:perms} %{FILENAMES} %{FILELINKTOS}\\n]",
            rpm.to_str().unwrap(),
        ],
    );
    let lines: Vec<(String, String, String)> = listing
        .lines()
        .map(|line| {
            let mut fields = line.split(' ');
            let perms = fields.next().unwrap().to_owned();
            let path = fields.next().unwrap().to_owned();
            (perms, path, fields.next().unwrap_or("").to_owned())
        })
        .collect();
    entries(&lines)
}

fn sha256(path: &Path) -> String {
    let bytes = fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    format!("{:x}", Sha256::digest(bytes))
}

/// Held while this test installs into /usr: a second run waits. `flock(1)`
/// holds the lock for as long as its `cat` reads our pipe, so a test that
/// dies releases it.
struct Lock(Child);

impl Lock {
    fn take() -> Lock {
        let path = std::env::temp_dir().join("qrexec-connect-packages-test.lock");
        let mut child = Command::new("flock")
            .arg(&path)
            .args(["sh", "-c", "echo locked; exec cat"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run flock");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "locked");
        Lock(child)
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let _ = self.0.wait();
    }
}

fn installed() -> bool {
    let out = run("dpkg-query", &["-W", "-f=${Status}", "qrexec-connect"]);
    String::from_utf8_lossy(&out.stdout).contains("ok installed")
}

/// Purges the package if it is still installed when the test ends early.
struct Purge;

impl Drop for Purge {
    fn drop(&mut self) {
        if installed() {
            let _ = run("apt-get", &["purge", "-y", "-q", "qrexec-connect"]);
        }
    }
}

/// Every entry under the directories the package touches, to compare
/// before and after: whatever was there stays, nothing else is left.
fn snapshot() -> BTreeSet<String> {
    fn walk(dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.insert(path.display().to_string());
            let is_dir = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir());
            if is_dir && depth > 0 {
                walk(&path, depth - 1, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    for (dir, depth) in [
        ("/usr/bin", 0),
        ("/etc", 1),
        ("/etc/ssh/ssh_config.d", 0),
        ("/usr/lib/systemd", 3),
        ("/usr/share/man", 1),
        ("/usr/share/doc", 1),
    ] {
        walk(Path::new(dir), depth, &mut out);
    }
    out
}

#[test]
fn packages_install_serve_and_purge() {
    let Some(dir) = packages() else { return };
    let deb = dir.join(deb_name());
    let rpm = dir.join(rpm_name());
    assert!(deb.is_file(), "{} is missing", deb.display());
    assert!(rpm.is_file(), "{} is missing", rpm.display());

    // The .rpm holds exactly the .deb's files, and the package's own
    // directories.
    let (deb_files, deb_dirs) = deb_entries(&deb);
    let (rpm_files, rpm_dirs) = rpm_entries(&rpm);
    assert_eq!(deb_files, expected_files(), "the .deb's files");
    assert_eq!(rpm_files, deb_files, "the .rpm's files against the .deb's");
    let own = own_dirs();
    assert_eq!(rpm_dirs, own, "the .rpm's directories");
    assert!(deb_dirs.is_superset(&own), "{deb_dirs:?}");

    reproducible(&deb, &rpm);

    let _lock = Lock::take();
    assert!(
        !installed() && !Path::new("/usr/bin/qrexec-connect").exists(),
        "qrexec-connect is already installed on this machine: this test installs and purges \
         the package, so it runs only where it is not"
    );
    let before = snapshot();
    let purge = Purge;
    let deb_arg = deb.canonicalize().unwrap();
    run_ok(
        "apt-get",
        &[
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            deb_arg.to_str().unwrap(),
        ],
    );
    assert!(installed());
    check_installed();
    serve_one_connection();

    run_ok("apt-get", &["purge", "-y", "-q", "qrexec-connect"]);
    drop(purge);
    assert!(!installed());
    let after = snapshot();
    let added: Vec<&String> = after.difference(&before).collect();
    let removed: Vec<&String> = before.difference(&after).collect();
    assert!(
        added.is_empty() && removed.is_empty(),
        "purge left {added:?} and removed {removed:?}"
    );
}

/// A second `make deb rpm` gives the same bytes.
fn reproducible(deb: &Path, rpm: &Path) {
    let again = TempDir::new("packages");
    let out = Command::new("make")
        .arg("-C")
        .arg(REPO)
        .args(["--no-print-directory", "deb", "rpm"])
        .arg(format!("PKGDIR={}", again.path().display()))
        .stdin(Stdio::null())
        .output()
        .expect("run make");
    assert!(out.status.success(), "make deb rpm: {out:?}");
    assert_eq!(
        sha256(&again.path().join(deb_name())),
        sha256(deb),
        "the .deb"
    );
    assert_eq!(
        sha256(&again.path().join(rpm_name())),
        sha256(rpm),
        "the .rpm"
    );
}

/// Every file, mode and link on disk, the binary, its version and its man
/// page.
fn check_installed() {
    let expected = expected_files();
    for (path, what) in &expected {
        assert_eq!(on_disk(path).as_ref(), Some(what), "{path}");
    }
    let listed: BTreeSet<String> = run_ok("dpkg", &["-L", "qrexec-connect"])
        .lines()
        .filter(|p| !Path::new(p).is_dir() || fs::symlink_metadata(p).unwrap().is_symlink())
        .map(str::to_owned)
        .collect();
    let expected_paths: BTreeSet<String> = expected.keys().cloned().collect();
    assert_eq!(listed, expected_paths, "dpkg -L");
    assert_eq!(
        fs::read("/usr/bin/qrexec-connect").unwrap(),
        fs::read(release_binary()).unwrap(),
        "the installed binary is the one make built"
    );
    let installed = run_ok("/usr/bin/qrexec-connect", &["--version"]);
    let built = run_ok(common::binary().to_str().unwrap(), &["--version"]);
    assert_eq!(installed, built);
    assert!(installed.starts_with(&format!("qrexec-connect {VERSION}")));
    let page = run_ok("man", &["-w", "qrexec-connect"]);
    assert_eq!(page.trim(), "/usr/share/man/man1/qrexec-connect.1.gz");
    let page = run_ok("man", &["-w", "8", "qrexec-connect-service"]);
    assert_eq!(
        page.trim(),
        "/usr/share/man/man8/qrexec-connect-service.8.gz"
    );
    // No maintainer scripts: installing or upgrading starts nothing.
    let control = run_ok("dpkg-query", &["--control-list", "qrexec-connect"]);
    assert_eq!(control.trim(), "md5sums", "maintainer scripts: {control}");
}

/// The installed templated unit, from /usr/lib/systemd/user, with the
/// user's drop-in as the README shows it, serves a connection through the
/// qrexec stand-in to a TCP server standing for the qube `gitweb`.
fn serve_one_connection() {
    let world = World::new();
    world
        .policy(&fs::read_to_string(repo("policy-examples/30-qrexec-connect-tcp.policy")).unwrap());
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let services = world.qube("gitweb").dir().join("etc/qubes-rpc");
    let to = server.local_addr().unwrap();
    symlink(
        format!("/dev/tcp/{}/{}", to.ip(), to.port()),
        services.join("qubes.ConnectTCP+1234"),
    )
    .unwrap();
    let Some(m) = lab::start(lab::world_setup(&world), &world) else {
        panic!("the packages were built, so the systemd user manager must run here")
    };
    let pid = std::process::id();
    let ip = Ipv4Addr::new(127, 90, (pid % 250) as u8, 1 + (pid / 250 % 250) as u8);
    m.write_user_unit(
        "qrexec-connect-tcp@1234.socket.d/gitweb.conf",
        &format!("[Socket]\nListenStream={ip}:1234\nFileDescriptorName=gitweb\n"),
    );
    m.systemctl_ok(&["daemon-reload"]);
    m.systemctl_ok(&["enable", "--now", "qrexec-connect-tcp@1234.socket"]);
    let service = "qrexec-connect-tcp@1234.service";
    assert_eq!(
        m.property(service, "FragmentPath"),
        "/usr/lib/systemd/user/qrexec-connect-tcp@.service"
    );
    assert!(
        m.property(service, "ExecStart")
            .contains("path=/usr/bin/qrexec-connect-tcp "),
        "{}",
        m.property(service, "ExecStart")
    );

    let backend = std::thread::spawn(move || {
        let (mut stream, _) = server.accept().unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut stream, &mut got).unwrap();
        std::io::Write::write_all(&mut stream, b"gitweb: ").unwrap();
        std::io::Write::write_all(&mut stream, &got).unwrap();
    });
    let mut client = TcpStream::connect_timeout(&SocketAddr::from((ip, 1234)), WAIT).unwrap();
    client.set_read_timeout(Some(WAIT)).unwrap();
    std::io::Write::write_all(&mut client, b"hello from dev").unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut client, &mut answer).unwrap();
    backend.join().unwrap();
    assert_eq!(answer, "gitweb: hello from dev");
    assert_eq!(m.is_active(service), "active");
    let calls = world.finished_calls(1);
    assert_eq!(calls.len(), 1);
    assert_eq!(
        calls[0].call_raw().as_deref(),
        Some("qubes.ConnectTCP+1234")
    );
    drop(m);
}
