//! Budget checks in a document's code: a call to `__ors_tick()` at the start of every
//! function body and in every loop iteration (see [`crate::budget`] for why).
//!
//! | written | run as |
//! | --- | --- |
//! | `function f(a) { body }` | `function f(a) {__ors_tick(); body }` |
//! | `x => x + 1` | `x => (__ors_tick(), x + 1)` |
//! | `while (c) s` / `do s while (c)` | `while (__ors_tick()&&(c)) s` |
//! | `for (i; c; u) s` | `for (i; __ors_tick()&&(c); u) s` (or `__ors_tick(),(u)`, or `;__ors_tick();`) |
//! | `for (x of xs) s`, `for (k in o) s` | `for (x of xs) if(!__ors_tick());else s` |
//!
//! The places come from boa's own parse of the code (the spans of function bodies and of
//! loop conditions), so strings, comments and regular expressions cannot mislead them;
//! the result is parsed again before it is used. A document cannot switch the checks off:
//! names starting with `__ors_` are reserved (a local `__ors_tick` would shadow the
//! global one) and `with` is refused (its object could too).

use std::borrow::Cow;
use std::ops::ControlFlow;

use boa_engine::ast::expression::Identifier;
use boa_engine::ast::function::FunctionBody;
use boa_engine::ast::scope::Scope;
use boa_engine::ast::statement::With;
use boa_engine::ast::statement::iteration::{
    DoWhileLoop, ForInLoop, ForLoop, ForOfLoop, WhileLoop,
};
use boa_engine::ast::visitor::{VisitWith, Visitor};
use boa_engine::ast::{Expression, Position, Span, Spanned};
use boa_engine::interner::Interner;
use boa_engine::parser::{Parser, Source};

/// The name of the check; a global function installed by the runtime.
pub(crate) const TICK: &str = "__ors_tick";

/// Our own names that documents may not use.
const RESERVED: &str = "__ors_";

/// The one reserved name a document's code may contain: the parameter of the wrapper an
/// `<assign>` location is compiled into.
const ASSIGN_PARAMETER: &str = "__ors_v";

/// `text` with the checks added (borrowed when it has no function and no loop), or why
/// it cannot run.
///
/// `user` is the part of `text` the document wrote: when it cannot contain a function or
/// a loop, `text` is returned as is without parsing.
pub(crate) fn instrument<'a>(user: &str, text: &'a str) -> Result<Cow<'a, str>, String> {
    if !may_loop_or_call(user) {
        return Ok(Cow::Borrowed(text));
    }
    let mut interner = Interner::default();
    let script = Parser::new(Source::from_bytes(text.as_bytes()))
        .parse_script(&Scope::new_global(), &mut interner)
        .map_err(|e| e.to_string())?;
    let mut finder = Finder {
        text,
        lines: line_starts(text),
        interner: &interner,
        edits: Vec::new(),
        bare_for_loops: 0,
        refused: None,
    };
    let _ = script.visit_with(&mut finder);
    if let Some(why) = finder.refused {
        return Err(why);
    }
    let mut edits = finder.edits;
    let bare = bare_for_headers(text);
    if bare.len() != finder.bare_for_loops {
        return Err(
            "cannot add the budget checks to a `for (;;)` loop written with comments or \
             line breaks between its semicolons; write `for (;;)` or `while (true)`"
                .into(),
        );
    }
    let seq = edits.len();
    edits.extend(bare.into_iter().enumerate().map(|(i, at)| Edit {
        at,
        text: "__ors_tick()".into(),
        closes: false,
        seq: seq + i,
    }));
    if edits.is_empty() {
        return Ok(Cow::Borrowed(text));
    }
    // At one place: closing parentheses first, the innermost (visited last) first; then
    // openings, the outermost (visited first) first.
    edits.sort_by(|a, b| {
        a.at.cmp(&b.at)
            .then(b.closes.cmp(&a.closes))
            .then(if a.closes {
                b.seq.cmp(&a.seq)
            } else {
                a.seq.cmp(&b.seq)
            })
    });
    let mut out = String::with_capacity(text.len() + edits.len() * 16);
    let mut copied = 0;
    for e in &edits {
        out.push_str(&text[copied..e.at]);
        out.push_str(&e.text);
        copied = e.at;
    }
    out.push_str(&text[copied..]);
    Parser::new(Source::from_bytes(out.as_bytes()))
        .parse_script(&Scope::new_global(), &mut Interner::default())
        .map_err(|e| format!("internal: the code with budget checks does not parse: {e}"))?;
    Ok(Cow::Owned(out))
}

/// Without braces, an arrow or a loop keyword, code has no function body and no loop.
fn may_loop_or_call(src: &str) -> bool {
    src.contains('{')
        || src.contains("=>")
        || src
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '$'))
            .any(|w| w == "for" || w == "while" || w.starts_with(RESERVED))
}

struct Edit {
    at: usize,
    text: Cow<'static, str>,
    closes: bool,
    seq: usize,
}

struct Finder<'a> {
    text: &'a str,
    lines: Vec<usize>,
    interner: &'a Interner,
    edits: Vec<Edit>,
    /// `for` loops with neither a condition nor an update: no span to anchor to.
    bare_for_loops: usize,
    refused: Option<String>,
}

impl Finder<'_> {
    fn offset(&self, p: Position) -> usize {
        let line = self.lines[(p.line_number() as usize - 1).min(self.lines.len() - 1)];
        let col = p.column_number() as usize - 1;
        self.text[line..]
            .char_indices()
            .nth(col)
            .map_or(self.text.len(), |(i, _)| line + i)
    }

    fn insert(&mut self, at: usize, text: impl Into<Cow<'static, str>>, closes: bool) {
        let seq = self.edits.len();
        self.edits.push(Edit {
            at,
            text: text.into(),
            closes,
            seq,
        });
    }

    fn wrap(&mut self, span: Span, open: &'static str, close: &'static str) {
        let (s, e) = (self.offset(span.start()), self.offset(span.end()));
        self.insert(s, open, false);
        self.insert(e, close, true);
    }

    /// A loop condition: the tick runs before it on every iteration.
    fn tick_condition(&mut self, cond: &Expression) {
        self.wrap(cond.span(), "__ors_tick()&&(", ")");
    }

    /// The body of a `for-in`/`for-of` loop starts after the `)` that follows `head`.
    fn tick_body_after(&mut self, head: &Expression) {
        let from = self.offset(head.span().end());
        match skip_trivia(self.text, from) {
            Some(at) if self.text[at..].starts_with(')') => {
                self.insert(at + 1, "if(!__ors_tick());else ", false);
            }
            _ => {
                self.refused.get_or_insert_with(|| {
                    "internal: cannot find the body of a for-in/for-of loop".into()
                });
            }
        }
    }
}

impl<'ast> Visitor<'ast> for Finder<'_> {
    type BreakTy = ();

    fn visit_function_body(&mut self, body: &'ast FunctionBody) -> ControlFlow<()> {
        let span = body.span();
        let start = self.offset(span.start());
        if self.text[start..].starts_with('{') {
            // A "use strict" directive must stay first to keep its meaning.
            let first = skip_trivia(self.text, start + 1).unwrap_or(start + 1);
            let strict = ["'use strict'", "\"use strict\""]
                .iter()
                .any(|d| self.text[first..].starts_with(d));
            let tick = if strict {
                "\"use strict\";__ors_tick();"
            } else {
                "__ors_tick();"
            };
            self.insert(start + 1, tick, false);
        } else {
            self.wrap(span, "(__ors_tick(),", ")");
        }
        body.visit_with(self)
    }

    fn visit_while_loop(&mut self, node: &'ast WhileLoop) -> ControlFlow<()> {
        self.tick_condition(node.condition());
        node.visit_with(self)
    }

    fn visit_do_while_loop(&mut self, node: &'ast DoWhileLoop) -> ControlFlow<()> {
        self.tick_condition(node.cond());
        node.visit_with(self)
    }

    fn visit_for_loop(&mut self, node: &'ast ForLoop) -> ControlFlow<()> {
        match (node.condition(), node.final_expr()) {
            (Some(c), _) => self.tick_condition(c),
            (None, Some(u)) => self.wrap(u.span(), "__ors_tick(),(", ")"),
            (None, None) => self.bare_for_loops += 1,
        }
        node.visit_with(self)
    }

    fn visit_for_in_loop(&mut self, node: &'ast ForInLoop) -> ControlFlow<()> {
        self.tick_body_after(node.target());
        node.visit_with(self)
    }

    fn visit_for_of_loop(&mut self, node: &'ast ForOfLoop) -> ControlFlow<()> {
        self.tick_body_after(node.iterable());
        node.visit_with(self)
    }

    fn visit_with(&mut self, _: &'ast With) -> ControlFlow<()> {
        self.refused
            .get_or_insert_with(|| "`with` statements are not supported".into());
        ControlFlow::Break(())
    }

    fn visit_identifier(&mut self, node: &'ast Identifier) -> ControlFlow<()> {
        let name = self.interner.resolve_expect(node.sym()).to_string();
        if name.starts_with(RESERVED) && name != ASSIGN_PARAMETER {
            self.refused.get_or_insert_with(|| {
                format!("the name \"{name}\" is reserved (names starting with {RESERVED})")
            });
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    }
}

/// Byte offsets of the starts of the lines, as boa counts lines.
fn line_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![0];
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\r' if chars.peek().is_some_and(|&(_, n)| n == '\n') => {}
            '\n' | '\r' | '\u{2028}' | '\u{2029}' => starts.push(i + c.len_utf8()),
            _ => {}
        }
    }
    starts
}

/// The first offset from `i` that is not white space or a comment.
fn skip_trivia(text: &str, mut i: usize) -> Option<usize> {
    let b = text.as_bytes();
    loop {
        while i < b.len() && (b[i] as char).is_ascii_whitespace() {
            i += 1;
        }
        if text[i..].starts_with("//") {
            i += text[i..].find('\n')?;
        } else if text[i..].starts_with("/*") {
            i += text[i..].find("*/")? + 2;
        } else {
            return (i < b.len()).then_some(i);
        }
    }
}

/// Where the condition of each `;;)` for-loop header goes: just after its first `;`.
fn bare_for_headers(text: &str) -> Vec<usize> {
    let b = text.as_bytes();
    let skip = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    (0..b.len())
        .filter(|&i| {
            b[i] == b';' && {
                let j = skip(i + 1);
                j < b.len() && b[j] == b';' && b.get(skip(j + 1)) == Some(&b')')
            }
        })
        .map(|i| i + 1)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str) -> String {
        instrument(src, src).unwrap().into_owned()
    }

    #[test]
    fn code_without_functions_or_loops_is_left_alone() {
        for src in ["count + 1", "a.b[c] = d ? e : f", "x = 'for { while'"] {
            let out = instrument(src, src).unwrap();
            assert!(
                matches!(out, Cow::Borrowed(_)) || out == src,
                "{src} -> {out}"
            );
        }
    }

    #[test]
    fn every_function_body_and_loop_iteration_ticks() {
        assert_eq!(
            run("function f(a){ return a }"),
            "function f(a){__ors_tick(); return a }"
        );
        assert_eq!(
            run("var g = x => x + 1;"),
            "var g = x => (__ors_tick(),x + 1);"
        );
        assert_eq!(
            run("var g = x => y => y;"),
            "var g = x => (__ors_tick(),y => (__ors_tick(),y));"
        );
        assert_eq!(
            run("var h = (x) => { 'use strict'; return x }"),
            "var h = (x) => {\"use strict\";__ors_tick(); 'use strict'; return x }"
        );
        assert_eq!(
            run("while (s.length < n) s += s;"),
            "while (__ors_tick()&&(s.length < n)) s += s;"
        );
        assert_eq!(
            run("do { i++ } while (i < 3)"),
            "do { i++ } while (__ors_tick()&&(i < 3))"
        );
        assert_eq!(
            run("for (var i = 0; i < 3; i++) x();"),
            "for (var i = 0; __ors_tick()&&(i < 3); i++) x();"
        );
        assert_eq!(run("for (;; i++) x();"), "for (;; __ors_tick(),(i++)) x();");
        assert_eq!(run("for (;;) x();"), "for (;__ors_tick();) x();");
        assert_eq!(
            run("for (var k in o) if (k) y(); else z();"),
            "for (var k in o)if(!__ors_tick());else  if (k) y(); else z();"
        );
        assert_eq!(
            run("for (const x of (a /* ) */)) s += s"),
            "for (const x of (a /* ) */))if(!__ors_tick());else  s += s"
        );
        assert_eq!(
            run("var o = { m() { return 1 }, get p() { return 2 } };"),
            "var o = { m() {__ors_tick(); return 1 }, get p() {__ors_tick(); return 2 } };"
        );
        assert_eq!(
            run("var é = 'ü'; function k(){\r\n  for (;;) {} }"),
            "var é = 'ü'; function k(){__ors_tick();\r\n  for (;__ors_tick();) {} }"
        );
    }

    #[test]
    fn the_checks_cannot_be_shadowed_or_hidden() {
        for src in [
            "function f() { var __ors_tick = function () { return true }; while (1) {} }",
            "function f(__ors_tick) { while (1) {} }",
            "with ({}) { while (1) {} }",
        ] {
            assert!(instrument(src, src).is_err(), "{src}");
        }
        let src = "for (;/* hm */;) {}";
        assert!(instrument(src, src).unwrap_err().contains("while (true)"));
    }
}
