//! The embedded default store: one SQLite file in WAL mode with
//! `synchronous=FULL`, so a committed batch has been fsynced (R1).
//!
//! Writes come only from the group-commit writer, one batch per database
//! transaction, regrouped into a few statements (`store::batch`), on a
//! connection of its own; reads run concurrently on the pool's connections
//! (WAL lets readers proceed while the writer commits).

use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, SqlitePool};
use tokio::sync::Mutex;

use super::batch::{Group, Grouped};
use super::rows::{
    ActionRow, BranchRow, OwnedBranchRow, OwnedStepRow, StepRow, TxnRow, actions, assemble,
    assemble_unfinished, attach_actions, parse_id, to_i64,
};
use super::{Appended, ListQuery, Record, Store, StoreError, Unfinished};
use crate::model::{TxnId, TxnKind, TxnView};

/// The database file inside `--data-dir`.
pub const DATABASE_FILE: &str = "concord.db";

/// Readers' connections (the writer has its own).
const POOL_CONNECTIONS: u32 = 8;

/// How long a statement waits for a lock before failing; only start-up and an
/// operator's tool ever contend with the single writer.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite-backed log.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// The log writer's connection, opened on first use and again after a
    /// failure that may have broken it. Always the same connection, so its
    /// page cache and prepared statements stay warm: batches on the pool's
    /// connections went round them in turn (sqlx hands a connection back
    /// from a spawned task, so the next batch often found it still away),
    /// and each found its cache outdated by the others' writes, dropped it
    /// and read the pages again (about a tenth of SQLite's time under load,
    /// measured with `perf`).
    writer: Arc<Mutex<Option<SqliteConnection>>>,
    options: SqliteConnectOptions,
}

impl SqliteStore {
    /// Opens (creating if needed) `<data_dir>/concord.db` and applies
    /// migrations.
    pub async fn open_dir(data_dir: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join(DATABASE_FILE))
            .create_if_missing(true);
        Self::open(options).await
    }

    /// Opens a `sqlite://` URL (as given to `--database-url`).
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
        Self::open(options).await
    }

    async fn open(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        let options = options
            .journal_mode(SqliteJournalMode::Wal)
            // R1: a commit returns only after the WAL is fsynced.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let pool = SqlitePoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .min_connections(1)
            // A file database's connection does not go stale.
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self {
            pool,
            writer: Arc::default(),
            options,
        })
    }

    /// The underlying pool, for tests that inspect the file directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn append_batch(&self, batch: &[Record]) -> Result<Appended, StoreError> {
        let groups = Grouped::new(batch).encoded()?;
        let mut writer = self.writer.lock().await;
        let connection = match writer.as_mut() {
            Some(connection) => connection,
            None => writer.insert(self.options.connect().await?),
        };
        if let [(group, rows)] = groups.as_slice() {
            // One statement is its own transaction (autocommit, fsynced the
            // same): no BEGIN and COMMIT round trips. A lone decision at low
            // load is such a batch, on the commit's critical path.
            let outcome = sqlx::query(statement(*group))
                .bind(rows.as_str())
                .execute(&mut *connection)
                .await;
            if let Err(error) = outcome {
                // No transaction is left open; a connection that failed for
                // any reason but the database's refusal is replaced.
                if !matches!(error, sqlx::Error::Database(_)) {
                    *writer = None;
                }
                return Err(error.into());
            }
            return Ok(Appended::default());
        }
        // Several statements: the present groups' statements, with their
        // BEGIN and COMMIT, in one call to SQLite's thread. Each call is a
        // round trip between threads, which cost more than SQLite's own
        // work; sqlx's `begin()` and `commit()` were two more per batch, on
        // every commit's critical path. An absent group's statement is left
        // out, not run on an empty array: each statement run is one more
        // answer handed back across the threads.
        let present: Vec<Group> = groups.iter().map(|(group, _)| *group).collect();
        let mut whole = sqlx::query(batch_text(&present));
        for (_, rows) in groups {
            whole = whole.bind(rows);
        }
        if let Err(error) = whole.execute(&mut *connection).await {
            // A statement after BEGIN failed, so the transaction may still
            // be open: undo it on this connection, or replace the
            // connection, so that nothing of the batch is applied (R1: its
            // waiters hear it failed) and the next batch does not inherit
            // it.
            if sqlx::query("ROLLBACK")
                .execute(&mut *connection)
                .await
                .is_err()
            {
                *writer = None;
            }
            return Err(error.into());
        }
        Ok(Appended::default())
    }

    async fn load(&self, id: &TxnId) -> Result<Option<TxnView>, StoreError> {
        let row: Option<TxnRow> = sqlx::query_as(
            "SELECT t.*, (SELECT COUNT(*) FROM branches b WHERE b.txn_id = t.id) AS branch_count
             FROM transactions t WHERE t.id = ?1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let branches: Vec<BranchRow> = sqlx::query_as(
            "SELECT idx, name, participant, payload, state, vote, attempts, last_error
             FROM branches WHERE txn_id = ?1 ORDER BY idx",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let steps: Vec<StepRow> = if row.kind == TxnKind::Saga.as_str() {
            sqlx::query_as("SELECT * FROM saga_steps WHERE txn_id = ?1 ORDER BY idx")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        let mut view = assemble(row, branches, steps)?.view;
        let rows: Vec<ActionRow> = sqlx::query_as(
            "SELECT * FROM operator_actions WHERE txn_id = ?1 ORDER BY at_ms, rowid",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        view.operator_actions = actions(rows)?;
        Ok(Some(view))
    }

    async fn load_by_key(&self, key: &str) -> Result<Option<TxnView>, StoreError> {
        let id: Option<(String,)> =
            sqlx::query_as("SELECT id FROM transactions WHERE idempotency_key = ?1")
                .bind(key)
                .fetch_optional(&self.pool)
                .await?;
        match id {
            Some((id,)) => self.load(&parse_id(&id)?).await,
            None => Ok(None),
        }
    }

    async fn load_list(&self, query: &ListQuery) -> Result<Vec<TxnView>, StoreError> {
        // The state filter travels as one ",a,b," string so the SQL stays a
        // static statement.
        let states = if query.states.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
            format!(",{},", names.join(","))
        };
        let before = query.before.map(|id| id.to_string()).unwrap_or_default();
        let rows: Vec<TxnRow> = sqlx::query_as(
            "SELECT t.*, (SELECT COUNT(*) FROM branches b WHERE b.txn_id = t.id) AS branch_count
             FROM transactions t
             WHERE (?1 = '' OR instr(?1, ',' || t.state || ',') > 0)
               AND (?2 = '' OR t.id < ?2)
               AND (?4 = 0 OR t.needs_attention = 1)
             ORDER BY t.id DESC
             LIMIT ?3",
        )
        .bind(states)
        .bind(before)
        .bind(i64::from(query.limit))
        .bind(query.needs_attention)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(TxnRow::into_view).collect()
    }

    /// Three queries, whatever the number of unfinished transactions.
    async fn load_unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        let rows: Vec<TxnRow> = sqlx::query_as(
            "SELECT t.*, (SELECT COUNT(*) FROM branches b WHERE b.txn_id = t.id) AS branch_count
             FROM transactions t
             WHERE t.state IN ('active', 'committing', 'aborting', 'running', 'compensating')
             ORDER BY t.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let branches: Vec<OwnedBranchRow> = sqlx::query_as(
            "SELECT b.txn_id, b.idx, b.name, b.participant, b.payload, b.state, b.vote,
                    b.attempts, b.last_error
             FROM branches b JOIN transactions t ON t.id = b.txn_id
             WHERE t.state IN ('active', 'committing', 'aborting')
             ORDER BY b.txn_id, b.idx",
        )
        .fetch_all(&self.pool)
        .await?;
        let steps: Vec<OwnedStepRow> = sqlx::query_as(
            "SELECT s.* FROM saga_steps s JOIN transactions t ON t.id = s.txn_id
             WHERE t.state IN ('running', 'compensating')
             ORDER BY s.txn_id, s.idx",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut unfinished = assemble_unfinished(rows, branches, steps)?;
        let actions: Vec<ActionRow> = sqlx::query_as(
            "SELECT a.* FROM operator_actions a JOIN transactions t ON t.id = a.txn_id
             WHERE t.state IN ('active', 'committing', 'aborting', 'running', 'compensating')
             ORDER BY a.at_ms, a.rowid",
        )
        .fetch_all(&self.pool)
        .await?;
        attach_actions(&mut unfinished, actions)?;
        Ok(unfinished)
    }
}

impl Store for SqliteStore {
    fn append<'a>(&'a self, batch: &'a [Record]) -> BoxFuture<'a, Result<Appended, StoreError>> {
        self.append_batch(batch).boxed()
    }

    fn transaction<'a>(
        &'a self,
        id: &'a TxnId,
    ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
        self.load(id).boxed()
    }

    fn by_idempotency_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
        self.load_by_key(key).boxed()
    }

    fn list<'a>(&'a self, query: &'a ListQuery) -> BoxFuture<'a, Result<Vec<TxnView>, StoreError>> {
        self.load_list(query).boxed()
    }

    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<Unfinished>, StoreError>> {
        self.load_unfinished().boxed()
    }

    fn prune<'a>(
        &'a self,
        begun_before: &'a TxnId,
        ended_before_ms: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let mut tx = self.pool.begin().await?;
            let doomed: Vec<(String,)> = sqlx::query_as(PRUNABLE)
                .bind(begun_before.to_string())
                .bind(to_i64(ended_before_ms))
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
            if doomed.is_empty() {
                return Ok(0);
            }
            let ids = serde_json::to_string(&doomed.iter().map(|(id,)| id).collect::<Vec<_>>())
                .map_err(|e| StoreError::Corrupt(format!("cannot encode ids: {e}")))?;
            for statement in [
                "DELETE FROM branches WHERE txn_id IN (SELECT value FROM json_each(?1))",
                "DELETE FROM saga_steps WHERE txn_id IN (SELECT value FROM json_each(?1))",
                "DELETE FROM transactions WHERE id IN (SELECT value FROM json_each(?1))",
            ] {
                sqlx::query(statement).bind(&ids).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(doomed.len() as u64)
        }
        .boxed()
    }
}

/// Finished transactions old enough to forget (see [`Store::prune`]).
const PRUNABLE: &str = "
    SELECT t.id FROM transactions t
    WHERE t.id < ?1
      AND t.state IN ('committed', 'aborted', 'completed', 'compensated', 'failed')
      AND t.ended_at_ms < ?2
      AND t.needs_attention = 0
      AND NOT EXISTS (SELECT 1 FROM operator_actions a WHERE a.txn_id = t.id)
    ORDER BY t.id
    LIMIT ?3";

/// The SQL text of one database transaction that writes `groups` (in
/// [`Group::ALL`] order) with their statements, the N-th `?` being the rows
/// of the N-th group; made once per set of groups and kept, so that sqlx's
/// statement cache (keyed by the text) prepares each set once per
/// connection. Anonymous `?`, not `?N`: sqlx binds a multi-statement text's
/// anonymous parameters in order, but skips a `?N` that follows a gap in
/// the numbering. `BEGIN IMMEDIATE` takes the write lock up front, so a
/// batch never fails halfway for want of it (an operator's tool or the
/// retention sweep may hold it for a moment; the busy timeout waits).
fn batch_text(groups: &[Group]) -> &'static str {
    static TEXTS: [OnceLock<String>; 1 << Group::ALL.len()] =
        [const { OnceLock::new() }; 1 << Group::ALL.len()];
    let set = groups
        .iter()
        .fold(0usize, |set, group| set | 1 << group.position());
    TEXTS[set].get_or_init(|| {
        let statements = groups
            .iter()
            .map(|group| statement(*group).replace("?1", "?"))
            .collect::<Vec<_>>()
            .join(";\n");
        format!("BEGIN IMMEDIATE;\n{statements};\nCOMMIT")
    })
}

/// The statement that writes one group of a batch (`store::batch`): each
/// takes the group's rows as one JSON array and spreads it with
/// `jsonb_each`, which hands each row to `->>` as JSONB: `json_each` handed
/// it over as text, parsed again by each `->>` (over a third of the
/// writer's CPU under load, measured with `perf`).
fn statement(group: Group) -> &'static str {
    match group {
        Group::Transactions => INSERT_TRANSACTIONS,
        Group::Branches => INSERT_BRANCHES,
        Group::Steps => INSERT_STEPS,
        Group::Decided => DECIDE,
        Group::Aborting => ABORT,
        Group::SagaStates => SAGA_STATE,
        Group::StepProgress => STEP_PROGRESS,
        Group::Attention => NEEDS_ATTENTION,
        Group::OperatorActions => OPERATOR_ACTIONS,
        Group::Ended => END,
        Group::BranchEnds => BRANCH_END,
    }
}

const INSERT_TRANSACTIONS: &str = "
    INSERT INTO transactions
      (id, kind, state, created_at_ms, deadline_ms, idempotency_key, description)
    SELECT j.value ->> 'id', j.value ->> 'kind', j.value ->> 'state', j.value ->> 'created',
           j.value ->> 'deadline', j.value ->> 'key', j.value ->> 'description'
    FROM jsonb_each(?1) AS j";

// `unhex('')` is NULL, not an empty blob: an empty payload stays empty.
const INSERT_BRANCHES: &str = "
    INSERT INTO branches (txn_id, idx, name, participant, payload, state)
    SELECT j.value ->> 'txn', j.value ->> 'idx', j.value ->> 'name', j.value ->> 'participant',
           COALESCE(unhex(j.value ->> 'payload'), X''), 'enlisted'
    FROM jsonb_each(?1) AS j";

const INSERT_STEPS: &str = "
    INSERT INTO saga_steps
      (txn_id, idx, name, participant, kind, action, compensation, depends_on,
       attempt_timeout_ms, retry_initial_ms, retry_multiplier, retry_max_ms,
       retry_max_attempts, retry_jitter)
    SELECT j.value ->> 'txn', j.value ->> 'idx', j.value ->> 'name', j.value ->> 'participant',
           j.value ->> 'kind', COALESCE(unhex(j.value ->> 'action'), X''),
           CASE WHEN j.value ->> 'compensation' IS NULL THEN NULL
                ELSE COALESCE(unhex(j.value ->> 'compensation'), X'') END,
           j.value ->> 'depends_on', j.value ->> 'timeout', j.value ->> 'initial',
           j.value ->> 'multiplier', j.value ->> 'max', j.value ->> 'attempts',
           j.value ->> 'jitter'
    FROM jsonb_each(?1) AS j";

// R1/R2: a decision applies only to a transaction still active.
const DECIDE: &str = "
    UPDATE transactions SET state = 'committing', decided_at_ms = j.value ->> 'at'
    FROM jsonb_each(?1) AS j
    WHERE transactions.id = j.value ->> 'id' AND transactions.state = 'active'";

const ABORT: &str = "
    UPDATE transactions
    SET state = 'aborting', decided_at_ms = j.value ->> 'at', reason = j.value ->> 'reason'
    FROM jsonb_each(?1) AS j
    WHERE transactions.id = j.value ->> 'id' AND transactions.state = 'active'";

// Most step records leave the saga's state and reason as they were
// (RUNNING, none): such rows are looked up but not rewritten.
const SAGA_STATE: &str = "
    UPDATE transactions SET state = j.value ->> 'state', reason = j.value ->> 'reason'
    FROM jsonb_each(?1) AS j
    WHERE transactions.id = j.value ->> 'id'
      AND (transactions.state, transactions.reason)
          IS NOT (j.value ->> 'state', j.value ->> 'reason')";

const STEP_PROGRESS: &str = "
    UPDATE saga_steps
    SET state = j.value ->> 'state', attempts = j.value ->> 'attempts',
        compensation_attempts = j.value ->> 'compensations', last_error = j.value ->> 'error'
    FROM jsonb_each(?1) AS j
    WHERE saga_steps.txn_id = j.value ->> 'txn' AND saga_steps.idx = j.value ->> 'idx'";

const OPERATOR_ACTIONS: &str = "
    INSERT INTO operator_actions (txn_id, at_ms, branch, outcome, reason, operator)
    SELECT j.value ->> 'txn', j.value ->> 'at', j.value ->> 'branch', j.value ->> 'outcome',
           j.value ->> 'reason', j.value ->> 'operator'
    FROM jsonb_each(?1) AS j";

const NEEDS_ATTENTION: &str = "
    UPDATE transactions SET needs_attention = 1
    WHERE id IN (SELECT value FROM json_each(?1))";

// The decided_at stamp stays the decision's; an abort decided and ended in
// one step gets both. A saga that needed attention while retrying no longer
// does once it ended, unless it FAILED.
const END: &str = "
    UPDATE transactions
    SET state = j.value ->> 'state', ended_at_ms = j.value ->> 'at',
        read_only = j.value ->> 'read_only', reason = j.value ->> 'reason',
        decided_at_ms = COALESCE(transactions.decided_at_ms, j.value ->> 'at'),
        needs_attention = (j.value ->> 'state' = 'failed')
    FROM jsonb_each(?1) AS j
    WHERE transactions.id = j.value ->> 'id'";

const BRANCH_END: &str = "
    UPDATE branches
    SET state = j.value ->> 'state', vote = j.value ->> 'vote',
        attempts = j.value ->> 'attempts', last_error = j.value ->> 'error'
    FROM jsonb_each(?1) AS j
    WHERE branches.txn_id = j.value ->> 'txn' AND branches.idx = j.value ->> 'idx'";
