-- The keys a call records for the first time form one batch. What their
-- events share (the time, the channel, the correlation id) is written once,
-- on the batch row, and so are the broker's receipts, in one update once
-- every event of the batch is acknowledged. A submission row is then
-- written once and never updated; its event, if it must be sent again, is
-- rebuilt from the retried submission (same key and fingerprint, so the
-- same content) and its batch, instead of being stored whole.
CREATE TABLE ingest_batches (
    batch_id         uuid        PRIMARY KEY,
    -- The events' occurred_at and seen_at.
    recorded_at      timestamptz NOT NULL,
    -- dealmesh.v1.Channel.
    channel          integer     NOT NULL,
    correlation_id   text        NOT NULL,
    -- The receipts by batch_index (1-based); NULL for a position whose key
    -- was already recorded by an earlier call.
    kafka_partitions integer[],
    kafka_offsets    bigint[],
    acked_at         timestamptz
);

-- Rows written before batches keep their envelope and receipt columns. A
-- batched row has no envelope; its receipt is on its batch, or on the row
-- itself when a retry sent it because the batch's sender died first. No
-- foreign key: the batch row is inserted in the same transaction, and the
-- check would cost an index probe per submission.
ALTER TABLE ingest_submissions
    ALTER COLUMN envelope DROP NOT NULL,
    ADD COLUMN batch_id uuid,
    ADD COLUMN batch_index integer,
    ADD CONSTRAINT ingest_submissions_envelope_or_batch
        CHECK (envelope IS NOT NULL OR (batch_id IS NOT NULL AND batch_index IS NOT NULL));

-- The event_id index stays: replicas of the previous version, running
-- until a rolling upgrade replaces them, find rows by event id. They answer
-- a retry of a batched key that is not yet acknowledged with UNAVAILABLE
-- (they look for its envelope), and the client's retry reaches a new one.

-- Batched rows are not updated in place: pages written from now on are
-- filled.
ALTER TABLE ingest_submissions SET (fillfactor = 100);
