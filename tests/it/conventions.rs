//! Conventions of the codebase that a test can hold: every Rust file opens
//! with a `//!` line saying what it is for, and the coordinator's layers keep
//! to their side (`http/` never touches rusqlite, `cluster/` knows nothing
//! of the HTTP API).

use std::path::{Path, PathBuf};

/// Directories never searched: build output and version control.
const SKIPPED: [&str; 3] = ["target", ".git", "node_modules"];

/// Every `.rs` file under `dir`, skipping [`SKIPPED`] directories.
fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read a source directory") {
        let path = entry.expect("a directory entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if !SKIPPED.contains(&name) && !name.starts_with('.') {
                rust_files(&path, found);
            }
        } else if name.ends_with(".rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_rust_file_opens_with_a_line_saying_what_it_is_for() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(root, &mut files);
    assert!(files.len() > 50, "only {} files found", files.len());
    let missing: Vec<_> = files
        .iter()
        .filter(|f| {
            let text = std::fs::read_to_string(f).expect("read a source file");
            !text.starts_with("//!")
        })
        .map(|f| f.strip_prefix(root).unwrap_or(f).display().to_string())
        .collect();
    assert!(missing.is_empty(), "files without a //! line: {missing:?}");
}

/// The files under `dir` (relative to the workspace root) whose text contains
/// any of `words`, each with the first word found.
fn files_mentioning(dir: &str, words: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    rust_files(&root.join(dir), &mut files);
    assert!(!files.is_empty(), "no Rust files under {dir}");
    files
        .iter()
        .filter_map(|f| {
            let text = std::fs::read_to_string(f).expect("read a source file");
            let word = words.iter().find(|w| text.contains(**w))?;
            let name = f.strip_prefix(root).unwrap_or(f).display();
            Some(format!("{name} mentions {word}"))
        })
        .collect()
}

#[test]
fn http_handlers_never_touch_sqlite() {
    let found = files_mentioning("coordinator/src/http", &["rusqlite", "Connection"]);
    assert!(
        found.is_empty(),
        "http/ must read through state::*: {found:?}"
    );
}

#[test]
fn the_cluster_knows_nothing_of_the_http_api() {
    let found = files_mentioning(
        "coordinator/src/cluster",
        &["axum", "crate::http", "ApiError"],
    );
    assert!(
        found.is_empty(),
        "cluster/ must not depend on the API: {found:?}"
    );
}
