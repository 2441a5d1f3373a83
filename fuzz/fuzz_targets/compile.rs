//! Arbitrary bytes into the SCXML compiler; documents that compile are also started and
//! fed a few events, so the interpreter sees fuzzed documents too.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ors_scxml::{CompileOptions, Event, Session, SystemVars, compile};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(doc) = compile(text, &CompileOptions::default()) else { return };
    let vars = SystemVars {
        sessionid: "fuzz".into(),
        name: None,
        ioprocessors: serde_json::json!({}),
    };
    let mut s = Session::new(doc.clone(), ors_ecmascript::datamodel_for(&doc, &vars), "fuzz");
    s.start(0, &[]);
    for name in ["a", "b", "error.x", "done"] {
        if s.push_external(Event::external(name, None)).is_ok() {
            s.run(1);
        }
    }
    if let Ok(snap) = s.snapshot() {
        let _ = serde_json::to_string(&snap);
    }
});
