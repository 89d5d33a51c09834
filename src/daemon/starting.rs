//! How many qrexec calls may be starting at once (the SOCKS applet's
//! `--max-starting`).
//!
//! qrexec fails calls when too many start at once from one qube: each call
//! sets up a data vchan, which takes a xenstore transaction, and xenstored
//! allows a domain 10 at once by default (QubesOS/qubes-issues#11059; and
//! #5343: watches held while a connection is set up). Past that, calls fail
//! at random ("Data vchan connection failed"), which is what a browser's
//! burst of connections through a SOCKS proxy does.
//!
//! The daemon cannot see when a call's set-up is over: qrexec-client-vm says
//! nothing until it ends. So a call counts as starting from its spawn until
//! it ends or `window` has passed, whichever comes first; no more than `max`
//! count at once, and the rest wait their turn in the daemon. A call that
//! ends quickly (a refusal, a short request) frees its place at once; one
//! that lasts frees it after `window`, when its set-up is long done.
//!
//! Pure: the loop passes the time.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::sys::process::Pid;

pub(super) struct Starting {
    max: usize,
    window: Duration,
    /// The calls counted as starting, oldest first (spawns happen in time
    /// order, so the oldest is the first to leave by `window`).
    recent: VecDeque<(Instant, Pid)>,
}

impl Starting {
    pub(super) fn new(max: usize, window: Duration) -> Self {
        Starting {
            max,
            window,
            recent: VecDeque::with_capacity(max),
        }
    }

    /// Whether one more call may start at `now`.
    pub(super) fn may_start(&mut self, now: Instant) -> bool {
        while let Some(&(at, _)) = self.recent.front()
            && at + self.window <= now
        {
            self.recent.pop_front();
        }
        self.recent.len() < self.max
    }

    /// A call started at `now`, as qrexec-client-vm `pid`.
    pub(super) fn started(&mut self, pid: Pid, now: Instant) {
        self.recent.push_back((now, pid));
    }

    /// `pid` ended: if it still counted, its place is free.
    pub(super) fn ended(&mut self, pid: Pid) {
        if let Some(i) = self.recent.iter().position(|&(_, p)| p == pid) {
            self.recent.remove(i);
        }
    }

    /// When the next place frees itself by time, if all are taken.
    pub(super) fn deadline(&self) -> Option<Instant> {
        if self.recent.len() < self.max {
            return None;
        }
        self.recent.front().map(|&(at, _)| at + self.window)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_most_max_until_they_end_or_the_window_passes() {
        let window = Duration::from_millis(500);
        let mut starting = Starting::new(2, window);
        let t0 = Instant::now();
        let pid = Pid::from_raw;
        assert!(starting.may_start(t0));
        starting.started(pid(10), t0);
        assert_eq!(starting.deadline(), None, "a place is free");
        let t1 = t0 + Duration::from_millis(100);
        assert!(starting.may_start(t1));
        starting.started(pid(11), t1);
        assert!(!starting.may_start(t1));
        assert_eq!(starting.deadline(), Some(t0 + window));
        starting.ended(pid(11));
        assert!(starting.may_start(t1), "an ended call frees its place");
        starting.started(pid(12), t1);
        assert!(!starting.may_start(t0 + window - Duration::from_millis(1)));
        assert!(starting.may_start(t0 + window), "pid 10 is past its window");
        starting.ended(pid(10));
        assert_eq!(
            starting.recent.len(),
            1,
            "ending after the window changes nothing"
        );
        starting.started(pid(13), t0 + window);
        assert_eq!(starting.deadline(), Some(t1 + window));
        assert!(starting.may_start(t1 + window));
    }
}
