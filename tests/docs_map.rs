//! docs/architecture.md is the map of `src/`: every file there is named in
//! it by its whole path, and every path it names is a file there.

use std::fs;
use std::path::Path;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// The `.rs` files under `dir`, as paths from the repository root.
fn sources(dir: &Path, out: &mut Vec<String>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let relative = path.strip_prefix(REPO).unwrap();
            out.push(relative.to_str().unwrap().to_owned());
        }
    }
}

#[test]
fn architecture_names_every_source_file() {
    let map = fs::read_to_string(Path::new(REPO).join("docs/architecture.md")).unwrap();
    let mut files = Vec::new();
    sources(&Path::new(REPO).join("src"), &mut files);
    files.sort();
    assert!(files.len() > 20, "{files:?}");
    let missing: Vec<&String> = files
        .iter()
        .filter(|f| !map.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "docs/architecture.md does not name {missing:?}"
    );
    // Named there but gone: a path in backquotes that is no file.
    let stale: Vec<&str> = map
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.starts_with("src/") && w.ends_with(".rs"))
        .filter(|w| !Path::new(REPO).join(w).is_file())
        .collect();
    assert!(stale.is_empty(), "docs/architecture.md names {stale:?}");
}
