//! The verbs of the plain `qrexec-connect`, run by the user in the client
//! qube: `add` a forward, `list` them, `remove` one, print the dom0 `policy`
//! lines. They act on the user's `systemctl --user` manager and on the unit
//! files of `~/.config/systemd/user`, in the layout the README teaches.
//!
//! The daemon form of `qrexec-connect` takes no positional words, so these
//! do not clash with it.

pub mod add;
pub mod json;
pub mod list;
pub mod policy;
pub mod remove;
pub mod show;
pub mod spec;
mod spec_error;
pub mod systemctl;
pub mod unit;

use crate::error::Result;

/// The words that make `qrexec-connect` manage forwards instead of serving.
pub const VERBS: &[&str] = &["add", "list", "remove", "policy"];

/// Runs one verb with the words after it; returns the exit status. An error
/// is one line on stderr.
pub fn run(verb: &str, args: &[&str]) -> u8 {
    let result = match verb {
        "add" => add::run(args),
        "list" => list::run(args),
        "remove" => remove::run(args),
        "policy" => policy::run(args),
        _ => unreachable!("dispatch passes only VERBS"),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("qrexec-connect {verb}: {e}");
            e.exit_code()
        }
    }
}

/// `--help` of a verb: prints its usage and says to stop with status 0.
fn help(args: &[&str], usage: &str, about: &str) -> Result<Option<u8>> {
    if args.iter().any(|a| matches!(*a, "--help" | "-h")) {
        println!("Usage: qrexec-connect {usage}\n\n{about}");
        return Ok(Some(0));
    }
    Ok(None)
}
