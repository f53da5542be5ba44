//! The peer addresses a node has learned from the metadata, kept on disk (`peers.toml` in
//! the data directory) so that a restart knows them before any leader reaches it.
//!
//! Why it is needed: a node learns where the nodes that joined after it listen only by
//! applying their registrations from the metadata log, and after a restart it applies
//! nothing until a metadata leader tells it what is committed (the commit index is not
//! persisted). But its peer listener refuses connections from node ids it does not know, so
//! a leader that joined later could never reach it: the restarted node would stay cut off,
//! and a partition whose majority needs it would stall. Founders' addresses come from the
//! `[peers]` configuration and win over the book.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::NodeId;
use crate::storage::{write_file_durably, StorageError};

/// Name of the file, in the data directory.
pub const PEER_BOOK_FILE: &str = "peers.toml";

/// The file's content: node id (as TOML keys are strings) → peer address.
#[derive(Debug, Default, Serialize, Deserialize)]
struct PeerBookFile {
    peers: BTreeMap<String, String>,
}

/// Known peer addresses, and the file they are kept in.
#[derive(Debug)]
pub struct PeerBook {
    path: PathBuf,
    peers: BTreeMap<NodeId, String>,
}

impl PeerBook {
    /// The book of `data_dir`; empty when the file is missing or unreadable (it is a cache of
    /// the metadata: the node learns the addresses again from the leader, and a damaged book
    /// must not keep a node from starting).
    pub fn load(data_dir: &Path) -> PeerBook {
        let path = data_dir.join(PEER_BOOK_FILE);
        let peers = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| toml::from_str::<PeerBookFile>(&text).ok())
            .map(|file| {
                file.peers
                    .into_iter()
                    .filter_map(|(id, address)| Some((id.parse().ok()?, address)))
                    .collect()
            })
            .unwrap_or_default();
        PeerBook { path, peers }
    }

    /// Every known peer and its address.
    pub fn peers(&self) -> &BTreeMap<NodeId, String> {
        &self.peers
    }

    /// Records `peers` and forgets `removed` (nodes the metadata records removed: ids are
    /// never reused, so the book would only grow with them); rewrites the file (durably)
    /// only when something changed. Nodes in neither are kept: a metadata view that lags
    /// after a restart must not empty the book that restart needed.
    ///
    /// # Errors
    /// The file could not be written (the book in memory is updated anyway).
    pub fn record(
        &mut self,
        peers: impl IntoIterator<Item = (NodeId, String)>,
        removed: &[NodeId],
    ) -> Result<(), StorageError> {
        let mut changed = false;
        for (id, address) in peers {
            if self.peers.get(&id) != Some(&address) {
                self.peers.insert(id, address);
                changed = true;
            }
        }
        for id in removed {
            changed |= self.peers.remove(id).is_some();
        }
        if !changed {
            return Ok(());
        }
        let file = PeerBookFile {
            peers: self
                .peers
                .iter()
                .map(|(id, address)| (id.to_string(), address.clone()))
                .collect(),
        };
        let text = toml::to_string_pretty(&file).expect("a map of strings serializes");
        write_file_durably(&self.path, text.as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_peers_are_known_after_a_reload_removed_ones_are_not_and_a_damaged_file_reads_as_empty(
    ) {
        let dir = tempfile::tempdir().unwrap();
        let mut book = PeerBook::load(dir.path());
        assert!(book.peers().is_empty());
        let joined = [
            (4, "10.0.0.4:9401".into()),
            (5, "10.0.0.5:9401".into()),
            (6, "10.0.0.6:9401".into()),
        ];
        book.record(joined, &[]).unwrap();
        book.record([(5, "10.0.0.50:9401".into())], &[6]).unwrap();
        let reloaded = PeerBook::load(dir.path());
        let expected: BTreeMap<NodeId, String> = [
            (4, "10.0.0.4:9401".to_string()),
            (5, "10.0.0.50:9401".to_string()),
        ]
        .into();
        assert_eq!(reloaded.peers(), &expected, "5 moved, 6 was removed");

        std::fs::write(dir.path().join(PEER_BOOK_FILE), "peers = 7").unwrap();
        assert!(PeerBook::load(dir.path()).peers().is_empty());
    }
}
