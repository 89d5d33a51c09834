//! Where a user manager finds a unit's file and its drop-ins
//! (`systemd.unit(5)`, "Unit File Load Path" and the `.d/` directories;
//! systemd's `lookup_paths_init()` and `unit_file_find_dropin_paths()`).
//!
//! The search path, in priority order, is what `systemd-analyze --user
//! unit-paths` prints. In each of its directories, the drop-in directories
//! of `foo-bar@baz.socket` are `foo-bar@baz.socket.d/`, the template's
//! `foo-bar@.socket.d/`, then the dash prefixes' (`foo-.socket.d/`,
//! `foo-@baz.socket.d/`, ...), and after every directory of the path the
//! top-level `socket.d/`. Their `*.conf` files apply sorted by file name; a
//! file named like one in an earlier directory is masked by it.
//!
//! Everything here is pure but [`list_conf_files`] and [`find_fragment`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The environment a user manager computes its search path from.
#[derive(Clone, Debug, Default)]
pub struct UserEnv {
    pub home: Option<String>,
    pub runtime_dir: Option<String>,
    pub config_home: Option<String>,
    pub config_dirs: Option<String>,
    pub data_home: Option<String>,
    pub data_dirs: Option<String>,
    /// `$SYSTEMD_UNIT_PATH`: replaces the path; a trailing `:` appends it.
    pub unit_path: Option<String>,
}

impl UserEnv {
    /// Reads the variables of our own environment, which a user manager
    /// passes on to its services.
    pub fn from_env() -> Self {
        let var = |name| std::env::var(name).ok();
        UserEnv {
            home: var("HOME"),
            runtime_dir: var("XDG_RUNTIME_DIR"),
            config_home: var("XDG_CONFIG_HOME"),
            config_dirs: var("XDG_CONFIG_DIRS"),
            data_home: var("XDG_DATA_HOME"),
            data_dirs: var("XDG_DATA_DIRS"),
            unit_path: var("SYSTEMD_UNIT_PATH"),
        }
    }
}

fn absolute(s: &Option<String>) -> Option<&str> {
    s.as_deref().filter(|s| s.starts_with('/'))
}

/// The user unit search path, highest priority first, as systemd 252
/// builds it; directories it cannot name (no `$HOME`, no runtime dir)
/// are left out, as systemd leaves them out.
pub fn user_unit_path(env: &UserEnv) -> Vec<PathBuf> {
    let home = absolute(&env.home);
    let runtime = absolute(&env.runtime_dir).map(|r| format!("{r}/systemd"));
    let under_home = |xdg: &Option<String>, default: &str| match absolute(xdg) {
        Some(dir) => Some(dir.to_owned()),
        None => home.map(|h| format!("{h}/{default}")),
    };
    let config_home = under_home(&env.config_home, ".config");
    let data_home = under_home(&env.data_home, ".local/share");
    let list = |dirs: &Option<String>, default: &str| -> Vec<String> {
        let dirs = dirs.as_deref().filter(|d| !d.is_empty()).unwrap_or(default);
        dirs.split(':')
            .filter(|d| d.starts_with('/'))
            .map(|d| format!("{d}/systemd/user"))
            .collect()
    };
    let mut path: Vec<Option<String>> = vec![
        config_home
            .as_ref()
            .map(|c| format!("{c}/systemd/user.control")),
        runtime.as_ref().map(|r| format!("{r}/user.control")),
        runtime.as_ref().map(|r| format!("{r}/transient")),
        runtime.as_ref().map(|r| format!("{r}/generator.early")),
        config_home.as_ref().map(|c| format!("{c}/systemd/user")),
    ];
    path.extend(list(&env.config_dirs, "/etc/xdg").into_iter().map(Some));
    path.extend([
        Some("/etc/systemd/user".to_owned()),
        runtime.as_ref().map(|r| format!("{r}/user")),
        Some("/run/systemd/user".to_owned()),
        runtime.as_ref().map(|r| format!("{r}/generator")),
        data_home.as_ref().map(|d| format!("{d}/systemd/user")),
    ]);
    path.extend(
        list(&env.data_dirs, "/usr/local/share:/usr/share")
            .into_iter()
            .map(Some),
    );
    path.extend([
        Some("/usr/local/lib/systemd/user".to_owned()),
        Some("/usr/lib/systemd/user".to_owned()),
        runtime.as_ref().map(|r| format!("{r}/generator.late")),
    ]);
    let defaults = path.into_iter().flatten();
    let mut all: Vec<String> = match env.unit_path.as_deref().filter(|p| !p.is_empty()) {
        Some(custom) => {
            let own = custom
                .split(':')
                .filter(|d| d.starts_with('/'))
                .map(str::to_owned);
            if custom.ends_with(':') {
                own.chain(defaults).collect()
            } else {
                own.collect()
            }
        }
        None => defaults.collect(),
    };
    let mut seen = std::collections::HashSet::new();
    all.retain(|d| seen.insert(d.clone()));
    all.into_iter().map(PathBuf::from).collect()
}

/// A unit name split as systemd splits it: prefix, instance (after `@`)
/// and type suffix.
fn split_name(name: &str) -> Option<(&str, Option<&str>, &str)> {
    let (stem, suffix) = name.rsplit_once('.')?;
    match stem.split_once('@') {
        Some((prefix, instance)) => Some((prefix, Some(instance), suffix)),
        None => Some((stem, None, suffix)),
    }
}

/// `unit_file_find_dirs()` for one directory of the search path: the
/// names of the drop-in directories of `name`, most specific first.
fn dropin_names(name: &str, out: &mut Vec<String>) {
    out.push(format!("{name}.d"));
    let Some((prefix, instance, suffix)) = split_name(name) else {
        return;
    };
    let is_instance = instance.is_some_and(|i| !i.is_empty());
    if is_instance {
        dropin_names(&format!("{prefix}@.{suffix}"), out);
    }
    // The prefix up to and including its last dash; a trailing dash is
    // chopped once first, so that foo-bar-.socket leads to foo-.socket.
    let chopped = prefix.strip_suffix('-').unwrap_or(prefix);
    let Some(dash) = chopped.rfind('-').filter(|&d| d > 0) else {
        return;
    };
    let shorter = &prefix[..=dash];
    match instance.filter(|_| is_instance) {
        Some(instance) => dropin_names(&format!("{shorter}@{instance}.{suffix}"), out),
        None => dropin_names(&format!("{shorter}.{suffix}"), out),
    }
}

/// The drop-in directories of `unit` in systemd's order: for each
/// directory of the search path the unit's own, its template's and its
/// prefixes', then the top-level `TYPE.d/` of each.
pub fn dropin_dirs(search_path: &[PathBuf], unit: &str) -> Vec<PathBuf> {
    let mut names = Vec::new();
    dropin_names(unit, &mut names);
    let mut dirs: Vec<PathBuf> = Vec::new();
    for dir in search_path {
        dirs.extend(names.iter().map(|n| dir.join(n)));
    }
    if let Some((_, _, suffix)) = split_name(unit) {
        dirs.extend(
            search_path
                .iter()
                .map(|dir| dir.join(format!("{suffix}.d"))),
        );
    }
    let mut seen = std::collections::HashSet::new();
    dirs.retain(|d| seen.insert(d.clone()));
    dirs
}

/// Whether systemd reads a directory entry as a drop-in: `*.conf`, not
/// hidden.
pub fn is_conf_name(name: &str) -> bool {
    name.ends_with(".conf") && !name.starts_with('.')
}

/// The drop-ins that apply, given each directory's entries (in the order
/// of [`dropin_dirs`]): sorted by file name, the first directory holding
/// a name masking the others.
pub fn select(listing: &[(PathBuf, Vec<String>)]) -> Vec<PathBuf> {
    let mut chosen: BTreeMap<&str, PathBuf> = BTreeMap::new();
    for (dir, names) in listing {
        for name in names.iter().filter(|n| is_conf_name(n)) {
            chosen.entry(name).or_insert_with(|| dir.join(name));
        }
    }
    chosen.into_values().collect()
}

/// Lists the `*.conf` entries of each directory that exists (regular
/// files and symlinks; a symlink to `/dev/null` masks as an empty file).
pub fn list_conf_files(dirs: &[PathBuf]) -> std::io::Result<Vec<(PathBuf, Vec<String>)>> {
    let mut listing = Vec::new();
    for dir in dirs {
        let entries = match std::fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => continue,
            Err(e) => return Err(e),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry?;
            let kind = entry.file_type()?;
            if !(kind.is_file() || kind.is_symlink()) {
                continue;
            }
            if let Some(name) = entry.file_name().to_str().filter(|n| is_conf_name(n)) {
                names.push(name.to_owned());
            }
        }
        listing.push((dir.clone(), names));
    }
    Ok(listing)
}

/// The unit file systemd loads for `unit`: the first directory of the
/// search path holding the unit's name, else its template's.
pub fn find_fragment(search_path: &[PathBuf], unit: &str) -> Option<PathBuf> {
    let first = |name: &str| {
        search_path
            .iter()
            .map(|dir| dir.join(name))
            .find(|p| Path::new(p).symlink_metadata().is_ok())
    };
    first(unit).or_else(|| match split_name(unit)? {
        (prefix, Some(i), suffix) if !i.is_empty() => first(&format!("{prefix}@.{suffix}")),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(unit: &str) -> Vec<String> {
        let mut out = Vec::new();
        dropin_names(unit, &mut out);
        let mut seen = std::collections::HashSet::new();
        out.retain(|d| seen.insert(d.clone()));
        out
    }

    #[test]
    fn dropin_dirs_of_an_instance() {
        assert_eq!(
            names("qrexec-connect-tcp@1234.socket"),
            [
                "qrexec-connect-tcp@1234.socket.d",
                "qrexec-connect-tcp@.socket.d",
                "qrexec-connect-.socket.d",
                "qrexec-.socket.d",
                "qrexec-connect-@1234.socket.d",
                "qrexec-connect-@.socket.d",
                "qrexec-@1234.socket.d",
                "qrexec-@.socket.d",
            ]
        );
        assert_eq!(names("plain.socket"), ["plain.socket.d"]);
        assert_eq!(names("-a.socket"), ["-a.socket.d"]);
        assert_eq!(names("a-b-.socket"), ["a-b-.socket.d", "a-.socket.d"]);
    }

    #[test]
    fn dirs_are_path_major_then_top_level() {
        let path = [PathBuf::from("/h"), PathBuf::from("/u")];
        let dirs = dropin_dirs(&path, "a-b@1.socket");
        let shown: Vec<_> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(
            shown,
            [
                "/h/a-b@1.socket.d",
                "/h/a-b@.socket.d",
                "/h/a-.socket.d",
                "/h/a-@1.socket.d",
                "/h/a-@.socket.d",
                "/u/a-b@1.socket.d",
                "/u/a-b@.socket.d",
                "/u/a-.socket.d",
                "/u/a-@1.socket.d",
                "/u/a-@.socket.d",
                "/h/socket.d",
                "/u/socket.d",
            ]
        );
    }

    #[test]
    fn files_sorted_by_name_earlier_dirs_mask() {
        let listing = vec![
            (
                PathBuf::from("/home/x.d"),
                vec!["work.conf".into(), "notes.txt".into()],
            ),
            (
                PathBuf::from("/etc/x.d"),
                vec!["work.conf".into(), "gitweb.conf".into()],
            ),
            (
                PathBuf::from("/usr/x@.d"),
                vec!["service.conf".into(), ".hidden.conf".into()],
            ),
        ];
        let shown: Vec<_> = select(&listing)
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            shown,
            [
                "/etc/x.d/gitweb.conf",
                "/usr/x@.d/service.conf",
                "/home/x.d/work.conf"
            ]
        );
    }

    #[test]
    fn the_user_search_path() {
        let env = UserEnv {
            home: Some("/home/user".into()),
            runtime_dir: Some("/run/user/1000".into()),
            ..UserEnv::default()
        };
        let shown: Vec<_> = user_unit_path(&env)
            .into_iter()
            .map(|p| p.display().to_string())
            .collect();
        // `systemd-analyze --user unit-paths` of systemd 252.
        assert_eq!(
            shown,
            [
                "/home/user/.config/systemd/user.control",
                "/run/user/1000/systemd/user.control",
                "/run/user/1000/systemd/transient",
                "/run/user/1000/systemd/generator.early",
                "/home/user/.config/systemd/user",
                "/etc/xdg/systemd/user",
                "/etc/systemd/user",
                "/run/user/1000/systemd/user",
                "/run/systemd/user",
                "/run/user/1000/systemd/generator",
                "/home/user/.local/share/systemd/user",
                "/usr/local/share/systemd/user",
                "/usr/share/systemd/user",
                "/usr/local/lib/systemd/user",
                "/usr/lib/systemd/user",
                "/run/user/1000/systemd/generator.late",
            ]
        );
        let custom = UserEnv {
            unit_path: Some("/a:/b".into()),
            ..env.clone()
        };
        assert_eq!(
            user_unit_path(&custom),
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
        let appended = UserEnv {
            unit_path: Some("/a:".into()),
            ..env
        };
        assert_eq!(user_unit_path(&appended).len(), 17);
    }
}
