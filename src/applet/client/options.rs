//! The words of a client applet's command line that argh does not check:
//! our value options written `--name=value`, and the options passed on to
//! qrexec-client-vm after `--`.

use std::ffi::OsString;

use crate::error::{Error, Result};

/// Our options that take a value.
pub(super) const VALUE_OPTIONS: &[&str] = &[
    "--service",
    "--argument",
    "--max-connections",
    "--drain-timeout",
    "--exit-idle-time",
    "--stdin-socket",
    "--qrexec-client-vm",
];

/// Splits `--name=value` of the options in `value_options` (those that take
/// a value), up to `--` (what follows is qrexec-client-vm's, such as
/// `--buffer-size=N`, and stays whole). argh knows only `--name value`; the
/// documentation (and systemd units) write `--name=value` too.
pub(in crate::applet) fn split_values<'a>(raw: &[&'a str], value_options: &[&str]) -> Vec<&'a str> {
    let mut args = Vec::with_capacity(raw.len() + 2);
    let mut ours = true;
    for &arg in raw {
        if ours {
            if arg == "--" {
                ours = false;
            } else if let Some((name, value)) = arg.split_once('=')
                && value_options.contains(&name)
            {
                args.extend([name, value]);
                continue;
            }
        }
        args.push(arg);
    }
    args
}

/// Checks the words passed on to qrexec-client-vm: each must be an option.
/// qrexec-client-vm's options end at its first other word, which it takes
/// for the target: `junk --use-stdin-socket -- work CALL` would call the
/// service `--use-stdin-socket` in the qube `junk` and run `--` locally. A
/// lone `-` is such a word too: getopt takes it for the first operand.
pub(super) fn check_passed_options(options: &[OsString]) -> Result<()> {
    match options.iter().find(|o| {
        o.as_encoded_bytes().first() != Some(&b'-') || o.as_os_str() == "--" || o.as_os_str() == "-"
    }) {
        Some(bad) => Err(Error::Usage(format!(
            "{bad:?} is not an option for qrexec-client-vm: the words after `--` (and after \
             the instance) must each be one option, such as --buffer-size=65536"
        ))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_options_with_equals() {
        assert_eq!(
            split_values(
                &[
                    "--stdin-socket=no",
                    "22",
                    "--max-connections=5",
                    "--",
                    "--buffer-size=1"
                ],
                VALUE_OPTIONS
            ),
            [
                "--stdin-socket",
                "no",
                "22",
                "--max-connections",
                "5",
                "--",
                "--buffer-size=1"
            ]
        );
        assert_eq!(
            split_values(&["--verbose=1"], VALUE_OPTIONS),
            ["--verbose=1"],
            "not a value option"
        );
        assert_eq!(
            split_values(&["--service=a=b"], VALUE_OPTIONS),
            ["--service", "a=b"],
            "split at the first ="
        );
    }

    #[test]
    fn passed_words_must_be_options() {
        let words = |list: &[&str]| list.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(check_passed_options(&words(&["--buffer-size=1", "-t"])).is_ok());
        assert!(check_passed_options(&words(&[])).is_ok());
        for (bad, word) in [
            (&["junk"][..], "\"junk\""),
            (&["--"][..], "\"--\""),
            (&["-"][..], "\"-\""),
            (&["-t", "-"][..], "\"-\""),
            (&["-a", "/run/x"][..], "\"/run/x\""),
            (&[""][..], "\"\""),
        ] {
            let e = check_passed_options(&words(bad)).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{bad:?}");
            assert!(
                e.to_string()
                    .starts_with(&format!("{word} is not an option for qrexec-client-vm")),
                "{bad:?}: {e}"
            );
        }
    }
}
