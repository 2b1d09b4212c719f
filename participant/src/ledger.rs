//! The exactly-once ledger (DESIGN §4), in the participant's own SQLite
//! database: one row per (transaction, branch, operation), written in the
//! same local transaction as the business change it guards.
//!
//! What it gives the server adapter (`crate::server`):
//! - a duplicate call finds its row and returns the first answer without
//!   running the handler again (I5);
//! - an Abort that arrives before its Prepare leaves a tombstone, and the
//!   late Prepare is refused ("hanging" prevention);
//! - a COMMIT vote is durable: its row commits with the reservation it made;
//! - the same for saga steps: an action runs once, a compensation that
//!   arrives first leaves a tombstone and the late action is refused.

use sqlx::{FromRow, Sqlite, SqlitePool};

use crate::server::BranchContext;

/// The local transaction a handler runs in. The ledger row is written in it
/// too, so the business change and the record of having made it commit or
/// roll back together.
pub type LocalTx = sqlx::Transaction<'static, Sqlite>;

/// The operations the ledger records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Prepare,
    Commit,
    Abort,
    /// A saga step's action.
    Action,
    /// A saga step's compensation.
    Compensate,
}

impl Op {
    fn as_str(self) -> &'static str {
        match self {
            Op::Prepare => "prepare",
            Op::Commit => "commit",
            Op::Abort => "abort",
            Op::Action => "action",
            Op::Compensate => "compensate",
        }
    }
}

/// What a ledger row says happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// For prepare: `commit`, `abort` or `read_only` (the vote). For commit:
    /// `done` or `one_phase`. For abort and compensate: `done` or
    /// `tombstone`. For action: `done` or `refused`.
    pub result: String,
    pub reason: Option<String>,
}

/// Creates the ledger table if it is missing. Idempotent; independent of the
/// application's own migrations.
pub async fn install(pool: &SqlitePool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS concord_ledger (
            txn_id        TEXT NOT NULL,
            branch        TEXT NOT NULL,
            op            TEXT NOT NULL,
            result        TEXT NOT NULL,
            reason        TEXT,
            coordinator   TEXT,
            payload       BLOB,
            created_at_ms INTEGER NOT NULL,
            PRIMARY KEY (txn_id, branch, op)
        )",
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Starts a local transaction that takes the write lock at once, so two
/// calls about the same branch are serialised and each sees the other's row.
pub async fn begin(pool: &SqlitePool) -> Result<LocalTx, sqlx::Error> {
    pool.begin_with("BEGIN IMMEDIATE").await
}

#[derive(FromRow)]
struct Row {
    result: String,
    reason: Option<String>,
}

pub async fn find(
    tx: &mut LocalTx,
    txn_id: &str,
    branch: &str,
    op: Op,
) -> Result<Option<Entry>, sqlx::Error> {
    let row: Option<Row> = sqlx::query_as(
        "SELECT result, reason FROM concord_ledger WHERE txn_id = ?1 AND branch = ?2 AND op = ?3",
    )
    .bind(txn_id)
    .bind(branch)
    .bind(op.as_str())
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|r| Entry {
        result: r.result,
        reason: r.reason,
    }))
}

/// Writes the row for `op` on `branch`. Prepare rows keep the payload and
/// the coordinator's address, so an in-doubt branch can be resolved after a
/// restart (`crate::resolver`).
pub async fn record(
    tx: &mut LocalTx,
    branch: &BranchContext,
    op: Op,
    result: &str,
    reason: Option<&str>,
    payload: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO concord_ledger
           (txn_id, branch, op, result, reason, coordinator, payload, created_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )
    .bind(&branch.transaction_id)
    .bind(&branch.branch)
    .bind(op.as_str())
    .bind(result)
    .bind(reason)
    .bind(&branch.coordinator)
    .bind(payload)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A branch that voted COMMIT and has heard neither Commit nor Abort.
#[derive(Debug, Clone, FromRow)]
pub struct InDoubt {
    pub txn_id: String,
    pub branch: String,
    pub coordinator: Option<String>,
    pub payload: Option<Vec<u8>>,
    pub created_at_ms: i64,
}

/// Branches prepared at or before `prepared_before_ms` and still undecided.
pub async fn in_doubt(
    pool: &SqlitePool,
    prepared_before_ms: i64,
) -> Result<Vec<InDoubt>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.txn_id, p.branch, p.coordinator, p.payload, p.created_at_ms
         FROM concord_ledger p
         WHERE p.op = 'prepare' AND p.result = 'commit' AND p.created_at_ms <= ?1
           AND NOT EXISTS (
             SELECT 1 FROM concord_ledger d
             WHERE d.txn_id = p.txn_id AND d.branch = p.branch AND d.op IN ('commit', 'abort'))
         ORDER BY p.created_at_ms",
    )
    .bind(prepared_before_ms)
    .fetch_all(pool)
    .await
}

/// Deletes the rows of transactions that finished more than `older_than_ms`
/// ago: every row of a (transaction, branch) whose last operation (commit,
/// abort, compensate, or an action never compensated) is that old. Prepared
/// branches still in doubt are never deleted. Returns the rows deleted.
pub async fn prune(pool: &SqlitePool, older_than_ms: i64) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "DELETE FROM concord_ledger
         WHERE (txn_id, branch) IN (
             SELECT txn_id, branch FROM concord_ledger
             GROUP BY txn_id, branch
             HAVING MAX(created_at_ms) <= ?1
                AND NOT (SUM(op = 'prepare' AND result = 'commit') > 0
                         AND SUM(op IN ('commit', 'abort')) = 0))",
    )
    .bind(older_than_ms)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Milliseconds since the Unix epoch, as the ledger stamps its rows.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
