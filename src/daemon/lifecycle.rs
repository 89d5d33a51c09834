//! Where the daemon is in its life, and when it must next act: serving,
//! draining after SIGTERM, terminating the children that outlived the
//! drain; exiting when idle (`--exit-idle-time`); pausing accepting after
//! running out of descriptors or memory.
//!
//! Pure but for the log lines: the loop passes the time and the number of
//! open connections, and does what `Step` says.

use std::time::{Duration, Instant};

use log::{info, warn};

use super::Options;

/// How long children get between SIGTERM and SIGKILL once draining timed out.
const KILL_GRACE: Duration = Duration::from_secs(2);
/// How long accepting pauses after EMFILE, ENFILE, ENOBUFS or ENOMEM.
pub(super) const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Serving,
    /// SIGTERM or SIGINT arrived: no new connections; running ones may finish
    /// until the deadline.
    Draining {
        deadline: Instant,
    },
    /// The deadline passed: children got SIGTERM, SIGKILL follows at the deadline.
    Terminating {
        deadline: Instant,
    },
}

/// What the loop must do now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Step {
    Continue,
    /// Send SIGTERM to every child.
    Terminate,
    /// Send SIGKILL to every child, reap them all, then exit.
    Kill,
    Exit,
}

pub(super) struct Lifecycle {
    phase: Phase,
    /// When the last connection ended (or start-up), for --exit-idle-time.
    idle_since: Instant,
    drain_timeout: Duration,
    exit_idle_time: Option<Duration>,
}

impl Lifecycle {
    pub(super) fn new(options: &Options, now: Instant) -> Self {
        Lifecycle {
            phase: Phase::Serving,
            idle_since: now,
            drain_timeout: options.drain_timeout,
            exit_idle_time: options.exit_idle_time,
        }
    }

    pub(super) fn is_serving(&self) -> bool {
        self.phase == Phase::Serving
    }

    pub(super) fn drain_timeout(&self) -> Duration {
        self.drain_timeout
    }

    /// The last connection ended.
    pub(super) fn idle(&mut self, now: Instant) {
        self.idle_since = now;
    }

    /// SIGTERM or SIGINT: stop serving; false when already stopping.
    pub(super) fn drain(&mut self, now: Instant) -> bool {
        if !self.is_serving() {
            return false;
        }
        self.phase = Phase::Draining {
            deadline: now + self.drain_timeout,
        };
        true
    }

    /// When `step` next has something to do, with `active` connections open.
    pub(super) fn deadline(&self, active: usize) -> Option<Instant> {
        match self.phase {
            Phase::Serving if active == 0 => self.exit_idle_time.map(|t| self.idle_since + t),
            Phase::Serving => None,
            Phase::Draining { deadline } | Phase::Terminating { deadline } => Some(deadline),
        }
    }

    /// Acts on the deadline if it has come, with `active` connections open.
    pub(super) fn step(&mut self, now: Instant, active: usize) -> Step {
        match self.phase {
            Phase::Serving => match self.exit_idle_time {
                Some(idle) if active == 0 && now >= self.idle_since + idle => {
                    info!(
                        "no connection for {}s, exiting; the socket unit keeps listening and starts us again",
                        idle.as_secs()
                    );
                    Step::Exit
                }
                _ => Step::Continue,
            },
            Phase::Draining { .. } if active == 0 => {
                info!("all connections finished, exiting");
                Step::Exit
            }
            Phase::Draining { deadline } if now >= deadline => {
                warn!(
                    "{active} connections still open after {}s, ending them (SIGTERM)",
                    self.drain_timeout.as_secs()
                );
                self.phase = Phase::Terminating {
                    deadline: now + KILL_GRACE,
                };
                Step::Terminate
            }
            Phase::Terminating { .. } if active == 0 => {
                info!("all connections ended, exiting");
                Step::Exit
            }
            Phase::Terminating { deadline } if now >= deadline => {
                warn!("{active} children ignored SIGTERM, killing them");
                Step::Kill
            }
            Phase::Draining { .. } | Phase::Terminating { .. } => Step::Continue,
        }
    }
}

/// Accepting paused for want of descriptors or memory.
#[derive(Debug, Default)]
pub(super) struct Backoff {
    /// Accepting pauses until then.
    until: Option<Instant>,
    /// Shortages since the last accepted connection, to log one once.
    shortages: u32,
}

impl Backoff {
    /// Pauses accepting for `ACCEPT_BACKOFF` from `now`.
    pub(super) fn pause(&mut self, now: Instant) {
        self.until = Some(now + ACCEPT_BACKOFF);
    }

    /// An accept failed for want of resources; true at the first of a shortage.
    pub(super) fn shortage(&mut self) -> bool {
        self.shortages += 1;
        self.shortages == 1
    }

    /// A connection was accepted: the pauses of the shortage it ends, if any.
    pub(super) fn accepted(&mut self) -> Option<u32> {
        Some(std::mem::take(&mut self.shortages)).filter(|&n| n > 0)
    }

    pub(super) fn is_pausing(&self) -> bool {
        self.until.is_some()
    }

    pub(super) fn deadline(&self) -> Option<Instant> {
        self.until
    }

    /// True once, when the pause is over at `now`.
    pub(super) fn expired(&mut self, now: Instant) -> bool {
        let over = self.until.is_some_and(|t| t <= now);
        if over {
            self.until = None;
        }
        over
    }

    /// No pause (stopping: accepting ends for good).
    pub(super) fn cancel(&mut self) {
        self.until = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lifecycle(exit_idle_time: Option<u64>) -> (Lifecycle, Instant) {
        let options = Options {
            max_connections: 10,
            drain_timeout: Duration::from_secs(10),
            exit_idle_time: exit_idle_time.map(Duration::from_secs),
        };
        let now = Instant::now();
        (Lifecycle::new(&options, now), now)
    }

    #[test]
    fn serves_until_idle_for_exit_idle_time() {
        let (mut life, start) = lifecycle(Some(5));
        let later = start + Duration::from_secs(5);
        assert_eq!(life.deadline(0), Some(later));
        assert_eq!(life.deadline(1), None, "not idle");
        assert_eq!(life.step(later, 1), Step::Continue);
        life.idle(start + Duration::from_secs(1));
        assert_eq!(life.step(later, 0), Step::Continue);
        assert_eq!(life.step(later + Duration::from_secs(1), 0), Step::Exit);
    }

    #[test]
    fn serves_for_ever_without_exit_idle_time() {
        let (mut life, start) = lifecycle(None);
        assert_eq!(life.deadline(0), None);
        assert_eq!(
            life.step(start + Duration::from_secs(1 << 20), 0),
            Step::Continue
        );
    }

    #[test]
    fn drains_then_terminates_then_kills() {
        let (mut life, start) = lifecycle(Some(1));
        assert!(life.drain(start));
        assert!(!life.drain(start), "once");
        assert!(!life.is_serving());
        let drained = start + Duration::from_secs(10);
        assert_eq!(
            life.deadline(0),
            Some(drained),
            "no idle exit while draining"
        );
        assert_eq!(life.step(start, 3), Step::Continue);
        assert_eq!(life.step(drained, 3), Step::Terminate);
        let killed = drained + KILL_GRACE;
        assert_eq!(life.deadline(3), Some(killed));
        assert_eq!(life.step(drained, 2), Step::Continue);
        assert_eq!(life.step(killed, 2), Step::Kill);
    }

    #[test]
    fn exits_when_the_last_connection_ends() {
        let (mut life, start) = lifecycle(None);
        life.drain(start);
        assert_eq!(life.step(start, 0), Step::Exit);
        let (mut life, start) = lifecycle(None);
        life.drain(start);
        life.step(start + Duration::from_secs(10), 1);
        assert_eq!(life.step(start + Duration::from_secs(10), 0), Step::Exit);
    }

    #[test]
    fn backoff_pauses_and_logs_a_shortage_once() {
        let mut backoff = Backoff::default();
        let start = Instant::now();
        assert!(backoff.shortage());
        backoff.pause(start);
        assert!(backoff.is_pausing());
        assert!(!backoff.expired(start));
        assert!(backoff.expired(start + ACCEPT_BACKOFF));
        assert!(!backoff.expired(start + ACCEPT_BACKOFF), "once");
        assert!(!backoff.shortage(), "the same shortage");
        assert_eq!(backoff.accepted(), Some(2));
        assert_eq!(backoff.accepted(), None);
        backoff.pause(start);
        backoff.cancel();
        assert_eq!(backoff.deadline(), None);
    }
}
