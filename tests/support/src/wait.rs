//! Waiting for a condition instead of sleeping for a guess.

use std::time::{Duration, Instant};

/// How long any wait may take before the test fails: generous, since a
/// loaded machine is slow, and never reached when things work (it only
/// bounds how long a failing test hangs).
pub const DEADLINE: Duration = Duration::from_secs(60);

/// Polls `check` until it gives a value; fails the test after [`DEADLINE`].
pub fn wait_for<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "timed out after {DEADLINE:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Polls until `condition` holds; fails the test after [`DEADLINE`].
pub fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    wait_for(what, || condition().then_some(()))
}
