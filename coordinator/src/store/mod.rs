//! The durable log (DESIGN §5): what the coordinator must never forget.
//!
//! The runtime writes [`Record`]s through the group-commit writer
//! (`runtime::log`), which hands each batch to [`Store::append`] as one
//! database transaction — one fsync for many transactions' records. Reads
//! serve `GetTransaction`, `ListTransactions`, idempotency keys and recovery.
//!
//! Backends: [`sqlite`] (the embedded default: WAL, `synchronous=FULL`),
//! [`postgres`] (`--database-url postgres://...`) and [`memory`]
//! (deterministic simulation only). All pass one contract suite
//! (`contract`).
//! Each keeps its schema in `migrations/<backend>/`, applied with
//! `sqlx::migrate!` at start-up; queries are checked at run time
//! (`query_as` + `FromRow`) so that building needs no database.

use futures::FutureExt;
use futures::future::BoxFuture;

use crate::model::{
    BranchState, Change, Cursor, Destination, MessageVia, OperatorAction, RequestDigest,
    SagaStepDef, StepStatus, TxnId, TxnState, TxnView, VoteKind,
};

pub(crate) mod batch;

/// The states a transaction is stored in while unfinished, as an SQL list
/// (the runtime's `UNFINISHED`): every statement that looks for unfinished
/// transactions names them through this, so that the two SQL stores agree.
macro_rules! unfinished_states {
    () => {
        "('active', 'committing', 'aborting', 'running', 'compensating', 'prepared', 'delivering')"
    };
}
pub(crate) use unfinished_states;

/// Those of them whose transactions have branches (2PC, messages).
macro_rules! unfinished_branch_states {
    () => {
        "('active', 'committing', 'aborting', 'prepared', 'delivering')"
    };
}
pub(crate) use unfinished_branch_states;

/// Those of them a saga is in.
macro_rules! unfinished_saga_states {
    () => {
        "('running', 'compensating')"
    };
}
pub(crate) use unfinished_saga_states;

pub mod memory;
pub mod postgres;
mod reads;
pub(crate) mod rows;
pub mod shards;
pub mod sqlite;
mod sqlite_writer;

#[cfg(any(test, feature = "store-contract"))]
pub mod contract;

#[cfg(test)]
mod contract_tests {
    //! The store contract, run against every backend this crate has.

    use std::sync::Arc;

    use futures::FutureExt;

    use super::contract::{Open, store_contract};
    use super::memory::MemoryStore;
    use super::sqlite::SqliteStore;

    mod sqlite {
        use super::*;

        async fn open() -> (tempfile::TempDir, Open) {
            let dir = tempfile::tempdir().expect("temp dir");
            let path = dir.path().to_owned();
            let open: Open = Box::new(move || {
                let path = path.clone();
                async move {
                    let store = SqliteStore::open_dir(&path).await.expect("open store");
                    Arc::new(store) as Arc<dyn super::super::Store>
                }
                .boxed()
            });
            (dir, open)
        }

        store_contract!(open());

        #[tokio::test]
        async fn the_shard_tables_keep_the_newest_map_and_the_keys_handed_over() {
            let (_dir, open) = open().await;
            super::super::contract::the_shard_tables_keep_the_newest_map_and_the_keys_handed_over(
                open,
            )
            .await;
        }
    }

    mod memory {
        use super::*;

        async fn open() -> ((), Open) {
            let store = MemoryStore::new();
            let open: Open = Box::new(move || {
                let store = store.clone();
                async move { Arc::new(store) as Arc<dyn super::super::Store> }.boxed()
            });
            ((), open)
        }

        store_contract!(open());
    }
}

/// One durable fact about a transaction.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    /// A transaction began (forced before Begin answers).
    Begun {
        id: TxnId,
        created_at_ms: u64,
        deadline_ms: u64,
        idempotency_key: Option<String>,
        request_digest: Option<RequestDigest>,
        description: Option<String>,
    },
    /// A branch enlisted (forced before Enlist answers, so that after a crash
    /// the participant is told the outcome).
    Enlisted {
        id: TxnId,
        idx: u32,
        name: String,
        participant: String,
        payload: Vec<u8>,
    },
    /// R1: the COMMITTED decision. Forced before anyone hears it.
    Decided { id: TxnId, at_ms: u64 },
    /// R2: the ABORTED decision. Written lazily (presumed abort).
    Aborting {
        id: TxnId,
        at_ms: u64,
        reason: String,
    },
    /// The transaction ended: every branch or step settled.
    Ended {
        id: TxnId,
        state: TxnState,
        at_ms: u64,
        read_only: bool,
        reason: Option<String>,
        branches: Vec<BranchEnd>,
        steps: Vec<StepProgress>,
    },
    /// A saga and its whole definition (forced before SubmitSaga answers).
    SagaSubmitted {
        id: TxnId,
        created_at_ms: u64,
        idempotency_key: Option<String>,
        request_digest: Option<RequestDigest>,
        description: Option<String>,
        steps: Vec<SagaStepDef>,
    },
    /// A saga step's status (forced before any step depending on it starts),
    /// with the saga's state and reason as they are now.
    StepRecorded {
        id: TxnId,
        saga_state: TxnState,
        reason: Option<String>,
        step: StepProgress,
    },
    /// The saga needs an operator's attention (lazy).
    NeedsAttention { id: TxnId },
    /// An operator's decision for a branch or step that cannot answer
    /// (forced before it takes effect; kept forever).
    OperatorResolved { id: TxnId, action: OperatorAction },
    /// A transactional message PREPARED, with its destinations as branches
    /// (forced before PrepareMessage answers: the producer must never
    /// publish an id the coordinator could forget). `check_at_ms` is when
    /// its check-back is due (M6), kept as the transaction's deadline.
    MessagePrepared {
        id: TxnId,
        created_at_ms: u64,
        check_at_ms: u64,
        idempotency_key: Option<String>,
        request_digest: Option<RequestDigest>,
        description: Option<String>,
        producer: String,
        ordering_key: Option<String>,
        destinations: Vec<Destination>,
    },
    /// The producer's local transaction committed (M1): PREPARED ->
    /// DELIVERING, applied only to a message still PREPARED. Lazy (§10),
    /// except that a message with an ordering key is delivered only once
    /// this is durable, so that `ordering_seq` (its place among the key's
    /// unfinished messages, M5) survives a restart.
    MessageDecided {
        id: TxnId,
        at_ms: u64,
        via: MessageVia,
        ordering_seq: Option<u64>,
    },
}

/// Where one saga step got to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepProgress {
    pub idx: u32,
    pub status: StepStatus,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub last_error: Option<String>,
}

/// How a branch ended, recorded with [`Record::Ended`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchEnd {
    pub idx: u32,
    pub state: BranchState,
    pub vote: Option<VoteKind>,
    pub attempts: u32,
    pub last_error: Option<String>,
}

/// A transaction that had not ended when the coordinator stopped, with what
/// recovery needs to finish it.
#[derive(Clone, Debug, PartialEq)]
pub struct Unfinished {
    pub view: TxnView,
    /// Branch payloads, in branch order (payloads are not part of views).
    pub payloads: Vec<Vec<u8>>,
    /// A saga's step definitions, in step order; `view.steps` has their
    /// progress.
    pub steps: Vec<SagaStepDef>,
    /// A decided message's place among its key's unfinished messages (M5).
    pub ordering_seq: Option<u64>,
}

/// A page of `ListTransactions`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ListQuery {
    /// Only these states; empty means all.
    pub states: Vec<TxnState>,
    /// Only transactions flagged NEEDS_ATTENTION.
    pub needs_attention: bool,
    /// Only ids older (smaller) than this one: the paging cursor.
    pub before: Option<TxnId>,
    pub limit: u32,
    /// Only transactions whose description or a participant's endpoint
    /// contains this, regardless of ASCII case ([`TxnView::mentions`]).
    pub text: Option<String>,
    /// Only ids at or above this one: the far end of a bounded scan
    /// ([`Store::id_floor`]).
    pub since: Option<TxnId>,
}

/// Why the store failed. The runtime answers UNAVAILABLE: nothing was decided.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the log writer's thread has stopped")]
    WriterStopped,
    /// A batch of the SQLite log failed and nothing of it was applied (a
    /// full disk: "database or disk is full"); the next one may succeed.
    #[error("writing the log at {path} failed: {source}")]
    LogWrite {
        path: String,
        source: rusqlite::Error,
    },
    /// A commit of the log failed with an I/O error: it may or may not be
    /// durable, and the file can no longer be trusted to say (a failed
    /// fsync may drop pages the system had accepted). The node stops
    /// writing and exits; a restart recovers from what the log holds.
    #[error(
        "the log at {path} failed to make a write durable ({cause}); writing again could \
         report durable what is not, so this node stops: restart it to recover from the log"
    )]
    SyncFailed { path: String, cause: String },
    #[error("cannot start the log writer's thread: {0}")]
    WriterThread(std::io::Error),
    #[error("schema migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("cannot prepare the data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    /// Another process serves this SQLite log (one log, one writer).
    #[error(
        "the log {log} is in use by another coordinator (pid {holder}); one log has one \
         writer: stop that node, or give this one its own --data-dir"
    )]
    InUse { log: String, holder: String },
    #[error("the store holds a value it cannot read: {0}")]
    Corrupt(String),
    /// A record broke one of the store's rules (a key or id already taken,
    /// a branch of no transaction); nothing of its batch was applied.
    #[error("the store refused a record: {0}")]
    Refused(String),
    /// A store the node cannot keep its promises on (an in-memory SQLite
    /// database would lose every decision: R1).
    #[error("{0}")]
    Unsafe(String),
}

impl StoreError {
    /// Whether the failure is a record's own (a constraint it breaks), so
    /// that the same records without it may well be written, as opposed to
    /// the store's (a full disk, a lost connection), which would fail them
    /// all alike.
    pub fn is_refused_record(&self) -> bool {
        let sqlite = |error: &rusqlite::Error| {
            matches!(
                error,
                rusqlite::Error::SqliteFailure(e, _)
                    if e.code == rusqlite::ErrorCode::ConstraintViolation
            )
        };
        match self {
            Self::Refused(_) => true,
            Self::Database(sqlx::Error::Database(error)) => {
                !matches!(error.kind(), sqlx::error::ErrorKind::Other)
            }
            Self::Sqlite(error) | Self::LogWrite { source: error, .. } => sqlite(error),
            _ => false,
        }
    }
}

/// What [`Store::append`] did with a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Appended {
    /// Transactions whose records were refused because another node owns
    /// them now (DESIGN §6: fencing). Everything else in the batch was
    /// applied. Always empty on single-node backends.
    pub fenced: Vec<TxnId>,
}

/// A node that owns a transaction, as the shared store knows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    /// The owning node's incarnation id (`nodes.id`).
    pub node: String,
    /// Where clients reach it (`--advertise`).
    pub address: String,
    /// Whether it holds its lease; a node that lost it is being taken over.
    pub live: bool,
    /// Whether that node is this one.
    pub is_self: bool,
}

/// What renewing a lease found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Renewed: this node owns its transactions for another lease period.
    Held,
    /// Another node declared this one gone and took over its transactions
    /// (it was paused or cut off past its lease), or a newer start of the
    /// same node name replaced it. Its writes are fenced; it must stop.
    Lost,
}

/// The side of a shared store that lets several coordinator nodes use it
/// at once (DESIGN §6): leases, ownership and takeover. Single-node
/// backends (SQLite, memory) have none.
pub trait Cluster: Send + Sync {
    /// This node's incarnation id.
    fn node_id(&self) -> &str;

    /// The lease duration nodes agree on.
    fn lease(&self) -> std::time::Duration;

    /// Extends this node's lease by one lease period.
    fn renew(&self) -> BoxFuture<'_, Result<Lease, StoreError>>;

    /// Declares every node whose lease has expired gone, so that
    /// [`Store::claim_unfinished`] takes over its transactions. Returns how
    /// many were declared gone. Only a node that has itself held its lease
    /// for a whole lease period may call it (the runtime's rule): after a
    /// database outage every lease looks expired, and the others must get
    /// the chance to renew first.
    fn expire_others(&self) -> BoxFuture<'_, Result<u64, StoreError>>;

    /// Who owns `id`, if it exists and has an owner.
    fn owner_of<'a>(&'a self, id: &'a TxnId) -> BoxFuture<'a, Result<Option<Owner>, StoreError>>;

    /// Gives up the lease on a clean shutdown, so that other nodes take over
    /// what is left at once rather than after the lease runs out.
    fn leave(&self) -> BoxFuture<'_, Result<(), StoreError>>;
}

/// The durable log. Implementations must make [`Store::append`] atomic and
/// durable: when it returns Ok, every record of the batch survives a crash or
/// power loss; when it returns Err, none of them was applied.
pub trait Store: Send + Sync + 'static {
    /// Applies a batch of records in one database transaction. On a shared
    /// store, records of transactions this node no longer owns are refused
    /// and named in [`Appended::fenced`]; the rest is applied.
    fn append<'a>(&'a self, batch: &'a [Record]) -> BoxFuture<'a, Result<Appended, StoreError>>;

    /// One transaction with its branches, if known.
    fn transaction<'a>(
        &'a self,
        id: &'a TxnId,
    ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>>;

    /// The transaction begun with this idempotency key, if any.
    fn by_idempotency_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>>;

    /// Transactions newest first, without branches.
    fn list<'a>(&'a self, query: &'a ListQuery) -> BoxFuture<'a, Result<Vec<TxnView>, StoreError>>;

    /// Every transaction that has not ended, for recovery.
    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<Unfinished>, StoreError>>;

    /// The changes recorded after `after` (from the oldest the log keeps
    /// when None), oldest first, at most `limit`: the feed WatchTransactions
    /// follows. Only changes that no later write can come before: a reader
    /// that resumes after the last cursor it got misses nothing still kept.
    fn changes<'a>(
        &'a self,
        after: Option<Cursor>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>>;

    /// The newest change's cursor, None before the first: a watch of what
    /// happens from now on starts after it.
    fn newest_change(&self) -> BoxFuture<'_, Result<Option<Cursor>, StoreError>>;

    /// The `n`th id below `before` (below every id when None), newest
    /// first; None when there are fewer. Bounds how much of the log one
    /// listing that cannot use an index (a text search) reads: it reads
    /// `n` transactions at most, from `before` down to this id.
    fn id_floor(
        &self,
        before: Option<TxnId>,
        n: u32,
    ) -> BoxFuture<'_, Result<Option<TxnId>, StoreError>> {
        let _ = (before, n);
        futures::future::ready(Ok(None)).boxed()
    }

    /// The unfinished transactions this node must finish: on a single-node
    /// backend every one ([`Store::unfinished`]); on a shared store those
    /// whose owner is gone (a previous start of this node, a node that left
    /// or was declared gone), which this call makes this node's by raising
    /// their epoch (DESIGN §6).
    fn claim_unfinished(&self) -> BoxFuture<'_, Result<Vec<Unfinished>, StoreError>> {
        self.unfinished()
    }

    /// This database's share of a deployment of several groups (DESIGN
    /// §11): its group, its copy of the shard map, the switches whose keys
    /// were handed over here. None before a node of a sharded group wrote
    /// a map, and on stores that keep none.
    fn shard_map(&self) -> BoxFuture<'_, Result<Option<shards::StoredShards>, StoreError>> {
        futures::future::ready(Ok(None)).boxed()
    }

    /// Writes `map` as the map of `group`, this database's group, when it
    /// is newer than the copy held; returns the version held after. Refused
    /// when the database is another group's log.
    fn put_shard_map<'a>(
        &'a self,
        group: &'a str,
        map: &'a crate::shard::ShardMap,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let _ = (group, map);
        futures::future::ready(Err(no_shard_tables())).boxed()
    }

    /// Up to `limit` idempotency keys after `after`, in key order: those of
    /// this group's transactions and those handed over to it (§11 step 3).
    fn shard_keys<'a>(
        &'a self,
        after: &'a str,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<shards::HandedKey>, StoreError>> {
        let _ = (after, limit);
        futures::future::ready(Err(no_shard_tables())).boxed()
    }

    /// Keeps keys handed over for the switch of `shard` at `from_ms`; with
    /// `last`, records that every key of that switch is here.
    fn adopt_shard_keys<'a>(
        &'a self,
        shard: crate::shard::Shard,
        from_ms: u64,
        keys: &'a [shards::HandedKey],
        last: bool,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = (shard, from_ms, keys, last);
        futures::future::ready(Err(no_shard_tables())).boxed()
    }

    /// The end of this node's writing (its shutdown): no batch is appended
    /// after it returns, and whatever makes the log this node's alone
    /// (the SQLite log's lock) is given up, so that another node — or this
    /// one started again in the same process — may open it at once, even
    /// while some clone of the store is still being dropped.
    fn close(&self) -> BoxFuture<'_, ()> {
        futures::future::ready(()).boxed()
    }

    /// The key handed over to this group, if `key` is one.
    fn handed_over_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<shards::HandedKey>, StoreError>> {
        let _ = key;
        futures::future::ready(Ok(None)).boxed()
    }

    /// Leases and ownership, on a store several nodes share.
    fn cluster(&self) -> Option<&dyn Cluster> {
        None
    }

    /// Removes at most `limit` transactions begun before `begun_before`
    /// that ended before `ended_before_ms` (every participant acknowledged:
    /// presumed abort lets the coordinator forget them, R2), with their
    /// branches and steps. Never one an operator resolved a branch of (its
    /// participant never acknowledged) nor one flagged NEEDS_ATTENTION.
    /// Also forgets, at most `limit` at a time, the oldest changes of the
    /// feed ([`Store::changes`]) recorded before `ended_before_ms`.
    /// Returns how many transactions went.
    fn prune<'a>(
        &'a self,
        begun_before: &'a TxnId,
        ended_before_ms: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        let _ = (begun_before, ended_before_ms, limit);
        futures::future::ready(Ok(0)).boxed()
    }
}

/// What a store without the shard tables answers a write to them.
fn no_shard_tables() -> StoreError {
    StoreError::Unsafe(
        "this store keeps no shard map: a deployment of several groups needs SQLite or \
         PostgreSQL"
            .into(),
    )
}

impl Record {
    /// The transaction this record is about.
    pub fn txn_id(&self) -> TxnId {
        match self {
            Record::Begun { id, .. }
            | Record::Enlisted { id, .. }
            | Record::Decided { id, .. }
            | Record::Aborting { id, .. }
            | Record::Ended { id, .. }
            | Record::SagaSubmitted { id, .. }
            | Record::StepRecorded { id, .. }
            | Record::NeedsAttention { id }
            | Record::OperatorResolved { id, .. }
            | Record::MessagePrepared { id, .. }
            | Record::MessageDecided { id, .. } => *id,
        }
    }

    /// Whether this record creates its transaction's row.
    pub fn creates(&self) -> bool {
        matches!(
            self,
            Record::Begun { .. } | Record::SagaSubmitted { .. } | Record::MessagePrepared { .. }
        )
    }
}
