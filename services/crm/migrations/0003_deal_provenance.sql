-- Field provenance, one row per deal instead of one per field: `fields`
-- maps each field name to {value, source, event_id, recorded_at} of the
-- event that last set it. A batch merges what it learnt with `||` (the
-- right side wins per field), so a deal costs one row write per batch
-- however many fields its events touched.
CREATE TABLE deal_provenance (
    deal_id text  PRIMARY KEY,
    fields  jsonb NOT NULL
);

INSERT INTO deal_provenance (deal_id, fields)
SELECT deal_id, jsonb_object_agg(field, jsonb_build_object(
           'value', value, 'source', source, 'event_id', event_id,
           'recorded_at', to_char(recorded_at AT TIME ZONE 'UTC',
                                  'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')))
FROM field_provenance
GROUP BY deal_id;

DROP TABLE field_provenance;

-- The one-row-per-field shape, for queries written against it.
CREATE VIEW field_provenance AS
SELECT p.deal_id,
       f.key                                    AS field,
       f.value ->> 'value'                      AS value,
       f.value ->> 'source'                     AS source,
       f.value ->> 'event_id'                   AS event_id,
       (f.value ->> 'recorded_at')::timestamptz AS recorded_at
FROM deal_provenance p, jsonb_each(p.fields) AS f;
