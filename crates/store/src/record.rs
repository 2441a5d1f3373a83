//! Byte encodings shared by backends that store records as values (the embedded store,
//! custom file stores). Every encoding starts with a magic tag and a format version, so
//! corrupt or foreign bytes are reported as [`StoreError::Corrupt`], never a panic.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::{Fence, Lease, ScheduleEntry, SessionRecord, StoreError};

const SESSION_MAGIC: &[u8; 4] = b"ORS\x01";
const JSON_MAGIC: &[u8; 4] = b"ORJ\x01";

#[derive(Serialize, Deserialize)]
struct SessionMeta<'a> {
    node: &'a str,
    document: &'a str,
    version: u64,
    fence: Fence,
}

/// `magic | meta length (u32 LE) | meta JSON | snapshot bytes`: the (possibly large)
/// snapshot is stored raw, not inside JSON.
pub fn encode_session(r: &SessionRecord) -> Vec<u8> {
    let head = SessionHead {
        node: r.node.clone(),
        document: r.document.clone(),
        version: r.version,
        fence: r.fence,
    };
    encode_session_parts(&head, &r.snapshot)
}

/// What a session record says besides its snapshot: enough to check and version a write
/// without copying the snapshot out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionHead {
    /// The node that owns the session.
    pub node: String,
    /// Its document's key.
    pub document: String,
    /// The record's version.
    pub version: u64,
    /// The token of its last writer.
    pub fence: Fence,
}

/// The bytes of a record from its head and snapshot (what [`encode_session`] writes, with
/// the snapshot copied once, straight into the record).
pub fn encode_session_parts(head: &SessionHead, snapshot: &[u8]) -> Vec<u8> {
    let meta = serde_json::to_vec(&SessionMeta {
        node: &head.node,
        document: &head.document,
        version: head.version,
        fence: head.fence,
    })
    .expect("plain struct serialises");
    let mut out = Vec::with_capacity(8 + meta.len() + snapshot.len());
    out.extend_from_slice(SESSION_MAGIC);
    out.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    out.extend_from_slice(&meta);
    out.extend_from_slice(snapshot);
    out
}

/// Reads a record's head and where its snapshot starts.
fn split_session<'b>(id: &str, bytes: &'b [u8]) -> Result<(SessionHead, &'b [u8]), StoreError> {
    let corrupt = |detail: &str| StoreError::Corrupt {
        key: format!("session {id}"),
        detail: detail.to_string(),
    };
    if bytes.len() < 8 || &bytes[..4] != SESSION_MAGIC {
        return Err(corrupt("not a session record (bad magic)"));
    }
    let n = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    let meta_end = 8usize
        .checked_add(n)
        .filter(|&e| e <= bytes.len())
        .ok_or_else(|| corrupt("truncated header"))?;
    let head: SessionHead =
        serde_json::from_slice(&bytes[8..meta_end]).map_err(|e| corrupt(&e.to_string()))?;
    Ok((head, &bytes[meta_end..]))
}

/// Reads only the head of what [`encode_session`] wrote (no copy of the snapshot).
pub fn decode_session_head(id: &str, bytes: &[u8]) -> Result<SessionHead, StoreError> {
    split_session(id, bytes).map(|(head, _)| head)
}

/// Reads what [`encode_session`] wrote; `id` names the record in errors.
pub fn decode_session(id: &str, bytes: &[u8]) -> Result<SessionRecord, StoreError> {
    let (head, snapshot) = split_session(id, bytes)?;
    Ok(SessionRecord {
        id: id.to_string(),
        node: head.node,
        document: head.document,
        version: head.version,
        fence: head.fence,
        snapshot: snapshot.to_vec(),
    })
}

fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = JSON_MAGIC.to_vec();
    serde_json::to_writer(&mut out, v).expect("plain struct serialises");
    out
}

fn decode_json<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    let corrupt = |detail: String| StoreError::Corrupt {
        key: key.to_string(),
        detail,
    };
    let body = bytes
        .strip_prefix(JSON_MAGIC.as_slice())
        .ok_or_else(|| corrupt("bad magic".into()))?;
    serde_json::from_slice(body).map_err(|e| corrupt(e.to_string()))
}

/// A schedule entry with its claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSchedule {
    /// The entry.
    pub entry: ScheduleEntry,
    /// Who claimed it, if anyone.
    pub claimed_by: Option<String>,
    /// When the claim ends (epoch milliseconds).
    pub claim_until_ms: u64,
}

impl StoredSchedule {
    /// Whether a claimer may take it at `now_ms` (never claimed, or the claim expired).
    pub fn is_claimable(&self, now_ms: u64) -> bool {
        self.claimed_by.is_none() || self.claim_until_ms <= now_ms
    }
}

/// The bytes of a schedule entry with its claim.
pub fn encode_schedule(s: &StoredSchedule) -> Vec<u8> {
    encode_json(s)
}
/// Reads what [`encode_schedule`] wrote; `id` names the entry in errors.
pub fn decode_schedule(id: &str, bytes: &[u8]) -> Result<StoredSchedule, StoreError> {
    decode_json(&format!("schedule {id}"), bytes)
}
/// The bytes of a lease.
pub fn encode_lease(l: &Lease) -> Vec<u8> {
    encode_json(l)
}
/// Reads what [`encode_lease`] wrote; `name` names the lease in errors.
pub fn decode_lease(name: &str, bytes: &[u8]) -> Result<Lease, StoreError> {
    decode_json(&format!("lease {name}"), bytes)
}

/// The bytes of a membership entry.
pub fn encode_member(m: &crate::Member) -> Vec<u8> {
    encode_json(m)
}
/// Reads what [`encode_member`] wrote; `key` names the entry in errors.
pub fn decode_member(key: &str, bytes: &[u8]) -> Result<crate::Member, StoreError> {
    decode_json(&format!("member {key}"), bytes)
}
/// The key of a membership entry: node and instance, which node ids (letters, digits,
/// `_`) cannot contain the separator of.
pub fn member_key(node: &str, instance: &str) -> String {
    format!("{node}/{instance}")
}

/// The fencing checks of every session write (create, replace, delete, move): the
/// writer's token `given` must be at least the newest token issued for the lease of the
/// node the write is for (`node_fence`, see [`crate::node_lease`]) and at least the token
/// of the record's last writer (`record_fence`).
pub fn check_fence(
    id: &str,
    node: &str,
    given: Fence,
    node_fence: Fence,
    record_fence: Option<Fence>,
) -> Result<(), StoreError> {
    if given < node_fence {
        return Err(StoreError::StaleFence {
            key: format!("node {node}"),
            given,
            current: node_fence,
        });
    }
    match record_fence {
        Some(f) if given < f => Err(StoreError::stale_fence(id, given, f)),
        _ => Ok(()),
    }
}

/// The fence check of a move of session `id` from `from` to `to`: the new node's lease
/// always counts; the record's own token only when the session stays on its node, since
/// tokens of different nodes' leases are not comparable (the node adopting a session may
/// hold a smaller token than the old node's last writer).
pub fn check_move(
    id: &str,
    from: &str,
    to: &str,
    given: Fence,
    node_fence: Fence,
    record_fence: Fence,
) -> Result<(), StoreError> {
    check_fence(
        id,
        to,
        given,
        node_fence,
        (from == to).then_some(record_fence),
    )
}

/// The checks every backend applies to a session write against the current record
/// (`(version, fence)`) and the newest token of the node's lease.
pub fn check_write(
    current: Option<(u64, Fence)>,
    node_fence: Fence,
    w: &crate::SessionWrite,
) -> Result<(), StoreError> {
    check_fence(w.id, w.node, w.fence, node_fence, current.map(|(_, f)| f))?;
    let found = current.map(|(v, _)| v);
    if found != w.expected_version {
        return Err(StoreError::VersionConflict {
            key: format!("session {}", w.id),
            expected: w.expected_version,
            found,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_round_trip_and_corruption() {
        let r = SessionRecord {
            id: "n1-1".into(),
            node: "n1".into(),
            document: "abc".into(),
            version: 3,
            fence: 7,
            snapshot: vec![0, 1, 2, 255],
        };
        let b = encode_session(&r);
        assert_eq!(decode_session("n1-1", &b).unwrap(), r);
        for bad in [&b[..3], &b[..9], b"garbage garbage".as_slice(), &[]] {
            assert!(matches!(
                decode_session("x", bad),
                Err(StoreError::Corrupt { .. })
            ));
        }
        let mut huge_len = b.clone();
        huge_len[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(
            decode_session("x", &huge_len),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
