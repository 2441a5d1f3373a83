use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use ors_store::MemoryStore;

use super::*;

/// Records what fired; fails the first `fail_first` attempts of every job; owns the
/// sessions whose id starts with `mine-`.
#[derive(Default)]
struct Recorder {
    fired: Mutex<Vec<Job>>,
    attempts: AtomicU32,
    fail_first: u32,
    /// Whether the job's entry was still in the store while it fired.
    entry_present: Mutex<Vec<bool>>,
    store: Option<Arc<MemoryStore>>,
}

#[async_trait]
impl Fire for Recorder {
    fn owns(&self, job: &Job) -> bool {
        job.session().starts_with("mine-")
    }

    async fn fire(&self, job: &Job) -> Result<(), FireError> {
        if let Some(store) = &self.store {
            let present = store
                .session_schedules(job.session())
                .await
                .unwrap()
                .iter()
                .any(|e| e.id == job.id())
                || matches!(job, Job::Start(_));
            lock(&self.entry_present).push(present);
        }
        let n = self.attempts.fetch_add(1, Ordering::SeqCst);
        if n < self.fail_first {
            return Err(FireError(format!("attempt {n} fails")));
        }
        lock(&self.fired).push(job.clone());
        Ok(())
    }
}

fn fast() -> SchedulerConfig {
    SchedulerConfig {
        claimer: "node-test".into(),
        poll: Duration::from_millis(20),
        retry_base: Duration::from_millis(10),
        retry_max: Duration::from_millis(40),
        report_after: 2,
        ..SchedulerConfig::default()
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn entries(store: &MemoryStore) -> usize {
    store.due_schedules(u64::MAX, 1000).await.unwrap().len()
}

#[tokio::test]
async fn a_due_job_fires_once_and_its_entry_goes_after_it_fired() {
    let store = Arc::new(MemoryStore::new());
    let job = Job::Timer {
        session: "mine-1".into(),
        timer: 3,
    };
    store.put_schedule(&job.entry(0)).await.unwrap();
    let rec = Arc::new(Recorder {
        store: Some(store.clone()),
        ..Recorder::default()
    });
    let (waker, wakes) = waker();
    let _s = Scheduler::spawn(store.clone(), rec.clone(), fast(), waker, wakes);
    until("the job to fire", || !lock(&rec.fired).is_empty()).await;
    let s = store.clone();
    let start = Instant::now();
    while entries(&s).await > 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "entry not deleted"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(*lock(&rec.fired), [job]);
    assert_eq!(*lock(&rec.entry_present), [true]);
}

#[tokio::test]
async fn a_failing_job_is_retried_with_backoff_until_it_fires() {
    let store = Arc::new(MemoryStore::new());
    let job = Job::Lifetime {
        session: "mine-2".into(),
    };
    store.put_schedule(&job.entry(0)).await.unwrap();
    let rec = Arc::new(Recorder {
        fail_first: 4,
        ..Recorder::default()
    });
    let (waker, wakes) = waker();
    let _s = Scheduler::spawn(store.clone(), rec.clone(), fast(), waker, wakes);
    until("the job to fire after its failures", || {
        !lock(&rec.fired).is_empty()
    })
    .await;
    assert_eq!(rec.attempts.load(Ordering::SeqCst), 5);
    assert_eq!(*lock(&rec.fired), [job]);
}

#[tokio::test]
async fn jobs_of_other_owners_and_future_jobs_are_left_alone() {
    let store = Arc::new(MemoryStore::new());
    let theirs = Job::Timer {
        session: "theirs-1".into(),
        timer: 1,
    };
    let later = Job::Timer {
        session: "mine-3".into(),
        timer: 1,
    };
    store.put_schedule(&theirs.entry(0)).await.unwrap();
    store
        .put_schedule(&later.entry(ors_store::now_ms() + 3_600_000))
        .await
        .unwrap();
    let rec = Arc::new(Recorder::default());
    let (waker, wakes) = waker();
    let _s = Scheduler::spawn(store.clone(), rec.clone(), fast(), waker, wakes);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(lock(&rec.fired).is_empty());
    // Still claimable by its owner: this scheduler did not claim it.
    assert!(
        store
            .claim_schedule(&theirs.id(), "owner", ors_store::now_ms(), 1000)
            .await
            .unwrap()
    );
    assert_eq!(store.session_schedules("mine-3").await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_entry_that_is_no_job_is_reported_and_removed() {
    let store = Arc::new(MemoryStore::new());
    let mut bad = Job::Timer {
        session: "mine-4".into(),
        timer: 1,
    }
    .entry(0);
    bad.payload = b"not a number".to_vec();
    store.put_schedule(&bad).await.unwrap();
    let rec = Arc::new(Recorder::default());
    let (waker, wakes) = waker();
    let _s = Scheduler::spawn(store.clone(), rec.clone(), fast(), waker, wakes);
    let start = Instant::now();
    while entries(&store).await > 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "not removed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(lock(&rec.fired).is_empty());
}

#[tokio::test]
async fn a_wake_fires_a_new_job_before_the_next_poll() {
    let store = Arc::new(MemoryStore::new());
    let rec = Arc::new(Recorder::default());
    let (waker, wakes) = waker();
    let cfg = SchedulerConfig {
        poll: Duration::from_secs(3600),
        ..fast()
    };
    let _s = Scheduler::spawn(store.clone(), rec.clone(), cfg, waker.clone(), wakes);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let job = Job::Timer {
        session: "mine-5".into(),
        timer: 9,
    };
    let due = ors_store::now_ms() + 30;
    store.put_schedule(&job.entry(due)).await.unwrap();
    waker.wake_at(due);
    until("the woken job", || !lock(&rec.fired).is_empty()).await;
}
