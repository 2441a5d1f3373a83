//! Where two runs of one case first part ways.

use crate::run::{Step, Trace};

/// The first difference between our trace and a peer's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// The step (0: the start; k: after the k-th event).
    pub step: usize,
    /// What differs there.
    pub what: What,
}

/// What differs in a step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum What {
    /// The `index`-th log line (`None`: that run logged fewer lines).
    Log {
        /// Its position in the step's logs.
        index: usize,
        /// Ours.
        ours: Option<String>,
        /// The peer's.
        theirs: Option<String>,
    },
    /// The same logs, a different configuration or end.
    State {
        /// Ours.
        ours: Step,
        /// The peer's.
        theirs: Step,
    },
    /// One run has this step and the other has not.
    Missing {
        /// True if ours has it.
        ours_has_it: bool,
    },
}

/// The first divergence, or `None` when the traces agree.
pub fn first_divergence(ours: &Trace, theirs: &Trace) -> Option<Divergence> {
    for step in 0..ours.len().max(theirs.len()) {
        let (o, t) = match (ours.get(step), theirs.get(step)) {
            (Some(o), Some(t)) => (o, t),
            (o, _) => {
                return Some(Divergence {
                    step,
                    what: What::Missing {
                        ours_has_it: o.is_some(),
                    },
                });
            }
        };
        for index in 0..o.logs.len().max(t.logs.len()) {
            let (a, b) = (o.logs.get(index), t.logs.get(index));
            if a != b {
                return Some(Divergence {
                    step,
                    what: What::Log {
                        index,
                        ours: a.cloned(),
                        theirs: b.cloned(),
                    },
                });
            }
        }
        if o != t {
            return Some(Divergence {
                step,
                what: What::State {
                    ours: o.clone(),
                    theirs: t.clone(),
                },
            });
        }
    }
    None
}

impl std::fmt::Display for Divergence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step {}: ", self.step)?;
        match &self.what {
            What::Log {
                index,
                ours,
                theirs,
            } => write!(
                f,
                "log line {index}: ours {}, theirs {}",
                ours.as_deref().unwrap_or("(none)"),
                theirs.as_deref().unwrap_or("(none)")
            ),
            What::State { ours, theirs } => write!(
                f,
                "ours {:?}{}, theirs {:?}{}",
                ours.config,
                if ours.done { " done" } else { "" },
                theirs.config,
                if theirs.done { " done" } else { "" }
            ),
            What::Missing { ours_has_it } => write!(
                f,
                "{} has no such step",
                if *ours_has_it { "theirs" } else { "ours" }
            ),
        }
    }
}
