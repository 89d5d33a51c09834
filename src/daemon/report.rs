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

/// A SOCKS5 handshake refused: what was asked and what was replied.
pub(super) fn handshake_refused(peer: &Peer, refusal: &crate::socks::Refusal) {
    log::warn!(target: "connection", "{peer} -> SOCKS5: {refusal}");
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::process::Exit;
    use std::sync::Mutex;

    /// Every record of target "connection": its message and its fields.
    type Lines = Vec<(String, Vec<(String, String)>)>;

    struct Capture(Mutex<Lines>);

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }

        fn log(&self, record: &log::Record<'_>) {
            struct Fields(Vec<(String, String)>);
            impl<'kvs> log::kv::VisitSource<'kvs> for Fields {
                fn visit_pair(
                    &mut self,
                    key: log::kv::Key<'kvs>,
                    value: log::kv::Value<'kvs>,
                ) -> Result<(), log::kv::Error> {
                    self.0.push((key.to_string(), value.to_string()));
                    Ok(())
                }
            }
            if record.target() == "connection" {
                let mut fields = Fields(Vec::new());
                record.key_values().visit(&mut fields).unwrap();
                let line = (record.args().to_string(), fields.0);
                self.0.lock().unwrap().push(line);
            }
        }

        fn flush(&self) {}
    }

    static CAPTURE: Capture = Capture(Mutex::new(Vec::new()));

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The journal fields of each line are those the `log!` calls in the
    /// daemon gave it before they were brought together in `emit`.
    #[test]
    fn lines_carry_their_journal_fields() {
        log::set_logger(&CAPTURE).expect("the only logger of the unit tests");
        log::set_max_level(log::LevelFilter::Debug);
        let target = Target::parse("work").unwrap();
        let call = Call::parse("qubes.ConnectTCP+22").unwrap();
        let route = Route {
            target: &target,
            call: &call,
        };
        let peer = Peer::Unknown;
        let mut budget = Budget::default();
        let mut partial = Vec::new();
        lines::assemble(&mut budget, &mut partial, &[b'x'; 70_000], &mut |_| {});
        let outcome = Outcome {
            exit: Exit::Code(126),
            target: &target,
        };
        ended(
            route,
            &peer,
            &mut budget,
            &mut partial,
            &outcome,
            Instant::now(),
        );
        let lines = std::mem::take(&mut *CAPTURE.0.lock().unwrap());
        let route_fields = pairs(&[
            ("QREXEC_TARGET", "work"),
            ("QREXEC_CALL", "qubes.ConnectTCP+22"),
        ]);
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(
            lines[0],
            (
                "unknown peer -> work qubes.ConnectTCP+22: 4464 more bytes of stderr not logged"
                    .to_owned(),
                route_fields
            )
        );
        assert!(lines[1].0.starts_with(
            "unknown peer -> work qubes.ConnectTCP+22: refused by policy, or work does not exist or cannot start (status 126) after 0."
        ));
        let end_fields = pairs(&[
            ("QREXEC_TARGET", "work"),
            ("QREXEC_CALL", "qubes.ConnectTCP+22"),
            ("QREXEC_SERVICE", "qubes.ConnectTCP"),
            ("QREXEC_ARGUMENT", "22"),
            ("QREXEC_PEER", "unknown peer"),
            ("QREXEC_STATUS", "126"),
        ]);
        assert_eq!(lines[1].1, end_fields);
    }
}
