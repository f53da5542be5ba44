//! What an operator asks of a node: whether it is ready to serve (`/ready`), and the
//! figures no request path measures (consumer-group lag, peer links, disk space, readiness
//! itself), collected into the node's metric registry.
//!
//! It owns the readiness policy and the collectors. It does not own the metric names or
//! the exporter ([`crate::metrics`] does) nor the HTTP listener that answers `/metrics`,
//! `/health` and `/ready` (the daemon's ops listener does, calling [`readiness`] and
//! [`collect`]).

use std::collections::HashMap;
use std::path::Path;

use crate::metadata::METADATA_GROUP_ID;
use crate::metrics::{self, GroupMetrics};
use crate::replica::ReplicaStatus;

use super::Node;

/// Whether the node is ready to serve: `Ok` when the metadata group has a leader and every
/// local replica knows a leader and is within `ops.ready_lag_entries_max`
/// ([`crate::config::OpsConfig`]) entries of its announced commit index; otherwise the first reason it is not.
///
/// # Errors
/// The reason, as a sentence for the `/ready` body.
pub fn readiness(node: &Node) -> Result<(), String> {
    let registry = metrics::node(node.id());
    let lag_max = node.config().ops.ready_lag_entries_max;
    let status = node.metadata_replica().status();
    let metadata = registry.group(METADATA_GROUP_ID);
    if let Some(reason) = lag_reason(&metadata, "cluster metadata", &status, lag_max) {
        return Err(reason);
    }
    let mut partitions = node.local_partitions();
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    for local in partitions {
        let what = format!("{}/{}", local.topic, local.partition);
        let status = local.handle.status();
        if let Some(reason) = lag_reason(&registry.group(local.group_id), &what, &status, lag_max) {
            return Err(reason);
        }
    }
    Ok(())
}

/// Refreshes what no request path measures: consumer-group lag, peer links, readiness,
/// disk space. The process figures are read by the exporter at each scrape instead.
pub fn collect(node: &Node) {
    let registry = metrics::node(node.id());
    registry.set_group_lag(consumer_group_lag(node));
    registry.set_consumer_groups(&consumer_groups(node));
    for &peer in node.config().peers.keys() {
        if let Some(stats) = node.transport().stats(peer) {
            registry.set_peer(
                peer,
                stats.sent_messages,
                stats.dropped_messages,
                stats.reconnects,
                stats.queued_messages,
            );
        }
    }
    registry.set_ready(readiness(node).is_ok());
    if let Some((free, size)) = disk_space(&node.config().data_dir) {
        registry.set_data_dir_space(free, size);
    }
    registry.upkeep();
}

/// Why a replica is not caught up with its leader (more than `lag_max` entries behind), or
/// `None` if it is. `metrics` holds how far the leader's commit index has been seen to get.
fn lag_reason(
    metrics: &GroupMetrics,
    what: &str,
    status: &ReplicaStatus,
    lag_max: u64,
) -> Option<String> {
    if let Some(failure) = &status.failed {
        return Some(format!("{what}: replica failed: {failure}"));
    }
    if let Some(reason) = &status.storage_full {
        return Some(format!("{what}: disk full, retrying writes: {reason}"));
    }
    if status.leader_id == 0 {
        return Some(format!("{what}: no leader known"));
    }
    let seen = metrics.leader_commit_seen();
    let behind = seen.saturating_sub(status.commit_index);
    (behind > lag_max)
        .then(|| format!("{what}: {behind} entries behind the leader's commit index {seen}"))
}

/// High watermark minus committed offset for every group offset of a partition replicated
/// here, from this node's applied metadata and its local replicas' high watermarks.
fn consumer_group_lag(node: &Node) -> Vec<((String, String, u32), u64)> {
    let local: HashMap<(String, u32), u64> = node
        .local_partitions()
        .into_iter()
        .map(|p| ((p.topic, p.partition), p.handle.status().high_watermark))
        .collect();
    let metadata = node.metadata();
    metadata
        .group_offsets()
        .filter_map(|((group, topic, partition), &offset)| {
            let high_watermark = local.get(&(topic.clone(), *partition))?;
            Some((
                (group.clone(), topic.clone(), *partition),
                high_watermark.saturating_sub(offset),
            ))
        })
        .collect()
}

/// Every consumer group, from this node's applied metadata (one with only committed
/// offsets reads 0 members).
fn consumer_groups(node: &Node) -> Vec<metrics::ConsumerGroupSample> {
    let metadata = node.metadata();
    let counts = metadata.partition_counts();
    metadata
        .group_names()
        .into_iter()
        .map(|name| match metadata.group(&name) {
            Some(group) => metrics::ConsumerGroupSample {
                members: group.members.len(),
                generation: group.generation,
                rebalancing: group.state(&counts) == crate::groups::GroupState::Rebalancing,
                rebalances: group.rebalances,
                group: name,
            },
            // Only committed offsets: no members, nothing handed over yet.
            None => metrics::ConsumerGroupSample {
                members: 0,
                generation: 0,
                rebalancing: false,
                rebalances: 0,
                group: name,
            },
        })
        .collect()
}

/// Free and total bytes of the file system holding `dir`, or `None` if it cannot be asked.
fn disk_space(dir: &Path) -> Option<(u64, u64)> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut stats: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is a valid NUL-terminated string and `stats` a writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stats) } != 0 {
        return None;
    }
    let fragment = stats.f_frsize as u64;
    Some((
        stats.f_bavail as u64 * fragment,
        stats.f_blocks as u64 * fragment,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{self, RaftMessage};
    use crate::replica::Role;

    #[test]
    fn a_follower_far_behind_its_leader_is_not_caught_up() {
        // A node id no other test uses, so this registry holds only what this test records.
        let group = metrics::node(9_002).group(11);
        let lag_max = 1_000;
        let follower = ReplicaStatus {
            role: Some(Role::Follower),
            leader_id: 1,
            commit_index: 10,
            ..Default::default()
        };
        group.received(&RaftMessage {
            body: Some(proto::raft_message::Body::AppendEntries(
                proto::AppendEntries {
                    leader_commit: 10 + lag_max + 1,
                    ..Default::default()
                },
            )),
            ..Default::default()
        });
        assert!(lag_reason(&group, "t/0", &follower, lag_max)
            .unwrap()
            .contains("behind"));
        let caught_up = ReplicaStatus {
            commit_index: 11,
            ..follower.clone()
        };
        assert_eq!(lag_reason(&group, "t/0", &caught_up, lag_max), None);
        let leaderless = ReplicaStatus {
            leader_id: 0,
            ..caught_up
        };
        assert!(lag_reason(&group, "t/0", &leaderless, lag_max)
            .unwrap()
            .contains("no leader"));
    }
}
