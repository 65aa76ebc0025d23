//! The contract is linted and checked for breaking changes against the
//! committed image of the released contract (`released/dealmesh-v1.binpb`).

use std::path::{Path, PathBuf};
use std::process::Command;

fn buf() -> PathBuf {
    if let Some(path) = std::env::var_os("BUF_BIN") {
        return path.into();
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_default();
    let tools = std::env::var_os("DEALMESH_TOOLS")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cache/dealmesh"));
    let cached = tools.join("npm/node_modules/.bin/buf");
    if cached.exists() {
        return cached;
    }
    panic!("buf not found: run scripts/ensure-tools (or set BUF_BIN)");
}

fn proto_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn run(dir: &Path, args: &[&str]) -> (bool, String) {
    let output = Command::new(buf())
        .args(args)
        .current_dir(dir)
        .output()
        .expect("buf runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn the_contract_passes_buf_lint() {
    let (ok, output) = run(proto_dir(), &["lint"]);
    assert!(ok, "buf lint:\n{output}");
}

#[test]
fn the_contract_is_compatible_with_the_released_image() {
    let (ok, output) = run(
        proto_dir(),
        &["breaking", "--against", "released/dealmesh-v1.binpb"],
    );
    assert!(ok, "buf breaking:\n{output}");
}

/// The check above must be able to fail: renumbering a field in a copy of
/// the contract is reported as breaking.
#[test]
fn a_renumbered_field_is_caught_as_breaking() {
    let copy = tempfile::tempdir().unwrap();
    let v1 = copy.path().join("dealmesh/v1");
    std::fs::create_dir_all(&v1).unwrap();
    std::fs::copy(proto_dir().join("buf.yaml"), copy.path().join("buf.yaml")).unwrap();
    for file in ["events.proto", "ingest.proto"] {
        std::fs::copy(proto_dir().join("dealmesh/v1").join(file), v1.join(file)).unwrap();
    }
    let events = v1.join("events.proto");
    let text = std::fs::read_to_string(&events).unwrap();
    assert!(text.contains("string deal_id = 2;"));
    std::fs::write(
        &events,
        text.replacen("string deal_id = 2;", "string deal_id = 99;", 1),
    )
    .unwrap();
    let image = proto_dir().join("released/dealmesh-v1.binpb");
    let (ok, output) = run(
        copy.path(),
        &["breaking", "--against", image.to_str().unwrap()],
    );
    assert!(!ok, "renumbering deal_id was not reported:\n{output}");
    assert!(output.contains("deal_id"), "{output}");
}
