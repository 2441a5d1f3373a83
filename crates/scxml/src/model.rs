//! The compiled, immutable form of an SCXML document.
//!
//! States live in one arena in document order (a pre-order walk), so "document order" is
//! index order and the descendants of a state are a contiguous index range. A [`Document`] is
//! shared by every session that runs it (`Arc<Document>`); nothing in it changes after
//! compilation.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// Index of a state in [`Document::states`]. Index 0 is the `<scxml>` element itself.
pub type StateId = u32;
/// Index of a transition in [`Document::transitions`].
pub type TransitionId = u32;
/// Index of an expression in [`Document::exprs`].
pub type ExprId = u32;

/// Where something came from in the source, 1-based.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: u32,
    pub col: u32,
}

/// What an expression is used for; a datamodel may compile each kind differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExprKind {
    /// A boolean condition (`cond`).
    Cond,
    /// A value expression (`expr`, `eventexpr`, `delayexpr`, `<content expr>`, ...).
    Value,
    /// A location expression (`location`, `idlocation`, `item`, `index`, namelist entries).
    Location,
    /// The body of a `<script>`.
    Script,
}

/// One expression's source text, compiled once per document by the datamodel.
#[derive(Debug, Clone)]
pub struct Expr {
    pub kind: ExprKind,
    pub src: Box<str>,
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// The `<scxml>` element.
    Root,
    Atomic,
    Compound,
    Parallel,
    Final,
    ShallowHistory,
    DeepHistory,
}

#[derive(Debug, Clone)]
pub struct State {
    pub id: Box<str>,
    pub kind: StateKind,
    pub parent: Option<StateId>,
    /// `<state>`, `<parallel>` and `<final>` children, in document order.
    pub children: Vec<StateId>,
    /// `<history>` children.
    pub history: Vec<StateId>,
    /// Last index of this state's descendants (itself when it has none).
    pub last_descendant: StateId,
    /// Depth below `<scxml>` (which is 0).
    pub depth: u32,
    /// The initial transition: from `initial="..."`, `<initial>`, the first child, or (for
    /// history states) the default history transition.
    pub initial: Option<TransitionId>,
    pub transitions: Vec<TransitionId>,
    pub onentry: Vec<Block>,
    pub onexit: Vec<Block>,
    /// `<data>` items declared in this state (late binding initialises them on first entry).
    pub data: Vec<DataItem>,
    pub invokes: Vec<Arc<Invoke>>,
    pub donedata: Option<DoneData>,
    pub pos: Pos,
}

impl State {
    pub fn is_history(&self) -> bool {
        matches!(
            self.kind,
            StateKind::ShallowHistory | StateKind::DeepHistory
        )
    }
    pub fn is_atomic(&self) -> bool {
        matches!(self.kind, StateKind::Atomic | StateKind::Final)
    }
}

#[derive(Debug, Clone)]
pub struct Transition {
    pub source: StateId,
    /// Event descriptors; empty for an eventless transition.
    pub events: Vec<Box<str>>,
    pub cond: Option<ExprId>,
    pub targets: Vec<StateId>,
    pub internal: bool,
    pub actions: Block,
    pub pos: Pos,
}

impl Transition {
    /// The SCXML event-descriptor match: a descriptor matches a name equal to it or
    /// starting with it followed by `.`; `*` matches any event; a trailing `.*` or `.`
    /// on a descriptor is ignored.
    pub fn matches(&self, name: &str) -> bool {
        self.events.iter().any(|d| descriptor_matches(d, name))
    }
}

pub fn descriptor_matches(descriptor: &str, name: &str) -> bool {
    if descriptor == "*" {
        return true;
    }
    let d = descriptor.strip_suffix(".*").unwrap_or(descriptor);
    let d = d.strip_suffix('.').unwrap_or(d);
    match name.strip_prefix(d) {
        Some(rest) => rest.is_empty() || rest.starts_with('.'),
        None => false,
    }
}

/// A sequence of executable content.
pub type Block = Vec<Action>;

/// A string attribute that is either literal or computed by an `...expr` attribute.
#[derive(Debug, Clone)]
pub enum Text {
    Literal(Box<str>),
    Expr(ExprId),
}

#[derive(Debug, Clone)]
pub enum Action {
    Raise {
        event: Box<str>,
    },
    Send(Box<Send>),
    Cancel {
        sendid: Text,
    },
    Log {
        label: Option<Box<str>>,
        expr: Option<ExprId>,
    },
    Assign {
        location: ExprId,
        value: AssignValue,
    },
    If {
        /// `(cond, block)` pairs; the `<else>` branch has no condition.
        branches: Vec<(Option<ExprId>, Block)>,
    },
    Foreach {
        array: ExprId,
        item: ExprId,
        index: Option<ExprId>,
        body: Block,
    },
    Script {
        body: ExprId,
    },
    /// ORS Web API `<response>` (namespace [`crate::ORS_NS`]): answer a pending request.
    Response(Box<Response>),
    /// A source that failed to load at compile time (e.g. `<script src>` with a lenient
    /// loader): raises `error.execution` when executed.
    Fail {
        message: Box<str>,
    },
}

#[derive(Debug, Clone)]
pub enum AssignValue {
    Expr(ExprId),
    /// Inline child content of `<assign>`.
    Content(Content),
}

/// Inline content: text that parses as JSON becomes a value, XML becomes a DOM, anything
/// else a (space-normalised where the spec says so) string.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Content {
    Json(serde_json::Value),
    Xml(Box<str>),
    Text(Box<str>),
}

#[derive(Debug, Clone)]
pub struct Param {
    pub name: Box<str>,
    /// `expr` or `location` (both evaluate to a value).
    pub expr: ExprId,
}

#[derive(Debug, Clone)]
pub enum Body {
    None,
    Content(Content),
    ContentExpr(ExprId),
}

#[derive(Debug, Clone)]
pub struct Send {
    pub event: Option<Text>,
    pub target: Option<Text>,
    pub type_: Option<Text>,
    /// Literal id, or the location that receives the generated id.
    pub id: Option<Box<str>>,
    pub idlocation: Option<ExprId>,
    pub delay: Option<Text>,
    /// `(name, location)` pairs.
    pub namelist: Vec<(Box<str>, ExprId)>,
    pub params: Vec<Param>,
    pub body: Body,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub struct Response {
    pub requestid: ExprId,
    pub type_: Option<Text>,
    pub resultcode: Option<Text>,
    pub params: Vec<Param>,
}

#[derive(Debug, Clone)]
pub struct DataItem {
    pub id: Box<str>,
    pub init: DataInit,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub enum DataInit {
    None,
    Expr(ExprId),
    Content(Content),
    /// `src` that could not be loaded when the document was compiled.
    SrcFailed(Box<str>),
}

#[derive(Debug, Clone)]
pub struct DoneData {
    pub params: Vec<Param>,
    pub body: Body,
}

#[derive(Debug, Clone)]
pub struct Invoke {
    pub type_: Option<Text>,
    pub src: Option<Text>,
    /// Literal id, or the location that receives the generated id.
    pub id: Option<Box<str>>,
    pub idlocation: Option<ExprId>,
    pub namelist: Vec<(Box<str>, ExprId)>,
    pub params: Vec<Param>,
    pub autoforward: bool,
    /// Inline `<content>`: an SCXML child document compiled with the parent, or an
    /// expression evaluated at invoke time.
    pub content: InvokeContent,
    pub finalize: Block,
    /// Unique among the document's invokes, used to derive ids.
    pub index: u32,
    pub pos: Pos,
}

#[derive(Debug, Clone)]
pub enum InvokeContent {
    None,
    Document(Arc<Document>),
    Expr(ExprId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DatamodelKind {
    Null,
    EcmaScript,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Binding {
    Early,
    Late,
}

static NEXT_DOCUMENT_ID: AtomicU64 = AtomicU64::new(1);

/// A compiled SCXML document. Immutable; share it with `Arc`.
#[derive(Debug)]
pub struct Document {
    /// Unique per compiled document in this process; datamodels key their caches by it.
    pub uid: u64,
    /// Where it came from (file name or URL), for diagnostics.
    pub source_name: Box<str>,
    /// `name` on `<scxml>`.
    pub name: Option<Box<str>>,
    pub datamodel: DatamodelKind,
    pub binding: Binding,
    /// `_persist` on `<scxml>` (ORS extension); `None` when absent.
    pub persist: Option<bool>,
    /// `_sendSessionRecovered` on `<scxml>` (ORS extension).
    pub send_session_recovered: bool,
    pub states: Vec<State>,
    pub transitions: Vec<Transition>,
    pub exprs: Vec<Expr>,
    /// The `<script>` children of `<scxml>`, run once at start-up.
    pub global_script: Block,
    pub(crate) ids: HashMap<Box<str>, StateId>,
    /// Whether any expression mentions `In(` (lets datamodels skip tracking the
    /// configuration), and `_event`.
    pub uses_in: bool,
    pub uses_event: bool,
    /// Whether any expression or script mentions `_ioprocessors`.
    pub uses_ioprocessors: bool,
}

impl Document {
    pub(crate) fn next_uid() -> u64 {
        NEXT_DOCUMENT_ID.fetch_add(1, Ordering::Relaxed)
    }

    pub fn state(&self, id: StateId) -> &State {
        &self.states[id as usize]
    }
    pub fn transition(&self, id: TransitionId) -> &Transition {
        &self.transitions[id as usize]
    }
    pub fn expr(&self, id: ExprId) -> &Expr {
        &self.exprs[id as usize]
    }
    /// Looks a state up by its `id` attribute.
    pub fn state_by_name(&self, name: &str) -> Option<StateId> {
        self.ids.get(name).copied()
    }
    /// True when `a` is a proper descendant of `b`.
    pub fn is_descendant(&self, a: StateId, b: StateId) -> bool {
        a > b && a <= self.states[b as usize].last_descendant
    }
    /// Every data item in the document, in document order.
    pub fn all_data(&self) -> impl Iterator<Item = &DataItem> {
        self.states.iter().flat_map(|s| s.data.iter())
    }
}
