//! The datamodel interface and the null datamodel.

use serde_json::Value;

use crate::event::Event;
use crate::model::{Content, DataItem, ExprId, StateId};

/// An evaluation failure; the interpreter turns it into `error.execution`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct DmError(pub String);

impl DmError {
    /// An error with this message.
    pub fn new(m: impl Into<String>) -> Self {
        DmError(m.into())
    }
}

/// A datamodel call's result.
pub type DmResult<T> = Result<T, DmError>;

/// What `<assign>` stores.
pub enum AssignFrom<'a> {
    /// The value of an expression.
    Expr(ExprId),
    /// Inline `<assign>` content.
    Content(&'a Content),
    /// A value the host computed.
    Value(&'a Value),
}

/// Values the platform defines for every session.
#[derive(Debug, Clone)]
pub struct SystemVars {
    /// `_sessionid`.
    pub sessionid: String,
    /// `_name` (the document's `name`).
    pub name: Option<String>,
    /// `_ioprocessors`: an object keyed by processor type with a `location` each.
    pub ioprocessors: Value,
}

impl SystemVars {
    /// The variables of session `sessionid` of `doc`. `_ioprocessors` always lists the
    /// SCXML Event I/O Processor (by its type URI and its short name `scxml`); a host
    /// that receives BasicHTTP events passes the session's `basichttp` location too.
    pub fn new(sessionid: &str, doc: &crate::Document, basichttp: Option<&str>) -> Self {
        use crate::event::{BASIC_HTTP_PROCESSOR, SCXML_PROCESSOR};
        let scxml = serde_json::json!({ "location": format!("#_scxml_{sessionid}") });
        let mut processors = serde_json::Map::new();
        processors.insert(SCXML_PROCESSOR.into(), scxml.clone());
        processors.insert("scxml".into(), scxml);
        if let Some(url) = basichttp {
            let http = serde_json::json!({ "location": url });
            processors.insert(BASIC_HTTP_PROCESSOR.into(), http.clone());
            processors.insert("basichttp".into(), http);
        }
        SystemVars {
            sessionid: sessionid.to_string(),
            name: doc.name.as_deref().map(String::from),
            ioprocessors: Value::Object(processors),
        }
    }
}

/// A session's datamodel. Expressions are named by [`ExprId`] into the session's document;
/// implementations compile each once per document, not per evaluation.
///
/// `begin`/`end` bracket every call into the session (one macrostep or more), so a
/// datamodel may keep its live state elsewhere in between (the ECMAScript one swaps it in
/// and out of a per-thread JS context).
pub trait Datamodel {
    /// Called before the session runs (see above).
    fn begin(&mut self) {}
    /// Called after the session ran.
    fn end(&mut self) {}
    /// Called as each macrostep begins (between [`Datamodel::begin`] and
    /// [`Datamodel::end`]): a datamodel with a per-macrostep budget starts it here.
    fn begin_macrostep(&mut self) {}
    /// Why the running macrostep must stop (its budget is spent), if it must: the session
    /// is then aborted.
    fn exceeded(&self) -> Option<String> {
        None
    }
    /// Declare every data item without a value (late binding declares all at start).
    fn declare(&mut self, item: &DataItem) -> DmResult<()>;
    /// Initialise a data item, from `value` when the host supplied one (invoke params,
    /// session-start parameters).
    fn init_data(&mut self, item: &DataItem, value: Option<&Value>) -> DmResult<()>;
    /// Binds `_event` for the macrostep's event.
    fn set_event(&mut self, event: &Event);
    /// Evaluates a condition.
    fn eval_cond(&mut self, e: ExprId) -> DmResult<bool>;
    /// Evaluates a value expression.
    fn eval_value(&mut self, e: ExprId) -> DmResult<Value>;
    /// Evaluate `<content expr>`: like [`Datamodel::eval_value`], but a datamodel that
    /// holds XML documents returns them as XML.
    fn eval_content(&mut self, e: ExprId) -> DmResult<Content> {
        self.eval_value(e).map(Content::Json)
    }
    /// Evaluate and convert to a string with the datamodel's own rules.
    fn eval_string(&mut self, e: ExprId) -> DmResult<String>;
    /// `<assign>`: stores a value at a location.
    fn assign(&mut self, location: ExprId, from: AssignFrom) -> DmResult<()>;
    /// Runs a `<script>`.
    fn exec_script(&mut self, e: ExprId) -> DmResult<()>;
    /// Start a `<foreach>`: evaluate the array and keep a shallow copy; returns its length.
    fn foreach_begin(&mut self, array: ExprId) -> DmResult<usize>;
    /// Binds item `i` (and its index) of the array from [`Datamodel::foreach_begin`].
    fn foreach_bind(&mut self, item: ExprId, index: Option<ExprId>, i: usize) -> DmResult<()>;
    /// Ends the `<foreach>`.
    fn foreach_end(&mut self);
    /// Tells the datamodel about configuration changes (used by `In()`); only called when
    /// the document mentions `In(`.
    fn set_active(&mut self, state: StateId, active: bool);
    /// The datamodel's variables as JSON, for a snapshot.
    fn snapshot(&mut self) -> DmResult<Value>;
    /// Restores variables from [`Datamodel::snapshot`] output.
    fn restore(&mut self, vars: &Value) -> DmResult<()>;
}

/// The null datamodel: no data; `cond` supports only `In('state')`.
pub struct NullDatamodel {
    doc: std::sync::Arc<crate::Document>,
    active: Vec<bool>,
}

impl NullDatamodel {
    /// The null datamodel of a session of `doc`.
    pub fn new(doc: std::sync::Arc<crate::Document>) -> Self {
        let n = doc.states.len();
        NullDatamodel {
            doc,
            active: vec![false; n],
        }
    }
}

fn unsupported<T>() -> DmResult<T> {
    Err(DmError::new("the null datamodel has no data or scripts"))
}

impl Datamodel for NullDatamodel {
    fn declare(&mut self, _: &DataItem) -> DmResult<()> {
        unsupported()
    }
    fn init_data(&mut self, _: &DataItem, _: Option<&Value>) -> DmResult<()> {
        unsupported()
    }
    fn set_event(&mut self, _: &Event) {}
    fn eval_cond(&mut self, e: ExprId) -> DmResult<bool> {
        let src = self.doc.expr(e).src.trim();
        let inner = src
            .strip_prefix("In(")
            .and_then(|s| s.strip_suffix(')'))
            .map(|s| s.trim().trim_matches(|c| c == '\'' || c == '"'))
            .ok_or_else(|| {
                DmError::new(format!(
                    "the null datamodel only supports In('id'), not {src}"
                ))
            })?;
        Ok(self
            .doc
            .state_by_name(inner)
            .is_some_and(|s| self.active[s as usize]))
    }
    fn eval_value(&mut self, _: ExprId) -> DmResult<Value> {
        unsupported()
    }
    fn eval_string(&mut self, _: ExprId) -> DmResult<String> {
        unsupported()
    }
    fn assign(&mut self, _: ExprId, _: AssignFrom) -> DmResult<()> {
        unsupported()
    }
    fn exec_script(&mut self, _: ExprId) -> DmResult<()> {
        unsupported()
    }
    fn foreach_begin(&mut self, _: ExprId) -> DmResult<usize> {
        unsupported()
    }
    fn foreach_bind(&mut self, _: ExprId, _: Option<ExprId>, _: usize) -> DmResult<()> {
        unsupported()
    }
    fn foreach_end(&mut self) {}
    fn set_active(&mut self, state: StateId, active: bool) {
        self.active[state as usize] = active;
    }
    fn snapshot(&mut self) -> DmResult<Value> {
        Ok(Value::Object(Default::default()))
    }
    fn restore(&mut self, _: &Value) -> DmResult<()> {
        Ok(())
    }
}
