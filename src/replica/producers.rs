//! Idempotent-producer state of one partition: for each producer id, its epoch and its last
//! few batches, so that a retried batch is recognised instead of written twice.
//!
//! The table is a function of the log: every replica builds it from the data entries in its
//! own log (committed or not) as they are appended, and rebuilds it from the log's tail after
//! a truncation or a restart. So when leadership moves, the new leader already knows every
//! batch the old one wrote to it, and a producer's retry of such a batch is answered with the
//! original offset rather than appended again.
//!
//! A producer the table does not know may only start at sequence 0 (as in Kafka): otherwise
//! a producer whose first batch was lost in transit could have its second batch appended
//! ahead of the first. A batch with another sequence is refused with UNKNOWN_PRODUCER_ID.
//! That is also the answer when the table forgot a producer that did write: after a restart
//! or a snapshot install the table is rebuilt from the log alone, so it no longer knows a
//! producer whose batches retention removed, or that was idle for longer than the rebuild
//! window (`storage.producer_rebuild_entries_max` entries). The client then bumps its epoch and
//! starts the partition over at sequence 0 (Kafka's KIP-360), since the refused batch was not
//! written and every earlier one of it is answered. What this does not promise: a retry of a
//! batch the table forgot is written again, so only a retry that old could be duplicated.

use std::collections::{HashMap, VecDeque};

/// Batches remembered per producer: a producer with at most this many batches in flight
/// gets every retry deduplicated (Kafka keeps five for the same reason).
pub const PRODUCER_BATCHES_REMEMBERED: usize = 5;

/// The producer fields of one record batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerBatch {
    /// Producer id; 0 means "not idempotent" and is never tracked.
    pub producer_id: u64,
    /// The producer's epoch.
    pub epoch: u32,
    /// Sequence of the batch's first record.
    pub base_sequence: u32,
    /// Number of records.
    pub record_count: u32,
}

/// Where an earlier copy of a batch lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredBatch {
    /// Raft index of its entry.
    pub index: u64,
    /// Offset of its first record.
    pub base_offset: u64,
}

/// What to do with an incoming batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Append it.
    Append,
    /// It was already written there: answer with that, append nothing.
    Duplicate(StoredBatch),
    /// Its sequence leaves a gap after the producer's last batch (or goes backwards beyond
    /// what is remembered): refuse it.
    OutOfOrder {
        /// The sequence the next batch must start at.
        expected: u32,
    },
    /// Its epoch is older than the producer's current one: another instance took over.
    Fenced {
        /// The current epoch.
        current: u32,
    },
    /// The producer is unknown and the batch does not start at sequence 0: refuse it (see
    /// the module doc).
    UnknownProducer,
}

#[derive(Debug, Clone, Copy)]
struct Remembered {
    base_sequence: u32,
    record_count: u32,
    stored: StoredBatch,
}

#[derive(Debug, Clone, Default)]
struct Producer {
    epoch: u32,
    batches: VecDeque<Remembered>,
}

impl Producer {
    fn next_sequence(&self) -> Option<u32> {
        self.batches
            .back()
            .map(|b| b.base_sequence.wrapping_add(b.record_count))
    }
}

/// The table of one partition.
#[derive(Debug, Clone, Default)]
pub struct ProducerTable {
    producers: HashMap<u64, Producer>,
}

impl ProducerTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Decides what to do with `batch` given what the log holds.
    pub fn check(&self, batch: &ProducerBatch) -> Verdict {
        if batch.producer_id == 0 {
            return Verdict::Append;
        }
        let Some(producer) = self.producers.get(&batch.producer_id) else {
            // Appending a later batch would let it overtake an earlier one still in transit.
            return if batch.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::UnknownProducer
            };
        };
        if batch.epoch < producer.epoch {
            return Verdict::Fenced {
                current: producer.epoch,
            };
        }
        if batch.epoch > producer.epoch {
            // A new epoch restarts the sequence.
            return if batch.base_sequence == 0 {
                Verdict::Append
            } else {
                Verdict::OutOfOrder { expected: 0 }
            };
        }
        let same = |b: &&Remembered| {
            b.base_sequence == batch.base_sequence && b.record_count == batch.record_count
        };
        if let Some(earlier) = producer.batches.iter().find(same) {
            return Verdict::Duplicate(earlier.stored);
        }
        match producer.next_sequence() {
            Some(expected) if expected != batch.base_sequence => Verdict::OutOfOrder { expected },
            _ => Verdict::Append,
        }
    }

    /// Records a batch that is now in the log, at `stored`.
    pub fn record(&mut self, batch: &ProducerBatch, stored: StoredBatch) {
        if batch.producer_id == 0 {
            return;
        }
        let producer = self.producers.entry(batch.producer_id).or_default();
        // The leader records its own batches when proposing and again when writing them.
        if producer
            .batches
            .iter()
            .any(|b| b.stored.index == stored.index)
        {
            return;
        }
        if batch.epoch != producer.epoch {
            producer.epoch = batch.epoch;
            producer.batches.clear();
        }
        producer.batches.push_back(Remembered {
            base_sequence: batch.base_sequence,
            record_count: batch.record_count,
            stored,
        });
        while producer.batches.len() > PRODUCER_BATCHES_REMEMBERED {
            producer.batches.pop_front();
        }
    }

    /// Forgets everything (before a rebuild from the log).
    pub fn clear(&mut self) {
        self.producers.clear();
    }

    /// Number of producers tracked.
    pub fn len(&self) -> usize {
        self.producers.len()
    }

    /// True when no producer is tracked.
    pub fn is_empty(&self) -> bool {
        self.producers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(producer_id: u64, epoch: u32, base_sequence: u32, record_count: u32) -> ProducerBatch {
        ProducerBatch {
            producer_id,
            epoch,
            base_sequence,
            record_count,
        }
    }

    fn at(index: u64) -> StoredBatch {
        StoredBatch {
            index,
            base_offset: index * 10,
        }
    }

    #[test]
    fn a_retried_batch_is_a_duplicate_with_its_original_place() {
        let mut table = ProducerTable::new();
        let first = batch(7, 0, 0, 3);
        assert_eq!(table.check(&first), Verdict::Append);
        table.record(&first, at(1));
        let second = batch(7, 0, 3, 2);
        assert_eq!(table.check(&second), Verdict::Append);
        table.record(&second, at(2));
        assert_eq!(table.check(&first), Verdict::Duplicate(at(1)));
        assert_eq!(table.check(&second), Verdict::Duplicate(at(2)));
    }

    #[test]
    fn a_gap_is_out_of_order_and_an_old_epoch_is_fenced() {
        let mut table = ProducerTable::new();
        table.record(&batch(7, 1, 0, 3), at(1));
        assert_eq!(
            table.check(&batch(7, 1, 5, 1)),
            Verdict::OutOfOrder { expected: 3 }
        );
        assert_eq!(
            table.check(&batch(7, 0, 3, 1)),
            Verdict::Fenced { current: 1 }
        );
        assert_eq!(
            table.check(&batch(7, 2, 0, 1)),
            Verdict::Append,
            "a new epoch restarts at 0"
        );
        assert_eq!(
            table.check(&batch(7, 2, 4, 1)),
            Verdict::OutOfOrder { expected: 0 }
        );
    }

    #[test]
    fn only_the_last_few_batches_are_remembered() {
        let mut table = ProducerTable::new();
        for i in 0..(PRODUCER_BATCHES_REMEMBERED as u32 + 2) {
            table.record(&batch(7, 0, i, 1), at(u64::from(i) + 1));
        }
        // The oldest ones are gone: a retry that old is a sequence going backwards.
        assert!(matches!(
            table.check(&batch(7, 0, 0, 1)),
            Verdict::OutOfOrder { .. }
        ));
        assert_eq!(table.check(&batch(7, 0, 6, 1)), Verdict::Duplicate(at(7)));
    }

    #[test]
    fn batches_without_a_producer_id_are_appended_whatever_their_sequence() {
        let table = ProducerTable::new();
        assert_eq!(table.check(&batch(0, 0, 99, 1)), Verdict::Append);
        assert_eq!(table.check(&batch(0, 3, 0, 1)), Verdict::Append);
    }

    #[test]
    fn an_unknown_producer_must_start_at_sequence_zero() {
        let mut table = ProducerTable::new();
        // Its first batch is still in transit: the second must not overtake it.
        assert_eq!(table.check(&batch(42, 0, 3, 2)), Verdict::UnknownProducer);
        assert_eq!(table.check(&batch(42, 0, 0, 3)), Verdict::Append);
        table.record(&batch(42, 0, 0, 3), at(1));
        assert_eq!(table.check(&batch(42, 0, 3, 2)), Verdict::Append);
        // Any epoch may start at 0: a producer that bumped its epoch after the table forgot it.
        assert_eq!(table.check(&batch(43, 5, 0, 1)), Verdict::Append);
        assert_eq!(table.check(&batch(43, 5, 1, 1)), Verdict::UnknownProducer);
    }

    #[test]
    fn a_rebuilt_table_forgets_producers_whose_batches_are_gone() {
        let mut table = ProducerTable::new();
        table.record(&batch(42, 0, 0, 3), at(1));
        table.record(&batch(43, 0, 0, 1), at(2));
        // A rebuild from a log whose first entry retention removed.
        table.clear();
        table.record(&batch(43, 0, 0, 1), at(2));
        assert_eq!(
            table.check(&batch(42, 0, 3, 1)),
            Verdict::UnknownProducer,
            "the forgotten producer's next batch is refused, not appended"
        );
        assert_eq!(
            table.check(&batch(42, 1, 0, 1)),
            Verdict::Append,
            "once it bumps its epoch and starts over at 0, it is known again"
        );
        assert_eq!(table.check(&batch(43, 0, 1, 1)), Verdict::Append);
    }
}
