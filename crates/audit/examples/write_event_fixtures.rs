//! Writes the encoded event fixtures of the current contract version: one
//! `DealEvent` of every payload type, from `dealmesh_audit::samples`.
//!
//! ```text
//! DEALMESH_WRITE_EVENT_FIXTURES=1 cargo run -p dealmesh-audit --example write_event_fixtures
//! ```
//!
//! writes to `proto/released/events/v1/` (or the directory given as the first
//! argument). A fixture that exists with the same bytes is left alone; one
//! that exists with other bytes is never replaced: released events are
//! frozen, so a change goes into a new version's directory. Without the
//! variable it only says what it would write.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use dealmesh_audit::samples::{SampleCompany, story};
use prost::Message;

const WRITE_ENV: &str = "DEALMESH_WRITE_EVENT_FIXTURES";
/// The sample story starts here, so the fixtures never depend on the clock.
const STORY_START: &str = "2026-11-23T09:00:00Z";

fn main() -> ExitCode {
    let dir = std::env::args_os().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto/released/events/v1"),
        PathBuf::from,
    );
    let write = std::env::var(WRITE_ENV).is_ok_and(|v| v == "1");
    let start: DateTime<Utc> = STORY_START.parse().expect("STORY_START is RFC 3339");
    if write && let Err(err) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {err}", dir.display());
        return ExitCode::FAILURE;
    }
    let mut refused = 0;
    for (index, event) in story(&SampleCompany::tessellate(), start)
        .iter()
        .enumerate()
    {
        let type_name = event.payload.as_ref().map_or("Unknown", |p| p.type_name());
        let path = dir.join(format!("{:02}-{type_name}.binpb", index + 1));
        let bytes = event.encode_to_vec();
        match std::fs::read(&path) {
            Ok(existing) if existing == bytes => println!("unchanged {}", path.display()),
            Ok(_) => {
                eprintln!(
                    "refusing to replace {}: it differs from what the generator makes now; \
                     released fixtures are frozen, write new ones to a new version directory",
                    path.display()
                );
                refused += 1;
            }
            Err(_) if !write => println!("would write {} (set {WRITE_ENV}=1)", path.display()),
            Err(_) => match std::fs::write(&path, &bytes) {
                Ok(()) => println!("wrote {}", path.display()),
                Err(err) => {
                    eprintln!("cannot write {}: {err}", path.display());
                    return ExitCode::FAILURE;
                }
            },
        }
    }
    if refused > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
