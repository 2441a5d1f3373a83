//! What a session did in each microstep, for tools that explain a run (`ors run --trace`,
//! the differential harness). Off by default: a session records nothing until
//! [`Session::record_microsteps`](crate::Session::record_microsteps) is called.

/// A transition named by where it is written: its source state's id and its position
/// among that state's `<transition>` children (`None` for the transition of an `<initial>`
/// element).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransitionRef {
    /// The id of the state (or `<history>`) the transition belongs to.
    pub source: String,
    /// Its index among the source's transitions, in document order.
    pub index: Option<usize>,
}

impl std::fmt::Display for TransitionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.index {
            Some(i) => write!(f, "{}[{}]", self.source, i),
            None => write!(f, "{}[initial]", self.source),
        }
    }
}

/// One microstep: the transitions taken (in the order their content ran), the
/// transitions `removeConflictingTransitions` dropped, and the states exited and entered
/// (in the order their handlers ran). The first microstep of a session is its initial
/// entry, with no transitions.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Microstep {
    /// The event being processed (`None` for eventless transitions and the start).
    pub event: Option<String>,
    /// Transitions taken, in document order of the atomic states that selected them.
    pub transitions: Vec<TransitionRef>,
    /// `(dropped, kept)`: an enabled transition removed because its exit set intersects
    /// that of a transition kept before it.
    pub preempted: Vec<(TransitionRef, TransitionRef)>,
    /// States exited, in exit order.
    pub exited: Vec<String>,
    /// States entered, in entry order.
    pub entered: Vec<String>,
}

/// What a session did, in order: its microsteps with the `error.*` events it processed
/// put where they happened (from [`Session::take_microsteps`](crate::Session::take_microsteps)
/// and [`Session::take_errors`](crate::Session::take_errors), taken together).
#[derive(Debug, Clone, PartialEq)]
pub enum Happened {
    /// A microstep.
    Step(Microstep),
    /// An `error.*` event, handled or not.
    Error(crate::Event),
}

/// Puts `errors` (each with the number of microsteps before it) among `steps`.
pub fn interleave(steps: Vec<Microstep>, errors: Vec<(usize, crate::Event)>) -> Vec<Happened> {
    let mut out = Vec::with_capacity(steps.len() + errors.len());
    let mut errors = errors.into_iter().peekable();
    for (i, step) in steps.into_iter().enumerate() {
        while let Some((_, e)) = errors.next_if(|(at, _)| *at <= i) {
            out.push(Happened::Error(e));
        }
        out.push(Happened::Step(step));
    }
    out.extend(errors.map(|(_, e)| Happened::Error(e)));
    out
}
