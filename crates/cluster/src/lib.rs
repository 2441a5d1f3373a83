#![doc = include_str!("../README.md")]
#![warn(missing_docs)]

mod coordinator;
pub mod membership;
#[cfg(test)]
mod sim;
#[cfg(test)]
mod tests;
mod watch;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ors_store::{Fence, Member, SessionStore, StoreError};
use tokio::sync::{Notify, mpsc};

pub use coordinator::{Change, Coordinator, Identity, Primary, Request, Role, Timing};
pub use watch::WATCH_PATH;

/// What the host does when its role changes. Called from the driver task, in order.
/// (Who the primary is can be asked at any time: [`Cluster::primary`].)
#[async_trait]
pub trait Roles: Send + Sync + 'static {
    /// This process is the node's primary now; every write carries `token`.
    async fn became_primary(&self, token: u64);
    /// This process is a backup now: stop serving, drop the node's sessions from memory.
    async fn stepped_down(&self, reason: &str);
}

/// The running coordinator of this process: a task that renews or takes the lease.
pub struct Cluster {
    driver: Driver,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    announcer: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The member list last read, and when (see [`membership::LIST_CACHE`]).
    members: tokio::sync::Mutex<Option<(Instant, Arc<Vec<Member>>)>>,
}

/// Milliseconds on this process's monotonic clock (lease validity is judged on it).
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

fn lock(m: &Mutex<Coordinator>) -> std::sync::MutexGuard<'_, Coordinator> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Cluster {
    /// Starts the coordinator. Before returning it tries to become primary: at once if the
    /// lease is free, or, if the lease is held by a process of the same `instance` (this
    /// process's predecessor, e.g. before a restart), by waiting for that lease to expire.
    /// A lease held by another instance makes this process a backup at once.
    pub async fn start(
        store: Arc<dyn SessionStore>,
        id: Identity,
        timing: Timing,
        roles: Arc<dyn Roles>,
    ) -> Cluster {
        let clock = Clock(Instant::now());
        let c = Cluster {
            driver: Driver {
                coordinator: Arc::new(Mutex::new(Coordinator::new(id, timing, clock.now_ms()))),
                store,
                roles,
                stop: Arc::new(Notify::new()),
                poke: Arc::new(Notify::new()),
                announce_now: Arc::new(Notify::new()),
                clock,
            },
            task: Mutex::new(None),
            announcer: Mutex::new(None),
            members: tokio::sync::Mutex::new(None),
        };
        let deadline =
            clock.now_ms() + (timing.lease_ttl + Duration::from_secs(2)).as_millis() as u64;
        let (name, mine) = {
            let co = lock(&c.driver.coordinator);
            (co.identity().lease_name(), co.identity().instance.clone())
        };
        loop {
            // Acquire, and on failure read who holds the lease.
            for _ in 0..2 {
                c.driver.step().await;
            }
            if c.role() == Role::Primary || clock.now_ms() > deadline {
                break;
            }
            // Held by a process of this instance: our predecessor, which no backup may
            // replace sooner than we can. Anything else: we are a backup.
            let holder = c.driver.store.read_lease(&name).await.ok().flatten();
            if holder.is_none_or(|l| Primary::from_holder(&l.holder).instance != mine) {
                break;
            }
            tracing::info!(lease = %name, "waiting for the lease of this instance's previous process to expire");
            let wait = lock(&c.driver.coordinator)
                .next_wakeup_ms()
                .saturating_sub(clock.now_ms());
            tokio::time::sleep(Duration::from_millis(wait.max(20))).await;
        }
        let task = tokio::spawn(c.driver.clone().run());
        *c.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        // Listed before `start` returns; refreshed by the announcer from then on.
        if let Err(e) = c.driver.announce_once().await {
            tracing::warn!(error = %e, "cannot announce this process in the membership");
        }
        let announcer = tokio::spawn(c.driver.clone().announce());
        *c.announcer.lock().unwrap_or_else(|p| p.into_inner()) = Some(announcer);
        c
    }

    /// The cluster's live members (read at most every [`membership::LIST_CACHE`]).
    pub async fn members(&self) -> Result<Arc<Vec<Member>>, StoreError> {
        let mut cached = self.members.lock().await;
        if let Some((at, list)) = cached.as_ref()
            && at.elapsed() < membership::LIST_CACHE
        {
            return Ok(list.clone());
        }
        let list = Arc::new(self.driver.store.members().await?);
        *cached = Some((Instant::now(), list.clone()));
        Ok(list)
    }

    /// Where requests for node `node`'s sessions go (see [`membership::node_url`]);
    /// `None` while the node has no live primary.
    pub async fn node_url(&self, node: &str) -> Result<Option<String>, StoreError> {
        Ok(membership::node_url(&self.members().await?, node))
    }

    /// This process's role now.
    pub fn role(&self) -> Role {
        lock(&self.driver.coordinator).role()
    }

    /// Whether this process is primary and its lease surely still holds now. A process
    /// that was paused (SIGSTOP, a long GC, a hung disk) past its lease learns here, before
    /// its coordinator task has run again, that it must not answer as the primary.
    pub fn holds_lease(&self) -> bool {
        lock(&self.driver.coordinator).holds_lease(self.driver.clock.now_ms())
    }

    /// Whether the last lease call reached the store.
    pub fn store_up(&self) -> bool {
        lock(&self.driver.coordinator).store_up()
    }

    /// The node's primary as last known.
    pub fn primary(&self) -> Option<Primary> {
        lock(&self.driver.coordinator).primary().cloned()
    }

    /// The store refused a session write carrying `token` because the node's lease has a
    /// newer token: step down at once (see [`Coordinator::fenced`]).
    pub fn fenced(&self, token: Fence) {
        let d = &self.driver;
        lock(&d.coordinator).fenced(token, d.clock.now_ms());
        // The driver task delivers the change, so role changes reach `Roles` in order.
        d.poke.notify_one();
    }

    /// Graceful shutdown: stops the task, steps down and releases the lease at once so a
    /// backup takes over without waiting for it to expire.
    pub async fn resign(&self) {
        let d = &self.driver;
        let announcer = self
            .announcer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(a) = announcer {
            a.abort();
        }
        d.stop.notify_one();
        let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(t) = task {
            let _ = t.await;
        }
        let lease = lock(&d.coordinator).resign(d.clock.now_ms());
        d.deliver_changes().await;
        if let Some(l) = lease
            && let Err(e) = d.store.release_lease(&l).await
        {
            tracing::warn!(error = %e, "could not release the node lease; it expires on its own");
        }
        let id = lock(&d.coordinator).identity().clone();
        if let Err(e) = d.store.withdraw(&id.node, &id.instance).await {
            tracing::warn!(error = %e, "could not withdraw the membership entry; it expires on its own");
        }
    }
}

/// A store call's result, or `Unavailable` if it did not finish in time.
fn bounded<T>(
    r: Result<Result<T, StoreError>, tokio::time::error::Elapsed>,
) -> Result<T, StoreError> {
    r.unwrap_or_else(|_| Err(StoreError::Unavailable("lease call timed out".into())))
}

/// The coordinator and what it acts with; the background task and `Cluster` share it.
#[derive(Clone)]
struct Driver {
    coordinator: Arc<Mutex<Coordinator>>,
    store: Arc<dyn SessionStore>,
    roles: Arc<dyn Roles>,
    stop: Arc<Notify>,
    /// Wakes the task to act on a change made from outside it.
    poke: Arc<Notify>,
    /// Wakes the announcer to announce a new role at once.
    announce_now: Arc<Notify>,
    clock: Clock,
}

impl Driver {
    /// Announces this process in the membership every [`membership::ANNOUNCE_EVERY`] and
    /// whenever its role changes.
    async fn announce(self) {
        let mut failing = false;
        loop {
            tokio::select! {
                _ = self.announce_now.notified() => {}
                _ = tokio::time::sleep(membership::ANNOUNCE_EVERY) => {}
            }
            match self.announce_once().await {
                Ok(()) => failing = false,
                // The lease calls report a store outage; say it once here.
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "cannot announce this process in the membership");
                }
                Err(_) => {}
            }
        }
    }

    /// Announces this process with its current role.
    async fn announce_once(&self) -> Result<(), StoreError> {
        let member = {
            let co = lock(&self.coordinator);
            let id = co.identity();
            Member {
                node: id.node.clone(),
                instance: id.instance.clone(),
                role: match co.role() {
                    Role::Primary => "primary",
                    Role::Backup => "backup",
                }
                .into(),
                advertise_url: id.advertise_url.clone(),
                external_url: id.external_url.clone(),
                data_center: id.data_center.clone(),
                heartbeat_ms: 0,
                expires_at_ms: 0,
            }
        };
        let ttl = membership::MEMBER_TTL.as_millis() as u64;
        let call = self.store.announce(&member, ttl);
        bounded(tokio::time::timeout(membership::ANNOUNCE_EVERY, call).await)
    }

    async fn run(self) {
        let (dead_tx, mut dead_rx) = mpsc::unbounded_channel();
        let mut watching: Option<(String, tokio::task::JoinHandle<()>)> = None;
        loop {
            // A backup watches its primary's process, to take over the moment it dies
            // instead of when its lease expires.
            let target = {
                let co = lock(&self.coordinator);
                (co.role() == Role::Backup)
                    .then(|| co.primary().map(|p| p.advertise_url.clone()))
                    .flatten()
                    .filter(|u| !u.is_empty())
            };
            if watching.as_ref().map(|(u, _)| u) != target.as_ref() {
                if let Some((_, task)) = watching.take() {
                    task.abort();
                }
                if let Some(url) = target {
                    let task = tokio::spawn(watch::watch(url.clone(), dead_tx.clone()));
                    watching = Some((url, task));
                }
            }
            if self.step().await {
                continue;
            }
            let wake = lock(&self.coordinator).next_wakeup_ms();
            let wait = Duration::from_millis(wake.saturating_sub(self.clock.now_ms()).max(1));
            tokio::select! {
                _ = self.stop.notified() => break,
                _ = self.poke.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                Some(url) = dead_rx.recv() => {
                    tracing::warn!(primary = %url, "the primary's process is gone; taking over its lease");
                    lock(&self.coordinator).primary_gone(&url, self.clock.now_ms());
                }
            }
        }
        if let Some((_, task)) = watching {
            task.abort();
        }
    }

    /// Makes the store call due now, if any, and acts on what changed. Returns whether a
    /// call was made.
    async fn step(&self) -> bool {
        let (request, id, timing) = {
            let mut co = lock(&self.coordinator);
            (
                co.poll(self.clock.now_ms()),
                co.identity().clone(),
                co.timing(),
            )
        };
        self.deliver_changes().await;
        let Some(request) = request else {
            return false;
        };
        let ttl = timing.lease_ttl.as_millis() as u64;
        // A call that hangs must not keep a primary from noticing its lease ran out.
        let limit = timing.renew_every.max(Duration::from_millis(100));
        let started = self.clock.now_ms();
        match request {
            Request::Acquire | Request::Seize(_) => {
                if let Request::Seize(dead) = &request {
                    // Conditional on the dead primary's token: a no-op if anyone renewed
                    // or took the lease since. Then an ordinary race to acquire it.
                    let released =
                        tokio::time::timeout(limit, self.store.release_lease(dead)).await;
                    if !matches!(released, Ok(Ok(()))) {
                        tracing::warn!(
                            "could not release the dead primary's lease; waiting for it to expire"
                        );
                    }
                }
                let (name, holder) = (id.lease_name(), id.holder());
                let call = self.store.acquire_lease(&name, &holder, ttl);
                let r = bounded(tokio::time::timeout(limit, call).await);
                if let Err(e) = &r {
                    tracing::warn!(error = %e, "cannot reach the store to take the node lease");
                }
                lock(&self.coordinator).on_acquire(r, started, self.clock.now_ms());
            }
            Request::Renew(lease) => {
                let r =
                    bounded(tokio::time::timeout(limit, self.store.renew_lease(&lease, ttl)).await);
                if let Err(e) = &r {
                    tracing::error!(error = %e, "could not renew the node lease");
                }
                lock(&self.coordinator).on_renew(r, started, self.clock.now_ms());
            }
            Request::Read => {
                let r = bounded(
                    tokio::time::timeout(limit, self.store.read_lease(&id.lease_name())).await,
                );
                lock(&self.coordinator).on_read(r, self.clock.now_ms());
            }
        }
        let up = lock(&self.coordinator).store_up();
        metrics::gauge!("ors_store_up").set(if up { 1.0 } else { 0.0 });
        self.deliver_changes().await;
        true
    }

    async fn deliver_changes(&self) {
        loop {
            let change = lock(&self.coordinator).poll_change();
            match change {
                None => return,
                Some(Change::BecamePrimary { token }) => {
                    tracing::info!(token, "this process is the node's primary");
                    metrics::gauge!("ors_primary").set(1.0);
                    self.announce_now.notify_one();
                    self.roles.became_primary(token).await;
                }
                Some(Change::SteppedDown { reason, resigned }) => {
                    if resigned {
                        tracing::info!(%reason, "handing the node over");
                    } else {
                        tracing::error!(%reason, "stepping down: this process is a backup now");
                    }
                    metrics::gauge!("ors_primary").set(0.0);
                    self.announce_now.notify_one();
                    self.roles.stepped_down(&reason).await;
                }
                Some(Change::PrimaryIs(p)) => {
                    tracing::debug!(primary = ?p, "the node's primary");
                }
            }
        }
    }
}
