//! The size of a relay's own pipe (the one between two sockets): the
//! kernel's default until the transfer proves bulk, and the default again
//! as soon as it pauses.
//!
//! Pipes count against their user's quota (`/proc/sys/fs/pipe-user-pages-soft`,
//! 64 MiB by default; root is exempt): past it, every new pipe of the user,
//! anywhere in the qube, gets two pages. A relay that raised its pipe for the
//! whole call would let a caller that holds some 64 idle calls spend the
//! quota of every other program of the service user (issue 15). So a pipe
//! grows only after `GROW_AFTER` splices in a row that each filled at least
//! half of it, and shrinks back once its source has had nothing to read for
//! `IDLE`: an idle call holds a default pipe, and a grown pipe costs its
//! caller a steady stream of data. The kernel refuses a growth that would
//! take the user past the quota (EPERM): that only costs speed.
//!
//! This is the decision alone, without the calls (see `relay`), so that it
//! can be tested as a pure function.

use std::io;
use std::time::Duration;

/// Splices in a row, each filling at least half of the pipe, that make a
/// transfer bulk: a few hundred KiB at the default size, nothing an
/// interactive call (a shell, an agent's requests) sends in one go.
pub const GROW_AFTER: u32 = 4;
/// How long a grown pipe waits for its source before it shrinks back: well
/// above the gaps of a transfer that keeps going, well below how long a call
/// can be held.
pub const IDLE: Duration = Duration::from_millis(200);

/// The capacity of one pipe, and what it has seen.
#[derive(Debug)]
pub struct PipeSize {
    /// What the kernel gave the new pipe: its default, or two pages when
    /// the user's quota is spent already.
    initial: usize,
    /// The capacity wanted for a bulk transfer.
    bulk: usize,
    capacity: usize,
    /// Splices in a row that filled at least half of the pipe.
    bulk_fills: u32,
}

impl PipeSize {
    pub fn new(initial: usize, bulk: usize) -> Self {
        PipeSize {
            initial,
            bulk,
            capacity: initial,
            bulk_fills: 0,
        }
    }

    /// The pipe's capacity: the most one splice into it should move.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// After a splice into the pipe moved `n` bytes and the pipe was drained
    /// again: the capacity to set now, if any. A grown pipe asks `idle`
    /// whether its source stayed empty for `IDLE`.
    pub fn next(&mut self, n: usize, idle: impl FnOnce() -> bool) -> Option<usize> {
        if self.capacity > self.initial {
            self.bulk_fills = 0;
            return idle().then_some(self.initial);
        }
        if n.saturating_mul(2) >= self.capacity {
            self.bulk_fills += 1;
        } else {
            self.bulk_fills = 0;
        }
        if self.bulk_fills >= GROW_AFTER && self.bulk > self.capacity {
            // Whatever the kernel says, the next growth needs a new proof.
            self.bulk_fills = 0;
            return Some(self.bulk);
        }
        None
    }

    /// Whether the pipe is larger than the kernel gave it.
    pub fn is_grown(&self) -> bool {
        self.capacity > self.initial
    }

    /// The source stayed idle for `IDLE` while the pipe was grown (learnt
    /// from a receive timeout rather than `next`'s question): the capacity to
    /// set now.
    pub fn idle(&mut self) -> Option<usize> {
        self.bulk_fills = 0;
        self.is_grown().then_some(self.initial)
    }

    /// What `F_SETPIPE_SZ` did with the size `next` asked for; a refusal
    /// leaves the capacity as it was.
    pub fn set(&mut self, result: io::Result<usize>) {
        if let Ok(capacity) = result {
            self.capacity = capacity;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: usize = 64 << 10;
    const BULK: usize = 256 << 10;

    fn never_idle() -> bool {
        false
    }

    fn grown() -> PipeSize {
        let mut size = PipeSize::new(DEFAULT, BULK);
        for _ in 1..GROW_AFTER {
            assert_eq!(size.next(DEFAULT, never_idle), None);
        }
        assert_eq!(size.next(DEFAULT, never_idle), Some(BULK));
        size.set(Ok(BULK));
        assert_eq!(size.capacity(), BULK);
        size
    }

    #[test]
    fn a_receive_timeout_shrinks_a_grown_pipe_only() {
        assert_eq!(grown().idle(), Some(DEFAULT));
        assert_eq!(PipeSize::new(DEFAULT, BULK).idle(), None);
        assert!(!PipeSize::new(DEFAULT, BULK).is_grown());
    }

    #[test]
    fn grows_after_bulk_fills_in_a_row() {
        grown();
        let mut size = PipeSize::new(DEFAULT, BULK);
        assert_eq!(size.next(DEFAULT / 2, never_idle), None);
        assert_eq!(size.next(DEFAULT, never_idle), None);
        assert_eq!(size.next(DEFAULT, never_idle), None);
        assert_eq!(size.next(DEFAULT, never_idle), Some(BULK));
    }

    #[test]
    fn small_fills_never_grow_it() {
        let mut size = PipeSize::new(DEFAULT, BULK);
        for i in 0..1000 {
            // Three bulk fills and a short one, over and over.
            let n = if i % GROW_AFTER == GROW_AFTER - 1 {
                100
            } else {
                DEFAULT
            };
            assert_eq!(
                size.next(n, || panic!("not grown: nothing to shrink")),
                None
            );
        }
        assert_eq!(size.capacity(), DEFAULT);
    }

    #[test]
    fn a_grown_pipe_shrinks_back_when_its_source_is_idle() {
        let mut size = grown();
        assert_eq!(size.next(BULK, never_idle), None);
        assert_eq!(size.next(1, never_idle), None);
        assert_eq!(size.next(BULK, || true), Some(DEFAULT));
        size.set(Ok(DEFAULT));
        assert_eq!(size.capacity(), DEFAULT);
        // Growing again takes a new proof.
        assert_eq!(size.next(DEFAULT, || panic!("not grown")), None);
    }

    #[test]
    fn a_refused_growth_keeps_the_size_and_asks_again_after_a_new_proof() {
        let mut size = PipeSize::new(DEFAULT, BULK);
        for _ in 1..GROW_AFTER {
            size.next(DEFAULT, never_idle);
        }
        assert_eq!(size.next(DEFAULT, never_idle), Some(BULK));
        size.set(Err(io::Error::from_raw_os_error(libc::EPERM)));
        assert_eq!(size.capacity(), DEFAULT);
        for _ in 1..GROW_AFTER {
            assert_eq!(size.next(DEFAULT, || panic!("not grown")), None);
        }
        assert_eq!(size.next(DEFAULT, never_idle), Some(BULK));
    }

    #[test]
    fn a_pipe_capped_by_the_quota_asks_for_the_bulk_size_only() {
        // Over the quota, a new pipe has two pages: it never asks for more
        // than the bulk size, and "shrinking" means back to those two.
        let mut size = PipeSize::new(8 << 10, BULK);
        for _ in 1..GROW_AFTER {
            size.next(8 << 10, never_idle);
        }
        assert_eq!(size.next(8 << 10, never_idle), Some(BULK));
        size.set(Ok(BULK));
        assert_eq!(size.next(0, || true), Some(8 << 10));
    }
}
