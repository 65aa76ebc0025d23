//! Compiles every `dealmesh/v1/*.proto` with the protoc shipped in
//! `protoc-bin-vendored`, so a fresh machine needs nothing installed. All
//! files share package `dealmesh.v1`, so a new API file needs no change here.

use std::path::PathBuf;

const PACKAGE_DIR: &str = "dealmesh/v1";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut protos: Vec<PathBuf> = std::fs::read_dir(PACKAGE_DIR)?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    protos.retain(|path| path.extension().is_some_and(|ext| ext == "proto"));
    protos.sort();
    println!("cargo:rerun-if-changed={PACKAGE_DIR}");
    for proto in &protos {
        println!("cargo:rerun-if-changed={}", proto.display());
    }

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
        .compile_with_config(config, &protos, &[PathBuf::from(".")])?;
    Ok(())
}
