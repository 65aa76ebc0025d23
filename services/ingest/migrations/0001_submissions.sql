-- Every accepted submission, keyed by its idempotency key, so a retried
-- request is answered from here and never becomes a second event.
CREATE TABLE ingest_submissions (
    source          text        NOT NULL,
    idempotency_key text        NOT NULL,
    -- SHA-256 of the normalized submission: a key reused for different
    -- content is refused instead of silently answered.
    fingerprint     bytea       NOT NULL,
    event_id        uuid        NOT NULL UNIQUE,
    deal_id         uuid        NOT NULL,
    company_key     text        NOT NULL,
    -- The encoded envelope, re-sent byte for byte if the first send did not
    -- finish.
    envelope        bytea       NOT NULL,
    kafka_partition integer,
    kafka_offset    bigint,
    created_at      timestamptz NOT NULL DEFAULT now(),
    acked_at        timestamptz,
    PRIMARY KEY (source, idempotency_key)
);

CREATE INDEX ingest_submissions_deal_id ON ingest_submissions (deal_id);
