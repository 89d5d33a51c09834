//! `qrexec-connect remove LISTEN-ADDRESS|UNIT`: takes back what `add` did.
//! Only files that start with `add`'s mark are deleted; a forward written by
//! hand is refused, with the file named, before anything changes.

use std::fs;
use std::path::Path;

use super::show::Row;
use super::spec::Listen;
use super::{list, systemctl, unit};
use crate::error::{Error, IoContext as _, Result};

pub fn run(args: &[&str]) -> Result<u8> {
    let about = "remove a forward `add` made, by its address or its socket unit";
    if let Some(code) = super::help(args, "remove LISTEN-ADDRESS|UNIT", about)? {
        return Ok(code);
    }
    let [which] = args else {
        return Err(Error::Usage(
            "usage: qrexec-connect remove LISTEN-ADDRESS|UNIT".into(),
        ));
    };
    let rows = list::forwards()?;
    let matched = select(&rows, which);
    let Some(first) = matched.first() else {
        return Err(Error::Usage(format!(
            "no forward listens on or is named {which}: `qrexec-connect list` shows them"
        )));
    };
    let socket = first.socket.clone();
    let service = first.service.clone();
    let files = files_to_delete(&matched)?;
    let rest = rows
        .iter()
        .filter(|r| r.socket == socket && !matched.contains(r))
        .count();
    keeps_its_unit(&files, rest, &socket)?;
    // The one qrexec-connect.service, or a service a hand-written
    // `Service=` socket also triggers, starts again for its other sockets.
    let shared = rows
        .iter()
        .any(|r| r.service == service && r.socket != socket);
    let units = Units {
        socket: &socket,
        service: &service,
        rest,
        shared,
    };
    for line in take_back(&units, &files)? {
        println!("{line}");
    }
    Ok(0)
}

/// The units of the forward being removed.
struct Units<'a> {
    socket: &'a str,
    service: &'a str,
    /// How many other addresses the socket unit keeps.
    rest: usize,
    /// Whether other socket units send their connections to the service.
    shared: bool,
}

/// Stops what listens, deletes the files and reloads; with other addresses
/// left on the socket unit, restarts it (and its service, if it runs)
/// instead of stopping it, so that it lets go of the removed address.
/// Returns what it did.
fn take_back(units: &Units, files: &[String]) -> Result<Vec<String>> {
    let Units {
        socket,
        service,
        rest,
        shared,
    } = *units;
    let mut done = Vec::new();
    if rest == 0 {
        systemctl::run(&["disable", socket])?;
        let mut stop = vec![socket];
        // The service holds the listening socket too: it must go, or the
        // address keeps accepting.
        if systemctl::is_active(service)? {
            stop.push(service);
            let again = match shared {
                true => "; it starts again at the next connection to its other sockets",
                false => "",
            };
            done.push(format!(
                "stopped {service} (its open connections drained first){again}"
            ));
        }
        systemctl::run(&[&["stop"], stop.as_slice()].concat())?;
        done.insert(0, format!("stopped and disabled {socket}"));
    }
    for file in files {
        fs::remove_file(file).context(|| format!("remove {file}"))?;
        done.push(format!("deleted {file}"));
        // The instance's drop-in directory, once empty.
        if let Some(dir) = Path::new(file)
            .parent()
            .filter(|d| d.extension().is_some_and(|e| e == "d"))
        {
            let _ = fs::remove_dir(dir);
        }
    }
    systemctl::run(&["daemon-reload"])?;
    done.push("reloaded the user manager (systemctl --user daemon-reload)".to_owned());
    if rest > 0 {
        done.extend(systemctl::restart_socket(socket, service)?);
        let plural = if rest == 1 { "" } else { "es" };
        done.push(format!(
            "{socket} still listens on its {rest} other address{plural}"
        ));
    }
    Ok(done)
}

/// The rows a `remove` argument names: a socket unit's, or one address's.
fn select<'a>(rows: &'a [Row], which: &str) -> Vec<&'a Row> {
    if which.ends_with(".socket") {
        return rows.iter().filter(|r| r.socket == which).collect();
    }
    let parsed = Listen::parse(which).map(|l| systemctl::expand(&l.to_string()));
    rows.iter()
        .filter(|r| r.listen == which || parsed.as_ref().is_ok_and(|p| *p == r.listen))
        .collect()
}

/// Refuses to delete the socket unit's own file (not a drop-in, which
/// lives in a `NAME.d/` directory) while the unit keeps other addresses:
/// a drop-in of someone else's would be left without its unit.
fn keeps_its_unit(files: &[String], rest: usize, socket: &str) -> Result<()> {
    let is_drop_in = |file: &str| {
        std::path::Path::new(file)
            .parent()
            .and_then(|dir| dir.file_name())
            .is_some_and(|dir| dir.to_string_lossy().ends_with(".d"))
    };
    match files.iter().find(|f| !is_drop_in(f)) {
        Some(unit) if rest > 0 => Err(Error::Usage(format!(
            "{unit} is {socket} itself, which still listens on {rest} other address(es) from \
             files qrexec-connect add did not write: remove those first (systemctl --user cat {socket})"
        ))),
        _ => Ok(()),
    }
}

/// The files that define these rows, each checked to carry `add`'s mark.
fn files_to_delete(rows: &[&Row]) -> Result<Vec<String>> {
    let mut files: Vec<String> = Vec::new();
    for row in rows {
        let Some(file) = &row.file else {
            return Err(Error::Usage(format!(
                "cannot tell which file of {} makes it listen on {}: edit it yourself (systemctl --user cat {})",
                row.socket, row.listen, row.socket
            )));
        };
        let text = fs::read_to_string(file).context(|| format!("read {file}"))?;
        if !unit::is_marked(&text) {
            return Err(Error::Usage(format!(
                "{file} was not written by qrexec-connect add: not deleting it (remove it yourself, then systemctl --user daemon-reload)"
            )));
        }
        if !files.contains(file) {
            files.push(file.clone());
        }
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_file_stays_while_it_has_other_addresses() {
        let unit =
            "/home/u/.config/systemd/user/qrexec-connect-work-qubes.GetDate.socket".to_owned();
        let drop_in =
            "/home/u/.config/systemd/user/qrexec-connect-tcp@22.socket.d/work.conf".to_owned();
        let socket = "qrexec-connect-work-qubes.GetDate.socket";
        let e = keeps_its_unit(std::slice::from_ref(&unit), 1, socket).unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("{unit} is {socket} itself")),
            "{e}"
        );
        assert!(keeps_its_unit(std::slice::from_ref(&unit), 0, socket).is_ok());
        assert!(keeps_its_unit(std::slice::from_ref(&drop_in), 1, socket).is_ok());
    }
}
