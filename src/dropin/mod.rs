//! The socket unit's own drop-ins, read as systemd reads them, to tell
//! apart sockets that systemd passes under one name.
//!
//! systemd keeps one `FileDescriptorName=` per socket unit (`systemd.socket(5)`):
//! with two drop-ins of one instance, each naming its qube, every socket
//! arrives with the last one's name. This module finds which drop-in
//! declares each socket instead, and refuses whenever the files do not
//! say one thing:
//!
//! - [`syntax`]: unit-file text (`systemd.syntax(7)`) -> `[Socket]` settings;
//! - [`specifier`]: `%t`, `%h`, `%i`, `%I`, ... (`systemd.unit(5)`);
//! - [`listen`]: a `ListenStream=` value and the address it binds;
//! - [`search`]: the user search path and which drop-ins apply, in order;
//! - [`resolve`]: each passed socket -> its drop-in and name.
//!
//! All pure but the directory listing and file reading in [`search`].

pub mod listen;
pub mod load;
pub mod resolve;
pub mod search;
pub mod specifier;
pub mod syntax;

/// The bound address a Listen line is matched against (for the fuzz target).
pub use crate::sys::socket::SockAddr;
pub use listen::ListenAddr;
pub use load::resolve_names;
pub use resolve::{Resolved, Source, resolve};
pub use specifier::Specifiers;

#[cfg(test)]
mod tests;
