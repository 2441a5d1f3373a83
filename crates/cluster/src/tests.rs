use std::sync::Mutex as StdMutex;

use ors_store::{Lease, MemoryStore, SessionStore};

use super::*;

fn id(instance: &str) -> Identity {
    Identity {
        node: "n1".into(),
        instance: instance.into(),
        advertise_url: format!("http://{instance}"),
        external_url: "http://lb".into(),
        data_center: String::new(),
    }
}

fn lease(holder: &str, token: u64) -> Lease {
    Lease {
        name: "node:n1".into(),
        holder: holder.into(),
        token,
        expires_at_ms: 0,
    }
}

fn timing() -> Timing {
    Timing {
        lease_ttl: Duration::from_millis(1000),
        renew_every: Duration::from_millis(300),
        acquire_every: Duration::from_millis(100),
        margin: Duration::from_millis(200),
    }
}

fn changes(c: &mut Coordinator) -> Vec<Change> {
    std::iter::from_fn(|| c.poll_change()).collect()
}

#[test]
fn a_backup_takes_a_free_lease_and_renews_it() {
    let mut c = Coordinator::new(id("a"), timing(), 0);
    assert_eq!(c.poll(0), Some(Request::Acquire));
    assert_eq!(c.poll(0), None, "one call at a time");
    c.on_acquire(Ok(Some(lease("a|http://a|http://lb", 7))), 0, 5);
    assert_eq!(c.role(), Role::Primary);
    assert_eq!(
        changes(&mut c),
        [
            Change::BecamePrimary { token: 7 },
            Change::PrimaryIs(Some(Primary {
                instance: "a".into(),
                advertise_url: "http://a".into(),
                external_url: "http://lb".into(),
            }))
        ]
    );
    assert_eq!(c.poll(100), None);
    assert!(matches!(c.poll(305), Some(Request::Renew(l)) if l.token == 7));
    c.on_renew(Ok(lease("a|http://a|http://lb", 7)), 305, 310);
    // Valid until 305 + 1000; with the 200 ms margin it steps down at 1105, not before.
    assert!(matches!(c.poll(1000), Some(Request::Renew(_))));
    assert_eq!(c.role(), Role::Primary);
}

#[test]
fn a_fenced_write_deposes_the_primary_at_once_but_not_a_newer_one() {
    let mut c = Coordinator::new(id("a"), timing(), 0);
    c.poll(0);
    c.on_acquire(Ok(Some(lease("a|http://a|http://lb", 4))), 0, 0);
    changes(&mut c);
    // A write of an older lease's batch, refused after this process took a newer one.
    c.fenced(3, 10);
    assert_eq!(c.role(), Role::Primary);
    assert!(c.holds_lease(10));
    // Its own token refused: another process holds the lease, whatever the clock says.
    c.fenced(4, 20);
    assert_eq!(c.role(), Role::Backup);
    assert!(!c.holds_lease(20));
    assert!(matches!(
        changes(&mut c).first(),
        Some(Change::SteppedDown {
            resigned: false,
            ..
        })
    ));
}

#[test]
fn a_primary_that_cannot_renew_in_time_steps_down() {
    let mut c = Coordinator::new(id("a"), timing(), 0);
    c.poll(0);
    c.on_acquire(Ok(Some(lease("a|http://a|http://lb", 1))), 0, 0);
    changes(&mut c);
    // The store is unreachable: renewals fail, the primary keeps serving for now...
    for t in [300, 400, 500, 600, 700] {
        if let Some(Request::Renew(_)) = c.poll(t) {
            c.on_renew(Err(StoreError::Unavailable("down".into())), t, t);
        }
        assert_eq!(c.role(), Role::Primary, "at {t} ms the lease surely holds");
    }
    // ...until its lease may have run out (1000 ms TTL from 0, minus the margin).
    assert!(c.next_wakeup_ms() <= 800);
    c.poll(800);
    assert_eq!(c.role(), Role::Backup);
    assert!(
        matches!(&changes(&mut c)[0], Change::SteppedDown { reason, resigned: false } if reason.contains("in time"))
    );
}

#[test]
fn after_a_pause_the_lease_is_not_trusted_even_before_the_coordinator_runs() {
    let mut c = Coordinator::new(id("a"), timing(), 0);
    c.poll(0);
    c.on_acquire(Ok(Some(lease("a|http://a|http://lb", 1))), 0, 0);
    assert!(c.holds_lease(100));
    assert!(c.holds_lease(799));
    // The process was stopped and runs again at 5 s: nothing was polled, it is still
    // "primary", but its lease cannot be trusted.
    assert_eq!(c.role(), Role::Primary);
    assert!(!c.holds_lease(5_000));
}

#[test]
fn a_primary_whose_lease_was_taken_steps_down_at_once() {
    let mut c = Coordinator::new(id("a"), timing(), 0);
    c.poll(0);
    c.on_acquire(Ok(Some(lease("a|http://a|http://lb", 1))), 0, 0);
    changes(&mut c);
    let Some(Request::Renew(l)) = c.poll(300) else {
        panic!("a renewal");
    };
    c.on_renew(Err(StoreError::lease_lost(&l)), 300, 301);
    assert_eq!(c.role(), Role::Backup);
    assert!(matches!(
        &changes(&mut c)[..],
        [Change::SteppedDown { .. }, Change::PrimaryIs(None)]
    ));
}

#[test]
fn a_backup_learns_its_primary_and_ignores_its_own_stale_lease() {
    let mut c = Coordinator::new(id("b"), timing(), 0);
    assert_eq!(c.poll(0), Some(Request::Acquire));
    c.on_acquire(Ok(None), 0, 1);
    assert_eq!(c.poll(1), Some(Request::Read));
    c.on_read(Ok(Some(lease("a|http://a|http://lb", 3))), 2);
    assert_eq!(
        c.primary().map(|p| p.advertise_url.as_str()),
        Some("http://a")
    );
    assert_eq!(c.poll(50), None);
    assert_eq!(c.poll(102), Some(Request::Acquire));
    c.on_acquire(Ok(None), 102, 102);
    c.poll(102);
    c.on_read(Ok(Some(lease("b|http://b|http://lb", 2))), 103);
    assert_eq!(c.primary(), None, "its own leftover lease names no primary");
}

#[test]
fn holder_strings_carry_the_addresses() {
    let p = Primary::from_holder(&id("a").holder());
    assert_eq!(
        (
            p.instance.as_str(),
            p.advertise_url.as_str(),
            p.external_url.as_str()
        ),
        ("a", "http://a", "http://lb")
    );
    let old = Primary::from_holder("a|http://a");
    assert_eq!(
        (old.advertise_url.as_str(), old.external_url.as_str()),
        ("http://a", "")
    );
    assert_eq!(Primary::from_holder("node1:123").instance, "node1:123");
}

#[test]
fn a_backup_seizes_the_lease_of_a_primary_known_dead() {
    let mut c = Coordinator::new(id("b"), timing(), 0);
    c.poll(0);
    c.on_acquire(Ok(None), 0, 0);
    c.poll(0);
    let theirs = lease("a|http://a|http://lb", 5);
    c.on_read(Ok(Some(theirs.clone())), 1);
    // Evidence about some other process changes nothing.
    c.primary_gone("http://elsewhere", 2);
    assert_eq!(c.poll(2), None);
    // The primary's process is gone: seize at once, long before its lease expires.
    c.primary_gone("http://a", 3);
    assert_eq!(c.poll(3), Some(Request::Seize(theirs)));
    c.on_acquire(Ok(Some(lease("b|http://b|http://lb", 6))), 3, 4);
    assert_eq!(c.role(), Role::Primary);
    // A primary ignores such reports.
    c.primary_gone("http://a", 5);
    assert!(matches!(c.poll(400), Some(Request::Renew(_))));
}

#[test]
fn resigning_hands_the_lease_back() {
    let mut c = Coordinator::new(id("a"), timing(), 0);
    c.poll(0);
    c.on_acquire(Ok(Some(lease("a|http://a|http://lb", 4))), 0, 0);
    changes(&mut c);
    assert_eq!(c.resign(10).map(|l| l.token), Some(4));
    assert!(matches!(
        &changes(&mut c)[0],
        Change::SteppedDown { resigned: true, .. }
    ));
    assert_eq!(c.role(), Role::Backup);
    assert_eq!(c.poll(10_000), None, "a resigned process asks for nothing");
}

/// Records the role changes a host sees.
#[derive(Default)]
struct Seen(StdMutex<Vec<String>>);

#[async_trait]
impl Roles for Seen {
    async fn became_primary(&self, token: u64) {
        self.0.lock().unwrap().push(format!("primary {token}"));
    }
    async fn stepped_down(&self, reason: &str) {
        self.0.lock().unwrap().push(format!("backup: {reason}"));
    }
}

async fn until(what: &str, ok: impl Fn() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn two_processes_one_primary_and_a_hand_over() {
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    let (sa, sb) = (Arc::new(Seen::default()), Arc::new(Seen::default()));
    let a = Cluster::start(store.clone(), id("a"), timing(), sa.clone()).await;
    let b = Cluster::start(store.clone(), id("b"), timing(), sb.clone()).await;
    assert_eq!(a.role(), Role::Primary);
    assert_eq!(b.role(), Role::Backup);
    assert_eq!(b.primary().map(|p| p.instance), Some("a".into()));
    // Renewals keep a primary for longer than its TTL.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((a.role(), b.role()), (Role::Primary, Role::Backup));
    let first = store.read_lease("node:n1").await.unwrap().unwrap().token;
    // Graceful: the backup takes over well before the lease would have expired.
    let t = Instant::now();
    a.resign().await;
    until("b takes over", || b.role() == Role::Primary).await;
    assert!(
        t.elapsed() < Duration::from_millis(800),
        "{:?}",
        t.elapsed()
    );
    let second = store.read_lease("node:n1").await.unwrap().unwrap().token;
    assert!(second > first, "a new, larger fencing token");
    assert!(sb.0.lock().unwrap().contains(&format!("primary {second}")));
    assert!(
        sa.0.lock()
            .unwrap()
            .iter()
            .any(|s| s == "backup: shutting down")
    );
}

#[tokio::test]
async fn a_dead_primary_is_replaced_when_its_lease_expires() {
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    // A primary that stops renewing (as if killed): take the lease by hand.
    let dead = store
        .acquire_lease("node:n1", "a|http://a|http://lb", 1000)
        .await
        .unwrap()
        .unwrap();
    let t = Instant::now();
    let b = Cluster::start(store.clone(), id("b"), timing(), Arc::new(Seen::default())).await;
    assert_eq!(b.role(), Role::Backup);
    assert_eq!(b.primary().map(|p| p.instance), Some("a".into()));
    until("b takes over after expiry", || b.role() == Role::Primary).await;
    assert!(
        t.elapsed() >= Duration::from_millis(800),
        "not before the lease expired"
    );
    // The old primary's token is fenced out.
    assert!(store.renew_lease(&dead, 1000).await.is_err());
}

#[tokio::test]
async fn a_seized_lease_fences_out_its_old_holder() {
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    let old = store
        .acquire_lease("node:n1", "a|http://a|http://lb", 60_000)
        .await
        .unwrap()
        .unwrap();
    let seen = Arc::new(Seen::default());
    let mut c = Coordinator::new(id("b"), timing(), 0);
    c.poll(0);
    c.on_acquire(Ok(None), 0, 0);
    c.poll(0);
    c.on_read(Ok(store.read_lease("node:n1").await.unwrap()), 0);
    c.primary_gone("http://a", 0);
    let coordinator = Arc::new(Mutex::new(c));
    let driver = Driver {
        coordinator: coordinator.clone(),
        store: store.clone(),
        roles: seen.clone(),
        stop: Arc::new(Notify::new()),
        poke: Arc::new(Notify::new()),
        announce_now: Arc::new(Notify::new()),
        clock: Clock(Instant::now()),
    };
    assert!(driver.step().await);
    assert_eq!(lock(&coordinator).role(), Role::Primary);
    let new = store.read_lease("node:n1").await.unwrap().unwrap();
    assert!(new.token > old.token);
    assert!(matches!(
        store.renew_lease(&old, 1000).await,
        Err(StoreError::LeaseLost { .. })
    ));
}

#[tokio::test]
async fn a_restarted_instance_waits_for_its_own_old_lease() {
    let store: Arc<MemoryStore> = Arc::new(MemoryStore::new());
    store
        .acquire_lease("node:n1", "a|http://a|http://lb", 600)
        .await
        .unwrap()
        .unwrap();
    let t = Instant::now();
    let a = Cluster::start(store.clone(), id("a"), timing(), Arc::new(Seen::default())).await;
    assert_eq!(
        a.role(),
        Role::Primary,
        "start waits for its predecessor's lease"
    );
    assert!(t.elapsed() >= Duration::from_millis(500));
}
