//! The ScoringService API against a running service: what-if scores, bad
//! features, unknown deals, authentication, health.

mod common;

use common::*;
use dealmesh_auth::Role;
use dealmesh_proto::v1::{
    ExplainScoreRequest, GetScoringModelRequest, ReloadScoringModelRequest, ScoreRequest,
    ScoringFeatures,
};
use tonic::Code;
use tonic_types::StatusExt;

fn fit() -> ScoringFeatures {
    ScoringFeatures {
        sector: "developer-tools".into(),
        stage: "seed".into(),
        country: "US".into(),
        stars: Some(25_000),
        star_velocity_30d: Some(40.0),
        contributors: Some(80),
        commits_per_week: Some(50.0),
        funding_total_usd: Some(3_000_000),
        operating_status: "active".into(),
        categories: vec![],
    }
}

fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations)
        .unwrap_or_default()
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

#[tokio::test]
async fn what_if_scores_explain_themselves() {
    let service = TestScoring::start().await;
    let mut client = service.client().await;
    let version = dealmesh_scoring::model::Model::parse(THESIS)
        .unwrap()
        .version;

    let best = client
        .score(authed(
            ScoreRequest {
                features: Some(fit()),
            },
            Role::Analyst,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(best.score > 99.9, "{}", best.score);
    assert_eq!(best.model_version, version);
    assert_eq!(best.contributions.len(), 8);

    // What if it were a series B in Brazil with a tenth of the stars?
    let what_if = ScoringFeatures {
        stage: "series_b".into(),
        country: "Brazil".into(),
        stars: Some(2_500),
        ..fit()
    };
    let worse = client
        .score(authed(
            ScoreRequest {
                features: Some(what_if),
            },
            Role::Partner,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(worse.score < best.score);
    let sum: f64 = worse.contributions.iter().map(|c| c.contribution).sum();
    assert!((sum - worse.score).abs() < 1e-9);
    let stage = worse
        .contributions
        .iter()
        .find(|c| c.feature == "stage")
        .unwrap();
    assert_eq!(stage.value, 0.3);
    assert!((stage.contribution - 100.0 * 15.0 * 0.3 / 100.0).abs() < 1e-9);
    let geography = worse
        .contributions
        .iter()
        .find(|c| c.feature == "geography")
        .unwrap();
    assert_eq!(geography.value, 0.2);
    assert!(
        geography.explanation.contains("BR"),
        "{}",
        geography.explanation
    );

    // Past the fund's funding cap: a hard filter.
    let late = ScoringFeatures {
        funding_total_usd: Some(90_000_000),
        ..fit()
    };
    let filtered = client
        .score(authed(
            ScoreRequest {
                features: Some(late),
            },
            Role::Analyst,
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(filtered.score, 0.0);
    assert_eq!(filtered.failed_filters.len(), 1);
    assert!(filtered.failed_filters[0].starts_with("max_funding_usd"));
}

#[tokio::test]
async fn bad_features_are_invalid_argument_with_every_field_named() {
    let service = TestScoring::start().await;
    let mut client = service.client().await;
    let bad = ScoringFeatures {
        stage: "series_z".into(),
        country: "Atlantis".into(),
        stars: Some(-10),
        star_velocity_30d: Some(f64::NAN),
        contributors: Some(-1),
        commits_per_week: Some(f64::INFINITY),
        funding_total_usd: Some(-5),
        ..fit()
    };
    let status = client
        .score(authed(
            ScoreRequest {
                features: Some(bad),
            },
            Role::Analyst,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let fields: Vec<String> = violations(&status).into_iter().map(|(f, _)| f).collect();
    assert_eq!(
        fields,
        [
            "features.stage",
            "features.country",
            "features.stars",
            "features.star_velocity_30d",
            "features.contributors",
            "features.commits_per_week",
            "features.funding_total_usd",
        ]
    );
    let described = violations(&status);
    assert!(described[0].1.contains("series_z"));
    assert_eq!(described[2].1, "must be >= 0, got -10");
    assert_eq!(described[3].1, "must be a finite number, got NaN");

    let missing = client
        .score(authed(ScoreRequest { features: None }, Role::Analyst))
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::InvalidArgument);
    assert_eq!(violations(&missing)[0].0, "features");
}

#[tokio::test]
async fn explain_score_of_an_unknown_deal_is_not_found() {
    let service = TestScoring::start().await;
    let mut client = service.client().await;
    let status = client
        .explain_score(authed(
            ExplainScoreRequest {
                deal_id: new_deal_id(),
            },
            Role::Analyst,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .explain_score(authed(
            ExplainScoreRequest {
                deal_id: " ".into(),
            },
            Role::Analyst,
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status)[0].0, "deal_id");
}

#[tokio::test]
async fn every_call_needs_a_valid_token_lps_cannot_explain_and_reload_needs_an_admin() {
    let service = TestScoring::start().await;
    let mut client = service.client().await;
    let anonymous = client
        .score(ScoreRequest {
            features: Some(fit()),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);
    let anonymous = client
        .explain_score(ExplainScoreRequest {
            deal_id: new_deal_id(),
        })
        .await
        .unwrap_err();
    assert_eq!(anonymous.code(), Code::Unauthenticated);

    let mut forged = tonic::Request::new(GetScoringModelRequest {});
    let token = dealmesh_auth::mint_hs256(
        "another-secret-0123456789abcdef-xyz",
        &dealmesh_auth::Claims::new("mallory", Role::Admin, std::time::Duration::from_secs(60)),
    );
    forged
        .metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    assert_eq!(
        client.get_scoring_model(forged).await.unwrap_err().code(),
        Code::Unauthenticated
    );

    let lp = client
        .explain_score(authed(
            ExplainScoreRequest {
                deal_id: new_deal_id(),
            },
            Role::Lp,
        ))
        .await
        .unwrap_err();
    assert_eq!(lp.code(), Code::PermissionDenied);
    // What-if scoring reveals no deal: any role may use it.
    client
        .score(authed(
            ScoreRequest {
                features: Some(fit()),
            },
            Role::Lp,
        ))
        .await
        .unwrap();

    let denied = client
        .reload_scoring_model(authed(ReloadScoringModelRequest {}, Role::Analyst))
        .await
        .unwrap_err();
    assert_eq!(denied.code(), Code::PermissionDenied);
    let reloaded = client
        .reload_scoring_model(authed(ReloadScoringModelRequest {}, Role::Admin))
        .await
        .unwrap()
        .into_inner();
    assert!(!reloaded.changed, "the file did not change");
}

#[tokio::test]
async fn health_reports_serving_and_admin_endpoints_answer() {
    let service = TestScoring::start().await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", service.grpc_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let response = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "dealmesh.v1.ScoringService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        response.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );

    let metrics = reqwest::get(format!("http://{}/metrics", service.admin_addr))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let version = dealmesh_scoring::model::Model::parse(THESIS)
        .unwrap()
        .version;
    assert!(
        metrics.contains(&format!(
            "dealmesh_scoring_model_info{{version=\"{version}\"}} 1"
        )),
        "{metrics}"
    );
}
