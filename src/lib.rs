//! qrexec-connect: systemd socket-activated qrexec connections for Qubes OS.
//!
//! One binary, many applets, chosen by the name it is started under
//! (busybox-style): the client side serves sockets passed by systemd and
//! hands each connection to `qrexec-client-vm`; the service side relays a
//! qrexec call to a local socket.
//!
//! The library is public only where the fuzz targets and the property tests
//! call the pure parsers (`activation::parse`, `argument`, `call`,
//! `applet::service::{Destination, call_argument}`, `stdin_socket`'s cache
//! format, the SOCKS5 handshake in `socks`); everything else is `pub(crate)`.
#![deny(unsafe_code)]

pub mod activation;
pub mod applet;
pub mod argument;
pub mod call;
pub(crate) mod daemon;
pub mod dropin;
pub mod error;
mod fd_name;
pub(crate) mod logging;
pub(crate) mod manage;
pub(crate) mod notify;
pub(crate) mod own_unit;
mod parse_error;
pub(crate) mod qrexec;
pub(crate) mod relay;
pub mod socks;
pub mod stdin_socket;
pub(crate) mod sys;

use std::path::Path;
use std::process::ExitCode;

use applet::{APPLETS, Applet, MULTICALL};

/// The program: picks the applet from argv and returns its exit status.
pub fn main() -> ExitCode {
    let args: Vec<String> = match std::env::args_os().map(|a| a.into_string()).collect() {
        Ok(args) => args,
        Err(bad) => {
            eprintln!("{MULTICALL}: argument {bad:?} is not valid UTF-8");
            return ExitCode::from(2);
        }
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let invoked = args
        .first()
        .and_then(|a| Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or(MULTICALL);
    let rest = &args[1.min(args.len())..];
    let (applet, pinned, rest) = match applet::by_invoked_name(invoked) {
        Some((applet, pinned)) => (applet, pinned, rest),
        None => {
            let from_qrexec = std::env::var_os("QREXEC_SERVICE_ARGUMENT").is_some();
            match dispatch(invoked, rest, from_qrexec) {
                Ok((applet, rest)) => (applet, None, rest),
                Err(code) => return ExitCode::from(code),
            }
        }
    };
    match applet.run(pinned, rest) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            logging::fatal(applet.name, &e);
            ExitCode::from(e.exit_code())
        }
    }
}

/// Started as `qrexec-connect` (or an unknown name): argv[1] may name an
/// applet, or be one of our own options; otherwise the plain applet runs.
/// Under an unknown name started by qrexec (`from_qrexec`), argv[1] is the
/// caller's argument, which must not choose the code that runs.
fn dispatch<'a>(
    invoked: &str,
    args: &'a [&'a str],
    from_qrexec: bool,
) -> Result<(&'static Applet, &'a [&'a str]), u8> {
    if from_qrexec && invoked != MULTICALL {
        eprintln!(
            "{MULTICALL}: started by qrexec as unknown name '{}'; install it under \
             an applet's name (SERVICE or SERVICE+ARG); the applets are:",
            invoked.escape_debug()
        );
        eprint!("{}", applet::list());
        return Err(2);
    }
    match args.first().copied() {
        Some("--list") => {
            print!("{}", applet::list());
            Err(0)
        }
        Some(verb) if invoked == MULTICALL && manage::VERBS.contains(&verb) => {
            Err(manage::run(verb, &args[1..]))
        }
        Some("--version" | "-V") => {
            // The version and its commit (build.rs).
            println!("{MULTICALL} {}", env!("QREXEC_CONNECT_VERSION"));
            Err(0)
        }
        Some(name) if !name.starts_with('-') => match applet::find(name) {
            Some(applet) => Ok((applet, &args[1..])),
            None => {
                eprintln!("{MULTICALL}: unknown applet '{name}'; the applets are:");
                eprint!("{}", applet::list());
                Err(2)
            }
        },
        _ if invoked == MULTICALL => Ok((&APPLETS[0], args)),
        _ => {
            eprintln!("{MULTICALL}: started as unknown name '{invoked}'; the applets are:");
            eprint!("{}", applet::list());
            Err(2)
        }
    }
}
