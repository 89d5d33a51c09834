//! `qrexec-connect policy`: the dom0 lines (`/etc/qubes/policy.d/30-user.policy`,
//! `SERVICE +ARGUMENT SOURCE TARGET ACTION [PARAM=VALUE]`) that allow exactly
//! the calls of this qube's forwards, and nothing wider.

use std::process::{Command, Stdio};

use super::show::Row;
use crate::error::Result;

/// The source when this is not a qube (no `qubesdb-read`): not a valid
/// name, so that a line pasted unchanged is refused by dom0, never too wide.
pub const UNKNOWN_SOURCE: &str = "<this-qube>";
/// The target of a `@default` call, which dom0 must name with `target=`.
pub const UNKNOWN_TARGET: &str = "<service-qube>";

/// The policy line that allows one call from `source` to `target`.
pub fn line(source: &str, target: &str, call: &str) -> String {
    let (service, argument) = call.split_once('+').unwrap_or((call, ""));
    match target {
        // dom0 picks the qube: say which, or the call is refused.
        "@default" => {
            format!("{service}  +{argument}  {source}  @default  allow target={UNKNOWN_TARGET}")
        }
        target => format!("{service}  +{argument}  {source}  {target}  allow"),
    }
}

/// The lines for these rows, each once, in the rows' order, with comments
/// for what cannot be written as a line.
pub fn lines(source: &str, rows: &[Row]) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for row in rows {
        let line = match &row.call {
            Some(call) => line(source, &row.qube, call),
            None => format!(
                "# {} ({}): its call is the service's --service option; not written here",
                row.listen, row.socket
            ),
        };
        if !lines.contains(&line) {
            lines.push(line);
        }
    }
    lines
}

/// This qube's name, as dom0 knows it (`qubesdb-read /name`), or the placeholder.
pub fn source() -> Option<String> {
    let out = Command::new("qubesdb-read")
        .arg("/name")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let name = String::from_utf8(out.stdout).ok()?;
    let name = name.trim();
    (out.status.success() && crate::call::Target::parse(name).is_ok()).then(|| name.to_owned())
}

/// The comment lines that go before the policy lines.
pub fn header(source: Option<&str>) -> Vec<String> {
    let mut out = vec![
        "# dom0: /etc/qubes/policy.d/30-user.policy (the first matching line decides)".to_owned(),
    ];
    if source.is_none() {
        out.push(format!(
            "# qubesdb-read /name is not available here: replace {UNKNOWN_SOURCE} with this qube's name"
        ));
    }
    out
}

/// The comment after lines with `@default`: dom0 evaluates a target that
/// does not exist as `@default` too, so naming the qube is safer.
pub const DEFAULT_NOTE: &str = "# @default: dom0 sends the call to target=; a FileDescriptorName naming a qube \
that does not exist also reaches it, so prefer naming the qube in the forward";

/// `qrexec-connect policy`.
pub fn run(args: &[&str]) -> Result<u8> {
    if let Some(code) = super::help(
        args,
        "policy",
        "print the dom0 policy lines of every forward",
    )? {
        return Ok(code);
    }
    let rows = super::list::forwards()?;
    let source = source();
    print!("{}", text(source.as_deref(), &rows));
    Ok(0)
}

/// The whole output of `policy`.
pub fn text(source: Option<&str>, rows: &[Row]) -> String {
    let mut out = header(source);
    out.extend(lines(source.unwrap_or(UNKNOWN_SOURCE), rows));
    if rows.iter().any(|r| r.qube == "@default") {
        out.push(DEFAULT_NOTE.to_owned());
    }
    out.iter().map(|l| format!("{l}\n")).collect()
}

#[cfg(test)]
mod tests {
    use super::super::show::State;
    use super::*;

    fn row(listen: &str, qube: &str, call: Option<&str>) -> Row {
        Row {
            listen: listen.into(),
            qube: qube.into(),
            call: call.map(Into::into),
            socket: "s.socket".into(),
            service: "s.service".into(),
            state: State::Listening,
            counters: None,
            file: None,
        }
    }

    #[test]
    fn lines_are_as_narrow_as_the_forward() {
        assert_eq!(
            line("dev", "work", "qubes.ConnectTCP+22"),
            "qubes.ConnectTCP  +22  dev  work  allow"
        );
        assert_eq!(
            line("dev", "work", "qubes.GetDate"),
            "qubes.GetDate  +  dev  work  allow"
        );
        assert_eq!(
            line("dev", "@dispvm:web-dvm", "qubes.ConnectTCP+80"),
            "qubes.ConnectTCP  +80  dev  @dispvm:web-dvm  allow"
        );
        assert_eq!(
            line("dev", "@default", "qubes.ConnectUnix+ssh"),
            "qubes.ConnectUnix  +ssh  dev  @default  allow target=<service-qube>"
        );
        let rows = [
            row("127.0.0.1:22", "work", Some("qubes.ConnectTCP+22")),
            row("[::1]:22", "work", Some("qubes.ConnectTCP+22")),
            row("127.0.0.2:22", "@default", Some("qubes.ConnectTCP+22")),
            row("127.0.0.3:80", "web", None),
        ];
        let text = text(None, &rows);
        assert_eq!(
            text.lines().filter(|l| l.starts_with("qubes.")).count(),
            2,
            "{text}"
        );
        assert!(text.contains("replace <this-qube>"), "{text}");
        assert!(text.contains("# 127.0.0.3:80 (s.socket)"), "{text}");
        assert!(text.ends_with(&format!("{DEFAULT_NOTE}\n")));
        assert!(!self::text(Some("dev"), &rows[..1]).contains('<'));
    }
}
