//! Random valid SCXML documents (ECMAScript datamodel) and the events to send them.
//!
//! Every document carries a trace in `<log>`s, so that the order of handlers and
//! transition content is compared, not only the final configuration: `+id` on entry,
//! `-id` on exit, `t:id.k` in the content of the k-th transition of `id`, `h:id` in a
//! history's default transition, `i:id` in an `<initial>` element's transition.
//!
//! Every run ends: a transition that internal events can take (`*`, raised `i*`,
//! `done.state.*`) or that has no event is guarded by a counter of its own that its
//! content increments (`k3 < 2`), so it fires at most twice per session; the rest fire
//! at most once per external event.

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

/// What kind of element a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `<state>` (atomic when it has no children).
    State,
    /// `<parallel>`.
    Parallel,
    /// `<final>`.
    Final,
    /// `<history type="shallow|deep">`.
    History {
        /// `type="deep"`.
        deep: bool,
    },
}

/// How a compound state names its default initial state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Initial {
    /// Neither attribute nor element: the first child state.
    FirstChild,
    /// `initial="id"`.
    Attribute(String),
    /// `<initial><transition target="id">...</transition></initial>`.
    Element(String, Vec<Action>),
}

/// Executable content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `<log expr="'text'"/>`.
    Log(String),
    /// `<log expr="'name=' + name"/>`.
    LogVar(String),
    /// `<raise event="name"/>`.
    Raise(String),
    /// `<assign location="name" expr="name + 1"/>`.
    Increment(String),
}

/// A `<transition>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// `event`, or `None` for an eventless transition.
    pub event: Option<String>,
    /// `cond`.
    pub cond: Option<String>,
    /// `target` ids (empty: targetless).
    pub targets: Vec<String>,
    /// `type="internal"`.
    pub internal: bool,
    /// Its content.
    pub actions: Vec<Action>,
}

/// A state, parallel, final or history element and what it contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Its id.
    pub id: String,
    /// Its kind.
    pub kind: Kind,
    /// Child nodes in document order.
    pub children: Vec<Node>,
    /// For a compound `<state>`.
    pub initial: Initial,
    /// `<onentry>` content.
    pub onentry: Vec<Action>,
    /// `<onexit>` content.
    pub onexit: Vec<Action>,
    /// Transitions in document order (a history's default transition is its only one).
    pub transitions: Vec<Transition>,
}

/// A whole document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doc {
    /// Variables, each initialised to 0.
    pub vars: Vec<String>,
    /// The children of `<scxml>`.
    pub top: Vec<Node>,
}

/// External event names sent to documents; transitions listen for these, `a.x` (which
/// `a` also matches) and `*`.
pub const EXTERNAL_EVENTS: [&str; 5] = ["a", "b", "c", "a.x", "d"];

/// A document and the external events to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Case {
    /// The document.
    pub doc: Doc,
    /// External events, sent one at a time.
    pub events: Vec<String>,
}

/// A random case.
pub fn case(rng: &mut impl Rng) -> Case {
    let mut g = Generator { rng, next: 0 };
    let doc = g.doc();
    let n = g.rng.random_range(2..=8);
    let events = (0..n)
        .map(|_| EXTERNAL_EVENTS.choose(g.rng).unwrap().to_string())
        .collect();
    Case { doc, events }
}

struct Generator<'a, R> {
    rng: &'a mut R,
    next: usize,
}

impl<R: Rng> Generator<'_, R> {
    fn id(&mut self) -> String {
        self.next += 1;
        format!("s{}", self.next)
    }

    fn chance(&mut self, p: f64) -> bool {
        self.rng.random_bool(p)
    }

    fn doc(&mut self) -> Doc {
        let n = self.rng.random_range(1..=4);
        let mut top: Vec<Node> = (0..n).map(|_| self.node(0, false)).collect();
        if top.iter().all(|n| matches!(n.kind, Kind::Final)) {
            top.insert(0, self.leaf(Kind::State));
        }
        let mut doc = Doc {
            vars: vec!["x".into(), "y".into()],
            top,
        };
        let ids = all_ids(&doc);
        let mut counters = 0;
        let parallels = parallels(&doc);
        let shape = doc.clone();
        for id in &ids {
            let node = find_mut(&mut doc, id).expect("ids come from the document");
            self.fill(node, &shape, &ids, &parallels, &mut counters);
        }
        for k in 0..counters {
            doc.vars.push(format!("k{k}"));
        }
        doc
    }

    fn leaf(&mut self, kind: Kind) -> Node {
        Node {
            id: self.id(),
            kind,
            children: Vec::new(),
            initial: Initial::FirstChild,
            onentry: Vec::new(),
            onexit: Vec::new(),
            transitions: Vec::new(),
        }
    }

    /// A node at `depth`; `in_parallel`: its parent is a `<parallel>` (no `<final>`).
    fn node(&mut self, depth: usize, in_parallel: bool) -> Node {
        let deep_enough = depth >= 3 || self.next > 14;
        let roll: f64 = self.rng.random();
        if !deep_enough && roll < 0.28 {
            let mut n = self.leaf(Kind::State);
            let k = self.rng.random_range(1..=3);
            n.children = (0..k).map(|_| self.node(depth + 1, false)).collect();
            if n.children.iter().all(|c| c.kind == Kind::Final) {
                n.children.insert(0, self.leaf(Kind::State));
            }
            self.maybe_history(&mut n);
            n
        } else if !deep_enough && roll < 0.42 {
            let mut n = self.leaf(Kind::Parallel);
            let k = self.rng.random_range(2..=3);
            n.children = (0..k).map(|_| self.node(depth + 1, true)).collect();
            self.maybe_history(&mut n);
            n
        } else if !in_parallel && roll > 0.82 {
            self.leaf(Kind::Final)
        } else {
            self.leaf(Kind::State)
        }
    }

    fn maybe_history(&mut self, n: &mut Node) {
        if self.chance(0.3) {
            let deep = self.chance(0.5);
            let h = self.leaf(Kind::History { deep });
            if self.chance(0.05) {
                n.children.insert(0, h);
            } else {
                n.children.push(h);
            }
        }
    }

    fn actions(&mut self, first: Action) -> Vec<Action> {
        let mut v = vec![first];
        let k = if self.chance(0.5) {
            0
        } else {
            self.rng.random_range(1..=2)
        };
        for _ in 0..k {
            let a = match self.rng.random_range(0..4) {
                0 => Action::Raise(["i1", "i2"].choose(self.rng).unwrap().to_string()),
                1 => Action::Increment(["x", "y"].choose(self.rng).unwrap().to_string()),
                2 => Action::LogVar(["x", "y"].choose(self.rng).unwrap().to_string()),
                _ => Action::Increment("x".into()),
            };
            v.push(a);
        }
        v
    }

    fn fill(
        &mut self,
        node: &mut Node,
        shape: &Doc,
        ids: &[String],
        parallels: &[Vec<Vec<String>>],
        counters: &mut usize,
    ) {
        match node.kind {
            Kind::History { deep } => {
                let parent = find_parent(shape, &node.id).expect("a history has a parent");
                let candidates: Vec<String> = if deep {
                    parent.children.iter().flat_map(descendant_states).collect()
                } else {
                    parent
                        .children
                        .iter()
                        .filter(|c| !matches!(c.kind, Kind::History { .. }))
                        .map(|c| c.id.clone())
                        .collect()
                };
                let target = candidates.choose(self.rng).unwrap().clone();
                let mut actions = vec![Action::Log(format!("h:{}", node.id))];
                if self.chance(0.3) {
                    actions.push(Action::Increment("x".into()));
                }
                node.transitions.push(Transition {
                    event: None,
                    cond: None,
                    targets: vec![target],
                    internal: false,
                    actions,
                });
                return;
            }
            Kind::Final => {}
            Kind::State | Kind::Parallel => {}
        }
        node.onentry = self.actions(Action::Log(format!("+{}", node.id)));
        node.onexit = self.actions(Action::Log(format!("-{}", node.id)));
        if node.kind == Kind::Final {
            return;
        }
        if node.kind == Kind::State && !node.children.is_empty() {
            let children: Vec<String> = node
                .children
                .iter()
                .filter(|c| !matches!(c.kind, Kind::History { .. }))
                .map(|c| c.id.clone())
                .collect();
            let roll: f64 = self.rng.random();
            if roll < 0.15 {
                let target = children.choose(self.rng).unwrap().clone();
                let actions = self.actions(Action::Log(format!("i:{}", node.id)));
                node.initial = Initial::Element(target, actions);
            } else if roll < 0.3 {
                let deep: Vec<String> = node.children.iter().flat_map(descendant_states).collect();
                node.initial = Initial::Attribute(deep.choose(self.rng).unwrap().clone());
            }
        }
        let done_events: Vec<String> = std::iter::once(&*node)
            .chain(node.children.iter())
            .filter(|n| {
                n.kind == Kind::Parallel || n.children.iter().any(|c| c.kind == Kind::Final)
            })
            .map(|n| format!("done.state.{}", n.id))
            .collect();
        let k = self.rng.random_range(0..=3);
        for index in 0..k {
            let roll: f64 = self.rng.random();
            let event = if roll < 0.2 {
                None
            } else if roll < 0.3 && !done_events.is_empty() {
                Some(done_events.choose(self.rng).unwrap().clone())
            } else if roll < 0.4 {
                Some(["i1", "i2"].choose(self.rng).unwrap().to_string())
            } else if roll < 0.44 {
                Some("*".to_string())
            } else {
                Some(
                    ["a", "b", "c", "a.x", "a b"]
                        .choose(self.rng)
                        .unwrap()
                        .to_string(),
                )
            };
            let mut actions = self.actions(Action::Log(format!("t:{}.{}", node.id, index)));
            let internal_ok = match &event {
                None => false,
                Some(e) => e.split(' ').all(|d| ["a", "b", "c", "a.x"].contains(&d)),
            };
            let cond = if !internal_ok {
                let k = format!("k{}", *counters);
                *counters += 1;
                actions.insert(1, Action::Increment(k.clone()));
                Some(format!("{k} < 2"))
            } else if self.chance(0.3) {
                Some(match self.rng.random_range(0..4) {
                    0 => "x % 2 == 0".to_string(),
                    1 => "x < 2".to_string(),
                    2 => "y > 0".to_string(),
                    _ => format!("In('{}')", ids.choose(self.rng).unwrap()),
                })
            } else {
                None
            };
            let roll: f64 = self.rng.random();
            let targets = if roll < 0.25 {
                Vec::new()
            } else if roll < 0.35 && !parallels.is_empty() {
                let regions = parallels.choose(self.rng).unwrap();
                let mut picked: Vec<&Vec<String>> = regions.iter().collect();
                picked.shuffle(self.rng);
                picked
                    .iter()
                    .take(2)
                    .map(|r| r.choose(self.rng).unwrap().clone())
                    .collect()
            } else {
                vec![ids.choose(self.rng).unwrap().clone()]
            };
            let internal = !targets.is_empty() && self.chance(0.2);
            node.transitions.push(Transition {
                event,
                cond,
                targets,
                internal,
                actions,
            });
        }
    }
}

/// The node with `id`, to change.
pub fn find_mut<'a>(doc: &'a mut Doc, id: &str) -> Option<&'a mut Node> {
    fn walk<'a>(n: &'a mut Node, id: &str) -> Option<&'a mut Node> {
        if n.id == id {
            return Some(n);
        }
        n.children.iter_mut().find_map(|c| walk(c, id))
    }
    doc.top.iter_mut().find_map(|n| walk(n, id))
}

/// Ids of a node and its descendants, in document order, that are states (histories
/// included: they are legal targets).
fn descendant_ids(n: &Node) -> Vec<String> {
    let mut v = vec![n.id.clone()];
    for c in &n.children {
        v.extend(descendant_ids(c));
    }
    v
}

/// Like [`descendant_ids`] without history pseudo-states.
fn descendant_states(n: &Node) -> Vec<String> {
    if matches!(n.kind, Kind::History { .. }) {
        return Vec::new();
    }
    let mut v = vec![n.id.clone()];
    for c in &n.children {
        v.extend(descendant_states(c));
    }
    v
}

/// Every id in the document, in document order.
pub fn all_ids(doc: &Doc) -> Vec<String> {
    doc.top.iter().flat_map(descendant_ids).collect()
}

/// For each `<parallel>`: for each of its regions, the states in it.
fn parallels(doc: &Doc) -> Vec<Vec<Vec<String>>> {
    fn walk(n: &Node, out: &mut Vec<Vec<Vec<String>>>) {
        if n.kind == Kind::Parallel {
            let regions: Vec<Vec<String>> = n
                .children
                .iter()
                .filter(|c| !matches!(c.kind, Kind::History { .. }))
                .map(descendant_states)
                .collect();
            if regions.len() >= 2 {
                out.push(regions);
            }
        }
        for c in &n.children {
            walk(c, out);
        }
    }
    let mut out = Vec::new();
    for n in &doc.top {
        walk(n, &mut out);
    }
    out
}

/// The node with `id`.
pub fn find<'a>(doc: &'a Doc, id: &str) -> Option<&'a Node> {
    fn walk<'a>(n: &'a Node, id: &str) -> Option<&'a Node> {
        if n.id == id {
            return Some(n);
        }
        n.children.iter().find_map(|c| walk(c, id))
    }
    doc.top.iter().find_map(|n| walk(n, id))
}

/// The parent node of `id` (`None` for top-level nodes).
pub fn find_parent<'a>(doc: &'a Doc, id: &str) -> Option<&'a Node> {
    fn walk<'a>(n: &'a Node, id: &str) -> Option<&'a Node> {
        if n.children.iter().any(|c| c.id == id) {
            return Some(n);
        }
        n.children.iter().find_map(|c| walk(c, id))
    }
    doc.top.iter().find_map(|n| walk(n, id))
}

/// The document as SCXML text.
pub fn to_xml(doc: &Doc) -> String {
    let mut s = String::from(
        "<scxml xmlns=\"http://www.w3.org/2005/07/scxml\" version=\"1.0\" datamodel=\"ecmascript\">\n",
    );
    // An empty <datamodel> is legal, but SCION 4.3.27 fails to compile one.
    if !doc.vars.is_empty() {
        s.push_str("  <datamodel>");
        for v in &doc.vars {
            s.push_str(&format!("<data id=\"{v}\" expr=\"0\"/>"));
        }
        s.push_str("</datamodel>\n");
    }
    for n in &doc.top {
        node_xml(n, 1, &mut s);
    }
    s.push_str("</scxml>\n");
    s
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn actions_xml(actions: &[Action]) -> String {
    actions
        .iter()
        .map(|a| match a {
            Action::Log(t) => format!("<log expr=\"'{}'\"/>", escape(t)),
            Action::LogVar(v) => format!("<log expr=\"'{v}=' + {v}\"/>"),
            Action::Raise(e) => format!("<raise event=\"{e}\"/>"),
            Action::Increment(v) => format!("<assign location=\"{v}\" expr=\"{v} + 1\"/>"),
        })
        .collect()
}

fn node_xml(n: &Node, depth: usize, s: &mut String) {
    let pad = "  ".repeat(depth);
    let (tag, extra) = match n.kind {
        Kind::State => ("state", String::new()),
        Kind::Parallel => ("parallel", String::new()),
        Kind::Final => ("final", String::new()),
        Kind::History { deep } => (
            "history",
            format!(" type=\"{}\"", if deep { "deep" } else { "shallow" }),
        ),
    };
    let initial = match &n.initial {
        Initial::Attribute(id) if !n.children.is_empty() => format!(" initial=\"{id}\""),
        _ => String::new(),
    };
    s.push_str(&format!("{pad}<{tag} id=\"{}\"{extra}{initial}>\n", n.id));
    if let Initial::Element(target, actions) = &n.initial
        && !n.children.is_empty()
    {
        s.push_str(&format!(
            "{pad}  <initial><transition target=\"{target}\">{}</transition></initial>\n",
            actions_xml(actions)
        ));
    }
    if !n.onentry.is_empty() {
        s.push_str(&format!(
            "{pad}  <onentry>{}</onentry>\n",
            actions_xml(&n.onentry)
        ));
    }
    if !n.onexit.is_empty() {
        s.push_str(&format!(
            "{pad}  <onexit>{}</onexit>\n",
            actions_xml(&n.onexit)
        ));
    }
    for t in &n.transitions {
        let mut attrs = String::new();
        if let Some(e) = &t.event {
            attrs.push_str(&format!(" event=\"{e}\""));
        }
        if let Some(c) = &t.cond {
            attrs.push_str(&format!(" cond=\"{}\"", escape(c)));
        }
        if !t.targets.is_empty() {
            attrs.push_str(&format!(" target=\"{}\"", t.targets.join(" ")));
        }
        if t.internal {
            attrs.push_str(" type=\"internal\"");
        }
        s.push_str(&format!(
            "{pad}  <transition{attrs}>{}</transition>\n",
            actions_xml(&t.actions)
        ));
    }
    for c in &n.children {
        node_xml(c, depth + 1, s);
    }
    s.push_str(&format!("{pad}</{tag}>\n"));
}
