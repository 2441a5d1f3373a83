//! The engine in your own program: `cargo run -p ors-example-embed-engine`.
//!
//! A traffic light invokes a child session that counts cars and reports back; a delayed
//! `<send>` switches the light. `LocalHost` runs the tree of sessions on a clock we drive
//! (virtual time here), with the ECMAScript datamodel.

use std::sync::Arc;

use ors_scxml::host::{LocalHost, SessionFactory};
use ors_scxml::{CompileOptions, Datamodel, Document, Event, SystemVars, compile};

const LIGHT: &str = r##"<scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0"
    datamodel="ecmascript" initial="red">
  <datamodel><data id="cars" expr="0"/></datamodel>
  <state id="red">
    <onentry><send event="switch" delay="30s"/></onentry>
    <invoke id="counter"><content>
      <scxml xmlns="http://www.w3.org/2005/07/scxml" version="1.0" datamodel="ecmascript">
        <datamodel><data id="n" expr="0"/></datamodel>
        <state id="counting">
          <transition event="car"><assign location="n" expr="n + 1"/>
            <send target="#_parent" event="counted" namelist="n"/></transition>
        </state>
      </scxml>
    </content></invoke>
    <transition event="car"><send target="#_counter" event="car"/></transition>
    <transition event="counted"><assign location="cars" expr="_event.data.n"/>
      <log label="waiting" expr="cars"/></transition>
    <transition event="switch" target="green"/>
  </state>
  <state id="green"/>
</scxml>"##;

/// Makes datamodels for the sessions LocalHost starts; loads nothing from outside.
struct Factory;

impl SessionFactory for Factory {
    fn datamodel(&self, doc: &Arc<Document>, vars: &SystemVars) -> Box<dyn Datamodel> {
        ors_ecmascript::datamodel_for(doc, vars)
    }
    fn load(&self, uri: &str) -> Result<Arc<Document>, String> {
        Err(format!("this example loads no documents ({uri})"))
    }
    fn compile(&self, text: &str) -> Result<Arc<Document>, String> {
        compile(text, &CompileOptions::default()).map_err(|e| e.to_string())
    }
}

fn main() {
    let doc = compile(LIGHT, &CompileOptions::default()).expect("a valid document");
    let mut host = LocalHost::new(Factory, "example-");
    let light = host.start(doc, &[]);
    for _ in 0..3 {
        host.send(&light, Event::external("car", None)).unwrap();
    }
    let session = host.session(&light).unwrap();
    println!(
        "{:?} with {} cars counted",
        session.active_atomic_states(),
        {
            host.logs
                .last()
                .map(|l| l.message.clone())
                .unwrap_or_default()
        }
    );
    // 30 virtual seconds later the delayed send fires.
    host.run_virtual(60_000);
    println!(
        "after {} ms: {:?}",
        host.now_ms(),
        host.session(&light).unwrap().active_atomic_states()
    );
    assert_eq!(
        host.session(&light).unwrap().active_atomic_states(),
        ["green"]
    );
    for line in &host.logs {
        println!("log {} {}: {}", line.sessionid, line.label, line.message);
    }
}
