//! Applying one event to the read model: the same code for the live
//! projector and for a replay, and deterministic (every time comes from the
//! event, nothing from the clock), so two replays of one log give the same
//! tables.
//!
//! A deal's version is the number of events applied to it. An event with
//! `expected_version` (a command) is applied only if the deal is still at
//! that version and its state allows it; otherwise it is recorded as
//! rejected and changes nothing else. The decision is kept in `events`,
//! where commands wait for it.

use chrono::{DateTime, SecondsFormat, Utc};
use dealmesh_eventlog::envelope;
use dealmesh_proto::v1::{self, VoteCloseReason, VoteResult, VoteRule};
use dealmesh_proto::{DealEvent, Payload};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};

use sqlx::PgConnection;

use crate::copy::{self, BinaryRows};

/// Where a record sits on the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Position {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// How the projector decided an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Applied {
        version: i64,
    },
    /// A command that lost; `code` is `aborted` or `failed_precondition`.
    Rejected {
        code: &'static str,
        reason: String,
    },
    /// Nothing to do: its effect was already there.
    Ignored {
        reason: String,
    },
    /// A payload type this build does not know.
    Skipped,
    /// This event id was applied before.
    Duplicate,
}

impl Decision {
    fn status(&self) -> &'static str {
        match self {
            Decision::Applied { .. } => "applied",
            Decision::Rejected { .. } => "rejected",
            Decision::Ignored { .. } => "ignored",
            Decision::Skipped => "skipped",
            Decision::Duplicate => "duplicate",
        }
    }
}

pub const ABORTED: &str = "aborted";
pub const FAILED_PRECONDITION: &str = "failed_precondition";

struct Refusal {
    code: &'static str,
    reason: String,
}

fn refuse(reason: impl Into<String>) -> Refusal {
    Refusal {
        code: FAILED_PRECONDITION,
        reason: reason.into(),
    }
}

/// A deal's state as a batch sees it: read once, locked, kept in memory
/// while the batch applies events, written back once at the end.
#[derive(Debug, Clone)]
struct DealState {
    version: i64,
    stage: String,
    updated_at: DateTime<Utc>,
    last_event_id: String,
    dirty: bool,
    /// The row is not in `deals` yet: it is inserted when the batch writes.
    new: bool,
    patch: DealPatch,
}

impl DealState {
    fn new_row(stage: String, updated_at: DateTime<Utc>, last_event_id: String) -> Self {
        Self {
            version: 0,
            stage,
            updated_at,
            last_event_id,
            dirty: true,
            new: true,
            patch: DealPatch::default(),
        }
    }
}

/// The columns the batch's events set on one deal, merged in event order
/// (the last event to set a column wins, as if written one by one) and
/// written once; `None` leaves the column as it is.
#[derive(Debug, Clone, Default)]
struct DealPatch {
    name: Option<String>,
    website: Option<String>,
    github_owner: Option<String>,
    github_repo: Option<String>,
    description: Option<String>,
    company_key: Option<String>,
    /// The first time the deal was sourced; kept only if the row has none.
    sourced_at: Option<DateTime<Utc>>,
    owner_id: Option<String>,
    score: Option<f64>,
    score_model_version: Option<String>,
    score_detail: Option<Vec<u8>>,
    score_event_id: Option<String>,
    sector: Option<String>,
    summary: Option<String>,
    business_model: Option<String>,
    risks: Option<Vec<String>>,
    enrichment: Option<Vec<u8>>,
    enrichment_error: Option<String>,
    /// Set when the deal was archived, with the reason.
    archived_reason: Option<String>,
}

/// A `deal_sources` row: the last event to see a source wins.
type Sources = BTreeMap<(String, String, String), (String, Option<DateTime<Utc>>, String)>;

/// A `stage_history` row.
struct StageRow {
    event_id: String,
    deal_id: String,
    from_stage: String,
    to_stage: String,
    reason: String,
    actor_id: String,
    actor_role: i32,
    changed_at: Option<DateTime<Utc>>,
}

/// A `notes` row.
struct NoteRow {
    note_id: String,
    deal_id: String,
    body: String,
    author_id: String,
    author_role: i32,
    event_id: String,
    created_at: Option<DateTime<Utc>>,
}

#[derive(sqlx::FromRow)]
struct VoteState {
    deal_id: String,
    status: String,
    deadline: DateTime<Utc>,
    eligible_lp_ids: Vec<String>,
    rule: i32,
    quorum: i32,
}

/// One `events` row, written with the rest of the batch.
struct EventRow {
    event_id: String,
    deal_id: String,
    event_type: &'static str,
    occurred_at: Option<DateTime<Utc>>,
    actor_id: String,
    actor_role: i32,
    correlation_id: String,
    causation_id: String,
    idempotency_key: String,
    expected_version: Option<i64>,
    position: Position,
    envelope: Vec<u8>,
    status: &'static str,
    reject_code: Option<&'static str>,
    reason: String,
    deal_version: i64,
}

/// Applies a batch of events inside the caller's transaction. The dedup
/// lookup and the deal lock are one read per batch; the deals' columns, their
/// sources, stage history, notes, provenance and the `events` rows are kept
/// in memory while the batch applies (later events decide on the state the
/// earlier ones left) and written at the end: the deals in one statement,
/// sources, stage history, notes and provenance in another, and the `events`
/// rows by binary `COPY`. Votes, shares and merges, which read what they
/// write, still go to the database per event.
pub struct Batch {
    initial_stage: String,
    /// Event ids already in `events`, or earlier in this batch.
    seen: HashSet<String>,
    deals: HashMap<String, DealState>,
    rows: Vec<EventRow>,
    provenance: Provenance,
    sources: Sources,
    stages: Vec<StageRow>,
    notes: Vec<NoteRow>,
    /// Note ids in `notes` order, so the first note with an id wins.
    note_ids: HashSet<String>,
}

impl Batch {
    /// Reads what the batch needs about `events` and locks their deals.
    pub async fn begin(
        conn: &mut PgConnection,
        events: &[&DealEvent],
        initial_stage: &str,
    ) -> Result<Self, sqlx::Error> {
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        let seen: HashSet<String> =
            sqlx::query_scalar("SELECT event_id FROM events WHERE event_id = ANY($1)")
                .bind(&ids)
                .fetch_all(&mut *conn)
                .await?
                .into_iter()
                .collect();
        let mut deal_ids: Vec<&str> = events.iter().map(|e| e.deal_id.as_str()).collect();
        deal_ids.sort_unstable();
        deal_ids.dedup();
        // Locked in id order, so two projectors cannot deadlock.
        let deals = sqlx::query_as::<_, (String, i64, String, DateTime<Utc>, String)>(
            "SELECT deal_id, version, stage, updated_at, last_event_id FROM deals
             WHERE deal_id = ANY($1) ORDER BY deal_id FOR UPDATE",
        )
        .bind(&deal_ids)
        .fetch_all(&mut *conn)
        .await?
        .into_iter()
        .map(|(id, version, stage, updated_at, last_event_id)| {
            (
                id,
                DealState {
                    version,
                    stage,
                    updated_at,
                    last_event_id,
                    dirty: false,
                    new: false,
                    patch: DealPatch::default(),
                },
            )
        })
        .collect();
        Ok(Self {
            initial_stage: initial_stage.to_owned(),
            seen,
            deals,
            rows: Vec::with_capacity(events.len()),
            provenance: Provenance::new(),
            sources: Sources::new(),
            stages: Vec::new(),
            notes: Vec::new(),
            note_ids: HashSet::new(),
        })
    }

    /// Applies `event` (whose encoding is `bytes`) read at `position`. The
    /// event must have been passed to [`Batch::begin`].
    pub async fn apply(
        &mut self,
        conn: &mut PgConnection,
        event: &DealEvent,
        bytes: &[u8],
        position: &Position,
    ) -> Result<Decision, sqlx::Error> {
        if !self.seen.insert(event.event_id.clone()) {
            return Ok(Decision::Duplicate);
        }
        let at = event
            .occurred_at
            .as_ref()
            .and_then(envelope::from_timestamp);
        let decision = match &event.payload {
            None => {
                tracing::warn!(event_id = %event.event_id, "event of an unknown type kept, not applied");
                Decision::Skipped
            }
            Some(payload) => self.decide_and_apply(conn, event, payload, at).await?,
        };
        let (code, reason) = match &decision {
            Decision::Rejected { code, reason } => (Some(*code), reason.clone()),
            Decision::Ignored { reason } => (None, reason.clone()),
            _ => (None, String::new()),
        };
        let actor = event.actor.clone().unwrap_or_default();
        self.rows.push(EventRow {
            event_id: event.event_id.clone(),
            deal_id: event.deal_id.clone(),
            event_type: envelope::type_name(event),
            occurred_at: at,
            actor_id: actor.id,
            actor_role: actor.role,
            correlation_id: event.correlation_id.clone(),
            causation_id: event.causation_id.clone(),
            idempotency_key: event.idempotency_key.clone(),
            expected_version: event.expected_version.map(|v| v as i64),
            position: position.clone(),
            envelope: bytes.to_vec(),
            status: decision.status(),
            reject_code: code,
            reason,
            deal_version: self.deals.get(&event.deal_id).map_or(0, |d| d.version),
        });
        Ok(decision)
    }

    /// Writes what the batch kept in memory: the deals, their sources, stage
    /// history, notes and provenance, and the `events` rows.
    pub async fn finish(mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        self.write_deals(conn).await?;
        self.write_children(conn).await?;
        if self.rows.is_empty() {
            return Ok(());
        }
        // Appended with COPY: the rows are new (`seen` holds every event id
        // already in the table, and this batch's own repeats were dropped
        // as duplicates). Another projector racing on the same event id
        // fails this transaction on the primary key, and the retry finds it.
        // The envelope, plus ids, times and the field headers of a row.
        let size = self.rows.iter().map(|e| e.envelope.len() + 320).sum();
        let mut rows = BinaryRows::with_capacity(18, size);
        for e in &self.rows {
            rows.row()
                .text(&e.event_id)
                .text(&e.deal_id)
                .text(e.event_type)
                .timestamptz(e.occurred_at)
                .text(&e.actor_id)
                .int4(e.actor_role)
                .text(&e.correlation_id)
                .text(&e.causation_id)
                .text(&e.idempotency_key)
                .opt_int8(e.expected_version)
                .text(&e.position.topic)
                .int4(e.position.partition)
                .int8(e.position.offset)
                .bytea(&e.envelope)
                .text(e.status)
                .opt_text(e.reject_code)
                .text(&e.reason)
                .int8(e.deal_version);
        }
        copy::copy_in(
            conn,
            "COPY events (event_id, deal_id, event_type, occurred_at, actor_id, actor_role,
                 correlation_id, causation_id, idempotency_key, expected_version, kafka_topic,
                 kafka_partition, kafka_offset, envelope, status, reject_code, reason, deal_version)
             FROM STDIN (FORMAT binary)",
            rows,
        )
        .await?;
        Ok(())
    }

    /// Writes the deals the batch changed: one statement inserting the new
    /// rows and updating the others, each deal once.
    async fn write_deals(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        let mut dirty: Vec<(&String, &DealState)> =
            self.deals.iter().filter(|(_, d)| d.dirty).collect();
        if dirty.is_empty() {
            return Ok(());
        }
        // In id order, like the lock, so two projectors cannot deadlock.
        dirty.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let risks = dirty
            .iter()
            .map(|(_, d)| {
                d.patch
                    .risks
                    .as_ref()
                    .map(|r| serde_json::json!(r).to_string())
            })
            .collect::<Vec<_>>();
        macro_rules! column {
            ($field:ident) => {
                dirty
                    .iter()
                    .map(|(_, d)| d.patch.$field.as_deref())
                    .collect::<Vec<_>>()
            };
        }
        sqlx::query(
            "WITH u AS (
                 SELECT * FROM UNNEST($1::text[], $2::bool[], $3::bigint[], $4::text[],
                     $5::timestamptz[], $6::text[], $7::text[], $8::text[], $9::text[],
                     $10::text[], $11::text[], $12::text[], $13::timestamptz[], $14::text[],
                     $15::float8[], $16::text[], $17::bytea[], $18::text[], $19::text[],
                     $20::text[], $21::text[], $22::text[], $23::bytea[], $24::text[],
                     $25::text[])
                 AS u(deal_id, is_new, version, stage, updated_at, last_event_id, name, website,
                     github_owner, github_repo, description, company_key, sourced_at, owner_id,
                     score, score_model_version, score_detail, score_event_id, sector, summary,
                     business_model, risks, enrichment, enrichment_error, archived_reason)
             ), inserted AS (
                 INSERT INTO deals (deal_id, version, stage, updated_at, last_event_id, name,
                     website, github_owner, github_repo, description, company_key, sourced_at,
                     owner_id, score, score_model_version, score_detail, score_event_id, sector,
                     summary, business_model, risks, enrichment, enrichment_error, archived,
                     archived_reason)
                 SELECT deal_id, version, stage, updated_at, last_event_id, coalesce(name, ''),
                     coalesce(website, ''), coalesce(github_owner, ''),
                     coalesce(github_repo, ''), coalesce(description, ''),
                     coalesce(company_key, ''), sourced_at, coalesce(owner_id, ''), score,
                     coalesce(score_model_version, ''), score_detail,
                     coalesce(score_event_id, ''), coalesce(sector, ''), coalesce(summary, ''),
                     coalesce(business_model, ''),
                     CASE WHEN risks IS NULL THEN '{}'::text[] ELSE ARRAY(
                         SELECT r FROM jsonb_array_elements_text(risks::jsonb)
                             WITH ORDINALITY AS t(r, i) ORDER BY i) END,
                     enrichment, coalesce(enrichment_error, ''), archived_reason IS NOT NULL,
                     coalesce(archived_reason, '')
                 FROM u WHERE is_new
             )
             UPDATE deals d SET version = u.version, stage = u.stage,
                 updated_at = u.updated_at, last_event_id = u.last_event_id,
                 name = coalesce(u.name, d.name), website = coalesce(u.website, d.website),
                 github_owner = coalesce(u.github_owner, d.github_owner),
                 github_repo = coalesce(u.github_repo, d.github_repo),
                 description = coalesce(u.description, d.description),
                 company_key = coalesce(u.company_key, d.company_key),
                 sourced_at = coalesce(d.sourced_at, u.sourced_at),
                 owner_id = coalesce(u.owner_id, d.owner_id),
                 score = CASE WHEN u.score_event_id IS NULL THEN d.score ELSE u.score END,
                 score_model_version = coalesce(u.score_model_version, d.score_model_version),
                 score_detail = coalesce(u.score_detail, d.score_detail),
                 score_event_id = coalesce(u.score_event_id, d.score_event_id),
                 sector = coalesce(u.sector, d.sector), summary = coalesce(u.summary, d.summary),
                 business_model = coalesce(u.business_model, d.business_model),
                 risks = CASE WHEN u.risks IS NULL THEN d.risks ELSE ARRAY(
                     SELECT r FROM jsonb_array_elements_text(u.risks::jsonb)
                         WITH ORDINALITY AS t(r, i) ORDER BY i) END,
                 enrichment = coalesce(u.enrichment, d.enrichment),
                 enrichment_error = coalesce(u.enrichment_error, d.enrichment_error),
                 archived = d.archived OR u.archived_reason IS NOT NULL,
                 archived_reason = coalesce(u.archived_reason, d.archived_reason)
             FROM u WHERE d.deal_id = u.deal_id AND NOT u.is_new",
        )
        .bind(dirty.iter().map(|(id, _)| id.as_str()).collect::<Vec<_>>())
        .bind(dirty.iter().map(|(_, d)| d.new).collect::<Vec<_>>())
        .bind(dirty.iter().map(|(_, d)| d.version).collect::<Vec<_>>())
        .bind(
            dirty
                .iter()
                .map(|(_, d)| d.stage.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(dirty.iter().map(|(_, d)| d.updated_at).collect::<Vec<_>>())
        .bind(
            dirty
                .iter()
                .map(|(_, d)| d.last_event_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(column!(name))
        .bind(column!(website))
        .bind(column!(github_owner))
        .bind(column!(github_repo))
        .bind(column!(description))
        .bind(column!(company_key))
        .bind(
            dirty
                .iter()
                .map(|(_, d)| d.patch.sourced_at)
                .collect::<Vec<_>>(),
        )
        .bind(column!(owner_id))
        .bind(dirty.iter().map(|(_, d)| d.patch.score).collect::<Vec<_>>())
        .bind(column!(score_model_version))
        .bind(column!(score_detail))
        .bind(column!(score_event_id))
        .bind(column!(sector))
        .bind(column!(summary))
        .bind(column!(business_model))
        .bind(risks)
        .bind(column!(enrichment))
        .bind(column!(enrichment_error))
        .bind(column!(archived_reason))
        .execute(&mut *conn)
        .await?;
        for deal in self.deals.values_mut().filter(|d| d.dirty) {
            deal.dirty = false;
            deal.new = false;
            deal.patch = DealPatch::default();
        }
        Ok(())
    }

    /// Writes the batch's deal sources, stage history, notes and
    /// provenance: one statement (a round trip, not four), each table's
    /// rows unnested from arrays; a table with no rows gets empty arrays.
    async fn write_children(&mut self, conn: &mut PgConnection) -> Result<(), sqlx::Error> {
        if self.sources.is_empty()
            && self.stages.is_empty()
            && self.notes.is_empty()
            && self.provenance.is_empty()
        {
            return Ok(());
        }
        // Provenance: one JSON object per deal, merged into the stored one,
        // where a field set here replaces it.
        let prov_deals: Vec<&str> = self.provenance.keys().map(String::as_str).collect();
        let prov_fields: Vec<String> = self
            .provenance
            .values()
            .map(|fields| {
                let mut object = Vec::with_capacity(fields.values().map(|f| f.len() + 24).sum());
                object.push(b'{');
                for (i, (field, entry)) in fields.iter().enumerate() {
                    if i > 0 {
                        object.push(b',');
                    }
                    json_string(&mut object, field);
                    object.push(b':');
                    object.extend_from_slice(entry);
                }
                object.push(b'}');
                // Built from JSON strings and ASCII punctuation only.
                String::from_utf8(object).unwrap_or_default()
            })
            .collect();
        let (s, h, n) = (&self.sources, &self.stages, &self.notes);
        sqlx::query(
            "WITH sources AS (
                 INSERT INTO deal_sources (deal_id, source, external_id, source_url, seen_at,
                     event_id)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[],
                     $5::timestamptz[], $6::text[])
                 ON CONFLICT (deal_id, source, external_id) DO UPDATE SET
                     source_url = excluded.source_url, seen_at = excluded.seen_at,
                     event_id = excluded.event_id
             ), stages AS (
                 INSERT INTO stage_history (event_id, deal_id, from_stage, to_stage, reason,
                     actor_id, actor_role, changed_at)
                 SELECT * FROM UNNEST($7::text[], $8::text[], $9::text[], $10::text[],
                     $11::text[], $12::text[], $13::int[], $14::timestamptz[])
                 ON CONFLICT DO NOTHING
             ), notes AS (
                 INSERT INTO notes (note_id, deal_id, body, author_id, author_role, event_id,
                     created_at)
                 SELECT * FROM UNNEST($15::text[], $16::text[], $17::text[], $18::text[],
                     $19::int[], $20::text[], $21::timestamptz[])
                 ON CONFLICT (note_id) DO NOTHING
             )
             INSERT INTO deal_provenance (deal_id, fields)
             SELECT d, f::jsonb FROM UNNEST($22::text[], $23::text[]) AS t(d, f)
             ON CONFLICT (deal_id) DO UPDATE
                 SET fields = deal_provenance.fields || excluded.fields",
        )
        .bind(s.keys().map(|k| k.0.as_str()).collect::<Vec<_>>())
        .bind(s.keys().map(|k| k.1.as_str()).collect::<Vec<_>>())
        .bind(s.keys().map(|k| k.2.as_str()).collect::<Vec<_>>())
        .bind(s.values().map(|v| v.0.as_str()).collect::<Vec<_>>())
        .bind(s.values().map(|v| v.1).collect::<Vec<_>>())
        .bind(s.values().map(|v| v.2.as_str()).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.deal_id.as_str()).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.from_stage.as_str()).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.to_stage.as_str()).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.actor_id.as_str()).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.actor_role).collect::<Vec<_>>())
        .bind(h.iter().map(|r| r.changed_at).collect::<Vec<_>>())
        .bind(n.iter().map(|r| r.note_id.as_str()).collect::<Vec<_>>())
        .bind(n.iter().map(|r| r.deal_id.as_str()).collect::<Vec<_>>())
        .bind(n.iter().map(|r| r.body.as_str()).collect::<Vec<_>>())
        .bind(n.iter().map(|r| r.author_id.as_str()).collect::<Vec<_>>())
        .bind(n.iter().map(|r| r.author_role).collect::<Vec<_>>())
        .bind(n.iter().map(|r| r.event_id.as_str()).collect::<Vec<_>>())
        .bind(n.iter().map(|r| r.created_at).collect::<Vec<_>>())
        .bind(&prov_deals)
        .bind(&prov_fields)
        .execute(&mut *conn)
        .await?;
        self.sources.clear();
        self.stages.clear();
        self.notes.clear();
        self.provenance.clear();
        Ok(())
    }

    async fn decide_and_apply(
        &mut self,
        conn: &mut PgConnection,
        event: &DealEvent,
        payload: &Payload,
        at: Option<DateTime<Utc>>,
    ) -> Result<Decision, sqlx::Error> {
        let deal_id = event.deal_id.as_str();
        let deal = self.deals.get(deal_id);
        let is_command = event.expected_version.is_some();
        if let Some(expected) = event.expected_version {
            match deal {
                None => {
                    return Ok(Decision::Rejected {
                        code: FAILED_PRECONDITION,
                        reason: format!("deal {deal_id} does not exist"),
                    });
                }
                Some(d) if d.version as u64 != expected => {
                    return Ok(Decision::Rejected {
                        code: ABORTED,
                        reason: format!(
                            "deal {deal_id} is at version {}, the command expected version {expected}",
                            d.version
                        ),
                    });
                }
                Some(_) => {}
            }
        }
        if let Err(refusal) = check(conn, event, deal, payload, at).await? {
            return Ok(if is_command {
                Decision::Rejected {
                    code: refusal.code,
                    reason: refusal.reason,
                }
            } else {
                Decision::Ignored {
                    reason: refusal.reason,
                }
            });
        }
        let updated_at = at.unwrap_or(DateTime::UNIX_EPOCH);
        if !self.deals.contains_key(deal_id) {
            // An event for a deal the log has not sourced (yet) still lands,
            // on a bare deal row, so nothing the log says is lost.
            self.deals.insert(
                deal_id.to_owned(),
                DealState::new_row(
                    self.initial_stage.clone(),
                    updated_at,
                    event.event_id.clone(),
                ),
            );
        }
        self.effects(conn, event, payload, at).await?;
        let state = self
            .deals
            .get_mut(deal_id)
            .ok_or_else(|| sqlx::Error::Protocol("deal state vanished".into()))?;
        state.version += 1;
        state.updated_at = updated_at;
        state.last_event_id = event.event_id.clone();
        state.dirty = true;
        if let Payload::StageChanged(s) = payload {
            state.stage = s.to_stage.clone();
        }
        Ok(Decision::Applied {
            version: state.version,
        })
    }
}

/// Applies one event inside the caller's transaction: a batch of one.
pub async fn apply(
    conn: &mut PgConnection,
    event: &DealEvent,
    bytes: &[u8],
    position: &Position,
    initial_stage: &str,
) -> Result<Decision, sqlx::Error> {
    let mut batch = Batch::begin(conn, &[event], initial_stage).await?;
    let decision = batch.apply(conn, event, bytes, position).await?;
    batch.finish(conn).await?;
    Ok(decision)
}

/// What the deal's state forbids, whoever sent the event.
async fn check(
    conn: &mut PgConnection,
    event: &DealEvent,
    deal: Option<&DealState>,
    payload: &Payload,
    at: Option<DateTime<Utc>>,
) -> Result<Result<(), Refusal>, sqlx::Error> {
    let deal_id = event.deal_id.as_str();
    Ok(match payload {
        Payload::StageChanged(s) => match deal {
            Some(d) if d.stage != s.from_stage => Err(refuse(format!(
                "deal is in stage {}, not {}",
                d.stage, s.from_stage
            ))),
            _ => Ok(()),
        },
        Payload::VoteOpened(v) => {
            let exists: bool =
                sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM votes WHERE vote_id = $1)")
                    .bind(&v.vote_id)
                    .fetch_one(&mut *conn)
                    .await?;
            if exists {
                Err(refuse(format!("vote {} already exists", v.vote_id)))
            } else {
                Ok(())
            }
        }
        Payload::VoteCast(c) => match vote(conn, &c.vote_id).await? {
            Some(v) if v.deal_id != deal_id => {
                Err(refuse(format!("no vote {} on this deal", c.vote_id)))
            }
            None => Err(refuse(format!("no vote {} on this deal", c.vote_id))),
            Some(v) if v.status != "open" => Err(refuse(format!("vote {} is closed", c.vote_id))),
            Some(v) if at.is_some_and(|at| at > v.deadline) => {
                Err(refuse(format!("vote {} passed its deadline", c.vote_id)))
            }
            Some(v) if !v.eligible_lp_ids.contains(&c.lp_id) => Err(refuse(format!(
                "LP {} may not vote on {}",
                c.lp_id, c.vote_id
            ))),
            Some(_) => Ok(()),
        },
        Payload::VoteClosed(c) => match vote(conn, &c.vote_id).await? {
            Some(v) if v.deal_id == deal_id && v.status == "open" => Ok(()),
            Some(v) if v.deal_id == deal_id && event.expected_version.is_some() => {
                Err(refuse(format!("vote {} is already closed", c.vote_id)))
            }
            Some(v) if v.deal_id == deal_id => {
                // The closer's event for a vote that already closed (all LPs
                // voted) records the close on the vote, nothing more.
                sqlx::query("UPDATE votes SET close_event_id = coalesce(close_event_id, $2) WHERE vote_id = $1")
                    .bind(&c.vote_id)
                    .bind(&event.event_id)
                    .execute(&mut *conn)
                    .await
                    .map(|_| ())?;
                Err(refuse(format!("vote {} is already closed", c.vote_id)))
            }
            _ => Err(refuse(format!("no vote {} on this deal", c.vote_id))),
        },
        _ => Ok(()),
    })
}

async fn vote(conn: &mut PgConnection, vote_id: &str) -> Result<Option<VoteState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT deal_id, status, deadline, eligible_lp_ids, rule, quorum FROM votes
         WHERE vote_id = $1 FOR UPDATE",
    )
    .bind(vote_id)
    .fetch_optional(&mut *conn)
    .await
}

/// Records which event set each field.
fn provenance(
    buffer: &mut Provenance,
    deal_id: &str,
    fields: &[(&'static str, &str)],
    source: &str,
    event_id: &str,
    at: Option<DateTime<Utc>>,
) {
    let mut given = fields.iter().filter(|(_, v)| !v.is_empty()).peekable();
    if given.peek().is_none() {
        return;
    }
    // The parts every field of this event shares, rendered once.
    let mut tail = Vec::with_capacity(128);
    tail.extend_from_slice(b",\"source\":");
    json_string(&mut tail, source);
    tail.extend_from_slice(b",\"event_id\":");
    json_string(&mut tail, event_id);
    tail.extend_from_slice(b",\"recorded_at\":");
    match at {
        Some(at) => json_string(&mut tail, &at.to_rfc3339_opts(SecondsFormat::Micros, true)),
        None => tail.extend_from_slice(b"null"),
    }
    tail.push(b'}');
    let deal = match buffer.get_mut(deal_id) {
        Some(deal) => deal,
        None => buffer.entry(deal_id.to_owned()).or_default(),
    };
    for (field, value) in given {
        let mut entry = Vec::with_capacity(value.len() + tail.len() + 16);
        entry.extend_from_slice(b"{\"value\":");
        json_string(&mut entry, value);
        entry.extend_from_slice(&tail);
        deal.insert(field, entry);
    }
}

/// Appends `value` as a JSON string.
fn json_string(out: &mut Vec<u8>, value: &str) {
    // Writing to a Vec cannot fail, nor can serializing a str.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Field provenance a batch collected, written once at its end: per deal,
/// per field, the JSON object `{value, source, event_id, recorded_at}` of
/// the last event to set it (as if written one by one).
type Provenance = BTreeMap<String, BTreeMap<&'static str, Vec<u8>>>;

/// Sets a column in a patch if the event gives it a value.
fn set_if_given(column: &mut Option<String>, value: &str) {
    if !value.is_empty() {
        *column = Some(value.to_owned());
    }
}

impl Batch {
    /// An applied event's effects: the deal's columns, sources, stage history,
    /// notes and provenance into the batch's buffers, the rest to the database.
    async fn effects(
        &mut self,
        conn: &mut PgConnection,
        event: &DealEvent,
        payload: &Payload,
        at: Option<DateTime<Utc>>,
    ) -> Result<(), sqlx::Error> {
        let deal_id = event.deal_id.as_str();
        let event_id = event.event_id.as_str();
        let actor = event.actor.clone().unwrap_or_default();
        let prov = &mut self.provenance;
        let deal = &mut self
            .deals
            .get_mut(deal_id)
            .ok_or_else(|| sqlx::Error::Protocol("deal state vanished".into()))?
            .patch;
        match payload {
            Payload::DealSourced(s) => {
                let key = s
                    .company_key
                    .as_ref()
                    .map(|k| format!("{}:{}", key_kind(k.kind), k.value))
                    .unwrap_or_default();
                set_if_given(&mut deal.name, &s.name);
                set_if_given(&mut deal.website, &s.website);
                set_if_given(&mut deal.github_owner, &s.github_owner);
                set_if_given(&mut deal.github_repo, &s.github_repo);
                set_if_given(&mut deal.description, &s.description);
                set_if_given(&mut deal.company_key, &key);
                // The row keeps the first time it was sourced.
                deal.sourced_at = deal.sourced_at.or(at);
                let seen_at = s.seen_at.as_ref().and_then(envelope::from_timestamp).or(at);
                self.sources.insert(
                    (deal_id.to_owned(), s.source.clone(), s.external_id.clone()),
                    (s.source_url.clone(), seen_at, event_id.to_owned()),
                );
                provenance(
                    prov,
                    deal_id,
                    &[
                        ("name", s.name.as_str()),
                        ("website", s.website.as_str()),
                        ("github_owner", s.github_owner.as_str()),
                        ("github_repo", s.github_repo.as_str()),
                        ("description", s.description.as_str()),
                    ],
                    &s.source,
                    event_id,
                    seen_at,
                );
            }
            Payload::DealEnriched(e) => {
                deal.enrichment = Some(e.encode_to_vec());
                deal.enrichment_error = Some(String::new());
                if let Some(a) = &e.analysis {
                    deal.sector = Some(a.sector.clone());
                    deal.summary = Some(a.summary.clone());
                    deal.business_model = Some(a.business_model.clone());
                    deal.risks = Some(a.risks.clone());
                }
                if let Some(a) = &e.analysis {
                    let (source, fetched) = signal_origin(a.provenance.as_ref(), "analysis", at);
                    let risks = a.risks.join("; ");
                    provenance(
                        prov,
                        deal_id,
                        &[
                            ("sector", a.sector.as_str()),
                            ("summary", a.summary.as_str()),
                            ("business_model", a.business_model.as_str()),
                            ("risks", risks.as_str()),
                        ],
                        &source,
                        event_id,
                        fetched,
                    );
                }
                if let Some(g) = &e.github {
                    let (source, fetched) = signal_origin(g.provenance.as_ref(), "github", at);
                    let (stars, contributors) = (g.stars.to_string(), g.contributors.to_string());
                    provenance(
                        prov,
                        deal_id,
                        &[
                            ("github.stars", stars.as_str()),
                            ("github.contributors", contributors.as_str()),
                            ("github.primary_language", g.primary_language.as_str()),
                        ],
                        &source,
                        event_id,
                        fetched,
                    );
                }
                if let Some(c) = &e.crunchbase {
                    let (source, fetched) = signal_origin(c.provenance.as_ref(), "crunchbase", at);
                    let funding = c
                        .funding_total
                        .as_ref()
                        .map(|m| m.value_usd.to_string())
                        .unwrap_or_default();
                    provenance(
                        prov,
                        deal_id,
                        &[
                            ("crunchbase.funding_total_usd", funding.as_str()),
                            ("crunchbase.headcount_band", c.headcount_band.as_str()),
                            ("crunchbase.founded_on", c.founded_on.as_str()),
                        ],
                        &source,
                        event_id,
                        fetched,
                    );
                }
            }
            Payload::EnrichmentFailed(f) => {
                deal.enrichment_error = Some(format!("{}: {}", f.step, f.reason));
            }
            Payload::DealScored(s) => {
                deal.score = Some(s.score);
                deal.score_model_version = Some(s.model_version.clone());
                deal.score_detail = Some(s.encode_to_vec());
                deal.score_event_id = Some(event_id.to_owned());
                provenance(
                    prov,
                    deal_id,
                    &[("score", format!("{:.2}", s.score).as_str())],
                    &format!("scoring/{}", s.model_version),
                    event_id,
                    at,
                );
            }
            Payload::StageChanged(s) => {
                // The deal's stage is its batch state, written with the deal.
                self.stages.push(StageRow {
                    event_id: event_id.to_owned(),
                    deal_id: deal_id.to_owned(),
                    from_stage: s.from_stage.clone(),
                    to_stage: s.to_stage.clone(),
                    reason: s.reason.clone(),
                    actor_id: actor.id,
                    actor_role: actor.role,
                    changed_at: at,
                });
            }
            Payload::OwnerAssigned(o) => {
                deal.owner_id = Some(o.owner_id.clone());
            }
            Payload::NoteAdded(n) => {
                let note_id = if n.note_id.is_empty() {
                    event_id
                } else {
                    &n.note_id
                };
                // The first note with an id wins, as the table's conflict rule.
                if self.note_ids.insert(note_id.to_owned()) {
                    self.notes.push(NoteRow {
                        note_id: note_id.to_owned(),
                        deal_id: deal_id.to_owned(),
                        body: n.body.clone(),
                        author_id: actor.id,
                        author_role: actor.role,
                        event_id: event_id.to_owned(),
                        created_at: at,
                    });
                }
            }
            Payload::DealShared(s) => {
                sqlx::query(
                    "INSERT INTO deal_shares (deal_id, lp_id, event_id, shared_at)
                 SELECT $1, lp, $3, $4 FROM UNNEST($2::text[]) AS t(lp)
                 ON CONFLICT (deal_id, lp_id) DO NOTHING",
                )
                .bind(deal_id)
                .bind(&s.lp_ids)
                .bind(event_id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
            }
            Payload::VoteOpened(v) => {
                let deadline = v
                    .deadline
                    .as_ref()
                    .and_then(envelope::from_timestamp)
                    .unwrap_or(DateTime::UNIX_EPOCH);
                sqlx::query(
                "INSERT INTO votes (vote_id, deal_id, question, deadline, eligible_lp_ids, rule,
                     quorum, status, opened_at, opened_event_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'open', $8, $9)",
            )
            .bind(&v.vote_id)
            .bind(deal_id)
            .bind(&v.question)
            .bind(deadline)
            .bind(&v.eligible_lp_ids)
            .bind(v.rule)
            .bind(v.quorum as i32)
            .bind(at)
            .bind(event_id)
            .execute(&mut *conn)
            .await?;
            }
            Payload::VoteCast(c) => {
                sqlx::query(
                    "INSERT INTO ballots (vote_id, lp_id, ballot, comment, event_id, cast_at)
                 VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (vote_id, lp_id) DO UPDATE SET ballot = excluded.ballot,
                     comment = excluded.comment, event_id = excluded.event_id,
                     cast_at = excluded.cast_at",
                )
                .bind(&c.vote_id)
                .bind(&c.lp_id)
                .bind(c.ballot)
                .bind(&c.comment)
                .bind(event_id)
                .bind(at)
                .execute(&mut *conn)
                .await?;
                let all_voted: bool = sqlx::query_scalar(
                "SELECT NOT EXISTS (
                     SELECT 1 FROM votes v, UNNEST(v.eligible_lp_ids) AS e(lp)
                     WHERE v.vote_id = $1
                       AND NOT EXISTS (SELECT 1 FROM ballots b WHERE b.vote_id = v.vote_id AND b.lp_id = e.lp))",
            )
            .bind(&c.vote_id)
            .fetch_one(&mut *conn)
            .await?;
                if all_voted {
                    close_vote(conn, &c.vote_id, VoteCloseReason::AllVoted, at, None).await?;
                }
            }
            Payload::VoteClosed(c) => {
                let reason = match VoteCloseReason::try_from(c.reason) {
                    Ok(VoteCloseReason::Unspecified) | Err(_) => VoteCloseReason::ClosedByPartner,
                    Ok(reason) => reason,
                };
                close_vote(conn, &c.vote_id, reason, at, Some(event_id)).await?;
            }
            Payload::DealsMerged(m) => {
                // Other deals of this batch may not be in the table yet.
                self.write_deals(conn).await?;
                sqlx::query(
                    "UPDATE deals SET merged_into = $1 WHERE deal_id = ANY($2) AND deal_id <> $1",
                )
                .bind(deal_id)
                .bind(&m.merged_deal_ids)
                .execute(&mut *conn)
                .await?;
            }
            Payload::DealsUnmerged(u) => {
                self.write_deals(conn).await?;
                sqlx::query(
                "UPDATE deals SET merged_into = NULL WHERE deal_id = ANY($2) AND merged_into = $1",
            )
            .bind(deal_id)
            .bind(&u.unmerged_deal_ids)
            .execute(&mut *conn)
            .await?;
            }
            Payload::DealArchived(a) => {
                deal.archived_reason = Some(a.reason.clone());
            }
        }
        Ok(())
    }
}

fn signal_origin(
    provenance: Option<&v1::Provenance>,
    default_source: &str,
    at: Option<DateTime<Utc>>,
) -> (String, Option<DateTime<Utc>>) {
    match provenance {
        Some(p) => (
            if p.source.is_empty() {
                default_source.to_owned()
            } else {
                p.source.clone()
            },
            p.fetched_at
                .as_ref()
                .and_then(envelope::from_timestamp)
                .or(at),
        ),
        None => (default_source.to_owned(), at),
    }
}

fn key_kind(kind: i32) -> &'static str {
    match v1::CompanyKeyKind::try_from(kind) {
        Ok(v1::CompanyKeyKind::Domain) => "domain",
        Ok(v1::CompanyKeyKind::GithubOwner) => "github",
        Ok(v1::CompanyKeyKind::Name) => "name",
        _ => "unknown",
    }
}

/// The tally of a vote's ballots.
pub async fn tally(conn: &mut PgConnection, vote_id: &str) -> Result<v1::VoteTally, sqlx::Error> {
    let (yes, no, abstain, eligible): (i64, i64, i64, i32) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE b.ballot = 1), count(*) FILTER (WHERE b.ballot = 2),
                count(*) FILTER (WHERE b.ballot = 3),
                (SELECT cardinality(eligible_lp_ids) FROM votes WHERE vote_id = $1)
         FROM ballots b WHERE b.vote_id = $1",
    )
    .bind(vote_id)
    .fetch_one(&mut *conn)
    .await?;
    Ok(v1::VoteTally {
        yes: yes as u32,
        no: no as u32,
        abstain: abstain as u32,
        eligible: eligible.max(0) as u32,
    })
}

/// The outcome of a vote under its rule.
pub fn result(rule: VoteRule, quorum: u32, tally: &v1::VoteTally) -> VoteResult {
    let cast = tally.yes + tally.no + tally.abstain;
    if rule == VoteRule::Quorum && cast < quorum {
        return VoteResult::NoQuorum;
    }
    if tally.yes > tally.no {
        VoteResult::Passed
    } else {
        VoteResult::Rejected
    }
}

async fn close_vote(
    conn: &mut PgConnection,
    vote_id: &str,
    reason: VoteCloseReason,
    at: Option<DateTime<Utc>>,
    close_event_id: Option<&str>,
) -> Result<(), sqlx::Error> {
    let Some(state) = vote(conn, vote_id).await? else {
        return Ok(());
    };
    let tally = tally(conn, vote_id).await?;
    let rule = VoteRule::try_from(state.rule).unwrap_or(VoteRule::SimpleMajority);
    let outcome = result(rule, state.quorum.max(0) as u32, &tally);
    sqlx::query(
        "UPDATE votes SET status = 'closed', closed_at = $2, yes = $3, no = $4, abstain = $5,
             result = $6, close_reason = $7, close_event_id = coalesce($8, close_event_id)
         WHERE vote_id = $1",
    )
    .bind(vote_id)
    .bind(at)
    .bind(tally.yes as i32)
    .bind(tally.no as i32)
    .bind(tally.abstain as i32)
    .bind(outcome as i32)
    .bind(reason as i32)
    .bind(close_event_id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(yes: u32, no: u32, abstain: u32) -> v1::VoteTally {
        v1::VoteTally {
            yes,
            no,
            abstain,
            eligible: 5,
        }
    }

    #[test]
    fn majority_of_ballots_cast_decides() {
        assert_eq!(
            result(VoteRule::SimpleMajority, 0, &t(2, 1, 2)),
            VoteResult::Passed
        );
        assert_eq!(
            result(VoteRule::SimpleMajority, 0, &t(1, 1, 0)),
            VoteResult::Rejected
        );
        assert_eq!(
            result(VoteRule::SimpleMajority, 0, &t(0, 0, 0)),
            VoteResult::Rejected
        );
    }

    #[test]
    fn quorum_counts_abstentions_as_present() {
        assert_eq!(
            result(VoteRule::Quorum, 3, &t(2, 0, 0)),
            VoteResult::NoQuorum
        );
        assert_eq!(result(VoteRule::Quorum, 3, &t(2, 0, 1)), VoteResult::Passed);
        assert_eq!(
            result(VoteRule::Quorum, 3, &t(1, 2, 0)),
            VoteResult::Rejected
        );
    }
}
