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

/// The last word of an applet that stops on `error`: one place decides
/// where it goes. Before the logger is installed, plain on stderr; with
/// stderr connected to the journal, as a `<3>` (err, sd-daemon(3)) line on
/// stderr, the stream systemd opened for the unit: journald attributes a
/// native message to a unit by reading its sender's /proc/PID, gone once we
/// exit, so `journalctl --user -u UNIT` would miss the reason. Otherwise
/// through the logger, as every other line.
pub fn fatal(identifier: &str, error: &crate::error::Error) {
    if log::max_level() == LevelFilter::Off {
        eprintln!("{identifier}: {error}");
    } else if systemd_journal_logger::connected_to_journal() {
        eprintln!("<3>{error}");
    } else {
        log::error!("{error}");
    }
}

/// Text from outside (a child's stderr, which carries the remote service's)
/// made safe for one log line: control characters, such as terminal escape
/// sequences or a carriage return that would overwrite the line, and the
/// invisible format characters (Unicode Cf: bidirectional overrides that
/// reorder what a reader sees, zero-width characters) and line and
/// paragraph separators (Zl, Zp: a new line to many viewers) are written as
/// escapes.
pub fn printable(text: &str) -> Cow<'_, str> {
    if !text.chars().any(needs_escape) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| {
                if needs_escape(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

fn needs_escape(c: char) -> bool {
    c.is_control() || is_format_or_separator(c)
}

/// Unicode's general categories Cf, Zl and Zp (Unicode 15.0), as ranges of
/// code points; `char` has no category query in std.
const FORMAT_AND_SEPARATORS: &[(u32, u32)] = &[
    (0xAD, 0xAD),
    (0x600, 0x605),
    (0x61C, 0x61C),
    (0x6DD, 0x6DD),
    (0x70F, 0x70F),
    (0x890, 0x891),
    (0x8E2, 0x8E2),
    (0x180E, 0x180E),
    (0x200B, 0x200F),
    (0x2028, 0x202E),
    (0x2060, 0x2064),
    (0x2066, 0x206F),
    (0xFEFF, 0xFEFF),
    (0xFFF9, 0xFFFB),
    (0x110BD, 0x110BD),
    (0x110CD, 0x110CD),
    (0x13430, 0x1343F),
    (0x1BCA0, 0x1BCA3),
    (0x1D173, 0x1D17A),
    (0xE0001, 0xE0001),
    (0xE0020, 0xE007F),
];

fn is_format_or_separator(c: char) -> bool {
    let c = u32::from(c);
    FORMAT_AND_SEPARATORS
        .iter()
        .any(|&(first, last)| (first..=last).contains(&c))
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

    #[test]
    fn printable_escapes_format_characters_and_separators() {
        assert_eq!(
            printable("a\u{2028}b\u{2029}c"),
            "a\\u{2028}b\\u{2029}c",
            "line and paragraph separators"
        );
        assert_eq!(
            printable("\u{202e}txt.exe\u{202c} \u{2066}x\u{2069}"),
            "\\u{202e}txt.exe\\u{202c} \\u{2066}x\\u{2069}",
            "bidirectional overrides and isolates"
        );
        for c in [
            '\u{ad}',
            '\u{200b}',
            '\u{200d}',
            '\u{200f}',
            '\u{202a}',
            '\u{2060}',
            '\u{2064}',
            '\u{206f}',
            '\u{feff}',
            '\u{fff9}',
            '\u{fffb}',
            '\u{e0001}',
            '\u{e007f}',
            '\u{600}',
            '\u{1343f}',
        ] {
            let text = c.to_string();
            assert_eq!(printable(&text), c.escape_default().to_string(), "{c:?}");
        }
        // Neighbours that are not format characters stay.
        for c in [
            '\u{ac}', '\u{ae}', '\u{2027}', '\u{202f}', '\u{2065}', '\u{fffc}', 'é', '中',
        ] {
            let text = c.to_string();
            assert!(matches!(printable(&text), Cow::Borrowed(_)), "{c:?}");
        }
    }

    #[test]
    fn format_table_is_sorted_and_disjoint() {
        for pair in FORMAT_AND_SEPARATORS.windows(2) {
            assert!(pair[0].0 <= pair[0].1 && pair[0].1 < pair[1].0, "{pair:?}");
        }
    }
}
