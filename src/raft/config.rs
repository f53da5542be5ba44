//! Configuration of one Raft group member: identity, timing and every resource limit.
//!
//! Every limit of the core is a field here, documented with why it exists; [`Config::validate`]
//! checks them once, when the core is built. The core has no defaults of its own: a node
//! builds this from its settings (`RaftConfig::consensus` in `src/config.rs`, where each
//! default and its reason live), and so do the simulator and the tests, so they all run what
//! a node runs.

use std::fmt;

/// Fixed per-entry overhead counted on top of the payload when sizing messages, the in-flight
/// window, the entry cache and uncommitted bytes: term, index, offsets, kind, timestamp and
/// protobuf tags. An estimate; it only has to be the same everywhere.
pub const ENTRY_OVERHEAD_BYTES: u64 = 48;

/// Configuration of one member of one Raft group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// This member's id; never 0 (0 means "nobody" in `voted_for` and leader hints).
    pub id: u64,
    /// The Raft group this member belongs to; stamped on every outgoing message.
    pub group_id: u64,
    /// Ids of the voting members the group starts with. Fixed for now (no membership change).
    pub voters: Vec<u64>,
    /// Ids of the members that receive the log but never vote, campaign or count toward a
    /// quorum (dissertation §4.2.1): how a new replica catches up before it is made a voter.
    /// Disjoint from `voters`; this member is in exactly one of the two.
    pub learners: Vec<u64>,
    /// Ticks without hearing from a leader before a follower campaigns. The actual timeout is
    /// drawn in `[election_timeout_ticks, 2 * election_timeout_ticks)` after every reset so
    /// that candidates rarely collide (§5.2). Also the check-quorum period of a leader and the
    /// time after which a leadership transfer is abandoned.
    pub election_timeout_ticks: u32,
    /// Ticks between leader heartbeats. Must be well below the election timeout, or followers
    /// would campaign against a healthy leader.
    pub heartbeat_interval_ticks: u32,
    /// Most AppendEntries in flight (sent, not acknowledged) to one follower in replicate
    /// state. Bounds the memory a slow follower can pin on the network path.
    pub inflight_msgs_max: u32,
    /// Most entry bytes in flight to one follower; the second bound on the same window, so a
    /// few huge batches cannot hide behind a small message count.
    pub inflight_bytes_max: u64,
    /// Most entry bytes in one AppendEntries (at least one entry is always sent). Keeps frames
    /// below the wire's frame limit and lets heartbeats interleave with bulk catch-up.
    pub message_bytes_max: u64,
    /// Most bytes of proposals the leader accepts beyond its commit index. Backpressure: a
    /// leader that cannot commit (no quorum) must not buffer unboundedly.
    pub uncommitted_bytes_max: u64,
    /// Bytes of recent, already durable entries kept in memory to serve followers without
    /// reading storage. Entries not yet durable are always kept, whatever this says.
    pub entry_cache_bytes_max: u64,
    /// Run a pre-vote round before a real election (dissertation §9.6), so a node rejoining
    /// from a partition cannot inflate terms and depose a healthy leader.
    pub pre_vote: bool,
    /// A leader steps down when it has not heard from a quorum within an election timeout
    /// (dissertation §6.2), so clients of a partitioned leader are redirected.
    pub check_quorum: bool,
    /// Seed of the election timeout generator; different members should use different seeds.
    pub seed: u64,
}

impl Config {
    /// Checks every limit; the core refuses to start with an invalid configuration.
    ///
    /// # Errors
    /// [`ConfigError`] naming the first field that is out of range.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let fail = |field: &'static str, why: &'static str| Err(ConfigError { field, why });
        if self.id == 0 {
            return fail("id", "0 is reserved for \"nobody\"");
        }
        if !self.voters.contains(&self.id) && !self.learners.contains(&self.id) {
            return fail("voters", "must contain this member's id (or learners must)");
        }
        if self.voters.is_empty() {
            return fail("voters", "a group needs at least one voter");
        }
        let mut members: Vec<u64> = self.voters.iter().chain(&self.learners).copied().collect();
        if members.contains(&0) {
            return fail("voters", "0 is reserved for \"nobody\"");
        }
        members.sort_unstable();
        members.dedup();
        if members.len() != self.voters.len() + self.learners.len() {
            return fail(
                "voters",
                "must not contain duplicates, nor ids that are also learners",
            );
        }
        if self.heartbeat_interval_ticks == 0 {
            return fail("heartbeat_interval_ticks", "must be at least 1");
        }
        if self.election_timeout_ticks <= self.heartbeat_interval_ticks {
            return fail(
                "election_timeout_ticks",
                "must exceed heartbeat_interval_ticks",
            );
        }
        if self.inflight_msgs_max == 0 {
            return fail("inflight_msgs_max", "must be at least 1");
        }
        if self.inflight_bytes_max < self.message_bytes_max {
            return fail("inflight_bytes_max", "must hold at least one full message");
        }
        if self.message_bytes_max < ENTRY_OVERHEAD_BYTES {
            return fail("message_bytes_max", "must hold at least one empty entry");
        }
        if self.uncommitted_bytes_max == 0 {
            return fail("uncommitted_bytes_max", "must be at least 1");
        }
        Ok(())
    }
}

/// A configuration field out of range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub why: &'static str,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid raft config: {} {}", self.field, self.why)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    /// A member of `voters` with small, valid limits.
    fn member(id: u64, voters: Vec<u64>) -> Config {
        Config {
            id,
            group_id: 1,
            voters,
            learners: Vec::new(),
            election_timeout_ticks: 10,
            heartbeat_interval_ticks: 1,
            inflight_msgs_max: 4,
            inflight_bytes_max: 1 << 16,
            message_bytes_max: 1 << 12,
            uncommitted_bytes_max: 1 << 20,
            entry_cache_bytes_max: 1 << 16,
            pre_vote: true,
            check_quorum: true,
            seed: id,
        }
    }

    #[test]
    fn small_limits_are_valid() {
        member(1, vec![1, 2, 3]).validate().unwrap();
    }

    #[test]
    fn rejects_bad_limits() {
        let mut c = member(1, vec![1, 2, 3]);
        c.heartbeat_interval_ticks = 10;
        assert_eq!(c.validate().unwrap_err().field, "election_timeout_ticks");
        let c = member(4, vec![1, 2, 3]);
        assert_eq!(c.validate().unwrap_err().field, "voters");
        let c = member(1, vec![1, 1]);
        assert_eq!(c.validate().unwrap_err().field, "voters");
        let mut c = member(1, vec![1, 2]);
        c.learners = vec![2];
        assert_eq!(c.validate().unwrap_err().field, "voters");
        let mut c = member(4, vec![1, 2, 3]);
        c.learners = vec![4];
        c.validate().unwrap();
        let mut c = member(1, vec![1]);
        c.inflight_bytes_max = c.message_bytes_max - 1;
        assert_eq!(c.validate().unwrap_err().field, "inflight_bytes_max");
    }
}
