//! Events and the effects a session asks its host to carry out.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::model::{Content, Document};

/// The SCXML Event I/O Processor type URI.
pub const SCXML_PROCESSOR: &str = "http://www.w3.org/TR/scxml/#SCXMLEventProcessor";
/// The Basic HTTP Event I/O Processor type URI.
pub const BASIC_HTTP_PROCESSOR: &str = "http://www.w3.org/TR/scxml/#BasicHTTPEventProcessor";
/// The invoke type for SCXML child sessions.
pub const SCXML_INVOKE_TYPE: &str = "http://www.w3.org/TR/scxml/";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// The `_event.type` of an event.
pub enum EventType {
    /// Raised by the platform (`error.*`).
    Platform,
    /// Raised by the session itself (`<raise>`, `<send target="#_internal">`).
    Internal,
    /// From outside the session.
    External,
}

/// An SCXML event: what `_event` shows to the document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// `_event.name`.
    pub name: String,
    #[serde(rename = "type")]
    /// `_event.type`.
    pub kind: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `_event.sendid`: the id of the `<send>` that sent it (or of the failed send for an error).
    pub sendid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `_event.origin`: where to send a reply.
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `_event.origintype`: the Event I/O Processor of `origin`.
    pub origintype: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `_event.invokeid`: set on events from an invoked child.
    pub invokeid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    /// `_event.data`.
    pub data: Option<Content>,
    /// The raw message as received (the BasicHTTP processor puts the HTTP request here).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw: Option<String>,
}

impl Event {
    /// An external event with a name and optional JSON data.
    pub fn external(name: impl Into<String>, data: Option<serde_json::Value>) -> Self {
        Event {
            name: name.into(),
            kind: EventType::External,
            sendid: None,
            origin: None,
            origintype: None,
            invokeid: None,
            data: data.map(Content::Json),
            raw: None,
        }
    }

    /// `done.invoke.<invokeid>` from the child session `child` to its parent.
    pub fn done_invoke(invokeid: &str, child: &str, data: Option<Content>) -> Self {
        Event {
            name: format!("done.invoke.{invokeid}"),
            kind: EventType::External,
            sendid: None,
            origin: Some(format!("#_scxml_{child}")),
            origintype: Some(SCXML_PROCESSOR.to_string()),
            invokeid: Some(invokeid.to_string()),
            data,
            raw: None,
        }
    }

    /// An internal event (`<raise>`, `done.state.*`).
    pub fn internal(name: impl Into<String>, data: Option<Content>) -> Self {
        Event {
            name: name.into(),
            kind: EventType::Internal,
            sendid: None,
            origin: None,
            origintype: None,
            invokeid: None,
            data,
            raw: None,
        }
    }

    pub(crate) fn platform(name: &str, sendid: Option<String>, message: Option<String>) -> Self {
        Event {
            name: name.to_string(),
            kind: EventType::Platform,
            sendid,
            origin: None,
            origintype: None,
            invokeid: None,
            data: message.map(|m| Content::Json(serde_json::json!({ "message": m }))),
            raw: None,
        }
    }

    /// `error.communication` for a send the host could not deliver.
    pub fn error_communication(sendid: Option<String>, message: &str) -> Self {
        Self::platform("error.communication", sendid, Some(message.to_string()))
    }

    /// What a platform event (an `error.*` one, say) says went wrong: its
    /// `_event.data.message`.
    pub fn message(&self) -> Option<&str> {
        match &self.data {
            Some(Content::Json(v)) => v.get("message").and_then(|m| m.as_str()),
            _ => None,
        }
    }
}

/// Where an SCXML Event I/O Processor target points.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendTarget<'a> {
    /// `#_parent`
    Parent,
    /// `#_scxml_<sessionid>`
    Session(&'a str),
    /// `#_<invokeid>`
    Invoked(&'a str),
    /// Anything else (not an SCXML processor address).
    Other(&'a str),
}

impl<'a> SendTarget<'a> {
    /// Reads a target attribute.
    pub fn parse(target: &'a str) -> SendTarget<'a> {
        match target.strip_prefix("#_") {
            Some("parent") => SendTarget::Parent,
            Some(t) => match t.strip_prefix("scxml_") {
                Some(id) => SendTarget::Session(id),
                None => SendTarget::Invoked(t),
            },
            None => SendTarget::Other(target),
        }
    }
}

/// A child session the host is asked to start.
#[derive(Debug, Clone)]
pub struct InvokeRequest {
    /// The invoke's id (given, or generated as `<state id>.<platform id>`).
    pub invokeid: String,
    /// The invoke type URI as written (normalised to [`SCXML_INVOKE_TYPE`] for SCXML).
    pub type_: String,
    /// The child's document.
    pub source: InvokeSource,
    /// Values from `namelist` and `<param>`: they initialise the child's `<data>` of the
    /// same names.
    pub params: Vec<(String, serde_json::Value)>,
    /// Whether the parent forwards its external events to the child.
    pub autoforward: bool,
}

#[derive(Debug, Clone)]
/// Where an invoked child's document comes from.
pub enum InvokeSource {
    /// A URI for the host to load (`src`/`srcexpr`).
    Uri(String),
    /// An inline `<content><scxml>` compiled with the parent.
    Document(Arc<Document>),
    /// `<content expr>` evaluated to document text.
    Text(String),
}

/// What the engine asks of its host. The engine does no I/O: delivering events to other
/// sessions, running timers and starting children is the host's job.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Deliver `event` to `target` through the I/O processor `type_`. Targets the session
    /// handles itself (`#_internal`, no target) never appear here.
    Send {
        /// The target attribute as evaluated.
        target: String,
        /// The Event I/O Processor's type URI.
        type_: String,
        /// The event, fully evaluated.
        event: Event,
    },
    /// Call [`crate::Session::fire_timer`] with `timer` at `due_ms` (clock of the host).
    SetTimer {
        /// The session's timer number.
        timer: u64,
        /// When it is due.
        due_ms: u64,
    },
    /// A timer set earlier was cancelled; it must not fire.
    CancelTimer {
        /// The timer number from [`Effect::SetTimer`].
        timer: u64,
    },
    /// Start a child session.
    Invoke(InvokeRequest),
    /// Cancel a child session started by [`Effect::Invoke`].
    CancelInvoke {
        /// The child's invoke id.
        invokeid: String,
    },
    /// `<log>`.
    Log {
        /// The `label` attribute.
        label: String,
        /// The evaluated `expr`.
        message: String,
    },
    /// ORS `<response>`: answer the request whose event had `sendid == requestid`.
    Response {
        /// The `sendid` of the request's event.
        requestid: String,
        /// `false` for a failure response.
        positive: bool,
        /// The document's `resultcode`.
        resultcode: Option<String>,
        /// The response's parameters.
        params: serde_json::Map<String, serde_json::Value>,
    },
    /// The session reached a top-level final state (or was cancelled); it is over.
    Done {
        /// The `<donedata>` of the final state reached, if any.
        data: Option<Content>,
    },
    /// The session was stopped because it broke a limit (e.g. an endless eventless loop).
    Aborted {
        /// Which limit, in words.
        reason: String,
    },
}
