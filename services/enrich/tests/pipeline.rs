//! The service end to end: sourced deals on a real broker in, enrichments
//! on the same log out.

mod common;

use std::time::Duration;

use common::*;
use dealmesh_eventlog::envelope::from_timestamp;
use dealmesh_eventlog::ids::caused_event_id;
use dealmesh_proto::Payload;
use dealmesh_proto::v1::{ActorKind, AnalyzerKind, DealEnriched, EnrichmentFailed};
use wiremock::Mock;
use wiremock::matchers::{method, path};

fn enriched(event: &dealmesh_proto::DealEvent) -> Option<&DealEnriched> {
    match &event.payload {
        Some(Payload::DealEnriched(e)) => Some(e),
        _ => None,
    }
}

fn failed(event: &dealmesh_proto::DealEvent) -> Option<&EnrichmentFailed> {
    match &event.payload {
        Some(Payload::EnrichmentFailed(e)) => Some(e),
        _ => None,
    }
}

#[tokio::test]
async fn a_sourced_deal_is_enriched_with_github_crunchbase_and_builtin_analysis() {
    let log = TestLog::create().await;
    let github = github_fake(Duration::ZERO).await;
    let crunchbase = crunchbase_fake(Duration::ZERO).await;
    let mut env = log.env();
    env.extend(env_for(&github, Some(&crunchbase), None));
    let service = TestEnrich::start(env).await;

    let input = sourced_event(sourced(
        "Lumen Grid",
        "octocat",
        "Hello-World",
        Some("lumen-grid"),
    ));
    log.publish(&input).await;
    let events = log
        .wait_for("one enrichment", |e| !enrichments(e).is_empty())
        .await;
    service.stop().await;

    let outputs = enrichments(&events);
    assert_eq!(outputs.len(), 1, "{outputs:#?}");
    let output = outputs[0];
    let enrichment = enriched(output).unwrap_or_else(|| panic!("not enriched: {output:#?}"));

    // The envelope: derived id, same deal, caused by the input.
    let input_at = from_timestamp(input.occurred_at.as_ref().unwrap()).unwrap();
    assert_eq!(
        output.event_id,
        caused_event_id(input_at, &input.event_id, "enrich").to_string()
    );
    assert_eq!(output.deal_id, input.deal_id);
    assert_eq!(output.causation_id, input.event_id);
    assert_eq!(output.correlation_id, input.correlation_id);
    let actor = output.actor.as_ref().unwrap();
    assert_eq!(actor.kind, ActorKind::Service as i32);
    assert_eq!(actor.id, "dealmesh-enrich");
    assert_eq!(enrichment.source_event_id, input.event_id);
    assert!(enrichment.gaps.is_empty(), "{:?}", enrichment.gaps);

    // GitHub, from the fixtures.
    let g = enrichment.github.as_ref().expect("github signals");
    let provenance = g.provenance.as_ref().unwrap();
    assert_eq!(provenance.source, "github");
    assert!(provenance.fetched_at.is_some());
    assert_eq!(
        provenance.url,
        format!("{}/repos/octocat/Hello-World", github.uri())
    );
    assert_eq!(
        (g.owner.as_str(), g.repo.as_str()),
        ("octocat", "Hello-World")
    );
    assert_eq!((g.stars, g.forks, g.open_issues), (80, 9, 0));
    assert_eq!(g.contributors, i64::from(CONTRIBUTOR_PAGES));
    assert_eq!(g.weekly_commits, [89]);
    assert!((g.star_velocity_30d - RECENT_STARS as f64 / 30.0).abs() < 1e-9);
    assert_eq!(g.license, "MIT");
    assert_eq!(g.topics, ["octocat", "atom", "electron", "api"]);
    assert_eq!(g.description, "This your first repo!");

    // Crunchbase, from the fixture.
    let c = enrichment.crunchbase.as_ref().expect("crunchbase signals");
    assert_eq!(c.provenance.as_ref().unwrap().source, "crunchbase");
    assert_eq!(c.permalink, "lumen-grid");
    let total = c.funding_total.as_ref().unwrap();
    assert_eq!(
        (total.value, total.currency.as_str(), total.value_usd),
        (7_500_000, "EUR", 8_100_000)
    );
    let round = c.last_round.as_ref().unwrap();
    assert_eq!(
        (round.investment_type.as_str(), round.announced_on.as_str()),
        ("seed", "2024-09-17")
    );
    assert_eq!(round.money_raised.as_ref().unwrap().value, 6_000_000);
    assert_eq!(c.headcount_band, "c_00011_00050");
    assert_eq!(c.founded_on, "2021-04-01");
    assert_eq!(c.categories, ["Clean Energy", "Software"]);
    let location = c.location.as_ref().unwrap();
    assert_eq!(
        (location.city.as_str(), location.country.as_str()),
        ("Berlin", "Germany")
    );
    assert_eq!(c.num_funding_rounds, 2);

    // The built-in analyzer, marked as such.
    let a = enrichment.analysis.as_ref().expect("analysis");
    assert_eq!(a.analyzer, AnalyzerKind::Builtin as i32);
    assert_eq!(a.model, "builtin-v1");
    assert_eq!(a.sector, "climate-software");
    assert!(
        a.summary
            .starts_with("Lumen Grid builds forecasting software"),
        "{}",
        a.summary
    );
    assert!(!a.business_model.is_empty());

    // The request carried the token, the API version and the star media type.
    let requests = github.received_requests().await.unwrap();
    let stars = requests
        .iter()
        .find(|r| r.url.path().ends_with("/stargazers"))
        .expect("stargazers were read");
    assert_eq!(
        stars.headers.get("accept").unwrap(),
        "application/vnd.github.star+json"
    );
    assert_eq!(
        stars.headers.get("authorization").unwrap(),
        "Bearer ghp_test"
    );
    let cb = crunchbase.received_requests().await.unwrap();
    assert_eq!(cb[0].headers.get("x-cb-user-key").unwrap(), "cb-test-key");
}

#[tokio::test]
async fn gaps_failures_other_events_and_undecodable_records_never_stop_the_stream() {
    let log = TestLog::create().await;
    let github = github_fake(Duration::ZERO).await;
    // This organization's GitHub is down for good.
    Mock::given(method("GET"))
        .and(path("/orgs/downco"))
        .respond_with(server_error(502))
        .with_priority(1)
        .mount(&github)
        .await;
    let mut env = log.env();
    env.extend(env_for(&github, None, None));
    let service = TestEnrich::start(env).await;

    // Nothing to look up: gaps, still enriched.
    let bare = sourced_event(sourced("Bare Co", "", "", None));
    // GitHub says 404: a gap.
    Mock::given(method("GET"))
        .and(path("/repos/ghost/nothing"))
        .respond_with(github_not_found())
        .with_priority(1)
        .mount(&github)
        .await;
    let ghost = sourced_event(sourced("Ghost", "ghost", "nothing", None));
    let down = sourced_event(sourced("Down Co", "downco", "", None));
    log.publish(&bare).await;
    log.publish(&ghost).await;
    log.publish(&down).await;
    // A record that is not an event at all, keyed like one of the deals.
    log.producer
        .send(
            &log.topics.deals,
            Some(bare.deal_id.as_bytes()),
            b"\xff\xfenot protobuf",
            rdkafka_headers(),
        )
        .await
        .expect("broker acks");
    // A deal after all of that, on the same key as the undecodable record.
    let mut after_deal = sourced("Bare Co", "octocat", "", None);
    after_deal.source = "second-source".into();
    let after = sourced_event(after_deal);
    log.publish(&after).await;

    let events = log
        .wait_for("four enrichments", |e| enrichments(e).len() >= 4)
        .await;
    // Let a wrongly looping service show itself before stopping.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let events_later = log.events().await;
    service.stop().await;
    assert_eq!(
        enrichments(&events_later).len(),
        4,
        "enrich must answer only DealSourced, never its own output"
    );

    let by_cause = |id: &str| {
        enrichments(&events)
            .into_iter()
            .find(|e| e.causation_id == id)
            .unwrap_or_else(|| panic!("no enrichment for {id}"))
    };
    let bare_out = enriched(by_cause(&bare.event_id)).expect("bare deal enriched");
    let sources: Vec<&str> = bare_out.gaps.iter().map(|g| g.source.as_str()).collect();
    assert_eq!(sources, ["github", "crunchbase"], "{:?}", bare_out.gaps);
    assert!(bare_out.github.is_none() && bare_out.crunchbase.is_none());
    assert_eq!(
        bare_out.analysis.as_ref().unwrap().analyzer,
        AnalyzerKind::Builtin as i32
    );

    let ghost_out = enriched(by_cause(&ghost.event_id)).expect("404 is a gap");
    assert!(ghost_out.github.is_none());
    assert!(
        ghost_out.gaps[0].reason.contains("not found"),
        "{:?}",
        ghost_out.gaps
    );

    let down_out = failed(by_cause(&down.event_id)).expect("a 502 outage fails the deal");
    assert_eq!(down_out.step, "github");
    assert!(down_out.retryable);
    assert_eq!(down_out.attempts, 3);
    assert!(down_out.reason.contains("502"), "{}", down_out.reason);

    let after_out = enriched(by_cause(&after.event_id)).expect("the stream moved on");
    assert_eq!(after_out.github.as_ref().unwrap().owner, "octocat");

    let dead = dealmesh_testkit::read_topic(&log.bootstrap, &log.topics.dead_letter).await;
    assert_eq!(dead.len(), 1, "the undecodable record is dead-lettered");
    assert_eq!(dead[0].value.as_deref(), Some(&b"\xff\xfenot protobuf"[..]));
}

fn rdkafka_headers() -> rdkafka::message::OwnedHeaders {
    rdkafka::message::OwnedHeaders::new()
}

#[tokio::test]
async fn an_openai_compatible_llm_writes_the_analysis() {
    let log = TestLog::create().await;
    let github = github_fake(Duration::ZERO).await;
    let llm = llm_fake(Duration::ZERO).await;
    let mut env = log.env();
    env.extend(env_for(&github, None, Some(&llm)));
    let service = TestEnrich::start(env).await;

    let input = sourced_event(sourced("Lumen Grid", "octocat", "Hello-World", None));
    log.publish(&input).await;
    let events = log
        .wait_for("one enrichment", |e| !enrichments(e).is_empty())
        .await;
    service.stop().await;

    let output = enriched(enrichments(&events)[0]).expect("enriched");
    let a = output.analysis.as_ref().unwrap();
    assert_eq!(a.analyzer, AnalyzerKind::Llm as i32);
    assert_eq!(a.model, "gpt-4o-mini-2024-07-18");
    assert_eq!(a.prompt_version, "deal-analysis-v1");
    assert_eq!(
        a.summary,
        "Forecasting software that helps utilities absorb rooftop solar on distribution grids."
    );
    assert_eq!(a.sector, "climate-software");
    assert_eq!(a.business_model, "B2B SaaS sold to utilities");
    assert_eq!(a.risks, ["long utility sales cycles", "regulated buyers"]);

    let requests = llm.received_requests().await.unwrap();
    assert_eq!(requests.len(), 1);
    assert_eq!(
        requests[0].headers.get("authorization").unwrap(),
        "Bearer sk-test"
    );
    let body: serde_json::Value = serde_json::from_slice(&requests[0].body).unwrap();
    assert_eq!(body["model"], "gpt-4o-mini");
    assert_eq!(body["response_format"]["type"], "json_schema");
    assert_eq!(
        body["response_format"]["json_schema"]["schema"]["required"],
        serde_json::json!(["summary", "sector", "business_model", "risks"])
    );
    let facts: serde_json::Value =
        serde_json::from_str(body["messages"][1]["content"].as_str().unwrap()).unwrap();
    assert_eq!(facts["github"]["stars"], 80);
    assert_eq!(facts["name"], "Lumen Grid");
}
