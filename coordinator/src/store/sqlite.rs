//! The embedded default store: one SQLite file in WAL mode with
//! `synchronous=FULL`, so a committed batch has been fsynced (R1).
//!
//! Writes come only from the group-commit writer, one batch per database
//! transaction; reads run concurrently on the pool's other connections (WAL
//! lets readers proceed while the writer commits).

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

use super::{ListQuery, Record, Store, StoreError, Unfinished};
use crate::model::{
    BranchState, BranchView, RetryPolicy, SagaStepDef, StepView, TxnId, TxnKind, TxnState, TxnView,
    VoteKind, parse_step_kind, parse_step_status,
};

/// The database file inside `--data-dir`.
pub const DATABASE_FILE: &str = "concord.db";

/// Readers plus the writer's connection.
const POOL_CONNECTIONS: u32 = 8;

/// How long a statement waits for a lock before failing; only start-up and an
/// operator's tool ever contend with the single writer.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

mod batch;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite-backed log.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
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
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { pool })
    }

    /// The underlying pool, for tests that inspect the file directly.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    async fn append_batch(&self, batch: &[Record]) -> Result<(), StoreError> {
        let grouped = batch::Grouped::new(batch);
        let mut tx = self.pool.begin().await?;
        grouped.write(&mut tx).await?;
        tx.commit().await?;
        Ok(())
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
        let mut view = row.into_view()?;
        let branches: Vec<BranchRow> = sqlx::query_as(
            "SELECT idx, name, participant, payload, state, vote, attempts, last_error
             FROM branches WHERE txn_id = ?1 ORDER BY idx",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        view.branches = branches
            .into_iter()
            .map(|b| b.into_view())
            .collect::<Result<_, _>>()?;
        if view.kind == TxnKind::Saga {
            let (_, steps) = self.load_steps(id).await?;
            view.steps = steps;
        }
        Ok(Some(view))
    }

    /// A saga's step definitions and views, in step order.
    async fn load_steps(
        &self,
        id: &TxnId,
    ) -> Result<(Vec<SagaStepDef>, Vec<StepView>), StoreError> {
        let rows: Vec<StepRow> =
            sqlx::query_as("SELECT * FROM saga_steps WHERE txn_id = ?1 ORDER BY idx")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?;
        let defs = rows
            .iter()
            .map(StepRow::def)
            .collect::<Result<Vec<_>, _>>()?;
        let mut views = Vec::with_capacity(rows.len());
        for row in rows {
            let status = parse_step_status(&row.state)
                .ok_or_else(|| StoreError::Corrupt(format!("step state {:?}", row.state)))?;
            let def = row.def()?;
            views.push(StepView {
                name: def.name,
                participant: def.participant,
                kind: def.kind,
                status,
                depends_on: def
                    .depends_on
                    .iter()
                    .filter_map(|dep| defs.get(*dep).map(|d| d.name.clone()))
                    .collect(),
                attempts: u32::try_from(row.attempts).unwrap_or(u32::MAX),
                compensation_attempts: u32::try_from(row.compensation_attempts).unwrap_or(u32::MAX),
                last_error: row.last_error,
            });
        }
        Ok((defs, views))
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

    async fn load_unfinished(&self) -> Result<Vec<Unfinished>, StoreError> {
        let rows: Vec<TxnRow> = sqlx::query_as(
            "SELECT t.*, (SELECT COUNT(*) FROM branches b WHERE b.txn_id = t.id) AS branch_count
             FROM transactions t
             WHERE t.state IN ('active', 'committing', 'aborting', 'running', 'compensating')
             ORDER BY t.id",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut unfinished = Vec::with_capacity(rows.len());
        for row in rows {
            let mut view = row.into_view()?;
            let branches: Vec<BranchRow> = sqlx::query_as(
                "SELECT idx, name, participant, payload, state, vote, attempts, last_error
                 FROM branches WHERE txn_id = ?1 ORDER BY idx",
            )
            .bind(view.id.to_string())
            .fetch_all(&self.pool)
            .await?;
            let mut payloads = Vec::with_capacity(branches.len());
            let mut views = Vec::with_capacity(branches.len());
            for branch in branches {
                payloads.push(branch.payload.clone());
                views.push(branch.into_view()?);
            }
            view.branches = views;
            let mut steps = Vec::new();
            if view.kind == TxnKind::Saga {
                let (defs, step_views) = self.load_steps(&view.id).await?;
                steps = defs;
                view.steps = step_views;
            }
            unfinished.push(Unfinished {
                view,
                payloads,
                steps,
            });
        }
        Ok(unfinished)
    }
}

impl Store for SqliteStore {
    fn append<'a>(&'a self, batch: &'a [Record]) -> BoxFuture<'a, Result<(), StoreError>> {
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
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// Store timestamps are i64; anything past i64::MAX ms is clamped (that is
/// ~292 million years away).
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn parse_id(id: &str) -> Result<TxnId, StoreError> {
    id.parse()
        .map_err(|e| StoreError::Corrupt(format!("transaction id {id:?} {e}")))
}

#[derive(FromRow)]
struct TxnRow {
    id: String,
    kind: String,
    needs_attention: bool,
    state: String,
    created_at_ms: i64,
    deadline_ms: i64,
    decided_at_ms: Option<i64>,
    ended_at_ms: Option<i64>,
    reason: Option<String>,
    idempotency_key: Option<String>,
    description: Option<String>,
    read_only: bool,
    branch_count: i64,
}

impl TxnRow {
    fn into_view(self) -> Result<TxnView, StoreError> {
        let state = TxnState::parse(&self.state)
            .ok_or_else(|| StoreError::Corrupt(format!("transaction state {:?}", self.state)))?;
        let kind = TxnKind::parse(&self.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("transaction kind {:?}", self.kind)))?;
        Ok(TxnView {
            id: parse_id(&self.id)?,
            kind,
            state,
            created_at_ms: to_u64(self.created_at_ms),
            deadline_ms: to_u64(self.deadline_ms),
            decided_at_ms: self.decided_at_ms.map(to_u64),
            ended_at_ms: self.ended_at_ms.map(to_u64),
            reason: self.reason,
            idempotency_key: self.idempotency_key,
            description: self.description,
            read_only: self.read_only,
            branch_count: u32::try_from(self.branch_count).unwrap_or(u32::MAX),
            branches: Vec::new(),
            steps: Vec::new(),
            needs_attention: self.needs_attention,
        })
    }
}

#[derive(FromRow)]
struct BranchRow {
    #[allow(dead_code)]
    idx: i64,
    name: String,
    participant: String,
    payload: Vec<u8>,
    state: String,
    vote: Option<String>,
    attempts: i64,
    last_error: Option<String>,
}

impl BranchRow {
    fn into_view(self) -> Result<BranchView, StoreError> {
        let state = BranchState::parse(&self.state)
            .ok_or_else(|| StoreError::Corrupt(format!("branch state {:?}", self.state)))?;
        let vote = match self.vote.as_deref() {
            None => None,
            Some(v) => {
                Some(VoteKind::parse(v).ok_or_else(|| StoreError::Corrupt(format!("vote {v:?}")))?)
            }
        };
        Ok(BranchView {
            name: self.name,
            participant: self.participant,
            state,
            vote,
            attempts: u32::try_from(self.attempts).unwrap_or(u32::MAX),
            last_error: self.last_error,
            payload_bytes: self.payload.len() as u64,
        })
    }
}

#[derive(FromRow)]
struct StepRow {
    name: String,
    participant: String,
    kind: String,
    action: Vec<u8>,
    compensation: Option<Vec<u8>>,
    depends_on: String,
    attempt_timeout_ms: i64,
    retry_initial_ms: i64,
    retry_multiplier: f64,
    retry_max_ms: i64,
    retry_max_attempts: i64,
    retry_jitter: bool,
    state: String,
    attempts: i64,
    compensation_attempts: i64,
    last_error: Option<String>,
}

impl StepRow {
    fn def(&self) -> Result<SagaStepDef, StoreError> {
        let kind = parse_step_kind(&self.kind)
            .ok_or_else(|| StoreError::Corrupt(format!("step kind {:?}", self.kind)))?;
        let depends_on = if self.depends_on.is_empty() {
            Vec::new()
        } else {
            self.depends_on
                .split(',')
                .map(|dep| dep.parse::<usize>())
                .collect::<Result<_, _>>()
                .map_err(|_| StoreError::Corrupt(format!("depends_on {:?}", self.depends_on)))?
        };
        let ms = |value: i64| Duration::from_millis(to_u64(value));
        Ok(SagaStepDef {
            name: self.name.clone(),
            participant: self.participant.clone(),
            kind,
            action: self.action.clone(),
            compensation: self.compensation.clone(),
            depends_on,
            attempt_timeout: ms(self.attempt_timeout_ms),
            retry: RetryPolicy {
                initial_delay: ms(self.retry_initial_ms),
                multiplier: self.retry_multiplier,
                max_delay: ms(self.retry_max_ms),
                max_attempts: u32::try_from(self.retry_max_attempts).unwrap_or(u32::MAX),
                jitter: self.retry_jitter,
            },
        })
    }
}
