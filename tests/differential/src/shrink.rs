//! Minimising a disagreement: remove events, states, transitions and content one at a
//! time, keeping each removal that leaves a valid document on which the peer still
//! disagrees with us in a way no known bug explains, until no removal does.

use crate::generate::{Action, Case, Doc, Initial, Node, to_xml};

/// Every case one removal smaller than `case`, smallest removals last.
pub fn candidates(case: &Case) -> Vec<Case> {
    let mut out = Vec::new();
    for i in (0..case.events.len()).rev() {
        let mut c = case.clone();
        c.events.remove(i);
        out.push(c);
    }
    for id in crate::generate::all_ids(&case.doc) {
        let mut c = case.clone();
        remove_node(&mut c.doc, &id);
        out.push(c);
    }
    let ids = crate::generate::all_ids(&case.doc);
    for id in &ids {
        let n = crate::generate::find(&case.doc, id).expect("listed");
        for t in 0..n.transitions.len() {
            let mut c = case.clone();
            let node = find_mut(&mut c.doc, id);
            node.transitions.remove(t);
            relabel(node);
            out.push(c);
        }
        if n.initial != Initial::FirstChild {
            let mut c = case.clone();
            find_mut(&mut c.doc, id).initial = Initial::FirstChild;
            out.push(c);
        }
        for which in 0..2 {
            let len = if which == 0 {
                n.onentry.len()
            } else {
                n.onexit.len()
            };
            for k in 1..len {
                let mut c = case.clone();
                let node = find_mut(&mut c.doc, id);
                if which == 0 {
                    node.onentry.remove(k);
                } else {
                    node.onexit.remove(k);
                }
                out.push(c);
            }
        }
        for (t, tr) in n.transitions.iter().enumerate() {
            for k in 1..tr.actions.len() {
                if matches!(&tr.actions[k], Action::Increment(v) if v.starts_with('k')) {
                    continue; // a loop guard
                }
                let mut c = case.clone();
                find_mut(&mut c.doc, id).transitions[t].actions.remove(k);
                out.push(c);
            }
            if tr.cond.as_deref().is_some_and(|c| !c.starts_with('k')) {
                let mut c = case.clone();
                find_mut(&mut c.doc, id).transitions[t].cond = None;
                out.push(c);
            }
        }
    }
    out
}

/// Shrinks `case` while `still_fails` holds for the smaller case.
pub fn shrink(mut case: Case, mut still_fails: impl FnMut(&Case) -> bool) -> Case {
    'again: loop {
        for c in candidates(&case) {
            if ors_scxml::compile(&to_xml(&c.doc), &Default::default()).is_ok() && still_fails(&c) {
                case = c;
                continue 'again;
            }
        }
        return case;
    }
}

fn find_mut<'a>(doc: &'a mut Doc, id: &str) -> &'a mut Node {
    crate::generate::find_mut(doc, id).expect("ids come from the document")
}

/// Keeps the `t:id.k` markers equal to the transitions' positions.
fn relabel(n: &mut Node) {
    for (k, t) in n.transitions.iter_mut().enumerate() {
        if let Some(Action::Log(m)) = t.actions.first_mut()
            && m.starts_with("t:")
        {
            *m = format!("t:{}.{k}", n.id);
        }
    }
}

/// Removes node `id` and its subtree, and every reference to a removed id.
fn remove_node(doc: &mut Doc, id: &str) {
    fn prune(nodes: &mut Vec<Node>, id: &str) {
        nodes.retain(|n| n.id != id);
        for n in nodes {
            prune(&mut n.children, id);
        }
    }
    prune(&mut doc.top, id);
    let alive = crate::generate::all_ids(doc);
    fn fix(n: &mut Node, alive: &[String]) {
        for t in &mut n.transitions {
            t.targets.retain(|x| alive.contains(x));
        }
        match &n.initial {
            Initial::Attribute(x) | Initial::Element(x, _) if !alive.contains(x) => {
                n.initial = Initial::FirstChild;
            }
            _ => {}
        }
        for c in &mut n.children {
            fix(c, alive);
        }
    }
    for n in &mut doc.top {
        fix(n, &alive);
    }
}
