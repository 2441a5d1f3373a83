//! What `ors validate` and `ors run` print for people: diagnostics and microstep traces,
//! in colour on a terminal. `anstream` drops the colours when the stream is not a
//! terminal or `NO_COLOR` is set, so scripts and tests see plain text.

use anstyle::{AnsiColor, Style};
use ors_scxml::{Diagnostic, Happened};

const LOCATION: Style = Style::new().bold();
const ERROR: Style = AnsiColor::Red.on_default().bold();
const EVENT: Style = Style::new().bold();
const EXIT: Style = AnsiColor::Red.on_default();
const TAKE: Style = AnsiColor::Cyan.on_default();
const ENTER: Style = AnsiColor::Green.on_default();
const DROPPED: Style = AnsiColor::Yellow.on_default();

/// `file:line:col: <element>: message`, one line per problem, on stdout (the same text
/// as the diagnostic's `Display`, which editors parse).
pub fn print_diagnostic(d: &Diagnostic) {
    let element = if d.element.is_empty() {
        String::new()
    } else {
        format!("{ERROR}<{}>:{ERROR:#} ", d.element)
    };
    anstream::println!(
        "{LOCATION}{}:{}:{}:{LOCATION:#} {element}{}",
        d.source_name,
        d.pos.line,
        d.pos.col,
        d.message
    );
}

/// What a session did, on stderr: one block per microstep (what triggered it, the
/// transitions dropped as conflicting, the states exited, the transitions taken, the states
/// entered), and a line per `error.*` event where it happened.
pub fn print_happenings(session: &str, happened: &[Happened]) {
    for h in happened {
        let m = match h {
            Happened::Step(m) => m,
            Happened::Error(e) => {
                let message = e.message().unwrap_or_default();
                anstream::eprintln!("trace {session}: {DROPPED}{}{DROPPED:#} {message}", e.name);
                continue;
            }
        };
        let trigger = match (&m.event, m.transitions.is_empty()) {
            (Some(e), _) => format!("event {EVENT}{e}{EVENT:#}"),
            (None, true) => "start".to_string(),
            (None, false) => "eventless".to_string(),
        };
        anstream::eprintln!("trace {session}: microstep on {trigger}");
        for (dropped, kept) in &m.preempted {
            anstream::eprintln!("  {DROPPED}dropped{DROPPED:#} {dropped} (conflicts with {kept})");
        }
        line("exit", EXIT, &m.exited);
        let taken: Vec<String> = m.transitions.iter().map(|t| t.to_string()).collect();
        line("take", TAKE, &taken);
        line("enter", ENTER, &m.entered);
    }
}

fn line(what: &str, style: Style, items: &[String]) {
    if !items.is_empty() {
        anstream::eprintln!("  {style}{what:<7}{style:#} {}", items.join(" "));
    }
}
