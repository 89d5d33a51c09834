//! Unit-file syntax (`systemd.syntax(7)`), read as systemd's `config_parse()`
//! reads it, keeping only the `[Socket]` settings that decide which fds a
//! socket unit passes and what they are called.
//!
//! Lines end at `\n`, `\r\n`, `\r` or NUL; a line whose first non-blank
//! character is `#` or `;` is a comment, even inside a continuation; a line
//! ending in an unescaped backslash goes on on the next line, the backslash
//! becoming a space; keys and values are stripped of blanks. Listen values
//! are taken as written: systemd applies no quoting to them.

/// What a `Listen*=` line declares (`systemd.socket(5)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListenKind {
    Stream,
    SequentialPacket,
    Datagram,
    /// `ListenFIFO=`, `ListenSpecial=`, `ListenNetlink=`,
    /// `ListenMessageQueue=`: one fd each, never a stream socket.
    Other,
    /// `ListenUSBFunction=`: passes a variable number of fds.
    UsbFunction,
}

/// One `[Socket]` assignment that matters here, in file order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `Listen*=VALUE` with a non-empty value (specifiers not yet expanded).
    Listen(ListenKind, String),
    /// An empty `Listen*=`: removes every port declared before, in this
    /// file and the ones before it.
    ListenReset,
    /// `FileDescriptorName=VALUE`; empty: back to the default (the unit name).
    FdName(String),
}

/// A setting and the line it starts on (1-based).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Line {
    pub number: usize,
    pub setting: Setting,
}

const BLANKS: &[char] = &[' ', '\t', '\n', '\r'];

fn listen_kind(key: &str) -> Option<ListenKind> {
    Some(match key {
        "ListenStream" => ListenKind::Stream,
        "ListenSequentialPacket" => ListenKind::SequentialPacket,
        "ListenDatagram" => ListenKind::Datagram,
        "ListenFIFO" | "ListenSpecial" | "ListenNetlink" | "ListenMessageQueue" => {
            ListenKind::Other
        }
        "ListenUSBFunction" => ListenKind::UsbFunction,
        _ => return None,
    })
}

/// Whether `text` ends in a backslash that escapes nothing (the parity of
/// escapes over the whole logical line, as systemd counts it).
fn ends_escaped(text: &str) -> bool {
    let mut escaped = false;
    for c in text.chars() {
        escaped = !escaped && c == '\\';
    }
    escaped
}

/// Parses a unit file or drop-in; returns its `[Socket]` settings in order.
///
/// Refuses what systemd refuses to load (a section header without its `]`);
/// lines systemd ignores with a warning (no `=`, an assignment before any
/// section) are ignored here too.
pub fn parse(text: &str) -> Result<Vec<Line>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut settings = Vec::new();
    let mut in_socket = false;
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in split_lines(text).enumerate() {
        if raw.trim_start_matches(BLANKS).starts_with(['#', ';']) {
            continue;
        }
        let (start, mut logical) = match pending.take() {
            Some((start, so_far)) => (start, so_far + raw),
            None => (i + 1, raw.to_owned()),
        };
        if ends_escaped(&logical) {
            logical.pop();
            logical.push(' ');
            pending = Some((start, logical));
            continue;
        }
        parse_line(start, &logical, &mut in_socket, &mut settings)?;
    }
    // At the end of the file a continued line still counts.
    if let Some((start, logical)) = pending {
        parse_line(start, &logical, &mut in_socket, &mut settings)?;
    }
    Ok(settings)
}

/// Lines as systemd's `read_line()` cuts them.
fn split_lines(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = Some(text);
    std::iter::from_fn(move || {
        let current = rest?;
        match current.find(['\n', '\r', '\0']) {
            Some(end) => {
                let skip = if current[end..].starts_with("\r\n") {
                    2
                } else {
                    1
                };
                rest = Some(&current[end + skip..]).filter(|r| !r.is_empty());
                Some(&current[..end])
            }
            None => {
                rest = None;
                Some(current)
            }
        }
    })
}

fn parse_line(
    number: usize,
    line: &str,
    in_socket: &mut bool,
    settings: &mut Vec<Line>,
) -> Result<(), String> {
    let line = line.trim_matches(BLANKS);
    if line.is_empty() || line.starts_with(['#', ';']) {
        return Ok(());
    }
    if let Some(header) = line.strip_prefix('[') {
        let Some(name) = header.strip_suffix(']') else {
            return Err(format!("line {number}: invalid section header {line:?}"));
        };
        *in_socket = name == "Socket";
        return Ok(());
    }
    let Some((key, value)) = line.split_once('=') else {
        return Ok(());
    };
    if !*in_socket {
        return Ok(());
    }
    let (key, value) = (key.trim_matches(BLANKS), value.trim_matches(BLANKS));
    let setting = match (key, listen_kind(key)) {
        (_, Some(_)) if value.is_empty() => Setting::ListenReset,
        (_, Some(kind)) => Setting::Listen(kind, value.to_owned()),
        ("FileDescriptorName", None) => Setting::FdName(value.to_owned()),
        _ => return Ok(()),
    };
    settings.push(Line { number, setting });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ListenKind::*;
    use Setting::*;

    fn settings(text: &str) -> Vec<Setting> {
        parse(text)
            .unwrap()
            .into_iter()
            .map(|l| l.setting)
            .collect()
    }

    #[test]
    fn the_seed_drop_in() {
        let text = "[Socket]\nListenStream=127.0.0.1:1234\nFileDescriptorName=gitweb\n";
        assert_eq!(
            parse(text).unwrap(),
            [
                Line {
                    number: 2,
                    setting: Listen(Stream, "127.0.0.1:1234".into())
                },
                Line {
                    number: 3,
                    setting: FdName("gitweb".into())
                },
            ]
        );
    }

    #[test]
    fn sections_comments_and_blanks() {
        let text = "\u{feff}# top\nListenStream=1\n[Unit]\nListenStream=2\n[Socket]\n  ; c\n\t# c\n \
                    ListenStream =  3 \r\n[X-Mine]\nListenStream=4\n[Socket]\nFileDescriptorName=\n\
                    NoEquals\n=x\nlistenstream=5\nListenDatagram=6\nListenFIFO=/f\nListenStream=\n";
        assert_eq!(
            settings(text),
            [
                Listen(Stream, "3".into()),
                FdName(String::new()),
                Listen(Datagram, "6".into()),
                Listen(Other, "/f".into()),
                ListenReset,
            ]
        );
    }

    #[test]
    fn continuation_lines() {
        assert_eq!(
            settings("[Socket]\nListenStream=127.0.0.1\\\n:1234\n"),
            [Listen(Stream, "127.0.0.1 :1234".into())]
        );
        // A comment inside a continuation is skipped; an escaped backslash
        // does not continue.
        assert_eq!(
            settings("[Socket]\nFileDescriptorName=a\\\n# no\nb\nListenStream=/x\\\\\n"),
            [FdName("a b".into()), Listen(Stream, "/x\\\\".into())]
        );
        // At the end of the file the continued line still counts.
        assert_eq!(
            settings("[Socket]\nListenStream=/a\\"),
            [Listen(Stream, "/a".into())]
        );
        assert_eq!(
            parse("[Socket]\nFileDescriptorName=x\\\ny\n").unwrap()[0].number,
            2
        );
    }

    #[test]
    fn only_systemd_blanks_are_stripped() {
        assert_eq!(
            settings("[Socket]\nListenStream=\t/a\u{b}\u{c} \r\n"),
            [Listen(Stream, "/a\u{b}\u{c}".into())]
        );
    }

    #[test]
    fn quotes_are_kept() {
        assert_eq!(
            settings("[Socket]\nListenStream=\"/a b\"\n"),
            [Listen(Stream, "\"/a b\"".into())]
        );
    }

    #[test]
    fn refuses_a_broken_header() {
        assert!(parse("[Socket\nListenStream=1\n").is_err());
        assert!(parse("[Socket]\n[Unit\n").is_err());
    }
}
