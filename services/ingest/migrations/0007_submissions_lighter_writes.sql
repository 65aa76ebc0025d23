-- Two costs of recording a key that buy nothing any more.
--
-- The unique index on event_id: since 0004 nothing looks a submission up by
-- its event id (keys are found by source and idempotency key, batches by
-- batch id); the index was kept only for replicas older than 0004 during a
-- rolling upgrade. It cost every key a second B-tree insert, a third of the
-- work of recording it. An installation still running a version older than
-- 0004 should upgrade to one that has 0004 to 0006 first, so that no
-- replica looking up by event id remains when the index goes.
ALTER TABLE ingest_submissions DROP CONSTRAINT ingest_submissions_event_id_key;

-- A batch's receipts (a partition and an offset per key, about 6 kB for 500
-- keys) are written once and read rarely; compressing them on every write
-- (pglz) cost more than recording the keys' rows. Stored out of line
-- uncompressed from now on.
ALTER TABLE ingest_batches
    ALTER COLUMN kafka_partitions SET STORAGE EXTERNAL,
    ALTER COLUMN kafka_offsets SET STORAGE EXTERNAL;
