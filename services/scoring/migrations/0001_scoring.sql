-- The scoring service's state: the latest enrichment and score of each deal
-- (for ExplainScore and rescore), and every DealScored id already published
-- (so a redelivered enrichment is not scored and published twice).
CREATE SCHEMA IF NOT EXISTS scoring;

CREATE TABLE scoring.enrichments (
    deal_id     text PRIMARY KEY,
    event_id    text NOT NULL,
    occurred_at timestamptz NOT NULL,
    -- The DealEnriched envelope exactly as consumed.
    envelope    bytea NOT NULL,
    stored_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE scoring.scores (
    deal_id            text PRIMARY KEY,
    event_id           text NOT NULL,
    source_event_id    text NOT NULL,
    -- occurred_at of the enrichment scored: a late redelivery of an older
    -- enrichment never replaces the score of a newer one.
    source_occurred_at timestamptz NOT NULL,
    model_version      text NOT NULL,
    score              double precision NOT NULL,
    -- The DealScored envelope as published, and the features it came from
    -- (a ScoringFeatures message).
    envelope           bytea NOT NULL,
    features           bytea NOT NULL,
    scored_at          timestamptz NOT NULL
);

CREATE TABLE scoring.published (
    event_id     text PRIMARY KEY,
    deal_id      text NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now()
);
