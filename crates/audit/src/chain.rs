//! A per-partition hash chain over the log's records, and its verification.
//!
//! Each record extends its partition's chain:
//!
//! ```text
//! h(-1) = 32 zero bytes            (the start of a partition)
//! h(n)  = SHA-256(h(prev) || offset || len(key) || key || len(value) || value)
//! ```
//!
//! with the offset and lengths as 8-byte big-endian signed integers and a
//! missing key or value as length -1, so no two different records hash
//! alike. Whoever applies the log (the CRM projector) keeps checkpoints, the
//! chain hash after a given offset; [`verify_chain`] re-reads a range of the
//! partition, recomputes the chain and reports the first checkpoint that
//! differs, that is the first range of records that was altered or lost.

use std::fmt;

use dealmesh_eventlog::KafkaSettings;
use rdkafka::Offset;
use sha2::{Digest, Sha256};
use tracing::instrument;

use crate::Result;
use crate::reader;

/// The chain hash after `offset` on `partition`, hex-encoded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ChainCheckpoint {
    pub partition: i32,
    pub offset: i64,
    pub hash: String,
}

/// One partition's chain, record by record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HashChain {
    partition: i32,
    head: [u8; 32],
    /// The offset of the last record in the chain; `None` at the start.
    last_offset: Option<i64>,
}

impl HashChain {
    /// The chain of `partition` before its first record.
    pub fn new(partition: i32) -> Self {
        Self {
            partition,
            head: [0; 32],
            last_offset: None,
        }
    }

    /// The chain as it was at `checkpoint`, to go on from the record after
    /// it. Fails if the hash is not 64 hex digits.
    pub fn resume(checkpoint: &ChainCheckpoint) -> Result<Self, hex::FromHexError> {
        let mut head = [0; 32];
        hex::decode_to_slice(&checkpoint.hash, &mut head)?;
        Ok(Self {
            partition: checkpoint.partition,
            head,
            last_offset: Some(checkpoint.offset),
        })
    }

    /// Adds the record at `offset` and returns the new head.
    pub fn push(&mut self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> [u8; 32] {
        let mut hasher = Sha256::new();
        hasher.update(self.head);
        hasher.update(offset.to_be_bytes());
        for part in [key, value] {
            match part {
                Some(bytes) => {
                    hasher.update(i64::try_from(bytes.len()).unwrap_or(i64::MAX).to_be_bytes());
                    hasher.update(bytes);
                }
                None => hasher.update((-1_i64).to_be_bytes()),
            }
        }
        self.head = hasher.finalize().into();
        self.last_offset = Some(offset);
        self.head
    }

    pub fn partition(&self) -> i32 {
        self.partition
    }

    /// The offset of the last record in the chain, `None` at the start.
    pub fn last_offset(&self) -> Option<i64> {
        self.last_offset
    }

    /// The head as a checkpoint, `None` before the first record.
    pub fn checkpoint(&self) -> Option<ChainCheckpoint> {
        self.last_offset.map(|offset| ChainCheckpoint {
            partition: self.partition,
            offset,
            hash: hex::encode(self.head),
        })
    }
}

/// The first checkpoint the log does not match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainMismatch {
    pub partition: i32,
    /// The offset of the checkpoint that differs.
    pub offset: i64,
    /// The last offset at which the chain still matched a checkpoint (or
    /// the start of the range): the altered or lost record is after it and
    /// at most at `offset`.
    pub last_good_offset: Option<i64>,
    /// The checkpoint's hash.
    pub expected: String,
    /// The recomputed hash at `offset`; `None` if the log has no record at
    /// that offset (lost, or the log ends before it).
    pub found: Option<String>,
}

impl fmt::Display for ChainMismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let after = self
            .last_good_offset
            .map_or_else(|| "the start".to_owned(), |o| format!("offset {o}"));
        match &self.found {
            Some(found) => write!(
                f,
                "partition {} offset {}: the log hashes to {found}, the checkpoint says {}; \
                 a record after {after} and at most at offset {} was altered",
                self.partition, self.offset, self.expected, self.offset
            ),
            None => write!(
                f,
                "partition {} offset {}: the log has no record at this checkpoint's offset; \
                 records after {after} were lost",
                self.partition, self.offset
            ),
        }
    }
}

/// The outcome of a verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainVerification {
    pub partition: i32,
    /// Records hashed.
    pub records: u64,
    /// Checkpoints that matched, before the first mismatch.
    pub matched: u64,
    pub first_mismatch: Option<ChainMismatch>,
    /// The chain's head at the end of what was read.
    pub head: Option<ChainCheckpoint>,
}

/// Compares a chain against checkpoints as records go by; usable over any
/// source of records (see [`verify_chain`] for the log).
#[derive(Debug)]
pub struct ChainVerifier {
    chain: HashChain,
    /// Pending checkpoints of this partition, in offset order.
    pending: std::collections::VecDeque<ChainCheckpoint>,
    last_good: Option<i64>,
    records: u64,
    matched: u64,
    mismatch: Option<ChainMismatch>,
}

impl ChainVerifier {
    /// Starts from `chain`; checkpoints of other partitions, or at or before
    /// the chain's start, are ignored.
    pub fn new(chain: HashChain, checkpoints: &[ChainCheckpoint]) -> Self {
        let start = chain.last_offset();
        let mut pending: Vec<ChainCheckpoint> = checkpoints
            .iter()
            .filter(|c| c.partition == chain.partition() && start.is_none_or(|s| c.offset > s))
            .cloned()
            .collect();
        pending.sort_by_key(|c| c.offset);
        Self {
            last_good: start,
            chain,
            pending: pending.into(),
            records: 0,
            matched: 0,
            mismatch: None,
        }
    }

    /// Adds a record; returns false once a mismatch is found (reading on is
    /// pointless).
    pub fn push(&mut self, offset: i64, key: Option<&[u8]>, value: Option<&[u8]>) -> bool {
        if self.mismatch.is_some() {
            return false;
        }
        // A checkpoint this record skipped over names a record that is gone.
        if let Some(next) = self.pending.front()
            && next.offset < offset
        {
            self.mismatch = Some(self.missing(next.clone()));
            return false;
        }
        let head = hex::encode(self.chain.push(offset, key, value));
        self.records += 1;
        if let Some(next) = self.pending.front()
            && next.offset == offset
        {
            let checkpoint = self.pending.pop_front().unwrap_or_else(|| unreachable!());
            if checkpoint.hash.eq_ignore_ascii_case(&head) {
                self.matched += 1;
                self.last_good = Some(offset);
            } else {
                self.mismatch = Some(ChainMismatch {
                    partition: checkpoint.partition,
                    offset,
                    last_good_offset: self.last_good,
                    expected: checkpoint.hash,
                    found: Some(head),
                });
                return false;
            }
        }
        true
    }

    /// The outcome once every record was pushed: a checkpoint beyond the
    /// last record names records that are gone.
    pub fn finish(mut self) -> ChainVerification {
        if self.mismatch.is_none()
            && let Some(next) = self.pending.pop_front()
        {
            self.mismatch = Some(self.missing(next));
        }
        ChainVerification {
            partition: self.chain.partition(),
            records: self.records,
            matched: self.matched,
            first_mismatch: self.mismatch,
            head: self.chain.checkpoint(),
        }
    }

    fn missing(&self, checkpoint: ChainCheckpoint) -> ChainMismatch {
        ChainMismatch {
            partition: checkpoint.partition,
            offset: checkpoint.offset,
            last_good_offset: self.last_good,
            expected: checkpoint.hash,
            found: None,
        }
    }
}

/// Re-reads `partition` of `topic` from the start of the chain (`from`, a
/// trusted checkpoint, or the beginning of the partition) to its end,
/// recomputes the hash chain and compares it with `checkpoints`. Stops at
/// the first mismatch.
#[instrument(skip_all, fields(%topic, partition), err)]
pub async fn verify_chain(
    settings: &KafkaSettings,
    topic: &str,
    partition: i32,
    from: Option<&ChainCheckpoint>,
    checkpoints: &[ChainCheckpoint],
) -> Result<ChainVerification> {
    let chain = match from {
        Some(checkpoint) => HashChain::resume(checkpoint).map_err(|err| {
            crate::Error::BadCheckpoint(format!(
                "partition {} offset {}: hash {:?}: {err}",
                checkpoint.partition, checkpoint.offset, checkpoint.hash
            ))
        })?,
        None => HashChain::new(partition),
    };
    let start = match chain.last_offset() {
        Some(offset) => Offset::Offset(offset + 1),
        None => Offset::Beginning,
    };
    let mut verifier = ChainVerifier::new(chain, checkpoints);
    let (settings, topic) = (settings.clone(), topic.to_owned());
    crate::blocking(move || {
        reader::scan_partition(&settings, &topic, partition, start, |record| {
            Ok(verifier.push(
                record.offset,
                record.key.as_deref(),
                record.value.as_deref(),
            ))
        })?;
        Ok(verifier.finish())
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records() -> Vec<(i64, Vec<u8>, Vec<u8>)> {
        (0..10)
            .map(|i| {
                (
                    i,
                    format!("deal-{}", i % 3).into_bytes(),
                    format!("event {i}").into_bytes(),
                )
            })
            .collect()
    }

    /// A checkpoint after every third record, as a projector might keep.
    fn checkpoints(records: &[(i64, Vec<u8>, Vec<u8>)]) -> Vec<ChainCheckpoint> {
        let mut chain = HashChain::new(2);
        let mut checkpoints = Vec::new();
        for (offset, key, value) in records {
            chain.push(*offset, Some(key), Some(value));
            if offset % 3 == 2 {
                checkpoints.push(chain.checkpoint().unwrap());
            }
        }
        checkpoints
    }

    fn verify(
        records: &[(i64, Vec<u8>, Vec<u8>)],
        checkpoints: &[ChainCheckpoint],
    ) -> ChainVerification {
        let mut verifier = ChainVerifier::new(HashChain::new(2), checkpoints);
        for (offset, key, value) in records {
            if !verifier.push(*offset, Some(key), Some(value)) {
                break;
            }
        }
        verifier.finish()
    }

    #[test]
    fn an_unaltered_log_matches_every_checkpoint() {
        let records = records();
        let checkpoints = checkpoints(&records);
        let result = verify(&records, &checkpoints);
        assert_eq!(result.first_mismatch, None);
        assert_eq!((result.records, result.matched), (10, 3));
        assert_eq!(result.head.unwrap().offset, 9);
    }

    #[test]
    fn an_altered_record_is_found_between_two_checkpoints() {
        let mut records = records();
        let checkpoints = checkpoints(&records);
        records[4].2 = b"event 4, edited".to_vec();
        let mismatch = verify(&records, &checkpoints).first_mismatch.unwrap();
        assert_eq!((mismatch.offset, mismatch.last_good_offset), (5, Some(2)));
        assert_eq!(mismatch.expected, checkpoints[1].hash);
        assert!(mismatch.found.is_some_and(|f| f != checkpoints[1].hash));
    }

    #[test]
    fn a_lost_record_or_a_changed_key_is_found_too() {
        let mut records = records();
        let checkpoints = checkpoints(&records);
        records.remove(5);
        let mismatch = verify(&records, &checkpoints).first_mismatch.unwrap();
        assert_eq!((mismatch.offset, mismatch.found.clone()), (5, None));
        assert!(
            mismatch
                .to_string()
                .contains("records after offset 2 were lost"),
            "{mismatch}"
        );

        let mut records = self::records();
        records[0].1 = b"deal-x".to_vec();
        let mismatch = verify(&records, &checkpoints).first_mismatch.unwrap();
        assert_eq!((mismatch.offset, mismatch.last_good_offset), (2, None));

        let truncated = &self::records()[..7];
        let mismatch = verify(truncated, &checkpoints).first_mismatch.unwrap();
        assert_eq!((mismatch.offset, mismatch.found), (8, None));
    }

    #[test]
    fn a_chain_resumes_from_a_checkpoint() {
        let records = records();
        let checkpoints = checkpoints(&records);
        let mut resumed = HashChain::resume(&checkpoints[0]).unwrap();
        for (offset, key, value) in &records[3..] {
            resumed.push(*offset, Some(key), Some(value));
        }
        let mut whole = HashChain::new(2);
        for (offset, key, value) in &records {
            whole.push(*offset, Some(key), Some(value));
        }
        assert_eq!(resumed, whole);
        // A missing key and an empty key are different records.
        let mut a = HashChain::new(0);
        let mut b = HashChain::new(0);
        assert_ne!(
            a.push(0, None, Some(b"v")),
            b.push(0, Some(b""), Some(b"v"))
        );
    }
}
