//! What the datamodel's integration tests share.

use std::sync::Arc;

use ors_scxml::{Document, Session, SystemVars};
use serde_json::json;

/// A started session `id` of `doc` on this thread.
pub fn session(doc: &Arc<Document>, id: &str) -> Session {
    let vars = SystemVars {
        sessionid: id.into(),
        name: None,
        ioprocessors: json!({}),
    };
    let mut s = Session::new(doc.clone(), ors_ecmascript::datamodel_for(doc, &vars), id);
    s.start(0, &[]);
    s
}
