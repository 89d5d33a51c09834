//! qrexec targets and calls, and the socket names that carry them: pure parsers.
//!
//! `qrexec-client-vm(1)` silently rewrites what it cannot send: every byte
//! outside `A-Za-z0-9_.-+` in `SERVICE+ARG` and outside `A-Za-z0-9_.-@:` in
//! the target becomes `_`, `$` in a target becomes `@`, and a target is cut at
//! 63 bytes. A call rewritten like that reaches another service or another
//! qube than the one the user wrote, so everything here refuses such values
//! instead; the daemon checks every socket once at start-up.

use std::fmt;

use crate::error::ParseError;
use crate::parse_error::QubeNameError;

pub use crate::fd_name::{FdName, SystemdDefault};

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
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() {
            return Err(ParseError::EmptyTarget);
        }
        if s.len() > MAX_FIELD {
            return Err(ParseError::TargetTooLong);
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
                qube_name(template).map_err(ParseError::DisposableTemplate)?;
                Ok(Target(format!("@dispvm:{template}")))
            }
            _ => Err(ParseError::UnknownKeyword(keyword.to_owned())),
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
fn qube_name(s: &str) -> Result<(), QubeNameError> {
    if s.is_empty() {
        return Err(QubeNameError::Empty);
    }
    if s.len() > MAX_QUBE_NAME {
        return Err(QubeNameError::TooLong);
    }
    if !s.starts_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(QubeNameError::FirstNotLetter);
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')))
    {
        return Err(QubeNameError::Char(c));
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
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() {
            return Err(ParseError::EmptyService);
        }
        if s.starts_with('+') {
            return Err(ParseError::CallStartsWithPlus);
        }
        if s.len() > MAX_FIELD {
            return Err(ParseError::CallTooLong);
        }
        if let Some(c) = s.chars().find(|&c| !is_call_char(c)) {
            return Err(ParseError::CallChar(c));
        }
        Ok(Call(s.to_owned()))
    }

    /// Joins a service and its argument (`None` or empty: no argument).
    pub fn new(service: &str, argument: Option<&str>) -> Result<Self, ParseError> {
        if service.contains('+') {
            return Err(ParseError::ServiceWithPlus(service.to_owned()));
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
        assert_eq!(Target::parse(&long).unwrap().as_str(), long);
        use QubeNameError as Q;
        let too_long = "a".repeat(MAX_QUBE_NAME + 1);
        let long_template = format!("@dispvm+{}", "a".repeat(MAX_QUBE_NAME + 1));
        for (bad, why) in [
            ("", ParseError::EmptyTarget),
            ("a/b", ParseError::QubeName(Q::Char('/'))),
            ("a;b", ParseError::QubeName(Q::Char(';'))),
            ("a b", ParseError::QubeName(Q::Char(' '))),
            ("wörk", ParseError::QubeName(Q::Char('ö'))),
            ("2work", ParseError::QubeName(Q::FirstNotLetter)),
            ("-work", ParseError::QubeName(Q::FirstNotLetter)),
            ("@anyvm", ParseError::UnknownKeyword("anyvm".into())),
            ("@tag:x", ParseError::UnknownKeyword("tag:x".into())),
            ("@dispvm+", ParseError::DisposableTemplate(Q::Empty)),
            ("@dispvm+a/b", ParseError::DisposableTemplate(Q::Char('/'))),
            ("a$b", ParseError::QubeName(Q::Char('$'))),
            ("$", ParseError::UnknownKeyword(String::new())),
            ("@", ParseError::UnknownKeyword(String::new())),
            ("work\n", ParseError::QubeName(Q::Char('\n'))),
            (&too_long, ParseError::QubeName(Q::TooLong)),
            (&long_template, ParseError::DisposableTemplate(Q::TooLong)),
            (&"a".repeat(MAX_FIELD + 1), ParseError::TargetTooLong),
        ] {
            assert_eq!(Target::parse(bad), Err(why), "{bad:?}");
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
        let longest = format!("s+{}", "a".repeat(MAX_FIELD - 2));
        assert_eq!(Call::parse(&longest).unwrap().as_str(), longest);
        for (bad, why) in [
            ("", ParseError::EmptyService),
            ("+22", ParseError::CallStartsWithPlus),
            ("a b", ParseError::CallChar(' ')),
            ("a/b", ParseError::CallChar('/')),
            ("a:b", ParseError::CallChar(':')),
            ("a@b", ParseError::CallChar('@')),
            ("ä", ParseError::CallChar('ä')),
            ("a\0", ParseError::CallChar('\0')),
            (
                &format!("s+{}", "a".repeat(MAX_FIELD - 1)),
                ParseError::CallTooLong,
            ),
        ] {
            assert_eq!(Call::parse(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            Call::new("a+b", Some("c")),
            Err(ParseError::ServiceWithPlus("a+b".into()))
        );
    }
}
