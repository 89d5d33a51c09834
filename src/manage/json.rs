//! `qrexec-connect list --json`: the rows as a JSON array (RFC 8259),
//! written by hand since the binary takes no serializer.

use std::fmt::Write;

use super::show::Row;

/// A JSON string literal: quotes, backslashes and control characters escaped.
pub fn string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn optional(s: Option<&str>) -> String {
    s.map_or_else(|| "null".to_owned(), string)
}

/// One object per row, one row per line.
pub fn rows(rows: &[Row]) -> String {
    let mut out = String::from("[");
    for (i, row) in rows.iter().enumerate() {
        let counters = row.counters.map_or_else(
            || "null".to_owned(),
            |c| {
                format!(
                    "{{\"active\":{},\"served\":{},\"refused\":{},\"failed\":{}}}",
                    c.active, c.served, c.refused, c.failed
                )
            },
        );
        let _ = write!(
            out,
            "{}\n{{\"listen\":{},\"qube\":{},\"call\":{},\"socket\":{},\"service\":{},\
             \"state\":{},\"counters\":{counters},\"file\":{}}}",
            if i == 0 { "" } else { "," },
            string(&row.listen),
            string(&row.qube),
            optional(row.call.as_deref()),
            string(&row.socket),
            string(&row.service),
            string(&row.state.to_string()),
            optional(row.file.as_deref()),
        );
    }
    out.push_str("\n]\n");
    out
}

#[cfg(test)]
mod tests {
    use super::super::list::example_row;
    use super::super::show::Counters;
    use super::*;

    #[test]
    fn escapes() {
        assert_eq!(string("a\"b\\c\nd\u{1}é"), "\"a\\\"b\\\\c\\nd\\u0001é\"");
        assert_eq!(string(""), "\"\"");
    }

    #[test]
    fn writes_rows() {
        let row = example_row(Counters {
            active: 1,
            served: 2,
            refused: 3,
            failed: 4,
        });
        let unnamed = Row {
            call: None,
            counters: None,
            ..row.clone()
        };
        assert_eq!(rows(&[]), "[\n]\n");
        assert_eq!(
            rows(&[row, unnamed]),
            "[\n{\"listen\":\"127.0.0.1:2222\",\"qube\":\"work\",\"call\":\"qubes.ConnectTCP+22\",\
             \"socket\":\"qrexec-connect-tcp@22.socket\",\"service\":\"qrexec-connect-tcp@22.service\",\
             \"state\":\"serving\",\"counters\":{\"active\":1,\"served\":2,\"refused\":3,\"failed\":4},\
             \"file\":null},\n{\"listen\":\"127.0.0.1:2222\",\"qube\":\"work\",\"call\":null,\
             \"socket\":\"qrexec-connect-tcp@22.socket\",\"service\":\"qrexec-connect-tcp@22.service\",\
             \"state\":\"serving\",\"counters\":null,\"file\":null}\n]\n"
        );
    }
}
