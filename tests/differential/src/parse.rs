//! Reading a document written in the generator's subset back into its model (the
//! checked-in cases are files), with the events and expected trace in its comments:
//! `<!-- events: a b -->` and `<!-- step 0: +s +a | a -->` (logs, then `|`, then the
//! active atomic states; `done` for a finished run).

use anyhow::{Context, anyhow, bail};

use crate::generate::{Action, Case, Doc, Initial, Kind, Node, Transition};
use crate::run::{Step, Trace};

/// A checked-in case: the document, its events, and the trace Appendix D gives.
pub struct Expected {
    /// The document and events.
    pub case: Case,
    /// The trace worked out by hand from Appendix D.
    pub trace: Trace,
}

/// Parses a case file.
pub fn case_file(text: &str) -> anyhow::Result<Expected> {
    let xml = roxmltree::Document::parse(text).context("parsing the case")?;
    let root = xml.root_element();
    let mut doc = Doc {
        vars: Vec::new(),
        top: Vec::new(),
    };
    for child in root.children().filter(|n| n.is_element()) {
        match child.tag_name().name() {
            "datamodel" => {
                for d in child.children().filter(|n| n.is_element()) {
                    doc.vars.push(attr(d, "id")?.to_string());
                }
            }
            _ => doc.top.push(node(child)?),
        }
    }
    let mut events = Vec::new();
    let mut trace = Vec::new();
    for comment in xml.descendants().filter(|n| n.is_comment()) {
        let text = comment.text().unwrap_or("").trim();
        if let Some(e) = text.strip_prefix("events:") {
            events = e.split_whitespace().map(String::from).collect();
        } else if let Some(step) = text.strip_prefix("step ") {
            let (_, rest) = step
                .split_once(':')
                .ok_or_else(|| anyhow!("bad step: {text}"))?;
            let (logs, config) = rest
                .split_once('|')
                .ok_or_else(|| anyhow!("a step without `|`: {text}"))?;
            let config = config.trim();
            let done = config == "done";
            let mut config: Vec<String> = if done {
                Vec::new()
            } else {
                config.split_whitespace().map(String::from).collect()
            };
            config.sort();
            trace.push(Step {
                logs: logs.split_whitespace().map(String::from).collect(),
                config,
                done,
            });
        }
    }
    Ok(Expected {
        case: Case { doc, events },
        trace,
    })
}

fn attr<'a>(n: roxmltree::Node<'a, '_>, name: &str) -> anyhow::Result<&'a str> {
    n.attribute(name)
        .ok_or_else(|| anyhow!("<{}> without {name}", n.tag_name().name()))
}

fn node(n: roxmltree::Node) -> anyhow::Result<Node> {
    let kind = match n.tag_name().name() {
        "state" => Kind::State,
        "parallel" => Kind::Parallel,
        "final" => Kind::Final,
        "history" => Kind::History {
            deep: n.attribute("type") == Some("deep"),
        },
        other => bail!("<{other}> is not in the generator's subset"),
    };
    let mut out = Node {
        id: attr(n, "id")?.to_string(),
        kind,
        children: Vec::new(),
        initial: match n.attribute("initial") {
            Some(i) => Initial::Attribute(i.to_string()),
            None => Initial::FirstChild,
        },
        onentry: Vec::new(),
        onexit: Vec::new(),
        transitions: Vec::new(),
    };
    for c in n.children().filter(|c| c.is_element()) {
        match c.tag_name().name() {
            "onentry" => out.onentry = actions(c)?,
            "onexit" => out.onexit = actions(c)?,
            "transition" => out.transitions.push(transition(c)?),
            "initial" => {
                let t = c
                    .children()
                    .find(|t| t.is_element())
                    .ok_or_else(|| anyhow!("an empty <initial>"))?;
                let t = transition(t)?;
                out.initial = Initial::Element(t.targets.join(" "), t.actions);
            }
            _ => out.children.push(node(c)?),
        }
    }
    Ok(out)
}

fn transition(n: roxmltree::Node) -> anyhow::Result<Transition> {
    Ok(Transition {
        event: n.attribute("event").map(String::from),
        cond: n.attribute("cond").map(String::from),
        targets: n
            .attribute("target")
            .map(|t| t.split_whitespace().map(String::from).collect())
            .unwrap_or_default(),
        internal: n.attribute("type") == Some("internal"),
        actions: actions(n)?,
    })
}

fn actions(n: roxmltree::Node) -> anyhow::Result<Vec<Action>> {
    n.children()
        .filter(|c| c.is_element())
        .map(|c| {
            Ok(match c.tag_name().name() {
                "log" => {
                    let expr = attr(c, "expr")?;
                    match expr.strip_prefix('\'').and_then(|e| e.strip_suffix('\'')) {
                        Some(text) if !text.contains('\'') => Action::Log(text.to_string()),
                        _ => {
                            Action::LogVar(expr.rsplit('+').next().unwrap_or("").trim().to_string())
                        }
                    }
                }
                "raise" => Action::Raise(attr(c, "event")?.to_string()),
                "assign" => Action::Increment(attr(c, "location")?.to_string()),
                other => bail!("<{other}> is not in the generator's subset"),
            })
        })
        .collect()
}
