#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

pub mod compile;
pub mod datamodel;
pub mod event;
pub mod host;
pub mod model;
pub mod session;
pub mod snapshot;
pub mod trace;

pub use compile::{CompileError, CompileOptions, Diagnostic, Limits, Loader, compile};
pub use datamodel::{Datamodel, DmError, NullDatamodel, SystemVars};
pub use event::{Effect, Event, EventType, InvokeRequest, InvokeSource};
pub use model::{Content, Document};
pub use session::{Loopback, Session, SessionLimits, TargetCheck};
pub use snapshot::Snapshot;
pub use trace::{Happened, Microstep, TransitionRef, interleave};
