//! The binary's contract with whoever starts it: a bad configuration stops
//! it with a message naming the variable and exit status 64.

use std::process::Command;

#[test]
fn bad_configuration_exits_64_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_dealmesh-enrich"))
        .arg("serve")
        .env_clear()
        .env("DEALMESH_LOG_FORMAT", "text")
        .env("DEALMESH_ENRICH_GITHUB_RATE", "as fast as possible")
        .env("DEALMESH_ENRICH_LLM_API_KEY", "sk-do-not-print")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DEALMESH_ENRICH_GITHUB_RATE"), "{stderr}");
    assert!(!stderr.contains("sk-do-not-print"), "{stderr}");
}

#[test]
fn an_llm_provider_without_an_endpoint_is_refused() {
    let output = Command::new(env!("CARGO_BIN_EXE_dealmesh-enrich"))
        .arg("serve")
        .env_clear()
        .env("DEALMESH_LOG_FORMAT", "text")
        .env("DEALMESH_ENRICH_LLM_PROVIDER", "openai")
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("DEALMESH_ENRICH_LLM_BASE_URL"), "{stderr}");
}
