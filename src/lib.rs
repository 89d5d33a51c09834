//! qrexec-connect: systemd socket-activated qrexec connections for Qubes OS.
//!
//! One binary, many applets, chosen by the name it is started under
//! (busybox-style): the client side serves sockets passed by systemd and
//! hands each connection to `qrexec-client-vm`; the service side relays a
//! qrexec call to a local socket.
#![deny(unsafe_code)]

pub mod activation;
pub mod applet;
pub mod argument;
pub mod call;
pub mod daemon;
pub mod dropin;
pub mod error;
pub mod logging;
pub mod notify;
pub mod qrexec;
pub mod relay;
pub mod stdin_socket;
pub mod sys;

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
    let (applet, rest) = match applet::find(invoked).filter(|a| a.name != MULTICALL) {
        Some(applet) => (applet, &args[1.min(args.len())..]),
        None => match dispatch(invoked, &args[1.min(args.len())..]) {
            Ok(found) => found,
            Err(code) => return ExitCode::from(code),
        },
    };
    match (applet.run)(applet.name, rest) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // Before the logger is installed this still reaches stderr.
            if log::max_level() == log::LevelFilter::Off {
                eprintln!("{}: {e}", applet.name);
            } else if systemd_journal_logger::connected_to_journal() {
                // The last word goes by stderr, the journal stream systemd
                // opened for the unit: journald attributes a native message
                // to a unit by reading its sender's /proc/PID, gone once we
                // exit, so `journalctl --user -u UNIT` would miss the reason.
                // `<3>`: priority err (sd-daemon(3)).
                eprintln!("<3>{e}");
            } else {
                log::error!("{e}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}

/// Started as `qrexec-connect` (or an unknown name): argv[1] may name an
/// applet, or be one of our own options; otherwise the plain applet runs.
fn dispatch<'a>(
    invoked: &str,
    args: &'a [&'a str],
) -> Result<(&'static Applet, &'a [&'a str]), u8> {
    match args.first().copied() {
        Some("--list") => {
            print!("{}", applet::list());
            Err(0)
        }
        Some("--version" | "-V") => {
            println!("{MULTICALL} {}", env!("CARGO_PKG_VERSION"));
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
