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
    /// Line.
    pub line: u32,
    /// Column.
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
    /// What it is used for.
    pub kind: ExprKind,
    /// The source text.
    pub src: Box<str>,
    /// Where it is in the document.
    pub pos: Pos,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// What kind of element a state is.
pub enum StateKind {
    /// The `<scxml>` element.
    Root,
    /// A `<state>` without child states.
    Atomic,
    /// A `<state>` with child states.
    Compound,
    /// `<parallel>`.
    Parallel,
    /// `<final>`.
    Final,
    /// `<history type="shallow">`.
    ShallowHistory,
    /// `<history type="deep">`.
    DeepHistory,
}

#[derive(Debug, Clone)]
/// A state (any of [`StateKind`]) in the document's arena.
pub struct State {
    /// The `id` attribute (generated when absent).
    pub id: Box<str>,
    /// What kind of state.
    pub kind: StateKind,
    /// The enclosing state (`None` for `<scxml>`).
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
    /// Outgoing transitions, in document order.
    pub transitions: Vec<TransitionId>,
    /// `<onentry>` blocks.
    pub onentry: Vec<Block>,
    /// `<onexit>` blocks.
    pub onexit: Vec<Block>,
    /// `<data>` items declared in this state (late binding initialises them on first entry).
    pub data: Vec<DataItem>,
    /// `<invoke>` children.
    pub invokes: Vec<Arc<Invoke>>,
    /// `<donedata>` of a `<final>`.
    pub donedata: Option<DoneData>,
    /// Where it is in the document.
    pub pos: Pos,
}

impl State {
    /// Whether it is a `<history>`.
    pub fn is_history(&self) -> bool {
        matches!(
            self.kind,
            StateKind::ShallowHistory | StateKind::DeepHistory
        )
    }
    /// Whether it has no child states (`<final>` included).
    pub fn is_atomic(&self) -> bool {
        matches!(self.kind, StateKind::Atomic | StateKind::Final)
    }
}

#[derive(Debug, Clone)]
/// A `<transition>` (or an initial or default history transition).
pub struct Transition {
    /// The state it belongs to.
    pub source: StateId,
    /// Event descriptors; empty for an eventless transition.
    pub events: Vec<Box<str>>,
    /// `cond`.
    pub cond: Option<ExprId>,
    /// `target` states (empty for a targetless transition).
    pub targets: Vec<StateId>,
    /// `type="internal"`.
    pub internal: bool,
    /// Its executable content.
    pub actions: Block,
    /// Where it is in the document.
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

/// Whether event descriptor `descriptor` matches event name `name` (see [`Transition::matches`]).
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
    /// The attribute's literal value.
    Literal(Box<str>),
    /// The `...expr` attribute's expression.
    Expr(ExprId),
}

#[derive(Debug, Clone)]
/// One element of executable content.
pub enum Action {
    /// `<raise>`.
    Raise {
        /// The event name.
        event: Box<str>,
    },
    /// `<send>`.
    Send(Box<Send>),
    /// `<cancel>`.
    Cancel {
        /// `sendid` or `sendidexpr`.
        sendid: Text,
    },
    /// `<log>`.
    Log {
        /// `label`.
        label: Option<Box<str>>,
        /// `expr`.
        expr: Option<ExprId>,
    },
    /// `<assign>`.
    Assign {
        /// `location`.
        location: ExprId,
        /// `expr` or inline content.
        value: AssignValue,
    },
    /// `<if>`/`<elseif>`/`<else>`.
    If {
        /// `(cond, block)` pairs; the `<else>` branch has no condition.
        branches: Vec<(Option<ExprId>, Block)>,
    },
    /// `<foreach>`.
    Foreach {
        /// `array`.
        array: ExprId,
        /// `item`.
        item: ExprId,
        /// `index`.
        index: Option<ExprId>,
        /// The content run per item.
        body: Block,
    },
    /// `<script>`.
    Script {
        /// Its code.
        body: ExprId,
    },
    /// ORS Web API `<response>` (namespace [`crate::compile::ORS_NS`]): answer a pending request.
    Response(Box<Response>),
    /// A source that failed to load at compile time (e.g. `<script src>` with a lenient
    /// loader): raises `error.execution` when executed.
    Fail {
        /// Why it failed to load.
        message: Box<str>,
    },
}

#[derive(Debug, Clone)]
/// What `<assign>` stores.
pub enum AssignValue {
    /// The value of `expr`.
    Expr(ExprId),
    /// Inline child content of `<assign>`.
    Content(Content),
}

/// Inline content: text that parses as JSON becomes a value, XML becomes a DOM, anything
/// else a (space-normalised where the spec says so) string.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Content {
    /// A JSON value.
    Json(serde_json::Value),
    /// An XML fragment.
    Xml(Box<str>),
    /// A string.
    Text(Box<str>),
}

#[derive(Debug, Clone)]
/// `<param>`.
pub struct Param {
    /// `name`.
    pub name: Box<str>,
    /// `expr` or `location` (both evaluate to a value).
    pub expr: ExprId,
}

#[derive(Debug, Clone)]
/// The body of a `<send>` or `<donedata>`.
pub enum Body {
    /// None.
    None,
    /// Inline `<content>`.
    Content(Content),
    /// `<content expr>`.
    ContentExpr(ExprId),
}

#[derive(Debug, Clone)]
/// `<send>`.
pub struct Send {
    /// `event` or `eventexpr`.
    pub event: Option<Text>,
    /// `target` or `targetexpr`.
    pub target: Option<Text>,
    /// `type` or `typeexpr`.
    pub type_: Option<Text>,
    /// Literal id, or the location that receives the generated id.
    pub id: Option<Box<str>>,
    /// `idlocation`.
    pub idlocation: Option<ExprId>,
    /// `delay` or `delayexpr`.
    pub delay: Option<Text>,
    /// `(name, location)` pairs.
    pub namelist: Vec<(Box<str>, ExprId)>,
    /// `<param>`s.
    pub params: Vec<Param>,
    /// `<content>`.
    pub body: Body,
    /// Where it is in the document.
    pub pos: Pos,
}

#[derive(Debug, Clone)]
/// ORS `<response>`.
pub struct Response {
    /// `requestid`: the request's event's `sendid`.
    pub requestid: ExprId,
    /// `type` (`positive` unless it says otherwise).
    pub type_: Option<Text>,
    /// `resultcode`.
    pub resultcode: Option<Text>,
    /// `<ors:param>`s.
    pub params: Vec<Param>,
}

#[derive(Debug, Clone)]
/// `<data>`.
pub struct DataItem {
    /// `id`.
    pub id: Box<str>,
    /// Its initial value.
    pub init: DataInit,
    /// Where it is in the document.
    pub pos: Pos,
}

#[derive(Debug, Clone)]
/// How a `<data>` item gets its value.
pub enum DataInit {
    /// Undefined.
    None,
    /// `expr`.
    Expr(ExprId),
    /// Inline content (or the text `src` loaded at compile time).
    Content(Content),
    /// `src` that could not be loaded when the document was compiled.
    SrcFailed(Box<str>),
}

#[derive(Debug, Clone)]
/// `<donedata>`.
pub struct DoneData {
    /// `<param>`s.
    pub params: Vec<Param>,
    /// `<content>`.
    pub body: Body,
}

#[derive(Debug, Clone)]
/// `<invoke>`.
pub struct Invoke {
    /// `type` or `typeexpr`.
    pub type_: Option<Text>,
    /// `src` or `srcexpr`.
    pub src: Option<Text>,
    /// Literal id, or the location that receives the generated id.
    pub id: Option<Box<str>>,
    /// `idlocation`.
    pub idlocation: Option<ExprId>,
    /// `namelist`: `(name, location)` pairs.
    pub namelist: Vec<(Box<str>, ExprId)>,
    /// `<param>`s.
    pub params: Vec<Param>,
    /// `autoforward`.
    pub autoforward: bool,
    /// Inline `<content>`: an SCXML child document compiled with the parent, or an
    /// expression evaluated at invoke time.
    pub content: InvokeContent,
    /// `<finalize>`.
    pub finalize: Block,
    /// Unique among the document's invokes, used to derive ids.
    pub index: u32,
    /// Where it is in the document.
    pub pos: Pos,
}

#[derive(Debug, Clone)]
/// The inline `<content>` of an `<invoke>`.
pub enum InvokeContent {
    /// None (the child comes from `src`).
    None,
    /// An `<scxml>` compiled with the parent.
    Document(Arc<Document>),
    /// `<content expr>`: document text computed at invoke time.
    Expr(ExprId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The `datamodel` attribute.
pub enum DatamodelKind {
    /// `null`.
    Null,
    /// `ecmascript`.
    EcmaScript,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
/// The `binding` attribute.
pub enum Binding {
    /// All `<data>` initialised at start.
    Early,
    /// Each state's `<data>` initialised when it is first entered.
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
    /// The `datamodel` attribute.
    pub datamodel: DatamodelKind,
    /// The `binding` attribute.
    pub binding: Binding,
    /// `_persist` on `<scxml>` (ORS extension); `None` when absent.
    pub persist: Option<bool>,
    /// `_sendSessionRecovered` on `<scxml>` (ORS extension).
    pub send_session_recovered: bool,
    /// Every state, in document order; index 0 is `<scxml>`.
    pub states: Vec<State>,
    /// Every transition.
    pub transitions: Vec<Transition>,
    /// Every expression.
    pub exprs: Vec<Expr>,
    /// The `<script>` children of `<scxml>`, run once at start-up.
    pub global_script: Block,
    pub(crate) ids: HashMap<Box<str>, StateId>,
    /// Whether any expression mentions `In(` (lets datamodels skip tracking the
    /// configuration), and `_event`.
    pub uses_in: bool,
    /// Whether any expression mentions `_event`.
    pub uses_event: bool,
    /// Whether any expression or script mentions `_ioprocessors`.
    pub uses_ioprocessors: bool,
}

impl Document {
    pub(crate) fn next_uid() -> u64 {
        NEXT_DOCUMENT_ID.fetch_add(1, Ordering::Relaxed)
    }

    /// What to call it for people: its `name`, else where it came from.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.source_name)
    }
    /// A state by index.
    pub fn state(&self, id: StateId) -> &State {
        &self.states[id as usize]
    }
    /// A transition by index.
    pub fn transition(&self, id: TransitionId) -> &Transition {
        &self.transitions[id as usize]
    }
    /// An expression by index.
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
