//! Running a case: in our engine, in-process, and in a peer interpreter, a child process
//! speaking the JSON-lines job protocol of `peers/` (see `peers/scion.js`).

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use ors_scxml::{CompileOptions, Effect, Event, Microstep, Session, SystemVars, compile};
use serde::Deserialize;

/// What an interpreter did after its start (step 0) and after each external event.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Step {
    /// The messages of the `<log>`s it ran, in order.
    pub logs: Vec<String>,
    /// The active atomic states, sorted (empty once done).
    pub config: Vec<String>,
    /// True once it reached a top-level final state.
    pub done: bool,
}

/// A whole run: one step per call, until the run is done.
pub type Trace = Vec<Step>;

/// Our run, with what each step's microsteps did.
pub struct OurRun {
    /// The steps.
    pub trace: Trace,
    /// For each step, its microsteps.
    pub microsteps: Vec<Vec<Microstep>>,
}

/// Runs `doc` in our engine: starts it, then sends `events` one macrostep each.
pub fn ours(doc: &str, events: &[String]) -> anyhow::Result<OurRun> {
    let compiled = compile(doc, &CompileOptions::default()).map_err(|e| anyhow!("{e}"))?;
    let vars = SystemVars::new("differential", &compiled, None);
    let dm = ors_ecmascript::datamodel_for(&compiled, &vars);
    let mut session = Session::new(compiled, dm, "differential");
    session.record_microsteps();
    let mut run = OurRun {
        trace: Vec::new(),
        microsteps: Vec::new(),
    };
    let effects = session.start(0, &[]);
    record(&mut session, effects, &mut run)?;
    for name in events {
        if session.is_done() {
            break;
        }
        session
            .push_external(Event::external(name.as_str(), None))
            .map_err(|e| anyhow!("{e}"))?;
        let effects = session.run(0);
        record(&mut session, effects, &mut run)?;
    }
    Ok(run)
}

fn record(session: &mut Session, effects: Vec<Effect>, run: &mut OurRun) -> anyhow::Result<()> {
    let mut logs = Vec::new();
    for e in effects {
        match e {
            Effect::Log { message, .. } => logs.push(message),
            Effect::Aborted { reason } => bail!("our engine aborted the session: {reason}"),
            _ => {}
        }
    }
    let done = session.is_done();
    run.trace.push(Step {
        logs,
        config: if done {
            Vec::new()
        } else {
            session.active_atomic_states()
        },
        done,
    });
    run.microsteps.push(session.take_microsteps());
    Ok(())
}

#[derive(Deserialize)]
struct Reply {
    steps: Option<Trace>,
    error: Option<String>,
}

/// A peer interpreter in a child process.
pub struct Peer {
    /// Its short name (`scion`, `qt`).
    pub name: String,
    command: Vec<String>,
    running: Option<Running>,
    next_id: u64,
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
}

/// How long a peer may take for one job before it is deemed hung and restarted.
const JOB_TIMEOUT: Duration = Duration::from_secs(20);

impl Peer {
    /// A peer started (lazily) as `command` (program and arguments).
    pub fn new(name: &str, command: Vec<String>) -> Self {
        Peer {
            name: name.to_string(),
            command,
            running: None,
            next_id: 0,
        }
    }

    fn start(&mut self) -> anyhow::Result<&mut Running> {
        if self.running.is_none() {
            let (program, args) = self
                .command
                .split_first()
                .ok_or_else(|| anyhow!("{}: an empty command", self.name))?;
            let mut child = Command::new(program)
                .args(args)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("starting the {} driver ({program})", self.name))?;
            let stdin = child.stdin.take().expect("piped");
            let stdout = child.stdout.take().expect("piped");
            let (tx, lines) = channel();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            self.running = Some(Running {
                child,
                stdin,
                lines,
            });
        }
        Ok(self.running.as_mut().expect("just started"))
    }

    /// Sends a job; read its reply with [`Peer::receive`].
    pub fn submit(&mut self, doc: &str, events: &[String]) -> anyhow::Result<u64> {
        self.next_id += 1;
        let id = self.next_id;
        let job = serde_json::json!({ "id": id, "doc": doc, "events": events });
        let name = self.name.clone();
        let running = self.start()?;
        writeln!(running.stdin, "{job}")
            .and_then(|_| running.stdin.flush())
            .with_context(|| format!("writing a job to the {name} driver"))?;
        Ok(id)
    }

    /// The reply to job `id`: its trace, or the peer's error (a document it rejects, a
    /// crash, a hang).
    pub fn receive(&mut self, id: u64) -> Result<Trace, String> {
        let Some(running) = self.running.as_mut() else {
            return Err("the driver is not running".into());
        };
        loop {
            let line = match running.lines.recv_timeout(JOB_TIMEOUT) {
                Ok(line) => line,
                Err(RecvTimeoutError::Timeout) => {
                    self.stop();
                    return Err(format!("no answer in {JOB_TIMEOUT:?} (hung?)"));
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.stop();
                    return Err("the driver exited".into());
                }
            };
            let value: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| format!("bad reply {line}: {e}"))?;
            if value["id"].as_u64() != Some(id) {
                continue; // a reply to a job given up on
            }
            let reply: Reply =
                serde_json::from_value(value).map_err(|e| format!("bad reply {line}: {e}"))?;
            return match (reply.steps, reply.error) {
                (_, Some(e)) => Err(e),
                (Some(steps), None) => Ok(steps),
                (None, None) => Err(format!("a reply without steps: {line}")),
            };
        }
    }

    fn stop(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.stop();
    }
}
