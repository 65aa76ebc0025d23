-- Idempotency keys are compared as bytes. Under the database's default
-- collation every comparison in the primary key's B-tree went through the
-- locale's string comparison, the largest part of recording a key. Byte
-- order is also the order ingest sorts a call's keys in, so the rows a call
-- inserts and the index agree on it.
--
-- The table is not rewritten; its primary key index is rebuilt, holding an
-- exclusive lock on the table meanwhile (seconds per few million keys).
ALTER TABLE ingest_submissions
    ALTER COLUMN source TYPE text COLLATE "C",
    ALTER COLUMN idempotency_key TYPE text COLLATE "C";
