//! Shared test fixtures.

pub mod user_manager;
