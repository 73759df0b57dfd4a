//! Builds every test guest and example and checks each is the kind of wasm
//! binary hosts take: a component, or a preview 1 core module for the guests
//! in `PREVIEW1`. A guest that no longer builds fails here.

use crate::common;

use std::io::Read;
use std::path::Path;

use common::guests::PREVIEW1;
use common::{example, guest};

/// The first 8 bytes of a component (layer 1, version 0x0d).
const COMPONENT: [u8; 8] = *b"\0asm\x0d\0\x01\0";
/// The first 8 bytes of a core module (version 1).
const CORE_MODULE: [u8; 8] = *b"\0asm\x01\0\0\0";

fn header(path: &Path) -> [u8; 8] {
    let mut header = [0; 8];
    std::fs::File::open(path)
        .and_then(|mut f| f.read_exact(&mut header))
        .unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    header
}

#[test]
fn every_guest_builds_to_a_component_or_preview1_module() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/guests/src/bin");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "rs"))
        .map(|path| path.file_stem().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert!(names.len() >= 6, "guests found: {names:?}");
    for name in &names {
        let expected = if PREVIEW1.contains(&name.as_str()) {
            CORE_MODULE
        } else {
            COMPONENT
        };
        assert_eq!(header(&guest(name)), expected, "header of guest {name}");
    }
}

#[test]
fn hello_job_example_builds_to_a_component() {
    assert_eq!(header(&example("hello-job")), COMPONENT);
}

#[test]
fn hello_http_example_builds_to_a_component() {
    assert_eq!(header(&example("hello-http")), COMPONENT);
}
