//! SCXML source text to a validated [`Document`].
//!
//! Parsing never panics and never expands DTDs or entities; every problem found is reported
//! with the source name, `line:column` and the element involved. Everything that can be
//! checked without running the document is checked here.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use roxmltree::Node;

use crate::model::*;

/// The SCXML namespace.
pub const SCXML_NS: &str = "http://www.w3.org/2005/07/scxml";
/// Namespace of this project's extension elements (`<response>`).
pub const ORS_NS: &str = "urn:x-ors:scxml";

/// Size limits applied while compiling. Every field has a default; documents over a limit
/// are rejected, never truncated.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest document, in bytes.
    pub max_bytes: usize,
    /// Deepest element nesting.
    pub max_depth: usize,
    /// Most states (of every kind).
    pub max_states: usize,
    /// XML nodes of all kinds (elements, text, comments).
    pub max_nodes: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 4 << 20,
            max_depth: 64,
            max_states: 10_000,
            max_nodes: 200_000,
        }
    }
}

/// Loads the sources that a document names with `src` (`<script src>`, `<data src>`) at
/// compile time. The engine itself never does I/O: the host decides what a URI means.
pub trait Loader {
    /// The text `uri` names, or why it cannot be had.
    fn load(&self, uri: &str) -> Result<String, String>;
}

/// A loader that refuses everything.
pub struct NoLoader;

impl Loader for NoLoader {
    fn load(&self, uri: &str) -> Result<String, String> {
        Err(format!("no loader configured for '{uri}'"))
    }
}

/// Checks an expression's syntax without running it (provided by a datamodel).
pub trait SyntaxCheck {
    /// `Ok` if `src` is a well-formed expression of `kind`, or the syntax error.
    fn check(&self, kind: ExprKind, src: &str) -> Result<(), String>;
}

/// One problem found in a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The document's name (file or URL) as given to the compiler.
    pub source_name: String,
    /// Where the problem is.
    pub pos: Pos,
    /// The element involved, e.g. `transition`; empty for XML syntax errors.
    pub element: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}:{}:{}: ",
            self.source_name, self.pos.line, self.pos.col
        )?;
        if !self.element.is_empty() {
            write!(f, "<{}>: ", self.element)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a document was rejected: every problem found, in source order.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", display_all(.diagnostics))]
pub struct CompileError {
    /// Every problem, in source order.
    pub diagnostics: Vec<Diagnostic>,
}

fn display_all(d: &[Diagnostic]) -> String {
    d.iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join("\n")
}

/// What compiling needs besides the text.
pub struct CompileOptions<'a> {
    /// The document's name in diagnostics.
    pub source_name: &'a str,
    /// Size limits.
    pub limits: Limits,
    /// Loads `src` of `<script>` and `<data>`.
    pub loader: &'a dyn Loader,
    /// When set, malformed expressions are reported as errors. Without it they compile and
    /// raise `error.execution` when evaluated, as the W3C tests require.
    pub syntax: Option<&'a dyn SyntaxCheck>,
}

impl Default for CompileOptions<'_> {
    fn default() -> Self {
        CompileOptions {
            source_name: "<document>",
            limits: Limits::default(),
            loader: &NoLoader,
            syntax: None,
        }
    }
}

/// Compiles SCXML source text.
pub fn compile(text: &str, opts: &CompileOptions) -> Result<Arc<Document>, CompileError> {
    let fail = |pos: Pos, msg: String| CompileError {
        diagnostics: vec![Diagnostic {
            source_name: opts.source_name.to_string(),
            pos,
            element: String::new(),
            message: msg,
        }],
    };
    if text.len() > opts.limits.max_bytes {
        return Err(fail(
            Pos { line: 1, col: 1 },
            format!(
                "document is {} bytes, over the limit of {} bytes",
                text.len(),
                opts.limits.max_bytes
            ),
        ));
    }
    let xml = roxmltree::Document::parse_with_options(
        text,
        roxmltree::ParsingOptions {
            allow_dtd: false,
            nodes_limit: opts.limits.max_nodes,
            ..Default::default()
        },
    )
    .map_err(|e| {
        let p = e.pos();
        fail(
            Pos {
                line: p.row,
                col: p.col,
            },
            format!("malformed XML: {e}"),
        )
    })?;
    let root = xml.root_element();
    // roxmltree builds the tree iteratively, but our walk recurses: check depth first.
    let mut too_deep = None;
    for n in root.descendants() {
        if n.is_element() && n.ancestors().count() > opts.limits.max_depth + 1 {
            too_deep = Some(n);
            break;
        }
    }
    if let Some(n) = too_deep {
        let p = xml.text_pos_at(n.range().start);
        return Err(fail(
            Pos {
                line: p.row,
                col: p.col,
            },
            format!(
                "elements nest deeper than the limit of {}",
                opts.limits.max_depth
            ),
        ));
    }
    let mut b = Builder::new(&xml, opts);
    let doc = b.document(root);
    match doc {
        Some(doc) if b.errors.is_empty() => Ok(doc),
        _ => {
            b.errors.sort_by_key(|d| (d.pos.line, d.pos.col));
            Err(CompileError {
                diagnostics: b.errors,
            })
        }
    }
}

struct Builder<'x, 'o> {
    xml: &'x roxmltree::Document<'x>,
    opts: &'o CompileOptions<'o>,
    errors: Vec<Diagnostic>,
    invoke_count: u32,
}

/// Per-document state while building (nested `<invoke><content><scxml>` documents get
/// their own).
struct DocBuilder {
    states: Vec<State>,
    transitions: Vec<Transition>,
    exprs: Vec<Expr>,
    ids: HashMap<Box<str>, StateId>,
    /// Targets to resolve once every id is known: (transition, names, pos, element).
    pending_targets: Vec<(TransitionId, Vec<String>, Pos)>,
    /// `initial="..."` attributes to resolve: (state, names, pos).
    pending_initial: Vec<(StateId, Vec<String>, Pos)>,
    anon: u32,
    uses_in: bool,
    uses_event: bool,
    uses_ioprocessors: bool,
}

impl<'x, 'o> Builder<'x, 'o> {
    fn new(xml: &'x roxmltree::Document<'x>, opts: &'o CompileOptions<'o>) -> Self {
        Builder {
            xml,
            opts,
            errors: Vec::new(),
            invoke_count: 0,
        }
    }

    fn pos(&self, n: Node) -> Pos {
        let p = self.xml.text_pos_at(n.range().start);
        Pos {
            line: p.row,
            col: p.col,
        }
    }

    fn err(&mut self, n: Node, msg: impl Into<String>) {
        let pos = self.pos(n);
        self.errors.push(Diagnostic {
            source_name: self.opts.source_name.to_string(),
            pos,
            element: n.tag_name().name().to_string(),
            message: msg.into(),
        });
    }

    fn document(&mut self, root: Node) -> Option<Arc<Document>> {
        if root.tag_name().name() != "scxml" || root.tag_name().namespace() != Some(SCXML_NS) {
            self.err(
                root,
                format!(
                    "the root element must be <scxml> in namespace {SCXML_NS} (found <{}> in {})",
                    root.tag_name().name(),
                    root.tag_name().namespace().unwrap_or("no namespace")
                ),
            );
            return None;
        }
        if let Some(v) = root.attribute("version")
            && v.trim() != "1.0"
        {
            self.err(root, format!("version must be \"1.0\", not \"{v}\""));
        }
        let datamodel = match root.attribute("datamodel").map(str::trim) {
            None | Some("ecmascript") => DatamodelKind::EcmaScript,
            Some("null") => DatamodelKind::Null,
            Some(other) => {
                self.err(
                    root,
                    format!("unsupported datamodel \"{other}\" (supported: ecmascript, null)"),
                );
                DatamodelKind::EcmaScript
            }
        };
        let binding = match root.attribute("binding").map(str::trim) {
            None | Some("early") => Binding::Early,
            Some("late") => Binding::Late,
            Some(other) => {
                self.err(
                    root,
                    format!("binding must be early or late, not \"{other}\""),
                );
                Binding::Early
            }
        };
        let persist = self.bool_attr(root, "_persist");
        let send_session_recovered = self
            .bool_attr(root, "_sendSessionRecovered")
            .unwrap_or(false);
        let mut d = DocBuilder {
            states: Vec::new(),
            transitions: Vec::new(),
            exprs: Vec::new(),
            ids: HashMap::new(),
            pending_targets: Vec::new(),
            pending_initial: Vec::new(),
            anon: 0,
            uses_in: false,
            uses_event: false,
            uses_ioprocessors: false,
        };
        let mut global_script = Vec::new();
        self.state(&mut d, root, None, 0, StateKind::Root, &mut global_script);
        self.resolve(&mut d);
        Some(Arc::new(Document {
            uid: Document::next_uid(),
            source_name: self.opts.source_name.into(),
            name: root.attribute("name").map(Into::into),
            datamodel,
            binding,
            persist,
            send_session_recovered,
            states: d.states,
            transitions: d.transitions,
            exprs: d.exprs,
            global_script,
            ids: d.ids,
            uses_in: d.uses_in,
            uses_event: d.uses_event,
            uses_ioprocessors: d.uses_ioprocessors,
        }))
    }

    fn bool_attr(&mut self, n: Node, name: &str) -> Option<bool> {
        match n.attribute(name).map(str::trim) {
            None => None,
            Some("true") => Some(true),
            Some("false") => Some(false),
            Some(v) => {
                self.err(n, format!("{name} must be true or false, not \"{v}\""));
                None
            }
        }
    }

    /// Adds a state (or `<scxml>`) and, recursively, its children.
    fn state(
        &mut self,
        d: &mut DocBuilder,
        n: Node,
        parent: Option<StateId>,
        depth: u32,
        kind_hint: StateKind,
        global_script: &mut Block,
    ) -> StateId {
        let me = d.states.len() as StateId;
        // Reported once; the document is rejected but still walked (the XML node limit
        // bounds the work) so that other problems are reported too.
        if d.states.len() == self.opts.limits.max_states {
            self.err(
                n,
                format!(
                    "more states than the limit of {}",
                    self.opts.limits.max_states
                ),
            );
        }
        let pos = self.pos(n);
        let id: Box<str> = match n.attribute("id") {
            Some(id) if kind_hint != StateKind::Root => {
                if id.is_empty() || id.chars().any(char::is_whitespace) {
                    self.err(n, format!("\"{id}\" is not a valid state id"));
                }
                if d.ids.insert(id.into(), me).is_some() {
                    self.err(n, format!("duplicate state id \"{id}\""));
                }
                id.into()
            }
            _ => {
                // Anonymous states get an id too, so that snapshots can name them.
                d.anon += 1;
                let id: Box<str> = format!("__ors_anon{}", d.anon).into();
                if d.ids.insert(id.clone(), me).is_some() {
                    self.err(
                        n,
                        format!("duplicate state id \"{id}\" (reserved for anonymous states)"),
                    );
                }
                id
            }
        };
        d.states.push(State {
            id,
            kind: kind_hint,
            parent,
            children: Vec::new(),
            history: Vec::new(),
            last_descendant: me,
            depth,
            initial: None,
            transitions: Vec::new(),
            onentry: Vec::new(),
            onexit: Vec::new(),
            data: Vec::new(),
            invokes: Vec::new(),
            donedata: None,
            pos,
        });
        let tag = n.tag_name().name();
        let mut initial_elem: Option<Node> = None;
        let mut seen_datamodel = false;
        for c in n.children().filter(Node::is_element) {
            let ns = c.tag_name().namespace();
            if ns != Some(SCXML_NS) {
                continue; // foreign elements are extension points; ignore
            }
            let ctag = c.tag_name().name();
            let allowed: &[&str] = match kind_hint {
                StateKind::Root => &["state", "parallel", "final", "datamodel", "script"],
                StateKind::Final => &["onentry", "onexit", "donedata"],
                StateKind::ShallowHistory | StateKind::DeepHistory => &["transition"],
                StateKind::Parallel => &[
                    "onentry",
                    "onexit",
                    "transition",
                    "state",
                    "parallel",
                    "history",
                    "datamodel",
                    "invoke",
                ],
                _ => &[
                    "onentry",
                    "onexit",
                    "transition",
                    "initial",
                    "state",
                    "parallel",
                    "final",
                    "history",
                    "datamodel",
                    "invoke",
                ],
            };
            if !allowed.contains(&ctag) {
                if is_scxml_element(ctag) {
                    self.err(c, format!("<{ctag}> is not allowed inside <{tag}>"));
                } else {
                    self.err(
                        c,
                        format!("unknown element <{ctag}> in the SCXML namespace"),
                    );
                }
                continue;
            }
            match ctag {
                "state" => {
                    let k = if has_child_states(c) {
                        StateKind::Compound
                    } else {
                        StateKind::Atomic
                    };
                    let s = self.state(d, c, Some(me), depth + 1, k, global_script);
                    d.states[me as usize].children.push(s);
                }
                "parallel" => {
                    let s = self.state(
                        d,
                        c,
                        Some(me),
                        depth + 1,
                        StateKind::Parallel,
                        global_script,
                    );
                    d.states[me as usize].children.push(s);
                }
                "final" => {
                    let s = self.state(d, c, Some(me), depth + 1, StateKind::Final, global_script);
                    d.states[me as usize].children.push(s);
                }
                "history" => {
                    let k = match c.attribute("type").map(str::trim) {
                        None | Some("shallow") => StateKind::ShallowHistory,
                        Some("deep") => StateKind::DeepHistory,
                        Some(other) => {
                            self.err(
                                c,
                                format!("history type must be shallow or deep, not \"{other}\""),
                            );
                            StateKind::ShallowHistory
                        }
                    };
                    let s = self.state(d, c, Some(me), depth + 1, k, global_script);
                    d.states[me as usize].history.push(s);
                }
                "onentry" => {
                    let b = self.block(d, c);
                    d.states[me as usize].onentry.push(b);
                }
                "onexit" => {
                    let b = self.block(d, c);
                    d.states[me as usize].onexit.push(b);
                }
                "transition" => {
                    let t = self.transition(d, c, me);
                    if d.states[me as usize].is_history() {
                        if d.states[me as usize].initial.is_some() {
                            self.err(c, "a <history> has at most one <transition>");
                        }
                        d.states[me as usize].initial = Some(t);
                    } else {
                        d.states[me as usize].transitions.push(t);
                    }
                }
                "initial" => {
                    if initial_elem.is_some() {
                        self.err(c, "a state has at most one <initial>");
                    }
                    initial_elem = Some(c);
                }
                "datamodel" => {
                    if seen_datamodel {
                        self.err(c, "a state has at most one <datamodel>");
                    }
                    seen_datamodel = true;
                    self.datamodel(d, c, me);
                }
                "invoke" => {
                    let inv = self.invoke(d, c);
                    d.states[me as usize].invokes.push(Arc::new(inv));
                }
                "donedata" => {
                    let dd = self.donedata(d, c);
                    d.states[me as usize].donedata = Some(dd);
                }
                "script" => {
                    let a = self.script(d, c);
                    global_script.push(a);
                }
                _ => unreachable!("filtered by `allowed`"),
            }
        }
        d.states[me as usize].last_descendant =
            (d.states.len() as StateId).saturating_sub(1).max(me);

        // The initial transition of compound states and <scxml>.
        let is_compound = matches!(kind_hint, StateKind::Compound | StateKind::Root);
        let initial_attr = n.attribute("initial");
        if initial_attr.is_some() && !is_compound {
            self.err(
                n,
                "only a <state> with child states (or <scxml>) may have initial=",
            );
        }
        if let Some(ie) = initial_elem {
            if initial_attr.is_some() {
                self.err(ie, "a state may not have both initial= and <initial>");
            }
            if kind_hint != StateKind::Compound {
                self.err(ie, "<initial> needs sibling child states");
            }
            let ts: Vec<Node> = ie
                .children()
                .filter(|c| c.is_element() && c.tag_name().namespace() == Some(SCXML_NS))
                .collect();
            if ts.len() != 1 || ts[0].tag_name().name() != "transition" {
                self.err(ie, "<initial> must contain exactly one <transition>");
            } else {
                let tn = ts[0];
                if tn.attribute("event").is_some() || tn.attribute("cond").is_some() {
                    self.err(
                        tn,
                        "the <transition> of <initial> may have neither event nor cond",
                    );
                }
                if tn.attribute("target").is_none() {
                    self.err(tn, "the <transition> of <initial> needs a target");
                }
                let t = self.transition(d, tn, me);
                d.states[me as usize].initial = Some(t);
            }
        } else if is_compound {
            let t = d.transitions.len() as TransitionId;
            d.transitions.push(Transition {
                source: me,
                events: Vec::new(),
                cond: None,
                targets: Vec::new(),
                internal: false,
                actions: Vec::new(),
                pos,
            });
            d.states[me as usize].initial = Some(t);
            match initial_attr {
                Some(names) => {
                    let names: Vec<String> = names.split_whitespace().map(String::from).collect();
                    if names.is_empty() {
                        self.err(n, "initial= is empty");
                    }
                    d.pending_initial.push((me, names, pos));
                }
                None => {
                    if let Some(&first) = d.states[me as usize].children.first() {
                        d.transitions[t as usize].targets.push(first);
                    } else if kind_hint == StateKind::Root {
                        self.err(
                            n,
                            "<scxml> needs at least one <state>, <parallel> or <final>",
                        );
                    }
                }
            }
        }
        if d.states[me as usize].is_history() {
            match d.states[me as usize].initial {
                None => self.err(n, "a <history> needs a default <transition>"),
                Some(t) => {
                    let tn = n
                        .children()
                        .find(|c| c.has_tag_name((SCXML_NS, "transition")));
                    if let Some(tn) = tn
                        && (tn.attribute("event").is_some() || tn.attribute("cond").is_some())
                    {
                        self.err(
                            tn,
                            "the <transition> of <history> may have neither event nor cond",
                        );
                    }
                    if d.transitions[t as usize].targets.is_empty()
                        && d.pending_targets.iter().all(|p| p.0 != t)
                    {
                        self.err(n, "the <transition> of <history> needs a target");
                    }
                }
            }
        }
        me
    }

    /// Resolves target names and checks what needs the whole tree.
    fn resolve(&mut self, d: &mut DocBuilder) {
        let pending = std::mem::take(&mut d.pending_targets);
        for (t, names, pos) in pending {
            for name in names {
                match d.ids.get(name.as_str()) {
                    Some(&s) => d.transitions[t as usize].targets.push(s),
                    None => self.err_at(
                        pos,
                        "transition",
                        format!("unknown transition target \"{name}\""),
                    ),
                }
            }
        }
        let pending = std::mem::take(&mut d.pending_initial);
        for (s, names, pos) in pending {
            let t = d.states[s as usize]
                .initial
                .expect("created with the pending entry");
            for name in names {
                match d.ids.get(name.as_str()).copied() {
                    Some(target) => {
                        let last = d.states[s as usize].last_descendant;
                        if !(target > s && target <= last) {
                            self.err_at(
                                pos,
                                element_name(d.states[s as usize].kind),
                                format!(
                                    "initial state \"{name}\" is not a descendant of \"{}\"",
                                    d.states[s as usize].id
                                ),
                            );
                        }
                        d.transitions[t as usize].targets.push(target);
                    }
                    None => self.err_at(
                        pos,
                        element_name(d.states[s as usize].kind),
                        format!("unknown initial state \"{name}\""),
                    ),
                }
            }
        }
        // <initial> and <history> transitions must stay inside their parent.
        for i in 0..d.states.len() {
            let st = &d.states[i];
            let Some(t) = st.initial else { continue };
            let (lo, hi) = if st.is_history() {
                let p = st.parent.unwrap_or(0) as usize;
                (p as StateId, d.states[p].last_descendant)
            } else {
                (i as StateId, st.last_descendant)
            };
            let bad: Vec<StateId> = d.transitions[t as usize]
                .targets
                .iter()
                .copied()
                .filter(|&x| !(x > lo && x <= hi))
                .collect();
            let pos = d.transitions[t as usize].pos;
            for x in bad {
                let (what, kind) = if st.is_history() {
                    ("history default", "history")
                } else {
                    ("initial", element_name(st.kind))
                };
                let msg = format!(
                    "{what} target \"{}\" is not a descendant of \"{}\"",
                    d.states[x as usize].id, d.states[lo as usize].id
                );
                self.err_at(pos, kind, msg);
            }
            if st.kind == StateKind::ShallowHistory {
                let parent = st.parent.unwrap_or(0);
                let targets = d.transitions[t as usize].targets.clone();
                for x in targets {
                    if d.states[x as usize].parent != Some(parent) {
                        let msg = format!(
                            "shallow history default target \"{}\" must be a child of \"{}\"",
                            d.states[x as usize].id, d.states[parent as usize].id
                        );
                        self.err_at(pos, "history", msg);
                    }
                }
            }
        }
        // Multiple targets of one transition must be able to be active together.
        for t in 0..d.transitions.len() {
            let targets = d.transitions[t].targets.clone();
            for (i, &a) in targets.iter().enumerate() {
                for &b in &targets[i + 1..] {
                    if !compatible(&d.states, a, b) {
                        let msg = format!(
                            "targets \"{}\" and \"{}\" cannot be active at the same time",
                            d.states[a as usize].id, d.states[b as usize].id
                        );
                        self.err_at(d.transitions[t].pos, "transition", msg);
                    }
                }
            }
        }
    }

    fn err_at(&mut self, pos: Pos, element: &str, msg: String) {
        self.errors.push(Diagnostic {
            source_name: self.opts.source_name.to_string(),
            pos,
            element: element.to_string(),
            message: msg,
        });
    }

    fn transition(&mut self, d: &mut DocBuilder, n: Node, source: StateId) -> TransitionId {
        let pos = self.pos(n);
        let events: Vec<Box<str>> = n
            .attribute("event")
            .map(|e| e.split_whitespace().map(Into::into).collect())
            .unwrap_or_default();
        if n.attribute("event").is_some() && events.is_empty() {
            self.err(n, "event= is empty");
        }
        let cond = n
            .attribute("cond")
            .map(|c| self.expr(d, n, ExprKind::Cond, c));
        let internal = match n.attribute("type").map(str::trim) {
            None | Some("external") => false,
            Some("internal") => true,
            Some(o) => {
                self.err(n, format!("type must be internal or external, not \"{o}\""));
                false
            }
        };
        let actions = self.block(d, n);
        let t = d.transitions.len() as TransitionId;
        d.transitions.push(Transition {
            source,
            events,
            cond,
            targets: Vec::new(),
            internal,
            actions,
            pos,
        });
        if let Some(targets) = n.attribute("target") {
            let names: Vec<String> = targets.split_whitespace().map(String::from).collect();
            if names.is_empty() {
                self.err(n, "target= is empty");
            }
            d.pending_targets.push((t, names, pos));
        }
        t
    }

    fn expr(&mut self, d: &mut DocBuilder, n: Node, kind: ExprKind, src: &str) -> ExprId {
        let pos = self.pos(n);
        if let Some(check) = self.opts.syntax
            && let Err(msg) = check.check(kind, src)
        {
            self.err(n, format!("malformed expression \"{}\": {msg}", src.trim()));
        }
        if src.contains("In(") {
            d.uses_in = true;
        }
        if src.contains("_event") {
            d.uses_event = true;
        }
        if src.contains("_ioprocessors") {
            d.uses_ioprocessors = true;
        }
        d.exprs.push(Expr {
            kind,
            src: src.into(),
            pos,
        });
        (d.exprs.len() - 1) as ExprId
    }

    fn text_attr(&mut self, d: &mut DocBuilder, n: Node, lit: &str, exp: &str) -> Option<Text> {
        match (n.attribute(lit), n.attribute(exp)) {
            (Some(_), Some(_)) => {
                self.err(n, format!("{lit}= and {exp}= are mutually exclusive"));
                None
            }
            (Some(v), None) => Some(Text::Literal(v.into())),
            (None, Some(e)) => Some(Text::Expr(self.expr(d, n, ExprKind::Value, e))),
            (None, None) => None,
        }
    }

    fn block(&mut self, d: &mut DocBuilder, n: Node) -> Block {
        let mut out = Vec::new();
        for c in n.children().filter(Node::is_element) {
            if let Some(a) = self.action(d, c) {
                out.push(a);
            }
        }
        out
    }

    fn action(&mut self, d: &mut DocBuilder, c: Node) -> Option<Action> {
        let ns = c.tag_name().namespace();
        let tag = c.tag_name().name();
        if ns == Some(ORS_NS) {
            if tag == "response" {
                return self.response(d, c);
            }
            self.err(
                c,
                format!("unknown element <{tag}> in the {ORS_NS} namespace"),
            );
            return None;
        }
        if ns != Some(SCXML_NS) {
            return None; // custom action of another namespace: ignored
        }
        Some(match tag {
            "raise" => match c.attribute("event") {
                Some(e) if !e.trim().is_empty() => Action::Raise {
                    event: e.trim().into(),
                },
                _ => {
                    self.err(c, "<raise> needs event=");
                    return None;
                }
            },
            "log" => Action::Log {
                label: c.attribute("label").map(Into::into),
                expr: c
                    .attribute("expr")
                    .map(|e| self.expr(d, c, ExprKind::Value, e)),
            },
            "assign" => {
                let Some(loc) = c.attribute("location") else {
                    self.err(c, "<assign> needs location=");
                    return None;
                };
                let location = self.expr(d, c, ExprKind::Location, loc);
                let has_children = c
                    .children()
                    .any(|k| k.is_element() || !k.text().unwrap_or("").trim().is_empty());
                let value = match c.attribute("expr") {
                    Some(e) => {
                        if has_children {
                            self.err(c, "<assign> may not have both expr= and content");
                        }
                        AssignValue::Expr(self.expr(d, c, ExprKind::Value, e))
                    }
                    None => AssignValue::Content(self.inline_content(c)),
                };
                Action::Assign { location, value }
            }
            "if" => {
                let cond = match c.attribute("cond") {
                    Some(e) => self.expr(d, c, ExprKind::Cond, e),
                    None => {
                        self.err(c, "<if> needs cond=");
                        return None;
                    }
                };
                let mut branches: Vec<(Option<ExprId>, Block)> = vec![(Some(cond), Vec::new())];
                let mut saw_else = false;
                for k in c.children().filter(Node::is_element) {
                    if k.tag_name().namespace() == Some(SCXML_NS) && k.tag_name().name() == "elseif"
                    {
                        if saw_else {
                            self.err(k, "<elseif> after <else>");
                        }
                        let ce = match k.attribute("cond") {
                            Some(e) => self.expr(d, k, ExprKind::Cond, e),
                            None => {
                                self.err(k, "<elseif> needs cond=");
                                continue;
                            }
                        };
                        branches.push((Some(ce), Vec::new()));
                    } else if k.tag_name().namespace() == Some(SCXML_NS)
                        && k.tag_name().name() == "else"
                    {
                        if saw_else {
                            self.err(k, "more than one <else>");
                        }
                        saw_else = true;
                        branches.push((None, Vec::new()));
                    } else if let Some(a) = self.action(d, k) {
                        branches.last_mut().expect("starts non-empty").1.push(a);
                    }
                }
                Action::If { branches }
            }
            "elseif" | "else" => {
                self.err(c, format!("<{tag}> outside <if>"));
                return None;
            }
            "foreach" => {
                let (Some(array), Some(item)) = (c.attribute("array"), c.attribute("item")) else {
                    self.err(c, "<foreach> needs array= and item=");
                    return None;
                };
                let array = self.expr(d, c, ExprKind::Value, array);
                let item = self.expr(d, c, ExprKind::Location, item);
                let index = c
                    .attribute("index")
                    .map(|i| self.expr(d, c, ExprKind::Location, i));
                let body = self.block(d, c);
                Action::Foreach {
                    array,
                    item,
                    index,
                    body,
                }
            }
            "script" => self.script(d, c),
            "send" => return self.send(d, c).map(|s| Action::Send(Box::new(s))),
            "cancel" => match self.text_attr(d, c, "sendid", "sendidexpr") {
                Some(sendid) => Action::Cancel { sendid },
                None => {
                    self.err(c, "<cancel> needs sendid= or sendidexpr=");
                    return None;
                }
            },
            other => {
                if is_scxml_element(other) {
                    self.err(c, format!("<{other}> is not executable content"));
                } else {
                    self.err(
                        c,
                        format!("unknown element <{other}> in the SCXML namespace"),
                    );
                }
                return None;
            }
        })
    }

    fn script(&mut self, d: &mut DocBuilder, c: Node) -> Action {
        let inline: String = c.children().filter_map(|k| k.text()).collect();
        let src = match c.attribute("src") {
            Some(uri) => {
                if !inline.trim().is_empty() {
                    self.err(c, "<script> may not have both src= and content");
                }
                match self.opts.loader.load(uri) {
                    Ok(text) => text,
                    Err(e) => {
                        // The spec requires rejecting a document whose script can't be loaded.
                        self.err(c, format!("cannot load script \"{uri}\": {e}"));
                        String::new()
                    }
                }
            }
            None => inline,
        };
        Action::Script {
            body: self.expr(d, c, ExprKind::Script, &src),
        }
    }

    fn send(&mut self, d: &mut DocBuilder, c: Node) -> Option<Send> {
        let pos = self.pos(c);
        let event = self.text_attr(d, c, "event", "eventexpr");
        let target = self.text_attr(d, c, "target", "targetexpr");
        let type_ = self.text_attr(d, c, "type", "typeexpr");
        let delay = self.text_attr(d, c, "delay", "delayexpr");
        if c.attribute("id").is_some() && c.attribute("idlocation").is_some() {
            self.err(c, "id= and idlocation= are mutually exclusive");
        }
        if let Some(Text::Literal(dl)) = &delay
            && parse_delay(dl).is_none()
        {
            self.err(
                c,
                format!("delay \"{dl}\" is not a CSS2 time such as 500ms or 2s"),
            );
        }
        if delay.is_some() && matches!(&target, Some(Text::Literal(t)) if &**t == "#_internal") {
            self.err(c, "a <send> to #_internal may not have a delay");
        }
        let idlocation = c
            .attribute("idlocation")
            .map(|e| self.expr(d, c, ExprKind::Location, e));
        let namelist = self.namelist(d, c);
        let (params, body) = self.params_and_body(d, c);
        if !matches!(body, Body::None) && (!params.is_empty() || !namelist.is_empty()) {
            self.err(c, "<content> may not be combined with <param> or namelist=");
        }
        Some(Send {
            event,
            target,
            type_,
            id: c.attribute("id").map(Into::into),
            idlocation,
            delay,
            namelist,
            params,
            body,
            pos,
        })
    }

    fn namelist(&mut self, d: &mut DocBuilder, c: Node) -> Vec<(Box<str>, ExprId)> {
        c.attribute("namelist")
            .map(|l| {
                l.split_whitespace()
                    .map(|name| (name.into(), self.expr(d, c, ExprKind::Location, name)))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn params_and_body(&mut self, d: &mut DocBuilder, c: Node) -> (Vec<Param>, Body) {
        let mut params = Vec::new();
        let mut body = Body::None;
        for k in c.children().filter(Node::is_element) {
            if k.tag_name().namespace() != Some(SCXML_NS) {
                continue;
            }
            match k.tag_name().name() {
                "param" => {
                    if let Some(p) = self.param(d, k) {
                        params.push(p);
                    }
                }
                "content" => {
                    if !matches!(body, Body::None) {
                        self.err(k, "at most one <content>");
                    }
                    body = match k.attribute("expr") {
                        Some(e) => {
                            if k.children().any(|x| {
                                x.is_element() || !x.text().unwrap_or("").trim().is_empty()
                            }) {
                                self.err(k, "<content> may not have both expr= and children");
                            }
                            Body::ContentExpr(self.expr(d, k, ExprKind::Value, e))
                        }
                        None => Body::Content(self.inline_content(k)),
                    };
                }
                "finalize" => {}
                other => {
                    let parent = c.tag_name().name();
                    if parent != "invoke" || other != "finalize" {
                        self.err(k, format!("<{other}> is not allowed inside <{parent}>"));
                    }
                }
            }
        }
        (params, body)
    }

    fn param(&mut self, d: &mut DocBuilder, k: Node) -> Option<Param> {
        let Some(name) = k.attribute("name") else {
            self.err(k, "<param> needs name=");
            return None;
        };
        let e = match (k.attribute("expr"), k.attribute("location")) {
            (Some(_), Some(_)) => {
                self.err(k, "expr= and location= are mutually exclusive");
                return None;
            }
            (Some(e), None) => self.expr(d, k, ExprKind::Value, e),
            (None, Some(l)) => self.expr(d, k, ExprKind::Location, l),
            (None, None) => {
                self.err(k, "<param> needs expr= or location=");
                return None;
            }
        };
        Some(Param {
            name: name.into(),
            expr: e,
        })
    }

    fn response(&mut self, d: &mut DocBuilder, c: Node) -> Option<Action> {
        let Some(rid) = c.attribute("requestid") else {
            self.err(c, "<response> needs requestid=");
            return None;
        };
        let requestid = self.expr(d, c, ExprKind::Value, rid);
        let type_ = self.text_attr(d, c, "type", "typeexpr");
        if let Some(Text::Literal(t)) = &type_
            && !matches!(&**t, "positive" | "negative")
        {
            self.err(c, format!("type must be positive or negative, not \"{t}\""));
        }
        // As in ORS, resultcode is an expression (like requestid).
        let resultcode = c
            .attribute("resultcode")
            .map(|e| Text::Expr(self.expr(d, c, ExprKind::Value, e)));
        let mut params = Vec::new();
        for k in c.children().filter(Node::is_element) {
            if k.tag_name().name() == "param"
                && let Some(p) = self.param(d, k)
            {
                params.push(p);
            }
        }
        Some(Action::Response(Box::new(Response {
            requestid,
            type_,
            resultcode,
            params,
        })))
    }

    fn datamodel(&mut self, d: &mut DocBuilder, n: Node, owner: StateId) {
        for c in n.children().filter(Node::is_element) {
            if c.tag_name().namespace() != Some(SCXML_NS) {
                continue;
            }
            if c.tag_name().name() != "data" {
                self.err(
                    c,
                    format!(
                        "<{}> is not allowed inside <datamodel>",
                        c.tag_name().name()
                    ),
                );
                continue;
            }
            let pos = self.pos(c);
            let Some(id) = c.attribute("id") else {
                self.err(c, "<data> needs id=");
                continue;
            };
            let has_content = c
                .children()
                .any(|k| k.is_element() || !k.text().unwrap_or("").trim().is_empty());
            let n_sources = c.attribute("src").is_some() as u8
                + c.attribute("expr").is_some() as u8
                + has_content as u8;
            if n_sources > 1 {
                self.err(c, "<data> takes at most one of src=, expr= and content");
            }
            let init = if let Some(e) = c.attribute("expr") {
                DataInit::Expr(self.expr(d, c, ExprKind::Value, e))
            } else if let Some(uri) = c.attribute("src") {
                match self.opts.loader.load(uri) {
                    Ok(text) => DataInit::Content(classify_content(&text)),
                    Err(e) => DataInit::SrcFailed(format!("cannot load \"{uri}\": {e}").into()),
                }
            } else if has_content {
                DataInit::Content(self.inline_content(c))
            } else {
                DataInit::None
            };
            d.states[owner as usize].data.push(DataItem {
                id: id.into(),
                init,
                pos,
            });
        }
    }

    fn donedata(&mut self, d: &mut DocBuilder, n: Node) -> DoneData {
        let (params, body) = self.params_and_body(d, n);
        if !params.is_empty() && !matches!(body, Body::None) {
            self.err(n, "<donedata> takes either <content> or <param>s");
        }
        DoneData { params, body }
    }

    fn invoke(&mut self, d: &mut DocBuilder, c: Node) -> Invoke {
        let pos = self.pos(c);
        let type_ = self.text_attr(d, c, "type", "typeexpr");
        let src = self.text_attr(d, c, "src", "srcexpr");
        if c.attribute("id").is_some() && c.attribute("idlocation").is_some() {
            self.err(c, "id= and idlocation= are mutually exclusive");
        }
        let idlocation = c
            .attribute("idlocation")
            .map(|e| self.expr(d, c, ExprKind::Location, e));
        let namelist = self.namelist(d, c);
        let autoforward = self.bool_attr(c, "autoforward").unwrap_or(false);
        let mut params = Vec::new();
        let mut content = InvokeContent::None;
        let mut finalize = Vec::new();
        for k in c.children().filter(Node::is_element) {
            if k.tag_name().namespace() != Some(SCXML_NS) {
                continue;
            }
            match k.tag_name().name() {
                "param" => {
                    if let Some(p) = self.param(d, k) {
                        params.push(p);
                    }
                }
                "finalize" => finalize = self.block(d, k),
                "content" => {
                    if let Some(e) = k.attribute("expr") {
                        content = InvokeContent::Expr(self.expr(d, k, ExprKind::Value, e));
                    } else if let Some(child) = k.children().find(Node::is_element) {
                        if let Some(doc) = self.document(child) {
                            content = InvokeContent::Document(doc);
                        }
                    } else {
                        self.err(k, "<content> of <invoke> needs an <scxml> child or expr=");
                    }
                }
                other => self.err(k, format!("<{other}> is not allowed inside <invoke>")),
            }
        }
        if src.is_some() && !matches!(content, InvokeContent::None) {
            self.err(c, "<invoke> takes either src/srcexpr or <content>");
        }
        if !namelist.is_empty() && !params.is_empty() {
            self.err(c, "<invoke> takes either namelist= or <param>s");
        }
        self.invoke_count += 1;
        Invoke {
            type_,
            src,
            id: c.attribute("id").map(Into::into),
            idlocation,
            namelist,
            params,
            autoforward,
            content,
            finalize,
            index: self.invoke_count,
            pos,
        }
    }

    /// The inline children of `<content>`, `<data>` or `<assign>`.
    fn inline_content(&self, n: Node) -> Content {
        if n.children().any(|c| c.is_element()) {
            let mut out = String::new();
            for e in n.children().filter(Node::is_element) {
                out.push_str(&with_default_namespace(
                    e,
                    &self.xml.input_text()[e.range()],
                ));
            }
            return Content::Xml(out.into());
        }
        let text: String = n.children().filter_map(|k| k.text()).collect();
        classify_content(&text)
    }
}

/// JSON if it parses as JSON, XML if it is a well-formed element, otherwise text
/// (whitespace-normalised, as the ECMAScript datamodel requires for content).
pub fn classify_content(text: &str) -> Content {
    let t = text.trim();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(t) {
        return Content::Json(v);
    }
    if t.starts_with('<') && roxmltree::Document::parse(t).is_ok() {
        return Content::Xml(t.into());
    }
    Content::Text(t.split_whitespace().collect::<Vec<_>>().join(" ").into())
}

/// The source text of an element cut out of its document loses the namespace it inherited
/// from its ancestors; put a default namespace declaration back on its start tag.
fn with_default_namespace(e: Node, text: &str) -> String {
    let Some(ns) = e.tag_name().namespace() else {
        return text.to_string();
    };
    let name_end = text[1..]
        .find(|c: char| c.is_whitespace() || c == '>' || c == '/')
        .map_or(text.len(), |i| i + 1);
    let start_tag_end = text.find('>').unwrap_or(text.len());
    if text[..start_tag_end].contains("xmlns=") || text[1..name_end].contains(':') {
        return text.to_string();
    }
    let ns = ns.replace('&', "&amp;").replace('"', "&quot;");
    format!("{} xmlns=\"{ns}\"{}", &text[..name_end], &text[name_end..])
}

fn has_child_states(n: Node) -> bool {
    n.children().any(|c| {
        c.tag_name().namespace() == Some(SCXML_NS)
            && matches!(c.tag_name().name(), "state" | "parallel" | "final")
    })
}

fn is_scxml_element(tag: &str) -> bool {
    matches!(
        tag,
        "scxml"
            | "state"
            | "parallel"
            | "transition"
            | "initial"
            | "final"
            | "onentry"
            | "onexit"
            | "history"
            | "raise"
            | "if"
            | "elseif"
            | "else"
            | "foreach"
            | "log"
            | "datamodel"
            | "data"
            | "assign"
            | "donedata"
            | "content"
            | "param"
            | "script"
            | "send"
            | "cancel"
            | "invoke"
            | "finalize"
    )
}

fn element_name(kind: StateKind) -> &'static str {
    match kind {
        StateKind::Root => "scxml",
        StateKind::Parallel => "parallel",
        StateKind::Final => "final",
        StateKind::ShallowHistory | StateKind::DeepHistory => "history",
        _ => "state",
    }
}

/// Two states can be active together when neither is an ancestor of the other and their
/// nearest common ancestor is a `<parallel>`.
fn compatible(states: &[State], a: StateId, b: StateId) -> bool {
    let within = |x: StateId, y: StateId| x > y && x <= states[y as usize].last_descendant;
    if a == b || within(a, b) || within(b, a) {
        return false;
    }
    let mut anc = states[a as usize].parent;
    while let Some(p) = anc {
        if within(b, p) {
            return states[p as usize].kind == StateKind::Parallel;
        }
        anc = states[p as usize].parent;
    }
    false
}

/// Parses a CSS2 time value (`500ms`, `2s`, `.5s`, `1.5s`) into milliseconds.
pub fn parse_delay(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, scale) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix("min") {
        (n, 60_000.0)
    } else {
        return None;
    };
    let n = num.trim();
    if n.is_empty() || !n.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return None;
    }
    let v: f64 = n.parse().ok()?;
    let ms = v * scale;
    if !ms.is_finite() || !(0.0..=1e15).contains(&ms) {
        return None;
    }
    Some(ms.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(src: &str) -> Vec<String> {
        match compile(src, &CompileOptions::default()) {
            Ok(_) => vec![],
            Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
        }
    }
    const HEAD: &str =
        r#"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="null">"#;

    #[test]
    fn accepts_minimal_document() {
        let doc = compile(
            &format!("{HEAD}<final id='f'/></scxml>"),
            &CompileOptions::default(),
        )
        .unwrap();
        assert_eq!(doc.states.len(), 2);
        assert_eq!(doc.state_by_name("f"), Some(1));
    }

    #[test]
    fn reports_unknown_target_with_position() {
        let e = errs(&format!(
            "{HEAD}\n<state id='a'>\n  <transition target='nowhere'/></state></scxml>"
        ));
        assert_eq!(
            e,
            vec!["<document>:3:3: <transition>: unknown transition target \"nowhere\""]
        );
    }

    #[test]
    fn reports_duplicate_ids_bad_initial_and_unknown_elements() {
        let e = errs(&format!(
            "{HEAD}<state id='a' initial='b'><state id='x'/></state><state id='b'/><state id='a'/><frob/></scxml>"
        ));
        assert!(
            e.iter().any(|m| m.contains("duplicate state id \"a\"")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("initial state \"b\" is not a descendant")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.contains("unknown element <frob>")),
            "{e:?}"
        );
    }

    #[test]
    fn rejects_history_misuse() {
        let e = errs(&format!(
            "{HEAD}<state id='p'><history id='h'><transition event='e' target='outside'/></history><state id='c'/></state><state id='outside'/></scxml>"
        ));
        assert!(
            e.iter().any(|m| m.contains("neither event nor cond")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.contains("not a descendant of \"p\"")),
            "{e:?}"
        );
    }

    #[test]
    fn rejects_wrong_namespace_dtd_and_malformed_xml() {
        assert!(errs("<scxml version='1.0'><final/></scxml>")[0].contains("namespace"));
        let dtd = "<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'aaaa'>]><x>&a;</x>";
        assert!(errs(dtd)[0].contains("malformed XML"));
        assert!(errs("<scxml")[0].contains("malformed XML"));
        assert!(errs("")[0].contains("malformed XML"));
    }

    #[test]
    fn enforces_limits() {
        let deep = format!(
            "{HEAD}{}{}</scxml>",
            "<state>".repeat(100),
            "</state>".repeat(100)
        );
        assert!(errs(&deep)[0].contains("nest deeper"));
        let opts = CompileOptions {
            limits: Limits {
                max_states: 3,
                ..Limits::default()
            },
            ..Default::default()
        };
        let many = format!("{HEAD}{}</scxml>", "<state/>".repeat(10));
        let e = compile(&many, &opts).unwrap_err();
        assert!(e.to_string().contains("more states than the limit of 3"));
        let opts = CompileOptions {
            limits: Limits {
                max_bytes: 10,
                ..Limits::default()
            },
            ..Default::default()
        };
        assert!(
            compile(&many, &opts)
                .unwrap_err()
                .to_string()
                .contains("over the limit")
        );
    }

    #[test]
    fn parses_delays() {
        assert_eq!(parse_delay("500ms"), Some(500));
        assert_eq!(parse_delay("2s"), Some(2000));
        assert_eq!(parse_delay(".5s"), Some(500));
        assert_eq!(parse_delay("1.5s"), Some(1500));
        assert_eq!(parse_delay("5"), None);
        assert_eq!(parse_delay("-1s"), None);
        assert_eq!(parse_delay("s"), None);
    }

    #[test]
    fn matches_event_descriptors() {
        assert!(descriptor_matches("error", "error.execution"));
        assert!(descriptor_matches("error.*", "error.execution"));
        assert!(descriptor_matches("*", "anything"));
        assert!(!descriptor_matches("err", "error"));
        assert!(descriptor_matches("foo.bar", "foo.bar"));
        assert!(!descriptor_matches("foo.bar", "foo"));
    }
}
