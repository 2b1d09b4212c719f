//! The runtime's state and its life: how it behaves ([`RuntimeConfig`]),
//! what every part of it shares (`Shared`: the store and its log writer,
//! the participants, the live tables of each protocol, the idempotency
//! keys, the tasks and their cancellation, the watch feed, the shard map
//! followed), and [`Runtime`] itself: drained and shut down here, started
//! by `start` (which spawns every background task). It imports only
//! modules that hold no shared state, so that nothing runs in a circle.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::ExponentialBuilder;
use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::{TxnId, TxnState};
use crate::runtime::clock::{Clock, SystemClock};
use crate::runtime::error::Error;
use crate::runtime::groups::placement::{Placement, Sharding};
use crate::runtime::log::{LogHealth, LogWriter};
use crate::runtime::message::live::{LiveMessage, Orders};
use crate::runtime::participants::{Dialer, Participants, PeerTls};
use crate::runtime::saga::live::LiveSaga;
use crate::runtime::two_phase::live::LiveTxn;
use crate::runtime::watch::feed::{Feed, WATCH_BUFFER};
use crate::store::Store;

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
    pub peer_tls: Option<PeerTls>,
    /// Finished transactions older than this are removed from the log
    /// (`Store::prune`); None keeps them forever.
    pub retention: Option<Duration>,
    /// Coalesce the calls waiting for one participant into `Batch` calls
    /// ([`batch`](crate::runtime::batch)).
    pub batch_calls: bool,
    /// Failed attempts of a forced log write after which the client waiting
    /// on it is answered UNAVAILABLE (the write goes on being retried).
    pub log_write_attempts: u32,
    /// Changes a WatchTransactions stream holds for a client slow to read
    /// them before it ends the stream ([`WATCH_BUFFER`]).
    pub watch_buffer: usize,
    /// This node's group and the shard map it starts with, in a deployment
    /// of several groups (DESIGN §11, [`groups`](crate::runtime::groups)): written to its database
    /// if newer than the copy there, and the newest followed. None: one
    /// group, every transaction this node's group's.
    pub sharding: Option<Sharding>,
    /// Signs every call to a participant with the deployment's key (DESIGN
    /// §12). None: calls go unsigned, which only a participant told to
    /// accept anyone obeys.
    pub signer: Option<Arc<concord_proto::signature::CallSigner>>,
    /// The most transactions one text search reads (ListTransactions'
    /// `text`, which no index serves): past them a page comes back short,
    /// with the window's end as its next page token (DESIGN §12).
    pub text_scan_window: u32,
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
                watch_buffer: WATCH_BUFFER,
                sharding: None,
                signer: None,
                text_scan_window: 10_000,
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
pub(in crate::runtime) const UNFINISHED: [TxnState; 7] = [
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
pub(in crate::runtime) type FixedHasher =
    std::hash::BuildHasherDefault<std::collections::hash_map::DefaultHasher>;

/// The runtime's shared state; drivers hold an `Arc` of it.
pub(crate) struct Shared {
    pub(in crate::runtime) config: RuntimeConfig,
    pub(in crate::runtime) store: Arc<dyn Store>,
    pub(in crate::runtime) log: LogWriter,
    pub(in crate::runtime) participants: Participants,
    pub(in crate::runtime) live: DashMap<TxnId, Arc<LiveTxn>, FixedHasher>,
    pub(in crate::runtime) sagas: DashMap<TxnId, Arc<LiveSaga>, FixedHasher>,
    pub(in crate::runtime) messages: DashMap<TxnId, Arc<LiveMessage>, FixedHasher>,
    /// Each ordering key's unfinished messages, in order (M5).
    pub(in crate::runtime) orders: Orders,
    /// True once the start-up recovery has taken in what the log held: a
    /// keyed message decided before then could be placed ahead of a
    /// recovered one of its key (M5).
    pub(in crate::runtime) recovered: tokio::sync::watch::Sender<bool>,
    /// Idempotency keys of live transactions and sagas (R7). Finished ones
    /// are found in the store.
    pub(in crate::runtime) keys: Mutex<HashMap<String, TxnId>>,
    /// Transactions and sagas whose first write failed, so that they were
    /// forgotten and their client told UNAVAILABLE, but whose records the
    /// store may hold all the same (a commit whose answer was lost on the
    /// way back from PostgreSQL). Nobody learned their ids; the sweeper
    /// ends any the store turns out to hold (see `end_doubtful`).
    pub(in crate::runtime) doubtful: Mutex<Vec<TxnId>>,
    /// Serialises keyed Begins between looking a key up and claiming it.
    pub(in crate::runtime) begin_keys: tokio::sync::Mutex<()>,
    pub(in crate::runtime) tasks: TaskTracker,
    pub(in crate::runtime) shutdown: CancellationToken,
    /// Fired when another node declared this one gone (DESIGN §6): the node
    /// must stop serving.
    pub(in crate::runtime) lease_lost: CancellationToken,
    /// Fired when a graceful shutdown begins: no new transactions.
    pub(in crate::runtime) draining: CancellationToken,
    /// Transactions adopted by recovery or takeover and not ended yet.
    pub(in crate::runtime) recovery_backlog: std::sync::atomic::AtomicUsize,
    /// While the start-up recovery reads the store: the ids of transactions
    /// begun meanwhile, which its read may include and which it must not
    /// adopt (they are live here, or may already have ended). `None` once
    /// the read is taken in.
    pub(in crate::runtime) begun_while_recovering: Mutex<Option<HashSet<TxnId>>>,
    /// WatchTransactions' tailer and fan-out ([`watch`]).
    pub(in crate::runtime) feed: Feed,
    /// Fired to end every watch (the server stopping, or shutdown).
    pub(in crate::runtime) watches_end: CancellationToken,
    /// The shard map this node follows, in a deployment of several groups
    /// (DESIGN §11, [`groups`]).
    pub(in crate::runtime) placement: Option<Placement>,
}

impl Shared {
    /// Keeps the start-up recovery from adopting a transaction begun while
    /// it reads the store. Called before the transaction's first record is
    /// queued.
    pub(in crate::runtime) fn note_begun(&self, id: TxnId) {
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
    pub(in crate::runtime) fn forget(&self, txn: &LiveTxn) {
        self.live.remove(&txn.header.id);
        if let Some(key) = &txn.header.idempotency_key {
            self.keys
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .remove(key);
        }
    }

    /// Drops an ended saga from memory; the store has its end record.
    pub(in crate::runtime) fn forget_saga(&self, saga: &LiveSaga) {
        self.sagas.remove(&saga.header.id);
        if let Some(key) = &saga.header.idempotency_key {
            self.keys().remove(key);
        }
    }

    pub(in crate::runtime) fn note_doubtful(&self, id: TxnId) {
        self.doubtful
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(id);
    }

    pub(in crate::runtime) fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<String, TxnId>> {
        self.keys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The coordinator's runtime. Cheap to clone.
#[derive(Clone)]
pub struct Runtime {
    pub(in crate::runtime) shared: Arc<Shared>,
}

impl Runtime {
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
    pub fn log_health(&self) -> tokio::sync::watch::Receiver<LogHealth> {
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
    pub(in crate::runtime) async fn detached<T: Send + 'static>(
        &self,
        work: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, Error> {
        self.shared
            .tasks
            .spawn(work)
            .await
            .map_err(|_| Error::ShuttingDown)
    }
}
