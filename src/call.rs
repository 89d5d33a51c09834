//! qrexec targets and calls, and the socket names that carry them: pure parsers.
//!
//! `qrexec-client-vm(1)` silently rewrites what it cannot send: every byte
//! outside `A-Za-z0-9_.-+` in `SERVICE+ARG` and outside `A-Za-z0-9_.-@:` in
//! the target becomes `_`, `$` in a target becomes `@`, and a target is cut at
//! 63 bytes. A call rewritten like that reaches another service or another
//! qube than the one the user wrote, so everything here refuses such values
//! instead; the daemon checks every socket once at start-up.

use std::fmt;

/// The longest target or call qrexec carries unchanged (a 64-byte field, NUL included).
pub const MAX_FIELD: usize = 63;
/// The longest qube name Qubes accepts.
pub const MAX_QUBE_NAME: usize = 31;

/// Where a call goes: a qube, or one of the keywords qrexec resolves in dom0.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target(String);

impl Target {
    /// `@default`: dom0 policy picks the qube (`target=` in an allow rule).
    pub fn default_target() -> Self {
        Target("@default".to_owned())
    }

    /// Parses a target as written in a socket name, where `:` cannot appear:
    /// `@dispvm+TEMPLATE` stands for qrexec's `@dispvm:TEMPLATE`, and the
    /// older `$` spelling of keywords is accepted for `@`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty target".into());
        }
        if s.len() > MAX_FIELD {
            return Err(format!("target longer than {MAX_FIELD} bytes"));
        }
        let normalized = match s.strip_prefix('$') {
            Some(rest) => format!("@{rest}"),
            None => s.to_owned(),
        };
        let Some(keyword) = normalized.strip_prefix('@') else {
            qube_name(&normalized)?;
            return Ok(Target(normalized));
        };
        let (word, template) = match keyword.split_once(['+', ':']) {
            Some((word, template)) => (word, Some(template)),
            None => (keyword, None),
        };
        match (word, template) {
            ("default" | "adminvm" | "dispvm", None) => Ok(Target(format!("@{word}"))),
            ("dispvm", Some(template)) => {
                qube_name(template).map_err(|e| format!("disposable template: {e}"))?;
                Ok(Target(format!("@dispvm:{template}")))
            }
            _ => Err(format!(
                "unknown target keyword '@{}' (use a qube name, @default, @adminvm, @dispvm or @dispvm+TEMPLATE)",
                keyword.escape_debug()
            )),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Checks a qube name the way Qubes does: a letter first, then `A-Za-z0-9_.-`.
fn qube_name(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("empty qube name".into());
    }
    if s.len() > MAX_QUBE_NAME {
        return Err(format!("qube name longer than {MAX_QUBE_NAME} characters"));
    }
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err("a qube name starts with a letter".into());
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(format!(
            "character {c:?} is not allowed in a qube name (A-Z a-z 0-9 _ . -)"
        ));
    }
    Ok(())
}

/// Whether qrexec carries this byte of `SERVICE+ARG` unchanged.
pub fn is_call_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-' | '+')
}

/// What is called: `SERVICE` or `SERVICE+ARG`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call(String);

impl Call {
    /// Parses `SERVICE[+ARG]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s.is_empty() {
            return Err("empty service name".into());
        }
        if s.starts_with('+') {
            return Err("a call starts with the service name, not '+'".into());
        }
        if s.len() > MAX_FIELD {
            return Err(format!("call longer than {MAX_FIELD} bytes"));
        }
        if let Some(c) = s.chars().find(|&c| !is_call_char(c)) {
            return Err(format!(
                "character {c:?} is not allowed in a call (A-Z a-z 0-9 _ . - +)"
            ));
        }
        Ok(Call(s.to_owned()))
    }

    /// Joins a service and its argument (`None` or empty: no argument).
    pub fn new(service: &str, argument: Option<&str>) -> Result<Self, String> {
        if service.contains('+') {
            return Err(format!(
                "service name '{}' contains '+'; give the argument separately",
                service.escape_debug()
            ));
        }
        match argument {
            Some(arg) if !arg.is_empty() => Call::parse(&format!("{service}+{arg}")),
            _ => Call::parse(service),
        }
    }

    pub fn service(&self) -> &str {
        self.0.split_once('+').map_or(&self.0, |(s, _)| s)
    }

    pub fn argument(&self) -> Option<&str> {
        self.0.split_once('+').map(|(_, a)| a)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a socket's FileDescriptorName says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdName {
    /// No name (LISTEN_FDNAMES unset) or systemd's default name (`UNIT.socket`,
    /// or `connection` for `Accept=yes`): `@default`, call from the applet.
    Unnamed,
    /// `TARGET`: the call comes from the applet.
    Target(Target),
    /// `TARGET SERVICE[+ARG]`: the whole call (the one-service form).
    Full(Target, Call),
}

impl FdName {
    /// Parses one name of LISTEN_FDNAMES (`None` when the variable is unset).
    pub fn parse(name: Option<&str>) -> Result<Self, String> {
        let Some(name) = name else {
            return Ok(FdName::Unnamed);
        };
        if name.is_empty() {
            return Err("empty FileDescriptorName".into());
        }
        if name.ends_with(".socket") || name == "connection" {
            return Ok(FdName::Unnamed);
        }
        let mut words = name.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some(target), None, _) => Ok(FdName::Target(Target::parse(target)?)),
            (Some(target), Some(call), None) => Ok(FdName::Full(
                Target::parse(target)?,
                Call::parse(call).map_err(|e| format!("{e} in '{}'", call.escape_debug()))?,
            )),
            _ => Err("more than two words (the form is TARGET or 'TARGET SERVICE+ARG')".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets() {
        for (input, want) in [
            ("work", "work"),
            ("@default", "@default"),
            ("$default", "@default"),
            ("@dispvm", "@dispvm"),
            ("@adminvm", "@adminvm"),
            ("@dispvm+fedora-dvm", "@dispvm:fedora-dvm"),
            ("@dispvm:fedora-dvm", "@dispvm:fedora-dvm"),
            ("$dispvm:debian-12-dvm", "@dispvm:debian-12-dvm"),
            ("sys.net_2", "sys.net_2"),
        ] {
            assert_eq!(Target::parse(input).unwrap().as_str(), want, "{input}");
        }
        let long = "a".repeat(MAX_QUBE_NAME);
        assert!(Target::parse(&long).is_ok());
        for bad in [
            "",
            "a/b",
            "a;b",
            "a b",
            "wörk",
            "2work",
            "-work",
            "@anyvm",
            "@tag:x",
            "@dispvm+",
            "@dispvm+a/b",
            "a$b",
            "$",
            "@",
            "work\n",
            &"a".repeat(MAX_QUBE_NAME + 1),
            &format!("@dispvm+{}", "a".repeat(MAX_QUBE_NAME + 1)),
        ] {
            assert!(Target::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn calls() {
        let c = Call::parse("qubes.ConnectTCP+22").unwrap();
        assert_eq!(
            (c.service(), c.argument()),
            ("qubes.ConnectTCP", Some("22"))
        );
        let c = Call::parse("qubes.GetDate").unwrap();
        assert_eq!((c.service(), c.argument()), ("qubes.GetDate", None));
        assert_eq!(
            Call::new("qubes.ConnectTCP", Some("22")).unwrap(),
            Call::parse("qubes.ConnectTCP+22").unwrap()
        );
        assert_eq!(
            Call::new("qubes.X", Some("")).unwrap().as_str(),
            "qubes.X",
            "an empty argument is no argument"
        );
        assert!(Call::parse(&format!("s+{}", "a".repeat(MAX_FIELD - 2))).is_ok());
        for bad in [
            "",
            "+22",
            "a b",
            "a/b",
            "a:b",
            "a@b",
            "ä",
            "a\0",
            &format!("s+{}", "a".repeat(MAX_FIELD - 1)),
        ] {
            assert!(Call::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(Call::new("a+b", Some("c")).is_err());
    }

    #[test]
    fn fd_names() {
        assert_eq!(FdName::parse(None).unwrap(), FdName::Unnamed);
        assert_eq!(
            FdName::parse(Some("qrexec-connect-tcp@22.socket")).unwrap(),
            FdName::Unnamed
        );
        assert_eq!(FdName::parse(Some("connection")).unwrap(), FdName::Unnamed);
        assert_eq!(
            FdName::parse(Some("work")).unwrap(),
            FdName::Target(Target::parse("work").unwrap())
        );
        assert_eq!(
            FdName::parse(Some("@default qubes.ConnectTCP+1234")).unwrap(),
            FdName::Full(
                Target::default_target(),
                Call::parse("qubes.ConnectTCP+1234").unwrap()
            )
        );
        for bad in [
            "",
            " ",
            "work ",
            " work",
            "a b c",
            "work  qubes.X",
            "work qubes.X/y",
            "wo/rk",
            "work qubes.X+;rm",
        ] {
            assert!(FdName::parse(Some(bad)).is_err(), "{bad:?} accepted");
        }
    }
}
