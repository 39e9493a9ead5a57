//! Tells the integration tests which outside tools this machine has (tests/it/prereq.rs).
//!
//! For each prerequisite that is present it sets `has_<name>`; a test that needs a missing one
//! is then compiled with `#[ignore = "needs …"]` and `cargo test` lists it as ignored rather
//! than passed. With `CI` set every cfg is on, so each such test runs and fails if its tool is
//! missing. The cfgs reach the library and binary too, which ignore them.

use std::path::Path;

#[path = "tests/it/prereq.rs"]
#[allow(dead_code, reason = "the reasons are for the tests' attributes")]
mod prereq;

use prereq::Prereq;

fn main() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let manifest_dir = Path::new(&manifest_dir);
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=tests/it/prereq.rs");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rerun-if-env-changed=PATH");
    let ci = std::env::var_os("CI").is_some();

    let mut any_missing = false;
    for prereq in Prereq::ALL {
        println!("cargo::rustc-check-cfg=cfg({})", prereq.cfg());
        let missing = prereq.missing(manifest_dir);
        any_missing |= missing.is_some();
        if ci || missing.is_none() {
            println!("cargo::rustc-cfg={}", prereq.cfg());
        }
        // A found program that goes away (or is upgraded) makes the script run again.
        for program in prereq.programs() {
            if let Some(file) = prereq::find_in_path(program) {
                println!("cargo::rerun-if-changed={}", file.display());
            }
        }
    }
    if Path::new(prereq::TURNSERVER_CONF).exists() {
        println!("cargo::rerun-if-changed={}", prereq::TURNSERVER_CONF);
    }
    // npm ci creates or replaces node_modules, which changes this directory.
    println!("cargo::rerun-if-changed=tests/node");
    // Installing a missing program adds an entry to a PATH directory, which changes its
    // mtime: watch them so that the tests that needed it stop being ignored. (Only while
    // something is missing: otherwise any package upgrade would rebuild the crate.)
    if any_missing {
        for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
            if dir.is_absolute() && dir.is_dir() {
                println!("cargo::rerun-if-changed={}", dir.display());
            }
        }
    }
}
