//! The call's argument: `QREXEC_SERVICE_ARGUMENT`, the command line, and
//! the argument a `SERVICE+ARG` name pins, checked against each other.

use std::ffi::OsString;

use crate::error::{Error, ParseError, Result};

/// Picks the call's argument from `QREXEC_SERVICE_ARGUMENT` (`env`) and the
/// command line (`args`, after the applet name).
pub fn call_argument(
    args: &[&str],
    env: Option<OsString>,
) -> std::result::Result<String, ParseError> {
    if args.len() > 1 {
        return Err(ParseError::TooManyArguments(args.len()));
    }
    let Some(env) = env else {
        return Ok(args.first().copied().unwrap_or("").to_owned());
    };
    let env = env.into_string().map_err(ParseError::ArgumentNotUtf8)?;
    match args.first() {
        Some(&arg) if arg != env => Err(ParseError::ArgumentDiffers {
            argv: arg.to_owned(),
            env,
        }),
        _ => Ok(env),
    }
}

/// Checks the call's argument against the one pinned by the name we were
/// started under (`SERVICE+ARG`). Started by hand under that name with no
/// argument at all (`given` false), the pinned one is the call's.
pub(super) fn pinned_argument(
    name: &str,
    pinned: Option<&str>,
    argument: String,
    given: bool,
) -> Result<String> {
    match pinned {
        None => Ok(argument),
        Some(pinned) if !given => Ok(pinned.to_owned()),
        Some(pinned) if pinned == argument => Ok(argument),
        Some(pinned) => Err(Error::Usage(format!(
            "started as {name}+{} for that argument only, but the call's argument is '{}'",
            pinned.escape_debug(),
            argument.escape_debug()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argument_from_env_or_argv() {
        let env = |s: &str| Some(OsString::from(s));
        assert_eq!(call_argument(&["a"], env("a")).unwrap(), "a");
        assert_eq!(call_argument(&[], env("a")).unwrap(), "a");
        assert_eq!(call_argument(&[], env("")).unwrap(), "");
        assert_eq!(call_argument(&["a"], None).unwrap(), "a");
        assert_eq!(call_argument(&[], None).unwrap(), "");
        let differs = |argv: &str, env: &str| ParseError::ArgumentDiffers {
            argv: argv.into(),
            env: env.into(),
        };
        for (args, from_env, why) in [
            (&["b"][..], env("a"), differs("b", "a")),
            (&["a"][..], env(""), differs("a", "")),
            (&["a", "b"][..], env("a"), ParseError::TooManyArguments(2)),
            (&["a", "b"][..], None, ParseError::TooManyArguments(2)),
        ] {
            assert_eq!(
                call_argument(args, from_env.clone()),
                Err(why),
                "{args:?} {from_env:?}"
            );
        }
        // A refusal is one line, whatever the two values hold.
        let e = call_argument(&["a\nb"], env("a\rb"))
            .unwrap_err()
            .to_string();
        assert!(!e.chars().any(char::is_control), "{e:?}");
        use std::os::unix::ffi::OsStringExt;
        let bad = OsString::from_vec(vec![0xff]);
        assert_eq!(
            call_argument(&[], Some(bad.clone())),
            Err(ParseError::ArgumentNotUtf8(bad))
        );
    }

    #[test]
    fn pinned_by_the_name() {
        let pinned = |pin, argument: &str, given| {
            pinned_argument("qubes.ConnectUnix", pin, argument.to_owned(), given)
        };
        assert_eq!(pinned(None, "x", true).unwrap(), "x");
        assert_eq!(pinned(Some("agent"), "agent", true).unwrap(), "agent");
        assert_eq!(pinned(Some("agent"), "", false).unwrap(), "agent");
        let e = pinned(Some("agent"), "other", true).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(
            e.to_string(),
            "started as qubes.ConnectUnix+agent for that argument only, but the call's argument is 'other'"
        );
        assert_eq!(
            pinned(Some("agent"), "", true).unwrap_err().to_string(),
            "started as qubes.ConnectUnix+agent for that argument only, but the call's argument is ''",
            "an empty argument given"
        );
    }
}
