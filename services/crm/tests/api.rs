//! The CRM over gRPC, as partners, analysts and LPs use it: queries,
//! commands decided by the log, LP visibility, votes, and bad input.

mod common;

use std::time::Duration;

use common::{TestCrm, authed, command, lp_token, token};
use dealmesh_auth::Role;
use dealmesh_eventlog::envelope;
use dealmesh_proto::v1::*;
use tonic::Code;
use tonic_types::StatusExt;

fn violations(status: &tonic::Status) -> Vec<String> {
    status
        .get_details_bad_request()
        .map(|b| b.field_violations.into_iter().map(|v| v.field).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn list_filters_sorts_and_pages_without_gaps() {
    let crm = TestCrm::start().await;
    let analyst = token("ana", Role::Analyst);
    let a = crm
        .seed_deal("Acme Robotics", "robotics", "warehouse robots", 81.5)
        .await;
    let b = crm
        .seed_deal("Beta Bio", "biotech", "protein design platform", 42.0)
        .await;
    let c = crm
        .seed_deal("Cobalt Robots", "robotics", "farm robots", 67.0)
        .await;
    let mut client = crm.client().await;

    let by_score = client
        .list_deals(authed(
            &analyst,
            ListDealsRequest {
                sort: CrmDealSort::Score as i32,
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    let ids: Vec<&str> = by_score.deals.iter().map(|d| d.deal_id.as_str()).collect();
    assert_eq!(ids, [a.as_str(), c.as_str(), b.as_str()]);

    let robotics = client
        .list_deals(authed(
            &analyst,
            ListDealsRequest {
                sector: "Robotics".into(),
                min_score: Some(70.0),
                ..Default::default()
            },
        ))
        .await
        .expect("list")
        .into_inner();
    assert_eq!(
        robotics
            .deals
            .iter()
            .map(|d| d.deal_id.as_str())
            .collect::<Vec<_>>(),
        [a.as_str()]
    );

    let text = client
        .list_deals(authed(
            &analyst,
            ListDealsRequest {
                query: "prot".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("search")
        .into_inner();
    assert_eq!(text.deals.len(), 1);
    assert_eq!(text.deals[0].name, "Beta Bio");
    let by_source = client
        .list_deals(authed(
            &analyst,
            ListDealsRequest {
                source: "crunchbase".into(),
                ..Default::default()
            },
        ))
        .await
        .expect("source filter")
        .into_inner();
    assert!(by_source.deals.is_empty());

    // One deal per page, following the cursor, gives every deal once.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_deals(authed(
                &analyst,
                ListDealsRequest {
                    sort: CrmDealSort::Score as i32,
                    page_size: 1,
                    page_token: page_token.clone(),
                    ..Default::default()
                },
            ))
            .await
            .expect("page")
            .into_inner();
        seen.extend(page.deals.into_iter().map(|d| d.deal_id));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    assert_eq!(seen, [a.clone(), c.clone(), b.clone()]);

    // A cursor from another sort, or garbage, is refused.
    let first = client
        .list_deals(authed(
            &analyst,
            ListDealsRequest {
                sort: CrmDealSort::Score as i32,
                page_size: 1,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    for bad in [first.next_page_token.clone(), "not-a-token".to_owned()] {
        let status = client
            .list_deals(authed(
                &analyst,
                ListDealsRequest {
                    sort: CrmDealSort::Recent as i32,
                    page_token: bad,
                    ..Default::default()
                },
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(violations(&status), ["page_token"]);
    }
    let status = client
        .list_deals(authed(
            &analyst,
            ListDealsRequest {
                stages: vec!["limbo".into()],
                min_score: Some(101.0),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status), ["stages[0]", "min_score"]);

    let details = client
        .get_deal(authed(&analyst, GetDealRequest { deal_id: a.clone() }))
        .await
        .expect("get")
        .into_inner();
    let explanation = details.score_explanation.expect("explained");
    assert_eq!(explanation.score, 81.5);
    assert_eq!(explanation.contributions[0].feature, "github_stars");
    let sector = details
        .provenance
        .iter()
        .find(|p| p.field == "sector")
        .expect("sector provenance");
    assert_eq!(
        (sector.value.as_str(), sector.source.as_str()),
        ("robotics", "llm")
    );
    assert_eq!(details.deal.unwrap().sources[0].source, "github");

    let history = client
        .get_deal_history(authed(
            &analyst,
            GetDealHistoryRequest {
                deal_id: a.clone(),
                ..Default::default()
            },
        ))
        .await
        .expect("history")
        .into_inner();
    let types: Vec<&str> = history
        .entries
        .iter()
        .map(|e| e.event_type.as_str())
        .collect();
    assert_eq!(types, ["DealSourced", "DealEnriched", "DealScored"]);
    assert_eq!(
        history
            .entries
            .iter()
            .map(|e| e.deal_version)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    crm.stop().await;
}

#[tokio::test]
async fn commands_are_decided_by_the_log_and_answer_after_projection() {
    let crm = TestCrm::start().await;
    let partner = token("pat", Role::Partner);
    let deal = crm.seed_deal("Delta Data", "data", "pipelines", 55.0).await;
    let mut client = crm.client().await;

    let moved = client
        .move_stage(authed(
            &partner,
            MoveStageRequest {
                command: command("move-1", &deal),
                to_stage: "screening".into(),
                reason: "strong team".into(),
            },
        ))
        .await
        .expect("move")
        .into_inner()
        .result
        .unwrap();
    // Read-your-writes: the answer already shows the projected change.
    assert_eq!(moved.deal_version, 4);
    assert_eq!(moved.deal.as_ref().unwrap().stage, "screening");
    assert!(!moved.replayed);

    // The same key again: the same event, nothing new on the deal.
    let again = client
        .move_stage(authed(
            &partner,
            MoveStageRequest {
                command: command("move-1", &deal),
                to_stage: "screening".into(),
                reason: "strong team".into(),
            },
        ))
        .await
        .expect("retry")
        .into_inner()
        .result
        .unwrap();
    assert_eq!(again.event_id, moved.event_id);
    assert!(again.replayed);
    assert_eq!(again.deal.unwrap().version, 4);

    // The same key for another request is refused.
    let status = client
        .move_stage(authed(
            &partner,
            MoveStageRequest {
                command: command("move-1", &deal),
                to_stage: "diligence".into(),
                reason: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status), ["command.idempotency_key"]);

    // A stale version is ABORTED and writes nothing.
    let status = client
        .assign_owner(authed(
            &partner,
            AssignOwnerRequest {
                command: Some(CrmCommand {
                    idempotency_key: "own-1".into(),
                    deal_id: deal.clone(),
                    expected_version: Some(3),
                }),
                owner_id: "pat".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Aborted, "{status:?}");
    assert!(
        status.message().contains("version 4"),
        "{}",
        status.message()
    );

    // An illegal transition fails its precondition, naming what is allowed.
    let status = client
        .move_stage(authed(
            &partner,
            MoveStageRequest {
                command: command("move-2", &deal),
                to_stage: "invested".into(),
                reason: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("allowed from screening"),
        "{}",
        status.message()
    );

    // Unknown deal, unknown stage.
    let status = client
        .move_stage(authed(
            &partner,
            MoveStageRequest {
                command: command("move-3", "no-such-deal"),
                to_stage: "screening".into(),
                reason: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    let status = client
        .move_stage(authed(
            &partner,
            MoveStageRequest {
                command: command("", &deal),
                to_stage: "orbit".into(),
                reason: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status), ["command.idempotency_key", "to_stage"]);

    // An oversized note is refused.
    let status = client
        .add_note(authed(
            &partner,
            AddNoteRequest {
                command: command("note-big", &deal),
                body: "x".repeat(501),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(violations(&status), ["body"]);
    assert_eq!(
        crm.count("SELECT count(*) FROM crm.deals WHERE version <> 4")
            .await,
        0,
        "nothing written by the refusals"
    );
    assert_eq!(
        crm.count("SELECT count(*) FROM crm.command_requests").await,
        1
    );

    // Concurrent commands at one version: each is applied or ABORTED, and
    // the deal's version counts exactly the applied ones.
    let mut calls = Vec::new();
    for i in 0..5 {
        let mut client = client.clone();
        let partner = partner.clone();
        let deal = deal.clone();
        calls.push(tokio::spawn(async move {
            client
                .assign_owner(authed(
                    &partner,
                    AssignOwnerRequest {
                        command: command(&format!("race-{i}"), &deal),
                        owner_id: format!("owner-{i}"),
                    },
                ))
                .await
        }));
    }
    let mut applied = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => applied += 1,
            Err(status) => assert_eq!(status.code(), Code::Aborted, "{status:?}"),
        }
    }
    assert!(applied >= 1);
    let deal_now = client
        .get_deal(authed(
            &partner,
            GetDealRequest {
                deal_id: deal.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .deal
        .unwrap();
    assert_eq!(deal_now.version, 4 + applied);
    crm.stop().await;
}

#[tokio::test]
async fn lps_see_only_what_is_shared_with_them_and_vote_once_each() {
    let crm = TestCrm::start().await;
    let partner = token("pat", Role::Partner);
    let shared = crm
        .seed_deal("Echo Energy", "energy", "storage", 70.0)
        .await;
    let hidden = crm
        .seed_deal("Foxtrot Fin", "fintech", "payments", 90.0)
        .await;
    let mut client = crm.client().await;
    let lp1 = lp_token("lp-1");
    let lp2 = lp_token("lp-2");
    let lp3 = lp_token("lp-3");

    // Before sharing, an LP sees nothing, and a hidden deal reads exactly
    // like a deal that does not exist.
    let listed = client
        .list_deals(authed(&lp1, ListDealsRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.deals.is_empty());
    let hidden_status = client
        .get_deal(authed(
            &lp1,
            GetDealRequest {
                deal_id: hidden.clone(),
            },
        ))
        .await
        .unwrap_err();
    let missing_status = client
        .get_deal(authed(
            &lp1,
            GetDealRequest {
                deal_id: "0000".into(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(hidden_status.code(), Code::NotFound);
    assert_eq!(
        hidden_status.message().replace(&hidden, "ID"),
        missing_status.message().replace("0000", "ID")
    );

    client
        .share_with_lps(authed(
            &partner,
            ShareWithLpsRequest {
                command: command("share", &shared),
                lp_ids: vec!["lp-1".into(), "lp-2".into()],
                message: "have a look".into(),
            },
        ))
        .await
        .expect("share");
    client
        .add_note(authed(
            &partner,
            AddNoteRequest {
                command: command("note", &shared),
                body: "internal: valuation too high".into(),
            },
        ))
        .await
        .expect("note");
    let listed = client
        .list_deals(authed(
            &lp1,
            ListDealsRequest {
                sort: CrmDealSort::Score as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        listed
            .deals
            .iter()
            .map(|d| d.deal_id.as_str())
            .collect::<Vec<_>>(),
        [shared.as_str()]
    );
    let seen = client
        .get_deal(authed(
            &lp1,
            GetDealRequest {
                deal_id: shared.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(seen.notes.is_empty(), "LPs do not see internal notes");
    assert!(
        seen.deal.unwrap().shared_lp_ids.is_empty(),
        "LPs do not see who else it is shared with"
    );
    assert_eq!(
        client
            .get_deal(authed(
                &lp3,
                GetDealRequest {
                    deal_id: shared.clone()
                }
            ))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );

    // A vote among lp-1 and lp-2.
    let deadline = envelope::timestamp(chrono::Utc::now() + chrono::Duration::hours(1));
    let opened = client
        .open_vote(authed(
            &partner,
            OpenVoteRequest {
                command: command("vote", &shared),
                question: "Invest 2M?".into(),
                deadline: Some(deadline),
                eligible_lp_ids: vec!["lp-1".into(), "lp-2".into()],
                rule: VoteRule::SimpleMajority as i32,
                quorum: 0,
            },
        ))
        .await
        .expect("open vote")
        .into_inner();
    let vote_id = opened.vote_id.clone();
    let cast = |key: &str, ballot: Ballot| CastVoteRequest {
        command: command(key, &shared),
        vote_id: vote_id.clone(),
        ballot: ballot as i32,
        comment: String::new(),
    };
    client
        .cast_vote(authed(&lp1, cast("lp1-a", Ballot::Yes)))
        .await
        .expect("lp-1 votes");
    // A second ballot replaces the first while the vote is open.
    client
        .cast_vote(authed(&lp1, cast("lp1-b", Ballot::No)))
        .await
        .expect("lp-1 changes its mind");
    let mine = client
        .get_deal(authed(
            &lp1,
            GetDealRequest {
                deal_id: shared.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .votes;
    assert_eq!(mine[0].ballots.len(), 1);
    assert_eq!(mine[0].ballots[0].ballot, Ballot::No as i32);
    assert_eq!(mine[0].status, CrmVoteStatus::Open as i32);
    // lp-3 cannot see the deal, so cannot vote on it.
    assert_eq!(
        client
            .cast_vote(authed(&lp3, cast("lp3", Ballot::Yes)))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    // The last eligible LP votes: the vote closes with the tally.
    client
        .cast_vote(authed(&lp2, cast("lp2", Ballot::Yes)))
        .await
        .expect("lp-2 votes");
    let votes = client
        .get_deal(authed(
            &partner,
            GetDealRequest {
                deal_id: shared.clone(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .votes;
    assert_eq!(votes[0].status, CrmVoteStatus::Closed as i32);
    assert_eq!(votes[0].close_reason, VoteCloseReason::AllVoted as i32);
    let tally = votes[0].tally.unwrap();
    assert_eq!(
        (tally.yes, tally.no, tally.abstain, tally.eligible),
        (1, 1, 0, 2)
    );
    assert_eq!(votes[0].result, VoteResult::Rejected as i32);
    // Voting on a closed vote fails its precondition.
    let status = client
        .cast_vote(authed(&lp1, cast("lp1-c", Ballot::Yes)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");

    // The closer records the close on the log: a VoteClosed with the tally.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let closed: Vec<CrmHistoryEntry> = client
            .get_deal_history(authed(
                &partner,
                GetDealHistoryRequest {
                    deal_id: shared.clone(),
                    ..Default::default()
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .entries
            .into_iter()
            .filter(|e| e.event_type == "VoteClosed")
            .collect();
        if let Some(entry) = closed.first() {
            let Some(dealmesh_proto::Payload::VoteClosed(c)) =
                entry.event.as_ref().and_then(|e| e.payload.clone())
            else {
                panic!("not a VoteClosed: {entry:?}");
            };
            assert_eq!(c.result, VoteResult::Rejected as i32);
            assert_eq!(c.tally.unwrap().no, 1);
            assert_eq!(closed.len(), 1);
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no VoteClosed on the log"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    crm.stop().await;
}

#[tokio::test]
async fn a_vote_closes_at_its_deadline_without_anyone_calling() {
    let crm = TestCrm::start().await;
    let partner = token("pat", Role::Partner);
    let deal = crm
        .seed_deal("Golf Games", "gaming", "mobile games", 30.0)
        .await;
    let mut client = crm.client().await;
    client
        .share_with_lps(authed(
            &partner,
            ShareWithLpsRequest {
                command: command("share", &deal),
                lp_ids: vec!["lp-1".into(), "lp-2".into(), "lp-3".into()],
                message: String::new(),
            },
        ))
        .await
        .unwrap();
    let opened = client
        .open_vote(authed(
            &partner,
            OpenVoteRequest {
                command: command("vote", &deal),
                question: "Follow on?".into(),
                deadline: Some(envelope::timestamp(
                    chrono::Utc::now() + chrono::Duration::milliseconds(1500),
                )),
                eligible_lp_ids: vec!["lp-1".into(), "lp-2".into(), "lp-3".into()],
                rule: VoteRule::Quorum as i32,
                quorum: 2,
            },
        ))
        .await
        .expect("open")
        .into_inner();
    client
        .cast_vote(authed(
            &lp_token("lp-1"),
            CastVoteRequest {
                command: command("b1", &deal),
                vote_id: opened.vote_id.clone(),
                ballot: Ballot::Yes as i32,
                comment: "go".into(),
            },
        ))
        .await
        .expect("ballot");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let vote = loop {
        let votes = client
            .get_deal(authed(
                &partner,
                GetDealRequest {
                    deal_id: deal.clone(),
                },
            ))
            .await
            .unwrap()
            .into_inner()
            .votes;
        if votes[0].status == CrmVoteStatus::Closed as i32 {
            break votes[0].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "vote not closed after its deadline"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(vote.close_reason, VoteCloseReason::Deadline as i32);
    assert_eq!(vote.result, VoteResult::NoQuorum as i32);
    assert_eq!(vote.tally.unwrap().yes, 1);
    // A ballot after the close is refused.
    let status = client
        .cast_vote(authed(
            &lp_token("lp-2"),
            CastVoteRequest {
                command: command("b2", &deal),
                vote_id: opened.vote_id.clone(),
                ballot: Ballot::Yes as i32,
                comment: String::new(),
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    crm.stop().await;
}

#[tokio::test]
async fn bad_tokens_are_unauthenticated() {
    let crm = TestCrm::start().await;
    let mut client = crm.client().await;
    let expired = dealmesh_auth::mint_hs256(
        common::SECRET,
        &dealmesh_auth::Claims {
            exp: chrono::Utc::now().timestamp() - 3600,
            ..dealmesh_auth::Claims::new("ana", Role::Analyst, Duration::from_secs(1))
        },
    );
    let wrong_key = dealmesh_auth::mint_hs256(
        "another-secret-0123456789abcdef",
        &dealmesh_auth::Claims::new("ana", Role::Analyst, Duration::from_secs(600)),
    );
    let missing = client
        .list_deals(ListDealsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(missing.code(), Code::Unauthenticated);
    for bad in ["not.a.jwt", expired.as_str(), wrong_key.as_str()] {
        let status = client
            .list_deals(authed(bad, ListDealsRequest::default()))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{bad}: {status:?}");
    }
    crm.stop().await;
}
