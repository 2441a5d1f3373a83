//! The role state machine of one process of a node: sans-IO, driven by a clock and the
//! results of the store calls it asks for.

use std::collections::VecDeque;
use std::time::Duration;

use ors_store::{Fence, Lease, StoreError, node_lease};

/// Who this process is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The node it serves (the prefix of the node's session ids).
    pub node: String,
    /// This process's name among the node's processes (`--instance`).
    pub instance: String,
    /// Where this process is reached (`--advertise-url`): backups redirect to it.
    pub advertise_url: String,
    /// Where the node is reached from outside (`--external-url`, its load balancer):
    /// other nodes redirect requests for this node's sessions to it.
    pub external_url: String,
    /// Its data center (`--data-center`; empty: none), for its membership entry.
    pub data_center: String,
}

impl Identity {
    /// The lease holder string: instance and addresses, so a backup learns where its
    /// primary is, and another node where this node is, from the lease alone.
    pub fn holder(&self) -> String {
        format!(
            "{}|{}|{}",
            self.instance, self.advertise_url, self.external_url
        )
    }

    /// The name of the node's lease in the store.
    pub fn lease_name(&self) -> String {
        node_lease(&self.node)
    }
}

/// The process holding a node's lease, as read from the lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Primary {
    /// Its `--instance`.
    pub instance: String,
    /// Its `--advertise-url` (empty if the holder string has none).
    pub advertise_url: String,
    /// Its node's `--external-url` (empty if the holder string has none).
    pub external_url: String,
}

impl Primary {
    /// Reads a holder string written by [`Identity::holder`].
    pub fn from_holder(holder: &str) -> Primary {
        let mut parts = holder.splitn(3, '|');
        let mut next = || parts.next().unwrap_or_default().to_string();
        Primary {
            instance: next(),
            advertise_url: next(),
            external_url: next(),
        }
    }
}

/// How often things happen.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The lease's time to live.
    pub lease_ttl: Duration,
    /// A primary renews this often (default: a third of the TTL).
    pub renew_every: Duration,
    /// A backup tries to take the lease this often.
    pub acquire_every: Duration,
    /// A primary steps down this long before its lease could expire by its own clock
    /// (the store's clock decides expiry; this covers drift and slow calls).
    pub margin: Duration,
}

impl Timing {
    /// Defaults derived from a lease TTL.
    pub fn for_ttl(lease_ttl: Duration) -> Timing {
        Timing {
            lease_ttl,
            renew_every: lease_ttl / 3,
            acquire_every: (lease_ttl / 10)
                .clamp(Duration::from_millis(50), Duration::from_millis(500)),
            margin: lease_ttl / 5,
        }
    }
}

/// The store call the coordinator wants made now. Make it, then hand the result to the
/// matching `on_*` method with the time the call was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `acquire_lease(name, holder, ttl)`.
    Acquire,
    /// `renew_lease(lease, ttl)`.
    Renew(Lease),
    /// `read_lease(name)`, to learn who the primary is.
    Read,
    /// The primary holding this lease is known to be dead: `release_lease(lease)` (a
    /// no-op unless it is still held with that token), then `acquire_lease` as for
    /// [`Request::Acquire`]. Taking over before the lease expires is safe for data:
    /// the new token fences out the old holder.
    Seize(Lease),
}

/// What changed, for the host to act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// This process holds the lease: serve the node, writing with this fencing token.
    BecamePrimary {
        /// The lease's token.
        token: u64,
    },
    /// This process no longer holds the lease (or cannot know that it does): stop serving
    /// at once and drop what it holds in memory.
    SteppedDown {
        /// Why, in words.
        reason: String,
        /// It gave the role up itself ([`Coordinator::resign`]), as opposed to losing it.
        resigned: bool,
    },
    /// Another process is (or no process is) the node's primary.
    PrimaryIs(Option<Primary>),
}

/// This process's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Holds the node's lease: serves its sessions and fires its timers.
    Primary,
    /// Serves nothing; redirects to the primary and takes over when the lease is free.
    Backup,
}

#[derive(Debug)]
enum State {
    Backup,
    Primary {
        lease: Lease,
        /// By this process's clock, the lease may have expired from here on.
        valid_until_ms: u64,
    },
}

/// The coordinator. See the [crate documentation](crate).
#[derive(Debug)]
pub struct Coordinator {
    id: Identity,
    timing: Timing,
    state: State,
    /// When the next store call is due.
    next_ms: u64,
    /// A call was handed out and its result is not in yet.
    waiting: bool,
    /// After a failed acquire, read the lease to learn the primary.
    read_next: bool,
    /// The lease of another process as last read (what a seizure releases).
    observed: Option<Lease>,
    /// A lease whose holder is known dead: seize it next (unless a newer read shows the
    /// lease has changed hands since).
    seize: Option<Lease>,
    primary: Option<Primary>,
    changes: VecDeque<Change>,
    /// Whether the last lease call reached the store.
    store_up: bool,
}

impl Coordinator {
    /// A coordinator that starts as a backup and asks for the lease at once.
    pub fn new(id: Identity, timing: Timing, now_ms: u64) -> Coordinator {
        Coordinator {
            id,
            timing,
            state: State::Backup,
            next_ms: now_ms,
            waiting: false,
            read_next: false,
            observed: None,
            seize: None,
            primary: None,
            changes: VecDeque::new(),
            store_up: true,
        }
    }

    /// Who this process is.
    pub fn identity(&self) -> &Identity {
        &self.id
    }

    /// The timing it runs with.
    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// This process's role now.
    pub fn role(&self) -> Role {
        match self.state {
            State::Backup => Role::Backup,
            State::Primary { .. } => Role::Primary,
        }
    }

    /// The lease held, if primary.
    pub fn lease(&self) -> Option<&Lease> {
        match &self.state {
            State::Primary { lease, .. } => Some(lease),
            State::Backup => None,
        }
    }

    /// Whether this process is primary and its lease surely still holds at `now_ms` by its
    /// own clock (the same test that makes it step down, without the side effect).
    pub fn holds_lease(&self, now_ms: u64) -> bool {
        match &self.state {
            State::Primary { valid_until_ms, .. } => {
                now_ms < valid_until_ms.saturating_sub(self.margin_ms())
            }
            State::Backup => false,
        }
    }

    /// The primary last learned of (this process itself when primary).
    pub fn primary(&self) -> Option<&Primary> {
        self.primary.as_ref()
    }

    /// When [`Coordinator::poll`] next has something to do.
    pub fn next_wakeup_ms(&self) -> u64 {
        match &self.state {
            State::Primary { valid_until_ms, .. } => self
                .next_ms
                .min(valid_until_ms.saturating_sub(self.margin_ms())),
            State::Backup => self.next_ms,
        }
    }

    fn margin_ms(&self) -> u64 {
        self.timing.margin.as_millis() as u64
    }

    /// Checks the lease's time and returns the store call due now, if any (one at a time).
    pub fn poll(&mut self, now_ms: u64) -> Option<Request> {
        if let State::Primary { valid_until_ms, .. } = &self.state
            && now_ms >= valid_until_ms.saturating_sub(self.margin_ms())
        {
            self.step_down(now_ms, "the lease was not renewed in time");
        }
        if self.waiting || now_ms < self.next_ms {
            return None;
        }
        self.waiting = true;
        Some(match &self.state {
            State::Primary { lease, .. } => Request::Renew(lease.clone()),
            State::Backup if self.read_next => Request::Read,
            State::Backup => match self.seize.take() {
                Some(dead) => Request::Seize(dead),
                None => Request::Acquire,
            },
        })
    }

    /// The result of an [`Request::Acquire`] started at `started_ms`.
    pub fn on_acquire(
        &mut self,
        result: Result<Option<Lease>, StoreError>,
        started_ms: u64,
        now_ms: u64,
    ) {
        self.waiting = false;
        self.reached(&result);
        match result {
            Ok(Some(lease)) => {
                let token = lease.token;
                self.state = State::Primary {
                    lease,
                    valid_until_ms: started_ms + self.timing.lease_ttl.as_millis() as u64,
                };
                self.next_ms = now_ms + self.timing.renew_every.as_millis() as u64;
                self.changes.push_back(Change::BecamePrimary { token });
                self.set_primary(Some(Primary::from_holder(&self.id.holder())));
            }
            Ok(None) => {
                // Someone else holds it: learn who, then try again later.
                self.read_next = true;
                self.next_ms = now_ms;
            }
            Err(_) => self.next_ms = now_ms + self.timing.acquire_every.as_millis() as u64,
        }
    }

    /// The result of a [`Request::Renew`] started at `started_ms`.
    pub fn on_renew(&mut self, result: Result<Lease, StoreError>, started_ms: u64, now_ms: u64) {
        self.waiting = false;
        self.reached(&result);
        match result {
            Ok(lease) => {
                if let State::Primary { .. } = self.state {
                    self.state = State::Primary {
                        lease,
                        valid_until_ms: started_ms + self.timing.lease_ttl.as_millis() as u64,
                    };
                }
                self.next_ms = now_ms + self.timing.renew_every.as_millis() as u64;
            }
            Err(StoreError::LeaseLost { .. }) => {
                self.step_down(now_ms, "the lease was taken by another process");
            }
            // The store is unreachable: keep serving while the lease surely holds, retry
            // soon; `poll` steps down when it may have run out.
            Err(_) => {
                self.next_ms = now_ms + self.timing.acquire_every.as_millis() as u64;
            }
        }
    }

    /// The result of a [`Request::Read`].
    pub fn on_read(&mut self, result: Result<Option<Lease>, StoreError>, now_ms: u64) {
        self.waiting = false;
        self.reached(&result);
        self.read_next = false;
        if let Ok(lease) = result {
            // Our own lease, still in the store after we stepped down, names no primary:
            // it only has to expire.
            let other = lease.filter(|l| l.holder != self.id.holder());
            self.set_primary(other.as_ref().map(|l| Primary::from_holder(&l.holder)));
            // A death reported for an older holder says nothing about the new one.
            if self.seize.as_ref().map(|l| l.token) != other.as_ref().map(|l| l.token) {
                self.seize = None;
            }
            self.observed = other;
        }
        self.next_ms = now_ms + self.timing.acquire_every.as_millis() as u64;
    }

    /// The host found the primary at `advertise_url` dead (its process is gone: a
    /// connection to it broke and a new one is refused). A backup then takes its lease at
    /// once instead of waiting for it to expire. Ignored if that is not the primary this
    /// coordinator knows of.
    pub fn primary_gone(&mut self, advertise_url: &str, now_ms: u64) {
        // Only the lease last read, and only if that is the process reported dead: the
        // seizure releases exactly that token, so a lease that changed hands since (a
        // restart, another backup's takeover) is left alone.
        let dead = self
            .observed
            .as_ref()
            .filter(|l| Primary::from_holder(&l.holder).advertise_url == advertise_url);
        if matches!(self.state, State::Backup)
            && let Some(l) = dead
        {
            self.seize = Some(l.clone());
            self.read_next = false;
            self.next_ms = now_ms;
        }
    }

    /// The store refused a session write carrying `token` because the node's lease has
    /// been taken with a newer one: this process is deposed, whatever its clock says, and
    /// steps down at once (without waiting for its next renewal to fail). Ignored if this
    /// process already holds a newer lease.
    pub fn fenced(&mut self, token: Fence, now_ms: u64) {
        if self.lease().is_some_and(|l| l.token <= token) {
            self.step_down(
                now_ms,
                "a session write was fenced: another process holds the lease",
            );
        }
    }

    /// Gives the role up (graceful shutdown): returns the lease to release at once, so a
    /// backup can take over without waiting for it to expire.
    pub fn resign(&mut self, now_ms: u64) -> Option<Lease> {
        let lease = self.lease().cloned();
        if lease.is_some() {
            self.step_down(now_ms, "shutting down");
            if let Some(Change::SteppedDown { resigned, .. }) = self
                .changes
                .iter_mut()
                .rev()
                .find(|c| matches!(c, Change::SteppedDown { .. }))
            {
                *resigned = true;
            }
        }
        // No more acquiring.
        self.next_ms = u64::MAX;
        lease
    }

    /// Whether the last lease call reached the store (a refusal counts as reached).
    pub fn store_up(&self) -> bool {
        self.store_up
    }

    fn reached<T>(&mut self, r: &Result<T, StoreError>) {
        self.store_up = !matches!(r, Err(StoreError::Unavailable(_)));
    }

    /// The next change to act on.
    pub fn poll_change(&mut self) -> Option<Change> {
        self.changes.pop_front()
    }

    fn step_down(&mut self, now_ms: u64, reason: &str) {
        if let State::Primary { .. } = self.state {
            self.state = State::Backup;
            self.changes.push_back(Change::SteppedDown {
                reason: reason.to_string(),
                resigned: false,
            });
            self.set_primary(None);
            // Our own lease may still be in the store: wait for it to expire rather than
            // race the other backups for it.
            self.next_ms = now_ms + self.timing.acquire_every.as_millis() as u64;
        }
    }

    fn set_primary(&mut self, p: Option<Primary>) {
        if self.primary != p {
            self.primary = p.clone();
            self.changes.push_back(Change::PrimaryIs(p));
        }
    }
}
