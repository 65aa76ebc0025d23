//! `dealmesh-scoring check-model`: what someone editing the thesis sees.

use std::process::Command;

fn check_model(path: &std::path::Path) -> (Option<i32>, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dealmesh-scoring"))
        .arg("check-model")
        .arg(path)
        .output()
        .expect("binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_shipped_thesis_checks_out() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("thesis.toml");
    let (code, stdout, _) = check_model(&path);
    assert_eq!(code, Some(0));
    assert!(stdout.contains("ok, version 2026.11-1+"), "{stdout}");
}

#[test]
fn a_bad_file_lists_every_field_error_and_exits_65() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("thesis.toml");
    std::fs::write(
        &path,
        "version = \"q4\"\n[weights]\nsector = 1\nstage = -1\n[stages]\npreferences = { series_z = 0.5 }\n",
    )
    .unwrap();
    let (code, stdout, stderr) = check_model(&path);
    assert_eq!(code, Some(65));
    assert!(stdout.is_empty());
    assert!(
        stderr.contains("weights.stage: must be a finite number >= 0, got -1"),
        "{stderr}"
    );
    assert!(
        stderr.contains("stages.preferences.series_z: unknown stage \"series_z\""),
        "{stderr}"
    );
    assert!(stderr.contains("rejected (2 error(s))"), "{stderr}");

    std::fs::write(
        &path,
        "version = \"q4\"\n[weights]\nsector = 1\nstarz = 2\n",
    )
    .unwrap();
    let (code, _, stderr) = check_model(&path);
    assert_eq!(code, Some(65));
    assert!(
        stderr.contains("weights.starz: unknown field `starz`"),
        "{stderr}"
    );
    assert!(stderr.contains("(line 4)"), "{stderr}");
}

#[test]
fn a_missing_file_exits_66() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, stderr) = check_model(&dir.path().join("nope.toml"));
    assert_eq!(code, Some(66));
    assert!(stderr.contains("cannot read model file"), "{stderr}");
}

fn serve(env: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_dealmesh-scoring"))
        .arg("serve")
        .env_clear()
        .envs(env.iter().copied())
        .output()
        .expect("binary runs");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn serve_without_a_database_url_exits_64_naming_the_key() {
    let (code, stderr) = serve(&[("DEALMESH_LOG", "error")]);
    assert_eq!(code, Some(64));
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}

#[test]
fn serve_with_a_bad_model_file_refuses_to_start_and_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("thesis.toml");
    std::fs::write(&path, "version = \"q4\"\n[weights]\nsector = -1\n").unwrap();
    let path = path.display().to_string();
    let (code, stderr) = serve(&[
        ("DEALMESH_LOG", "error"),
        // Never reached: the model is checked before anything connects.
        ("DATABASE_URL", "postgres://127.0.0.1:1/nowhere"),
        (
            "DEALMESH_JWT_HS256_SECRET",
            "cli-test-secret-0123456789abcdef-0123",
        ),
        ("DEALMESH_SCORING_MODEL_FILE", &path),
    ]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("rejected"), "{stderr}");
    assert!(
        stderr.contains("weights.sector: must be a finite number >= 0, got -1"),
        "{stderr}"
    );
}
