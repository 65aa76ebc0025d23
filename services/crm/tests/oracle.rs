//! A replay "as of" a time against an independent oracle: the same events,
//! folded in memory by the test, give the rows the snapshot schema holds.

#[path = "support/harness.rs"]
mod harness;
#[path = "support/story.rs"]
mod story;

use chrono::{DateTime, TimeDelta, Utc};
use harness::Harness;

#[tokio::test]
async fn a_snapshot_as_of_a_time_holds_what_the_oracle_folds() {
    let h = Harness::new(3).await;
    let start: DateTime<Utc> = "2026-10-01T08:00:00Z".parse().expect("time");
    let log = story::log(12, start);
    h.publish(&log).await;

    let instants = [
        // Before anything happened: an empty read model.
        Some(start - TimeDelta::seconds(1)),
        // Exactly at an event: it counts (at or before).
        Some(start + TimeDelta::hours(4) + TimeDelta::minutes(5)),
        // Mid-story: deals at different points, the stale command in for
        // some, votes open for some and closed for others.
        Some(start + TimeDelta::hours(11) + TimeDelta::minutes(6) + TimeDelta::seconds(30)),
        Some(start + TimeDelta::hours(12) + TimeDelta::minutes(4)),
        None,
    ];
    let mut seen = Vec::new();
    for (i, as_of) in instants.iter().enumerate() {
        let schema = format!("as_of_{i}");
        let mut settings = h.settings(&schema);
        settings.as_of = *as_of;
        let report = h.replay(&settings).await;
        let expected = story::fold(&log, *as_of);
        let actual = story::read(&h.db.pool, &schema).await;
        assert_eq!(
            report.records - report.after_as_of,
            expected.events.len() as u64,
            "as of {as_of:?}"
        );
        // Field by field first, for a readable failure.
        assert_eq!(actual.events, expected.events, "events as of {as_of:?}");
        assert_eq!(actual.deals, expected.deals, "deals as of {as_of:?}");
        assert_eq!(actual.votes, expected.votes, "votes as of {as_of:?}");
        assert_eq!(actual, expected, "as of {as_of:?}");
        seen.push(expected);
    }
    // The instants show different states, so the comparison means something.
    assert!(seen[0].deals.is_empty());
    for pair in seen.windows(2) {
        assert_ne!(pair[0], pair[1]);
    }
    let mid = &seen[2];
    assert!(mid.votes.values().any(|v| v.status == "open"));
    assert!(mid.votes.values().any(|v| v.status == "closed"));
    assert!(mid.events.values().any(|s| s == "rejected"));
    assert!(seen[3].deals.values().any(|d| d.merged_into.is_some()));
}
