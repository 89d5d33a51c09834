//! Where log lines go: the journal when our stderr is connected to it
//! (`systemd_journal_logger::connected_to_journal()`), plain lines on stderr
//! otherwise (a terminal, `systemd-socket-activate`, tests).
//!
//! Structured fields travel as `log` key-values; the journal stores them as
//! fields (`QREXEC_TARGET=work`), stderr shows only the message.
//!
//! The service applets log differently (`init_service`): qrexec hands their
//! stderr to the caller, whose client daemon logs every line it gets, so only
//! warnings and errors go there, one line each; everything goes to the
//! journal of the service qube when one is reachable.

use std::borrow::Cow;
use std::io::Write;
use std::sync::OnceLock;

use log::{Level, LevelFilter, Log, Metadata, Record};

use systemd_journal_logger::JournalLog;

/// Installs the logger for the applet `identifier` (SYSLOG_IDENTIFIER in the journal).
pub fn init(identifier: &'static str, verbose: bool) {
    let level = if verbose {
        LevelFilter::Debug
    } else {
        LevelFilter::Info
    };
    let journal = if systemd_journal_logger::connected_to_journal() {
        systemd_journal_logger::JournalLog::new()
            .ok()
            .map(|j| j.with_syslog_identifier(identifier.to_owned()))
    } else {
        None
    };
    let installed = match journal {
        Some(journal) => log::set_boxed_logger(Box::new(journal)),
        None => log::set_boxed_logger(Box::new(Stderr { identifier })),
    };
    // A second init (only in tests) keeps the first logger.
    if installed.is_ok() {
        log::set_max_level(level);
    }
}

/// One line per record: `identifier: level: message`, level omitted for info.
struct Stderr {
    identifier: &'static str,
}

impl Log for Stderr {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        let level = level_prefix(record.level());
        // One write per line, so lines of concurrent writers do not interleave;
        // a failed write to stderr has nowhere to be reported.
        let line = format!("{}: {level}{}\n", self.identifier, record.args());
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }

    fn flush(&self) {}
}

fn level_prefix(level: Level) -> &'static str {
    match level {
        Level::Error => "error: ",
        Level::Warn => "warning: ",
        Level::Info => "",
        Level::Debug => "debug: ",
        Level::Trace => "trace: ",
    }
}

/// Installs the logger of a service applet: warnings and errors on stderr,
/// everything in the journal once `attach_journal` found it.
///
/// Touches nothing outside the process, so it can come before the argument
/// checks, which must precede any file-system access.
pub fn init_service(identifier: &'static str) {
    let logger = SERVICE.get_or_init(|| Service {
        identifier,
        journal: OnceLock::new(),
    });
    if log::set_logger(logger).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}

/// Connects the service logger to the journal, if one answers
/// (`/run/systemd/journal/socket`); without one, info lines are dropped.
pub fn attach_journal() {
    if let Some(logger) = SERVICE.get()
        && let Ok(journal) = JournalLog::new()
    {
        let _ = logger
            .journal
            .set(journal.with_syslog_identifier(logger.identifier.to_owned()));
    }
}

static SERVICE: OnceLock<Service> = OnceLock::new();

struct Service {
    identifier: &'static str,
    journal: OnceLock<JournalLog>,
}

impl Log for Service {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &Record<'_>) {
        if let Some(journal) = self.journal.get() {
            journal.log(record);
        }
        // Started by systemd rather than qrexec, stderr may be the journal
        // itself: the record is there already.
        if record.level() <= Level::Warn
            && !(self.journal.get().is_some() && systemd_journal_logger::connected_to_journal())
        {
            let message = record.args().to_string();
            let line = format!(
                "{}: {}{}\n",
                self.identifier,
                level_prefix(record.level()),
                printable(&message)
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// Text from outside (a child's stderr, which carries the remote service's)
/// made safe for one log line: control characters, such as terminal escape
/// sequences or a carriage return that would overwrite the line, are
/// written as escapes.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn printable_escapes_control_characters() {
        assert!(matches!(printable("Request refused"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\u{1b}[31mred\u{7}\rb\tc"),
            "a\\u{1b}[31mred\\u{7}\\rb\\tc"
        );
        assert_eq!(printable("wörk"), "wörk");
    }
}
