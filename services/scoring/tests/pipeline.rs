//! DealEnriched in, DealScored out, through the real broker and PostgreSQL:
//! scores and explanations, redelivery, bad records, model reloads and
//! rescoring.

mod common;

use common::*;
use dealmesh_auth::Role;
use dealmesh_eventlog::consumer::dlq_headers;
use dealmesh_eventlog::envelope;
use dealmesh_proto::v1::{
    DealSourced, ExplainScoreRequest, GetScoringModelRequest, ReloadScoringModelRequest,
};
use dealmesh_proto::{DealEvent, Payload};
use dealmesh_scoring::handler::score_event_id;
use prost::Message;

fn contribution<'a>(
    scored: &'a dealmesh_proto::v1::DealScored,
    feature: &str,
) -> &'a dealmesh_proto::v1::FeatureContribution {
    scored
        .contributions
        .iter()
        .find(|c| c.feature == feature)
        .unwrap_or_else(|| panic!("no contribution for {feature}"))
}

#[tokio::test]
async fn enriched_deals_are_scored_with_explanations_and_redelivery_changes_nothing() {
    let service = TestScoring::start().await;
    let producer = service.producer();
    let (a, b, c) = (new_deal_id(), new_deal_id(), new_deal_id());

    let fit = enriched_event(&a, on_thesis());
    let off = enriched_event(&b, off_thesis());
    let mut gambling = on_thesis();
    gambling.analysis.as_mut().unwrap().sector = "Gambling".into();
    let excluded = enriched_event(&c, gambling);
    let sourced = DealEvent {
        payload: Some(Payload::DealSourced(DealSourced {
            source: "csv".into(),
            name: "Acme".into(),
            ..Default::default()
        })),
        ..enriched_event(&a, Default::default())
    };
    // The same deal again later, with less traction: the latest score wins.
    let mut later_signals = on_thesis();
    later_signals.github.as_mut().unwrap().stars = 400;
    let later = enriched_event(&a, later_signals);

    producer.publish(&fit).await.unwrap();
    producer.publish(&off).await.unwrap();
    producer.publish(&excluded).await.unwrap();
    producer.publish(&sourced).await.unwrap();
    // A redelivery: the very same record again, before the later event of
    // the same deal (same partition, so handled in this order).
    producer.publish(&fit).await.unwrap();
    producer.publish(&later).await.unwrap();

    let scores = service
        .wait_for_scores(&[
            &fit.event_id,
            &off.event_id,
            &excluded.event_id,
            &later.event_id,
        ])
        .await;
    assert_eq!(scores.len(), 4, "one DealScored per distinct enrichment");
    let version = dealmesh_scoring::model::Model::parse(THESIS)
        .unwrap()
        .version;
    let find = |id: &str| {
        scores
            .iter()
            .find(|(_, s)| s.source_event_id == id)
            .cloned()
            .unwrap()
    };

    let (fit_event, fit_score) = find(&fit.event_id);
    assert_eq!(fit_event.deal_id, a);
    assert_eq!(fit_event.causation_id, fit.event_id);
    assert_eq!(fit_event.correlation_id, fit.correlation_id);
    let fit_at = envelope::from_timestamp(fit.occurred_at.as_ref().unwrap()).unwrap();
    assert_eq!(
        fit_event.event_id,
        score_event_id(fit_at, &fit.event_id, &version)
    );
    assert_eq!(fit_score.model_version, version);
    assert!(fit_score.score > 99.9, "{}", fit_score.score);
    assert!(fit_score.failed_filters.is_empty());
    assert_eq!(fit_score.contributions.len(), 8);
    let sum: f64 = fit_score.contributions.iter().map(|c| c.contribution).sum();
    assert!((sum - fit_score.score).abs() < 1e-9);
    let sector = contribution(&fit_score, "sector");
    assert_eq!(sector.value, 1.0);
    assert!(
        sector.explanation.contains("developer-tools"),
        "{}",
        sector.explanation
    );
    assert_eq!(contribution(&fit_score, "geography").value, 1.0);

    let (_, off_score) = find(&off.event_id);
    assert!(off_score.score < 30.0, "{}", off_score.score);
    assert!(off_score.score > 0.0);
    let stage = contribution(&off_score, "stage");
    assert_eq!(stage.value, 0.1, "series_c gets the stage default");

    let (_, excluded_score) = find(&excluded.event_id);
    assert_eq!(excluded_score.score, 0.0);
    assert_eq!(
        excluded_score.failed_filters,
        ["excluded_sectors: sector \"gambling\" is excluded"]
    );

    let (later_event, later_score) = find(&later.event_id);
    assert!(later_score.score < fit_score.score);

    // ExplainScore gives the deal's latest score and what it was made of.
    let explained = service
        .client()
        .await
        .explain_score(authed(
            ExplainScoreRequest { deal_id: a.clone() },
            Role::Analyst,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(explained.event_id, later_event.event_id);
    assert_eq!(explained.scored.unwrap(), later_score);
    let features = explained.features.unwrap();
    assert_eq!(features.stars, Some(400));
    assert_eq!(features.stage, "seed");
    assert_eq!(features.country, "US");
}

#[tokio::test]
async fn a_restart_with_a_fresh_consumer_group_republishes_nothing() {
    let mut service = TestScoring::start().await;
    let producer = service.producer();
    let first = enriched_event(&new_deal_id(), on_thesis());
    producer.publish(&first).await.unwrap();
    service.wait_for_scores(&[&first.event_id]).await;
    service.stop().await;

    // A new group replays the whole log: every record is delivered again.
    service
        .env
        .push(("DEALMESH_SCORING_GROUP_ID".into(), "replay".into()));
    service.run().await;
    let marker = enriched_event(&first.deal_id, off_thesis());
    producer.publish(&marker).await.unwrap();
    let scores = service.wait_for_scores(&[&marker.event_id]).await;
    assert_eq!(
        scores
            .iter()
            .filter(|(_, s)| s.source_event_id == first.event_id)
            .count(),
        1
    );
    assert_eq!(scores.len(), 2);
    service.stop().await;
}

#[tokio::test]
async fn bad_records_are_dead_lettered_and_the_partition_moves_on() {
    let service = TestScoring::start().await;
    let producer = service.producer();
    let deal = new_deal_id();

    // Not a protobuf envelope at all.
    producer
        .send(
            &service.topics.deals,
            Some(deal.as_bytes()),
            b"{\"not\": \"protobuf\"}",
            rdkafka::message::OwnedHeaders::new(),
        )
        .await
        .unwrap();
    // An envelope whose DealEnriched has a field of the wrong type (GitHub
    // signals sent as a number).
    let mut wrong_type = DealEvent {
        payload: None,
        ..enriched_event(&deal, Default::default())
    }
    .encode_to_vec();
    // Field 21 (deal_enriched), length-delimited: tag 0xAA 0x01, length 2,
    // then its field 1 (github, a message) as varint 7.
    wrong_type.extend_from_slice(&[0xAA, 0x01, 0x02, 0x08, 0x07]);
    producer
        .send(
            &service.topics.deals,
            Some(deal.as_bytes()),
            &wrong_type,
            rdkafka::message::OwnedHeaders::new(),
        )
        .await
        .unwrap();
    // An event type newer than this build (payload field 60): skipped, not
    // an error.
    let mut future_type = DealEvent {
        payload: None,
        ..enriched_event(&deal, Default::default())
    }
    .encode_to_vec();
    future_type.extend_from_slice(&[0xE2, 0x03, 0x02, 0x08, 0x01]);
    producer
        .send(
            &service.topics.deals,
            Some(deal.as_bytes()),
            &future_type,
            rdkafka::message::OwnedHeaders::new(),
        )
        .await
        .unwrap();
    // A well-formed envelope with impossible signals.
    let mut negative = on_thesis();
    negative.github.as_mut().unwrap().stars = -5;
    negative.github.as_mut().unwrap().star_velocity_30d = f64::NAN;
    let negative = enriched_event(&deal, negative);
    producer.publish(&negative).await.unwrap();
    // A stage this build has never heard of: scored, and said so.
    let mut unknown_stage = on_thesis();
    unknown_stage
        .crunchbase
        .as_mut()
        .unwrap()
        .last_round
        .as_mut()
        .unwrap()
        .investment_type = "series_z".into();
    let unknown_stage = enriched_event(&deal, unknown_stage);
    producer.publish(&unknown_stage).await.unwrap();

    let scores = service.wait_for_scores(&[&unknown_stage.event_id]).await;
    assert_eq!(scores.len(), 1, "only the good record is scored");
    let stage = contribution(&scores[0].1, "stage");
    assert_eq!(stage.value, 0.0);
    assert!(
        stage.explanation.contains("series_z"),
        "{}",
        stage.explanation
    );

    let dead = dealmesh_testkit::read_topic(&service.bootstrap, &service.topics.dead_letter).await;
    assert_eq!(
        dead.len(),
        3,
        "every bad record is dead-lettered, and only those"
    );
    let header = |record: &dealmesh_testkit::TopicRecord, name: &str| {
        record
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let errors: Vec<String> = dead.iter().map(|r| header(r, dlq_headers::ERROR)).collect();
    assert_eq!(
        errors
            .iter()
            .filter(|e| e.contains("cannot decode event"))
            .count(),
        2,
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("invalid wire type")),
        "{errors:?}"
    );
    let invalid = errors
        .iter()
        .find(|e| e.contains("github.stars"))
        .unwrap_or_else(|| panic!("{errors:?}"));
    assert!(invalid.contains("must be >= 0, got -5"), "{invalid}");
    assert!(invalid.contains("github.star_velocity_30d"), "{invalid}");
    assert!(
        dead.iter()
            .all(|r| header(r, dlq_headers::ERROR_KIND) == "permanent")
    );
}

#[tokio::test]
async fn a_reloaded_model_scores_new_events_and_a_bad_file_changes_nothing() {
    let service = TestScoring::start().await;
    let mut client = service.client().await;
    let before = client
        .get_scoring_model(authed(GetScoringModelRequest {}, Role::Analyst))
        .await
        .unwrap()
        .into_inner();

    std::fs::write(
        &service.model_path,
        THESIS.replace("stage = 15", "stage = -15"),
    )
    .unwrap();
    let error = client
        .reload_scoring_model(authed(ReloadScoringModelRequest {}, Role::Admin))
        .await
        .unwrap_err();
    assert_eq!(error.code(), tonic::Code::FailedPrecondition);
    assert!(
        error
            .message()
            .contains("weights.stage: must be a finite number >= 0, got -15"),
        "{}",
        error.message()
    );
    let status = client
        .get_scoring_model(authed(GetScoringModelRequest {}, Role::Analyst))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.model_version, before.model_version);
    assert!(status.last_reload_error.contains("weights.stage"));

    let new_thesis = THESIS
        .replace("version = \"2026.11-1\"", "version = \"2026.12-1\"")
        .replace("sector = 25", "sector = 60");
    std::fs::write(&service.model_path, &new_thesis).unwrap();
    let reloaded = client
        .reload_scoring_model(authed(ReloadScoringModelRequest {}, Role::Admin))
        .await
        .unwrap()
        .into_inner();
    assert!(reloaded.changed);
    assert!(reloaded.model_version.starts_with("2026.12-1+"));
    assert_ne!(reloaded.model_version, before.model_version);

    let event = enriched_event(&new_deal_id(), off_thesis());
    service.producer().publish(&event).await.unwrap();
    let scores = service.wait_for_scores(&[&event.event_id]).await;
    assert_eq!(scores[0].1.model_version, reloaded.model_version);
    assert_eq!(contribution(&scores[0].1, "sector").weight, 60.0);
}

#[tokio::test]
async fn rescore_publishes_each_deal_once_per_model() {
    let mut service = TestScoring::start().await;
    let producer = service.producer();
    let one = enriched_event(&new_deal_id(), on_thesis());
    let two = enriched_event(&new_deal_id(), off_thesis());
    producer.publish(&one).await.unwrap();
    producer.publish(&two).await.unwrap();
    service
        .wait_for_scores(&[&one.event_id, &two.event_id])
        .await;
    service.stop().await;
    let config = service.config();

    // Same model: nothing new.
    let scorer = dealmesh_scoring::app::scorer(&config, None).await.unwrap();
    let report = dealmesh_scoring::rescore::rescore(&scorer, 4)
        .await
        .unwrap();
    assert_eq!((report.published, report.unchanged), (0, 2));

    // A new model: one new score per deal, and only once.
    std::fs::write(
        &service.model_path,
        THESIS.replace("geography = 10", "geography = 40"),
    )
    .unwrap();
    let scorer = dealmesh_scoring::app::scorer(&config, None).await.unwrap();
    let report = dealmesh_scoring::rescore::rescore(&scorer, 4)
        .await
        .unwrap();
    assert_eq!((report.published, report.unchanged), (2, 0));
    assert!(report.invalid.is_empty());
    let again = dealmesh_scoring::rescore::rescore(&scorer, 4)
        .await
        .unwrap();
    assert_eq!((again.published, again.unchanged), (0, 2));

    let scores = service.scores().await;
    assert_eq!(scores.len(), 4);
    let new_version = report.model_version;
    let rescored: Vec<_> = scores
        .iter()
        .filter(|(_, s)| s.model_version == new_version)
        .collect();
    assert_eq!(rescored.len(), 2);
    for (event, scored) in rescored {
        assert_eq!(contribution(scored, "geography").weight, 40.0);
        let source = if scored.source_event_id == one.event_id {
            &one
        } else {
            &two
        };
        let at = envelope::from_timestamp(source.occurred_at.as_ref().unwrap()).unwrap();
        assert_eq!(
            event.event_id,
            score_event_id(at, &source.event_id, &new_version)
        );
    }

    // The stored latest score is the rescored one.
    let stored = scorer.store().score(&one.deal_id).await.unwrap().unwrap();
    let event = DealEvent::decode(stored.envelope.as_slice()).unwrap();
    match event.payload {
        Some(Payload::DealScored(scored)) => assert_eq!(scored.model_version, new_version),
        other => panic!("stored {other:?}"),
    }
}

#[tokio::test]
async fn with_rescore_on_reload_a_new_model_rescores_every_deal() {
    let service =
        TestScoring::start_with_env(THESIS, &[("DEALMESH_SCORING_RESCORE_ON_RELOAD", "true")])
            .await;
    let producer = service.producer();
    let one = enriched_event(&new_deal_id(), on_thesis());
    let two = enriched_event(&new_deal_id(), off_thesis());
    producer.publish(&one).await.unwrap();
    producer.publish(&two).await.unwrap();
    service
        .wait_for_scores(&[&one.event_id, &two.event_id])
        .await;

    std::fs::write(
        &service.model_path,
        THESIS.replace("funding = 6", "funding = 30"),
    )
    .unwrap();
    let reloaded = service
        .client()
        .await
        .reload_scoring_model(authed(ReloadScoringModelRequest {}, Role::Admin))
        .await
        .unwrap()
        .into_inner();
    assert!(reloaded.changed);
    let version = reloaded.model_version;
    let scores = service
        .wait_until("both deals rescored under the new model", |scores| {
            scores
                .iter()
                .filter(|(_, s)| s.model_version == version)
                .count()
                >= 2
        })
        .await;
    let rescored: Vec<_> = scores
        .iter()
        .filter(|(_, s)| s.model_version == version)
        .map(|(_, s)| s.source_event_id.as_str())
        .collect();
    assert_eq!(rescored.len(), 2);
    assert!(rescored.contains(&one.event_id.as_str()));
    assert!(rescored.contains(&two.event_id.as_str()));
    assert_eq!(scores.len(), 4);
}
