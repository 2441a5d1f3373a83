//! The differential harness: random statecharts through our engine and two independent
//! interpreters (SCION, Qt SCXML), with every disagreement either explained by a known
//! peer bug (`known_peer_bugs.rs`, each with the Appendix D step that decides) or
//! reported, minimised, as a failure. See `docs/differential.md`.

mod compare;
mod generate;
mod known_peer_bugs;
mod parse;
mod run;
mod shrink;

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

#[derive(Parser)]
#[command(about = "Random statecharts through our engine, SCION and Qt SCXML")]
struct Args {
    /// Documents to generate and run.
    #[arg(long, default_value_t = 300)]
    count: u64,
    /// The first seed; document i uses seed + i.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// The SCION driver's command (program and arguments, split on spaces).
    #[arg(long)]
    scion: Option<String>,
    /// The Qt SCXML driver's command.
    #[arg(long)]
    qt: Option<String>,
    /// Where to write each unexplained disagreement (document, events, traces).
    #[arg(long, default_value = "target/differential")]
    out: PathBuf,
    /// Print every disagreement, explained or not.
    #[arg(long)]
    verbose: bool,
    /// Print the document, events and every trace of this one seed.
    #[arg(long)]
    show: Option<u64>,
    /// Check the hand-adjudicated cases in this directory: our engine gives each its
    /// expected trace, and each peer still shows the known bug the case is named after.
    #[arg(long)]
    cases: Option<PathBuf>,
    /// Instead of failing on them, write a minimised example of each known bug found in
    /// the sweep to --out (to adjudicate and check in as a case).
    #[arg(long)]
    examples: bool,
    /// Print the known peer bugs and exit.
    #[arg(long)]
    known: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut peers = Vec::new();
    for (name, command) in [("scion", &args.scion), ("qt", &args.qt)] {
        if let Some(c) = command {
            peers.push(run::Peer::new(
                name,
                c.split_whitespace().map(String::from).collect(),
            ));
        }
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("creating {:?}", args.out))?;
    if args.known {
        for b in known_peer_bugs::KNOWN {
            println!("{} {}: {}", b.peer, b.name, b.why);
        }
        return Ok(());
    }
    if let Some(seed) = args.show {
        return show(seed, &mut peers);
    }
    if let Some(dir) = &args.cases {
        return check_cases(dir, &mut peers);
    }
    let mut unexplained = 0;
    let mut peer_errors = 0;
    let mut agreed = 0;
    let mut explained: BTreeMap<(String, &str), u64> = BTreeMap::new();
    for i in 0..args.count {
        let seed = args.seed + i;
        let case = generate::case(&mut ChaCha8Rng::seed_from_u64(seed));
        let verdicts = judge(&case, &mut peers).with_context(|| format!("seed {seed}"))?;
        if verdicts.iter().all(|v| matches!(v, Verdict::Agree)) {
            agreed += 1;
        }
        for (k, verdict) in verdicts.into_iter().enumerate() {
            let name = peers[k].name.clone();
            match verdict {
                Verdict::Agree => {}
                Verdict::PeerError(e) => {
                    peer_errors += 1;
                    println!("seed {seed}: {name} failed: {e}");
                }
                Verdict::Explained(bug, d) => {
                    let n = explained.entry((name.clone(), bug.name)).or_default();
                    *n += 1;
                    if args.examples && *n == 1 {
                        let small = shrink::shrink(case.clone(), |c| {
                            judge_one(c, &mut peers[k]).is_ok_and(
                                |v| matches!(v, Verdict::Explained(b, _) if b.name == bug.name),
                            )
                        });
                        let file = args.out.join(format!("{}-{name}.scxml", bug.name));
                        std::fs::write(&file, report(&small, &mut peers[k])?)
                            .with_context(|| format!("writing {file:?}"))?;
                        println!("example of {} ({name}): {}", bug.name, file.display());
                    }
                    if args.verbose {
                        println!("seed {seed}: {name} disagrees at {d}: {}", bug.name);
                    }
                }
                Verdict::Unexplained(d) => {
                    unexplained += 1;
                    if unexplained > 20 {
                        println!("seed {seed}: {name} disagrees at {d}: UNEXPLAINED");
                        continue; // enough minimised already
                    }
                    println!("seed {seed}: {name} disagrees at {d}: UNEXPLAINED; minimising");
                    let small = shrink::shrink(case.clone(), |c| {
                        judge_one(c, &mut peers[k])
                            .is_ok_and(|v| matches!(v, Verdict::Unexplained(_)))
                    });
                    let file = args.out.join(format!("seed{seed}-{name}.scxml"));
                    let report = report(&small, &mut peers[k])?;
                    std::fs::write(&file, report).with_context(|| format!("writing {file:?}"))?;
                    println!("  minimised to {}", file.display());
                }
            }
        }
    }
    for ((peer, bug), n) in &explained {
        println!("{peer}: {n} disagreements explained by known bug {bug}");
    }
    println!(
        "{} documents: {agreed} agreed with every peer, {unexplained} unexplained disagreements, \
         {peer_errors} peer failures",
        args.count
    );
    if unexplained > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Checks every `*.scxml` case in `dir` (see [`parse`]).
fn check_cases(dir: &std::path::Path, peers: &mut [run::Peer]) -> anyhow::Result<()> {
    let mut failures = 0;
    for bug in known_peer_bugs::KNOWN {
        let file = dir.join(format!("{}.scxml", bug.name));
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {file:?}"))?;
        let expected = parse::case_file(&text).with_context(|| format!("{file:?}"))?;
        let xml = generate::to_xml(&expected.case.doc);
        let ours = run::ours(&xml, &expected.case.events)?;
        if ours.trace != expected.trace {
            failures += 1;
            println!(
                "{}: our engine leaves Appendix D:\n{}",
                file.display(),
                trace_text("ours", &ours.trace)
            );
        }
        let Some(peer) = peers.iter_mut().find(|p| p.name == bug.peer) else {
            continue;
        };
        match judge_one(&expected.case, peer)? {
            Verdict::Explained(b, d) if b.name == bug.name => {
                println!("{} {}: still there ({d})", bug.peer, bug.name);
            }
            Verdict::Agree => {
                failures += 1;
                println!(
                    "{} {}: the peer now agrees with us: remove the entry",
                    bug.peer, bug.name
                );
            }
            Verdict::Explained(b, d) => {
                failures += 1;
                println!(
                    "{} {}: explained by {} instead ({d})",
                    bug.peer, bug.name, b.name
                );
            }
            Verdict::Unexplained(d) => {
                failures += 1;
                println!("{} {}: disagrees unexplained ({d})", bug.peer, bug.name);
            }
            Verdict::PeerError(e) => {
                failures += 1;
                println!("{} {}: the peer failed: {e}", bug.peer, bug.name);
            }
        }
    }
    if failures > 0 {
        anyhow::bail!("{failures} case checks failed");
    }
    Ok(())
}

/// How one peer's run of a case compares with ours.
enum Verdict {
    Agree,
    Explained(&'static known_peer_bugs::KnownBug, compare::Divergence),
    Unexplained(compare::Divergence),
    PeerError(String),
}

/// Runs a case in our engine and in every peer (the peers in parallel with ours).
fn judge(case: &generate::Case, peers: &mut [run::Peer]) -> anyhow::Result<Vec<Verdict>> {
    let xml = generate::to_xml(&case.doc);
    let jobs: Vec<u64> = peers
        .iter_mut()
        .map(|p| p.submit(&xml, &case.events))
        .collect::<anyhow::Result<_>>()?;
    let ours = run::ours(&xml, &case.events).with_context(|| format!("our engine on\n{xml}"))?;
    Ok(peers
        .iter_mut()
        .zip(jobs)
        .map(|(peer, id)| {
            let theirs = peer.receive(id);
            verdict(case, &ours, &peer.name, theirs)
        })
        .collect())
}

fn judge_one(case: &generate::Case, peer: &mut run::Peer) -> anyhow::Result<Verdict> {
    let mut verdicts = judge(case, std::slice::from_mut(peer))?;
    Ok(verdicts.pop().expect("one verdict per peer"))
}

fn verdict(
    case: &generate::Case,
    ours: &run::OurRun,
    peer: &str,
    theirs: Result<run::Trace, String>,
) -> Verdict {
    let theirs = match theirs {
        Ok(t) => t,
        Err(e) => return Verdict::PeerError(e),
    };
    let Some(d) = compare::first_divergence(&ours.trace, &theirs) else {
        return Verdict::Agree;
    };
    let evidence = known_peer_bugs::Evidence {
        doc: &case.doc,
        ours,
        theirs: &theirs,
        at: &d,
    };
    match known_peer_bugs::explain(peer, &evidence) {
        Some(bug) => Verdict::Explained(bug, d),
        None => Verdict::Unexplained(d),
    }
}

/// A minimised disagreement as a file: the document, then the events and both traces in
/// a comment.
fn report(case: &generate::Case, peer: &mut run::Peer) -> anyhow::Result<String> {
    let xml = generate::to_xml(&case.doc);
    let ours = run::ours(&xml, &case.events)?;
    let id = peer.submit(&xml, &case.events)?;
    let theirs = peer.receive(id);
    let mut s = xml;
    s.push_str(&format!("<!-- events: {:?}\n", case.events));
    s.push_str(&trace_text("ours", &ours.trace));
    match &theirs {
        Ok(t) => {
            s.push_str(&trace_text(&peer.name, t));
            if let Some(d) = compare::first_divergence(&ours.trace, t) {
                s.push_str(&format!("first divergence: {d}\n"));
            }
        }
        Err(e) => s.push_str(&format!("{}: {e}\n", peer.name)),
    }
    s.push_str("-->\n");
    Ok(s)
}

fn trace_text(name: &str, t: &run::Trace) -> String {
    t.iter()
        .enumerate()
        .map(|(i, s)| {
            format!(
                "{name:>6} {i}: {} | {:?}{}\n",
                s.logs.join(" "),
                s.config,
                if s.done { " done" } else { "" }
            )
        })
        .collect()
}

fn show(seed: u64, peers: &mut [run::Peer]) -> anyhow::Result<()> {
    let case = generate::case(&mut ChaCha8Rng::seed_from_u64(seed));
    let xml = generate::to_xml(&case.doc);
    println!("{xml}events: {:?}", case.events);
    let ours = run::ours(&xml, &case.events)?;
    print!("{}", trace_text("ours", &ours.trace));
    for (i, steps) in ours.microsteps.iter().enumerate() {
        for m in steps {
            let t: Vec<String> = m.transitions.iter().map(|t| t.to_string()).collect();
            let p: Vec<String> = m
                .preempted
                .iter()
                .map(|(d, k)| format!("{d} by {k}"))
                .collect();
            println!(
                "  step {i} microstep on {:?}: transitions {t:?}, preempted {p:?}, exited {:?}, entered {:?}",
                m.event, m.exited, m.entered
            );
        }
    }
    for p in peers.iter_mut() {
        let id = p.submit(&xml, &case.events)?;
        match p.receive(id) {
            Ok(t) => print!("{}", trace_text(&p.name, &t)),
            Err(e) => println!("{}: {e}", p.name),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cases_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("cases")
    }

    fn load(name: &str) -> parse::Expected {
        let text = std::fs::read_to_string(cases_dir().join(format!("{name}.scxml"))).unwrap();
        parse::case_file(&text).unwrap()
    }

    /// The engine's regression tests: each adjudicated case runs as Appendix D says.
    #[test]
    fn our_engine_gives_every_case_its_appendix_d_trace() {
        for bug in known_peer_bugs::KNOWN {
            let expected = load(bug.name);
            assert!(
                !expected.trace.is_empty(),
                "{}: no expected steps",
                bug.name
            );
            let xml = generate::to_xml(&expected.case.doc);
            let ours = run::ours(&xml, &expected.case.events).unwrap();
            assert_eq!(ours.trace, expected.trace, "{}", bug.name);
        }
    }

    #[test]
    fn every_case_file_is_a_known_bug() {
        for entry in std::fs::read_dir(cases_dir()).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let stem = name.strip_suffix(".scxml").unwrap();
            assert!(
                known_peer_bugs::KNOWN.iter().any(|b| b.name == stem),
                "{name} is not in KNOWN"
            );
        }
    }

    /// A known bug explains only its own evidence: our own trace, with the steps of
    /// another case's document or a different end, is not excused.
    #[test]
    fn a_known_bug_does_not_excuse_other_differences() {
        for bug in known_peer_bugs::KNOWN {
            let expected = load(bug.name);
            let xml = generate::to_xml(&expected.case.doc);
            let ours = run::ours(&xml, &expected.case.events).unwrap();
            // A peer that agrees up to the end and then ends elsewhere.
            let mut theirs = ours.trace.clone();
            let last = theirs.last_mut().unwrap();
            last.config = vec!["nowhere".into()];
            let v = verdict(&expected.case, &ours, bug.peer, Ok(theirs));
            assert!(matches!(v, Verdict::Unexplained(_)), "{}", bug.name);
            // A peer that logs one line of ours twice.
            let mut theirs = ours.trace.clone();
            let step = theirs.iter_mut().find(|s| !s.logs.is_empty()).unwrap();
            let first = step.logs[0].clone();
            step.logs.insert(0, first);
            let v = verdict(&expected.case, &ours, bug.peer, Ok(theirs));
            assert!(matches!(v, Verdict::Unexplained(_)), "{}", bug.name);
            // And the same run is agreement.
            let v = verdict(&expected.case, &ours, bug.peer, Ok(ours.trace.clone()));
            assert!(matches!(v, Verdict::Agree), "{}", bug.name);
        }
    }

    #[test]
    fn generated_documents_compile_run_and_read_back() {
        for seed in 0..200 {
            let case = generate::case(&mut ChaCha8Rng::seed_from_u64(seed));
            let xml = generate::to_xml(&case.doc);
            let ours = run::ours(&xml, &case.events).unwrap_or_else(|e| panic!("{seed}: {e}"));
            assert!(!ours.trace.is_empty());
            let back = parse::case_file(&xml).unwrap();
            assert_eq!(back.case.doc, case.doc, "seed {seed}");
        }
    }

    #[test]
    fn shrinking_keeps_the_failure_and_removes_the_rest() {
        let case = generate::case(&mut ChaCha8Rng::seed_from_u64(7));
        let ids = generate::all_ids(&case.doc);
        let keep = ids[0].clone();
        // "Fails" while the first state is still there: shrinks to a document of it alone.
        let small = shrink::shrink(case, |c| generate::find(&c.doc, &keep).is_some());
        assert!(small.events.is_empty());
        assert_eq!(generate::all_ids(&small.doc), vec![keep]);
    }
}
