//! Specifier expansion (`%i`, `%t`, ...) as a user manager applies it to a
//! socket unit's `Listen*=` and `FileDescriptorName=` values
//! (`systemd.unit(5)`, "Specifiers"; systemd's `unit_full_printf()`), and
//! the unit-name unescaping behind `%I`, `%P`, `%J` and `%f`
//! (`systemd-escape(1)`).
//!
//! Pure: the values come in a [`Specifiers`]. A specifier systemd knows but
//! that is not here (`%H`, `%m`, ...) is refused rather than guessed.

/// What the specifiers stand for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Specifiers {
    /// The full unit name, e.g. `qrexec-connect-tcp@1234.socket` (`%n`).
    pub unit: String,
    /// The manager's runtime directory, `$XDG_RUNTIME_DIR` (`%t`).
    pub runtime_dir: Option<String>,
    /// The user's home directory (`%h`).
    pub home: Option<String>,
    /// The user's name (`%u`).
    pub user: Option<String>,
    /// The user's id (`%U`).
    pub uid: u32,
}

/// Specifiers systemd expands in these settings that are not supported here.
const UNSUPPORTED: &str = "aAbBCdDEgGHlLmMovqsSTVwWyYcrR";

impl Specifiers {
    /// The unit name without its type suffix (`%N`).
    fn without_suffix(&self) -> &str {
        self.unit.rsplit_once('.').map_or(&self.unit, |(n, _)| n)
    }

    /// The part before `@`, or the whole name without suffix (`%p`).
    fn prefix(&self) -> &str {
        let name = self.without_suffix();
        name.split_once('@').map_or(name, |(p, _)| p)
    }

    /// The part between `@` and the suffix (`%i`), if any.
    fn instance(&self) -> Option<&str> {
        self.without_suffix().split_once('@').map(|(_, i)| i)
    }

    /// The last dash-separated part of the prefix (`%j`).
    fn last_component(&self) -> &str {
        let prefix = self.prefix();
        prefix.rsplit_once('-').map_or(prefix, |(_, last)| last)
    }

    fn value(&self, c: char) -> Result<String, String> {
        let required = |v: &Option<String>, what: &str| {
            v.clone()
                .ok_or_else(|| format!("%{c} ({what}) is not known here"))
        };
        Ok(match c {
            'n' => self.unit.clone(),
            'N' => self.without_suffix().to_owned(),
            'p' => self.prefix().to_owned(),
            'P' => unescape(self.prefix())?,
            'i' => self.instance().unwrap_or("").to_owned(),
            'I' => unescape(self.instance().unwrap_or(""))?,
            'j' => self.last_component().to_owned(),
            'J' => unescape(self.last_component())?,
            'f' => path_unescape(self.instance().unwrap_or(self.prefix()))?,
            't' => required(&self.runtime_dir, "the runtime directory")?,
            'h' => required(&self.home, "the home directory")?,
            'u' => required(&self.user, "the user name")?,
            'U' => self.uid.to_string(),
            c if UNSUPPORTED.contains(c) => {
                return Err(format!("specifier %{c} is not supported by qrexec-connect"));
            }
            c => return Err(format!("unknown specifier %{c}")),
        })
    }
}

/// Expands the specifiers in `text`. As systemd does, `%%` is `%`, a `%`
/// before a character that is not a letter or digit stays as written, and
/// a `%` at the end stays.
pub fn expand(text: &str, values: &Specifiers) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            None => out.push('%'),
            Some('%') => out.push('%'),
            Some(s) if s.is_ascii_alphanumeric() => out.push_str(&values.value(s)?),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
        }
    }
    Ok(out)
}

/// Undoes `systemd-escape`: `-` is `/`, `\xNN` is the byte NN.
pub fn unescape(s: &str) -> Result<String, String> {
    let bad = || format!("{s:?} is not a valid escaped unit name part");
    let mut bytes = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'-' => bytes.push(b'/'),
            b'\\' => {
                let [b'x', hi, lo, tail @ ..] = rest else {
                    return Err(bad());
                };
                let hex = |h: u8| (h as char).to_digit(16).ok_or_else(bad);
                let byte = (hex(*hi)? << 4 | hex(*lo)?) as u8;
                if byte == 0 {
                    return Err(bad());
                }
                bytes.push(byte);
                rest = tail;
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).map_err(|_| bad())
}

/// Undoes `systemd-escape --path`: `-` alone is `/`; otherwise the
/// unescaped name with a leading `/`, which must be a normalized path.
pub fn path_unescape(s: &str) -> Result<String, String> {
    if s == "-" {
        return Ok("/".into());
    }
    let path = unescape(s)?;
    let normalized =
        !path.is_empty() && path.split('/').all(|part| !matches!(part, "" | "." | ".."));
    if !normalized {
        return Err(format!("{s:?} is not an escaped path"));
    }
    Ok(format!("/{path}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(unit: &str) -> Specifiers {
        Specifiers {
            unit: unit.into(),
            runtime_dir: Some("/run/user/1000".into()),
            home: Some("/home/user".into()),
            user: Some("user".into()),
            uid: 1000,
        }
    }

    #[test]
    fn user_unit_specifiers() {
        let v = user("qrexec-connect-unix@gpg\\x2dagent-ssh.socket");
        let x = |t: &str| expand(t, &v).unwrap();
        assert_eq!(
            x("%t/qrexec-connect-unix/S.gpg-agent.ssh"),
            "/run/user/1000/qrexec-connect-unix/S.gpg-agent.ssh"
        );
        assert_eq!(x("%h/%u/%U"), "/home/user/user/1000");
        assert_eq!(x("%i"), "gpg\\x2dagent-ssh");
        assert_eq!(x("%I"), "gpg-agent/ssh");
        assert_eq!(x("%f"), "/gpg-agent/ssh");
        assert_eq!(x("%n"), "qrexec-connect-unix@gpg\\x2dagent-ssh.socket");
        assert_eq!(x("%N"), "qrexec-connect-unix@gpg\\x2dagent-ssh");
        assert_eq!(
            x("%p|%P|%j|%J"),
            "qrexec-connect-unix|qrexec/connect/unix|unix|unix"
        );
        assert_eq!(x("100%% %"), "100% %");
        assert_eq!(x("a%-b%/"), "a%-b%/");
    }

    #[test]
    fn plain_units() {
        let v = user("my-socket.socket");
        assert_eq!(
            expand("%i|%p|%j|%f", &v).unwrap(),
            "|my-socket|socket|/my/socket"
        );
        let v = user("qrexec-connect-tcp@1234.socket");
        assert_eq!(expand("127.0.0.1:%i", &v).unwrap(), "127.0.0.1:1234");
    }

    #[test]
    fn refuses_what_it_cannot_know() {
        let mut v = user("a@b.socket");
        for bad in ["%H", "%m", "%z", "%Z", "%9", "%s"] {
            assert!(expand(bad, &v).is_err(), "{bad}");
        }
        v.runtime_dir = None;
        assert!(expand("%t/x", &v).is_err());
        let v = user("a@b\\x2.socket");
        assert!(expand("%I", &v).is_err());
    }

    #[test]
    fn unescaping_as_systemd_escape() {
        assert_eq!(unescape("a-b").unwrap(), "a/b");
        assert_eq!(unescape("a\\x2db").unwrap(), "a-b");
        assert_eq!(unescape("foo\\x2Fbar").unwrap(), "foo/bar");
        for bad in ["\\x00", "\\x4", "\\y41", "\\", "\\xff"] {
            assert!(unescape(bad).is_err(), "{bad}");
        }
        assert_eq!(path_unescape("-").unwrap(), "/");
        assert_eq!(path_unescape("a-b").unwrap(), "/a/b");
        for bad in ["", "a--b", "-a", "a-", "a-.-b", "a-..-b"] {
            assert!(path_unescape(bad).is_err(), "{bad}");
        }
    }
}
