//! The benchmark of qrexec-connect: shared pieces of its helper programs.
//!
//! - `bench-qrexec-client-vm`: the stand-in for `qrexec-client-vm(1)` every
//!   client-side peer runs; it echoes stdin to stdout, so the forwarder's own
//!   cost shows.
//! - `bench-client-floor`: the least program that does the client side's job.
//! - `bench-splice-relay`: the least program that does the service side's job.
//! - `qrexec-connect-bench`: the load generator and driver behind `bench/run`.
#![deny(unsafe_code)]

pub mod copy;
pub mod load;
pub mod pattern;
pub mod procs;
pub mod stats;
pub mod sys;
