//! The per-thread JS runtime: one boa `Context` shared by every session on the thread, and
//! the compiled form of every expression of every document seen on it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::rc::Rc;
use std::sync::{Arc, Weak};

use boa_engine::object::builtins::JsArray;
use boa_engine::property::{PropertyDescriptor, PropertyKey};
use boa_engine::{Context, JsObject, JsString, JsValue, NativeFunction, Script, Source, js_string};
use ors_scxml::datamodel::{DmError, DmResult, SystemVars};
use ors_scxml::model::{Content, ExprId, ExprKind};
use ors_scxml::{Document, Event};
use serde_json::Value;

/// Limits for scripts, per thread.
#[derive(Debug, Clone, Copy)]
pub struct RuntimeOptions {
    /// Loop iterations allowed in one call frame (boa counts per frame).
    pub loop_iteration_limit: u64,
    /// Nested calls allowed.
    pub recursion_limit: usize,
    /// Time and memory one macrostep of a session may use (500 ms and 64 MiB by
    /// default; memory is only bounded where [`ors_alloc_meter::CountingAlloc`] is the
    /// global allocator).
    pub budget: crate::Budget,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        RuntimeOptions {
            loop_iteration_limit: 1_000_000,
            recursion_limit: 256,
            budget: crate::Budget {
                time: Some(std::time::Duration::from_millis(500)),
                memory: Some(64 << 20),
            },
        }
    }
}

/// Guards on built-ins whose work grows with an argument or a length rather than with
/// data the script already holds: one call of them runs natively, where no budget check
/// can stop it (see `budget.rs`).
/// - boa allocates the result of `repeat`/`padStart`/`padEnd` before its loop limit is
///   checked (`'x'.repeat(1 << 30)` asks for 24 GiB): results over 16 Mi characters throw
///   a RangeError.
/// - The array methods that visit every index up to `length` (`fill`, `indexOf`, `join`,
///   `concat`, `sort`, ...) throw a RangeError on arrays (or array-likes) longer than
///   1 Mi elements (`new Array(2 ** 32 - 1).indexOf(1)` would run for minutes), and check
///   the macrostep's budget before they start.
const GUARDS: &str = r#"(function () {
  var MAX = 16777216, MAX_ELEMENTS = 1048576;
  // Reflect.apply, not orig.apply(...): once the lockdown makes Function.prototype.apply
  // an accessor, boa 0.22 returns the getter's result from such a call in these
  // wrappers instead of calling it.
  var define = Object.defineProperty, isArray = Array.isArray, apply = Reflect.apply;
  function guard(name, size) {
    var orig = String.prototype[name];
    define(String.prototype, name, {
      value: function () {
        if (size(String(this), arguments) > MAX) throw new RangeError(name + ': result longer than ' + MAX);
        return apply(orig, this, arguments);
      },
      writable: true, configurable: true, enumerable: false
    });
  }
  guard('repeat', function (s, a) { return s.length * Number(a[0]); });
  guard('padStart', function (s, a) { return Number(a[0]); });
  guard('padEnd', function (s, a) { return Number(a[0]); });
  function elements(name, n) {
    if (n > MAX_ELEMENTS) throw new RangeError(name + ': more than ' + MAX_ELEMENTS + ' elements');
    __ors_tick();
  }
  var constant = ['constructor', 'push', 'pop', 'at', 'keys', 'values', 'entries'];
  Object.getOwnPropertyNames(Array.prototype).forEach(function (name) {
    var orig = Array.prototype[name];
    if (typeof orig !== 'function' || constant.indexOf(name) >= 0) return;
    define(Array.prototype, name, {
      value: function () {
        if (this !== null && this !== undefined) {
          var n = Number(Object(this).length) || 0;
          if (name === 'concat') {
            for (var i = 0; i < arguments.length; i++) {
              n += isArray(arguments[i]) ? arguments[i].length : 1;
            }
          }
          elements('Array.prototype.' + name, n);
        }
        return apply(orig, this, arguments);
      },
      writable: true, configurable: true, enumerable: false
    });
  });
  var from = Array.from;
  define(Array, 'from', {
    value: function (items) {
      if (items !== null && items !== undefined) elements('Array.from', Number(Object(items).length) || 0);
      return apply(from, this, arguments);
    },
    writable: true, configurable: true, enumerable: false
  });
})();"#;

/// Hardens the shared context before any session runs: every built-in object reachable
/// from the global object (constructors, prototypes, `Math`, `JSON`, the hidden
/// intrinsics such as the iterator and generator prototypes, and our own helpers) is
/// frozen, and the global object's built-in bindings become read-only and permanent. One
/// session can then change nothing another session sees: `Array.prototype.x = 1` or
/// `Math.secret = 2` fail (silently in sloppy code, with a TypeError in strict code), as
/// does `parseInt = f`.
///
/// Freezing a prototype would also stop an object from getting an own property of the
/// same name by assignment (`e.name = 'MyError'` with `Error.prototype.name` frozen: the
/// "override mistake"). For the properties where that is common, the frozen prototype
/// gets an accessor instead of the value: reading gives the original, assigning defines
/// an own property on the object assigned to.
const LOCKDOWN: &str = r#"(function (global, extraRoots) {
  var getNames = Object.getOwnPropertyNames, getSymbols = Object.getOwnPropertySymbols;
  var describe = Object.getOwnPropertyDescriptor, define = Object.defineProperty;
  var protoOf = Object.getPrototypeOf, freeze = Object.freeze, isFrozen = Object.isFrozen;
  var overridable = {
    'Object.prototype': ['constructor', 'toString', 'toLocaleString', 'valueOf',
      'hasOwnProperty', 'isPrototypeOf', 'propertyIsEnumerable'],
    'Function.prototype': ['constructor', 'toString', 'name', 'apply', 'call', 'bind'],
    'Error.prototype': ['constructor', 'name', 'message', 'toString'],
    'Array.prototype': ['constructor', 'toString', 'push', 'join'],
    'Promise.prototype': ['constructor', 'then']
  };
  ['TypeError', 'RangeError', 'SyntaxError', 'ReferenceError', 'EvalError', 'URIError']
    .forEach(function (n) { overridable[n + '.prototype'] = ['constructor', 'name', 'message']; });
  Object.keys(overridable).forEach(function (path) {
    var obj = global[path.split('.')[0]].prototype;
    overridable[path].forEach(function (key) {
      var d = describe(obj, key);
      if (!d || !('value' in d)) return;
      var value = d.value;
      define(obj, key, {
        get: function () { return value; },
        set: function (v) {
          if (this === obj) throw new TypeError('cannot assign to the frozen ' + path + '.' + key);
          define(this, key, { value: v, writable: true, enumerable: true, configurable: true });
        },
        enumerable: d.enumerable, configurable: false
      });
    });
  });
  var seen = new Set(), todo = [];
  function visit(v) {
    if (v === global || v === null || (typeof v !== 'object' && typeof v !== 'function')) return;
    if (!seen.has(v)) { seen.add(v); todo.push(v); }
  }
  function visitProperties(o) {
    getNames(o).concat(getSymbols(o)).forEach(function (k) {
      var d = describe(o, k);
      if (d) { visit(d.value); visit(d.get); visit(d.set); }
    });
  }
  visitProperties(global);
  visit(protoOf(global));
  extraRoots.forEach(visit);
  while (todo.length) {
    var o = todo.pop();
    visitProperties(o);
    visit(protoOf(o));
    if (!isFrozen(o)) freeze(o);
  }
  getNames(global).concat(getSymbols(global)).forEach(function (k) {
    var d = describe(global, k);
    if (!d.configurable) return;
    if ('value' in d) define(global, k, { writable: false, configurable: false });
    else define(global, k, { configurable: false });
  });
})"#;

/// Roots of the built-ins that no global property reaches.
const HIDDEN_INTRINSICS: &str = r#"[
  Object.getPrototypeOf(function* () {}),
  Object.getPrototypeOf(async function () {}),
  Object.getPrototypeOf(async function* () {}),
  Object.getPrototypeOf([][Symbol.iterator]()),
  Object.getPrototypeOf(new Map()[Symbol.iterator]()),
  Object.getPrototypeOf(new Set()[Symbol.iterator]()),
  Object.getPrototypeOf(''[Symbol.iterator]()),
  Object.getPrototypeOf(/a/[Symbol.matchAll]('')),
  Object.getPrototypeOf(Int8Array),
  (function () { return arguments; })()
]"#;

/// How an expression is compiled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Evaluate to a value (strict mode: cannot create globals).
    Value = 0,
    /// `<script>`: sloppy global code.
    Script = 1,
    /// Assign to a location that must exist (strict mode).
    Assign = 2,
    /// Assign to a variable that may be created (`<foreach item/index>`).
    Declare = 3,
}

#[derive(Clone)]
enum Compiled {
    Script(Script),
    Func(JsObject),
    Bad(String),
}

struct DocCache {
    doc: Weak<Document>,
    compiled: Vec<Option<Compiled>>,
    /// Data ids and plain identifiers used as locations: the globals a session of this
    /// document can make when it cannot reach the global object, and the names that may
    /// shadow a built-in.
    known: Vec<JsString>,
    /// The document can reach the global object (it has `<script>`, or an expression
    /// names `globalThis`, `this`, `eval`, `Function` or `constructor`): any global may
    /// appear, so every one is checked after each macrostep.
    full_scan: bool,
}

pub(crate) struct Runtime {
    pub ctx: Context,
    /// The session whose globals are in the context (see `lib.rs`): they stay there after
    /// its call ends, and go back to it when another session's call begins.
    pub installed: Option<crate::Installed>,
    /// The global object's own properties before any session ran, as they were.
    baseline: rustc_hash::FxHashMap<PropertyKey, PropertyDescriptor>,
    docs: HashMap<u64, DocCache>,
    dom: JsObject,
}

type Active = Option<(Arc<Document>, Rc<RefCell<Vec<bool>>>)>;

thread_local! {
    // ManuallyDrop: boa's garbage collector keeps its own thread-local state, which may be
    // torn down before ours at thread exit; dropping a Context after it corrupts the heap.
    // `release_thread` drops it explicitly while that is still safe.
    static RUNTIME: RefCell<Option<ManuallyDrop<Runtime>>> = const { RefCell::new(None) };
    static OPTIONS: Cell<RuntimeOptions> = Cell::new(RuntimeOptions::default());
    static ACTIVE: RefCell<Active> = const { RefCell::new(None) };
}

/// Sets the script limits for this thread's runtime (before its first use, or it is
/// rebuilt).
pub fn configure_thread(opts: RuntimeOptions) {
    OPTIONS.with(|o| o.set(opts));
    RUNTIME.with(|r| {
        if let Some(rt) = r.borrow_mut().as_mut() {
            apply_limits(&mut rt.ctx, opts);
        }
    });
}

/// This thread's script limits.
pub(crate) fn options() -> RuntimeOptions {
    OPTIONS.with(Cell::get)
}

/// Drops this thread's JS runtime. Every session datamodel of the thread must be dropped
/// first. Without this call the runtime lives until the process ends (it is never dropped
/// during thread teardown, which boa does not survive).
pub fn release_thread() {
    RUNTIME.with(|r| {
        if let Some(rt) = r.borrow_mut().take() {
            drop(ManuallyDrop::into_inner(rt));
        }
    });
}

/// `(documents compiled on this thread, expressions compiled)`.
pub fn thread_stats() -> (usize, usize) {
    RUNTIME.with(|r| {
        r.borrow()
            .as_ref()
            .map(|rt| {
                let n = rt
                    .docs
                    .values()
                    .map(|d| d.compiled.iter().filter(|c| c.is_some()).count())
                    .sum();
                (rt.docs.len(), n)
            })
            .unwrap_or((0, 0))
    })
}

fn apply_limits(ctx: &mut Context, o: RuntimeOptions) {
    let l = ctx.runtime_limits_mut();
    l.set_loop_iteration_limit(o.loop_iteration_limit);
    l.set_recursion_limit(o.recursion_limit);
}

/// Runs [`LOCKDOWN`] on a fresh context; `dom` (the DOM builder) is one more root.
fn lockdown(ctx: &mut Context, dom: &JsObject) {
    let run = |ctx: &mut Context, src: &str| {
        Script::parse(Source::from_bytes(src.as_bytes()), None, ctx).and_then(|s| s.evaluate(ctx))
    };
    let f = run(ctx, LOCKDOWN).expect("the lockdown prelude is valid JavaScript");
    let hidden = run(ctx, HIDDEN_INTRINSICS).expect("the hidden intrinsics are reachable");
    let roots =
        JsArray::from_object(hidden.as_object().expect("an array").clone()).expect("an array");
    roots
        .push(JsValue::from(dom.clone()), ctx)
        .expect("pushing to a fresh array");
    let global = JsValue::from(ctx.global_object());
    f.as_object()
        .expect("the lockdown prelude is a function")
        .call(&JsValue::undefined(), &[global, roots.into()], ctx)
        .expect("lockdown of a fresh context");
}

/// Runs `f` on this thread's runtime if there is one and it is not in use.
pub(crate) fn if_rt(f: impl FnOnce(&mut Runtime)) {
    let _ = RUNTIME.try_with(|r| {
        if let Ok(mut b) = r.try_borrow_mut()
            && let Some(rt) = b.as_mut()
        {
            f(rt);
        }
    });
}

pub(crate) fn with_rt<R>(f: impl FnOnce(&mut Runtime) -> R) -> R {
    RUNTIME.with(|r| {
        let mut b = r.borrow_mut();
        let rt = b.get_or_insert_with(|| ManuallyDrop::new(Runtime::new()));
        f(rt)
    })
}

pub(crate) fn readonly(v: JsValue) -> PropertyDescriptor {
    PropertyDescriptor::builder()
        .value(v)
        .writable(false)
        .enumerable(true)
        .configurable(true)
        .build()
}

pub(crate) fn event_key() -> JsString {
    js_string!("_event")
}

fn js_err(e: boa_engine::JsError) -> DmError {
    match crate::budget::exceeded() {
        Some(over) => DmError::new(format!("budget exceeded: {over}")),
        None => DmError::new(e.to_string()),
    }
}

/// The host hooks of every context: no code from strings. `eval` and `new Function`
/// would make code without the budget checks of [`crate::instrument`].
struct Hooks;

impl boa_engine::context::HostHooks for Hooks {
    fn ensure_can_compile_strings(
        &self,
        _realm: boa_engine::realm::Realm,
        _parameters: &[JsString],
        _body: &JsString,
        _direct: bool,
        _context: &mut Context,
    ) -> boa_engine::JsResult<()> {
        Err(boa_engine::JsNativeError::eval()
            .with_message("code generation from strings (eval, new Function) is disabled")
            .into())
    }

    /// `ArrayBuffer`s (and so typed arrays) are allocated in one native call.
    fn max_buffer_size(&self, _context: &mut Context) -> u64 {
        16 << 20
    }
}

fn in_predicate(_: &JsValue, args: &[JsValue], ctx: &mut Context) -> boa_engine::JsResult<JsValue> {
    let name = args
        .first()
        .cloned()
        .unwrap_or_default()
        .to_string(ctx)?
        .to_std_string_escaped();
    let on = ACTIVE.with(|a| {
        a.borrow().as_ref().is_some_and(|(doc, active)| {
            doc.state_by_name(&name)
                .is_some_and(|s| active.borrow().get(s as usize).copied().unwrap_or(false))
        })
    });
    Ok(JsValue::from(on))
}

impl Runtime {
    fn new() -> Runtime {
        let mut ctx = Context::builder()
            .host_hooks(Rc::new(Hooks))
            .build()
            .expect("a context with default intrinsics");
        apply_limits(&mut ctx, OPTIONS.with(Cell::get));
        ctx.register_global_callable(
            js_string!("In"),
            1,
            NativeFunction::from_fn_ptr(in_predicate),
        )
        .expect("registering a global function on a fresh context");
        ctx.register_global_callable(
            JsString::from(crate::instrument::TICK),
            0,
            NativeFunction::from_fn_ptr(crate::budget::tick),
        )
        .expect("registering a global function on a fresh context");
        Script::parse(Source::from_bytes(GUARDS.as_bytes()), None, &mut ctx)
            .and_then(|s| s.evaluate(&mut ctx))
            .expect("the guard prelude is valid JavaScript");
        let dom = crate::dom::install(&mut ctx);
        lockdown(&mut ctx, &dom);
        let g = ctx.global_object();
        let baseline = g
            .own_property_keys(&mut ctx)
            .expect("own_property_keys of the global object")
            .into_iter()
            .filter_map(|k| {
                let d = g.borrow().properties().get(&k)?;
                Some((k, d))
            })
            .collect();
        Runtime {
            ctx,
            installed: None,
            baseline,
            docs: HashMap::new(),
            dom,
        }
    }

    pub fn set_active(&mut self, a: Active) {
        ACTIVE.with(|x| *x.borrow_mut() = a);
    }

    fn cache(&mut self, doc: &Arc<Document>) -> &mut DocCache {
        if !self.docs.contains_key(&doc.uid) {
            // Forget documents nobody runs any more.
            self.docs.retain(|_, d| d.doc.strong_count() > 0);
            let mut known: Vec<JsString> = doc.all_data().map(|d| JsString::from(&*d.id)).collect();
            for e in &doc.exprs {
                let s = e.src.trim();
                if e.kind == ExprKind::Location && is_identifier(s) {
                    let k = JsString::from(s);
                    if !known.contains(&k) {
                        known.push(k);
                    }
                }
            }
            self.docs.insert(
                doc.uid,
                DocCache {
                    doc: Arc::downgrade(doc),
                    compiled: vec![None; doc.exprs.len() * 4],
                    known,
                    full_scan: doc
                        .exprs
                        .iter()
                        .any(|e| e.kind == ExprKind::Script || reaches_global_object(&e.src)),
                },
            );
        }
        self.docs.get_mut(&doc.uid).expect("inserted above")
    }

    fn compiled(&mut self, doc: &Arc<Document>, e: ExprId, mode: Mode) -> Compiled {
        let slot = e as usize * 4 + mode as usize;
        if let Some(c) = self.cache(doc).compiled.get(slot).cloned().flatten() {
            return c;
        }
        let src = &doc.expr(e).src;
        let c = self.compile(src, mode);
        if let Some(s) = self.cache(doc).compiled.get_mut(slot) {
            *s = Some(c.clone());
        }
        c
    }

    fn compile(&mut self, src: &str, mode: Mode) -> Compiled {
        let plain = match mode {
            Mode::Value => format!("\"use strict\";(\n{}\n)", trim_expr(src)),
            Mode::Script => match crate::toplevel::hoist(src) {
                Ok(text) => text.into_owned(),
                Err(e) => return Compiled::Bad(e),
            },
            Mode::Assign => format!("(function(__ors_v){{\"use strict\";(\n{src}\n) = __ors_v;}})"),
            Mode::Declare => {
                if !is_identifier(src.trim()) {
                    return Compiled::Bad(format!("\"{}\" is not a variable name", src.trim()));
                }
                format!("(function(__ors_v){{ {} = __ors_v;}})", src.trim())
            }
        };
        let text = match crate::instrument::instrument(src, &plain) {
            Ok(t) => t,
            Err(e) => return Compiled::Bad(format!("in \"{}\": {e}", src.trim())),
        };
        let script = match Script::parse(Source::from_bytes(text.as_bytes()), None, &mut self.ctx) {
            Ok(s) => s,
            Err(e) => return Compiled::Bad(format!("syntax error in \"{}\": {e}", src.trim())),
        };
        match mode {
            Mode::Value | Mode::Script => Compiled::Script(script),
            Mode::Assign | Mode::Declare => match script.evaluate(&mut self.ctx) {
                Ok(f) => match f.as_object() {
                    Some(o) => Compiled::Func(o.clone()),
                    None => {
                        Compiled::Bad("internal: assignment did not compile to a function".into())
                    }
                },
                Err(e) => Compiled::Bad(e.to_string()),
            },
        }
    }

    pub fn check_syntax(&mut self, kind: ExprKind, src: &str) -> Result<(), String> {
        let mode = match kind {
            ExprKind::Cond | ExprKind::Value => Mode::Value,
            ExprKind::Script => Mode::Script,
            ExprKind::Location => Mode::Assign,
        };
        let text = match mode {
            Mode::Value => format!("\"use strict\";(\n{src}\n)"),
            Mode::Script => crate::toplevel::hoist(src)?.into_owned(),
            _ => format!("(function(__ors_v){{\"use strict\";(\n{src}\n) = __ors_v;}})"),
        };
        Script::parse(Source::from_bytes(text.as_bytes()), None, &mut self.ctx)
            .map(|_| ())
            .map_err(|e| e.to_string())
    }

    pub fn eval(&mut self, doc: &Arc<Document>, e: ExprId, mode: Mode) -> DmResult<JsValue> {
        match self.compiled(doc, e, mode) {
            Compiled::Script(s) => s.evaluate(&mut self.ctx).map_err(js_err),
            Compiled::Func(f) => f
                .call(&JsValue::undefined(), &[], &mut self.ctx)
                .map_err(js_err),
            Compiled::Bad(m) => Err(DmError::new(m)),
        }
    }

    pub fn assign(
        &mut self,
        doc: &Arc<Document>,
        loc: ExprId,
        mode: Mode,
        v: JsValue,
    ) -> DmResult<()> {
        match self.compiled(doc, loc, mode) {
            Compiled::Func(f) => f
                .call(&JsValue::undefined(), &[v], &mut self.ctx)
                .map(|_| ())
                .map_err(|e| {
                    let e = js_err(e);
                    DmError::new(format!(
                        "cannot assign to \"{}\": {}",
                        doc.expr(loc).src.trim(),
                        e.0
                    ))
                }),
            Compiled::Bad(m) => Err(DmError::new(m)),
            Compiled::Script(_) => Err(DmError::new("internal: location compiled as a script")),
        }
    }

    pub fn json_of(&mut self, v: &JsValue) -> DmResult<Value> {
        Ok(v.to_json(&mut self.ctx)
            .map_err(js_err)?
            .unwrap_or(Value::Null))
    }

    pub fn content(&mut self, c: &Content) -> DmResult<JsValue> {
        match c {
            Content::Json(v) => JsValue::from_json(v, &mut self.ctx).map_err(js_err),
            Content::Text(t) => Ok(JsValue::from(JsString::from(&**t))),
            Content::Xml(x) => crate::dom::build(&self.dom.clone(), x, &mut self.ctx),
        }
    }

    pub fn array_items(&mut self, v: &JsValue) -> DmResult<Vec<JsValue>> {
        let Some(o) = v.as_object() else {
            return Err(DmError::new("foreach array is not an array"));
        };
        if !o.is_array() {
            return Err(DmError::new("foreach array is not an array"));
        }
        let arr = JsArray::from_object(o.clone()).map_err(js_err)?;
        let n = arr.length(&mut self.ctx).map_err(js_err)?;
        let mut out = Vec::with_capacity(n as usize);
        for i in 0..n {
            out.push(arr.get(i, &mut self.ctx).map_err(js_err)?);
        }
        Ok(out)
    }

    pub fn system_values(
        &mut self,
        s: &SystemVars,
        ioprocessors: bool,
    ) -> Vec<(JsString, JsValue)> {
        let io = if ioprocessors {
            JsValue::from_json(&s.ioprocessors, &mut self.ctx).unwrap_or_default()
        } else {
            JsValue::undefined()
        };
        vec![
            (
                js_string!("_sessionid"),
                JsValue::from(JsString::from(s.sessionid.as_str())),
            ),
            (
                js_string!("_name"),
                s.name
                    .as_deref()
                    .map(|n| JsValue::from(JsString::from(n)))
                    .unwrap_or_default(),
            ),
            (js_string!("_ioprocessors"), io),
        ]
    }

    pub fn event_object(&mut self, ev: &Event) -> JsValue {
        let o = JsObject::with_object_proto(self.ctx.intrinsics());
        let s = |x: &Option<String>| match x {
            Some(v) => JsValue::from(JsString::from(v.as_str())),
            None => JsValue::undefined(),
        };
        let kind = match ev.kind {
            ors_scxml::EventType::Platform => "platform",
            ors_scxml::EventType::Internal => "internal",
            ors_scxml::EventType::External => "external",
        };
        let data = match &ev.data {
            None => JsValue::undefined(),
            Some(c) => self.content(c).unwrap_or_default(),
        };
        let raw = match &ev.raw {
            Some(r) => JsValue::from(JsString::from(r.as_str())),
            None => JsValue::undefined(),
        };
        let fields: [(&str, JsValue); 8] = [
            ("name", JsValue::from(JsString::from(ev.name.as_str()))),
            ("type", JsValue::from(JsString::from(kind))),
            ("sendid", s(&ev.sendid)),
            ("origin", s(&ev.origin)),
            ("origintype", s(&ev.origintype)),
            ("invokeid", s(&ev.invokeid)),
            ("data", data),
            ("raw", raw),
        ];
        for (k, v) in fields {
            o.insert_property(
                JsString::from(k),
                PropertyDescriptor::builder()
                    .value(v)
                    .writable(false)
                    .enumerable(true)
                    .configurable(false),
            );
        }
        JsValue::from(o)
    }

    /// Takes every session global out of the shared context: the values are returned and
    /// the properties deleted, so the next session on this thread starts clean.
    pub fn take_globals(
        &mut self,
        doc: &Arc<Document>,
        system: &[JsString],
    ) -> Vec<(JsString, JsValue)> {
        self.session_globals(doc, system, true)
    }

    /// The session globals' values, left in place (for a snapshot of the installed
    /// session).
    pub fn peek_globals(
        &mut self,
        doc: &Arc<Document>,
        system: &[JsString],
    ) -> Vec<(JsString, JsValue)> {
        self.session_globals(doc, system, false)
    }

    fn session_globals(
        &mut self,
        doc: &Arc<Document>,
        system: &[JsString],
        remove: bool,
    ) -> Vec<(JsString, JsValue)> {
        let g = self.ctx.global_object();
        let (full, known) = {
            let c = self.cache(doc);
            let known: Vec<PropertyKey> = c
                .known
                .iter()
                .map(|k| PropertyKey::from(k.clone()))
                .collect();
            (c.full_scan, known)
        };
        // Every global that is not a built-in belongs to the session, whatever made it
        // (`<data>`, `var`, an assignment, `globalThis.x = ...`, `defineProperty`). A
        // document that cannot reach the global object can only make the names it
        // knows; checking only those keeps the common case cheap.
        let mut keys: Vec<PropertyKey> = if full {
            g.own_property_keys(&mut self.ctx)
                .unwrap_or_default()
                .into_iter()
                .filter(|k| !self.baseline.contains_key(k))
                .collect()
        } else {
            let mut k: Vec<PropertyKey> = known
                .iter()
                .filter(|k| !self.baseline.contains_key(k))
                .cloned()
                .collect();
            k.extend(system.iter().cloned().map(PropertyKey::from));
            k.push(PropertyKey::from(js_string!("_event")));
            k
        };
        // A `<data>` named like a built-in replaced it for this session only.
        keys.extend(known.into_iter().filter(|k| self.baseline.contains_key(k)));
        let mut out = Vec::new();
        for k in keys {
            if !full
                && !g
                    .has_own_property(k.clone(), &mut self.ctx)
                    .unwrap_or(false)
            {
                continue;
            }
            let value = g.get(k.clone(), &mut self.ctx).unwrap_or_default();
            if let Some(original) = self.baseline.get(&k) {
                if original
                    .value()
                    .is_some_and(|v| JsValue::same_value(v, &value))
                {
                    continue;
                }
                if let PropertyKey::String(name) = &k {
                    out.push((name.clone(), value));
                }
                if remove {
                    g.insert_property(k.clone(), original.clone());
                }
                continue;
            }
            let is_system = match &k {
                PropertyKey::String(s) => system.contains(s) || *s == js_string!("_event"),
                _ => false,
            };
            if !is_system && let PropertyKey::String(name) = &k {
                out.push((name.clone(), value));
            }
            if !remove {
                continue;
            }
            // `var` makes non-configurable globals; make it deletable first.
            g.insert_property(
                k.clone(),
                PropertyDescriptor::builder()
                    .value(JsValue::undefined())
                    .writable(true)
                    .enumerable(true)
                    .configurable(true),
            );
            let _ = g.delete_property_or_throw(k, &mut self.ctx);
        }
        out
    }
}

/// An expression may end with `;` (as in `expr="new Foo();"`), which is not valid inside
/// the parentheses it is compiled in.
fn trim_expr(src: &str) -> &str {
    src.trim()
        .trim_end_matches(|c: char| c == ';' || c.is_whitespace())
}

/// Whether an expression's source may reach the global object (and so make globals other
/// than the names it assigns): strict code gets at it only through these names.
fn reaches_global_object(src: &str) -> bool {
    const WAYS: [&str; 5] = ["globalThis", "this", "eval", "Function", "constructor"];
    src.split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
        .any(|word| WAYS.contains(&word))
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_alphabetic() || c == '_' || c == '$' => {}
        _ => return false,
    }
    chars.all(|c| c.is_alphanumeric() || c == '_' || c == '$')
}
