//! A deterministic simulation of the coordinators of one node's processes against one
//! store on a virtual clock: random network delays of lease calls, pauses (SIGSTOP, a
//! long GC), crashes (with the watch reporting them to the others after a delay) and
//! restarts. Checked at every step: a process that would answer as the primary
//! (`holds_lease`) really holds the lease in the store with its token, so at most one
//! process at a time ever does.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ors_store::{Lease, MemoryStore, SessionStore, StoreError};
use proptest::prelude::*;

use super::*;

/// One step of the world, chosen by proptest.
#[derive(Debug, Clone)]
enum Step {
    /// Time passes.
    Tick(u64),
    /// Process `p` does not run for this long.
    Pause(usize, u64),
    /// Process `p` dies; the others' watches notice after this long.
    Crash(usize, u64),
    /// A dead process `p` starts again.
    Restart(usize),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1u64..250).prop_map(Step::Tick),
        1 => (0usize..3, 100u64..3_000).prop_map(|(p, d)| Step::Pause(p, d)),
        1 => (0usize..3, 0u64..200).prop_map(|(p, d)| Step::Crash(p, d)),
        1 => (0usize..3).prop_map(Step::Restart),
    ]
}

/// A lease call's result on its way back.
enum Reply {
    Acquire(Result<Option<Lease>, StoreError>),
    Renew(Result<Lease, StoreError>),
    Read(Result<Option<Lease>, StoreError>),
}

struct Process {
    coordinator: Coordinator,
    alive: bool,
    paused_until: u64,
    /// `(started, arrives at, reply)`.
    in_flight: Option<(u64, u64, Reply)>,
}

fn identity(p: usize) -> Identity {
    Identity {
        node: "n1".into(),
        instance: format!("p{p}"),
        advertise_url: format!("http://p{p}"),
        external_url: "http://lb".into(),
        data_center: String::new(),
    }
}

/// Runs the world; returns the processes that hold the lease at the end.
fn run(steps: Vec<Step>, delays: Vec<u64>) -> Result<Vec<usize>, TestCaseError> {
    let now = Arc::new(AtomicU64::new(1_000));
    let clock = now.clone();
    let store = MemoryStore::with_clock(move || clock.load(Ordering::SeqCst));
    let timing = Timing::for_ttl(Duration::from_millis(1_000));
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut procs: Vec<Process> = (0..3)
        .map(|p| Process {
            coordinator: Coordinator::new(identity(p), timing, 1_000),
            alive: true,
            paused_until: 0,
            in_flight: None,
        })
        .collect();
    // Deaths the watches report: `(at, dead process's url)`.
    let mut reports: Vec<(u64, String)> = Vec::new();
    let mut delay = delays.into_iter().cycle();
    let mut trace: Vec<String> = Vec::new();
    let n = steps.len();
    for (i, s) in steps.into_iter().enumerate() {
        let last = i + 1 == n;
        let t = now.load(Ordering::SeqCst);
        match s {
            Step::Tick(d) => {
                now.fetch_add(d, Ordering::SeqCst);
            }
            Step::Pause(p, d) => {
                trace.push(format!("{t}: p{p} paused for {d}"));
                procs[p].paused_until = t + d
            }
            Step::Crash(p, d) => {
                if procs[p].alive {
                    trace.push(format!("{t}: p{p} crashed"));
                    procs[p].alive = false;
                    procs[p].in_flight = None;
                    reports.push((t + d, format!("http://p{p}")));
                }
            }
            Step::Restart(p) => {
                if !procs[p].alive {
                    trace.push(format!("{t}: p{p} restarted"));
                    procs[p] = Process {
                        coordinator: Coordinator::new(identity(p), timing, t),
                        alive: true,
                        paused_until: 0,
                        in_flight: None,
                    };
                }
            }
        }
        let t = now.load(Ordering::SeqCst);
        for (at, url) in reports.iter().filter(|(at, _)| *at <= t) {
            let _ = at;
            for q in procs.iter_mut().filter(|q| q.alive && q.paused_until <= t) {
                trace.push(format!(
                    "{t}: {} told {url} is gone",
                    q.coordinator.identity().instance
                ));
                q.coordinator.primary_gone(url, t);
            }
        }
        reports.retain(|(at, _)| *at > t);
        for q in procs.iter_mut().filter(|q| q.alive && q.paused_until <= t) {
            // A reply that has arrived.
            if q.in_flight.as_ref().is_some_and(|(_, at, _)| *at <= t) {
                let (started, _, reply) = q.in_flight.take().unwrap();
                trace.push(format!(
                    "{t}: {} reply of call started {started}: {}",
                    q.coordinator.identity().instance,
                    match &reply {
                        Reply::Acquire(r) => format!(
                            "acquire {:?}",
                            r.as_ref().map(|l| l.as_ref().map(|l| l.token))
                        ),
                        Reply::Renew(r) => format!("renew {:?}", r.as_ref().map(|l| l.token)),
                        Reply::Read(r) => format!(
                            "read {:?}",
                            r.as_ref()
                                .map(|l| l.as_ref().map(|l| (l.token, l.holder.clone())))
                        ),
                    }
                ));
                match reply {
                    Reply::Acquire(r) => q.coordinator.on_acquire(r, started, t),
                    Reply::Renew(r) => q.coordinator.on_renew(r, started, t),
                    Reply::Read(r) => q.coordinator.on_read(r, t),
                }
            }
            while q.coordinator.poll_change().is_some() {}
            if q.in_flight.is_none()
                && let Some(req) = q.coordinator.poll(t)
            {
                trace.push(format!(
                    "{t}: {} asks {:?}",
                    q.coordinator.identity().instance,
                    req
                ));
                // The store acts now; the reply comes back after a network delay.
                let id = q.coordinator.identity().clone();
                let arrives = t + delay.next().unwrap_or(0);
                let reply = rt.block_on(async {
                    match req {
                        Request::Acquire => Reply::Acquire(
                            store
                                .acquire_lease(&id.lease_name(), &id.holder(), 1_000)
                                .await,
                        ),
                        Request::Seize(dead) => {
                            store.release_lease(&dead).await.unwrap();
                            Reply::Acquire(
                                store
                                    .acquire_lease(&id.lease_name(), &id.holder(), 1_000)
                                    .await,
                            )
                        }
                        Request::Renew(l) => Reply::Renew(store.renew_lease(&l, 1_000).await),
                        Request::Read => Reply::Read(store.read_lease(&id.lease_name()).await),
                    }
                });
                q.in_flight = Some((t, arrives, reply));
            }
        }
        // Safety: whoever would answer as the primary holds the lease in the store now.
        let held = rt.block_on(store.read_lease("node:n1")).unwrap();
        let claimants: Vec<usize> = (0..3)
            .filter(|&p| procs[p].alive && procs[p].coordinator.holds_lease(t))
            .collect();
        prop_assert!(
            claimants.len() <= 1,
            "at {t} ms: {claimants:?} all hold the lease\n{}",
            trace[trace.len().saturating_sub(30)..].join("\n")
        );
        for &p in &claimants {
            let mine = procs[p].coordinator.lease().map(|l| l.token);
            prop_assert_eq!(
                held.as_ref().map(|l| l.token),
                mine,
                "at {} ms process {} acts on a lease the store no longer has",
                t,
                p
            );
        }
        if last {
            return Ok(claimants);
        }
    }
    Ok(Vec::new())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn at_most_one_process_ever_acts_as_the_primary(
        steps in proptest::collection::vec(step(), 50..400),
        delays in proptest::collection::vec(0u64..400, 1..20),
    ) {
        run(steps, delays)?;
    }
}

/// Liveness, in one plain scenario: after the primary dies some process serves again.
#[test]
fn after_a_crash_another_process_takes_over() {
    let steps = [Step::Tick(50), Step::Tick(50), Step::Crash(0, 10)]
        .into_iter()
        .chain((0..20).map(|_| Step::Tick(100)))
        .collect();
    let holders = run(steps, vec![5]).unwrap();
    assert_eq!(holders.len(), 1, "{holders:?}");
    assert_ne!(holders[0], 0, "the crashed process does not hold it");
}
