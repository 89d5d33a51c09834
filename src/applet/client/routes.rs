//! Where each passed socket's connections go: its FileDescriptorName read
//! against systemd's default names, and the applet's call.

use log::{info, warn};

use crate::activation::Passed;
use crate::call::{Call, FdName, SystemdDefault, Target};
use crate::daemon::{Accepted, Listener};
use crate::dropin;
use crate::error::{Error, Result};
use crate::own_unit::OwnUnit;

/// What the passed sockets are: listeners, or the one connection systemd
/// accepted for us (`Accept=yes`).
pub(super) enum Sockets {
    Listening(Vec<Listener>),
    Accepted(Accepted),
}

/// Routes every passed socket; refuses a connected one among several.
pub(super) fn sockets(mut passed: Vec<Passed>, call: Option<&Call>) -> Result<Sockets> {
    let own = OwnUnit::current();
    let sources = names_from_drop_ins(&mut passed, own.as_ref())?;
    let routes = route(&passed, call, own.as_ref(), OwnUnit::triggered_by)?;
    if let Some(p) = passed.iter().find(|p| !p.listening)
        && passed.len() > 1
    {
        return Err(Error::Unsupported(format!(
            "{} is a connected socket among several: use Accept=yes units with one socket each",
            p.addr
        )));
    }
    let passed_listening = passed[0].listening;
    let mut routed = passed.into_iter().zip(routes);
    if !passed_listening {
        // Accept=yes: systemd accepted the connection and started us for it.
        let (p, (target, call)) = routed.next().expect("one socket passed");
        return Ok(Sockets::Accepted(Accepted {
            fd: p.fd,
            target,
            call,
        }));
    }
    let listeners: Vec<Listener> = routed
        .zip(sources)
        .map(|((p, (target, call)), source)| Listener {
            fd: p.fd,
            addr: p.addr,
            target,
            call,
            source,
        })
        .collect();
    Ok(Sockets::Listening(listeners))
}

/// Where systemd passed several sockets of our socket unit under one name
/// (the last drop-in's), gives each the name of the drop-in that declares
/// it ([`dropin::resolve_names`]; reads nothing when the names differ).
/// Returns where each socket's name came from, `None` where systemd's stands.
fn names_from_drop_ins(
    passed: &mut [Passed],
    own: Option<&OwnUnit>,
) -> Result<Vec<Option<String>>> {
    let resolved = dropin::resolve_names(passed, own)?;
    let sources = passed.iter_mut().zip(resolved).map(|(p, r)| {
        let r = r?;
        p.name = Some(r.name);
        // A unit file's label is its path, a drop-in's its file name.
        let kind = if r.source.contains('/') {
            "unit file"
        } else {
            "drop-in"
        };
        Some(format!("{kind} {}", r.source))
    });
    Ok(sources.collect())
}

/// Decides each socket's target and call from its name; refuses the first
/// bad one, naming it and its address. Our own unit's socket is known from
/// the cgroup (`own`); `ask` says which socket units trigger our service,
/// and runs only for a name that needs it (see [`SystemdDefault`]).
fn route(
    passed: &[Passed],
    call: Option<&Call>,
    own: Option<&OwnUnit>,
    ask: impl FnOnce(&OwnUnit) -> std::result::Result<Vec<String>, String>,
) -> Result<Vec<(Target, Call)>> {
    let default = |p: &Passed, triggered_by| SystemdDefault {
        accepted: !p.listening,
        own_socket_unit: own.map(|u| u.socket.as_str()),
        triggered_by,
    };
    let unknown = passed.iter().find(|p| {
        p.name
            .as_deref()
            .is_some_and(|name| default(p, None).is(name).is_none())
    });
    let triggered_by = match (unknown, own) {
        (Some(p), Some(own)) => Some(ask(own).map_err(|why| cannot_tell(p, own, &why))?),
        _ => None,
    };
    let mut defaulted = false;
    let mut unit_like = Vec::new();
    let routes = passed
        .iter()
        .map(|p| {
            let (parsed, route) = route_one(p, call, &default(p, triggered_by.as_deref()))?;
            match parsed {
                FdName::Unnamed => defaulted = true,
                FdName::Target(_) if route.0.as_str().ends_with(".socket") => unit_like.push(p),
                _ => {}
            }
            Ok(route)
        })
        .collect::<Result<Vec<_>>>()?;
    if defaulted {
        info!("sockets without a FileDescriptorName of their own call @default");
    }
    for p in unit_like {
        warn!(
            "socket {} calls the qube {}: a name ending in .socket means @default only when \
             it is the name of a socket unit that passes its sockets to this service",
            p.addr,
            p.name.as_deref().unwrap_or("")
        );
    }
    Ok(routes)
}

/// The refusal when our manager cannot say whether a socket's name is
/// systemd's default: a guess could send connections to the wrong qube.
fn cannot_tell(p: &Passed, own: &OwnUnit, why: &str) -> Error {
    Error::Usage(format!(
        "socket {} is named {:?}, which is systemd's default name if the socket unit of \
         that name passed it, else a qube's; asking which socket units trigger {} failed \
         ({why}): set FileDescriptorName= in the socket unit (a qube, or @default)",
        p.addr,
        p.name.as_deref().unwrap_or(""),
        own.service
    ))
}

/// One socket's route, and what its name said.
fn route_one(
    p: &Passed,
    call: Option<&Call>,
    default: &SystemdDefault<'_>,
) -> Result<(FdName, (Target, Call))> {
    let bad = |why: String| {
        let name = p.name.as_deref().unwrap_or("");
        Error::Usage(format!(
            "socket {} has a bad FileDescriptorName {name:?}: {why}",
            p.addr
        ))
    };
    let parsed =
        FdName::parse_passed(p.name.as_deref(), default).map_err(|e| bad(e.to_string()))?;
    let route = match (&parsed, call) {
        (FdName::Full(target, call), _) => (target.clone(), call.clone()),
        (FdName::Target(target), Some(call)) => (target.clone(), call.clone()),
        (FdName::Unnamed, Some(call)) => (Target::default_target(), call.clone()),
        (FdName::Target(_) | FdName::Unnamed, None) => {
            return Err(bad(
                "qrexec-connect needs 'TARGET SERVICE+ARG' here, or --service".into(),
            ));
        }
    };
    Ok((parsed, route))
}
