//! The consumer-group coordinator: on the metadata leader, it turns members' requests into
//! metadata commands and keeps their sessions.
//!
//! What a group *is* (members, owners, revocations, generation) lives in the metadata and
//! changes only by committed commands (`groups`); this module decides *when*: a join, a
//! release, a leave, and an expulsion once a member's session or a revocation ran out. Its
//! own state is in memory only, and only timing: when each member was last heard from and
//! since when each revocation waits. Heartbeats therefore cost no log write, and a
//! coordinator that takes over (a new metadata leader) simply starts every member's clock
//! afresh: at worst a dead member keeps its partitions one session longer, never less.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::groups::{Group, TopicPartition};
use crate::metadata::{group_by_topic, Applied, MetadataError};
use crate::proto::metadata_command::Command;
use crate::proto::{
    self, AddMember, ExpelMembers, GroupHeartbeatRequest, GroupHeartbeatResponse, JoinGroupRequest,
    JoinGroupResponse, LeaveGroupRequest, MetadataCommand, ReleasePartitions, TopicPartitions,
};
use crate::raft::Role;

use super::{error, Node};

/// Heartbeats per session: a member heartbeats every third of its session timeout, so two
/// lost heartbeats in a row do not expel it.
const HEARTBEATS_PER_SESSION: u32 = 3;

/// The coordinator's timing, in memory; emptied whenever this node is not the metadata
/// leader, so a coordinator that takes over again never acts on an old clock.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    state: Mutex<SessionState>,
}

#[derive(Debug, Default)]
struct SessionState {
    /// (group, member) → when last heard from.
    heard: HashMap<(String, String), Instant>,
    /// (group, partition, owner) → since when that owner is asked to release it. Keyed by
    /// owner too: a partition asked back from its next owner starts a fresh clock.
    revoking_since: HashMap<(String, TopicPartition, String), Instant>,
    /// Distinguishes the member ids this coordinator hands out.
    issued: u64,
}

impl Sessions {
    fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn heard(&self, group: &str, member: &str) {
        self.lock()
            .heard
            .insert((group.to_owned(), member.to_owned()), Instant::now());
    }
}

impl Node {
    /// A member joins `request.group`: it gets a new member id, and owns at once whatever
    /// no other member holds (everything, in a group that had none).
    ///
    /// # Errors
    /// `NOT_LEADER` away from the metadata leader, or the metadata's refusal (an unknown
    /// topic, a bad session timeout or group name).
    pub async fn join_group(
        &self,
        request: JoinGroupRequest,
    ) -> Result<JoinGroupResponse, proto::Error> {
        let member_id = self.new_member_id(&request.client_id);
        let group = request.group.clone();
        let command = Command::AddMember(AddMember {
            group: group.clone(),
            member_id: member_id.clone(),
            join: Some(request),
        });
        self.propose_group(command).await?;
        self.sessions.heard(&group, &member_id);
        let metadata = self.read_metadata();
        let state = metadata
            .group(&group)
            .ok_or_else(|| error(&MetadataError::UnknownGroup(group.clone())))?;
        let member = state.members.get(&member_id).ok_or_else(|| {
            error(&MetadataError::UnknownMember {
                group: group.clone(),
                member: member_id.clone(),
            })
        })?;
        let (owned, revoking) = assignment_of(state, &member_id);
        Ok(JoinGroupResponse {
            generation: state.generation,
            owned,
            revoking,
            heartbeat_interval_ms: member.session_timeout_ms / HEARTBEATS_PER_SESSION,
            member_id,
        })
    }

    /// A member's heartbeat: keeps its session, records what it released, and answers with
    /// what it owns now. Only a release is a metadata write.
    ///
    /// # Errors
    /// `NOT_LEADER` away from the metadata leader, `UNKNOWN_MEMBER` for a member that is not
    /// in the group (it was expelled: it must join again), `UNKNOWN_GROUP`.
    pub async fn group_heartbeat(
        &self,
        request: GroupHeartbeatRequest,
    ) -> Result<GroupHeartbeatResponse, proto::Error> {
        self.require_metadata_leader()?;
        self.check_member(&request.group, &request.member_id)?;
        self.sessions.heard(&request.group, &request.member_id);
        if !request.released.is_empty() {
            let command = Command::ReleasePartitions(ReleasePartitions {
                group: request.group.clone(),
                member_id: request.member_id.clone(),
                released: request.released,
            });
            self.propose_group(command).await?;
        }
        // Read in place: a heartbeat must not copy the whole metadata.
        let metadata = self.read_metadata();
        let state = metadata.group(&request.group).ok_or_else(|| {
            error(&MetadataError::UnknownMember {
                group: request.group.clone(),
                member: request.member_id.clone(),
            })
        })?;
        let (owned, revoking) = assignment_of(state, &request.member_id);
        Ok(GroupHeartbeatResponse {
            generation: state.generation,
            owned,
            revoking,
        })
    }

    /// A member leaves: what it owned goes to the others at once.
    ///
    /// # Errors
    /// `NOT_LEADER` away from the metadata leader, `UNKNOWN_MEMBER`, `UNKNOWN_GROUP`.
    pub async fn leave_group(&self, request: LeaveGroupRequest) -> Result<(), proto::Error> {
        self.require_metadata_leader()?;
        self.check_member(&request.group, &request.member_id)?;
        let command = Command::ExpelMembers(ExpelMembers {
            group: request.group.clone(),
            member_ids: vec![request.member_id.clone()],
        });
        self.propose_group(command).await?;
        self.sessions
            .lock()
            .heard
            .remove(&(request.group, request.member_id));
        Ok(())
    }

    /// On the metadata leader: expels the members whose session ran out, and the owners of
    /// partitions they were asked to release a rebalance timeout ago and still hold (a member that
    /// heartbeats but never lets go would stall its group for good). Elsewhere: forgets all
    /// timing, so it starts afresh if this node becomes the coordinator.
    pub(super) async fn expire_group_members(&self) {
        if self.metadata.status().role != Some(Role::Leader) {
            let mut state = self.sessions.lock();
            state.heard.clear();
            state.revoking_since.clear();
            return;
        }
        let now = Instant::now();
        let mut expel: Vec<(String, Vec<String>)> = Vec::new();
        {
            let metadata = self
                .metadata_view
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let mut state = self.sessions.lock();
            let mut live_members = std::collections::HashSet::new();
            let mut live_revocations = std::collections::HashSet::new();
            for name in metadata.group_names() {
                let Some(group) = metadata.group(&name) else {
                    continue;
                };
                let mut expired = Vec::new();
                for (member_id, member) in &group.members {
                    let session = Duration::from_millis(u64::from(member.session_timeout_ms));
                    let key = (name.clone(), member_id.clone());
                    let heard = *state.heard.entry(key.clone()).or_insert(now);
                    live_members.insert(key);
                    if now.duration_since(heard) > session {
                        expired.push(member_id.clone());
                    }
                }
                for partition in &group.revoking {
                    let Some(owner) = group.owners.get(partition) else {
                        continue;
                    };
                    let key = (name.clone(), partition.clone(), owner.clone());
                    let since = *state.revoking_since.entry(key.clone()).or_insert(now);
                    live_revocations.insert(key);
                    let deadline = group.members.get(owner).map_or(Duration::ZERO, |m| {
                        Duration::from_millis(u64::from(m.rebalance_timeout_ms))
                    });
                    if now.duration_since(since) > deadline && !expired.contains(owner) {
                        tracing::warn!(group = %name, member = %owner, topic = %partition.0, partition = partition.1, "a member did not release a partition within its rebalance timeout: expelled");
                        expired.push(owner.clone());
                    }
                }
                if !expired.is_empty() {
                    expel.push((name, expired));
                }
            }
            state.heard.retain(|key, _| live_members.contains(key));
            state
                .revoking_since
                .retain(|key, _| live_revocations.contains(key));
        }
        for (group, member_ids) in expel {
            tracing::info!(%group, members = ?member_ids, "consumer-group sessions expired");
            let command = Command::ExpelMembers(ExpelMembers { group, member_ids });
            if let Err(refused) = self.propose_group(command).await {
                tracing::debug!(refused = %refused.message, "expelling members deferred");
                return;
            }
        }
    }

    fn require_metadata_leader(&self) -> Result<(), proto::Error> {
        let status = self.metadata.status();
        if status.role == Some(Role::Leader) {
            Ok(())
        } else {
            let leader = (status.leader_id != 0).then_some(status.leader_id);
            Err(self.not_leader(leader, "the consumer groups (the metadata)"))
        }
    }

    fn read_metadata(&self) -> std::sync::RwLockReadGuard<'_, crate::metadata::Metadata> {
        self.metadata_view
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn check_member(&self, group: &str, member: &str) -> Result<(), proto::Error> {
        let metadata = self.read_metadata();
        let known = metadata
            .group(group)
            .is_some_and(|state| state.members.contains_key(member));
        if known {
            Ok(())
        } else {
            Err(error(&MetadataError::UnknownMember {
                group: group.to_owned(),
                member: member.to_owned(),
            }))
        }
    }

    async fn propose_group(&self, command: Command) -> Result<(), proto::Error> {
        let command = MetadataCommand {
            command: Some(command),
        };
        match self.propose_metadata(command).await? {
            Applied::GroupChanged => Ok(()),
            other => Err(proto::Error {
                code: proto::ErrorCode::Internal as i32,
                message: format!("a group command applied as {other:?}"),
                ..Default::default()
            }),
        }
    }

    /// A member id no other member had: the client's name (for people reading `group
    /// describe`), this node, a per-node count and the clock (unique across coordinators
    /// and their restarts; the metadata refuses an id already in the group anyway).
    fn new_member_id(&self, client_id: &str) -> String {
        let issued = {
            let mut state = self.sessions.lock();
            state.issued += 1;
            state.issued
        };
        let clock = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        let name: String = client_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            .take(64)
            .collect();
        let name = if name.is_empty() { "member" } else { &name };
        format!("{name}-{}-{issued}-{clock:x}", self.id())
    }
}

/// What `member` owns in `group`, and which of those it is asked to release, as the wire
/// lists them.
fn assignment_of(group: &Group, member: &str) -> (Vec<TopicPartitions>, Vec<TopicPartitions>) {
    let owned = group.owned_by(member);
    let revoking: Vec<TopicPartition> = owned
        .iter()
        .filter(|partition| group.revoking.contains(*partition))
        .cloned()
        .collect();
    (group_by_topic(&owned), group_by_topic(&revoking))
}
