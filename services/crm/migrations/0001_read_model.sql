-- The CRM read model. Every table lives in the schema the connection's
-- search_path names (configuration, default `crm`), so a rebuild can project
-- into a fresh schema beside the live one. Nothing here calls now():
-- projected times come from the events, so two rebuilds give the same rows.

-- Where the projector is in each partition of the deal log; updated in the
-- same transaction as the rows a batch projected.
CREATE TABLE projector_offsets (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Records that do not decode as a deal event: kept for inspection, skipped.
CREATE TABLE skipped_records (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    "offset"    bigint  NOT NULL,
    error       text    NOT NULL,
    record_key  bytea,
    value       bytea,
    PRIMARY KEY (topic, partition, "offset")
);

-- Every event consumed, once per event_id (duplicates are dropped here),
-- with how the projector decided it. Commands wait for their row.
CREATE TABLE events (
    event_id         text        PRIMARY KEY,
    deal_id          text        NOT NULL,
    event_type       text        NOT NULL,
    occurred_at      timestamptz,
    actor_id         text        NOT NULL,
    actor_role       integer     NOT NULL,
    correlation_id   text        NOT NULL,
    causation_id     text        NOT NULL,
    idempotency_key  text        NOT NULL,
    expected_version bigint,
    kafka_topic      text        NOT NULL,
    kafka_partition  integer     NOT NULL,
    kafka_offset     bigint      NOT NULL,
    envelope         bytea       NOT NULL,
    -- applied | rejected | skipped | ignored
    status           text        NOT NULL,
    -- For rejected commands: aborted (stale version) or failed_precondition.
    reject_code      text,
    reason           text        NOT NULL DEFAULT '',
    -- The deal's version after this event.
    deal_version     bigint      NOT NULL DEFAULT 0
);
CREATE INDEX events_by_deal ON events (deal_id, kafka_partition, kafka_offset);
CREATE INDEX events_by_time ON events (occurred_at);

CREATE TABLE deals (
    deal_id             text        PRIMARY KEY,
    version             bigint      NOT NULL,
    name                text        NOT NULL DEFAULT '',
    website             text        NOT NULL DEFAULT '',
    github_owner        text        NOT NULL DEFAULT '',
    github_repo         text        NOT NULL DEFAULT '',
    description         text        NOT NULL DEFAULT '',
    company_key         text        NOT NULL DEFAULT '',
    stage               text        NOT NULL,
    owner_id            text        NOT NULL DEFAULT '',
    score               double precision,
    score_model_version text        NOT NULL DEFAULT '',
    -- The latest DealScored payload, protobuf-encoded.
    score_detail        bytea,
    score_event_id      text        NOT NULL DEFAULT '',
    sector              text        NOT NULL DEFAULT '',
    summary             text        NOT NULL DEFAULT '',
    business_model      text        NOT NULL DEFAULT '',
    risks               text[]      NOT NULL DEFAULT '{}',
    -- The latest DealEnriched payload, protobuf-encoded.
    enrichment          bytea,
    enrichment_error    text        NOT NULL DEFAULT '',
    archived            boolean     NOT NULL DEFAULT false,
    archived_reason     text        NOT NULL DEFAULT '',
    merged_into         text,
    sourced_at          timestamptz,
    updated_at          timestamptz NOT NULL,
    last_event_id       text        NOT NULL,
    search              tsvector GENERATED ALWAYS AS
                            (to_tsvector('simple', name || ' ' || summary)) STORED
);
CREATE INDEX deals_by_score ON deals ((coalesce(score, -1)) DESC, deal_id DESC);
CREATE INDEX deals_by_recency ON deals (updated_at DESC, deal_id DESC);
CREATE INDEX deals_by_stage ON deals (stage);
CREATE INDEX deals_by_owner ON deals (owner_id);
CREATE INDEX deals_by_sector ON deals (lower(sector));
CREATE INDEX deals_search ON deals USING gin (search);
CREATE INDEX deals_merged_into ON deals (merged_into) WHERE merged_into IS NOT NULL;

CREATE TABLE deal_sources (
    deal_id     text        NOT NULL,
    source      text        NOT NULL,
    external_id text        NOT NULL,
    source_url  text        NOT NULL,
    seen_at     timestamptz,
    event_id    text        NOT NULL,
    PRIMARY KEY (deal_id, source, external_id)
);
CREATE INDEX deal_sources_by_source ON deal_sources (source, deal_id);

-- Which event last set each field of a deal.
CREATE TABLE field_provenance (
    deal_id     text        NOT NULL,
    field       text        NOT NULL,
    value       text        NOT NULL,
    source      text        NOT NULL,
    event_id    text        NOT NULL,
    recorded_at timestamptz,
    PRIMARY KEY (deal_id, field)
);

CREATE TABLE stage_history (
    event_id    text        PRIMARY KEY,
    deal_id     text        NOT NULL,
    from_stage  text        NOT NULL,
    to_stage    text        NOT NULL,
    reason      text        NOT NULL,
    actor_id    text        NOT NULL,
    actor_role  integer     NOT NULL,
    changed_at  timestamptz
);
CREATE INDEX stage_history_by_deal ON stage_history (deal_id, changed_at);

CREATE TABLE notes (
    note_id     text        PRIMARY KEY,
    deal_id     text        NOT NULL,
    body        text        NOT NULL,
    author_id   text        NOT NULL,
    author_role integer     NOT NULL,
    event_id    text        NOT NULL,
    created_at  timestamptz
);
CREATE INDEX notes_by_deal ON notes (deal_id, created_at);

CREATE TABLE deal_shares (
    deal_id   text        NOT NULL,
    lp_id     text        NOT NULL,
    event_id  text        NOT NULL,
    shared_at timestamptz,
    PRIMARY KEY (deal_id, lp_id)
);
CREATE INDEX deal_shares_by_lp ON deal_shares (lp_id, deal_id);

CREATE TABLE votes (
    vote_id         text        PRIMARY KEY,
    deal_id         text        NOT NULL,
    question        text        NOT NULL,
    deadline        timestamptz NOT NULL,
    eligible_lp_ids text[]      NOT NULL,
    rule            integer     NOT NULL,
    quorum          integer     NOT NULL,
    -- open | closed
    status          text        NOT NULL,
    opened_at       timestamptz,
    opened_event_id text        NOT NULL,
    closed_at       timestamptz,
    yes             integer     NOT NULL DEFAULT 0,
    no              integer     NOT NULL DEFAULT 0,
    abstain         integer     NOT NULL DEFAULT 0,
    result          integer     NOT NULL DEFAULT 0,
    close_reason    integer     NOT NULL DEFAULT 0,
    -- The VoteClosed event on the log, once there is one.
    close_event_id  text
);
CREATE INDEX votes_by_deal ON votes (deal_id);
CREATE INDEX votes_open ON votes (deadline) WHERE status = 'open';

CREATE TABLE ballots (
    vote_id  text        NOT NULL,
    lp_id    text        NOT NULL,
    ballot   integer     NOT NULL,
    comment  text        NOT NULL,
    event_id text        NOT NULL,
    cast_at  timestamptz,
    PRIMARY KEY (vote_id, lp_id)
);

-- Commands taken over gRPC, by caller and idempotency key, so a retry
-- answers with the same event id. Not a projection: a rebuild carries it
-- over rather than recomputing it.
CREATE TABLE command_requests (
    subject         text        NOT NULL,
    idempotency_key text        NOT NULL,
    fingerprint     bytea       NOT NULL,
    event_id        text        NOT NULL UNIQUE,
    deal_id         text        NOT NULL,
    envelope        bytea       NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, idempotency_key)
);
