//! The measurements of a run, and RESULTS.md and the plots made from them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use qrexec_connect_bench::stats::{median, min_max};

/// Every value measured, by figure and peer, one per repeat.
#[derive(Default)]
pub struct Results {
    values: BTreeMap<(String, String), Vec<f64>>,
    /// Peer -> why it was not measured.
    pub unavailable: BTreeMap<String, String>,
    /// (peer, command line) as run, paths relative to the repository.
    pub commands: Vec<(String, String)>,
    /// Errors and oddities seen during the run.
    pub notes: Vec<String>,
}

impl Results {
    pub fn add(&mut self, figure: &str, peer: &str, value: f64) {
        self.values
            .entry((figure.to_owned(), peer.to_owned()))
            .or_default()
            .push(value);
    }

    pub fn get(&self, figure: &str, peer: &str) -> &[f64] {
        self.values
            .get(&(figure.to_owned(), peer.to_owned()))
            .map_or(&[], Vec::as_slice)
    }

    pub fn median(&self, figure: &str, peer: &str) -> f64 {
        median(self.get(figure, peer))
    }

    /// Median of `peer` over median of `floor`.
    pub fn ratio(&self, figure: &str, peer: &str, floor: &str) -> f64 {
        self.median(figure, peer) / self.median(figure, floor)
    }

    pub fn note(&mut self, text: String) {
        eprintln!("note: {text}");
        if !self.notes.contains(&text) {
            self.notes.push(text);
        }
    }

    pub fn command(&mut self, peer: &str, line: String) {
        if !self.commands.iter().any(|(p, _)| p == peer) {
            self.commands.push((peer.to_owned(), line));
        }
    }
}

/// A number for a table: thousands separators for large values, two
/// significant decimals for small ones.
pub fn num(x: f64) -> String {
    if x.is_nan() {
        return "–".into();
    }
    if x == 0.0 {
        return "0".into();
    }
    if x.abs() >= 100.0 {
        let s = format!("{:.0}", x.abs());
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        return if x < 0.0 { format!("-{out}") } else { out };
    }
    if x.abs() >= 10.0 {
        format!("{x:.1}")
    } else if x.abs() >= 0.1 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// A table: one row per peer, one column per figure; each cell the median,
/// the range of the repeats and the ratio to the row's floor.
pub struct Table<'a> {
    pub columns: Vec<(String, String)>,
    pub peers: &'a [&'a str],
    pub floor: &'a dyn Fn(&str) -> Option<&'a str>,
}

impl Table<'_> {
    pub fn render(&self, r: &Results) -> String {
        let mut out = String::from("| peer |");
        for (head, _) in &self.columns {
            let _ = write!(out, " {head} |");
        }
        out.push_str("\n|---|");
        out.push_str(&"---:|".repeat(self.columns.len()));
        out.push('\n');
        for &peer in self.peers {
            let _ = write!(out, "| {peer} |");
            if let Some(why) = r.unavailable.get(peer) {
                let _ = write!(out, " not available: {why} |");
                out.push_str(&" |".repeat(self.columns.len().saturating_sub(1)));
                out.push('\n');
                continue;
            }
            for (_, fig) in &self.columns {
                let v = r.get(fig, peer);
                if v.is_empty() {
                    out.push_str(" – |");
                    continue;
                }
                let (lo, hi) = min_max(v);
                let mut cell = format!(" **{}**", num(median(v)));
                if v.len() > 1 {
                    let _ = write!(cell, " ({}–{})", num(lo), num(hi));
                }
                if let Some(floor) = (self.floor)(peer).filter(|f| *f != peer) {
                    let ratio = r.ratio(fig, peer, floor);
                    if ratio.is_finite() {
                        let _ = write!(cell, " ×{ratio:.2}");
                    }
                }
                out.push_str(&cell);
                out.push_str(" |");
            }
            out.push('\n');
        }
        out
    }
}

/// One line of a plot: a name and (x, median, min, max) points.
pub struct Series {
    pub title: String,
    pub points: Vec<(f64, f64, f64, f64)>,
}

/// Writes `name.dat` files and `name.gp` into `data_dir` and runs gnuplot to
/// make `png`. Returns an error message when gnuplot is missing or fails.
pub fn plot(
    data_dir: &Path,
    png: &Path,
    name: &str,
    settings: &str,
    series: &[Series],
) -> Result<(), String> {
    let mut plots = Vec::new();
    for (i, s) in series.iter().enumerate() {
        if s.points.is_empty() {
            continue;
        }
        let dat = data_dir.join(format!("{name}-{i}.dat"));
        let mut text = String::new();
        for (x, m, lo, hi) in &s.points {
            let _ = writeln!(text, "{x} {m} {lo} {hi}");
        }
        std::fs::write(&dat, text).map_err(|e| format!("{}: {e}", dat.display()))?;
        plots.push(format!(
            "'{}' using 1:2:3:4 with yerrorlines lw 2 title \"{}\"",
            dat.display(),
            s.title
        ));
    }
    let script = format!(
        "set terminal pngcairo size 960,600 font ',11'\nset output '{}'\nset key below\nset grid\n{settings}\nplot {}\n",
        png.display(),
        plots.join(", \\\n  ")
    );
    let gp = data_dir.join(format!("{name}.gp"));
    std::fs::write(&gp, script).map_err(|e| format!("{}: {e}", gp.display()))?;
    let status = std::process::Command::new("gnuplot")
        .arg(&gp)
        .status()
        .map_err(|e| format!("gnuplot: {e}"))?;
    if !status.success() {
        return Err(format!("gnuplot {}: {status}", gp.display()));
    }
    Ok(())
}
