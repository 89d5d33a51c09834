//! What the daemon tells the service manager between READY=1 and
//! STOPPING=1: `STATUS=` with its counters (sd_notify(3)), at most once a
//! `STATUS_INTERVAL`.

use std::time::{Duration, Instant};

use crate::qrexec::Outcome;

/// STATUS= goes to the manager at most this often.
const STATUS_INTERVAL: Duration = Duration::from_secs(1);

/// How the connections that ended went.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Counters {
    served: u64,
    refused: u64,
    failed: u64,
}

impl Counters {
    pub(super) fn ended(&mut self, outcome: &Outcome) {
        if outcome.is_success() {
            self.served += 1;
        } else if outcome.is_refusal() {
            self.refused += 1;
        } else {
            self.failed += 1;
        }
    }

    /// A connection that never got its qrexec-client-vm.
    pub(super) fn not_started(&mut self) {
        self.failed += 1;
    }
}

/// When the next STATUS= is due.
pub(super) struct Status {
    enabled: bool,
    due: Option<Instant>,
    sent: Option<Instant>,
}

impl Status {
    /// `enabled`: there is a manager to tell.
    pub(super) fn new(enabled: bool) -> Self {
        Status {
            enabled,
            due: None,
            sent: None,
        }
    }

    /// Something changed: an update is due, no sooner than an interval after the last.
    pub(super) fn changed(&mut self, now: Instant) {
        if self.enabled && self.due.is_none() {
            self.due = Some(self.sent.map_or(now, |sent| sent + STATUS_INTERVAL));
        }
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.due
    }

    /// The update to send at `now`, if one is due.
    pub(super) fn take_due(
        &mut self,
        now: Instant,
        active: usize,
        counters: &Counters,
    ) -> Option<String> {
        if self.due.is_none_or(|due| due > now) {
            return None;
        }
        self.due = None;
        self.sent = Some(now);
        let Counters {
            served,
            refused,
            failed,
        } = counters;
        Some(format!(
            "STATUS={active} active, {served} served, {refused} refused, {failed} failed"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::call::Target;
    use crate::sys::process::Exit;

    #[test]
    fn counts_each_outcome() {
        let target = Target::parse("work").unwrap();
        let mut counters = Counters::default();
        for exit in [
            Exit::Code(0),
            Exit::Code(126),
            Exit::Code(1),
            Exit::Signal(9),
        ] {
            counters.ended(&Outcome {
                exit,
                target: &target,
            });
        }
        counters.not_started();
        let expected = Counters {
            served: 1,
            refused: 1,
            failed: 3,
        };
        assert_eq!(counters, expected);
    }

    #[test]
    fn at_most_one_update_an_interval() {
        let start = Instant::now();
        let counters = Counters::default();
        let mut status = Status::new(true);
        status.changed(start);
        assert_eq!(status.deadline(), Some(start), "the first at once");
        assert_eq!(
            status.take_due(start, 1, &counters).as_deref(),
            Some("STATUS=1 active, 0 served, 0 refused, 0 failed")
        );
        status.changed(start);
        status.changed(start);
        let next = start + STATUS_INTERVAL;
        assert_eq!(status.deadline(), Some(next));
        assert_eq!(status.take_due(start, 0, &counters), None);
        assert!(status.take_due(next, 0, &counters).is_some());
        assert_eq!(status.deadline(), None);
    }

    #[test]
    fn nothing_without_a_manager() {
        let mut status = Status::new(false);
        status.changed(Instant::now());
        assert_eq!(status.deadline(), None);
    }
}
