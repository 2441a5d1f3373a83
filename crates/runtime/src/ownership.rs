//! Which node runs a session. A session id names the node that created it
//! (`<node>-<unique>`), and that stays true unless the session was moved (a drain,
//! `moves.rs`): then the store's record, which names the node that owns it now, is the
//! truth, and the id's node part is only a hint. This is what this process has learned
//! beyond the hint:
//! - the sessions it adopted (ids of other nodes that this node runs now), known from
//!   its own adoptions and, at a takeover, from the node's index in the store;
//! - where sessions it was asked about went (its own ids it moved away, or a record
//!   read that named another node);
//! - the sessions it is moving right now, which nobody serves until the move is done.
//!
//! Nothing here is needed for safety: a session record moves with the new owner's fencing
//! token and a version bump, so a process with a stale idea of ownership cannot write it.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

use crate::owner_node;

/// Where a request for a session goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// This node runs it.
    Here,
    /// This node is moving it to another; answer "retry shortly".
    Moving,
    /// Another node runs it (or did, last this process heard).
    Node(String),
}

/// Remembered relocations beyond this many are forgotten (the hint and the store still
/// find every session; this only saves hops).
const MAX_LEARNED: usize = 1_000_000;

pub(crate) struct Ownership {
    node: String,
    adopted: RwLock<HashSet<String>>,
    moving: RwLock<HashSet<String>>,
    /// Sessions known to live on a node their id does not name, or to have left this one.
    learned: RwLock<HashMap<String, String>>,
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}

impl Ownership {
    pub fn new(node: &str) -> Ownership {
        Ownership {
            node: node.to_string(),
            adopted: RwLock::default(),
            moving: RwLock::default(),
            learned: RwLock::default(),
        }
    }

    /// Where `sid` runs, as far as this process knows; `None` for a malformed id.
    pub fn locate(&self, sid: &str) -> Option<Place> {
        let hinted = owner_node(sid)?;
        if read(&self.moving).contains(sid) {
            return Some(Place::Moving);
        }
        if read(&self.adopted).contains(sid) {
            return Some(Place::Here);
        }
        if let Some(node) = read(&self.learned).get(sid) {
            return Some(Place::Node(node.clone()));
        }
        Some(match hinted == self.node {
            true => Place::Here,
            false => Place::Node(hinted.to_string()),
        })
    }

    pub fn is_here(&self, sid: &str) -> bool {
        self.locate(sid) == Some(Place::Here)
    }

    /// This node runs `sid` now (its record was moved here).
    pub fn adopt(&self, sid: &str) {
        write(&self.learned).remove(sid);
        if owner_node(sid) != Some(self.node.as_str()) {
            write(&self.adopted).insert(sid.to_string());
        }
    }

    /// The store says `node` runs `sid` (a record read, or a move this node made).
    pub fn learn(&self, sid: &str, node: &str) {
        if node == self.node {
            return self.adopt(sid);
        }
        write(&self.adopted).remove(sid);
        let mut learned = write(&self.learned);
        if learned.len() >= MAX_LEARNED {
            learned.clear();
        }
        learned.insert(sid.to_string(), node.to_string());
    }

    /// `sid` ended: nothing to remember.
    pub fn forget(&self, sid: &str) {
        if owner_node(sid) != Some(self.node.as_str()) {
            write(&self.adopted).remove(sid);
        }
    }

    /// Nobody serves these while this node moves them.
    pub fn begin_moving(&self, sids: &[String]) {
        write(&self.moving).extend(sids.iter().cloned());
    }

    /// The move of `sid` is over: it went to `to`, or (`None`) it stays here.
    pub fn end_moving(&self, sid: &str, to: Option<&str>) {
        if let Some(node) = to {
            self.learn(sid, node);
        }
        write(&self.moving).remove(sid);
    }

    /// A takeover: what was adopted is read again from the node's index.
    pub fn reset(&self) {
        write(&self.adopted).clear();
        write(&self.moving).clear();
        write(&self.learned).clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_id_is_a_hint_that_what_was_learned_overrides() {
        let o = Ownership::new("a");
        assert_eq!(o.locate("a-1"), Some(Place::Here));
        assert_eq!(o.locate("b-1"), Some(Place::Node("b".into())));
        assert_eq!(o.locate("not an id"), None);

        o.begin_moving(&["a-1".to_string()]);
        assert_eq!(o.locate("a-1"), Some(Place::Moving));
        o.end_moving("a-1", Some("c"));
        assert_eq!(o.locate("a-1"), Some(Place::Node("c".into())));

        o.adopt("b-1");
        assert!(o.is_here("b-1"));
        o.learn("b-1", "c");
        assert_eq!(o.locate("b-1"), Some(Place::Node("c".into())));

        // Back home: the hint is right again.
        o.learn("a-1", "a");
        assert!(o.is_here("a-1"));

        o.begin_moving(&["a-2".to_string()]);
        o.end_moving("a-2", None);
        assert!(o.is_here("a-2"));
    }
}
