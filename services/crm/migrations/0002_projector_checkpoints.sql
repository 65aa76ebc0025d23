-- The projector's hash chain over the records it consumed, per partition
-- (dealmesh_audit::chain): the chain's head after the last record of each
-- batch, written in the batch's transaction. `dealmesh-crm audit verify`
-- re-reads the log and reports the first record that differs.
CREATE TABLE projector_checkpoints (
    topic     text    NOT NULL,
    partition integer NOT NULL,
    "offset"  bigint  NOT NULL,
    -- 64 hex digits: SHA-256 chain head after the record at "offset".
    hash      text    NOT NULL,
    PRIMARY KEY (topic, partition, "offset")
);
