//! The store for several coordinator nodes or more load than one machine's
//! disk: PostgreSQL (or a Postgres-compatible distributed SQL engine),
//! selected by `--database-url postgres://...`. A committed batch is durable
//! by PostgreSQL's own rule (`synchronous_commit = on`, the default: the WAL
//! is flushed before COMMIT returns), which is R1.
//!
//! Same tables and semantics as the SQLite store (`migrations/postgres`),
//! the same batch regrouping (`store::batch`, spread with
//! `jsonb_array_elements`), and the same contract tests, run against a real
//! server started by the test harness (`tests/tests/store`).

use futures::FutureExt;
use futures::future::BoxFuture;
use std::sync::Arc;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Mutex;

use super::batch::{Group, Grouped};
use super::rows::{
    BranchRow, OwnedBranchRow, OwnedStepRow, StepRow, TxnRow, assemble, assemble_unfinished,
    parse_id,
};
use super::{ListQuery, Record, Store, StoreError, Unfinished};
use crate::model::{TxnId, TxnKind, TxnView};

/// Connections in the pool: the writer's plus readers.
const POOL_CONNECTIONS: u32 = 8;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The advisory lock a node holds on its database for as long as it runs.
const OWNER_LOCK: i64 = 0x636f_6e63_6f72_6401; // "concord" + 1

/// How long a starting node waits for the lock before refusing to start.
const OWNER_WAIT: std::time::Duration = std::time::Duration::from_secs(3);

/// The PostgreSQL-backed log.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// The session holding [`OWNER_LOCK`]. Until several nodes coordinate
    /// through leases and epochs (DESIGN §6, not built yet), two nodes on
    /// one database would both recover and drive the same transactions, so
    /// a second node is refused at start.
    _owner: Arc<Mutex<PgConnection>>,
}

impl PostgresStore {
    /// Connects to a `postgres://` URL and applies migrations.
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .acquire_timeout(std::time::Duration::from_secs(10))
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        let mut owner = PgConnection::connect(url).await?;
        // A node restarting right after its previous process died may find
        // that process's session not yet gone: wait for it a little.
        let started = std::time::Instant::now();
        let locked = loop {
            let (locked,): (bool,) = sqlx::query_as("SELECT pg_try_advisory_lock($1)")
                .bind(OWNER_LOCK)
                .fetch_one(&mut owner)
                .await?;
            if locked || started.elapsed() >= OWNER_WAIT {
                break locked;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        if !locked {
            return Err(StoreError::InUse(
                "another coordinator node is using this PostgreSQL database; \
                 several nodes on one database need leases and fencing, which \
                 this build does not have yet"
                    .into(),
            ));
        }
        Ok(Self {
            pool,
            _owner: Arc::new(Mutex::new(owner)),
        })
    }

    /// The underlying pool, for tests that inspect the database directly.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn append_batch(&self, batch: &[Record]) -> Result<(), StoreError> {
        let groups = Grouped::new(batch).encoded()?;
        let mut tx = self.pool.begin().await?;
        for (group, rows) in groups {
            sqlx::query(statement(group))
                .bind(rows)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn load(&self, id: &TxnId) -> Result<Option<TxnView>, StoreError> {
        let row: Option<TxnRow> = sqlx::query_as(
            "SELECT t.*, (SELECT COUNT(*) FROM branches b WHERE b.txn_id = t.id) AS branch_count
             FROM transactions t WHERE t.id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&self.pool)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let branches: Vec<BranchRow> = sqlx::query_as(
            "SELECT idx, name, participant, payload, state, vote, attempts, last_error
             FROM branches WHERE txn_id = $1 ORDER BY idx",
        )
        .bind(id.to_string())
        .fetch_all(&self.pool)
        .await?;
        let steps: Vec<StepRow> = if row.kind == TxnKind::Saga.as_str() {
            sqlx::query_as("SELECT * FROM saga_steps WHERE txn_id = $1 ORDER BY idx")
                .bind(id.to_string())
                .fetch_all(&self.pool)
                .await?
        } else {
            Vec::new()
        };
        Ok(Some(assemble(row, branches, steps)?.view))
    }

    async fn load_by_key(&self, key: &str) -> Result<Option<TxnView>, StoreError> {
        let id: Option<(String,)> =
            sqlx::query_as("SELECT id FROM transactions WHERE idempotency_key = $1")
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
             WHERE ($1 = '' OR position(',' || t.state || ',' in $1) > 0)
               AND ($2 = '' OR t.id < $2)
               AND (NOT $4 OR t.needs_attention)
             ORDER BY t.id DESC
             LIMIT $3",
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
        assemble_unfinished(rows, branches, steps)
    }
}

impl Store for PostgresStore {
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

/// The statement that writes one group of a batch (`store::batch`): each
/// takes the group's rows as one JSON array and spreads it with
/// `jsonb_array_elements`.
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
        Group::Ended => END,
        Group::BranchEnds => BRANCH_END,
    }
}

const INSERT_TRANSACTIONS: &str = "
    INSERT INTO transactions
      (id, kind, state, created_at_ms, deadline_ms, idempotency_key, description)
    SELECT j ->> 'id', j ->> 'kind', j ->> 'state', (j ->> 'created')::bigint,
           (j ->> 'deadline')::bigint, j ->> 'key', j ->> 'description'
    FROM jsonb_array_elements($1::jsonb) AS j";

const INSERT_BRANCHES: &str = "
    INSERT INTO branches (txn_id, idx, name, participant, payload, state)
    SELECT j ->> 'txn', (j ->> 'idx')::bigint, j ->> 'name', j ->> 'participant',
           decode(j ->> 'payload', 'hex'), 'enlisted'
    FROM jsonb_array_elements($1::jsonb) AS j";

const INSERT_STEPS: &str = "
    INSERT INTO saga_steps
      (txn_id, idx, name, participant, kind, action, compensation, depends_on,
       attempt_timeout_ms, retry_initial_ms, retry_multiplier, retry_max_ms,
       retry_max_attempts, retry_jitter)
    SELECT j ->> 'txn', (j ->> 'idx')::bigint, j ->> 'name', j ->> 'participant', j ->> 'kind',
           decode(j ->> 'action', 'hex'), decode(j ->> 'compensation', 'hex'),
           j ->> 'depends_on', (j ->> 'timeout')::bigint, (j ->> 'initial')::bigint,
           (j ->> 'multiplier')::double precision, (j ->> 'max')::bigint,
           (j ->> 'attempts')::bigint, (j ->> 'jitter')::boolean
    FROM jsonb_array_elements($1::jsonb) AS j";

// R1/R2: a decision applies only to a transaction still active.
const DECIDE: &str = "
    UPDATE transactions AS t SET state = 'committing', decided_at_ms = (j ->> 'at')::bigint
    FROM jsonb_array_elements($1::jsonb) AS j
    WHERE t.id = j ->> 'id' AND t.state = 'active'";

const ABORT: &str = "
    UPDATE transactions AS t
    SET state = 'aborting', decided_at_ms = (j ->> 'at')::bigint, reason = j ->> 'reason'
    FROM jsonb_array_elements($1::jsonb) AS j
    WHERE t.id = j ->> 'id' AND t.state = 'active'";

const SAGA_STATE: &str = "
    UPDATE transactions AS t SET state = j ->> 'state', reason = j ->> 'reason'
    FROM jsonb_array_elements($1::jsonb) AS j
    WHERE t.id = j ->> 'id'";

const STEP_PROGRESS: &str = "
    UPDATE saga_steps AS s
    SET state = j ->> 'state', attempts = (j ->> 'attempts')::bigint,
        compensation_attempts = (j ->> 'compensations')::bigint, last_error = j ->> 'error'
    FROM jsonb_array_elements($1::jsonb) AS j
    WHERE s.txn_id = j ->> 'txn' AND s.idx = (j ->> 'idx')::bigint";

const NEEDS_ATTENTION: &str = "
    UPDATE transactions SET needs_attention = TRUE
    WHERE id IN (SELECT jsonb_array_elements_text($1::jsonb))";

// The decided_at stamp stays the decision's; an abort decided and ended in
// one step gets both. A saga that needed attention while retrying no longer
// does once it ended, unless it FAILED.
const END: &str = "
    UPDATE transactions AS t
    SET state = j ->> 'state', ended_at_ms = (j ->> 'at')::bigint,
        read_only = (j ->> 'read_only')::boolean, reason = j ->> 'reason',
        decided_at_ms = COALESCE(t.decided_at_ms, (j ->> 'at')::bigint),
        needs_attention = (j ->> 'state' = 'failed')
    FROM jsonb_array_elements($1::jsonb) AS j
    WHERE t.id = j ->> 'id'";

const BRANCH_END: &str = "
    UPDATE branches AS b
    SET state = j ->> 'state', vote = j ->> 'vote',
        attempts = (j ->> 'attempts')::bigint, last_error = j ->> 'error'
    FROM jsonb_array_elements($1::jsonb) AS j
    WHERE b.txn_id = j ->> 'txn' AND b.idx = (j ->> 'idx')::bigint";
