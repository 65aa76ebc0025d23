//! The projector's hash checkpoints: each batch extends, per partition, the
//! hash chain of `dealmesh_audit::chain` over the records it consumed
//! (offset, key, value; undecodable records included) and stores the head
//! after its last record in `projector_checkpoints`, in the batch's own
//! transaction, so a checkpoint exists exactly for what was committed.
//!
//! A chain starts at offset 0: a read model projected from the first
//! offset (a fresh schema, a rebuild) has checkpoints for every batch. A
//! partition whose stored offset is past 0 with no checkpoint before it
//! (a read model older than the checkpoints) gets none until it is
//! rebuilt: a chain that did not start at the beginning would prove
//! nothing about the records before it.

use std::collections::BTreeMap;

use dealmesh_audit::{ChainCheckpoint, HashChain};
use sqlx::PgConnection;

/// One consumed record.
pub struct Consumed<'a> {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
}

/// Extends the chains of the partitions in `records` (in offset order per
/// partition, each partition starting at its `floors` entry, the stored
/// next offset before the batch) and writes their new heads.
pub async fn record(
    conn: &mut PgConnection,
    topic: &str,
    floors: &BTreeMap<i32, i64>,
    records: &[Consumed<'_>],
) -> Result<(), sqlx::Error> {
    let mut partitions: Vec<i32> = records.iter().map(|r| r.partition).collect();
    partitions.sort_unstable();
    partitions.dedup();
    if partitions.is_empty() {
        return Ok(());
    }
    let heads: BTreeMap<i32, (i64, String)> = sqlx::query_as::<_, (i32, i64, String)>(
        "SELECT DISTINCT ON (partition) partition, \"offset\", hash FROM projector_checkpoints
         WHERE topic = $1 AND partition = ANY($2) ORDER BY partition, \"offset\" DESC",
    )
    .bind(topic)
    .bind(&partitions)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .map(|(partition, offset, hash)| (partition, (offset, hash)))
    .collect();
    let mut rows: Vec<(i32, i64, String)> = Vec::with_capacity(partitions.len());
    for partition in partitions {
        let floor = floors.get(&partition).copied().unwrap_or(0);
        let mut chain = match heads.get(&partition) {
            Some((offset, hash)) if *offset == floor - 1 => {
                match HashChain::resume(&ChainCheckpoint {
                    partition,
                    offset: *offset,
                    hash: hash.clone(),
                }) {
                    Ok(chain) => chain,
                    Err(error) => {
                        tracing::warn!(partition, %error, "stored checkpoint unreadable, chain not extended");
                        continue;
                    }
                }
            }
            None if floor == 0 => HashChain::new(partition),
            _ => continue,
        };
        for r in records.iter().filter(|r| r.partition == partition) {
            chain.push(r.offset, r.key, r.value);
        }
        if let Some(head) = chain.checkpoint() {
            rows.push((partition, head.offset, head.hash));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO projector_checkpoints (topic, partition, \"offset\", hash)
         SELECT $1, p, o, h FROM UNNEST($2::int[], $3::bigint[], $4::text[]) AS t(p, o, h)
         ON CONFLICT DO NOTHING",
    )
    .bind(topic)
    .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|r| r.2.as_str()).collect::<Vec<_>>())
    .execute(&mut *conn)
    .await?;
    Ok(())
}
