//! The checked-in list of known peer bugs: where SCION 4.3.27 or Qt SCXML 6.4.2 departs
//! from the W3C SCXML 1.0 Recommendation's Appendix D, each with the step of the
//! algorithm that decides it, and a narrow test of the evidence at the first point where
//! the peer's trace leaves ours.
//!
//! A test looks only at that first point: our log line there, the peer's, and the
//! microstep of ours it falls in (which transitions ran, which were dropped as
//! conflicting, which states were exited and entered). It names the one way the peer is
//! known to go wrong there; anything else stays unexplained and fails the run. Every
//! entry was adjudicated by hand on a minimal document (`tests/differential/cases/`).

use crate::compare::{Divergence, What};
use crate::generate::{Doc, Initial, Kind, Node};
use crate::run::{OurRun, Trace};
use ors_scxml::{Microstep, TransitionRef};

/// One known bug of one peer.
pub struct KnownBug {
    /// The peer it is in (`scion` or `qt`).
    pub peer: &'static str,
    /// A short name, also the file name of its minimal document.
    pub name: &'static str,
    /// What the peer does, and the Appendix D step that shows it wrong.
    pub why: &'static str,
    /// True when the evidence at the divergence is this bug.
    pub applies: fn(&Evidence) -> bool,
}

/// What a test sees of a disagreement.
pub struct Evidence<'a> {
    /// The document.
    pub doc: &'a Doc,
    /// Our run.
    pub ours: &'a OurRun,
    /// The peer's run.
    pub theirs: &'a Trace,
    /// Where they first differ.
    pub at: &'a Divergence,
}

/// Every known peer bug.
pub const KNOWN: &[KnownBug] = &[
    KnownBug {
        peer: "qt",
        name: "qt_content_order_deeper_first",
        why: "Qt runs the content of a microstep's transitions deepest source first; \
              executeTransitionContent runs them in the order of enabledTransitions, which \
              selectTransitions builds in document order of the atomic states that selected them",
        applies: |e| content_order(e, |doc, ours, theirs| depth(doc, theirs) > depth(doc, ours)),
    },
    KnownBug {
        peer: "qt",
        name: "qt_conflict_deeper_source_wins",
        why: "Qt resolves conflicting transitions in favour of the deeper source; \
              removeConflictingTransitions keeps the transition selected first (document order \
              of atomic states) unless the later one's source descends from the earlier one's",
        applies: |e| {
            microstep_at(e).is_some_and(|m| {
                m.preempted.iter().any(|(dropped, kept)| {
                    depth(e.doc, &dropped.source) > depth(e.doc, &kept.source)
                        && e.theirs[e.at.step].logs.contains(&marker(dropped))
                })
            })
        },
    },
    KnownBug {
        peer: "qt",
        name: "history_first_child_is_not_initial",
        why: HISTORY_FIRST_CHILD,
        applies: history_first_child,
    },
    KnownBug {
        peer: "scion",
        name: "history_first_child_is_not_initial",
        why: HISTORY_FIRST_CHILD,
        applies: history_first_child,
    },
    KnownBug {
        peer: "scion",
        name: "scion_entry_order_by_depth",
        why: "SCION enters states shallowest first (breadth first); enterStates sorts \
              statesToEnter by entryOrder, which is document order",
        applies: |e| {
            let (Some(ours), Some(theirs)) = lines(e) else {
                return false;
            };
            let (Some(a), Some(b)) = (ours.strip_prefix('+'), theirs.strip_prefix('+')) else {
                return false;
            };
            microstep_at(e).is_some_and(|m| {
                let pos = |s: &str| m.entered.iter().position(|x| x == s);
                matches!((pos(a), pos(b)), (Some(i), Some(j)) if j > i)
                    && depth(e.doc, b) < depth(e.doc, a)
            })
        },
    },
    KnownBug {
        peer: "scion",
        name: "scion_parallel_as_domain",
        why: "SCION takes a <parallel> as a transition's domain, so it does not exit and \
              re-enter it; findLCCA considers only compound states and <scxml>, skipping \
              parallels",
        applies: |e| {
            let Some(Some(exited)) = lines(e).0.map(|l| l.strip_prefix('-')) else {
                return false;
            };
            microstep_at(e).is_some_and(|m| {
                m.exited.iter().any(|x| x == exited)
                    && m.transitions.iter().any(|t| {
                        scion_domain(e.doc, t).is_some_and(|d| {
                            d == exited || ancestors(e.doc, &d).iter().any(|a| a == exited)
                        })
                    })
            })
        },
    },
    KnownBug {
        peer: "scion",
        name: "scion_domain_from_declared_history_targets",
        why: "SCION computes the domain of a transition that targets a <history> from the \
              history pseudo-state itself; getTransitionDomain uses getEffectiveTargetStates, \
              the history's stored (or default) states",
        applies: |e| {
            exit_set_differs(e, |doc, t| {
                target_kinds(doc, t)
                    .iter()
                    .any(|k| matches!(k, Kind::History { .. }))
            })
        },
    },
    KnownBug {
        peer: "scion",
        name: "scion_domain_from_first_target",
        why: "SCION computes the domain of a transition with several targets from its first \
              target only; findLCCA takes the source and every target",
        applies: |e| exit_set_differs(e, |doc, t| declared_targets(doc, t).len() > 1),
    },
    KnownBug {
        peer: "scion",
        name: "scion_stored_history_enters_nothing",
        why: "SCION enters no state for a transition to a <history> that has a stored \
              configuration, and ends with an empty configuration; addDescendantStatesToEnter \
              enters historyValue[history.id] (and their ancestors up to the history's parent)",
        applies: |e| {
            let (Some(ours), None) = lines(e) else {
                return false;
            };
            ours.starts_with('+')
                && e.theirs
                    .get(e.at.step)
                    .is_some_and(|t| t.done && t.config.is_empty())
                && microstep_at(e).is_some_and(|m| {
                    m.transitions.iter().any(|t| {
                        target_kinds(e.doc, t)
                            .iter()
                            .any(|k| matches!(k, Kind::History { .. }))
                    })
                })
        },
    },
    KnownBug {
        peer: "scion",
        name: "scion_deep_history_drops_finals",
        why: "SCION restores a deep history without the <final> states it recorded and \
              enters their parent's default state instead; exitStates records every active \
              atomic descendant (finals included) and addDescendantStatesToEnter enters \
              exactly historyValue[h]",
        applies: |e| {
            let (Some(ours), Some(theirs)) = lines(e) else {
                return false;
            };
            let (Some(f), Some(other)) = (ours.strip_prefix('+'), theirs.strip_prefix('+')) else {
                return false;
            };
            let parent = |id: &str| crate::generate::find_parent(e.doc, id).map(|p| p.id.clone());
            node(e.doc, f).is_some_and(|n| n.kind == Kind::Final)
                && parent(f).is_some()
                && parent(f) == parent(other)
                && microstep_at(e).is_some_and(|m| {
                    m.transitions
                        .iter()
                        .any(|t| target_kinds(e.doc, t).contains(&Kind::History { deep: true }))
                })
        },
    },
    KnownBug {
        peer: "scion",
        name: "scion_content_order_by_source",
        why: "SCION runs the content of a microstep's transitions in document order of \
              their sources; executeTransitionContent runs them in the order selectTransitions \
              found them, by the atomic states that selected them",
        applies: |e| content_order(e, |doc, ours, theirs| order(doc, theirs) < order(doc, ours)),
    },
    KnownBug {
        peer: "scion",
        name: "scion_ends_in_nested_finals",
        why: "SCION ends the session when every active atomic state is a <final>, even with \
              no top-level <final> among them; the main loop stops only when it enters a \
              top-level final (running = false in enterStates)",
        applies: |e| {
            let step = e.at.step;
            e.theirs.get(step).is_some_and(|t| t.done)
                && e.ours.trace.get(step).is_some_and(|o| {
                    !o.done
                        && !o.config.is_empty()
                        && o.config.iter().all(|s| {
                            crate::generate::find(e.doc, s).is_some_and(|n| n.kind == Kind::Final)
                        })
                })
        },
    },
];

const HISTORY_FIRST_CHILD: &str = "the peer enters a <history> that is the first child of a \
    state without an initial attribute or element; that state's default initial state is its \
    first child state (3.3: <history> is a pseudo-state), and getChildStates skips histories";

/// The known bug of `peer` that explains the evidence, if one does.
pub fn explain(peer: &str, e: &Evidence) -> Option<&'static KnownBug> {
    KNOWN.iter().find(|b| b.peer == peer && (b.applies)(e))
}

fn lines<'a>(e: &'a Evidence) -> (Option<&'a str>, Option<&'a str>) {
    match &e.at.what {
        What::Log { ours, theirs, .. } => (ours.as_deref(), theirs.as_deref()),
        _ => (None, None),
    }
}

fn marker(t: &TransitionRef) -> String {
    format!("t:{}.{}", t.source, t.index.map_or(-1, |i| i as i64))
}

/// Two transitions' content in a different order: ours `t:A`, the peer's `t:B`, both of
/// one microstep of ours, B after A there, and `wrong(A's source, B's source)`.
fn content_order(e: &Evidence, wrong: fn(&Doc, &str, &str) -> bool) -> bool {
    let (Some(ours), Some(theirs)) = lines(e) else {
        return false;
    };
    if !ours.starts_with("t:") || !theirs.starts_with("t:") {
        return false;
    }
    microstep_at(e).is_some_and(|m| {
        let pos = |line: &str| m.transitions.iter().position(|t| marker(t) == line);
        match (pos(ours), pos(theirs)) {
            (Some(i), Some(j)) if j > i => {
                wrong(e.doc, &m.transitions[i].source, &m.transitions[j].source)
            }
            _ => false,
        }
    })
}

/// Our microstep enters a state P without `initial` whose first child is a `<history>`
/// H, and so enters P's first child state C by default. At the divergence our line is
/// about C or a state inside it (`+`, `i:`, `h:`), and the peer's about H or another state
/// inside P: it took H (with its default or its stored configuration) as P's initial.
fn history_first_child(e: &Evidence) -> bool {
    let (Some(ours), Some(theirs)) = lines(e) else {
        return false;
    };
    let about = |l: &str| -> Option<String> {
        ["+", "i:", "h:"]
            .iter()
            .find_map(|p| l.strip_prefix(p))
            .map(String::from)
    };
    let (Some(o), Some(t)) = (about(ours), about(theirs)) else {
        return false;
    };
    let within =
        |x: &str, outer: &str| x == outer || ancestors(e.doc, x).iter().any(|a| a == outer);
    let Some(m) = microstep_at(e) else {
        return false;
    };
    m.entered.iter().filter_map(|p| node(e.doc, p)).any(|p| {
        let Some(h) = p.children.first() else {
            return false;
        };
        let Some(c) = p
            .children
            .iter()
            .find(|n| !matches!(n.kind, Kind::History { .. }))
        else {
            return false;
        };
        p.kind == Kind::State
            && p.initial == Initial::FirstChild
            && matches!(h.kind, Kind::History { .. })
            && within(&o, &c.id)
            && (t == h.id || (t != o && within(&t, &p.id)))
    })
}

/// Our microstep that wrote our log line at the divergence (the last one of the step when
/// ours wrote fewer lines).
pub fn microstep_at<'a>(e: &'a Evidence) -> Option<&'a Microstep> {
    let What::Log { index, .. } = &e.at.what else {
        return None;
    };
    let steps = e.ours.microsteps.get(e.at.step)?;
    let logs = &e.ours.trace.get(e.at.step)?.logs;
    // Walk our log lines microstep by microstep: exits, then transition content, then
    // entries (with the `i:`/`h:` content of default entries among them).
    let mut line = 0;
    for m in steps {
        let mut exits = m.exited.len();
        let mut contents = m.transitions.len();
        let mut entries = m.entered.len();
        while line < logs.len() && (exits + contents + entries > 0) {
            let l = &logs[line];
            if l.starts_with('-') && exits > 0 {
                exits -= 1;
            } else if l.starts_with("t:") && exits == 0 && contents > 0 {
                contents -= 1;
            } else if l.starts_with('+') && exits == 0 && contents == 0 {
                entries -= 1;
            } else if l.starts_with('-') || l.starts_with("t:") || l.starts_with('+') {
                break;
            }
            if line == *index {
                return Some(m);
            }
            line += 1;
        }
        // The rest of the entry phase: default-entry content and variable lines.
        while line < logs.len()
            && !(logs[line].starts_with('-')
                || logs[line].starts_with("t:")
                || logs[line].starts_with('+'))
        {
            if line == *index {
                return Some(m);
            }
            line += 1;
        }
    }
    steps.last()
}

fn node<'a>(doc: &'a Doc, id: &str) -> Option<&'a Node> {
    crate::generate::find(doc, id)
}

fn ancestors(doc: &Doc, id: &str) -> Vec<String> {
    let mut v = Vec::new();
    let mut cur = id.to_string();
    while let Some(p) = crate::generate::find_parent(doc, &cur) {
        v.push(p.id.clone());
        cur = p.id.clone();
    }
    v
}

fn depth(doc: &Doc, id: &str) -> usize {
    ancestors(doc, id).len()
}

fn order(doc: &Doc, id: &str) -> usize {
    crate::generate::all_ids(doc)
        .iter()
        .position(|x| x == id)
        .unwrap_or(usize::MAX)
}

/// The exit phase of our microstep at the divergence differs (the peer exits a state we
/// keep, or keeps one we exit), and one of its transitions is `suspect`.
fn exit_set_differs(e: &Evidence, suspect: fn(&Doc, &TransitionRef) -> bool) -> bool {
    let (ours, theirs) = lines(e);
    let Some(m) = microstep_at(e) else {
        return false;
    };
    let exited = |x: &str| m.exited.iter().any(|y| y == x);
    let differs = match (ours.and_then(|l| l.strip_prefix('-')), theirs) {
        (_, Some(t)) if t.starts_with('-') => !exited(&t[1..]),
        (Some(x), _) => exited(x),
        _ => false,
    };
    differs && m.transitions.iter().any(|t| suspect(e.doc, t))
}

/// The kinds of the states a transition names as its targets.
fn target_kinds(doc: &Doc, t: &TransitionRef) -> Vec<Kind> {
    declared_targets(doc, t)
        .iter()
        .filter_map(|target| node(doc, target).map(|n| n.kind))
        .collect()
}

fn declared_targets(doc: &Doc, t: &TransitionRef) -> Vec<String> {
    node(doc, &t.source)
        .and_then(|n| n.transitions.get(t.index?))
        .map(|tr| tr.targets.clone())
        .unwrap_or_default()
}

/// The domain SCION gives a transition: its source's nearest proper ancestor (of any
/// kind, `<parallel>` included) holding every target; `None` for `<scxml>` or a
/// targetless transition.
fn scion_domain(doc: &Doc, t: &TransitionRef) -> Option<String> {
    let source = node(doc, &t.source)?;
    let tr = source.transitions.get(t.index?)?;
    if tr.targets.is_empty() {
        return None;
    }
    ancestors(doc, &t.source).into_iter().find(|a| {
        tr.targets
            .iter()
            .all(|target| ancestors(doc, target).iter().any(|x| x == a))
    })
}
