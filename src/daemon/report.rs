//! The log lines of a connection: what its child wrote to stderr, how it
//! ended. Each carries the journal fields of its route, assembled in `emit`
//! alone; the end line adds the fields a query by outcome needs.

use std::fmt;
use std::time::Instant;

use log::Level;
use log::kv::Value;

use super::connection::Peer;
use super::lines::{self, Budget};
use crate::call::{Call, Target};
use crate::logging::printable;
use crate::qrexec::Outcome;

/// Where a connection goes.
#[derive(Clone, Copy)]
pub(super) struct Route<'a> {
    pub(super) target: &'a Target,
    pub(super) call: &'a Call,
}

/// `{peer} -> {target} {call}: {what}`, with `QREXEC_TARGET` and
/// `QREXEC_CALL`; with `status`, the end line's fields too.
fn emit(level: Level, route: Route, peer: &Peer, status: Option<u8>, what: fmt::Arguments) {
    if level > log::max_level() {
        return;
    }
    let (target, call) = (route.target.as_str(), route.call.as_str());
    let record = |fields: &[(&str, Value)]| {
        log::logger().log(
            &log::Record::builder()
                .level(level)
                .target("connection")
                .module_path_static(Some(module_path!()))
                .file_static(Some(file!()))
                .line(Some(line!()))
                .key_values(&fields)
                .args(format_args!("{peer} -> {target} {call}: {what}"))
                .build(),
        );
    };
    match status {
        None => record(&[
            ("QREXEC_TARGET", target.into()),
            ("QREXEC_CALL", call.into()),
        ]),
        Some(status) => record(&[
            ("QREXEC_TARGET", target.into()),
            ("QREXEC_CALL", call.into()),
            ("QREXEC_SERVICE", route.call.service().into()),
            (
                "QREXEC_ARGUMENT",
                route.call.argument().unwrap_or("").into(),
            ),
            ("QREXEC_PEER", Value::from_display(peer)),
            ("QREXEC_STATUS", status.into()),
        ]),
    }
}

/// One line the connection's child wrote to stderr.
pub(super) fn stderr_line(route: Route, peer: &Peer, line: &str) {
    emit(
        Level::Warn,
        route,
        peer,
        None,
        format_args!("{}", printable(line)),
    );
}

/// qrexec-client-vm could not be started for the connection.
pub(super) fn not_started(
    route: Route,
    peer: &Peer,
    program: &dyn fmt::Display,
    error: &dyn fmt::Display,
) {
    emit(
        Level::Error,
        route,
        peer,
        None,
        format_args!("cannot run {program}: {error}; connection closed"),
    );
}

/// The connection ended: the rest of its stderr (the unfinished last line,
/// what was past the limits), then the one line each connection leaves.
pub(super) fn ended(
    route: Route,
    peer: &Peer,
    budget: &mut Budget,
    partial: &mut Vec<u8>,
    outcome: &Outcome,
    started: Instant,
) {
    lines::finish(budget, partial, &mut |line| stderr_line(route, peer, line));
    let unlogged = budget.unlogged();
    if unlogged > 0 {
        emit(
            Level::Warn,
            route,
            peer,
            None,
            format_args!("{unlogged} more bytes of stderr not logged"),
        );
    }
    let elapsed = started.elapsed();
    let level = if outcome.is_success() {
        Level::Info
    } else {
        Level::Warn
    };
    emit(
        level,
        route,
        peer,
        Some(outcome.code()),
        format_args!(
            "{outcome} after {}.{:03}s",
            elapsed.as_secs(),
            elapsed.subsec_millis()
        ),
    );
}
