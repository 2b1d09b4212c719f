//! The runtime: executes the protocol's effects against the world.
//!
//! [`Runtime`] is what the API calls. It keeps the live transaction table
//! (`dashmap`), feeds client requests to each transaction's state machine,
//! and hands the effects to the transaction's driver ([`driver`]), which
//! calls participants with deadlines, forces decisions through the
//! group-commit writer ([`log`]) and retries phase 2 with backoff until
//! acknowledged. At start it loads every unfinished transaction from the
//! store and finishes it (R2, R3); a sweeper aborts transactions whose
//! timeout passes even when no client calls (R5).
//!
//! Every task it spawns is on one [`TaskTracker`] and stops on one
//! [`CancellationToken`]: [`Runtime::shutdown`] ends them all.
//!
//! - [`clock`]: the wall clock and id minting, replaceable for simulation.
//! - [`live`]: one transaction in memory.
//! - [`driver`]: the task that executes one transaction's effects.
//! - [`saga`]: a saga in memory and the task that executes its effects.
//! - [`log`]: the group-commit writer.
//! - [`mailbox`]: the hand-off of effects to a transaction's one driver.
//! - [`participants`]: channels and calls to participants.
//! - [`batch`]: calls to one participant coalesced into `Batch` calls.
//! - [`crash`]: crash points for tests (`failpoints` feature).
//! - [`wait`]: backoff sleeps an operator can cut short.
//! - [`lease`]: on a store several nodes share, this node's lease and the
//!   takeover of gone nodes' transactions (DESIGN §6).
//! - `error`, `requests`: the runtime's error and its requests and answers
//!   (re-exported here).
//! - `submit`: SubmitSaga. `operator`: retry and resolve by hand.
//! - `recovery`: loading and finishing unfinished transactions at start.
//! - `sweep`: the periodic work (timeouts, gauges, ambiguous first writes,
//!   retention).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use dashmap::DashMap;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::{
    OperatorAction, RequestDigest, Resolution, StepStatus, TxnId, TxnKind, TxnState, TxnView,
};
use crate::protocol::saga::{self as saga_protocol, Saga};
use crate::protocol::two_phase::{BranchPhase, Event, Rejected, TwoPhase};
use crate::store::{Record, Store, StoreError, Unfinished};

// What the API works with from the layers below, so that `api` depends on
// the runtime alone (DESIGN §1: api -> runtime -> protocol, runtime ->
// store): a transaction's decision and outcome, a saga's shape rules, and
// a listing's query.
pub use crate::protocol::saga::{ShapeError, StepShape, check_shapes};
pub use crate::protocol::two_phase::{Decision, Outcome};
pub use crate::store::ListQuery;

pub mod batch;
pub mod clock;
pub mod crash;
pub mod driver;
pub mod lease;
pub mod live;
pub mod log;
pub mod mailbox;
pub mod participants;
pub mod rpc;
pub mod saga;
pub mod wait;

mod error;
mod operator;
mod recovery;
mod requests;
mod submit;
mod sweep;

pub use error::Error;
use requests::BeginWrite;
pub use requests::{
    BeginTxn, Begun, Committed, EnlistBranch, Enlisted, Page, SagaAccepted, SubmitSaga,
};

use clock::{Clock, SystemClock};
use live::{BranchInfo, LiveTxn, TxnHeader};
use log::{LogError, LogWriter};
use participants::{Dialer, Participants};
use saga::LiveSaga;

/// How the runtime behaves; `concord serve` fills it from flags.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Timeout of a transaction whose Begin names none.
    pub default_txn_timeout: Duration,
    /// Prepare deadline when Commit names none (R5).
    pub default_prepare_timeout: Duration,
    /// Deadline of each Commit or Abort delivery attempt.
    pub delivery_timeout: Duration,
    /// Connecting to a participant fails after this long.
    pub connect_timeout: Duration,
    /// Phase-2 and log-write retries: first delay, and the cap (R3).
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// Exponential backoff with jitter, built from the two delays above.
    pub retry: ExponentialBuilder,
    /// How often the sweeper looks for expired transactions.
    pub sweep_interval: Duration,
    /// Branches per transaction at most.
    pub max_branches: usize,
    /// Recovered transactions driven at once after a restart.
    pub recovery_concurrency: usize,
    /// The address participants can reach this coordinator at, sent with
    /// every call so they know whom to ask about an in-doubt branch.
    pub advertised_url: String,
    /// The wall clock and id minting.
    pub clock: Arc<dyn Clock>,
    /// How channels to participants connect.
    pub dialer: Dialer,
    /// TLS for calls to https:// participants and other nodes.
    pub peer_tls: Option<participants::PeerTls>,
    /// Finished transactions older than this are removed from the log
    /// (`Store::prune`); None keeps them forever.
    pub retention: Option<Duration>,
    /// Coalesce the calls waiting for one participant into `Batch` calls
    /// ([`batch`]).
    pub batch_calls: bool,
    /// Failed attempts of a forced log write after which the client waiting
    /// on it is answered UNAVAILABLE (the write goes on being retried).
    pub log_write_attempts: u32,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self::with_retry(
            Duration::from_millis(50),
            Duration::from_secs(10),
            RuntimeConfig {
                default_txn_timeout: Duration::from_secs(30),
                default_prepare_timeout: Duration::from_secs(5),
                delivery_timeout: Duration::from_secs(5),
                connect_timeout: Duration::from_secs(2),
                retry_min_delay: Duration::ZERO,
                retry_max_delay: Duration::ZERO,
                retry: ExponentialBuilder::default(),
                sweep_interval: Duration::from_millis(100),
                max_branches: 64,
                recovery_concurrency: 256,
                advertised_url: String::new(),
                clock: Arc::new(SystemClock),
                dialer: Dialer::default(),
                peer_tls: None,
                retention: None,
                batch_calls: true,
                log_write_attempts: 6,
            },
        )
    }
}

impl RuntimeConfig {
    /// Sets the retry delays and the backoff built from them: doubling from
    /// `min` up to `max`, with jitter, and no limit on attempts (R3).
    pub fn with_retry(min: Duration, max: Duration, mut config: RuntimeConfig) -> Self {
        config.retry_min_delay = min;
        config.retry_max_delay = max;
        config.retry = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        config
    }
}

/// The states a transaction is stored in while it is not finished.
const UNFINISHED: [TxnState; 5] = [
    TxnState::Active,
    TxnState::Committing,
    TxnState::Aborting,
    TxnState::Running,
    TxnState::Compensating,
];

/// The live tables' hasher: fixed keys, so that iterating them (the
/// sweeper, listings) visits transactions in the same order on every run of
/// a simulation. Flooding is no concern: the coordinator mints every key.
type FixedHasher = std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// The runtime's shared state; drivers hold an `Arc` of it.
pub(crate) struct Shared {
    config: RuntimeConfig,
    store: Arc<dyn Store>,
    log: LogWriter,
    participants: Participants,
    live: DashMap<TxnId, Arc<LiveTxn>, FixedHasher>,
    sagas: DashMap<TxnId, Arc<LiveSaga>, FixedHasher>,
    /// Idempotency keys of live transactions and sagas (R7). Finished ones
    /// are found in the store.
    keys: Mutex<HashMap<String, TxnId>>,
    /// Transactions and sagas whose first write failed, so that they were
    /// forgotten and their client told UNAVAILABLE, but whose records the
    /// store may hold all the same (a commit whose answer was lost on the
    /// way back from PostgreSQL). Nobody learned their ids; the sweeper
    /// ends any the store turns out to hold (see `end_doubtful`).
    doubtful: Mutex<Vec<TxnId>>,
    /// Serialises keyed Begins between looking a key up and claiming it.
    begin_keys: tokio::sync::Mutex<()>,
    tasks: TaskTracker,
    shutdown: CancellationToken,
    /// Fired when another node declared this one gone (DESIGN §6): the node
    /// must stop serving.
    lease_lost: CancellationToken,
    /// Fired when a graceful shutdown begins: no new transactions.
    draining: CancellationToken,
    /// Transactions adopted by recovery or takeover and not ended yet.
    recovery_backlog: std::sync::atomic::AtomicUsize,
    /// While the start-up recovery reads the store: the ids of transactions
    /// begun meanwhile, which its read may include and which it must not
    /// adopt (they are live here, or may already have ended). `None` once
    /// the read is taken in.
    begun_while_recovering: Mutex<Option<HashSet<TxnId>>>,
}

impl Shared {
    /// Keeps the start-up recovery from adopting a transaction begun while
    /// it reads the store. Called before the transaction's first record is
    /// queued.
    fn note_begun(&self, id: TxnId) {
        if let Some(begun) = self
            .begun_while_recovering
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_mut()
        {
            begun.insert(id);
        }
    }

    /// Drops an ended transaction from memory; the store has its end record.
    fn forget(&self, txn: &LiveTxn) {
        self.live.remove(&txn.id);
        if let Some(key) = &txn.idempotency_key {
            self.keys
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(key);
        }
    }

    /// Drops an ended saga from memory; the store has its end record.
    fn forget_saga(&self, saga: &LiveSaga) {
        self.sagas.remove(&saga.header.id);
        if let Some(key) = &saga.header.idempotency_key {
            self.keys().remove(key);
        }
    }

    fn note_doubtful(&self, id: TxnId) {
        self.doubtful
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(id);
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, TxnId>> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The coordinator's runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    shared: Arc<Shared>,
}

impl Runtime {
    /// Starts the log writer and the sweeper, and loads every unfinished
    /// transaction from the store in the background, finishing them while
    /// new requests are served. Until a transaction is loaded, calls about it
    /// are answered from the store (GetOutcome: its decision, or presumed
    /// abort for one that never decided, which recovery will abort) or
    /// UNAVAILABLE "not loaded yet; retry" (Enlist, Commit, Rollback).
    pub async fn start(store: Arc<dyn Store>, config: RuntimeConfig) -> Result<Self, StoreError> {
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let log = LogWriter::start(Arc::clone(&store), &tasks, shutdown.clone());
        let participants = Participants::new(
            config.connect_timeout,
            config.advertised_url.clone(),
            config.dialer.clone(),
            config.peer_tls.clone(),
        )
        .with_batching(config.batch_calls, tasks.clone(), shutdown.clone());
        let shared = Arc::new(Shared {
            config,
            store,
            log,
            participants,
            live: DashMap::default(),
            sagas: DashMap::default(),
            keys: Mutex::new(HashMap::new()),
            doubtful: Mutex::new(Vec::new()),
            begin_keys: tokio::sync::Mutex::new(()),
            tasks,
            shutdown,
            lease_lost: CancellationToken::new(),
            draining: CancellationToken::new(),
            recovery_backlog: std::sync::atomic::AtomicUsize::new(0),
            begun_while_recovering: Mutex::new(Some(HashSet::new())),
        });
        let runtime = Self { shared };
        runtime
            .shared
            .tasks
            .spawn(recovery::recover(Arc::clone(&runtime.shared)));
        runtime
            .shared
            .tasks
            .spawn(sweep::sweep(Arc::clone(&runtime.shared)));
        runtime
            .shared
            .tasks
            .spawn(sweep::end_doubtful_writes(Arc::clone(&runtime.shared)));
        if runtime.shared.config.retention.is_some() {
            runtime
                .shared
                .tasks
                .spawn(sweep::prune(Arc::clone(&runtime.shared)));
        }
        if runtime.shared.store.cluster().is_some() {
            runtime
                .shared
                .tasks
                .spawn(lease::keep(Arc::clone(&runtime.shared)));
        }
        Ok(runtime)
    }

    /// Stops every task: drivers leave unfinished work to recovery, the log
    /// writer writes what is queued. Returns when all have ended. On a shared
    /// store the node then gives up its lease, so that the others take over
    /// what is left at once.
    pub async fn shutdown(&self) {
        self.shared.shutdown.cancel();
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
        if let Some(cluster) = self.shared.store.cluster()
            && !self.shared.lease_lost.is_cancelled()
            && let Err(error) = cluster.leave().await
        {
            tracing::warn!(%error, "could not give up the lease; the others take over once it expires");
        }
    }

    /// The first half of a graceful shutdown: takes no new transactions and
    /// waits, at most `within`, until every transaction in memory has
    /// decided (its outcome announced after R1's durable write). Clients may
    /// still enlist, commit and roll back the transactions they hold. What is
    /// left (phase 2, sagas, anything undecided at the deadline) is in the
    /// log for the next start (R2, R3).
    pub async fn drain(&self, within: Duration) {
        let shared = &self.shared;
        shared.draining.cancel();
        let deadline = tokio::time::Instant::now() + within;
        let undecided = || {
            shared
                .live
                .iter()
                .filter(|txn| txn.outcome.borrow().is_none())
                .count()
        };
        tracing::info!(undecided = undecided(), "draining: no new transactions");
        loop {
            let left = undecided();
            if left == 0 {
                tracing::info!("drained: every transaction in memory has decided");
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                tracing::warn!(
                    undecided = left,
                    "drain deadline reached; the next start aborts what is still undecided (R2)"
                );
                return;
            }
            tokio::select! {
                () = shared.shutdown.cancelled() => return,
                () = tokio::time::sleep(Duration::from_millis(20)) => {}
            }
        }
    }

    /// Fires when a graceful shutdown begins (health turns NOT_SERVING).
    pub fn draining(&self) -> CancellationToken {
        self.shared.draining.clone()
    }

    /// Follows whether the log takes writes (the node's health follows it).
    pub fn log_health(&self) -> tokio::sync::watch::Receiver<log::LogHealth> {
        self.shared.log.health()
    }

    /// Fires when another node declared this one gone: it must stop.
    pub fn lease_lost(&self) -> CancellationToken {
        self.shared.lease_lost.clone()
    }

    /// Transactions in memory (not yet ended).
    pub fn live_count(&self) -> usize {
        self.shared.live.len()
    }

    pub fn config(&self) -> &RuntimeConfig {
        &self.shared.config
    }

    /// Begins a transaction, or finds the one begun with the same key (R7).
    /// Answers once its record is durable.
    pub async fn begin(&self, request: BeginTxn) -> Result<Begun, Error> {
        self.begin_as(request, BeginWrite::Wait).await
    }

    /// Begins a transaction that [`Runtime::commit`] is called for at once
    /// (`BeginRequest.commit`): answers without waiting for its record,
    /// which is written while the prepares are out and, with two or more
    /// branches, usually in the decision's own batch (see
    /// `Inner::begin_write`). One fsync on the commit's path, not two.
    ///
    /// Not on a store several nodes share: there, a node that finds no
    /// record of a transaction presumes it aborted (GetOutcome) although
    /// its owner may still commit it, so the record must be durable before
    /// any participant can prepare and ask (DESIGN §6).
    pub async fn begin_to_commit(&self, request: BeginTxn) -> Result<Begun, Error> {
        let write = if self.shared.store.cluster().is_some() {
            BeginWrite::Wait
        } else {
            BeginWrite::BeforeDecision
        };
        self.begin_as(request, write).await
    }

    async fn begin_as(&self, request: BeginTxn, write: BeginWrite) -> Result<Begun, Error> {
        let shared = &self.shared;
        if shared.draining.is_cancelled() {
            return Err(Error::Draining);
        }
        let (key, digest) = (
            request.idempotency_key.clone(),
            request.request_digest.clone(),
        );
        let _claim = match &request.idempotency_key {
            Some(key) => {
                let guard = shared.begin_keys.lock().await;
                if let Some((id, state)) =
                    self.find_key(key, request.request_digest.as_ref()).await?
                {
                    return Ok(Begun {
                        id,
                        created: false,
                        state,
                        branches: Vec::new(),
                    });
                }
                Some(guard)
            }
            None => None,
        };
        let id = shared.config.clock.mint();
        shared.note_begun(id);
        let created_at_ms = shared.config.clock.now_ms();
        let timeout = request.timeout.unwrap_or(shared.config.default_txn_timeout);
        let deadline_ms =
            created_at_ms.saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let header = TxnHeader {
            id,
            created_at_ms,
            deadline_ms,
            idempotency_key: request.idempotency_key.clone(),
            request_digest: request.request_digest.clone(),
            description: request.description.clone(),
        };
        let txn = Arc::new(LiveTxn::new(
            header,
            TwoPhase::new(),
            // Sized once: grown by doubling, a live transaction's branch
            // list held twice the memory it used.
            Vec::with_capacity(request.branches.len()),
            shared.config.default_prepare_timeout,
        ));
        // Branches given with the Begin are enlisted before anyone can learn
        // the id, and recorded in the same write.
        let mut records = vec![Record::Begun {
            id,
            created_at_ms,
            deadline_ms,
            idempotency_key: request.idempotency_key.clone(),
            request_digest: request.request_digest,
            description: request.description,
        }];
        let mut names = Vec::with_capacity(request.branches.len());
        {
            let mut inner = txn.lock();
            for branch in request.branches {
                let (name, record) =
                    add_branch(&mut inner, id, branch, shared.config.max_branches)?;
                names.push(name);
                records.push(record);
            }
        }
        shared.live.insert(id, Arc::clone(&txn));
        if let Some(key) = &request.idempotency_key {
            shared.keys().insert(key.clone(), id);
        }
        // Queued before anyone can learn the id, so every later record of
        // this transaction follows it in the log. A transaction that commits
        // at once with two or more branches queues them lazily: they ride
        // with its decision, one fsync for both (`driver`'s LogDecision);
        // with one branch they are forced, since its one-phase commit is
        // the decision and must follow them.
        let durable = if write == BeginWrite::BeforeDecision && names.len() > 1 {
            shared.log.submit_lazy(records)
        } else {
            shared.log.submit(records)
        };
        drop(_claim);
        if write == BeginWrite::BeforeDecision {
            txn.lock().begin_write = Some(durable);
            crate::metrics::begun(TxnKind::TwoPhase);
            return Ok(Begun {
                id,
                created: true,
                state: TxnState::Active,
                branches: names,
            });
        }
        let forget = {
            let shared = Arc::clone(shared);
            async move {
                let written = durable.wait().await;
                match &written {
                    Ok(()) => txn.mark_recorded(),
                    Err(_) => {
                        shared.forget(&txn);
                        shared.note_doubtful(txn.id);
                    }
                }
                written
            }
        };
        if let Err(error) = self.detached(forget).await? {
            if let Some(key) = &key
                && let Some((id, state)) =
                    self.key_taken_meanwhile(key, digest.as_ref(), id).await?
            {
                return Ok(Begun {
                    id,
                    created: false,
                    state,
                    branches: Vec::new(),
                });
            }
            return Err(Error::Unavailable(format!(
                "could not record the new transaction: {error}"
            )));
        }
        crate::metrics::begun(TxnKind::TwoPhase);
        Ok(Begun {
            id,
            created: true,
            state: TxnState::Active,
            branches: names,
        })
    }

    /// Runs what must follow a forced write to its end even if the request
    /// that started it goes away: a client's deadline or a dropped
    /// connection cancels the request's future, and a saga durably accepted
    /// but never started would wait for the next restart (found by the
    /// simulation). The caller still gets the result when it waits.
    async fn detached<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, Error> {
        self.shared
            .tasks
            .spawn(work)
            .await
            .map_err(|_| Error::ShuttingDown)
    }

    /// The transaction or saga begun with `key`, and its state. Called with
    /// `begin_keys` held, so that no other request claims the key meanwhile.
    /// A key first used with another request is [`Error::KeyReused`] (R7);
    /// one whose first request's digest is unknown (begun before digests
    /// were kept) is taken as the same request, as it always was.
    async fn find_key(
        &self,
        key: &str,
        digest: Option<&RequestDigest>,
    ) -> Result<Option<(TxnId, TxnState)>, Error> {
        let shared = &self.shared;
        let same = |id: TxnId, first: Option<&RequestDigest>| match (first, digest) {
            (Some(first), Some(digest)) if first != digest => Err(Error::KeyReused {
                key: key.to_owned(),
                id,
            }),
            _ => Ok(()),
        };
        let live = shared.keys().get(key).copied();
        if let Some(id) = live {
            let recording = || {
                Error::Unavailable(format!(
                    "the request first made with idempotency key {key:?} is still being \
                     recorded; retry"
                ))
            };
            let recorded = std::sync::atomic::Ordering::SeqCst;
            if let Some(txn) = shared.live.get(&id) {
                same(id, txn.request_digest.as_ref())?;
                // Not an id the log may never hold (R7, R1).
                if !txn.recorded.load(recorded) {
                    return Err(recording());
                }
                return Ok(Some((id, live::state_of(&txn.lock().machine))));
            }
            if let Some(saga) = shared.sagas.get(&id) {
                same(id, saga.header.request_digest.as_ref())?;
                // §3: accepted means durable.
                if !saga.recorded.load(recorded) {
                    return Err(recording());
                }
                return Ok(Some((id, saga.state())));
            }
        }
        match shared.store.by_idempotency_key(key).await? {
            Some(view) => {
                same(view.id, view.request_digest.as_ref())?;
                Ok(Some((view.id, view.state)))
            }
            None => Ok(None),
        }
    }

    /// After a keyed Begin or SubmitSaga failed to record itself: whether
    /// another node took the key meanwhile (R7 across nodes). Each node
    /// serialises its own keyed requests, but two nodes sharing a store can
    /// both find a key free and both write it; the store's unique index
    /// refuses the second, whose records alone fail (the log writer applies
    /// a failed batch one submission at a time), and the loser then answers
    /// with the winner's transaction, as a retry would have.
    ///
    /// The key may also name `own`, the request's own transaction, whose
    /// write went through although it was reported failed (an answer lost
    /// on the way back): that one was forgotten and is ended as doubtful
    /// (`end_doubtful`), so its id is not handed out.
    async fn key_taken_meanwhile(
        &self,
        key: &str,
        digest: Option<&RequestDigest>,
        own: TxnId,
    ) -> Result<Option<(TxnId, TxnState)>, Error> {
        match self.find_key(key, digest).await {
            Ok(found) => Ok(found.filter(|(id, _)| *id != own)),
            Err(error @ Error::KeyReused { .. }) => Err(error),
            // The store that failed the write may fail the read too: the
            // caller reports the write's error.
            Err(_) => Ok(None),
        }
    }

    /// Enlists a branch; answers once the branch is durable.
    pub async fn enlist(&self, id: TxnId, branch: EnlistBranch) -> Result<Enlisted, Error> {
        let shared = &self.shared;
        let txn = self.live_or_finished(id).await?;
        let (name, durable) = {
            let mut inner = txn.lock();
            if let Some(name) = &branch.name
                && let Some(existing) = inner.branches.iter().find(|b| &b.name == name)
            {
                // A retried Enlist: the same branch, not a second one.
                if existing.participant == branch.participant && existing.payload == branch.payload
                {
                    return Ok(Enlisted {
                        name: name.clone(),
                        created: false,
                    });
                }
                return Err(Error::BranchConflict { name: name.clone() });
            }
            let (name, record) = add_branch(&mut inner, id, branch, shared.config.max_branches)?;
            let durable = shared.log.submit(vec![record]);
            (name, durable)
        };
        let settle = {
            let shared = Arc::clone(shared);
            let name = name.clone();
            async move {
                let error = durable.wait().await.err()?;
                if matches!(error, log::LogError::Fenced) {
                    driver::taken_over(&shared, &txn);
                    return Some(Error::TakenOver(txn.id));
                }
                // The branch may or may not be on disk: abort, which is safe
                // either way (R2), rather than commit with a branch we might
                // forget.
                let mut inner = txn.lock();
                let reason = format!("could not record branch {name}: {error}");
                if let Ok(effects) = inner.machine.apply(Event::RollbackRequested {
                    reason: reason.clone(),
                }) {
                    driver::dispatch(&shared, &txn, &mut inner, effects);
                }
                Some(Error::Unavailable(reason))
            }
        };
        if let Some(error) = self.detached(settle).await? {
            return Err(error);
        }
        Ok(Enlisted {
            name,
            created: true,
        })
    }

    /// Runs the commit protocol and answers once the decision is durable
    /// (R1, R4), or once every branch acknowledged it with `wait`.
    pub async fn commit(
        &self,
        id: TxnId,
        wait: bool,
        prepare_timeout: Option<Duration>,
    ) -> Result<Committed, Error> {
        let shared = &self.shared;
        let Some(txn) = shared.live.get(&id).map(|t| Arc::clone(&t)) else {
            return self.finished_outcome(id).await;
        };
        {
            let mut inner = txn.lock();
            if let Some(timeout) = prepare_timeout {
                inner.prepare_timeout = timeout;
            }
            let effects = inner.machine.apply(Event::CommitRequested)?;
            driver::dispatch(shared, &txn, &mut inner, effects);
        }
        let started = std::time::Instant::now();
        let outcome = self.announced(&txn).await?;
        crate::metrics::phase("commit", started.elapsed().as_secs_f64());
        if wait {
            self.until_ended(&txn).await?;
        }
        let state = live::state_of(&txn.lock().machine);
        Ok(Committed { outcome, state })
    }

    /// Rolls back an undecided transaction.
    pub async fn rollback(&self, id: TxnId, reason: String) -> Result<TxnState, Error> {
        let shared = &self.shared;
        let Some(txn) = shared.live.get(&id).map(|t| Arc::clone(&t)) else {
            return match self.finished_outcome(id).await?.outcome {
                Outcome::Aborted { .. } => Ok(TxnState::Aborted),
                Outcome::Committed { .. } => Err(Rejected::AlreadyCommitted.into()),
            };
        };
        {
            let mut inner = txn.lock();
            let effects = inner.machine.apply(Event::RollbackRequested { reason })?;
            driver::dispatch(shared, &txn, &mut inner, effects);
        }
        // A one-phase commit racing the rollback may have won: say so.
        match self.announced(&txn).await? {
            Outcome::Committed { .. } => Err(Rejected::AlreadyCommitted.into()),
            Outcome::Aborted { .. } => Ok(live::state_of(&txn.lock().machine)),
        }
    }

    /// Everything known about one transaction.
    pub async fn transaction(&self, id: TxnId) -> Result<TxnView, Error> {
        if let Some(txn) = self.shared.live.get(&id).map(|t| Arc::clone(&t)) {
            return Ok(txn.view(true));
        }
        if let Some(saga) = self.shared.sagas.get(&id).map(|s| Arc::clone(&s)) {
            return Ok(saga.view(true));
        }
        self.shared
            .store
            .transaction(&id)
            .await?
            .ok_or(Error::NotFound(id))
    }

    /// A page of transactions, newest first; live ones show their current
    /// state.
    pub async fn list(&self, query: &ListQuery) -> Result<Page, Error> {
        // A live transaction's stored state can lag its real one (PREPARING
        // is stored as ACTIVE; a decision or an end becomes visible with its
        // record). So the store is asked for the requested states plus every
        // unfinished one, and the live state decides.
        let mut stored = query.clone();
        if !stored.states.is_empty() {
            for state in UNFINISHED {
                if !stored.states.contains(&state) {
                    stored.states.push(state);
                }
            }
        }
        let mut views = self.shared.store.list(&stored).await?;
        // A full page from the store may have more behind it, whatever the
        // filter below keeps.
        let next = match views.last() {
            Some(last) if views.len() as u32 == query.limit => Some(last.id),
            _ => None,
        };
        for view in &mut views {
            if let Some(txn) = self.shared.live.get(&view.id) {
                *view = txn.view(false);
            } else if let Some(saga) = self.shared.sagas.get(&view.id) {
                *view = saga.view(false);
            }
        }
        if !query.states.is_empty() {
            views.retain(|view| query.states.contains(&view.state));
        }
        if query.needs_attention {
            views.retain(|view| view.needs_attention);
            self.merge_flagged_live(query, &mut views, next);
            if views.len() > query.limit as usize {
                views.truncate(query.limit as usize);
                return Ok(Page {
                    next: views.last().map(|view| view.id),
                    views,
                });
            }
        }
        Ok(Page { views, next })
    }

    /// Adds the live sagas flagged NEEDS_ATTENTION that the store does not
    /// show yet: the flag's record is written without waiting (it decides
    /// nothing), so an operator's queue must not depend on it having landed.
    /// Only ids inside this page's range are added, so pages never repeat.
    fn merge_flagged_live(&self, query: &ListQuery, views: &mut Vec<TxnView>, next: Option<TxnId>) {
        let in_page = |id: TxnId| {
            query.before.is_none_or(|before| id < before) && next.is_none_or(|oldest| id > oldest)
        };
        let flagged: Vec<TxnView> = self
            .shared
            .sagas
            .iter()
            .filter(|saga| in_page(saga.header.id))
            .map(|saga| saga.view(false))
            .filter(|view| view.needs_attention && !views.iter().any(|v| v.id == view.id))
            .collect();
        if flagged.is_empty() {
            return;
        }
        if !query.states.is_empty() {
            views.extend(
                flagged
                    .into_iter()
                    .filter(|v| query.states.contains(&v.state)),
            );
        } else {
            views.extend(flagged);
        }
        views.sort_by_key(|view| std::cmp::Reverse(view.id));
    }

    /// The decision, for a participant holding a prepared branch. R2: an
    /// unknown transaction is aborted.
    pub async fn outcome(&self, id: TxnId) -> Result<Option<Decision>, Error> {
        if let Some(txn) = self.shared.live.get(&id).map(|t| Arc::clone(&t)) {
            let inner = txn.lock();
            return Ok(inner.machine.announced().map(Outcome::decision));
        }
        if self.shared.sagas.contains_key(&id) {
            return Ok(None);
        }
        let view = self.shared.store.transaction(&id).await?;
        Ok(Some(match view.map(|v| v.state) {
            Some(TxnState::Committed | TxnState::Committing | TxnState::Completed) => {
                Decision::Commit
            }
            // Active in the store but not in memory here: on a shared store
            // another node may be deciding it right now, so only the owner
            // may answer (DESIGN §6). On a node's own store it cannot be
            // live anywhere: presumed abort (R2).
            Some(TxnState::Active) if self.shared.store.cluster().is_some() => {
                return Err(self.elsewhere(id).await);
            }
            Some(TxnState::Running | TxnState::Compensating) => return Ok(None),
            _ => Decision::Abort,
        }))
    }

    /// Why a transaction unfinished in the store is not in memory here, as
    /// the error to answer: on a shared store, where it is being driven.
    async fn elsewhere(&self, id: TxnId) -> Error {
        let not_loaded =
            || Error::Unavailable(format!("transaction {id} is not loaded yet; retry"));
        let Some(cluster) = self.shared.store.cluster() else {
            return not_loaded();
        };
        match cluster.owner_of(&id).await {
            Ok(None) => Error::NotFound(id),
            Ok(Some(owner)) if owner.is_self => not_loaded(),
            Ok(Some(owner)) if owner.live && !owner.address.is_empty() => Error::OwnedElsewhere {
                id,
                address: owner.address,
            },
            Ok(Some(owner)) => Error::Unavailable(format!(
                "transaction {id} belongs to coordinator node {}, which is gone; a live node \
                 takes it over within one lease ({} ms); retry",
                owner.node,
                cluster.lease().as_millis()
            )),
            Err(error) => Error::Store(error),
        }
    }

    async fn live_or_finished(&self, id: TxnId) -> Result<Arc<LiveTxn>, Error> {
        if let Some(txn) = self.shared.live.get(&id) {
            return Ok(Arc::clone(&txn));
        }
        match self.shared.store.transaction(&id).await? {
            Some(view) if view.kind == TxnKind::Saga => Err(Error::NotTwoPhase(id)),
            Some(view) if view.state == TxnState::Active => Err(self.elsewhere(id).await),
            Some(view) => Err(Error::Finished {
                id,
                state: view.state,
            }),
            None => Err(Error::NotFound(id)),
        }
    }

    /// The outcome of a transaction no longer in memory.
    async fn finished_outcome(&self, id: TxnId) -> Result<Committed, Error> {
        let view = self
            .shared
            .store
            .transaction(&id)
            .await?
            .ok_or(Error::NotFound(id))?;
        if view.kind == TxnKind::Saga {
            return Err(Error::NotTwoPhase(id));
        }
        let outcome = match view.state {
            TxnState::Committed | TxnState::Committing => Outcome::Committed {
                read_only: view.read_only,
            },
            TxnState::Aborted | TxnState::Aborting => Outcome::Aborted {
                reason: view.reason.unwrap_or_default(),
            },
            _ => return Err(self.elsewhere(id).await),
        };
        Ok(Committed {
            outcome,
            state: view.state,
        })
    }

    /// Waits for the decision to be announced (after R1's durable write).
    /// A transaction that ends unannounced was taken over by another node.
    async fn announced(&self, txn: &LiveTxn) -> Result<Outcome, Error> {
        let mut outcome = txn.outcome.subscribe();
        let mut ended = txn.ended.subscribe();
        let undurable = || txn.undurable.load(std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            biased;
            result = outcome.wait_for(|o| o.is_some() || undurable()) => match result {
                Ok(outcome) => match outcome.clone() {
                    Some(outcome) => Ok(outcome),
                    // Never an outcome that is not durable (R1): say why
                    // there is none yet.
                    None => Err(Error::Unavailable(txn.undurable_reason().unwrap_or_default())),
                },
                Err(_) => Err(Error::ShuttingDown),
            },
            _ = ended.wait_for(|ended| *ended) => match txn.outcome.borrow().clone() {
                Some(outcome) => Ok(outcome),
                None => Err(Error::TakenOver(txn.id)),
            },
            () = self.shared.shutdown.cancelled() => Err(Error::ShuttingDown),
        }
    }

    async fn until_ended(&self, txn: &LiveTxn) -> Result<(), Error> {
        let mut ended = txn.ended.subscribe();
        let undurable = || txn.undurable.load(std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            biased;
            result = ended.wait_for(|ended| *ended || undurable()) => match result {
                Ok(ended) if *ended => Ok(()),
                Ok(_) => Err(Error::Unavailable(txn.undurable_reason().unwrap_or_default())),
                Err(_) => Err(Error::ShuttingDown),
            },
            () = self.shared.shutdown.cancelled() => Err(Error::ShuttingDown),
        }
    }
}

/// Adds a branch to a transaction's state machine and branch list; returns
/// its name and the record that makes it durable (queued by the caller under
/// the same lock, so records keep protocol order).
fn add_branch(
    inner: &mut live::Inner,
    id: TxnId,
    branch: EnlistBranch,
    max_branches: usize,
) -> Result<(String, Record), Error> {
    if inner.branches.len() >= max_branches {
        return Err(Error::TooManyBranches {
            limit: max_branches,
        });
    }
    let idx = inner.machine.enlist()?;
    let name = match branch.name {
        Some(name) => name,
        None => generated_name(&inner.branches, idx),
    };
    inner.branches.push(BranchInfo {
        name: name.clone(),
        participant: branch.participant.clone(),
        payload: branch.payload.clone(),
        vote: None,
        attempts: 0,
        last_error: None,
    });
    let record = Record::Enlisted {
        id,
        idx: u32::try_from(idx).unwrap_or(u32::MAX),
        name: name.clone(),
        participant: branch.participant,
        payload: branch.payload,
    };
    Ok((name, record))
}

/// "b<N>" for the N-th branch, skipping names a client already chose.
fn generated_name(branches: &[BranchInfo], idx: usize) -> String {
    let mut n = idx + 1;
    loop {
        let name = format!("b{n}");
        if !branches.iter().any(|b| b.name == name) {
            return name;
        }
        n += 1;
    }
}
