//! A child's stderr as log lines: joined across reads, cut at `MAX_LINE`,
//! and limited per writer (`MAX_BYTES`, `MAX_LINES`); what is past the
//! limits is counted, not logged.
//!
//! Pure: the callers read (the shared socket, or the pipe of an Accept=yes
//! child), and this decides what becomes a line, through a callback.

use std::time::{Duration, Instant};

/// The most of one writer's stderr that is logged, in bytes. All children
/// write into one socket, which the daemon must read at once whatever one
/// child writes (the others' writes wait while it is full); past this much
/// it reads and counts, without logging.
pub(super) const MAX_BYTES: u32 = 64 << 10;
/// The most lines logged per writer. journald drops a unit's lines past
/// 10,000 per 30 s (`RateLimitBurst=`, `RateLimitIntervalSec=`), end lines
/// and all: twenty connections that flood lines leave about 2,000.
pub(super) const MAX_LINES: u16 = 100;
/// The longest line kept whole; a longer one is logged in pieces this long.
pub(super) const MAX_LINE: usize = 4096;
/// How long the budget shared by writers that are no connection's child
/// lasts before it is renewed (journald's default rate-limit interval).
pub(super) const SHARED_WINDOW: Duration = Duration::from_secs(30);

/// What one writer wrote, and how much of it became log lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Budget {
    /// Bytes written (saturating).
    written: u32,
    /// Bytes taken into lines (at most `MAX_BYTES`).
    kept: u32,
    /// Lines logged (at most `MAX_LINES`).
    lines: u16,
}

impl Budget {
    /// Bytes written past the limits: counted, not logged.
    pub(super) fn unlogged(&self) -> u32 {
        self.written - self.kept
    }
}

/// Splits `bytes`, the next a writer wrote, into lines after the start in
/// `partial`; hands each line within `budget` to `line` (trimmed, never
/// blank) and keeps the start of an unfinished one in `partial`.
pub(super) fn assemble(
    budget: &mut Budget,
    partial: &mut Vec<u8>,
    bytes: &[u8],
    line: &mut impl FnMut(&str),
) {
    budget.written = budget
        .written
        .saturating_add(u32::try_from(bytes.len()).unwrap_or(u32::MAX));
    let room = (MAX_BYTES - budget.kept) as usize;
    let mut rest = &bytes[..bytes.len().min(room)];
    while !rest.is_empty() && budget.lines < MAX_LINES {
        // partial is always shorter than a line.
        let room = MAX_LINE - partial.len();
        let window = &rest[..rest.len().min(room)];
        let (piece, used) = match window.iter().position(|&b| b == b'\n') {
            Some(end) => (&window[..end], end + 1),
            None if window.len() == room => (window, room),
            None => {
                partial.extend_from_slice(window);
                budget.kept += window.len() as u32;
                return;
            }
        };
        if partial.is_empty() {
            emit(budget, piece, line);
        } else {
            partial.extend_from_slice(piece);
            emit(budget, partial, line);
            partial.clear();
        }
        budget.kept += used as u32;
        rest = &rest[used..];
    }
}

/// The writer is done: its unfinished last line, if any.
pub(super) fn finish(budget: &mut Budget, partial: &mut Vec<u8>, line: &mut impl FnMut(&str)) {
    if !partial.is_empty() && budget.lines < MAX_LINES {
        emit(budget, partial, line);
    }
    partial.clear();
}

fn emit(budget: &mut Budget, bytes: &[u8], line: &mut impl FnMut(&str)) {
    let text = String::from_utf8_lossy(bytes);
    let text = text.trim_end();
    if !text.is_empty() {
        budget.lines += 1;
        line(text);
    }
}

/// The one budget of every writer that is no connection's child (a process
/// a wrapper started, say), renewed every `SHARED_WINDOW`.
#[derive(Debug, Default)]
pub(super) struct Shared {
    budget: Budget,
    since: Option<Instant>,
}

impl Shared {
    /// Whether a write at `now` needs a new window (`start`).
    pub(super) fn expired(&self, now: Instant) -> bool {
        self.since.is_none_or(|since| now >= since + SHARED_WINDOW)
    }

    /// A new window from `now`, with the whole budget.
    pub(super) fn start(&mut self, now: Instant) {
        self.since = Some(now);
        self.budget = Budget::default();
    }

    pub(super) fn budget(&mut self) -> &mut Budget {
        &mut self.budget
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds every chunk, then finishes: the lines and the budget.
    fn lines_of(chunks: &[&[u8]]) -> (Vec<String>, Budget) {
        let mut budget = Budget::default();
        let mut partial = Vec::new();
        let mut lines = Vec::new();
        let mut push = |l: &str| lines.push(l.to_owned());
        for chunk in chunks {
            assemble(&mut budget, &mut partial, chunk, &mut push);
        }
        finish(&mut budget, &mut partial, &mut push);
        (lines, budget)
    }

    #[test]
    fn joins_a_line_across_reads() {
        let (lines, budget) = lines_of(&[b"first half, ", b"second half\nnext", b" line\n"]);
        assert_eq!(lines, ["first half, second half", "next line"]);
        assert_eq!(budget.unlogged(), 0);
    }

    #[test]
    fn skips_blank_lines_and_trims() {
        let (lines, budget) = lines_of(&[b"\n\n  \r\n", b"text \t\r\n\n"]);
        assert_eq!(lines, ["text"]);
        assert_eq!(budget.lines, 1);
    }

    #[test]
    fn an_unfinished_last_line_is_logged_at_the_end() {
        let (lines, _) = lines_of(&[b"one\ntw", b"o"]);
        assert_eq!(lines, ["one", "two"]);
    }

    #[test]
    fn a_long_line_in_pieces_of_max_line() {
        let long = vec![b'x'; MAX_LINE * 2 + 10];
        let (lines, _) = lines_of(&[&long[..100], &long[100..], b"\n"]);
        let lengths: Vec<usize> = lines.iter().map(String::len).collect();
        assert_eq!(lengths, [MAX_LINE, MAX_LINE, 10]);
    }

    #[test]
    fn bytes_past_the_limit_are_counted() {
        let flood = vec![b'x'; 1_000_000];
        let (lines, budget) = lines_of(&[&flood]);
        assert_eq!(lines.len(), MAX_BYTES as usize / MAX_LINE);
        assert_eq!(budget.unlogged(), 1_000_000 - MAX_BYTES);
    }

    #[test]
    fn lines_past_the_limit_are_counted() {
        let flood = b"a\n".repeat(32 << 10);
        let (lines, budget) = lines_of(&[&flood[..1000], &flood[1000..]]);
        assert_eq!(lines.len(), MAX_LINES as usize);
        assert!(lines.iter().all(|l| l == "a"));
        assert_eq!(budget.unlogged(), (64 << 10) - 2 * u32::from(MAX_LINES));
    }

    #[test]
    fn shared_budget_renews_each_window() {
        let mut shared = Shared::default();
        let start = Instant::now();
        let mut partial = Vec::new();
        let mut count = 0;
        let flood = b"a\n".repeat(1000);
        assert!(shared.expired(start), "no window yet");
        shared.start(start);
        assemble(shared.budget(), &mut partial, &flood, &mut |_| count += 1);
        assert!(!shared.expired(start + SHARED_WINDOW / 2));
        assemble(shared.budget(), &mut partial, &flood, &mut |_| count += 1);
        assert_eq!(count, MAX_LINES);
        assert_eq!(shared.budget().unlogged(), 4000 - 2 * u32::from(MAX_LINES));
        assert!(shared.expired(start + SHARED_WINDOW));
        shared.start(start + SHARED_WINDOW);
        assemble(shared.budget(), &mut partial, b"b\n", &mut |_| count += 1);
        assert_eq!(count, MAX_LINES + 1);
        assert_eq!(shared.budget().unlogged(), 0);
    }
}
