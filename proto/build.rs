//! Compiles `dealmesh/v1/*.proto` with the protoc shipped in
//! `protoc-bin-vendored`, so a fresh machine needs nothing installed.

use std::path::PathBuf;

const PROTOS: &[&str] = &["dealmesh/v1/events.proto", "dealmesh/v1/ingest.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    config.protoc_arg(format!(
        "--proto_path={}",
        protoc_bin_vendored::include_path()?.display()
    ));
    // BTreeMap keeps map fields in key order, so encoding an event is
    // deterministic: the same event always has the same bytes (hash
    // checkpoints and re-publishing depend on it).
    config.btree_map(["."]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("dealmesh_descriptor.bin"))
        .compile_with_config(config, PROTOS, &["."])?;
    Ok(())
}
