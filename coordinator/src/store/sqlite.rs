//! The embedded default store: one SQLite file in WAL mode with
//! `synchronous=FULL`, so a committed batch has been fsynced (R1).
//!
//! Writes come only from the group-commit writer, one batch per database
//! transaction, on a thread and connection of their own
//! (`store::sqlite_writer`); reads run concurrently on sqlx's pool (WAL lets
//! readers proceed while the writer commits).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

use super::reads::{Reads, store_reads};
use super::rows::{
    ActionRow, OwnedBranchRow, OwnedStepRow, TxnRow, assemble_unfinished, attach_actions, to_i64,
};
use super::sqlite_writer::WriterThread;
use super::{Appended, ListQuery, Record, Store, StoreError, Unfinished};
use crate::model::{Change, Cursor, TxnId, TxnView};

/// The database file inside `--data-dir`.
pub const DATABASE_FILE: &str = "concord.db";

/// Readers' connections (the writer has its own).
const POOL_CONNECTIONS: u32 = 8;

/// How long a statement waits for a lock before failing; only start-up and an
/// operator's tool ever contend with the single writer.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite-backed log.
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Every batch goes to the same connection, so its page cache and
    /// prepared statements stay warm: batches on the pool's connections
    /// went round them in turn (sqlx hands a connection back from a spawned
    /// task, so the next batch often found it still away), and each found
    /// its cache outdated by the others' writes, dropped it and read the
    /// pages again (about a tenth of SQLite's time under load, `perf`).
    /// Holds the log's lock ([`LogLock`]: one log, one writer) for as long
    /// as it runs, so a second node on the same file refuses to start
    /// instead of deciding the same transactions beside this one.
    writer: WriterThread,
}

/// An exclusive OS lock (`flock`) on `<log file>.lock`, which also holds
/// the pid of the process that took it, to name it in the refusal. The
/// kernel releases it when the process dies, however it dies: a SIGKILLed
/// node leaves no stale lock behind.
#[derive(Debug)]
struct LogLock {
    _held: std::fs::File,
}

impl LogLock {
    fn take(log: &Path) -> Result<Self, StoreError> {
        use std::io::{Read, Seek, Write};
        let mut path = log.as_os_str().to_owned();
        path.push(".lock");
        let path = std::path::PathBuf::from(path);
        let failed = |source| StoreError::DataDir {
            path: path.display().to_string(),
            source,
        };
        // The usual mistake, said plainly: a log in a directory not made.
        if let Some(parent) = log.parent().filter(|p| !p.as_os_str().is_empty())
            && !parent.is_dir()
        {
            return Err(StoreError::DataDir {
                path: parent.display().to_string(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such directory: make it first, or give another path",
                ),
            });
        }
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(failed)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(StoreError::InUse {
                    log: log.display().to_string(),
                    holder: holder.trim().to_owned(),
                });
            }
            Err(std::fs::TryLockError::Error(source)) => return Err(failed(source)),
        }
        file.set_len(0).map_err(failed)?;
        file.rewind().map_err(failed)?;
        writeln!(file, "{}", std::process::id()).map_err(failed)?;
        Ok(Self { _held: file })
    }
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

    /// Opens a `sqlite://` URL (as given to `--database-url`). An
    /// in-memory database is refused: it would lose every decision with the
    /// process (R1).
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        if url.contains(":memory:") || url.contains("mode=memory") {
            return Err(StoreError::Unsafe(format!(
                "{url} is an in-memory database, which loses every decision when the \
                 process ends; give a file (sqlite:///path/to/log.db)"
            )));
        }
        let options = SqliteConnectOptions::from_str(url)?.create_if_missing(true);
        Self::open(options).await
    }

    async fn open(options: SqliteConnectOptions) -> Result<Self, StoreError> {
        // Before anything touches the file: a second node must not even
        // run migrations beside the first.
        let lock = LogLock::take(options.get_filename())?;
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
        let writer = WriterThread::start(options.get_filename(), BUSY_TIMEOUT, lock).await?;
        Ok(Self { pool, writer })
    }

    /// The underlying pool, for tests that inspect the file directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn append_batch(&self, batch: &[Record]) -> Result<Appended, StoreError> {
        // The thread needs the records as its own; a copy costs far less
        // than the JSON the rows used to travel as.
        self.writer.append(batch.to_vec()).await?;
        Ok(Appended::default())
    }

    /// Three queries, whatever the number of unfinished transactions.
    async fn load_unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        let rows: Vec<TxnRow> = sqlx::query_as(concat!(
            "SELECT t.*, ((SELECT COUNT(*) FROM branches b WHERE b.txn_id = t.id)
                + (SELECT COUNT(*) FROM saga_steps s WHERE s.txn_id = t.id)) AS branch_count
             FROM transactions t
             WHERE t.state IN ",
            crate::store::unfinished_states!(),
            "
             ORDER BY t.id"
        ))
        .fetch_all(&self.pool)
        .await?;
        let branches: Vec<OwnedBranchRow> = sqlx::query_as(concat!(
            "SELECT b.txn_id, b.idx, b.name, b.participant, b.payload, b.state, b.vote,
                    b.attempts, b.last_error
             FROM branches b JOIN transactions t ON t.id = b.txn_id
             WHERE t.state IN ",
            crate::store::unfinished_branch_states!(),
            "
             ORDER BY b.txn_id, b.idx"
        ))
        .fetch_all(&self.pool)
        .await?;
        let steps: Vec<OwnedStepRow> = sqlx::query_as(concat!(
            "SELECT s.* FROM saga_steps s JOIN transactions t ON t.id = s.txn_id
             WHERE t.state IN ",
            crate::store::unfinished_saga_states!(),
            "
             ORDER BY s.txn_id, s.idx"
        ))
        .fetch_all(&self.pool)
        .await?;
        let mut unfinished = assemble_unfinished(rows, branches, steps)?;
        let actions: Vec<ActionRow> = sqlx::query_as(concat!(
            "SELECT a.* FROM operator_actions a JOIN transactions t ON t.id = a.txn_id
             WHERE t.state IN ",
            crate::store::unfinished_states!(),
            "
             ORDER BY a.at_ms, a.rowid"
        ))
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

    fn close(&self) -> BoxFuture<'_, ()> {
        async move {
            // The writer's thread takes the lock with it when it ends; the
            // readers' connections go too (pruning writes through them).
            self.writer.close().await;
            self.pool.close().await;
        }
        .boxed()
    }

    // transaction, by_idempotency_key, list, changes, newest_change: the
    // reads both SQL stores share.
    store_reads!();

    // shard_map, put_shard_map, shard_keys, adopt_shard_keys,
    // handed_over_key: the tables of a deployment of several groups.
    super::shards::store_shards!();

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
            // The change feed's oldest rows, by seq (its primary key): a
            // bounded walk from the front, never a scan of the table. Never
            // the newest row: a rowid is then never handed out again.
            sqlx::query(
                "DELETE FROM txn_changes
                 WHERE seq IN (SELECT seq FROM txn_changes ORDER BY seq LIMIT ?2)
                   AND at_ms < ?1
                   AND seq < (SELECT MAX(seq) FROM txn_changes)",
            )
            .bind(to_i64(ended_before_ms))
            .bind(i64::from(limit))
            .execute(&mut *tx)
            .await?;
            let doomed: Vec<(String,)> = sqlx::query_as(PRUNABLE)
                .bind(begun_before.to_string())
                .bind(to_i64(ended_before_ms))
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
            if doomed.is_empty() {
                tx.commit().await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{BranchState, StepStatus, TxnState};

    /// A log written before migration 0004 (rowid tables) reads the same
    /// after it, and takes new records with the same rules.
    #[tokio::test]
    async fn a_log_from_before_the_rowid_rebuild_reads_the_same_after_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let earlier = dir.path().join("migrations");
        std::fs::create_dir(&earlier).expect("dir");
        let shipped = Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        for name in [
            "0001_transactions.sql",
            "0002_sagas.sql",
            "0003_operator_actions.sql",
        ] {
            std::fs::copy(shipped.join(name), earlier.join(name)).expect("copy");
        }
        let url = format!("sqlite://{}", dir.path().join(DATABASE_FILE).display());
        let options = SqliteConnectOptions::from_str(&url)
            .expect("url")
            .create_if_missing(true);
        let old = SqlitePool::connect_with(options).await.expect("open");
        sqlx::migrate::Migrator::new(earlier.as_path())
            .await
            .expect("migrations")
            .run(&old)
            .await
            .expect("migrate to 0003");
        let (txn, saga) = (TxnId::mint(), TxnId::mint());
        for statement in [
            "INSERT INTO transactions (id, kind, state, created_at_ms, deadline_ms,
                 decided_at_ms, idempotency_key, description)
             VALUES (?1, 'two_phase', 'committing', 1, 30001, 5, 'key-1', 'transfer')",
            "INSERT INTO branches (txn_id, idx, name, participant, payload, state, attempts)
             VALUES (?1, 0, 'debit', 'http://a', X'0102', 'committed', 1),
                    (?1, 1, 'credit', 'http://b', X'', 'prepared', 0)",
            "INSERT INTO operator_actions (txn_id, at_ms, branch, outcome, reason, operator)
             VALUES (?1, 9, 'credit', 'committed', 'checked by hand', 'ana')",
            "INSERT INTO transactions (id, kind, state, created_at_ms, deadline_ms, needs_attention)
             VALUES (?2, 'saga', 'running', 2, 0, 1)",
            "INSERT INTO saga_steps (txn_id, idx, name, participant, kind, action, compensation,
                 depends_on, attempt_timeout_ms, retry_initial_ms, retry_multiplier,
                 retry_max_ms, retry_max_attempts, retry_jitter, state, attempts)
             VALUES (?2, 0, 'hotel', 'http://h', 'compensatable', X'aa', X'bb', '', 1000, 10,
                     2.0, 1000, 5, 1, 'succeeded', 2)",
        ] {
            sqlx::query(statement)
                .bind(txn.to_string())
                .bind(saga.to_string())
                .execute(&old)
                .await
                .expect(statement);
        }
        old.close().await;

        let store = SqliteStore::open_dir(dir.path()).await.expect("migrate");
        let view = store.transaction(&txn).await.expect("read").expect("found");
        assert_eq!(view.state, TxnState::Committing);
        assert_eq!(view.idempotency_key.as_deref(), Some("key-1"));
        assert_eq!(view.decided_at_ms, Some(5));
        let states: Vec<BranchState> = view.branches.iter().map(|b| b.state).collect();
        assert_eq!(states, [BranchState::Committed, BranchState::Prepared]);
        assert_eq!(view.operator_actions.len(), 1);
        assert_eq!(
            store
                .by_idempotency_key("key-1")
                .await
                .expect("key")
                .map(|v| v.id),
            Some(txn)
        );
        let saga_view = store
            .transaction(&saga)
            .await
            .expect("read")
            .expect("found");
        assert!(saga_view.needs_attention);
        assert_eq!(saga_view.steps[0].status, StepStatus::Succeeded);
        assert_eq!(saga_view.steps[0].attempts, 2);
        let unfinished = store.load_unfinished().await.expect("unfinished");
        assert_eq!(unfinished.len(), 2);
        assert_eq!(unfinished[0].payloads, [vec![1, 2], Vec::new()]);

        // The rules hold on the rebuilt tables: a taken key fails its batch,
        // keyless transactions do not collide, a branch needs its parent.
        let again = Record::Begun {
            id: TxnId::mint(),
            created_at_ms: 3,
            deadline_ms: 4,
            idempotency_key: Some("key-1".into()),
            request_digest: None,
            description: None,
        };
        assert!(store.append_batch(&[again]).await.is_err());
        let keyless = |id| Record::Begun {
            id,
            created_at_ms: 3,
            deadline_ms: 4,
            idempotency_key: None,
            request_digest: None,
            description: None,
        };
        store
            .append_batch(&[keyless(TxnId::mint()), keyless(TxnId::mint())])
            .await
            .expect("keyless transactions");
        let orphan = Record::Enlisted {
            id: TxnId::mint(),
            idx: 0,
            name: "b".into(),
            participant: "http://p".into(),
            payload: Vec::new(),
        };
        assert!(store.append_batch(&[orphan]).await.is_err());
        let rowid = sqlx::query("SELECT rowid FROM transactions")
            .execute(store.pool())
            .await;
        assert!(rowid.is_err(), "transactions is a WITHOUT ROWID table");
    }

    #[tokio::test]
    async fn an_in_memory_database_is_refused_with_the_reason() {
        for url in ["sqlite::memory:", "sqlite://log.db?mode=memory"] {
            let error = SqliteStore::open_url(url).await.expect_err(url);
            assert!(error.to_string().contains("in-memory"), "{url}: {error}");
        }
    }

    /// One log, one writer: a second store on the file is refused while
    /// the first is open; once the first is closed — even before the last
    /// clone of it is dropped — the file opens at once, and the closed
    /// store writes nothing more.
    #[tokio::test]
    async fn a_closed_log_is_free_at_once_and_takes_no_more_writes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let first = SqliteStore::open_dir(dir.path()).await.expect("open");
        let refused = SqliteStore::open_dir(dir.path()).await.expect_err("in use");
        assert!(matches!(refused, StoreError::InUse { .. }), "{refused}");
        first.close().await;
        let second = SqliteStore::open_dir(dir.path())
            .await
            .expect("free once closed");
        let id = TxnId::mint();
        let begun = Record::Begun {
            id,
            created_at_ms: 1,
            deadline_ms: 2,
            idempotency_key: None,
            request_digest: None,
            description: None,
        };
        let late = first.append(std::slice::from_ref(&begun)).await;
        assert!(matches!(late, Err(StoreError::WriterStopped)), "{late:?}");
        second.append(&[begun]).await.expect("the new store writes");
        assert!(second.transaction(&id).await.expect("read").is_some());
    }
}
