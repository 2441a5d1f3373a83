//! The `ors` command: `serve` the ORS REST API, `validate` and `run` SCXML documents.

mod bench;
mod serve;
mod sessions;
mod telemetry;
mod terminal;
mod tls;

use std::io::BufRead;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use ors::files::{FileError, FileFactory, FileLoader, compile_file};
use ors_scxml::Event;
use ors_scxml::host::LocalHost;
use serde_json::{Value, json};

/// Counts what each thread allocates, so a macrostep's memory budget can be enforced
/// (`limits.macrostep_memory_mb`).
#[global_allocator]
static ALLOC: ors_alloc_meter::CountingAlloc<tikv_jemallocator::Jemalloc> =
    ors_alloc_meter::CountingAlloc(tikv_jemallocator::Jemalloc);

#[derive(Parser)]
#[command(
    name = "ors",
    version,
    about = "An SCXML orchestration server and tools"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (with no configuration: 127.0.0.1:8080, embedded store in ./data,
    /// documents from the current directory).
    Serve(Box<serve::ServeArgs>),
    /// Check SCXML documents; prints `file:line:col: message` for every problem.
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Run a document, reading external events as JSON lines on stdin
    /// (`{"name":"e1","data":{...}}`) and printing the configuration after each macrostep.
    Run {
        file: PathBuf,
        /// Fire delayed sends at once, in order, instead of on the wall clock.
        #[arg(long)]
        virtual_time: bool,
        /// Give up (exit 3) when the session has not ended by then. With --virtual-time,
        /// this bounds virtual time.
        #[arg(long, default_value_t = 60_000)]
        timeout_ms: u64,
        /// Print `<log>` output on stderr. (Exit status: 0 final state reached or nothing
        /// left to do, 2 bad document, 3 timeout, 4 session aborted by a limit.)
        #[arg(long)]
        log: bool,
        /// Print each microstep on stderr: the event, transitions dropped as conflicting,
        /// states exited, transitions taken (`state[index]` among its transitions),
        /// states entered.
        #[arg(long)]
        trace: bool,
    },
    /// Look at and drive a running server's sessions: list, show, send, terminate.
    Sessions(sessions::SessionsArgs),
    /// Measure the engine on a document, in process: events per CPU-second through one
    /// session, sessions started per CPU-second, and bytes per live session, as one
    /// JSON line.
    Bench {
        file: PathBuf,
        /// The external event sent again and again.
        #[arg(long, default_value = "tick")]
        event: String,
        /// How many (fewer if the session ends first).
        #[arg(long, default_value_t = 100_000)]
        count: u64,
        /// The event's data, as JSON.
        #[arg(long)]
        data: Option<String>,
        /// Sessions to start and keep alive.
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.command {
        Command::Serve(args) => serve_blocking(*args),
        Command::Validate { files } => validate(&files),
        Command::Sessions(args) => sessions::sessions(args),
        Command::Run {
            file,
            virtual_time,
            timeout_ms,
            log,
            trace,
        } => run(&file, virtual_time, timeout_ms, Output { log, trace }),
        Command::Bench {
            file,
            event,
            count,
            data,
            sessions,
        } => match data.as_deref().map(serde_json::from_str).transpose() {
            Ok(data) => bench::bench(bench::BenchArgs {
                file: &file,
                event: &event,
                count,
                sessions,
                data,
            }),
            Err(e) => Err(anyhow::Error::new(e).context("--data must be JSON")),
        },
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ors: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn serve_blocking(args: serve::ServeArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(serve::serve(args))?;
    Ok(ExitCode::SUCCESS)
}

fn validate(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut bad = false;
    for f in files {
        match compile_file(f, Some(&ors_ecmascript::SyntaxChecker)) {
            Ok(_) => {}
            Err(e) => {
                bad = true;
                match e {
                    FileError::Compile(e) => {
                        e.diagnostics.iter().for_each(terminal::print_diagnostic)
                    }
                    FileError::Read(e) => println!("{e}"),
                }
            }
        }
    }
    Ok(if bad {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn status(host: &LocalHost<FileFactory>, sid: &str) -> bool {
    let s = host.session(sid).expect("the session stays in the host");
    let done = s.is_done();
    println!(
        "{}",
        json!({ "configuration": s.active_atomic_states(), "done": done })
    );
    done
}

/// Exit status for an ended session: 0 when it reached a final state, 4 when it was
/// aborted (the reason goes to stderr).
fn ended(host: &LocalHost<FileFactory>, sid: &str) -> ExitCode {
    match host.ended.get(sid) {
        Some(Some(reason)) => {
            eprintln!("ors: session aborted: {reason}");
            ExitCode::from(4)
        }
        _ => ExitCode::SUCCESS,
    }
}

/// What `ors run` prints on stderr besides errors.
#[derive(Clone, Copy)]
struct Output {
    log: bool,
    trace: bool,
}

/// Prints (or drops) what the session did since the last call: its microsteps with
/// `--trace`, its `<log>` lines with `--log`.
fn flush_logs(host: &mut LocalHost<FileFactory>, sid: &str, out: Output) {
    if out.trace {
        terminal::print_happenings(sid, &host.take_happenings(sid));
    }
    for l in host.logs.drain(..) {
        if out.log {
            eprintln!("log {}: {}: {}", l.sessionid, l.label, l.message);
        }
    }
}

fn parse_event(line: &str) -> anyhow::Result<Event> {
    let v: Value = serde_json::from_str(line).context("an event line must be JSON")?;
    let Some(name) = v.get("name").and_then(Value::as_str) else {
        bail!("an event line needs a string \"name\"");
    };
    if name.is_empty() {
        bail!("the event name is empty");
    }
    Ok(Event::external(name, v.get("data").cloned()))
}

fn run(
    file: &std::path::Path,
    virtual_time: bool,
    timeout_ms: u64,
    out: Output,
) -> anyhow::Result<ExitCode> {
    let doc = compile_file(file, None)?;
    let factory = FileFactory {
        loader: FileLoader::for_document(file),
    };
    let mut host = LocalHost::new(factory, "run-");
    host.record_microsteps = out.trace;
    let started = Instant::now();
    let now = |started: &Instant| started.elapsed().as_millis() as u64;

    let (tx, rx) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let sid = host.start(doc, &[]);
    if virtual_time {
        host.run_virtual(timeout_ms);
    }
    flush_logs(&mut host, &sid, out);
    if status(&host, &sid) {
        return Ok(ended(&host, &sid));
    }
    let mut stdin_open = true;
    loop {
        if !virtual_time && now(&started) >= timeout_ms {
            eprintln!("ors: timed out after {timeout_ms} ms");
            return Ok(ExitCode::from(3));
        }
        if !stdin_open {
            match host.next_due() {
                None => return Ok(ExitCode::SUCCESS),
                Some(due) if virtual_time => {
                    if due > timeout_ms {
                        eprintln!("ors: timed out at virtual time {timeout_ms} ms");
                        return Ok(ExitCode::from(3));
                    }
                    host.advance_to(due);
                }
                Some(due) => {
                    let wait = due
                        .saturating_sub(now(&started))
                        .min(timeout_ms.saturating_sub(now(&started)));
                    std::thread::sleep(Duration::from_millis(wait));
                    host.advance_to(now(&started));
                }
            }
            flush_logs(&mut host, &sid, out);
            if host.session(&sid).is_some_and(|s| s.is_done()) {
                status(&host, &sid);
                return Ok(ended(&host, &sid));
            }
            continue;
        }
        // Wait for input, waking for the next timer on the wall clock.
        let wait = match (virtual_time, host.next_due()) {
            (false, Some(due)) => Duration::from_millis(due.saturating_sub(now(&started))),
            _ => Duration::from_millis(timeout_ms.saturating_sub(now(&started)).max(1)),
        };
        match rx.recv_timeout(wait) {
            Ok(line) => {
                if line.trim().is_empty() {
                    continue;
                }
                let ev = match parse_event(&line) {
                    Ok(ev) => ev,
                    Err(e) => {
                        eprintln!("ors: ignoring input line: {e:#}");
                        continue;
                    }
                };
                if !virtual_time {
                    host.advance_to(now(&started));
                }
                if let Err(e) = host.send(&sid, ev) {
                    eprintln!("ors: event not queued: {e}");
                }
                if virtual_time {
                    host.run_virtual(timeout_ms);
                }
                flush_logs(&mut host, &sid, out);
                if status(&host, &sid) {
                    return Ok(ended(&host, &sid));
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if virtual_time {
                    eprintln!("ors: timed out after {timeout_ms} ms");
                    return Ok(ExitCode::from(3));
                }
                host.advance_to(now(&started));
                flush_logs(&mut host, &sid, out);
                if host.session(&sid).is_some_and(|s| s.is_done()) {
                    status(&host, &sid);
                    return Ok(ended(&host, &sid));
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => stdin_open = false,
        }
    }
}
