//! Where an interaction's session belongs: rendezvous (highest random weight) hashing of
//! the interaction id over the live nodes. Every node computes the same answer from the
//! same membership, the spread is uniform, and when a node joins or leaves only the
//! interactions it wins or held move. The reserved node is the runner-up, preferring one
//! in another data center than the assigned node's, so that losing a data center leaves
//! a watcher. Pure: no I/O.

use sha2::{Digest, Sha256};

/// A live node as placement sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The node's id.
    pub node: String,
    /// Its data center ("" when not configured).
    pub data_center: String,
}

/// Where an interaction goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// The node whose primary creates the session.
    pub assigned: String,
    /// The node that creates it if nobody did within the call-watching timeout (`None`
    /// with a single node).
    pub reserved: Option<String>,
}

/// The weight of `node` for `interaction`: the first 8 bytes of a SHA-256 of both.
fn weight(interaction: &str, node: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(interaction.as_bytes())
        .chain_update([0u8])
        .chain_update(node.as_bytes())
        .finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The placement of `interaction` over `nodes` (`None` when there is no node).
pub fn place(interaction: &str, nodes: &[Candidate]) -> Option<Placement> {
    let mut ranked: Vec<(u64, &Candidate)> = nodes
        .iter()
        .map(|c| (weight(interaction, &c.node), c))
        .collect();
    // Highest weight first; the node id breaks (astronomically unlikely) ties.
    ranked.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.1.node.cmp(&b.1.node)));
    ranked.dedup_by(|a, b| a.1.node == b.1.node);
    let (_, first) = ranked.first()?;
    let rest = &ranked[1..];
    let reserved = rest
        .iter()
        .find(|(_, c)| c.data_center != first.data_center)
        .or_else(|| rest.first())
        .map(|(_, c)| c.node.clone());
    Some(Placement {
        assigned: first.node.clone(),
        reserved,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(names: &[&str]) -> Vec<Candidate> {
        names
            .iter()
            .map(|n| Candidate {
                node: n.to_string(),
                data_center: String::new(),
            })
            .collect()
    }

    #[test]
    fn spreads_uniformly() {
        let n = nodes(&["node1", "node2", "node3"]);
        let mut counts = std::collections::HashMap::new();
        for i in 0..30_000 {
            let p = place(&format!("call-{i}"), &n).unwrap();
            *counts.entry(p.assigned.clone()).or_insert(0) += 1;
            assert_ne!(p.reserved.as_deref(), Some(p.assigned.as_str()));
        }
        for (node, c) in &counts {
            let off = (*c as f64 - 10_000.0).abs() / 10_000.0;
            assert!(off < 0.03, "{node} got {c} of 30,000");
        }
    }

    #[test]
    fn a_leaving_node_moves_only_its_own_interactions() {
        let before = nodes(&["a", "b", "c", "d"]);
        let after = nodes(&["a", "b", "d"]);
        let mut moved = 0;
        for i in 0..10_000 {
            let id = format!("i{i}");
            let (x, y) = (place(&id, &before).unwrap(), place(&id, &after).unwrap());
            if x.assigned != "c" {
                assert_eq!(x.assigned, y.assigned, "{id} moved without cause");
            } else {
                moved += 1;
                // The runner-up takes over: the reserved node was already watching it.
                assert_eq!(Some(y.assigned), x.reserved);
            }
        }
        assert!((2_000..3_000).contains(&moved), "{moved}");
    }

    #[test]
    fn the_reserved_node_is_in_another_data_center_when_there_is_one() {
        let n = vec![
            Candidate {
                node: "a1".into(),
                data_center: "east".into(),
            },
            Candidate {
                node: "a2".into(),
                data_center: "east".into(),
            },
            Candidate {
                node: "b1".into(),
                data_center: "west".into(),
            },
        ];
        for i in 0..1_000 {
            let p = place(&format!("x{i}"), &n).unwrap();
            let dc = |node: &str| {
                n.iter()
                    .find(|c| c.node == node)
                    .unwrap()
                    .data_center
                    .clone()
            };
            assert_ne!(dc(&p.assigned), dc(p.reserved.as_deref().unwrap()));
        }
    }

    #[test]
    fn one_node_or_none() {
        assert_eq!(place("x", &[]), None);
        let p = place("x", &nodes(&["solo"])).unwrap();
        assert_eq!((p.assigned.as_str(), p.reserved), ("solo", None));
    }
}
