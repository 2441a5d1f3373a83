//! The time and memory budget of one call into a session (a macrostep).
//!
//! boa can be neither interrupted nor given a heap limit, and a native call cannot be
//! seen from outside while it runs. So the check runs inside the script: every function
//! body and every loop iteration of a document's code calls `__ors_tick()` (added by
//! [`crate::instrument`]), and the tick compares the time since the macrostep began with
//! its budget and the bytes this thread allocated since then (counted by
//! [`ors_alloc_meter`]) with the memory budget. Once over, every tick throws an error
//! that no `catch` can stop, so the script unwinds at its next call or loop iteration;
//! the session sees the budget as exceeded and aborts.
//!
//! Between two ticks a script runs straight-line code of its own (bounded by its size),
//! at most one iteration of a loop, and native built-ins: those whose work grows with an
//! argument rather than with data the script already has are guarded by size (see
//! `GUARDS` in `runtime.rs`).

use std::cell::RefCell;
use std::time::{Duration, Instant};

use boa_engine::error::RuntimeLimitError;
use boa_engine::{Context, JsError, JsResult, JsValue};

/// How one macrostep went over its budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exceeded {
    /// It ran longer than this.
    Time(Duration),
    /// It allocated more than this many bytes (net of what it freed).
    Memory(u64),
}

impl std::fmt::Display for Exceeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exceeded::Time(d) => write!(f, "the macrostep ran longer than {} ms", d.as_millis()),
            Exceeded::Memory(b) => write!(
                f,
                "the macrostep allocated more than {} MiB",
                b.div_ceil(1 << 20)
            ),
        }
    }
}

/// The limits of one macrostep; `None` is unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Budget {
    /// Wall-clock time.
    pub time: Option<Duration>,
    /// Bytes allocated and not freed (needs [`ors_alloc_meter::CountingAlloc`] as the
    /// global allocator; without it memory is not bounded).
    pub memory: Option<u64>,
}

struct Armed {
    budget: Budget,
    deadline: Option<Instant>,
    memory_start: i64,
    /// Usage (bytes since the start) from which an over-budget tick collects garbage
    /// before it decides.
    collect_from: i64,
    exceeded: Option<Exceeded>,
}

thread_local! {
    static ARMED: RefCell<Option<Armed>> = const { RefCell::new(None) };
}

/// Starts the budget of a macrostep on this thread.
pub(crate) fn arm(budget: Budget) {
    if budget.time.is_none() && budget.memory.is_none() {
        return;
    }
    let armed = Armed {
        budget,
        deadline: budget.time.map(|t| Instant::now() + t),
        memory_start: ors_alloc_meter::thread_net_bytes(),
        collect_from: 0,
        exceeded: None,
    };
    ARMED.with(|a| *a.borrow_mut() = Some(armed));
}

/// Ends the macrostep's budget.
pub(crate) fn disarm() {
    ARMED.with(|a| *a.borrow_mut() = None);
}

/// Whether the running macrostep went over its budget.
pub(crate) fn exceeded() -> Option<Exceeded> {
    ARMED.with(|a| a.borrow().as_ref().and_then(|a| a.exceeded))
}

fn usage(memory_start: i64) -> i64 {
    ors_alloc_meter::thread_net_bytes() - memory_start
}

/// `__ors_tick()`: `true`, or an uncatchable error once the budget is spent.
pub(crate) fn tick(_: &JsValue, _: &[JsValue], _: &mut Context) -> JsResult<JsValue> {
    let stop = || Err(JsError::from(RuntimeLimitError::LoopIteration));
    let (start, memory, mut used, collect): (i64, u64, i64, bool) = match ARMED.with(|a| {
        let mut a = a.borrow_mut();
        let Some(a) = a.as_mut() else {
            return Ok(None);
        };
        if a.exceeded.is_some() {
            return Err(());
        }
        // Ticks can be far apart (a tick, then one native call over a large array), so
        // the clock is read every time: a vDSO call of some 20 ns, not measurable beside
        // the cost of the call into the tick (docs/benchmarks.md).
        if let (Some(d), Some(t)) = (a.deadline, a.budget.time)
            && Instant::now() >= d
        {
            a.exceeded = Some(Exceeded::Time(t));
            return Err(());
        }
        let Some(limit) = a.budget.memory else {
            return Ok(None);
        };
        let used = usage(a.memory_start);
        if used <= limit as i64 {
            return Ok(None);
        }
        Ok(Some((a.memory_start, limit, used, used >= a.collect_from)))
    }) {
        Err(()) => return stop(),
        Ok(None) => return Ok(JsValue::from(true)),
        Ok(Some(x)) => x,
    };
    // Over by the counter, but some of it may be garbage: collect before deciding, at
    // most once per quarter of the budget allocated (outside the borrow: collecting
    // frees, which counts).
    if collect {
        boa_gc::force_collect();
        used = usage(start);
        ARMED.with(|a| {
            if let Some(a) = a.borrow_mut().as_mut() {
                a.collect_from = used + (memory / 4) as i64;
            }
        });
    }
    if used <= memory as i64 {
        return Ok(JsValue::from(true));
    }
    ARMED.with(|a| {
        if let Some(a) = a.borrow_mut().as_mut() {
            a.exceeded = Some(Exceeded::Memory(memory));
        }
    });
    stop()
}
