//! Copies the README's Rust code blocks into the build, one file each
//! (`readme_rust_<n>.rs`, the block wrapped in braces), so that
//! `tests/tests/readme` compiles and runs them as printed: a snippet that
//! stops compiling or working fails the tests, not the reader.

use std::path::PathBuf;

fn main() {
    let readme = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    println!("cargo::rerun-if-changed={}", readme.display());
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let text = std::fs::read_to_string(&readme).expect("README.md is readable");
    let mut blocks = Vec::new();
    let mut block: Option<String> = None;
    for line in text.lines() {
        match (&mut block, line.trim_start()) {
            (None, "```rust") => block = Some(String::new()),
            (Some(_), "```") => blocks.extend(block.take()),
            (Some(code), _) => {
                code.push_str(line);
                code.push('\n');
            }
            (None, _) => {}
        }
    }
    for (n, code) in blocks.iter().enumerate() {
        let file = out.join(format!("readme_rust_{n}.rs"));
        std::fs::write(&file, format!("{{\n{code}}}\n")).expect("OUT_DIR is writable");
    }
    std::fs::write(out.join("readme_rust_count"), blocks.len().to_string())
        .expect("OUT_DIR is writable");
}
