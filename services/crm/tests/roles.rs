//! Every RPC by every role: allowed calls succeed, denied ones are
//! PERMISSION_DENIED and change nothing.

mod common;

use common::{TestCrm, authed, command, lp_token, token};
use dealmesh_auth::Role;
use dealmesh_eventlog::envelope;
use dealmesh_proto::v1::crm_service_client::CrmServiceClient;
use dealmesh_proto::v1::*;
use tonic::transport::Channel;
use tonic::{Code, Status};

const RPCS: [&str; 13] = [
    "ListDeals",
    "GetDeal",
    "GetDealHistory",
    "AddNote",
    "AssignOwner",
    "MoveStage",
    "ShareWithLps",
    "OpenVote",
    "CastVote",
    "CloseVote",
    "MergeDeals",
    "UnmergeDeals",
    "ArchiveDeal",
];

/// Who may call what.
fn allowed(rpc: &str, role: Role) -> bool {
    use Role::*;
    match rpc {
        "ListDeals" | "GetDeal" => true,
        "GetDealHistory" => role != Lp,
        "AddNote" => matches!(role, Admin | Partner | Analyst),
        "CastVote" => role == Lp,
        _ => matches!(role, Admin | Partner),
    }
}

/// A role's own deal (shared with lp-1), a spare deal to merge, and the
/// ids earlier calls produced.
struct Context {
    deal: String,
    spare: String,
    vote_id: String,
    merge_event_id: String,
}

async fn call(
    client: &mut CrmServiceClient<Channel>,
    rpc: &str,
    role: Role,
    token: &str,
    ctx: &mut Context,
) -> Result<(), Status> {
    let key = |what: &str| format!("{}-{what}", role.as_str());
    let deal = ctx.deal.clone();
    match rpc {
        "ListDeals" => {
            let deals = client
                .list_deals(authed(token, ListDealsRequest::default()))
                .await?
                .into_inner()
                .deals;
            assert!(
                deals.iter().any(|d| d.deal_id == deal),
                "{role}: own deal listed"
            );
        }
        "GetDeal" => {
            client
                .get_deal(authed(token, GetDealRequest { deal_id: deal }))
                .await?;
        }
        "GetDealHistory" => {
            let entries = client
                .get_deal_history(authed(
                    token,
                    GetDealHistoryRequest {
                        deal_id: deal,
                        ..Default::default()
                    },
                ))
                .await?
                .into_inner()
                .entries;
            assert!(!entries.is_empty());
        }
        "AddNote" => {
            client
                .add_note(authed(
                    token,
                    AddNoteRequest {
                        command: command(&key("note"), &deal),
                        body: "a note".into(),
                    },
                ))
                .await?;
        }
        "AssignOwner" => {
            client
                .assign_owner(authed(
                    token,
                    AssignOwnerRequest {
                        command: command(&key("owner"), &deal),
                        owner_id: "someone".into(),
                    },
                ))
                .await?;
        }
        "MoveStage" => {
            let result = client
                .move_stage(authed(
                    token,
                    MoveStageRequest {
                        command: command(&key("move"), &deal),
                        to_stage: "screening".into(),
                        reason: String::new(),
                    },
                ))
                .await?
                .into_inner();
            assert_eq!(result.result.unwrap().deal.unwrap().stage, "screening");
        }
        "ShareWithLps" => {
            client
                .share_with_lps(authed(
                    token,
                    ShareWithLpsRequest {
                        command: command(&key("share"), &deal),
                        lp_ids: vec!["lp-2".into()],
                        message: String::new(),
                    },
                ))
                .await?;
        }
        "OpenVote" => {
            let opened = client
                .open_vote(authed(
                    token,
                    OpenVoteRequest {
                        command: command(&key("vote"), &deal),
                        question: "Invest?".into(),
                        deadline: Some(envelope::timestamp(
                            chrono::Utc::now() + chrono::Duration::hours(1),
                        )),
                        eligible_lp_ids: vec!["lp-1".into(), "lp-2".into()],
                        rule: VoteRule::SimpleMajority as i32,
                        quorum: 0,
                    },
                ))
                .await?
                .into_inner();
            ctx.vote_id = opened.vote_id;
        }
        "CastVote" => {
            client
                .cast_vote(authed(
                    token,
                    CastVoteRequest {
                        command: command(&key("ballot"), &deal),
                        vote_id: ctx.vote_id.clone(),
                        ballot: Ballot::Yes as i32,
                        comment: String::new(),
                    },
                ))
                .await?;
        }
        "CloseVote" => {
            let closed = client
                .close_vote(authed(
                    token,
                    CloseVoteRequest {
                        command: command(&key("close"), &deal),
                        vote_id: ctx.vote_id.clone(),
                    },
                ))
                .await?
                .into_inner();
            assert_eq!(closed.vote.unwrap().status, CrmVoteStatus::Closed as i32);
        }
        "MergeDeals" => {
            let merged = client
                .merge_deals(authed(
                    token,
                    MergeDealsRequest {
                        command: command(&key("merge"), &deal),
                        merged_deal_ids: vec![ctx.spare.clone()],
                        reason: "same company".into(),
                    },
                ))
                .await?
                .into_inner();
            ctx.merge_event_id = merged.result.unwrap().event_id;
        }
        "UnmergeDeals" => {
            client
                .unmerge_deals(authed(
                    token,
                    UnmergeDealsRequest {
                        command: command(&key("unmerge"), &deal),
                        merge_event_id: ctx.merge_event_id.clone(),
                        reason: "not the same".into(),
                    },
                ))
                .await?;
        }
        "ArchiveDeal" => {
            let archived = client
                .archive_deal(authed(
                    token,
                    ArchiveDealRequest {
                        command: command(&key("archive"), &deal),
                        reason: "done".into(),
                    },
                ))
                .await?
                .into_inner();
            assert!(archived.result.unwrap().deal.unwrap().archived);
        }
        other => panic!("unknown rpc {other}"),
    }
    Ok(())
}

#[tokio::test]
async fn every_rpc_by_every_role() {
    let crm = TestCrm::start().await;
    let partner = token("setup-partner", Role::Partner);
    let mut client = crm.client().await;
    let mut checked = 0;
    for role in Role::ALL {
        let deal = crm
            .seed_deal(&format!("Deal of {role}"), "software", "tools", 50.0)
            .await;
        let spare = crm
            .seed_deal(&format!("Spare of {role}"), "software", "tools", 10.0)
            .await;
        client
            .share_with_lps(authed(
                &partner,
                ShareWithLpsRequest {
                    command: command(&format!("setup-share-{role}"), &deal),
                    lp_ids: vec!["lp-1".into()],
                    message: String::new(),
                },
            ))
            .await
            .expect("setup share");
        let mut ctx = Context {
            deal: deal.clone(),
            spare,
            vote_id: String::new(),
            merge_event_id: String::new(),
        };
        if role == Role::Lp {
            // LPs vote on a vote a partner opened.
            ctx.vote_id = client
                .open_vote(authed(
                    &partner,
                    OpenVoteRequest {
                        command: command("setup-vote", &deal),
                        question: "Invest?".into(),
                        deadline: Some(envelope::timestamp(
                            chrono::Utc::now() + chrono::Duration::hours(1),
                        )),
                        eligible_lp_ids: vec!["lp-1".into()],
                        rule: VoteRule::SimpleMajority as i32,
                        quorum: 0,
                    },
                ))
                .await
                .expect("setup vote")
                .into_inner()
                .vote_id;
        }
        let token = if role == Role::Lp {
            lp_token("lp-1")
        } else {
            token(&format!("user-{role}"), role)
        };
        for rpc in RPCS {
            let before = crm
                .count("SELECT count(*) FROM crm.events WHERE actor_role <> 5")
                .await;
            let result = call(&mut client, rpc, role, &token, &mut ctx).await;
            if allowed(rpc, role) {
                if let Err(status) = result {
                    panic!("{rpc} by {role} should be allowed: {status:?}");
                }
            } else {
                let status = result.expect_err(&format!("{rpc} by {role} should be denied"));
                assert_eq!(
                    status.code(),
                    Code::PermissionDenied,
                    "{rpc} by {role}: {status:?}"
                );
                assert!(
                    status.message().contains(role.as_str()),
                    "{}",
                    status.message()
                );
                assert_eq!(
                    crm.count("SELECT count(*) FROM crm.events WHERE actor_role <> 5")
                        .await,
                    before,
                    "{rpc} by {role} wrote nothing"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 13 * 5);
    crm.stop().await;
}
