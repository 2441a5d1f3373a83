//! The cluster's membership: every process announces itself in the store (node, instance,
//! role, URLs, data center) every [`ANNOUNCE_EVERY`], and at once when its role changes;
//! an entry not refreshed for [`MEMBER_TTL`] drops out. Nodes find each other here, not
//! in a static list.

use std::time::Duration;

use ors_store::Member;

/// How often a process refreshes its entry.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(1);
/// How long an entry lasts without a refresh: a process that died is listed this long.
pub const MEMBER_TTL: Duration = Duration::from_secs(3);
/// How long a process reuses the member list it read (routing reads it per request).
pub const LIST_CACHE: Duration = Duration::from_millis(500);

/// Where requests for node `node`'s sessions go, from a member list: the node's external
/// URL as announced by its primary with the newest heartbeat (or that primary's own
/// address when the node has no external URL). `None`: no live primary is listed.
pub fn node_url(members: &[Member], node: &str) -> Option<String> {
    members
        .iter()
        .filter(|m| m.node == node && m.role == "primary")
        .max_by_key(|m| m.heartbeat_ms)
        .map(|m| {
            if m.external_url.is_empty() {
                m.advertise_url.clone()
            } else {
                m.external_url.clone()
            }
        })
        .filter(|u| !u.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(node: &str, instance: &str, role: &str, heartbeat_ms: u64, ext: &str) -> Member {
        Member {
            node: node.into(),
            instance: instance.into(),
            role: role.into(),
            advertise_url: format!("http://{node}-{instance}"),
            external_url: ext.into(),
            data_center: String::new(),
            heartbeat_ms,
            expires_at_ms: heartbeat_ms + 3000,
        }
    }

    #[test]
    fn a_node_is_reached_through_its_newest_primary() {
        let members = [
            member("n1", "a", "primary", 100, "http://lb1"),
            member("n1", "b", "backup", 300, "http://lb1"),
            member("n2", "a", "primary", 100, ""),
            // After a failover the old primary's entry lingers until it expires.
            member("n3", "old", "primary", 100, "http://old"),
            member("n3", "new", "primary", 200, "http://new"),
            member("n4", "b", "backup", 300, "http://lb4"),
        ];
        assert_eq!(node_url(&members, "n1").as_deref(), Some("http://lb1"));
        assert_eq!(node_url(&members, "n2").as_deref(), Some("http://n2-a"));
        assert_eq!(node_url(&members, "n3").as_deref(), Some("http://new"));
        assert_eq!(node_url(&members, "n4"), None, "no primary");
        assert_eq!(node_url(&members, "n9"), None);
    }
}
