//! What a passed socket's FileDescriptorName (LISTEN_FDNAMES,
//! `sd_listen_fds_with_names(3)`) says: a target, a whole call, or
//! systemd's default name, which means "no name": pure.

use crate::call::{Call, Target};
use crate::error::ParseError;

/// What a socket's FileDescriptorName says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FdName {
    /// No name (LISTEN_FDNAMES unset) or systemd's default name
    /// ([`SystemdDefault`]): `@default`, call from the applet.
    Unnamed,
    /// `TARGET`: the call comes from the applet.
    Target(Target),
    /// `TARGET SERVICE[+ARG]`: the whole call (the one-service form).
    Full(Target, Call),
}

impl FdName {
    /// Parses one name of LISTEN_FDNAMES as written (`None` when the
    /// variable is unset): every name given is a target or a whole call.
    pub fn parse(name: Option<&str>) -> Result<Self, ParseError> {
        let Some(name) = name else {
            return Ok(FdName::Unnamed);
        };
        if name.is_empty() {
            return Err(ParseError::EmptyFdName);
        }
        let mut words = name.split(' ');
        match (words.next(), words.next(), words.next()) {
            (Some(target), None, _) => Ok(FdName::Target(Target::parse(target)?)),
            (Some(target), Some(call), None) => Ok(FdName::Full(
                Target::parse(target)?,
                Call::parse(call)
                    .map_err(|e| ParseError::CallInFdName(Box::new(e), call.to_owned()))?,
            )),
            _ => Err(ParseError::TooManyWords),
        }
    }

    /// Parses the name of a passed socket: systemd's default name is
    /// [`FdName::Unnamed`], any other as [`FdName::parse`] reads it. A name
    /// only the manager can place ([`SystemdDefault::is`] is `None`) is
    /// refused: never guessed.
    pub fn parse_passed(
        name: Option<&str>,
        default: &SystemdDefault<'_>,
    ) -> Result<Self, ParseError> {
        let Some(name) = name else {
            return Ok(FdName::Unnamed);
        };
        match default.is(name) {
            Some(true) => Ok(FdName::Unnamed),
            Some(false) => FdName::parse(Some(name)),
            None => Err(ParseError::DefaultUnknown(name.to_owned())),
        }
    }
}

/// The FileDescriptorName systemd gives a socket whose unit sets none
/// (`FileDescriptorName=` in systemd.socket(5)): `connection` for the
/// connection of an `Accept=yes` unit, else the name of the socket unit
/// that passed it.
///
/// So on a listening socket a name is systemd's default exactly when it is
/// the name of a socket unit that triggers our service: the one named like
/// it (`qrexec-connect-tcp@22.socket` for `qrexec-connect-tcp@22.service`,
/// known from our cgroup alone), or another whose `Service=` we are, which
/// only our manager can say (`triggered_by`). Any other name is what it
/// says: `connection` and `my.socket` are qube names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemdDefault<'a> {
    /// An `Accept=yes` connection, not a listening socket.
    pub accepted: bool,
    /// The socket unit named like our service; `None` when we run in no
    /// service.
    pub own_socket_unit: Option<&'a str>,
    /// The units that trigger our service, once its manager was asked.
    pub triggered_by: Option<&'a [String]>,
}

impl SystemdDefault<'_> {
    /// Whether `name` is systemd's default for this socket; `None` when
    /// only [`SystemdDefault::triggered_by`], not yet known, can tell: a
    /// unit name ending in `.socket` that is not our own unit's, in a
    /// service. The common names (a qube, a whole call, our own socket
    /// unit's) never need it.
    ///
    /// Outside a service no socket unit passed the sockets, and a name like
    /// a socket unit's is one a user wrote by hand
    /// (`systemd-socket-activate --fdname=`) to stand for that unit's
    /// default: taken so when it cannot be a qube (a template instance's `@`).
    pub fn is(&self, name: &str) -> Option<bool> {
        if self.accepted {
            return Some(name == "connection");
        }
        if !name.ends_with(".socket") || !is_unit_name(name) {
            return Some(false);
        }
        let Some(own) = self.own_socket_unit else {
            return Some(Target::parse(name).is_err());
        };
        if own == name {
            return Some(true);
        }
        self.triggered_by
            .map(|units| units.iter().any(|unit| unit == name))
    }
}

/// Whether `s` could be a systemd unit name (`systemd.unit(5)`: ASCII
/// letters, digits, `:-_.\`, one `@` for a template's instance, at most
/// 255 bytes).
fn is_unit_name(s: &str) -> bool {
    s.len() <= 255
        && s.matches('@').count() <= 1
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fd_names() {
        assert_eq!(FdName::parse(None).unwrap(), FdName::Unnamed);
        let target = |t: &str| FdName::Target(Target::parse(t).unwrap());
        assert_eq!(
            FdName::parse(Some("connection")).unwrap(),
            target("connection")
        );
        assert_eq!(
            FdName::parse(Some("my.socket")).unwrap(),
            target("my.socket")
        );
        assert_eq!(FdName::parse(Some("work")).unwrap(), target("work"));
        assert_eq!(
            FdName::parse(Some("@default qubes.ConnectTCP+1234")).unwrap(),
            FdName::Full(
                Target::default_target(),
                Call::parse("qubes.ConnectTCP+1234").unwrap()
            )
        );
        let in_call = |e, call: &str| ParseError::CallInFdName(Box::new(e), call.into());
        let qube = |c| ParseError::QubeName(crate::error::QubeNameError::Char(c));
        for (bad, why) in [
            ("", ParseError::EmptyFdName),
            (" ", ParseError::EmptyTarget),
            ("work ", in_call(ParseError::EmptyService, "")),
            (" work", ParseError::EmptyTarget),
            ("a b c", ParseError::TooManyWords),
            ("work  qubes.X", ParseError::TooManyWords),
            (
                "work qubes.X/y",
                in_call(ParseError::CallChar('/'), "qubes.X/y"),
            ),
            ("wo/rk", qube('/')),
            (
                "work qubes.X+;rm",
                in_call(ParseError::CallChar(';'), "qubes.X+;rm"),
            ),
        ] {
            assert_eq!(FdName::parse(Some(bad)), Err(why), "{bad:?}");
        }
    }

    #[test]
    fn systemd_default_names() {
        let triggers = ["other.socket".to_owned(), "my.timer".to_owned()];
        let listening = |own, triggered_by| SystemdDefault {
            accepted: false,
            own_socket_unit: own,
            triggered_by,
        };
        let accepted = SystemdDefault {
            accepted: true,
            own_socket_unit: Some("qrexec-connect-tcp@22.socket"),
            triggered_by: None,
        };
        let ours = listening(Some("qrexec-connect-tcp@22.socket"), None);
        let asked = listening(Some("qrexec-connect-tcp@22.socket"), Some(&triggers[..]));
        let by_hand = listening(None, None);
        for (default, name, want) in [
            // Our own socket unit's name: known without asking.
            (&ours, "qrexec-connect-tcp@22.socket", Some(true)),
            (&asked, "qrexec-connect-tcp@22.socket", Some(true)),
            (&accepted, "connection", Some(true)),
            // Names that are no unit's: never asked.
            (&ours, "connection", Some(false)),
            (&ours, "work", Some(false)),
            (&ours, "@default qubes.X", Some(false)),
            (&ours, "wo/rk.socket", Some(false)),
            (&ours, "a@b@c.socket", Some(false)),
            (&accepted, "qrexec-connect-tcp@22.socket", Some(false)),
            (&accepted, "my.socket", Some(false)),
            // Another unit's name: only the manager can tell.
            (&ours, "my.socket", None),
            (&ours, "work@1234.socket", None),
            (&asked, "other.socket", Some(true)),
            (&asked, "my.socket", Some(false)),
            (&asked, "work@1234.socket", Some(false)),
            // By hand, outside a service: a name no qube can have stands for
            // a socket unit's default.
            (&by_hand, "qrexec-connect-tcp@22.socket", Some(true)),
            (&by_hand, "my.socket", Some(false)),
        ] {
            assert_eq!(default.is(name), want, "{name} {default:?}");
        }
    }

    #[test]
    fn passed_names() {
        let triggers = ["other.socket".to_owned()];
        let ours = SystemdDefault {
            accepted: false,
            own_socket_unit: Some("gitweb.socket"),
            triggered_by: None,
        };
        let asked = SystemdDefault {
            triggered_by: Some(&triggers[..]),
            ..ours
        };
        let target = |t: &str| Ok(FdName::Target(Target::parse(t).unwrap()));
        for (default, name, want) in [
            (&ours, None, Ok(FdName::Unnamed)),
            (&ours, Some("gitweb.socket"), Ok(FdName::Unnamed)),
            (&ours, Some("work"), target("work")),
            (
                &ours,
                Some("other.socket"),
                Err(ParseError::DefaultUnknown("other.socket".into())),
            ),
            (&asked, Some("other.socket"), Ok(FdName::Unnamed)),
            (&asked, Some("my.socket"), target("my.socket")),
            (
                &asked,
                Some("work@1234.socket"),
                Err(ParseError::QubeName(crate::error::QubeNameError::Char('@'))),
            ),
        ] {
            assert_eq!(FdName::parse_passed(name, default), want, "{name:?}");
        }
    }
}
