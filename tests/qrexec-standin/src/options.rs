//! The command line of `qrexec-client-vm(1)`, parsed the way its
//! `getopt_long` with a leading `+` does: options only before the first word
//! that is not one, `--` ends them, long options may be abbreviated to any
//! unique prefix and take their value as `--name=V` or `--name V`, short
//! options cluster (`-tT`, `-aPATH`).
//!
//! Two generations are played: the current one (qrexec 4.2.19 and later)
//! knows `--use-stdin-socket` and `-h`; the older one knows neither, so `-h`
//! is an invalid option and its usage text does not list the flag.

/// The stand-in's own switch that makes it play the older qrexec.
pub const OLD_SWITCH: &str = "--no-stdin-socket-support";
/// The flag whose presence in `-h` tells qrexec-connect it is supported.
pub const STDIN_SOCKET_FLAG: &str = "--use-stdin-socket";

/// What the command line asked for.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    pub use_stdin_socket: bool,
    pub buffer_size: Option<u32>,
    pub agent_socket: Option<Vec<u8>>,
    pub prefix_data: Option<Vec<u8>>,
    pub filter_stdout: Option<bool>,
    pub filter_stderr: Option<bool>,
    pub help: bool,
    /// The words after the options: TARGET, SERVICE+ARG, then a local
    /// program and its arguments.
    pub words: Vec<Vec<u8>>,
}

/// Why the command line was refused: a message (without the program name),
/// whether the usage text follows it, and the exit status.
#[derive(Debug, PartialEq, Eq)]
pub struct Refusal {
    pub message: Option<String>,
    pub show_usage: bool,
    pub status: u8,
}

impl Refusal {
    fn usage(message: impl Into<String>) -> Self {
        Refusal {
            message: Some(message.into()),
            show_usage: true,
            status: 2,
        }
    }

    fn fatal(message: impl Into<String>, status: u8) -> Self {
        Refusal {
            message: Some(message.into()),
            show_usage: false,
            status,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Id {
    BufferSize,
    FilterStdout(bool),
    FilterStderr(bool),
    AgentSocket,
    PrefixData,
    UseStdinSocket,
    Help,
    OldSwitch,
}

struct Opt {
    long: &'static str,
    short: Option<u8>,
    takes_value: bool,
    id: Id,
    /// Only in qrexec 4.2.19 and later.
    current_only: bool,
}

const OPTS: &[Opt] = &[
    Opt {
        long: "buffer-size",
        short: None,
        takes_value: true,
        id: Id::BufferSize,
        current_only: false,
    },
    Opt {
        long: "filter-escape-chars-stdout",
        short: Some(b't'),
        takes_value: false,
        id: Id::FilterStdout(true),
        current_only: false,
    },
    Opt {
        long: "filter-escape-chars-stderr",
        short: Some(b'T'),
        takes_value: false,
        id: Id::FilterStderr(true),
        current_only: false,
    },
    Opt {
        long: "no-filter-escape-chars-stdout",
        short: None,
        takes_value: false,
        id: Id::FilterStdout(false),
        current_only: false,
    },
    Opt {
        long: "no-filter-escape-chars-stderr",
        short: None,
        takes_value: false,
        id: Id::FilterStderr(false),
        current_only: false,
    },
    Opt {
        long: "agent-socket",
        short: Some(b'a'),
        takes_value: true,
        id: Id::AgentSocket,
        current_only: false,
    },
    Opt {
        long: "prefix-data",
        short: Some(b'p'),
        takes_value: true,
        id: Id::PrefixData,
        current_only: false,
    },
    Opt {
        long: "use-stdin-socket",
        short: None,
        takes_value: false,
        id: Id::UseStdinSocket,
        current_only: true,
    },
    Opt {
        long: "help",
        short: Some(b'h'),
        takes_value: false,
        id: Id::Help,
        current_only: true,
    },
    Opt {
        long: "no-stdin-socket-support",
        short: None,
        takes_value: false,
        id: Id::OldSwitch,
        current_only: false,
    },
];

fn known(old: bool) -> impl Iterator<Item = &'static Opt> {
    OPTS.iter().filter(move |o| !(old && o.current_only))
}

/// Whether the options part of `args` (argv without argv[0]) asks for the
/// older qrexec; looked at before parsing, since it changes what is known.
pub fn wants_old(args: &[Vec<u8>]) -> bool {
    args.iter()
        .take_while(|a| a.as_slice() != b"--")
        .any(|a| a.as_slice() == OLD_SWITCH.as_bytes())
}

/// Parses argv without argv[0].
pub fn parse(args: &[Vec<u8>], old: bool) -> Result<Options, Refusal> {
    let mut options = Options::default();
    let mut i = 0;
    while let Some(arg) = args.get(i) {
        if arg.as_slice() == b"--" {
            i += 1;
            break;
        }
        if let Some(long) = arg.strip_prefix(b"--") {
            let (name, inline) = match long.iter().position(|&b| b == b'=') {
                Some(eq) => (&long[..eq], Some(long[eq + 1..].to_vec())),
                None => (long, None),
            };
            let opt = find_long(name, old)?;
            let value = match (opt.takes_value, inline) {
                (false, Some(_)) => {
                    return Err(Refusal::usage(format!(
                        "option '--{}' doesn't allow an argument",
                        opt.long
                    )));
                }
                (false, None) => None,
                (true, Some(v)) => Some(v),
                (true, None) => {
                    i += 1;
                    Some(args.get(i).cloned().ok_or_else(|| {
                        Refusal::usage(format!("option '--{}' requires an argument", opt.long))
                    })?)
                }
            };
            options.apply(opt.id, value)?;
            i += 1;
            continue;
        }
        if arg.len() > 1 && arg[0] == b'-' {
            let mut j = 1;
            while let Some(&c) = arg.get(j) {
                let Some(opt) = known(old).find(|o| o.short == Some(c)) else {
                    return Err(Refusal::usage(format!(
                        "invalid option -- '{}'",
                        char::from(c).escape_default()
                    )));
                };
                if opt.takes_value {
                    let value = if j + 1 < arg.len() {
                        arg[j + 1..].to_vec()
                    } else {
                        i += 1;
                        args.get(i).cloned().ok_or_else(|| {
                            Refusal::usage(format!(
                                "option requires an argument -- '{}'",
                                char::from(c)
                            ))
                        })?
                    };
                    options.apply(opt.id, Some(value))?;
                    break;
                }
                options.apply(opt.id, None)?;
                j += 1;
            }
            i += 1;
            continue;
        }
        // The first word that is not an option ends the options.
        break;
    }
    options.words = args[i.min(args.len())..].to_vec();
    Ok(options)
}

/// An exact long name, else its unique abbreviation.
fn find_long(name: &[u8], old: bool) -> Result<&'static Opt, Refusal> {
    let shown = String::from_utf8_lossy(name);
    if let Some(opt) = known(old).find(|o| o.long.as_bytes() == name) {
        return Ok(opt);
    }
    let candidates: Vec<&Opt> = known(old)
        .filter(|o| o.long.as_bytes().starts_with(name))
        .collect();
    match candidates.as_slice() {
        [one] => Ok(one),
        [] => Err(Refusal::usage(format!("unrecognized option '--{shown}'"))),
        many => Err(Refusal::usage(format!(
            "option '--{shown}' is ambiguous; possibilities:{}",
            many.iter()
                .map(|o| format!(" '--{}'", o.long))
                .collect::<String>()
        ))),
    }
}

impl Options {
    fn apply(&mut self, id: Id, value: Option<Vec<u8>>) -> Result<(), Refusal> {
        match id {
            Id::BufferSize => {
                self.buffer_size = Some(buffer_size(&value.unwrap_or_default())?);
            }
            Id::FilterStdout(on) => self.filter_stdout = Some(on),
            Id::FilterStderr(on) => self.filter_stderr = Some(on),
            Id::AgentSocket => self.agent_socket = value,
            Id::PrefixData => {
                if self.prefix_data.is_some() {
                    return Err(Refusal {
                        message: None,
                        show_usage: true,
                        status: 2,
                    });
                }
                self.prefix_data = value;
            }
            Id::UseStdinSocket => {
                if self.use_stdin_socket {
                    return Err(Refusal::fatal("--use-stdin-socket passed twice", 2));
                }
                self.use_stdin_socket = true;
            }
            Id::Help => self.help = true,
            Id::OldSwitch => {}
        }
        Ok(())
    }
}

/// `--buffer-size`: a number as `strtoul(s, 0)` reads it (decimal, `0x` hex,
/// leading-zero octal), at most `INT_MAX`; a bad one ends with status 1.
fn buffer_size(value: &[u8]) -> Result<u32, Refusal> {
    let s = std::str::from_utf8(value).unwrap_or("\u{fffd}");
    if !s.starts_with(|c: char| c.is_ascii_digit()) {
        return Err(Refusal::fatal(
            "Bad buffer size: does not begin with a number",
            1,
        ));
    }
    let (digits, radix) = if let Some(hex) = s.strip_prefix("0x").or(s.strip_prefix("0X")) {
        (hex, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        (&s[1..], 8)
    } else {
        (s, 10)
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end < digits.len() {
        return Err(Refusal::fatal("Bad buffer size: trailing junk", 1));
    }
    match u64::from_str_radix(digits, radix) {
        Ok(n) if n <= i32::MAX as u64 => Ok(n as u32),
        _ => Err(Refusal::fatal("strtoul: Numerical result out of range", 1)),
    }
}

/// The usage text (`-h`, or after a bad option). The older qrexec's does not
/// mention `--use-stdin-socket`: that is how callers tell the two apart.
pub fn usage(program: &str, old: bool) -> String {
    let mut text = format!(
        "usage: {program} [options] TARGET SERVICE[+ARGUMENT] [LOCAL_PROGRAM [ARGUMENTS...]]\n\
         (the qrexec-connect test stand-in: policy, qubes and services come from $QREXEC_STANDIN_ROOT)\n\
         Options:\n\
         \x20 --buffer-size=BYTES                smallest vchan buffer (checked, then unused)\n\
         \x20 -t, --filter-escape-chars-stdout   filter control characters on stdout (unused)\n\
         \x20 -T, --filter-escape-chars-stderr   filter control characters on stderr (unused)\n\
         \x20 --no-filter-escape-chars-stdout    do not filter stdout\n\
         \x20 --no-filter-escape-chars-stderr    do not filter stderr\n\
         \x20 -a, --agent-socket=PATH            qrexec-agent's socket (unused)\n\
         \x20 -p, --prefix-data=DATA             send DATA to the service before stdin\n"
    );
    if !old {
        text.push_str(
            "  --use-stdin-socket                 fd 0 is a stream socket used both ways; shut down\n\
             \x20                                    for writing when the service ends its output\n\
             \x20 -h, --help                         show this text\n",
        );
    }
    text.push_str(
        "  --no-stdin-socket-support          play a qrexec older than 4.2.19 (also QREXEC_STANDIN_OLD=1)\n",
    );
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<Vec<u8>> {
        list.iter().map(|a| a.as_bytes().to_vec()).collect()
    }

    fn words(o: &Options) -> Vec<&str> {
        o.words
            .iter()
            .map(|w| std::str::from_utf8(w).unwrap())
            .collect()
    }

    #[test]
    fn options_stop_at_the_first_word() {
        let o = parse(
            &args(&["--use-stdin-socket", "--", "work", "qubes.X+1"]),
            false,
        )
        .unwrap();
        assert!(o.use_stdin_socket);
        assert_eq!(words(&o), ["work", "qubes.X+1"]);

        // getopt with '+': what follows TARGET is never an option.
        let o = parse(&args(&["work", "qubes.X", "--use-stdin-socket"]), false).unwrap();
        assert!(!o.use_stdin_socket);
        assert_eq!(words(&o), ["work", "qubes.X", "--use-stdin-socket"]);

        // Without `--`, a target starting with '-' is taken for options.
        assert!(parse(&args(&["-work", "qubes.X"]), false).is_err());
    }

    #[test]
    fn values_and_abbreviations() {
        let o = parse(
            &args(&[
                "--buffer-size=4096",
                "-tT",
                "-a/run/x",
                "--prefix-data",
                "hi",
                "--use-stdin",
                "w",
                "s",
            ]),
            false,
        )
        .unwrap();
        assert_eq!(o.buffer_size, Some(4096));
        assert_eq!((o.filter_stdout, o.filter_stderr), (Some(true), Some(true)));
        assert_eq!(o.agent_socket.as_deref(), Some(&b"/run/x"[..]));
        assert_eq!(o.prefix_data.as_deref(), Some(&b"hi"[..]));
        assert!(o.use_stdin_socket);
        assert_eq!(words(&o), ["w", "s"]);

        let o = parse(&args(&["--buffer-size", "0x10", "--", "w", "s"]), false).unwrap();
        assert_eq!(o.buffer_size, Some(16));
        assert_eq!(
            parse(&args(&["--buffer-size=010", "w", "s"]), false)
                .unwrap()
                .buffer_size,
            Some(8)
        );
        assert!(parse(&args(&["-h"]), false).unwrap().help);
        assert!(parse(&args(&["--he"]), false).unwrap().help);
    }

    #[test]
    fn refusals() {
        let status = |list: &[&str], old| parse(&args(list), old).unwrap_err().status;
        assert_eq!(status(&["--bogus", "w", "s"], false), 2);
        assert_eq!(status(&["-x", "w", "s"], false), 2);
        assert_eq!(status(&["--no-filter", "w", "s"], false), 2, "ambiguous");
        assert_eq!(status(&["--buffer-size"], false), 2);
        assert_eq!(status(&["--use-stdin-socket=1", "w", "s"], false), 2);
        assert_eq!(
            status(
                &["--use-stdin-socket", "--use-stdin-socket", "w", "s"],
                false
            ),
            2
        );
        assert_eq!(status(&["--buffer-size=x", "w", "s"], false), 1);
        assert_eq!(status(&["--buffer-size=12k", "w", "s"], false), 1);
        assert_eq!(status(&["--buffer-size=99999999999", "w", "s"], false), 1);
        assert_eq!(status(&["-p", "a", "-p", "b", "w", "s"], false), 2);
        let r = parse(&args(&["--bogus"]), false).unwrap_err();
        assert_eq!(r.message.as_deref(), Some("unrecognized option '--bogus'"));
        assert!(r.show_usage);
    }

    #[test]
    fn the_older_qrexec() {
        let list = args(&[OLD_SWITCH, "--use-stdin-socket", "--", "w", "s"]);
        assert!(wants_old(&list));
        assert!(!wants_old(&args(&["--", OLD_SWITCH])));
        let r = parse(&list, true).unwrap_err();
        assert_eq!(
            r.message.as_deref(),
            Some("unrecognized option '--use-stdin-socket'")
        );
        assert_eq!(parse(&args(&["-h"]), true).unwrap_err().status, 2);
        assert!(parse(&args(&[OLD_SWITCH, "w", "s"]), true).is_ok());

        assert!(usage("q", false).contains(STDIN_SOCKET_FLAG));
        assert!(!usage("q", true).contains(STDIN_SOCKET_FLAG));
        assert!(usage("q", false).contains("--buffer-size"));
    }
}
