#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod budget;
mod dom;
mod instrument;
mod runtime;
mod toplevel;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;

use boa_engine::property::PropertyDescriptor;
use boa_engine::{JsString, JsValue};
use ors_scxml::datamodel::{AssignFrom, Datamodel, DmError, DmResult, SystemVars};
use ors_scxml::model::{Content, DataInit, DataItem, ExprId, ExprKind, StateId};
use ors_scxml::{Document, Event};
use serde_json::Value;

pub use budget::{Budget, Exceeded};
use runtime::{Mode, with_rt};
pub use runtime::{RuntimeOptions, configure_thread, release_thread, thread_stats};

/// The ECMAScript datamodel of one session.
///
/// The session owns no JS context: every thread has one shared context, and a session's
/// variables are installed into it for a call into the session ([`Datamodel::begin`] to
/// [`Datamodel::end`]). They stay there after the call, and are taken out, back into the
/// session, when a call into another session begins on the thread (or this one is
/// dropped): a session that gets several events in a row is not swapped out and in
/// between them. An idle session costs only its own values. Not `Send`: a session lives
/// on the thread that created it.
pub struct EcmaDatamodel {
    doc: Arc<Document>,
    /// Unique per datamodel: which one [`runtime::Runtime::installed`] names.
    id: u64,
    /// Its variables while they are not in the context.
    vars: Rc<RefCell<Vec<(JsString, JsValue)>>>,
    system: Option<Vec<(JsString, JsValue)>>,
    /// Until the system variables are made (on the first call): then dropped, as a live
    /// session should not carry `_ioprocessors` twice (or at all, when the document does
    /// not use it).
    system_vars: Option<Box<SystemVars>>,
    event: Option<JsValue>,
    active: Rc<RefCell<Vec<bool>>>,
    foreach: Vec<Vec<JsValue>>,
    /// Within a call into the session.
    installed: bool,
}

/// The session whose variables are in a thread's context.
pub(crate) struct Installed {
    id: u64,
    vars: Rc<RefCell<Vec<(JsString, JsValue)>>>,
    doc: Arc<Document>,
    system: Vec<JsString>,
}

impl Installed {
    /// Takes its variables out of the context, back into the session.
    fn evict(self, rt: &mut runtime::Runtime) {
        *self.vars.borrow_mut() = rt.take_globals(&self.doc, &self.system);
        if self.doc.uses_in {
            rt.set_active(None);
        }
    }
}

fn in_context(rt: &runtime::Runtime, id: u64) -> bool {
    rt.installed.as_ref().is_some_and(|i| i.id == id)
}

impl Drop for EcmaDatamodel {
    fn drop(&mut self) {
        // Its variables leave the context with it (not at thread teardown, when the
        // runtime may be gone already).
        runtime::if_rt(|rt| {
            if in_context(rt, self.id)
                && let Some(i) = rt.installed.take()
            {
                i.evict(rt);
            }
        });
    }
}

impl EcmaDatamodel {
    /// A datamodel for a session of `doc`, with its system variables.
    pub fn new(doc: Arc<Document>, vars: &SystemVars) -> Self {
        let n = doc.states.len();
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        EcmaDatamodel {
            doc,
            id: NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            vars: Rc::default(),
            system: None,
            system_vars: Some(Box::new(vars.clone())),
            event: None,
            active: Rc::new(RefCell::new(vec![false; n])),
            foreach: Vec::new(),
            installed: false,
        }
    }

    fn system_names(&self) -> Vec<JsString> {
        self.system
            .as_ref()
            .map(|s| s.iter().map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }

    fn eval_js(&mut self, e: ExprId) -> DmResult<JsValue> {
        with_rt(|rt| rt.eval(&self.doc, e, Mode::Value))
    }

    fn content_value(&mut self, c: &Content) -> DmResult<JsValue> {
        with_rt(|rt| rt.content(c))
    }

    fn set_var(&mut self, name: &str, v: JsValue) -> DmResult<()> {
        with_rt(|rt| {
            let g = rt.ctx.global_object();
            g.insert_property(
                JsString::from(name),
                PropertyDescriptor::builder()
                    .value(v)
                    .writable(true)
                    .enumerable(true)
                    .configurable(true),
            );
            Ok(())
        })
    }
}

fn err(e: impl ToString) -> DmError {
    DmError::new(e.to_string())
}

impl Datamodel for EcmaDatamodel {
    fn begin(&mut self) {
        if self.installed {
            return;
        }
        self.installed = true;
        with_rt(|rt| {
            if in_context(rt, self.id) {
                return; // still there since its last call
            }
            if let Some(other) = rt.installed.take() {
                other.evict(rt);
            }
            let vars = std::mem::take(&mut *self.vars.borrow_mut());
            if self.system.is_none() {
                // `_ioprocessors` is an object graph: built only for documents that use it.
                let vars = self
                    .system_vars
                    .take()
                    .expect("kept until the system values are made");
                self.system = Some(rt.system_values(&vars, self.doc.uses_ioprocessors));
            }
            let g = rt.ctx.global_object();
            for (k, v) in self.system.as_ref().expect("set above") {
                g.insert_property(k.clone(), runtime::readonly(v.clone()));
            }
            if self.doc.uses_event {
                // Bound (to undefined) before the first event, as the spec asks.
                let ev = self.event.clone().unwrap_or_default();
                g.insert_property(runtime::event_key(), runtime::readonly(ev));
            }
            for (k, v) in vars {
                g.insert_property(
                    k,
                    PropertyDescriptor::builder()
                        .value(v)
                        .writable(true)
                        .enumerable(true)
                        .configurable(true),
                );
            }
            if self.doc.uses_in {
                rt.set_active(Some((self.doc.clone(), self.active.clone())));
            }
            rt.installed = Some(Installed {
                id: self.id,
                vars: self.vars.clone(),
                doc: self.doc.clone(),
                system: self.system_names(),
            });
        });
    }

    fn begin_macrostep(&mut self) {
        budget::arm(runtime::options().budget);
    }

    fn exceeded(&self) -> Option<String> {
        budget::exceeded().map(|e| format!("budget exceeded: {e}"))
    }

    fn end(&mut self) {
        if !self.installed {
            return;
        }
        budget::disarm();
        // The variables stay in the context until another session's call begins.
        self.installed = false;
    }

    fn declare(&mut self, item: &DataItem) -> DmResult<()> {
        self.set_var(&item.id, JsValue::undefined())
    }

    fn init_data(&mut self, item: &DataItem, value: Option<&Value>) -> DmResult<()> {
        let (v, failure) = match (value, &item.init) {
            (Some(v), _) => (
                with_rt(|rt| JsValue::from_json(v, &mut rt.ctx).map_err(err))?,
                None,
            ),
            (None, DataInit::None) => (JsValue::undefined(), None),
            (None, DataInit::Expr(e)) => match self.eval_js(*e) {
                Ok(v) => (v, None),
                Err(e) => (JsValue::undefined(), Some(e)),
            },
            (None, DataInit::Content(c)) => match self.content_value(c) {
                Ok(v) => (v, None),
                Err(e) => (JsValue::undefined(), Some(e)),
            },
            (None, DataInit::SrcFailed(m)) => {
                (JsValue::undefined(), Some(DmError::new(m.to_string())))
            }
        };
        self.set_var(&item.id, v)?;
        match failure {
            Some(e) => Err(DmError::new(format!("<data id=\"{}\">: {}", item.id, e.0))),
            None => Ok(()),
        }
    }

    fn set_event(&mut self, event: &Event) {
        if !self.doc.uses_event {
            return;
        }
        let ev = with_rt(|rt| rt.event_object(event));
        with_rt(|rt| {
            rt.ctx
                .global_object()
                .insert_property(runtime::event_key(), runtime::readonly(ev.clone()));
        });
        self.event = Some(ev);
    }

    fn eval_cond(&mut self, e: ExprId) -> DmResult<bool> {
        Ok(self.eval_js(e)?.to_boolean())
    }

    fn eval_value(&mut self, e: ExprId) -> DmResult<Value> {
        with_rt(|rt| {
            let v = rt.eval(&self.doc, e, Mode::Value)?;
            rt.json_of(&v)
        })
    }

    fn eval_content(&mut self, e: ExprId) -> DmResult<Content> {
        with_rt(|rt| {
            let v = rt.eval(&self.doc, e, Mode::Value)?;
            if let Some(xml) = crate::dom::source_of(&v, &mut rt.ctx) {
                return Ok(Content::Xml(xml.into()));
            }
            Ok(Content::Json(rt.json_of(&v)?))
        })
    }

    fn eval_string(&mut self, e: ExprId) -> DmResult<String> {
        with_rt(|rt| {
            let v = rt.eval(&self.doc, e, Mode::Value)?;
            v.to_string(&mut rt.ctx)
                .map(|s| s.to_std_string_escaped())
                .map_err(err)
        })
    }

    fn assign(&mut self, location: ExprId, from: AssignFrom) -> DmResult<()> {
        with_rt(|rt| {
            let v = match from {
                AssignFrom::Expr(e) => rt.eval(&self.doc, e, Mode::Value)?,
                AssignFrom::Content(c) => rt.content(c)?,
                AssignFrom::Value(v) => JsValue::from_json(v, &mut rt.ctx).map_err(err)?,
            };
            rt.assign(&self.doc, location, Mode::Assign, v)
        })
    }

    fn exec_script(&mut self, e: ExprId) -> DmResult<()> {
        with_rt(|rt| rt.eval(&self.doc, e, Mode::Script).map(|_| ()))
    }

    fn foreach_begin(&mut self, array: ExprId) -> DmResult<usize> {
        let items = with_rt(|rt| {
            let v = rt.eval(&self.doc, array, Mode::Value)?;
            rt.array_items(&v)
        })?;
        let n = items.len();
        self.foreach.push(items);
        Ok(n)
    }

    fn foreach_bind(&mut self, item: ExprId, index: Option<ExprId>, i: usize) -> DmResult<()> {
        let v = self
            .foreach
            .last()
            .and_then(|items| items.get(i).cloned())
            .ok_or_else(|| DmError::new("foreach index out of range"))?;
        with_rt(|rt| {
            rt.assign(&self.doc, item, Mode::Declare, v)?;
            if let Some(ix) = index {
                rt.assign(&self.doc, ix, Mode::Declare, JsValue::from(i as f64))?;
            }
            Ok(())
        })
    }

    fn foreach_end(&mut self) {
        self.foreach.pop();
    }

    fn set_active(&mut self, state: StateId, active: bool) {
        self.active.borrow_mut()[state as usize] = active;
    }

    fn snapshot(&mut self) -> DmResult<Value> {
        let names = self.system_names();
        with_rt(|rt| {
            let vars = if in_context(rt, self.id) {
                rt.peek_globals(&self.doc, &names)
            } else {
                self.vars.borrow().clone()
            };
            let mut m = serde_json::Map::new();
            for (k, v) in &vars {
                if v.as_callable().is_some() {
                    continue; // functions are not data; documented limitation
                }
                let j = rt.json_of(v)?;
                m.insert(k.to_std_string_escaped(), j);
            }
            Ok(Value::Object(m))
        })
    }

    fn restore(&mut self, vars: &Value) -> DmResult<()> {
        let Value::Object(m) = vars else {
            return Err(DmError::new("datamodel snapshot is not a JSON object"));
        };
        for (k, v) in m {
            let js = with_rt(|rt| JsValue::from_json(v, &mut rt.ctx).map_err(err))?;
            if with_rt(|rt| in_context(rt, self.id)) {
                self.set_var(k, js)?;
            } else {
                self.vars
                    .borrow_mut()
                    .push((JsString::from(k.as_str()), js));
            }
        }
        Ok(())
    }
}

/// Checks ECMAScript expression syntax without running anything (for `ors validate`).
pub struct SyntaxChecker;

impl ors_scxml::compile::SyntaxCheck for SyntaxChecker {
    fn check(&self, kind: ExprKind, src: &str) -> Result<(), String> {
        with_rt(|rt| rt.check_syntax(kind, src))
    }
}

/// Makes an [`EcmaDatamodel`] or a [`ors_scxml::NullDatamodel`] as the document asks.
pub fn datamodel_for(doc: &Arc<Document>, vars: &SystemVars) -> Box<dyn Datamodel> {
    match doc.datamodel {
        ors_scxml::model::DatamodelKind::EcmaScript => {
            Box::new(EcmaDatamodel::new(doc.clone(), vars))
        }
        ors_scxml::model::DatamodelKind::Null => {
            Box::new(ors_scxml::NullDatamodel::new(doc.clone()))
        }
    }
}
