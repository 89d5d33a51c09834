//! `qrexec-connect list [--json]`: one row per address of every socket unit
//! the user manager knows whose connections go to one of our services,
//! templated or one-service, written by `add` or by hand.

use std::collections::BTreeSet;

use super::show::{self, Row};
use super::{json, systemctl, unit};
use crate::error::{Error, Result};

/// Every forward the user manager knows.
pub fn forwards() -> Result<Vec<Row>> {
    let units = socket_units()?;
    if units.is_empty() {
        return Ok(Vec::new());
    }
    let mut args = vec!["show", "--property", show::SOCKET_PROPERTIES];
    args.extend(units.iter().map(String::as_str));
    let sockets = show::parse_show(&systemctl::run(&args)?);
    let services: BTreeSet<&str> = sockets
        .iter()
        .flat_map(|s| s.words("Triggers"))
        .filter(|s| unit::is_ours(s))
        .collect();
    let services = if services.is_empty() {
        Vec::new()
    } else {
        let mut args = vec!["show", "--property", show::SERVICE_PROPERTIES];
        args.extend(services);
        show::parse_show(&systemctl::run(&args)?)
    };
    let read = |path: &str| std::fs::read_to_string(path).ok();
    Ok(show::rows(&sockets, &services, read, systemctl::expand))
}

/// The socket units to ask about: those loaded, those with a unit file,
/// and the instances the user has drop-ins for (added but not started).
fn socket_units() -> Result<BTreeSet<String>> {
    let mut units = BTreeSet::new();
    let listings = [
        systemctl::run(&[
            "list-units",
            "--all",
            "--type=socket",
            "--plain",
            "--no-legend",
            "--full",
        ])?,
        systemctl::run(&[
            "list-unit-files",
            "--type=socket",
            "--plain",
            "--no-legend",
            "--full",
        ])?,
    ];
    for line in listings.iter().flat_map(|l| l.lines()) {
        if let Some(name) = line.split_whitespace().find(|w| w.ends_with(".socket")) {
            if !name.contains("@.") {
                units.insert(name.to_owned());
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(systemctl::config_dir()?) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(socket) = name.strip_suffix(".d").filter(|n| n.ends_with(".socket")) {
                if socket.contains('@') && !socket.contains("@.") {
                    units.insert(socket.to_owned());
                }
            }
        }
    }
    Ok(units)
}

/// `qrexec-connect list`.
pub fn run(args: &[&str]) -> Result<u8> {
    if let Some(code) = super::help(args, "list [--json]", "list every forward and its counters")? {
        return Ok(code);
    }
    let as_json = match args {
        [] => false,
        ["--json"] => true,
        _ => return Err(Error::Usage("usage: qrexec-connect list [--json]".into())),
    };
    let rows = forwards()?;
    if as_json {
        print!("{}", json::rows(&rows));
    } else {
        print!("{}", table(&rows));
    }
    Ok(0)
}

/// The rows as aligned columns under a header.
pub fn table(rows: &[Row]) -> String {
    let header = [
        "LISTEN", "QUBE", "CALL", "UNIT", "STATE", "ACTIVE", "SERVED", "REFUSED", "FAILED",
    ];
    let mut cells: Vec<Vec<String>> = vec![header.iter().map(|h| h.to_string()).collect()];
    for row in rows {
        let counters = match row.counters {
            Some(c) => [c.active, c.served, c.refused, c.failed].map(|n| n.to_string()),
            None => ["-", "-", "-", "-"].map(str::to_owned),
        };
        let mut line = vec![
            row.listen.clone(),
            row.qube.clone(),
            row.call.clone().unwrap_or_else(|| "(--service)".to_owned()),
            row.socket.clone(),
            row.state.to_string(),
        ];
        line.extend(counters);
        cells.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            cells
                .iter()
                .map(|l| l[i].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    cells
        .iter()
        .map(|line| {
            let text: Vec<String> = line
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:w$}"))
                .collect();
            format!("{}\n", text.join("  ").trim_end())
        })
        .collect()
}

/// A row that serves `127.0.0.1:2222` to `work`, for the writers' tests
/// (here and json.rs).
#[cfg(test)]
pub(super) fn example_row(counters: show::Counters) -> Row {
    Row {
        listen: "127.0.0.1:2222".into(),
        qube: "work".into(),
        call: Some("qubes.ConnectTCP+22".into()),
        socket: "qrexec-connect-tcp@22.socket".into(),
        service: "qrexec-connect-tcp@22.service".into(),
        state: show::State::Serving,
        counters: Some(counters),
        file: None,
    }
}

#[cfg(test)]
mod tests {
    use super::super::show::Counters;
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let row = example_row(Counters {
            active: 0,
            served: 12,
            refused: 1,
            failed: 0,
        });
        let text = table(&[row]);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines,
            [
                "LISTEN          QUBE  CALL                 UNIT                          STATE    ACTIVE  SERVED  REFUSED  FAILED",
                "127.0.0.1:2222  work  qubes.ConnectTCP+22  qrexec-connect-tcp@22.socket  serving  0       12      1        0",
            ]
        );
    }
}
