//! Top-level `let`, `const` and `class` in a `<script>`.
//!
//! Every session of a thread runs in one shared JS context. A session's globals are
//! properties of the global object, which the datamodel takes out after each macrostep
//! and puts back before the next (so they persist in snapshots and never reach another
//! session). Top-level lexical declarations are not properties: boa binds them in the
//! context's global scope, where no API can take them out, so they would outlive the
//! session, be seen by every other session on the thread, and make the second session
//! of the same document fail with a redeclaration error.
//!
//! So a script's top-level `let x`/`const x` becomes `var x`, and `class C {...}` becomes
//! `var C = class C {...};`: the same names, visible to later scripts and expressions as
//! the SCXML datamodel requires, but held as properties. What changes: a `const` can be
//! reassigned, and redeclaring a name is no error. The rewrite works on tokens found by a
//! small scanner, and its result is checked with boa's parser: if any top-level lexical
//! declaration is left, or a name went missing, the document is refused with a message
//! that says to use `var`.

use std::borrow::Cow;

use boa_engine::ast::operations::{lexically_declared_names, var_declared_names};
use boa_engine::ast::scope::Scope;
use boa_engine::interner::Interner;
use boa_engine::parser::{Parser, Source};

/// The script with its top-level lexical declarations made `var`s (borrowed when it has
/// none), or why that cannot be done.
pub(crate) fn hoist(src: &str) -> Result<Cow<'_, str>, String> {
    let Some(names) = lexical_names(src)? else {
        return Ok(Cow::Borrowed(src));
    };
    let rewritten = rewrite(src);
    let refused = || {
        format!(
            "cannot make the top-level let/const/class declarations of this <script> \
             ({}) session-local; declare them with var",
            names.join(", ")
        )
    };
    let mut interner = Interner::default();
    let script = Parser::new(Source::from_bytes(rewritten.as_bytes()))
        .parse_script(&Scope::new_global(), &mut interner)
        .map_err(|_| refused())?;
    if !lexically_declared_names(&script).is_empty() {
        return Err(refused());
    }
    let vars: Vec<String> = var_declared_names(&script)
        .into_iter()
        .map(|s| interner.resolve_expect(s).to_string())
        .collect();
    if names.iter().any(|n| !vars.contains(n)) {
        return Err(refused());
    }
    Ok(Cow::Owned(rewritten))
}

/// The script's top-level lexically declared names (`None` if there are none); a syntax
/// error is reported as is.
fn lexical_names(src: &str) -> Result<Option<Vec<String>>, String> {
    let mut interner = Interner::default();
    let script = Parser::new(Source::from_bytes(src.as_bytes()))
        .parse_script(&Scope::new_global(), &mut interner)
        .map_err(|e| e.to_string())?;
    let names: Vec<String> = lexically_declared_names(&script)
        .into_iter()
        .map(|s| interner.resolve_expect(s).to_string())
        .collect();
    Ok((!names.is_empty()).then_some(names))
}

/// The previous significant token, as far as the scanner needs to know it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Prev {
    Start,
    /// `;`
    Semicolon,
    /// `}` closing a block or an object literal.
    CloseBrace,
    /// `)` or `]`.
    CloseGroup,
    /// A keyword after which an expression starts (`return`, `typeof`, ...).
    ExprKeyword,
    /// An identifier or a literal: an expression may end here.
    Operand,
    /// Any other punctuator.
    Punct,
}

/// What was opened and not closed yet.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Open {
    Paren,
    Bracket,
    Brace,
    /// The braces of a class body being rewritten: a `;` goes after its `}`.
    ClassBody,
    /// `${` inside a template literal.
    Substitution,
}

const EXPR_KEYWORDS: &[&str] = &[
    "return",
    "typeof",
    "instanceof",
    "in",
    "of",
    "new",
    "delete",
    "void",
    "throw",
    "case",
    "do",
    "else",
    "yield",
    "await",
];

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b == b'\\' || b >= 0x80
}

/// The rewritten text; see the module docs. The caller checks the result.
fn rewrite(src: &str) -> String {
    let b = src.as_bytes();
    let mut out = String::with_capacity(src.len() + 16);
    let mut stack: Vec<Open> = Vec::new();
    let mut prev = Prev::Start;
    let mut newline = false;
    // Waiting for the `{` of a class body being rewritten.
    let mut class_pending = false;
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\n' | b'\r' => {
                newline = true;
                i += 1;
            }
            _ if c.is_ascii_whitespace() => i += 1,
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let end = src[i + 2..].find("*/").map_or(b.len(), |e| i + 2 + e + 2);
                newline |= src[i..end].contains('\n');
                i = end;
            }
            b'\'' | b'"' => {
                i = skip_string(b, i);
                (prev, newline) = (Prev::Operand, false);
            }
            b'`' => {
                i = skip_template(b, i + 1, &mut stack);
                (prev, newline) = (Prev::Operand, false);
            }
            b'/' if !matches!(prev, Prev::Operand | Prev::CloseGroup) => {
                i = skip_regex(b, i);
                (prev, newline) = (Prev::Operand, false);
            }
            _ if is_ident_byte(c)
                || (c == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) =>
            {
                let start = i;
                while i < b.len()
                    && (is_ident_byte(b[i]) || b[i] == b'.' && b[start].is_ascii_digit())
                {
                    i += 1;
                }
                let word = &src[start..i];
                let at_statement_start = stack.is_empty()
                    && (matches!(prev, Prev::Start | Prev::Semicolon | Prev::CloseBrace)
                        || newline && matches!(prev, Prev::Operand | Prev::CloseGroup));
                if at_statement_start && (word == "const" || word == "let" && declares(b, i)) {
                    out.push_str(&src[copied..start]);
                    out.push_str("var");
                    copied = i;
                } else if at_statement_start && word == "class" {
                    let name_start = skip_space(b, i);
                    let mut name_end = name_start;
                    while name_end < b.len() && is_ident_byte(b[name_end]) {
                        name_end += 1;
                    }
                    if name_end > name_start {
                        out.push_str(&src[copied..start]);
                        out.push_str("var ");
                        out.push_str(&src[name_start..name_end]);
                        out.push_str(" = class");
                        copied = i;
                        class_pending = true;
                    }
                }
                prev = if EXPR_KEYWORDS.contains(&word) {
                    Prev::ExprKeyword
                } else {
                    Prev::Operand
                };
                newline = false;
            }
            b'(' | b'[' | b'{' => {
                let open = match c {
                    b'(' => Open::Paren,
                    b'[' => Open::Bracket,
                    _ if class_pending && stack.is_empty() => {
                        class_pending = false;
                        Open::ClassBody
                    }
                    _ => Open::Brace,
                };
                stack.push(open);
                i += 1;
                (prev, newline) = (Prev::Punct, false);
            }
            b')' | b']' => {
                stack.pop();
                i += 1;
                (prev, newline) = (Prev::CloseGroup, false);
            }
            b'}' => {
                i += 1;
                match stack.pop() {
                    Some(Open::Substitution) => {
                        i = skip_template(b, i, &mut stack);
                        (prev, newline) = (Prev::Operand, false);
                        continue;
                    }
                    Some(Open::ClassBody) => {
                        out.push_str(&src[copied..i]);
                        out.push(';');
                        copied = i;
                        (prev, newline) = (Prev::Semicolon, false);
                        continue;
                    }
                    _ => {}
                }
                (prev, newline) = (Prev::CloseBrace, false);
            }
            b';' => {
                i += 1;
                (prev, newline) = (Prev::Semicolon, false);
            }
            _ => {
                i += 1;
                (prev, newline) = (Prev::Punct, false);
            }
        }
    }
    out.push_str(&src[copied..]);
    out
}

/// After `let` at `i`: a declaration follows (a name or a destructuring pattern), not
/// `let` used as an identifier.
fn declares(b: &[u8], i: usize) -> bool {
    let j = skip_space(b, i);
    b.get(j)
        .is_some_and(|&c| c == b'[' || c == b'{' || (is_ident_byte(c) && !c.is_ascii_digit()))
        && !b[j..].starts_with(b"in ")
        && !b[j..].starts_with(b"instanceof")
}

fn skip_space(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn skip_string(b: &[u8], mut i: usize) -> usize {
    let quote = b[i];
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// From inside a template literal: to just after its closing backtick, or just after a
/// `${` (pushed on `stack`).
fn skip_template(b: &[u8], mut i: usize, stack: &mut Vec<Open>) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'`' => return i + 1,
            b'$' if b.get(i + 1) == Some(&b'{') => {
                stack.push(Open::Substitution);
                return i + 2;
            }
            _ => i += 1,
        }
    }
    i
}

fn skip_regex(b: &[u8], mut i: usize) -> usize {
    i += 1;
    let mut class = false;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'[' => {
                class = true;
                i += 1;
            }
            b']' => {
                class = false;
                i += 1;
            }
            b'/' if !class => {
                i += 1;
                break;
            }
            b'\n' => break,
            _ => i += 1,
        }
    }
    while i < b.len() && is_ident_byte(b[i]) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(src: &str) -> String {
        hoist(src).unwrap().into_owned()
    }

    #[test]
    fn scripts_without_top_level_lexical_declarations_are_left_alone() {
        for src in [
            "var x = 1; function f() { let y = 2; return y; }",
            "{ let inner = 1; } if (true) { const c = 2; }",
            "x = `${ {a: 1}.a }` / 2; var re = /}{/g;",
        ] {
            assert!(matches!(hoist(src), Ok(Cow::Borrowed(_))), "{src}");
        }
    }

    #[test]
    fn top_level_declarations_become_vars() {
        assert_eq!(
            ok("let secret = _event.data.v;"),
            "var secret = _event.data.v;"
        );
        assert_eq!(ok("const a = 1, b = 2\nlet c"), "var a = 1, b = 2\nvar c");
        assert_eq!(
            ok("class Point { constructor(x) { this.x = x; } }\nvar p = new Point(1);"),
            "var Point = class Point { constructor(x) { this.x = x; } };\nvar p = new Point(1);"
        );
        assert_eq!(
            ok("let {a, b: [c]} = {a: 1, b: [2]}; function f() { let z; }"),
            "var {a, b: [c]} = {a: 1, b: [2]}; function f() { let z; }"
        );
        // Strings, comments, templates and regular expressions that look like code.
        let src = "var s = 'let x = 1; {', t = `}${ `{` }`; /* let y } */ var r = /[}/]{/; // class Z {\nlet q = s.length / 2 / 1;";
        assert_eq!(ok(src), src.replace("\nlet q", "\nvar q"));
    }

    #[test]
    fn what_cannot_be_rewritten_is_refused_with_a_reason() {
        // `extends` an object literal: the first brace is not the class body.
        let e = hoist("class A extends {}.constructor { }").unwrap_err();
        assert!(e.contains("A") && e.contains("var"), "{e}");
        assert!(hoist("let = ;").is_err(), "a syntax error stays an error");
    }
}
