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
//! - [`participants`]: channels and calls to participants; [`rpc`]: the six
//!   Participant RPCs as one trait, and what a failed call counts as.
//! - [`batch`]: calls to one participant coalesced into `Batch` calls.
//! - [`crash`]: crash points for tests (`failpoints` feature).
//! - [`wait`]: backoff sleeps an operator can cut short.
//! - [`watch`]: WatchTransactions' feed: the log's changes, caught up and live.
//! - [`lease`]: on a store several nodes share, this node's lease and the
//!   takeover of gone nodes' transactions (DESIGN §6).
//! - `error`, `requests`: the runtime's error and its requests and answers
//!   (re-exported here).
//! - `begin`: Begin, and idempotency keys found again (R7). `views`: what
//!   callers read (one transaction, a listing page, a decision for GetOutcome).
//! - [`message`]: a transactional message in memory and the task that
//!   checks back and delivers (DESIGN §10). `send`: PrepareMessage and
//!   SubmitMessage.
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
pub mod dial;
pub mod driver;
pub mod lease;
pub mod live;
pub mod log;
pub mod mailbox;
pub mod message;
pub mod participants;
pub mod rpc;
pub mod saga;
pub mod wait;
pub mod watch;

mod begin;
mod error;
pub mod groups;
mod operator;
mod recovery;
mod requests;
mod send;
mod submit;
mod sweep;
mod views;

use begin::add_branch;
pub use error::Error;
pub use groups::Sharding;
use requests::BeginWrite;
pub use requests::{
    BeginTxn, Begun, Committed, EnlistBranch, Enlisted, MessageAccepted, Page, PrepareMessage,
    SagaAccepted, SubmitSaga,
};

use clock::{Clock, SystemClock};
use live::{BranchInfo, LiveTxn, TxnHeader};
use log::{LogError, LogWriter};
use message::LiveMessage;
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
    /// Live transactions (2PC, sagas, messages) this node holds at most;
    /// a new one past it is refused RESOURCE_EXHAUSTED (DESIGN §12).
    pub max_in_flight: usize,
    /// Recovered transactions driven at once after a restart.
    pub recovery_concurrency: usize,
    /// The address other hosts reach this node at: other nodes forward to
    /// it, clients are pointed at it. Participants are sent it with every
    /// call, but ask only the coordinator they were configured with
    /// (DESIGN §12).
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
    /// Changes a WatchTransactions stream holds for a client slow to read
    /// them before it ends the stream ([`watch::WATCH_BUFFER`]).
    pub watch_buffer: usize,
    /// This node's group and the shard map it starts with, in a deployment
    /// of several groups (DESIGN §11, [`groups`]): written to its database
    /// if newer than the copy there, and the newest followed. None: one
    /// group, every transaction this node's group's.
    pub sharding: Option<Sharding>,
    /// Signs every call to a participant with the deployment's key (DESIGN
    /// §12). None: calls go unsigned, which only a participant told to
    /// accept anyone obeys.
    pub signer: Option<Arc<concord_proto::signature::CallSigner>>,
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
                // About 13 KiB each (docs/performance.md): a little over
                // a gigabyte at the cap.
                max_in_flight: 100_000,
                recovery_concurrency: 256,
                advertised_url: String::new(),
                clock: Arc::new(SystemClock),
                dialer: Dialer::default(),
                peer_tls: None,
                retention: None,
                batch_calls: true,
                log_write_attempts: 6,
                watch_buffer: watch::WATCH_BUFFER,
                sharding: None,
                signer: None,
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
const UNFINISHED: [TxnState; 7] = [
    TxnState::Active,
    TxnState::Committing,
    TxnState::Aborting,
    TxnState::Running,
    TxnState::Compensating,
    TxnState::Prepared,
    TxnState::Delivering,
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
    messages: DashMap<TxnId, Arc<LiveMessage>, FixedHasher>,
    /// Each ordering key's unfinished messages, in order (M5).
    orders: message::Orders,
    /// True once the start-up recovery has taken in what the log held: a
    /// keyed message decided before then could be placed ahead of a
    /// recovered one of its key (M5).
    recovered: tokio::sync::watch::Sender<bool>,
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
    /// WatchTransactions' tailer and fan-out ([`watch`]).
    feed: watch::Feed,
    /// Fired to end every watch (the server stopping, or shutdown).
    watches_end: CancellationToken,
    /// The shard map this node follows, in a deployment of several groups
    /// (DESIGN §11, [`groups`]).
    placement: Option<groups::Placement>,
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
        // First, before any task is spawned: a database that refuses the
        // node's group stops the start with nothing left running.
        let placement = groups::settle(&*store, config.sharding.clone()).await?;
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let log = LogWriter::start(Arc::clone(&store), &tasks, shutdown.clone());
        let participants = Participants::new(
            config.connect_timeout,
            config.advertised_url.clone(),
            config.dialer.clone(),
            config.peer_tls.clone(),
        )
        .with_signer(config.signer.clone())
        .with_batching(config.batch_calls, tasks.clone(), shutdown.clone());
        let watches_end = shutdown.child_token();
        let shared = Arc::new(Shared {
            config,
            store,
            log,
            participants,
            live: DashMap::default(),
            sagas: DashMap::default(),
            messages: DashMap::default(),
            orders: message::Orders::default(),
            recovered: tokio::sync::watch::channel(false).0,
            keys: Mutex::new(HashMap::new()),
            doubtful: Mutex::new(Vec::new()),
            begin_keys: tokio::sync::Mutex::new(()),
            tasks,
            shutdown,
            lease_lost: CancellationToken::new(),
            draining: CancellationToken::new(),
            recovery_backlog: std::sync::atomic::AtomicUsize::new(0),
            begun_while_recovering: Mutex::new(Some(HashSet::new())),
            feed: watch::Feed::default(),
            watches_end,
            placement,
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
        if runtime.shared.placement.is_some() {
            runtime
                .shared
                .tasks
                .spawn(groups::follow(Arc::clone(&runtime.shared)));
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
        // Its tasks are done: nothing of this node writes again, and the
        // log is free for the next start even while a connection's last
        // clone of the runtime is still being dropped.
        self.shared.store.close().await;
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
                .filter(|txn| txn.progress.borrow().outcome.is_none())
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

    /// Enlists a branch; answers once the branch is durable.
    pub async fn enlist(&self, id: TxnId, branch: EnlistBranch) -> Result<Enlisted, Error> {
        self.in_group(id)?;
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
        self.in_group(id)?;
        let shared = &self.shared;
        let Some(txn) = shared.live.get(&id).map(|t| Arc::clone(&t)) else {
            // Boxed: a store read's future, inline, would size every
            // waiting Commit's future for the whole wait.
            return Box::pin(self.finished_outcome(id)).await;
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
        self.in_group(id)?;
        let shared = &self.shared;
        let Some(txn) = shared.live.get(&id).map(|t| Arc::clone(&t)) else {
            return match Box::pin(self.finished_outcome(id)).await?.outcome {
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

    /// Waits for the decision to be announced (after R1's durable write).
    /// A transaction that ends unannounced was taken over by another node.
    async fn announced(&self, txn: &LiveTxn) -> Result<Outcome, Error> {
        let mut progress = txn.progress.subscribe();
        let undurable = || txn.undurable.load(std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            biased;
            result = progress.wait_for(|p| p.outcome.is_some() || p.ended || undurable()) => {
                match result {
                    Ok(progress) => match (&progress.outcome, progress.ended) {
                        (Some(outcome), _) => Ok(outcome.clone()),
                        // Ended unannounced: another node took it over.
                        (None, true) => Err(Error::TakenOver(txn.id)),
                        // Never an outcome that is not durable (R1): say why
                        // there is none yet.
                        (None, false) => {
                            Err(Error::Unavailable(txn.undurable_reason().unwrap_or_default()))
                        }
                    },
                    Err(_) => Err(Error::ShuttingDown),
                }
            }
            () = self.shared.shutdown.cancelled() => Err(Error::ShuttingDown),
        }
    }

    async fn until_ended(&self, txn: &LiveTxn) -> Result<(), Error> {
        let mut progress = txn.progress.subscribe();
        let undurable = || txn.undurable.load(std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            biased;
            result = progress.wait_for(|p| p.ended || undurable()) => match result {
                Ok(progress) if progress.ended => Ok(()),
                Ok(_) => Err(Error::Unavailable(txn.undurable_reason().unwrap_or_default())),
                Err(_) => Err(Error::ShuttingDown),
            },
            () = self.shared.shutdown.cancelled() => Err(Error::ShuttingDown),
        }
    }
}
