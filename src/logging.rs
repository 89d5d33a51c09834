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

use log::{Level, LevelFilter, Log, Metadata, Record};
use std::borrow::Cow;
use std::io::Write;
use std::sync::OnceLock;

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
                one_line(&message)
            );
            let _ = std::io::stderr().lock().write_all(line.as_bytes());
        }
    }

    fn flush(&self) {}
}

/// `message` with control characters escaped (`\n`, `\u{1b}`), so that a
/// value from outside (an argument, a path) cannot start a new line or drive
/// the terminal of whoever reads it.
pub fn one_line(message: &str) -> Cow<'_, str> {
    if !message.chars().any(char::is_control) {
        return Cow::Borrowed(message);
    }
    Cow::Owned(
        message
            .chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_default().collect()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_escapes_control_characters() {
        assert_eq!(one_line("plain 'words' é"), "plain 'words' é");
        assert!(matches!(one_line("plain"), Cow::Borrowed(_)));
        assert_eq!(one_line("a\nb\r\tc\u{1b}[0m"), "a\\nb\\r\\tc\\u{1b}[0m");
    }
}
