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
//!
//! Several nodes share one database (DESIGN §6): each start of a node is a
//! row of `nodes` holding a lease measured on the database's clock; each
//! transaction row has an `owner` (a `nodes.id`) and an `epoch`. Every batch
//! first locks the rows it writes to that this node still owns at the epoch
//! it knows ([`Store::append`] refuses the rest: fencing); a node takes over
//! the unfinished transactions of gone nodes by raising their epochs
//! ([`Store::claim_unfinished`]). The [`Cluster`] side (renew, expire,
//! owner lookups, leave) is driven by `runtime::lease`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use sqlx::{PgConnection, PgPool};

use super::batch::{Group, Grouped};
use super::reads::{Reads, store_reads};
use super::rows::{
    ActionRow, OwnedBranchRow, OwnedStepRow, TxnRow, assemble_unfinished, attach_actions, parse_id,
};
use super::{Appended, Cluster, Lease, ListQuery, Owner, Record, Store, StoreError, Unfinished};
use crate::model::{Change, Cursor, TxnId, TxnView};

/// Connections in the pool: the writer's plus readers.
const POOL_CONNECTIONS: u32 = 8;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// Who this node is among the nodes sharing the database (DESIGN §6).
#[derive(Clone, Debug)]
pub struct Membership {
    /// `--node-name`: stable across restarts. A start under a name replaces
    /// the previous start of that name at once (it is dead or stale).
    pub name: String,
    /// Where clients reach this node (`--advertise`).
    pub address: String,
    /// How long a lease lasts without renewal (`--lease-ms`); every node on
    /// one database should use the same value.
    pub lease: Duration,
}

impl Membership {
    /// A node named `name` with the default 10 s lease and no address.
    pub fn named(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            address: String::new(),
            lease: Duration::from_secs(10),
        }
    }
}

/// The PostgreSQL-backed log.
#[derive(Clone, Debug)]
pub struct PostgresStore {
    pool: PgPool,
    /// This start of this node: `nodes.id`, the owner of what it writes.
    node_id: String,
    membership: Membership,
    /// The epoch of each transaction this node claimed from another owner
    /// (or from its own previous start); transactions it began itself are
    /// at epoch 0 and not listed. Entries leave with the transaction's end.
    epochs: Arc<Mutex<HashMap<TxnId, i64>>>,
}

impl PostgresStore {
    /// Connects to a `postgres://` URL, applies migrations and joins the
    /// nodes sharing the database as `membership`: a new start of that
    /// name, which replaces any previous one.
    pub async fn open(url: &str, membership: Membership) -> Result<Self, StoreError> {
        // A node frozen (SIGSTOP, a long GC-like stall) inside a batch would
        // hold its row locks, and every takeover of its transactions would
        // wait on them for as long as it stays frozen. PostgreSQL ends such
        // a session after half a lease instead; the node's batch then fails
        // and, retried, is fenced.
        let idle_limit = format!("{}ms", (membership.lease / 2).as_millis().max(100));
        // One connection first, alone: a server that refuses (no such
        // host, wrong password, no such database) says why now, where the
        // pool would wait out its acquire timeout and say only that.
        match tokio::time::timeout(
            Duration::from_secs(10),
            <sqlx::PgConnection as sqlx::Connection>::connect(url),
        )
        .await
        {
            Ok(Ok(first)) => {
                let _ = sqlx::Connection::close(first).await;
            }
            Ok(Err(error)) => return Err(error.into()),
            Err(_) => {
                return Err(StoreError::Database(sqlx::Error::Io(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "no answer from the PostgreSQL server within 10 s",
                ))));
            }
        }
        let pool = PgPoolOptions::new()
            .max_connections(POOL_CONNECTIONS)
            .acquire_timeout(Duration::from_secs(10))
            .after_connect(move |connection, _| {
                let idle_limit = idle_limit.clone();
                Box::pin(async move {
                    // R1: a decision is durable when its commit returns,
                    // whatever the server's default for synchronous_commit
                    // (`off` would acknowledge commits not yet flushed).
                    sqlx::query(
                        "SELECT set_config('idle_in_transaction_session_timeout', $1, false), \
                                set_config('synchronous_commit', 'on', false)",
                    )
                    .bind(idle_limit)
                    .execute(connection)
                    .await?;
                    Ok(())
                })
            })
            .connect(url)
            .await?;
        MIGRATOR.run(&pool).await?;
        let node_id = format!("{}/{}", membership.name, uuid::Uuid::now_v7());
        let mut tx = pool.begin().await?;
        sqlx::query(JOIN)
            .bind(&node_id)
            .bind(&membership.name)
            .bind(&membership.address)
            .bind(lease_ms(membership.lease))
            .execute(&mut *tx)
            .await?;
        let replaced = sqlx::query(REPLACE_SAME_NAME)
            .bind(&node_id)
            .bind(&membership.name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        if replaced > 0 {
            tracing::info!(
                name = %membership.name,
                "replaced this node's previous start; its unfinished transactions are taken over"
            );
        }
        Ok(Self {
            pool,
            node_id,
            membership,
            epochs: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// [`PostgresStore::open`] as a node named "concord".
    pub async fn open_url(url: &str) -> Result<Self, StoreError> {
        Self::open(url, Membership::named("concord")).await
    }

    /// The underlying pool, for tests that inspect the database directly.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn epochs(&self) -> std::sync::MutexGuard<'_, HashMap<TxnId, i64>> {
        self.epochs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// One database transaction: first locks the rows of the transactions
    /// the batch writes to, keeping those this node still owns at the epoch
    /// it knows (fencing, DESIGN §6); then writes the records of those and of
    /// the transactions the batch creates. The row locks make a concurrent
    /// takeover wait for this commit, or this batch see the takeover.
    ///
    /// Usually one round trip: `concord_append` (migrations/postgres/0004, 0005)
    /// fences and writes in one statement that commits on return. Only when
    /// some transaction was taken over does it write nothing and name them;
    /// the batch is then written again without their records, in a
    /// transaction that locks the rest first.
    async fn append_batch(&self, batch: &[Record]) -> Result<Appended, StoreError> {
        let created: HashSet<TxnId> = batch
            .iter()
            .filter(|record| record.creates())
            .map(Record::txn_id)
            .collect();
        let mut fence: Vec<TxnId> = batch
            .iter()
            .map(Record::txn_id)
            .filter(|id| !created.contains(id))
            .collect();
        fence.sort_unstable();
        fence.dedup();
        let expected = {
            let epochs = self.epochs();
            let rows: Vec<_> = fence
                .iter()
                .map(|id| json!({"id": id.to_string(), "epoch": epochs.get(id).copied().unwrap_or(0)}))
                .collect();
            serde_json::Value::Array(rows).to_string()
        };
        let refused = append(&self.pool, &self.node_id, &expected, batch).await?;
        if refused.is_empty() {
            self.forget_epochs(batch, &[]);
            return Ok(Appended::default());
        }
        // Called with no rows inside a transaction, the function only
        // fences: it locks the rows still this node's (held until commit)
        // and names the others.
        let mut tx = self.pool.begin().await?;
        let refused: HashSet<String> = append(&mut *tx, &self.node_id, &expected, &[])
            .await?
            .into_iter()
            .collect();
        let fenced: Vec<TxnId> = fence
            .into_iter()
            .filter(|id| refused.contains(&id.to_string()))
            .collect();
        if !fenced.is_empty() {
            tracing::warn!(
                count = fenced.len(),
                "refused records of transactions another node owns now (fenced)"
            );
        }
        let kept: Vec<Record> = batch
            .iter()
            .filter(|record| !fenced.contains(&record.txn_id()))
            .cloned()
            .collect();
        // What is left is locked by this transaction and owned: nothing to
        // fence again.
        let refused = append(&mut *tx, &self.node_id, "[]", &kept).await?;
        if !refused.is_empty() {
            return Err(StoreError::Corrupt(format!(
                "the log refused {} transaction(s) with nothing to fence",
                refused.len()
            )));
        }
        tx.commit().await?;
        self.forget_epochs(&kept, &fenced);
        Ok(Appended { fenced })
    }

    /// Once written: the epochs of transactions that ended or were taken
    /// over are no longer this node's to know.
    fn forget_epochs(&self, written: &[Record], fenced: &[TxnId]) {
        let mut epochs = self.epochs();
        if epochs.is_empty() {
            return;
        }
        for record in written {
            if let Record::Ended { id, .. } = record {
                epochs.remove(id);
            }
        }
        for id in fenced {
            epochs.remove(id);
        }
    }

    /// Takes over the unfinished transactions whose owner is gone, raising
    /// each one's epoch, and loads them.
    async fn claim(&self) -> Result<Vec<Unfinished>, StoreError> {
        // One database transaction: if loading what was claimed fails, the
        // claim is undone too, so that no transaction is left owned by this
        // node without this node driving it.
        let mut tx = self.pool.begin().await?;
        let claimed: Vec<(String, i64)> = sqlx::query_as(CLAIM)
            .bind(&self.node_id)
            .fetch_all(&mut *tx)
            .await?;
        if claimed.is_empty() {
            return Ok(Vec::new());
        }
        let mut epochs = Vec::with_capacity(claimed.len());
        let mut ids = Vec::with_capacity(claimed.len());
        for (id, epoch) in claimed {
            epochs.push((parse_id(&id)?, epoch));
            ids.push(id);
        }
        let unfinished = Self::load_unfinished_on(&mut tx, Some(ids)).await?;
        tx.commit().await?;
        self.epochs().extend(epochs);
        tracing::info!(
            count = unfinished.len(),
            "took over unfinished transactions"
        );
        Ok(unfinished)
    }

    /// Three queries, whatever the number of unfinished transactions: all
    /// of them, or those among `only`.
    async fn load_unfinished(
        &self,
        only: Option<Vec<String>>,
    ) -> Result<Vec<Unfinished>, StoreError> {
        let mut connection = self.pool.acquire().await?;
        Self::load_unfinished_on(&mut connection, only).await
    }

    /// [`PostgresStore::load_unfinished`] on one connection (or inside a
    /// database transaction).
    async fn load_unfinished_on(
        connection: &mut PgConnection,
        only: Option<Vec<String>>,
    ) -> Result<Vec<Unfinished>, StoreError> {
        let rows: Vec<TxnRow> = sqlx::query_as(concat!(
            "SELECT t.*, ((SELECT COUNT(*) FROM branches b WHERE b.txn_id = t.id)
                + (SELECT COUNT(*) FROM saga_steps s WHERE s.txn_id = t.id)) AS branch_count
             FROM transactions t
             WHERE t.state IN ",
            crate::store::unfinished_states!(),
            "
               AND ($1::text[] IS NULL OR t.id = ANY($1))
             ORDER BY t.id"
        ))
        .bind(&only)
        .fetch_all(&mut *connection)
        .await?;
        let branches: Vec<OwnedBranchRow> = sqlx::query_as(concat!(
            "SELECT b.txn_id, b.idx, b.name, b.participant, b.payload, b.state, b.vote,
                    b.attempts, b.last_error
             FROM branches b JOIN transactions t ON t.id = b.txn_id
             WHERE t.state IN ",
            crate::store::unfinished_branch_states!(),
            "
               AND ($1::text[] IS NULL OR t.id = ANY($1))
             ORDER BY b.txn_id, b.idx"
        ))
        .bind(&only)
        .fetch_all(&mut *connection)
        .await?;
        let steps: Vec<OwnedStepRow> = sqlx::query_as(concat!(
            "SELECT s.* FROM saga_steps s JOIN transactions t ON t.id = s.txn_id
             WHERE t.state IN ",
            crate::store::unfinished_saga_states!(),
            "
               AND ($1::text[] IS NULL OR t.id = ANY($1))
             ORDER BY s.txn_id, s.idx"
        ))
        .bind(&only)
        .fetch_all(&mut *connection)
        .await?;
        let mut unfinished = assemble_unfinished(rows, branches, steps)?;
        let actions: Vec<ActionRow> = sqlx::query_as(concat!(
            "SELECT a.* FROM operator_actions a JOIN transactions t ON t.id = a.txn_id
             WHERE t.state IN ",
            crate::store::unfinished_states!(),
            "
               AND ($1::text[] IS NULL OR t.id = ANY($1))
             ORDER BY a.at_ms, a.seq"
        ))
        .bind(&only)
        .fetch_all(&mut *connection)
        .await?;
        attach_actions(&mut unfinished, actions)?;
        Ok(unfinished)
    }
}

impl Store for PostgresStore {
    fn append<'a>(&'a self, batch: &'a [Record]) -> BoxFuture<'a, Result<Appended, StoreError>> {
        self.append_batch(batch).boxed()
    }

    // transaction, by_idempotency_key, list, changes, newest_change: the
    // reads both SQL stores share.
    store_reads!();

    // shard_map, put_shard_map, shard_keys, adopt_shard_keys,
    // handed_over_key: the tables of a deployment of several groups.
    super::shards::store_shards!();

    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<Unfinished>, StoreError>> {
        self.load_unfinished(None).boxed()
    }

    fn claim_unfinished(&self) -> BoxFuture<'_, Result<Vec<Unfinished>, StoreError>> {
        self.claim().boxed()
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        Some(self)
    }

    fn prune<'a>(
        &'a self,
        begun_before: &'a TxnId,
        ended_before_ms: u64,
        limit: u32,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        async move {
            let mut tx = self.pool.begin().await?;
            // The change feed's oldest rows, in primary-key order: a bounded
            // walk from the front, never a scan of the table.
            sqlx::query(
                "DELETE FROM txn_changes
                 WHERE (xid, seq) IN (
                     SELECT xid, seq FROM txn_changes ORDER BY xid, seq LIMIT $2)
                   AND at_ms < $1",
            )
            .bind(i64::try_from(ended_before_ms).unwrap_or(i64::MAX))
            .bind(i64::from(limit))
            .execute(&mut *tx)
            .await?;
            let doomed: Vec<(String,)> = sqlx::query_as(PRUNABLE)
                .bind(begun_before.to_string())
                .bind(i64::try_from(ended_before_ms).unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(&mut *tx)
                .await?;
            if doomed.is_empty() {
                tx.commit().await?;
                return Ok(0);
            }
            let ids: Vec<String> = doomed.into_iter().map(|(id,)| id).collect();
            for statement in [
                "DELETE FROM branches WHERE txn_id = ANY($1)",
                "DELETE FROM saga_steps WHERE txn_id = ANY($1)",
                "DELETE FROM transactions WHERE id = ANY($1)",
            ] {
                sqlx::query(statement).bind(&ids).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(ids.len() as u64)
        }
        .boxed()
    }
}

/// Finished transactions old enough to forget (see [`Store::prune`]);
/// locked so that two nodes pruning at once do not wait on each other.
const PRUNABLE: &str = "
    SELECT t.id FROM transactions t
    WHERE t.id < $1
      AND t.state IN ('committed', 'aborted', 'completed', 'compensated', 'failed')
      AND t.ended_at_ms < $2
      AND NOT t.needs_attention
      AND NOT EXISTS (SELECT 1 FROM operator_actions a WHERE a.txn_id = t.id)
    ORDER BY t.id
    LIMIT $3
    FOR UPDATE SKIP LOCKED";

impl Cluster for PostgresStore {
    fn node_id(&self) -> &str {
        &self.node_id
    }

    fn lease(&self) -> Duration {
        self.membership.lease
    }

    fn renew(&self) -> BoxFuture<'_, Result<Lease, StoreError>> {
        async move {
            let renewed = sqlx::query(RENEW)
                .bind(&self.node_id)
                .bind(lease_ms(self.membership.lease))
                .execute(&self.pool)
                .await?
                .rows_affected();
            Ok(if renewed == 1 {
                Lease::Held
            } else {
                Lease::Lost
            })
        }
        .boxed()
    }

    fn expire_others(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        async move {
            let expired = sqlx::query(EXPIRE)
                .bind(&self.node_id)
                .execute(&self.pool)
                .await?
                .rows_affected();
            sqlx::query(FORGET_GONE_NODES).execute(&self.pool).await?;
            Ok(expired)
        }
        .boxed()
    }

    fn owner_of<'a>(&'a self, id: &'a TxnId) -> BoxFuture<'a, Result<Option<Owner>, StoreError>> {
        async move {
            let row: Option<(String, Option<String>, Option<bool>)> = sqlx::query_as(
                "SELECT t.owner, n.address, n.state = 'live'
                 FROM transactions t LEFT JOIN nodes n ON n.id = t.owner
                 WHERE t.id = $1",
            )
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?;
            Ok(row.map(|(node, address, live)| Owner {
                is_self: node == self.node_id,
                node,
                address: address.unwrap_or_default(),
                live: live.unwrap_or(false),
            }))
        }
        .boxed()
    }

    fn leave(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        async move {
            sqlx::query(
                "UPDATE nodes SET state = 'gone', gone_reason = 'left on shutdown'
                 WHERE id = $1",
            )
            .bind(&self.node_id)
            .execute(&self.pool)
            .await?;
            Ok(())
        }
        .boxed()
    }
}

fn lease_ms(lease: Duration) -> i64 {
    i64::try_from(lease.as_millis()).unwrap_or(i64::MAX)
}

// Leases are measured on the database's clock, in milliseconds.
const JOIN: &str = "
    INSERT INTO nodes (id, name, address, started_at_ms, lease_expires_ms, state)
    VALUES ($1, $2, $3, (extract(epoch from clock_timestamp()) * 1000)::bigint,
            (extract(epoch from clock_timestamp()) * 1000)::bigint + $4, 'live')";

const REPLACE_SAME_NAME: &str = "
    UPDATE nodes SET state = 'gone', gone_reason = 'replaced by a newer start of this node name'
    WHERE name = $2 AND id <> $1 AND state = 'live'";

// A node declared gone stays gone: renewing fails and the node stops.
const RENEW: &str = "
    UPDATE nodes
    SET lease_expires_ms = (extract(epoch from clock_timestamp()) * 1000)::bigint + $2
    WHERE id = $1 AND state = 'live'";

const EXPIRE: &str = "
    UPDATE nodes SET state = 'gone', gone_reason = 'lease expired'
    WHERE state = 'live' AND id <> $1
      AND lease_expires_ms < (extract(epoch from clock_timestamp()) * 1000)::bigint";

// Gone nodes are kept for a day after their lease ended (operators read
// them), then removed once they own nothing unfinished.
const FORGET_GONE_NODES: &str = concat!(
    "
    DELETE FROM nodes AS n
    WHERE n.state = 'gone'
      AND n.lease_expires_ms < (extract(epoch from clock_timestamp()) * 1000)::bigint - 86400000
      AND NOT EXISTS (
          SELECT 1 FROM transactions t
          WHERE t.owner = n.id
            AND t.state IN ",
    crate::store::unfinished_states!(),
    ")"
);

// Takeover: every unfinished transaction whose owner is not a live node.
// Two nodes claiming at once: the second waits on the row locks, then
// re-checks the row, now owned by the first (live) node, and skips it.
const CLAIM: &str = concat!(
    "
    UPDATE transactions AS t SET owner = $1, epoch = t.epoch + 1
    WHERE t.state IN ",
    crate::store::unfinished_states!(),
    "
      AND t.owner <> $1
      AND NOT EXISTS (SELECT 1 FROM nodes n WHERE n.id = t.owner AND n.state = 'live')
    RETURNING t.id, t.epoch"
);

/// Fences and writes one batch (`concord_append`,
/// migrations/postgres/0005_append_by_key.sql): the node's id, the
/// transactions to fence as `[{"id", "epoch"}]` (locked, in id order so
/// that two writers lock in the same order, while still this node's at the
/// epoch it knows), then each group's rows in [`Group::ALL`] order, an
/// absent group as `[]`. Returns the ids it refused (another node owns them
/// now), having written nothing; empty once the batch is written.
async fn append(
    executor: impl sqlx::PgExecutor<'_>,
    node: &str,
    fence: &str,
    batch: &[Record],
) -> Result<Vec<String>, StoreError> {
    let mut present = Grouped::new(batch).encoded()?.into_iter().peekable();
    let mut call = sqlx::query_scalar(APPEND).bind(node).bind(fence);
    for group in Group::ALL {
        let rows = present
            .next_if(|(g, _)| *g == group)
            .map_or_else(|| "[]".to_owned(), |(_, rows)| rows);
        call = call.bind(rows);
    }
    Ok(call.fetch_one(executor).await?)
}

const APPEND: &str = "
    SELECT concord_append($1, $2::jsonb, $3::jsonb, $4::jsonb, $5::jsonb, $6::jsonb, $7::jsonb,
                          $8::jsonb, $9::jsonb, $10::jsonb, $11::jsonb, $12::jsonb, $13::jsonb)";
