//! A minimal DOM for XML content in the ECMAScript datamodel (`<data>` with XML children,
//! `<content>` with XML): elements with `tagName`, `childNodes`, `getAttribute`,
//! `getElementsByTagName` and `textContent`. Enough for the W3C tests and for reading
//! values; not a full DOM.

use boa_engine::property::PropertyDescriptor;
use boa_engine::{Context, JsObject, JsString, JsValue, Script, Source, js_string};
use ors_scxml::datamodel::{DmError, DmResult};
use serde_json::{Map, Value, json};

const PRELUDE: &str = r#"(function () {
  function OrsNode(t) {
    this.nodeType = 1; this.tagName = t.tag; this.nodeName = t.tag; this.localName = t.tag;
    Object.defineProperty(this, '_attrs', { value: t.attrs, enumerable: false });
    this.childNodes = t.children.map(function (c) {
      return typeof c === 'string' ? { nodeType: 3, nodeValue: c, textContent: c } : new OrsNode(c);
    });
  }
  OrsNode.prototype.getAttribute = function (n) {
    return Object.prototype.hasOwnProperty.call(this._attrs, n) ? this._attrs[n] : null;
  };
  OrsNode.prototype.hasAttribute = function (n) {
    return Object.prototype.hasOwnProperty.call(this._attrs, n);
  };
  OrsNode.prototype.getElementsByTagName = function (name) {
    var out = [];
    (function walk(node) {
      for (var i = 0; i < node.childNodes.length; i++) {
        var c = node.childNodes[i];
        if (c.nodeType === 1) { if (name === '*' || c.tagName === name) out.push(c); walk(c); }
      }
    })(this);
    return out;
  };
  Object.defineProperty(OrsNode.prototype, 'textContent', { get: function () {
    return this.childNodes.map(function (c) { return c.textContent; }).join('');
  } });
  Object.defineProperty(OrsNode.prototype, 'firstChild', { get: function () {
    return this.childNodes.length ? this.childNodes[0] : null;
  } });
  // Shared by every session of the thread: nobody may change it.
  Object.freeze(OrsNode.prototype);
  Object.freeze(OrsNode);
  return function (tree) {
    var doc = new OrsNode(tree);
    doc.nodeType = 9;
    doc.documentElement = null;
    for (var i = 0; i < doc.childNodes.length; i++)
      if (doc.childNodes[i].nodeType === 1) { doc.documentElement = doc.childNodes[i]; break; }
    return doc;
  };
})()"#;

/// Compiles the DOM builder once per context; returns the builder function.
pub(crate) fn install(ctx: &mut Context) -> JsObject {
    let f = Script::parse(Source::from_bytes(PRELUDE.as_bytes()), None, ctx)
        .and_then(|s| s.evaluate(ctx))
        .expect("the DOM prelude is valid JavaScript");
    f.as_object()
        .expect("the DOM prelude returns a function")
        .clone()
}

fn tree(n: roxmltree::Node) -> Value {
    let mut attrs = Map::new();
    for a in n.attributes() {
        attrs.insert(a.name().to_string(), Value::String(a.value().to_string()));
    }
    let children: Vec<Value> = n
        .children()
        .filter_map(|c| {
            if c.is_element() {
                Some(tree(c))
            } else if c.is_text() {
                let t = c.text().unwrap_or("");
                (!t.trim().is_empty()).then(|| Value::String(t.to_string()))
            } else {
                None
            }
        })
        .collect();
    json!({ "tag": n.tag_name().name(), "attrs": attrs, "children": children })
}

/// Parses XML text into a DOM document object.
pub(crate) fn build(builder: &JsObject, xml: &str, ctx: &mut Context) -> DmResult<JsValue> {
    let wrapped = format!("<ors-document>{xml}</ors-document>");
    let doc = roxmltree::Document::parse(&wrapped)
        .map_err(|e| DmError::new(format!("invalid XML content: {e}")))?;
    let t = tree(doc.root_element());
    let arg = JsValue::from_json(&t, ctx).map_err(|e| DmError::new(e.to_string()))?;
    let doc = builder
        .call(&JsValue::undefined(), &[arg], ctx)
        .map_err(|e| DmError::new(e.to_string()))?;
    if let Some(o) = doc.as_object() {
        // Kept so that the document can be turned back into XML (`<content expr>`).
        o.insert_property(
            js_string!("__ors_xml"),
            PropertyDescriptor::builder()
                .value(JsString::from(xml))
                .writable(false)
                .enumerable(false)
                .configurable(false),
        );
    }
    Ok(doc)
}

/// The XML text of a document built by [`build`].
pub(crate) fn source_of(v: &JsValue, ctx: &mut Context) -> Option<String> {
    let o = v.as_object()?;
    if !o.has_own_property(js_string!("__ors_xml"), ctx).ok()? {
        return None;
    }
    let s = o.get(js_string!("__ors_xml"), ctx).ok()?;
    s.as_string().map(|s| s.to_std_string_escaped())
}
