//! Queries over the read model, already filtered for the caller: an LP sees
//! only deals shared with them, and a deal they may not see reads exactly
//! like one that does not exist.

use base64::Engine;
use chrono::{DateTime, Utc};
use dealmesh_eventlog::envelope::timestamp;
use dealmesh_proto::v1::{self, CrmDealSort};
use prost::Message;
use sqlx::{PgPool, Postgres, QueryBuilder};

/// Who is asking, as far as visibility goes.
#[derive(Debug, Clone)]
pub enum Viewer {
    /// Partners, analysts, admins, services: everything.
    Staff,
    /// An LP: only deals shared with this LP id.
    Lp(String),
}

impl Viewer {
    pub fn lp_id(&self) -> Option<&str> {
        match self {
            Viewer::Staff => None,
            Viewer::Lp(id) => Some(id),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("deal {0} not found")]
    NotFound(String),
    #[error("{field}: {message}")]
    BadRequest {
        field: &'static str,
        message: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(sqlx::FromRow, Debug, Clone)]
pub struct DealRow {
    pub deal_id: String,
    pub version: i64,
    pub name: String,
    pub website: String,
    pub github_owner: String,
    pub github_repo: String,
    pub description: String,
    pub stage: String,
    pub owner_id: String,
    pub score: Option<f64>,
    pub score_model_version: String,
    pub score_detail: Option<Vec<u8>>,
    pub score_event_id: String,
    pub sector: String,
    pub summary: String,
    pub business_model: String,
    pub risks: Vec<String>,
    pub enrichment: Option<Vec<u8>>,
    pub archived: bool,
    pub merged_into: Option<String>,
    pub sourced_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

const DEAL_COLUMNS: &str = "d.deal_id, d.version, d.name, d.website, d.github_owner, d.github_repo,
    d.description, d.stage, d.owner_id, d.score, d.score_model_version, d.score_detail,
    d.score_event_id, d.sector, d.summary, d.business_model, d.risks, d.enrichment, d.archived,
    d.merged_into, d.sourced_at, d.updated_at";

type SourceRow = (String, String, String, String, Option<DateTime<Utc>>);
type BallotRow = (String, String, i32, String, Option<DateTime<Utc>>);
type HistoryRow = (
    Vec<u8>,
    String,
    String,
    Option<String>,
    String,
    i32,
    i64,
    i64,
);

fn ts(at: Option<DateTime<Utc>>) -> Option<prost_types::Timestamp> {
    at.map(timestamp)
}

#[derive(Clone)]
pub struct ReadModel {
    pool: PgPool,
}

/// Filters of `ListDeals`, validated.
#[derive(Debug, Clone, Default)]
pub struct DealFilter {
    pub stages: Vec<String>,
    pub sector: String,
    pub min_score: Option<f64>,
    pub max_score: Option<f64>,
    pub owner_id: String,
    pub source: String,
    pub query: String,
    pub include_archived: bool,
    pub sort: CrmDealSort,
    pub page_size: u32,
    pub page_token: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Cursor {
    /// Hash of the filters the cursor was issued for.
    f: String,
    /// Sort key of the last row: score (or -1), or updated_at in micros.
    k: f64,
    t: i64,
    id: String,
}

impl DealFilter {
    fn fingerprint(&self) -> String {
        use sha2::{Digest, Sha256};
        let text = format!(
            "{:?}|{}|{:?}|{:?}|{}|{}|{}|{}|{:?}",
            self.stages,
            self.sector,
            self.min_score,
            self.max_score,
            self.owner_id,
            self.source,
            self.query,
            self.include_archived,
            self.sort
        );
        let digest = Sha256::digest(text.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Words of a text query as a prefix `tsquery` (`foo:* & bar:*`); only
/// letters and digits survive, so the result is safe to hand to
/// `to_tsquery`.
fn prefix_tsquery(query: &str) -> Option<String> {
    let words: Vec<String> = query
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| format!("{}:*", w.to_lowercase()))
        .collect();
    (!words.is_empty()).then(|| words.join(" & "))
}

impl ReadModel {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The deal's row if `viewer` may see it.
    pub async fn deal_row(&self, deal_id: &str, viewer: &Viewer) -> Result<DealRow> {
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {DEAL_COLUMNS} FROM deals d WHERE d.deal_id = "
        ));
        q.push_bind(deal_id);
        if let Some(lp) = viewer.lp_id() {
            q.push(" AND EXISTS (SELECT 1 FROM deal_shares s WHERE s.deal_id = d.deal_id AND s.lp_id = ");
            q.push_bind(lp);
            q.push(")");
        }
        q.build_query_as::<DealRow>()
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| Error::NotFound(deal_id.to_owned()))
    }

    /// Rows to protos, with sources and (for staff) shares, in order.
    async fn to_deals(
        &self,
        rows: Vec<DealRow>,
        viewer: &Viewer,
        full: bool,
    ) -> Result<Vec<v1::CrmDeal>> {
        let ids: Vec<String> = rows.iter().map(|r| r.deal_id.clone()).collect();
        let sources: Vec<SourceRow> = sqlx::query_as(
            "SELECT deal_id, source, external_id, source_url, seen_at FROM deal_sources
             WHERE deal_id = ANY($1) ORDER BY deal_id, seen_at, source, external_id",
        )
        .bind(&ids)
        .fetch_all(&self.pool)
        .await?;
        let shares: Vec<(String, String)> = if viewer.lp_id().is_none() {
            sqlx::query_as(
                "SELECT deal_id, lp_id FROM deal_shares WHERE deal_id = ANY($1) ORDER BY deal_id, lp_id",
            )
            .bind(&ids)
            .fetch_all(&self.pool)
            .await?
        } else {
            Vec::new()
        };
        Ok(rows
            .into_iter()
            .map(|r| {
                let enrichment = if full {
                    r.enrichment
                        .as_deref()
                        .and_then(|b| v1::DealEnriched::decode(b).ok())
                } else {
                    None
                };
                v1::CrmDeal {
                    sources: sources
                        .iter()
                        .filter(|s| s.0 == r.deal_id)
                        .map(|s| v1::CrmDealSource {
                            source: s.1.clone(),
                            external_id: s.2.clone(),
                            source_url: s.3.clone(),
                            seen_at: ts(s.4),
                        })
                        .collect(),
                    shared_lp_ids: shares
                        .iter()
                        .filter(|s| s.0 == r.deal_id)
                        .map(|s| s.1.clone())
                        .collect(),
                    deal_id: r.deal_id,
                    version: r.version.max(0) as u64,
                    name: r.name,
                    website: r.website,
                    github_owner: r.github_owner,
                    github_repo: r.github_repo,
                    description: r.description,
                    stage: r.stage,
                    owner_id: r.owner_id,
                    score: r.score,
                    score_model_version: r.score_model_version,
                    sector: r.sector,
                    summary: r.summary,
                    business_model: r.business_model,
                    risks: r.risks,
                    archived: r.archived,
                    merged_into: r.merged_into.unwrap_or_default(),
                    sourced_at: ts(r.sourced_at),
                    updated_at: ts(Some(r.updated_at)),
                    enrichment,
                }
            })
            .collect())
    }

    /// One deal as `viewer` may see it.
    pub async fn deal(&self, deal_id: &str, viewer: &Viewer) -> Result<v1::CrmDeal> {
        let row = self.deal_row(deal_id, viewer).await?;
        Ok(self
            .to_deals(vec![row], viewer, true)
            .await?
            .pop()
            .unwrap_or_default())
    }

    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn list(
        &self,
        filter: &DealFilter,
        viewer: &Viewer,
    ) -> Result<(Vec<v1::CrmDeal>, String)> {
        let page_size = match filter.page_size {
            0 => 50,
            n if n > 500 => {
                return Err(Error::BadRequest {
                    field: "page_size",
                    message: "must be at most 500".into(),
                });
            }
            n => n,
        } as i64;
        let by_score = filter.sort == CrmDealSort::Score;
        let fingerprint = filter.fingerprint();
        let cursor = if filter.page_token.is_empty() {
            None
        } else {
            let cursor: Option<Cursor> = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(&filter.page_token)
                .ok()
                .and_then(|b| serde_json::from_slice(&b).ok());
            match cursor {
                Some(c) if c.f == fingerprint => Some(c),
                Some(_) => {
                    return Err(Error::BadRequest {
                        field: "page_token",
                        message: "was issued for other filters or another sort".into(),
                    });
                }
                None => {
                    return Err(Error::BadRequest {
                        field: "page_token",
                        message: "is not a token this server issued".into(),
                    });
                }
            }
        };
        let mut q = QueryBuilder::<Postgres>::new(format!(
            "SELECT {DEAL_COLUMNS} FROM deals d WHERE d.merged_into IS NULL"
        ));
        if !filter.include_archived {
            q.push(" AND NOT d.archived");
        }
        if let Some(lp) = viewer.lp_id() {
            q.push(" AND EXISTS (SELECT 1 FROM deal_shares s WHERE s.deal_id = d.deal_id AND s.lp_id = ");
            q.push_bind(lp.to_owned());
            q.push(")");
        }
        if !filter.stages.is_empty() {
            q.push(" AND d.stage = ANY(");
            q.push_bind(filter.stages.clone());
            q.push(")");
        }
        if !filter.sector.is_empty() {
            q.push(" AND lower(d.sector) = lower(");
            q.push_bind(filter.sector.clone());
            q.push(")");
        }
        if let Some(min) = filter.min_score {
            q.push(" AND d.score >= ");
            q.push_bind(min);
        }
        if let Some(max) = filter.max_score {
            q.push(" AND d.score <= ");
            q.push_bind(max);
        }
        if !filter.owner_id.is_empty() {
            q.push(" AND d.owner_id = ");
            q.push_bind(filter.owner_id.clone());
        }
        if !filter.source.is_empty() {
            q.push(" AND EXISTS (SELECT 1 FROM deal_sources ds WHERE ds.deal_id = d.deal_id AND ds.source = ");
            q.push_bind(filter.source.clone());
            q.push(")");
        }
        if let Some(tsquery) = prefix_tsquery(&filter.query) {
            q.push(" AND d.search @@ to_tsquery('simple', ");
            q.push_bind(tsquery);
            q.push(")");
        }
        if let Some(c) = &cursor {
            if by_score {
                q.push(" AND (coalesce(d.score, -1), d.deal_id) < (");
                q.push_bind(c.k);
            } else {
                q.push(" AND (d.updated_at, d.deal_id) < (");
                q.push_bind(DateTime::<Utc>::from_timestamp_micros(c.t).unwrap_or_default());
            }
            q.push(", ");
            q.push_bind(c.id.clone());
            q.push(")");
        }
        if by_score {
            q.push(" ORDER BY coalesce(d.score, -1) DESC, d.deal_id DESC");
        } else {
            q.push(" ORDER BY d.updated_at DESC, d.deal_id DESC");
        }
        q.push(" LIMIT ");
        q.push_bind(page_size + 1);
        let mut rows: Vec<DealRow> = q.build_query_as().fetch_all(&self.pool).await?;
        let more = rows.len() as i64 > page_size;
        rows.truncate(page_size as usize);
        let next = match (more, rows.last()) {
            (true, Some(last)) => {
                let cursor = Cursor {
                    f: fingerprint,
                    k: last.score.unwrap_or(-1.0),
                    t: last.updated_at.timestamp_micros(),
                    id: last.deal_id.clone(),
                };
                base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .encode(serde_json::to_vec(&cursor).unwrap_or_default())
            }
            _ => String::new(),
        };
        Ok((self.to_deals(rows, viewer, false).await?, next))
    }

    /// Everything `GetDeal` answers.
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn deal_details(
        &self,
        deal_id: &str,
        viewer: &Viewer,
    ) -> Result<v1::GetDealResponse> {
        let row = self.deal_row(deal_id, viewer).await?;
        let explanation = row
            .score_detail
            .as_deref()
            .and_then(|b| v1::DealScored::decode(b).ok())
            .map(|s| v1::CrmScoreExplanation {
                score: s.score,
                model_version: s.model_version,
                contributions: s.contributions,
                failed_filters: s.failed_filters,
                event_id: row.score_event_id.clone(),
            });
        let deal = self
            .to_deals(vec![row], viewer, true)
            .await?
            .pop()
            .unwrap_or_default();
        let provenance =
            sqlx::query_as::<_, (String, String, String, String, Option<DateTime<Utc>>)>(
                "SELECT field, value, source, event_id, recorded_at FROM field_provenance
             WHERE deal_id = $1 ORDER BY field",
            )
            .bind(deal_id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(
                |(field, value, source, event_id, at)| v1::CrmFieldProvenance {
                    field,
                    value,
                    source,
                    event_id,
                    recorded_at: ts(at),
                },
            )
            .collect();
        let stage_history = sqlx::query_as::<
            _,
            (
                String,
                String,
                String,
                String,
                i32,
                Option<DateTime<Utc>>,
                String,
            ),
        >(
            "SELECT from_stage, to_stage, reason, actor_id, actor_role, changed_at, event_id
             FROM stage_history WHERE deal_id = $1 ORDER BY changed_at, event_id",
        )
        .bind(deal_id)
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(
            |(from_stage, to_stage, reason, actor_id, role, at, event_id)| v1::CrmStageChange {
                from_stage,
                to_stage,
                reason,
                actor: Some(actor(actor_id, role)),
                changed_at: ts(at),
                event_id,
            },
        )
        .collect();
        let notes = if viewer.lp_id().is_some() {
            Vec::new()
        } else {
            sqlx::query_as::<_, (String, String, String, i32, Option<DateTime<Utc>>)>(
                "SELECT note_id, body, author_id, author_role, created_at FROM notes
                 WHERE deal_id = $1 ORDER BY created_at, note_id",
            )
            .bind(deal_id)
            .fetch_all(&self.pool)
            .await?
            .into_iter()
            .map(|(note_id, body, author_id, role, at)| v1::CrmNote {
                note_id,
                body,
                author: Some(actor(author_id, role)),
                created_at: ts(at),
            })
            .collect()
        };
        let votes = self.votes(deal_id, None, viewer).await?;
        Ok(v1::GetDealResponse {
            deal: Some(deal),
            provenance,
            score_explanation: explanation,
            stage_history,
            notes,
            votes,
        })
    }

    /// Votes on a deal (or just `vote_id`); an LP sees the votes open to
    /// them, and only their own ballot.
    pub async fn votes(
        &self,
        deal_id: &str,
        vote_id: Option<&str>,
        viewer: &Viewer,
    ) -> Result<Vec<v1::CrmVote>> {
        #[derive(sqlx::FromRow)]
        struct VoteRow {
            vote_id: String,
            question: String,
            deadline: DateTime<Utc>,
            eligible_lp_ids: Vec<String>,
            rule: i32,
            quorum: i32,
            status: String,
            opened_at: Option<DateTime<Utc>>,
            closed_at: Option<DateTime<Utc>>,
            yes: i32,
            no: i32,
            abstain: i32,
            result: i32,
            close_reason: i32,
        }
        let rows: Vec<VoteRow> = sqlx::query_as(
            "SELECT vote_id, question, deadline, eligible_lp_ids, rule, quorum, status, opened_at,
                    closed_at, yes, no, abstain, result, close_reason
             FROM votes WHERE deal_id = $1 AND ($2::text IS NULL OR vote_id = $2)
               AND ($3::text IS NULL OR $3 = ANY(eligible_lp_ids))
             ORDER BY opened_at, vote_id",
        )
        .bind(deal_id)
        .bind(vote_id)
        .bind(viewer.lp_id())
        .fetch_all(&self.pool)
        .await?;
        let ids: Vec<String> = rows.iter().map(|r| r.vote_id.clone()).collect();
        let ballots: Vec<BallotRow> = sqlx::query_as(
            "SELECT vote_id, lp_id, ballot, comment, cast_at FROM ballots
             WHERE vote_id = ANY($1) AND ($2::text IS NULL OR lp_id = $2) ORDER BY vote_id, lp_id",
        )
        .bind(&ids)
        .bind(viewer.lp_id())
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let mine: Vec<_> = ballots.iter().filter(|b| b.0 == r.vote_id).collect();
                let open = r.status == "open";
                // While open the live count comes from the ballots (staff only).
                let tally = if open {
                    let count = |n: i32| {
                        ballots
                            .iter()
                            .filter(|b| b.0 == r.vote_id && b.2 == n)
                            .count() as u32
                    };
                    v1::VoteTally {
                        yes: count(1),
                        no: count(2),
                        abstain: count(3),
                        eligible: r.eligible_lp_ids.len() as u32,
                    }
                } else {
                    v1::VoteTally {
                        yes: r.yes as u32,
                        no: r.no as u32,
                        abstain: r.abstain as u32,
                        eligible: r.eligible_lp_ids.len() as u32,
                    }
                };
                v1::CrmVote {
                    ballots: mine
                        .into_iter()
                        .map(|b| v1::CrmBallot {
                            lp_id: b.1.clone(),
                            ballot: b.2,
                            comment: b.3.clone(),
                            cast_at: ts(b.4),
                        })
                        .collect(),
                    vote_id: r.vote_id,
                    question: r.question,
                    deadline: ts(Some(r.deadline)),
                    eligible_lp_ids: if viewer.lp_id().is_some() {
                        Vec::new()
                    } else {
                        r.eligible_lp_ids
                    },
                    rule: r.rule,
                    quorum: r.quorum.max(0) as u32,
                    status: if open {
                        v1::CrmVoteStatus::Open as i32
                    } else {
                        v1::CrmVoteStatus::Closed as i32
                    },
                    tally: Some(tally),
                    result: r.result,
                    close_reason: r.close_reason,
                    opened_at: ts(r.opened_at),
                    closed_at: ts(r.closed_at),
                }
            })
            .collect())
    }

    /// A deal's events in log order, after `page_token` (an offset).
    #[tracing::instrument(skip_all, err(level = "debug"))]
    pub async fn history(
        &self,
        deal_id: &str,
        page_size: u32,
        page_token: &str,
    ) -> Result<(Vec<v1::CrmHistoryEntry>, String)> {
        let page_size = match page_size {
            0 => 100,
            n if n > 1000 => {
                return Err(Error::BadRequest {
                    field: "page_size",
                    message: "must be at most 1000".into(),
                });
            }
            n => n,
        } as i64;
        let after: Option<(i32, i64)> = if page_token.is_empty() {
            None
        } else {
            let parsed = page_token
                .split_once(':')
                .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)));
            match parsed {
                Some(position) => Some(position),
                None => {
                    return Err(Error::BadRequest {
                        field: "page_token",
                        message: "is not a token this server issued".into(),
                    });
                }
            }
        };
        self.deal_row(deal_id, &Viewer::Staff).await?;
        let rows: Vec<HistoryRow> = sqlx::query_as(
            "SELECT envelope, event_type, status, reject_code, reason, kafka_partition, kafka_offset, deal_version
             FROM events WHERE deal_id = $1
               AND ($2::int IS NULL OR (kafka_partition, kafka_offset) > ($2, $3))
             ORDER BY kafka_partition, kafka_offset LIMIT $4",
        )
        .bind(deal_id)
        .bind(after.map(|a| a.0))
        .bind(after.map(|a| a.1).unwrap_or(0))
        .bind(page_size + 1)
        .fetch_all(&self.pool)
        .await?;
        let more = rows.len() as i64 > page_size;
        let mut entries: Vec<v1::CrmHistoryEntry> = rows
            .into_iter()
            .take(page_size as usize)
            .map(
                |(envelope, event_type, status, _code, reason, partition, offset, version)| {
                    v1::CrmHistoryEntry {
                        event: v1::DealEvent::decode(envelope.as_slice()).ok(),
                        event_type,
                        status: match status.as_str() {
                            "applied" => v1::CrmEventStatus::Applied,
                            "rejected" => v1::CrmEventStatus::Rejected,
                            "skipped" => v1::CrmEventStatus::Skipped,
                            "ignored" => v1::CrmEventStatus::Ignored,
                            _ => v1::CrmEventStatus::Unspecified,
                        } as i32,
                        reason,
                        partition,
                        offset,
                        deal_version: version.max(0) as u64,
                    }
                },
            )
            .collect();
        entries.shrink_to_fit();
        let next = match (more, entries.last()) {
            (true, Some(last)) => format!("{}:{}", last.partition, last.offset),
            _ => String::new(),
        };
        Ok((entries, next))
    }
}

fn actor(id: String, role: i32) -> v1::Actor {
    v1::Actor {
        kind: if role == v1::Role::Service as i32 {
            v1::ActorKind::Service as i32
        } else {
            v1::ActorKind::User as i32
        },
        display_name: id.clone(),
        id,
        role,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_queries_keep_only_words() {
        assert_eq!(
            prefix_tsquery("Acme  ro'bo!").as_deref(),
            Some("acme:* & ro:* & bo:*")
        );
        assert_eq!(prefix_tsquery("  &|!  "), None);
    }
}
