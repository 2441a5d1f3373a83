//! `Idempotency-Key`: a client that retries a request (after a timeout, a failover, a
//! lost answer) gets it applied once.
//!
//! - An event's key is kept with its session, in the same durable write as the
//!   macrostep the event ran: the event is applied and its key recorded, or neither. A
//!   retry whose key the session holds is answered `200` without running it again.
//! - A start's key names the session: its id is derived from the key and the document,
//!   and a store write only creates a session that does not exist, so a retry finds the
//!   session of the first attempt and gets its id.
//!
//! Keys are remembered per session for [`KEEP`] and at most [`MAX_KEYS`] of them (the
//! oldest go first), and a started session's key for as long as the session exists.

use std::collections::VecDeque;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// How long an event's key is remembered.
pub const KEEP: Duration = Duration::from_secs(24 * 3600);
/// How many keys a session remembers at most.
pub const MAX_KEYS: usize = 256;
/// The longest key accepted.
pub const MAX_KEY_LEN: usize = 200;

/// Whether `key` can be a client's idempotency key (printable ASCII but `#`, which only
/// the keys of events between sessions have, so a client's key never matches one).
pub(crate) fn valid(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'#')
}

/// `BadRequest` for a key that cannot be one.
pub(crate) fn check(key: &str) -> Result<(), crate::RuntimeError> {
    if valid(key) {
        return Ok(());
    }
    Err(crate::RuntimeError::BadRequest(format!(
        "an Idempotency-Key is 1 to {MAX_KEY_LEN} printable ASCII characters other than #"
    )))
}

/// `BadRequest` unless `key` is a delivery's: reserved (it has a `#`, which no client's
/// key has), as the keys of events between sessions (`<sender>#o...`, `outbox.rs`) and of
/// interaction events from the feed (`feed#<entry>`) are.
pub(crate) fn check_delivery(key: &str) -> Result<(), crate::RuntimeError> {
    let printable = key.bytes().all(|b| (0x21..0x7f).contains(&b));
    if key.len() <= MAX_KEY_LEN && printable && key.contains('#') {
        return Ok(());
    }
    Err(crate::RuntimeError::BadRequest(
        "not the key of an event between sessions".into(),
    ))
}

/// The id of the session a keyed start of `src` creates on node `node`.
pub(crate) fn session_id(node: &str, key: &str, src: &str) -> String {
    let digest = Sha256::new()
        .chain_update(key.as_bytes())
        .chain_update([0u8])
        .chain_update(src.as_bytes())
        .finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("{node}-k{hex}")
}

/// The keys of the events a session ran recently, oldest first, with when (epoch ms).
#[derive(Debug, Clone, Default)]
pub(crate) struct RecentKeys(VecDeque<(String, u64)>);

impl RecentKeys {
    pub(crate) fn from_stored(keys: Vec<(String, u64)>) -> RecentKeys {
        RecentKeys(keys.into())
    }

    pub(crate) fn to_stored(&self) -> Vec<(String, u64)> {
        self.0.iter().cloned().collect()
    }

    pub(crate) fn contains(&self, key: &str) -> bool {
        self.0.iter().any(|(k, _)| k == key)
    }

    /// Records `key` at `now_ms`, forgetting keys older than [`KEEP`] and the oldest
    /// beyond [`MAX_KEYS`].
    pub(crate) fn add(&mut self, key: String, now_ms: u64) {
        let horizon = now_ms.saturating_sub(KEEP.as_millis() as u64);
        while self.0.front().is_some_and(|(_, t)| *t < horizon) || self.0.len() >= MAX_KEYS {
            self.0.pop_front();
        }
        self.0.push_back((key, now_ms));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_for_a_while_and_a_bounded_number() {
        let mut k = RecentKeys::default();
        k.add("a".into(), 1000);
        assert!(k.contains("a") && !k.contains("b"));
        for i in 0..MAX_KEYS {
            k.add(format!("k{i}"), 2000);
        }
        assert!(!k.contains("a"), "the oldest goes first");
        assert!(k.contains("k0") && k.contains(&format!("k{}", MAX_KEYS - 1)));
        k.add("late".into(), 2000 + KEEP.as_millis() as u64 + 1);
        assert_eq!(k.to_stored().len(), 1, "older than KEEP: forgotten");
    }

    #[test]
    fn keys_and_start_ids() {
        assert!(valid("0f8fad5b-d9cb-469f-a165-70867728950e"));
        assert!(!valid("") && !valid("has space") && !valid(&"x".repeat(201)));
        assert!(!valid("node1-a#o1.2"), "an outbox key is not a client's");
        assert!(check_delivery("node1-a#o1.2").is_ok() && check_delivery("k1").is_err());
        let a = session_id("node1", "k1", "a.scxml");
        assert_eq!(a, session_id("node1", "k1", "a.scxml"));
        assert_ne!(a, session_id("node1", "k1", "b.scxml"));
        assert_ne!(a, session_id("node1", "k2", "a.scxml"));
        assert_eq!(crate::owner_node(&a), Some("node1"));
    }
}
