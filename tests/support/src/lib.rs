//! The test side's shared layer: what the integration tests, the qrexec
//! stand-in (`tests/qrexec-standin`) and the bench (`bench/`) would
//! otherwise each write again.
//!
//! - [`sys`]: the libc calls, each wrapped once; the only `unsafe` code.
//! - [`TempDir`]: a directory removed with everything in it when dropped.
//! - [`wait_for`], [`wait_until`]: poll a condition until [`DEADLINE`].
//! - [`Killed`]: a child killed by pid when the test ends.
//!
//! The product binary never depends on this crate: the main package has it
//! as a dev-dependency only.
#![deny(unsafe_code)]

mod child;
pub mod sys;
mod temp;
mod wait;

pub use child::Killed;
pub use temp::{TempDir, scratch_base};
pub use wait::{DEADLINE, wait_for, wait_until};
