//! `dealmesh.v1.CrmService` over gRPC: authentication and roles, input
//! validation, and the mapping of every failure to a clear status.

use chrono::Utc;
use dealmesh_auth::{Authenticator, Principal, Role, require};
use dealmesh_eventlog::{envelope, ids};
use dealmesh_proto::Payload;
use dealmesh_proto::v1::crm_service_server::CrmService;
use dealmesh_proto::v1::*;
use dealmesh_runtime::grpc::{Violation, invalid_argument};
use prost::Message;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::commands::{self, Commands, Envelope, Outcome, fingerprint};
use crate::config::Pipeline;
use crate::read::{self, DealFilter, DealRow, ReadModel, Viewer};

const EVERYONE: &[Role] = &[
    Role::Admin,
    Role::Partner,
    Role::Analyst,
    Role::Lp,
    Role::Service,
];
const STAFF_READ: &[Role] = &[Role::Admin, Role::Partner, Role::Analyst, Role::Service];
const PARTNERS: &[Role] = &[Role::Admin, Role::Partner];
const NOTE_TAKERS: &[Role] = &[Role::Admin, Role::Partner, Role::Analyst];
const LPS: &[Role] = &[Role::Lp];

const MAX_ID: usize = 200;
const MAX_TEXT: usize = 2_000;

pub struct CrmApi {
    auth: Authenticator,
    read: ReadModel,
    commands: Commands,
    pipeline: Pipeline,
    max_note_chars: usize,
}

impl CrmApi {
    pub fn new(
        auth: Authenticator,
        read: ReadModel,
        commands: Commands,
        pipeline: Pipeline,
        max_note_chars: usize,
    ) -> Self {
        Self {
            auth,
            read,
            commands,
            pipeline,
            max_note_chars,
        }
    }
}

fn viewer(principal: &Principal) -> Viewer {
    if principal.is_lp() {
        Viewer::Lp(
            principal
                .lp_id
                .clone()
                .unwrap_or_else(|| principal.subject.clone()),
        )
    } else {
        Viewer::Staff
    }
}

/// The caller's correlation id (`x-correlation-id`), or a fresh one.
fn correlation_id<T>(request: &Request<T>) -> String {
    request
        .metadata()
        .get("x-correlation-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= MAX_ID)
        .map(str::to_owned)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

pub fn read_status(error: read::Error) -> Status {
    match error {
        read::Error::NotFound(deal_id) => Status::not_found(format!("deal {deal_id} not found")),
        read::Error::BadRequest { field, message } => invalid_argument(
            format!("{field} {message}"),
            &[Violation::new(field, message)],
        ),
        read::Error::Database(error) => {
            tracing::error!(%error, "read failed");
            Status::unavailable("the read model is not reachable; retry")
        }
    }
}

fn precondition(code: Code, kind: &str, subject: &str, reason: impl Into<String>) -> Status {
    let reason = reason.into();
    let details =
        ErrorDetails::with_precondition_failure(vec![tonic_types::PreconditionViolation::new(
            kind,
            subject,
            reason.clone(),
        )]);
    Status::with_error_details(code, reason, details)
}

pub fn command_status(error: commands::Error) -> Status {
    match error {
        commands::Error::KeyReused(_) => invalid_argument(
            error.to_string(),
            &[Violation::new(
                "command.idempotency_key",
                "was already used for a different request",
            )],
        ),
        commands::Error::Rejected {
            ref code,
            ref reason,
        } => {
            let code = if code == crate::projection::ABORTED {
                Code::Aborted
            } else {
                Code::FailedPrecondition
            };
            precondition(code, "DEAL_STATE", "deal", reason.clone())
        }
        commands::Error::Timeout(_) => Status::deadline_exceeded(error.to_string()),
        commands::Error::Database(_) | commands::Error::Broker(_) => {
            tracing::error!(%error, "command failed");
            Status::unavailable(format!("{error}; retry with the same idempotency key"))
        }
        commands::Error::Corrupt(_) => Status::internal(error.to_string()),
    }
}

/// Validated common command fields.
struct Cmd {
    key: String,
    deal_id: String,
    expected: Option<u64>,
}

fn check_id(violations: &mut Vec<Violation>, field: &str, value: &str) {
    if value.trim().is_empty() {
        violations.push(Violation::new(field, "is required"));
    } else if value.len() > MAX_ID {
        violations.push(Violation::new(
            field,
            format!("must be at most {MAX_ID} characters"),
        ));
    }
}

fn check_text(violations: &mut Vec<Violation>, field: &str, value: &str, max: usize) {
    if value.chars().count() > max {
        violations.push(Violation::new(
            field,
            format!("must be at most {max} characters"),
        ));
    }
}

fn command_fields(command: Option<&CrmCommand>, violations: &mut Vec<Violation>) -> Cmd {
    let command = command.cloned().unwrap_or_default();
    check_id(
        violations,
        "command.idempotency_key",
        &command.idempotency_key,
    );
    check_id(violations, "command.deal_id", &command.deal_id);
    Cmd {
        key: command.idempotency_key,
        deal_id: command.deal_id,
        expected: command.expected_version,
    }
}

fn reject(violations: Vec<Violation>) -> Result<(), Status> {
    if violations.is_empty() {
        Ok(())
    } else {
        let fields: Vec<&str> = violations.iter().map(|v| v.field.as_str()).collect();
        Err(invalid_argument(
            format!("invalid request: {}", fields.join(", ")),
            &violations,
        ))
    }
}

/// Where a command stands after the common checks.
enum Begin {
    /// A retry: here is the first answer.
    Replayed(Box<Outcome>),
    /// New: the deal as the caller may see it.
    Fresh(Box<DealRow>),
}

impl CrmApi {
    async fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        self.auth.from_metadata(request.metadata()).await
    }

    async fn begin(
        &self,
        envelope: &Envelope<'_>,
        cmd: &Cmd,
        viewer: &Viewer,
    ) -> Result<Begin, Status> {
        if let Some(outcome) = self
            .commands
            .replay(envelope)
            .await
            .map_err(command_status)?
        {
            return Ok(Begin::Replayed(Box::new(outcome)));
        }
        let deal = self
            .read
            .deal_row(&cmd.deal_id, viewer)
            .await
            .map_err(read_status)?;
        if let Some(expected) = cmd.expected
            && expected != deal.version as u64
        {
            return Err(precondition(
                Code::Aborted,
                "DEAL_VERSION",
                &cmd.deal_id,
                format!(
                    "deal {} is at version {}, not {expected}; reload it and retry",
                    cmd.deal_id, deal.version
                ),
            ));
        }
        Ok(Begin::Fresh(Box::new(deal)))
    }

    async fn finish(
        &self,
        envelope: &Envelope<'_>,
        deal: &DealRow,
        payload: Payload,
    ) -> Result<Outcome, Status> {
        self.commands
            .execute(envelope, &deal.deal_id, deal.version.max(0) as u64, payload)
            .await
            .map_err(command_status)
    }

    async fn result(&self, outcome: &Outcome, viewer: &Viewer) -> Result<CrmCommandResult, Status> {
        let deal = self
            .read
            .deal(&outcome.deal_id, viewer)
            .await
            .map_err(read_status)?;
        Ok(CrmCommandResult {
            event_id: outcome.event_id.clone(),
            deal_version: outcome.deal_version,
            deal: Some(deal),
            replayed: outcome.replayed,
        })
    }
}

/// An id for something a command creates (a note, a vote), fixed with the
/// command's key so a retry names the same thing.
fn child_id(principal: &Principal, key: &str, what: &str) -> String {
    ids::derived_event_id(
        Utc::now(),
        &[
            what.as_bytes(),
            principal.subject.as_bytes(),
            key.as_bytes(),
        ],
    )
    .to_string()
}

macro_rules! command_prelude {
    ($self:ident, $request:ident, $roles:expr, $action:expr, $rpc:expr) => {{
        let principal = $self.principal(&$request).await?;
        require(&principal, $roles, $action)?;
        let correlation_id = correlation_id(&$request);
        let req = $request.into_inner();
        let print = fingerprint($rpc, &req);
        (principal, correlation_id, req, print)
    }};
}

#[tonic::async_trait]
impl CrmService for CrmApi {
    #[tracing::instrument(skip_all)]
    async fn list_deals(
        &self,
        request: Request<ListDealsRequest>,
    ) -> Result<Response<ListDealsResponse>, Status> {
        let principal = self.principal(&request).await?;
        require(&principal, EVERYONE, "list deals")?;
        let req = request.into_inner();
        let mut violations = Vec::new();
        for (i, stage) in req.stages.iter().enumerate() {
            if !self.pipeline.is_stage(stage) {
                violations.push(Violation::new(
                    format!("stages[{i}]"),
                    format!("{stage:?} is not a stage"),
                ));
            }
        }
        for (field, value) in [("min_score", req.min_score), ("max_score", req.max_score)] {
            if let Some(v) = value
                && !(0.0..=100.0).contains(&v)
            {
                violations.push(Violation::new(field, "must be between 0 and 100"));
            }
        }
        if let (Some(min), Some(max)) = (req.min_score, req.max_score)
            && min > max
        {
            violations.push(Violation::new("min_score", "must not exceed max_score"));
        }
        check_text(&mut violations, "query", &req.query, 200);
        if req.page_size > 500 {
            violations.push(Violation::new("page_size", "must be at most 500"));
        }
        reject(violations)?;
        let sort = match CrmDealSort::try_from(req.sort) {
            Ok(CrmDealSort::Score) => CrmDealSort::Score,
            Ok(_) => CrmDealSort::Recent,
            Err(_) => {
                return Err(invalid_argument(
                    "unknown sort",
                    &[Violation::new("sort", "unknown value")],
                ));
            }
        };
        let filter = DealFilter {
            stages: req.stages,
            sector: req.sector,
            min_score: req.min_score,
            max_score: req.max_score,
            owner_id: req.owner_id,
            source: req.source,
            query: req.query,
            include_archived: req.include_archived,
            sort,
            page_size: req.page_size,
            page_token: req.page_token,
        };
        let (deals, next_page_token) = self
            .read
            .list(&filter, &viewer(&principal))
            .await
            .map_err(read_status)?;
        Ok(Response::new(ListDealsResponse {
            deals,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn get_deal(
        &self,
        request: Request<GetDealRequest>,
    ) -> Result<Response<GetDealResponse>, Status> {
        let principal = self.principal(&request).await?;
        require(&principal, EVERYONE, "read deals")?;
        let req = request.into_inner();
        let mut violations = Vec::new();
        check_id(&mut violations, "deal_id", &req.deal_id);
        reject(violations)?;
        let response = self
            .read
            .deal_details(&req.deal_id, &viewer(&principal))
            .await
            .map_err(read_status)?;
        Ok(Response::new(response))
    }

    #[tracing::instrument(skip_all)]
    async fn get_deal_history(
        &self,
        request: Request<GetDealHistoryRequest>,
    ) -> Result<Response<GetDealHistoryResponse>, Status> {
        let principal = self.principal(&request).await?;
        require(&principal, STAFF_READ, "read deal history")?;
        let req = request.into_inner();
        let mut violations = Vec::new();
        check_id(&mut violations, "deal_id", &req.deal_id);
        reject(violations)?;
        let (entries, next_page_token) = self
            .read
            .history(&req.deal_id, req.page_size, &req.page_token)
            .await
            .map_err(read_status)?;
        Ok(Response::new(GetDealHistoryResponse {
            entries,
            next_page_token,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn move_stage(
        &self,
        request: Request<MoveStageRequest>,
    ) -> Result<Response<MoveStageResponse>, Status> {
        let (principal, correlation_id, req, print) =
            command_prelude!(self, request, PARTNERS, "move deal stages", "MoveStage");
        let mut violations = Vec::new();
        let cmd = command_fields(req.command.as_ref(), &mut violations);
        if !self.pipeline.is_stage(&req.to_stage) {
            violations.push(Violation::new(
                "to_stage",
                format!(
                    "{:?} is not a stage; stages: {}",
                    req.to_stage,
                    self.pipeline.stages.join(", ")
                ),
            ));
        }
        check_text(&mut violations, "reason", &req.reason, MAX_TEXT);
        reject(violations)?;
        let viewer = viewer(&principal);
        let envelope = Envelope {
            principal: &principal,
            idempotency_key: &cmd.key,
            fingerprint: print,
            correlation_id,
        };
        let outcome = match self.begin(&envelope, &cmd, &viewer).await? {
            Begin::Replayed(outcome) => *outcome,
            Begin::Fresh(deal) => {
                if !self.pipeline.allows(&deal.stage, &req.to_stage) {
                    return Err(precondition(
                        Code::FailedPrecondition,
                        "STAGE_TRANSITION",
                        &cmd.deal_id,
                        format!(
                            "cannot move a deal from {} to {}; allowed from {}: {}",
                            deal.stage,
                            req.to_stage,
                            deal.stage,
                            self.pipeline.allowed_from(&deal.stage).join(", ")
                        ),
                    ));
                }
                let payload = Payload::StageChanged(StageChanged {
                    from_stage: deal.stage.clone(),
                    to_stage: req.to_stage.clone(),
                    reason: req.reason.clone(),
                });
                self.finish(&envelope, &deal, payload).await?
            }
        };
        Ok(Response::new(MoveStageResponse {
            result: Some(self.result(&outcome, &viewer).await?),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn assign_owner(
        &self,
        request: Request<AssignOwnerRequest>,
    ) -> Result<Response<AssignOwnerResponse>, Status> {
        let (principal, correlation_id, req, print) =
            command_prelude!(self, request, PARTNERS, "assign deal owners", "AssignOwner");
        let mut violations = Vec::new();
        let cmd = command_fields(req.command.as_ref(), &mut violations);
        check_id(&mut violations, "owner_id", &req.owner_id);
        reject(violations)?;
        let viewer = viewer(&principal);
        let envelope = Envelope {
            principal: &principal,
            idempotency_key: &cmd.key,
            fingerprint: print,
            correlation_id,
        };
        let outcome = match self.begin(&envelope, &cmd, &viewer).await? {
            Begin::Replayed(outcome) => *outcome,
            Begin::Fresh(deal) => {
                let payload = Payload::OwnerAssigned(OwnerAssigned {
                    owner_id: req.owner_id.clone(),
                    previous_owner_id: deal.owner_id.clone(),
                });
                self.finish(&envelope, &deal, payload).await?
            }
        };
        Ok(Response::new(AssignOwnerResponse {
            result: Some(self.result(&outcome, &viewer).await?),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn add_note(
        &self,
        request: Request<AddNoteRequest>,
    ) -> Result<Response<AddNoteResponse>, Status> {
        let (principal, correlation_id, req, print) =
            command_prelude!(self, request, NOTE_TAKERS, "add notes", "AddNote");
        let mut violations = Vec::new();
        let cmd = command_fields(req.command.as_ref(), &mut violations);
        if req.body.trim().is_empty() {
            violations.push(Violation::new("body", "is required"));
        }
        check_text(&mut violations, "body", &req.body, self.max_note_chars);
        reject(violations)?;
        let viewer = viewer(&principal);
        let envelope = Envelope {
            principal: &principal,
            idempotency_key: &cmd.key,
            fingerprint: print,
            correlation_id,
        };
        let outcome = match self.begin(&envelope, &cmd, &viewer).await? {
            Begin::Replayed(outcome) => *outcome,
            Begin::Fresh(deal) => {
                let payload = Payload::NoteAdded(NoteAdded {
                    note_id: child_id(&principal, &cmd.key, "crm-note"),
                    body: req.body.clone(),
                });
                self.finish(&envelope, &deal, payload).await?
            }
        };
        let note_id = match &outcome.event.payload {
            Some(Payload::NoteAdded(n)) => n.note_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(AddNoteResponse {
            result: Some(self.result(&outcome, &viewer).await?),
            note_id,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn share_with_lps(
        &self,
        request: Request<ShareWithLpsRequest>,
    ) -> Result<Response<ShareWithLpsResponse>, Status> {
        let (principal, correlation_id, req, print) = command_prelude!(
            self,
            request,
            PARTNERS,
            "share deals with LPs",
            "ShareWithLps"
        );
        let mut violations = Vec::new();
        let cmd = command_fields(req.command.as_ref(), &mut violations);
        if req.lp_ids.is_empty() {
            violations.push(Violation::new("lp_ids", "name at least one LP"));
        }
        for (i, lp) in req.lp_ids.iter().enumerate() {
            check_id(&mut violations, &format!("lp_ids[{i}]"), lp);
        }
        check_text(&mut violations, "message", &req.message, MAX_TEXT);
        reject(violations)?;
        let viewer = viewer(&principal);
        let envelope = Envelope {
            principal: &principal,
            idempotency_key: &cmd.key,
            fingerprint: print,
            correlation_id,
        };
        let outcome = match self.begin(&envelope, &cmd, &viewer).await? {
            Begin::Replayed(outcome) => *outcome,
            Begin::Fresh(deal) => {
                let mut lp_ids = req.lp_ids.clone();
                lp_ids.sort();
                lp_ids.dedup();
                let payload = Payload::DealShared(DealShared {
                    lp_ids,
                    message: req.message.clone(),
                });
                self.finish(&envelope, &deal, payload).await?
            }
        };
        Ok(Response::new(ShareWithLpsResponse {
            result: Some(self.result(&outcome, &viewer).await?),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn open_vote(
        &self,
        request: Request<OpenVoteRequest>,
    ) -> Result<Response<OpenVoteResponse>, Status> {
        let (principal, correlation_id, req, print) =
            command_prelude!(self, request, PARTNERS, "open votes", "OpenVote");
        let mut violations = Vec::new();
        let cmd = command_fields(req.command.as_ref(), &mut violations);
        if req.question.trim().is_empty() {
            violations.push(Violation::new("question", "is required"));
        }
        check_text(&mut violations, "question", &req.question, MAX_TEXT);
        match req.deadline.as_ref().and_then(envelope::from_timestamp) {
            None => violations.push(Violation::new("deadline", "is required")),
            Some(deadline) if deadline <= Utc::now() => {
                violations.push(Violation::new("deadline", "must be in the future"))
            }
            Some(_) => {}
        }
        if req.eligible_lp_ids.is_empty() {
            violations.push(Violation::new("eligible_lp_ids", "name at least one LP"));
        }
        for (i, lp) in req.eligible_lp_ids.iter().enumerate() {
            check_id(&mut violations, &format!("eligible_lp_ids[{i}]"), lp);
        }
        let rule = match VoteRule::try_from(req.rule) {
            Ok(VoteRule::Unspecified) => VoteRule::SimpleMajority,
            Ok(rule) => rule,
            Err(_) => {
                violations.push(Violation::new("rule", "unknown value"));
                VoteRule::SimpleMajority
            }
        };
        let mut eligible = req.eligible_lp_ids.clone();
        eligible.sort();
        eligible.dedup();
        if rule == VoteRule::Quorum && (req.quorum == 0 || req.quorum as usize > eligible.len()) {
            violations.push(Violation::new(
                "quorum",
                "must be between 1 and the number of eligible LPs",
            ));
        }
        reject(violations)?;
        let viewer = viewer(&principal);
        let envelope = Envelope {
            principal: &principal,
            idempotency_key: &cmd.key,
            fingerprint: print,
            correlation_id,
        };
        let outcome = match self.begin(&envelope, &cmd, &viewer).await? {
            Begin::Replayed(outcome) => *outcome,
            Begin::Fresh(deal) => {
                let shared: Vec<String> = sqlx::query_scalar(
                    "SELECT lp_id FROM deal_shares WHERE deal_id = $1 AND lp_id = ANY($2)",
                )
                .bind(&deal.deal_id)
                .bind(&eligible)
                .fetch_all(self.read.pool())
                .await
                .map_err(|e| read_status(e.into()))?;
                let missing: Vec<&String> =
                    eligible.iter().filter(|lp| !shared.contains(lp)).collect();
                if !missing.is_empty() {
                    return Err(precondition(
                        Code::FailedPrecondition,
                        "NOT_SHARED",
                        &deal.deal_id,
                        format!("the deal is not shared with {missing:?}; share it first"),
                    ));
                }
                let payload = Payload::VoteOpened(VoteOpened {
                    vote_id: child_id(&principal, &cmd.key, "crm-vote"),
                    question: req.question.clone(),
                    deadline: req.deadline,
                    eligible_lp_ids: eligible.clone(),
                    rule: rule as i32,
                    quorum: if rule == VoteRule::Quorum {
                        req.quorum
                    } else {
                        0
                    },
                });
                self.finish(&envelope, &deal, payload).await?
            }
        };
        let vote_id = match &outcome.event.payload {
            Some(Payload::VoteOpened(v)) => v.vote_id.clone(),
            _ => String::new(),
        };
        Ok(Response::new(OpenVoteResponse {
            result: Some(self.result(&outcome, &viewer).await?),
            vote_id,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn cast_vote(
        &self,
        request: Request<CastVoteRequest>,
    ) -> Result<Response<CastVoteResponse>, Status> {
        let (principal, correlation_id, req, print) =
            command_prelude!(self, request, LPS, "cast votes", "CastVote");
        let mut violations = Vec::new();
        let cmd = command_fields(req.command.as_ref(), &mut violations);
        check_id(&mut violations, "vote_id", &req.vote_id);
        match Ballot::try_from(req.ballot) {
            Ok(Ballot::Unspecified) | Err(_) => violations.push(Violation::new(
                "ballot",
                "must be BALLOT_YES, BALLOT_NO or BALLOT_ABSTAIN",
            )),
            Ok(_) => {}
        }
        check_text(&mut violations, "comment", &req.comment, MAX_TEXT);
        reject(violations)?;
        let viewer = viewer(&principal);
        let lp_id = viewer.lp_id().unwrap_or_default().to_owned();
        let envelope = Envelope {
            principal: &principal,
            idempotency_key: &cmd.key,
            fingerprint: print,
            correlation_id,
        };
        let outcome = match self.begin(&envelope, &cmd, &viewer).await? {
            Begin::Replayed(outcome) => *outcome,
            Begin::Fresh(deal) => {
                let vote = self
                    .read
                    .votes(&deal.deal_id, Some(&req.vote_id), &viewer)
                    .await
                    .map_err(read_status)?
                    .pop()
                    .ok_or_else(|| Status::not_found(format!("vote {} not found", req.vote_id)))?;
                if vote.status != CrmVoteStatus::Open as i32 {
                    return Err(precondition(
                        Code::FailedPrecondition,
                        "VOTE_CLOSED",
                        &req.vote_id,
                        format!("vote {} is closed", req.vote_id),
                    ));
                }
                if vote
                    .deadline
                    .as_ref()
                    .and_then(envelope::from_timestamp)
                    .is_some_and(|d| d <= Utc::now())
                {
                    return Err(precondition(
                        Code::FailedPrecondition,
                        "VOTE_CLOSED",
                        &req.vote_id,
                        format!("vote {} passed its deadline", req.vote_id),
                    ));
                }
                let payload = Payload::VoteCast(VoteCast {
                    vote_id: req.vote_id.clone(),
                    lp_id: lp_id.clone(),
                    ballot: req.ballot,
                    comment: req.comment.clone(),
                });
                self.finish(&envelope, &deal, payload).await?
            }
        };
        Ok(Response::new(CastVoteResponse {
            result: Some(self.result(&outcome, &viewer).await?),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn close_vote(
        &self,
        request: Request<CloseVoteRequest>,
    ) -> Result<Response<CloseVoteResponse>, Status> {
        let (principal, correlation_id, req, print) =
            command_prelude!(self, request, PARTNERS, "close votes", "CloseVote");
        let mut violations = Vec::new();
        let cmd = command_fields(req.command.as_ref(), &mut violations);
        check_id(&mut violations, "vote_id", &req.vote_id);
        reject(violations)?;
        let viewer = viewer(&principal);
        let envelope = Envelope {
            principal: &principal,
            idempotency_key: &cmd.key,
            fingerprint: print,
            correlation_id,
        };
        let vote_id = req.vote_id.clone();
        let outcome = match self.begin(&envelope, &cmd, &viewer).await? {
            Begin::Replayed(outcome) => *outcome,
            Begin::Fresh(deal) => {
                let vote = self
                    .read
                    .votes(&deal.deal_id, Some(&vote_id), &viewer)
                    .await
                    .map_err(read_status)?
                    .pop()
                    .ok_or_else(|| Status::not_found(format!("vote {vote_id} not found")))?;
                if vote.status != CrmVoteStatus::Open as i32 {
                    return Err(precondition(
                        Code::FailedPrecondition,
                        "VOTE_CLOSED",
                        &vote_id,
                        format!("vote {vote_id} is already closed"),
                    ));
                }
                let tally = vote.tally.unwrap_or_default();
                let rule = VoteRule::try_from(vote.rule).unwrap_or(VoteRule::SimpleMajority);
                let payload = Payload::VoteClosed(VoteClosed {
                    vote_id: vote_id.clone(),
                    result: crate::projection::result(rule, vote.quorum, &tally) as i32,
                    tally: Some(tally),
                    reason: VoteCloseReason::ClosedByPartner as i32,
                });
                self.finish(&envelope, &deal, payload).await?
            }
        };
        let vote = self
            .read
            .votes(&outcome.deal_id, Some(&vote_id), &viewer)
            .await
            .map_err(read_status)?
            .pop();
        Ok(Response::new(CloseVoteResponse {
            result: Some(self.result(&outcome, &viewer).await?),
            vote,
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn merge_deals(
        &self,
        request: Request<MergeDealsRequest>,
    ) -> Result<Response<MergeDealsResponse>, Status> {
        let (principal, correlation_id, req, print) =
            command_prelude!(self, request, PARTNERS, "merge deals", "MergeDeals");
        let mut violations = Vec::new();
        let cmd = command_fields(req.command.as_ref(), &mut violations);
        if req.merged_deal_ids.is_empty() {
            violations.push(Violation::new("merged_deal_ids", "name at least one deal"));
        }
        for (i, id) in req.merged_deal_ids.iter().enumerate() {
            check_id(&mut violations, &format!("merged_deal_ids[{i}]"), id);
            if *id == cmd.deal_id {
                violations.push(Violation::new(
                    format!("merged_deal_ids[{i}]"),
                    "a deal cannot be merged into itself",
                ));
            }
        }
        check_text(&mut violations, "reason", &req.reason, MAX_TEXT);
        reject(violations)?;
        let viewer = viewer(&principal);
        let envelope = Envelope {
            principal: &principal,
            idempotency_key: &cmd.key,
            fingerprint: print,
            correlation_id,
        };
        let outcome = match self.begin(&envelope, &cmd, &viewer).await? {
            Begin::Replayed(outcome) => *outcome,
            Begin::Fresh(deal) => {
                for id in &req.merged_deal_ids {
                    let other = self.read.deal_row(id, &viewer).await.map_err(read_status)?;
                    if let Some(into) = &other.merged_into {
                        return Err(precondition(
                            Code::FailedPrecondition,
                            "ALREADY_MERGED",
                            id,
                            format!("deal {id} is already merged into {into}"),
                        ));
                    }
                }
                let mut merged = req.merged_deal_ids.clone();
                merged.sort();
                merged.dedup();
                let payload = Payload::DealsMerged(DealsMerged {
                    merged_deal_ids: merged,
                    reason: req.reason.clone(),
                });
                self.finish(&envelope, &deal, payload).await?
            }
        };
        Ok(Response::new(MergeDealsResponse {
            result: Some(self.result(&outcome, &viewer).await?),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn unmerge_deals(
        &self,
        request: Request<UnmergeDealsRequest>,
    ) -> Result<Response<UnmergeDealsResponse>, Status> {
        let (principal, correlation_id, req, print) =
            command_prelude!(self, request, PARTNERS, "unmerge deals", "UnmergeDeals");
        let mut violations = Vec::new();
        let cmd = command_fields(req.command.as_ref(), &mut violations);
        check_id(&mut violations, "merge_event_id", &req.merge_event_id);
        check_text(&mut violations, "reason", &req.reason, MAX_TEXT);
        reject(violations)?;
        let viewer = viewer(&principal);
        let envelope = Envelope {
            principal: &principal,
            idempotency_key: &cmd.key,
            fingerprint: print,
            correlation_id,
        };
        let outcome = match self.begin(&envelope, &cmd, &viewer).await? {
            Begin::Replayed(outcome) => *outcome,
            Begin::Fresh(deal) => {
                let merge: Option<Vec<u8>> = sqlx::query_scalar(
                    "SELECT envelope FROM events WHERE event_id = $1 AND deal_id = $2
                       AND event_type = 'DealsMerged' AND status = 'applied'",
                )
                .bind(&req.merge_event_id)
                .bind(&deal.deal_id)
                .fetch_optional(self.read.pool())
                .await
                .map_err(|e| read_status(e.into()))?;
                let merged = merge
                    .and_then(|bytes| dealmesh_proto::DealEvent::decode(bytes.as_slice()).ok())
                    .and_then(|event| match event.payload {
                        Some(Payload::DealsMerged(m)) => Some(m.merged_deal_ids),
                        _ => None,
                    })
                    .ok_or_else(|| {
                        Status::not_found(format!(
                            "no merge {} on deal {}",
                            req.merge_event_id, deal.deal_id
                        ))
                    })?;
                let payload = Payload::DealsUnmerged(DealsUnmerged {
                    unmerged_deal_ids: merged,
                    merge_event_id: req.merge_event_id.clone(),
                    reason: req.reason.clone(),
                });
                self.finish(&envelope, &deal, payload).await?
            }
        };
        Ok(Response::new(UnmergeDealsResponse {
            result: Some(self.result(&outcome, &viewer).await?),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn archive_deal(
        &self,
        request: Request<ArchiveDealRequest>,
    ) -> Result<Response<ArchiveDealResponse>, Status> {
        let (principal, correlation_id, req, print) =
            command_prelude!(self, request, PARTNERS, "archive deals", "ArchiveDeal");
        let mut violations = Vec::new();
        let cmd = command_fields(req.command.as_ref(), &mut violations);
        check_text(&mut violations, "reason", &req.reason, MAX_TEXT);
        reject(violations)?;
        let viewer = viewer(&principal);
        let envelope = Envelope {
            principal: &principal,
            idempotency_key: &cmd.key,
            fingerprint: print,
            correlation_id,
        };
        let outcome = match self.begin(&envelope, &cmd, &viewer).await? {
            Begin::Replayed(outcome) => *outcome,
            Begin::Fresh(deal) => {
                if deal.archived {
                    return Err(precondition(
                        Code::FailedPrecondition,
                        "ARCHIVED",
                        &deal.deal_id,
                        format!("deal {} is already archived", deal.deal_id),
                    ));
                }
                let payload = Payload::DealArchived(DealArchived {
                    reason: req.reason.clone(),
                });
                self.finish(&envelope, &deal, payload).await?
            }
        };
        Ok(Response::new(ArchiveDealResponse {
            result: Some(self.result(&outcome, &viewer).await?),
        }))
    }
}
