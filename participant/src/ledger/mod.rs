//! The exactly-once ledger (DESIGN §4), in the participant's own database:
//! one row per (transaction, branch, operation), written in the same local
//! transaction as the business change it guards.
//!
//! What it gives the server adapter (`crate::server`):
//! - a duplicate call finds its row and returns the first answer without
//!   running the handler again (I5);
//! - an Abort that arrives before its Prepare leaves a tombstone, and the
//!   late Prepare is refused ("hanging" prevention);
//! - a COMMIT vote is durable: its row commits with the reservation it made;
//! - the same for saga steps: an action runs once, a compensation that
//!   arrives first leaves a tombstone and the late action is refused.
//!
//! [`LedgerDb`] is what a database must provide; [`sqlite`] and
//! [`postgres`] implement it. Calls about one branch are serialised by the
//! local transaction itself (`BEGIN IMMEDIATE` on SQLite, a transaction-scoped
//! advisory lock on the branch on PostgreSQL), so each sees the other's row.

use sqlx::{Database, FromRow, Pool, Sqlite, Transaction};

use crate::branch::BranchContext;

/// The local transaction a handler runs in, on database `DB`. The ledger
/// row is written in it too, so the business change and the record of
/// having made it commit or roll back together.
pub type LocalTxOf<DB> = Transaction<'static, DB>;

/// The local transaction of a SQLite participant (the default).
pub type LocalTx = LocalTxOf<Sqlite>;

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
    /// A transactional message's outbox row (`crate::outbox`).
    Publish,
    /// A transactional message delivered to this destination.
    Deliver,
}

impl Op {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Op::Prepare => "prepare",
            Op::Commit => "commit",
            Op::Abort => "abort",
            Op::Action => "action",
            Op::Compensate => "compensate",
            Op::Publish => "publish",
            Op::Deliver => "deliver",
        }
    }
}

/// What a ledger row says happened.
#[derive(Clone, Debug, PartialEq, Eq, FromRow)]
pub struct Entry {
    /// For prepare: `commit`, `abort` or `read_only` (the vote). For commit:
    /// `done` or `one_phase`. For abort and compensate: `done` or
    /// `tombstone`. For action: `done` or `refused`.
    pub result: String,
    pub reason: Option<String>,
}

/// Every row of one branch, by operation: what the guarded paths look at
/// before running a handler, read with one statement rather than one per
/// operation (each statement is a round trip to the database, which is
/// most of what a call costs a PostgreSQL participant: docs/performance.md).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rows(Vec<(String, Entry)>);

impl Rows {
    /// The row for `op`, if written.
    pub fn get(&self, op: Op) -> Option<&Entry> {
        self.0
            .iter()
            .find(|(written, _)| written == op.as_str())
            .map(|(_, entry)| entry)
    }
}

/// One ledger row with its operation, as [`LedgerDb::rows`] reads it.
#[derive(FromRow)]
pub struct OpRow {
    op: String,
    result: String,
    reason: Option<String>,
}

impl FromIterator<OpRow> for Rows {
    fn from_iter<I: IntoIterator<Item = OpRow>>(rows: I) -> Self {
        Self(
            rows.into_iter()
                .map(|row| {
                    (
                        row.op,
                        Entry {
                            result: row.result,
                            reason: row.reason,
                        },
                    )
                })
                .collect(),
        )
    }
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

/// What a database must do to hold a ledger. Every method is one or two
/// fixed statements; see the implementations for the SQL.
pub trait LedgerDb: Database {
    /// Creates the ledger table if it is missing. Idempotent; independent of
    /// the application's own migrations.
    fn install(pool: &Pool<Self>) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Starts the local transaction for a call about `branch`, serialised
    /// with every other call about the same branch.
    fn begin(
        pool: &Pool<Self>,
        branch: &BranchContext,
    ) -> impl Future<Output = Result<LocalTxOf<Self>, sqlx::Error>> + Send;

    /// Serialises `tx`, a local transaction the caller began, with every
    /// other one about `branch` from here to its end, as [`LedgerDb::begin`]
    /// does for the ledger's own.
    fn lock(
        tx: &mut LocalTxOf<Self>,
        branch: &BranchContext,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// The row for `op` on `branch`, if written.
    fn find(
        tx: &mut LocalTxOf<Self>,
        branch: &BranchContext,
        op: Op,
    ) -> impl Future<Output = Result<Option<Entry>, sqlx::Error>> + Send;

    /// Every row written for `branch` (at most one per operation).
    fn rows(
        tx: &mut LocalTxOf<Self>,
        branch: &BranchContext,
    ) -> impl Future<Output = Result<Rows, sqlx::Error>> + Send;

    /// Writes the row for `op` on `branch`. Prepare rows keep the payload
    /// and the coordinator's address, so an in-doubt branch can be resolved
    /// after a restart (`crate::resolver`).
    fn record(
        tx: &mut LocalTxOf<Self>,
        branch: &BranchContext,
        op: Op,
        result: &str,
        reason: Option<&str>,
        payload: Option<&[u8]>,
    ) -> impl Future<Output = Result<(), sqlx::Error>> + Send;

    /// Branches prepared at or before `prepared_before_ms` and undecided.
    fn in_doubt(
        pool: &Pool<Self>,
        prepared_before_ms: i64,
    ) -> impl Future<Output = Result<Vec<InDoubt>, sqlx::Error>> + Send;

    /// Deletes every row of a (transaction, branch) whose newest row is at
    /// or before `older_than_ms`, except branches still in doubt. Returns
    /// the rows deleted.
    fn prune(
        pool: &Pool<Self>,
        older_than_ms: i64,
    ) -> impl Future<Output = Result<u64, sqlx::Error>> + Send;
}

/// Milliseconds since the Unix epoch, as the ledger stamps its rows.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// The statements both databases run as they are: sqlx binds `$N` by its
/// number on SQLite as on PostgreSQL, so [`LedgerDb::find`],
/// [`LedgerDb::rows`], [`LedgerDb::record`] and [`LedgerDb::in_doubt`] are
/// written once here and
/// expanded in each database's impl; only what really differs (the table's
/// types, how a call is serialised, pruning's aggregates) is written per
/// database.
macro_rules! shared_statements {
    () => {
        async fn find(
            tx: &mut LocalTxOf<Self>,
            branch: &BranchContext,
            op: Op,
        ) -> Result<Option<Entry>, sqlx::Error> {
            sqlx::query_as(
                "SELECT result, reason FROM concord_ledger
                 WHERE txn_id = $1 AND branch = $2 AND op = $3",
            )
            .bind(&branch.transaction_id)
            .bind(&branch.branch)
            .bind(op.as_str())
            .fetch_optional(&mut **tx)
            .await
        }

        async fn rows(
            tx: &mut LocalTxOf<Self>,
            branch: &BranchContext,
        ) -> Result<$crate::ledger::Rows, sqlx::Error> {
            let rows: Vec<$crate::ledger::OpRow> = sqlx::query_as(
                "SELECT op, result, reason FROM concord_ledger
                 WHERE txn_id = $1 AND branch = $2",
            )
            .bind(&branch.transaction_id)
            .bind(&branch.branch)
            .fetch_all(&mut **tx)
            .await?;
            Ok(rows.into_iter().collect())
        }

        async fn record(
            tx: &mut LocalTxOf<Self>,
            branch: &BranchContext,
            op: Op,
            result: &str,
            reason: Option<&str>,
            payload: Option<&[u8]>,
        ) -> Result<(), sqlx::Error> {
            sqlx::query(
                "INSERT INTO concord_ledger
                   (txn_id, branch, op, result, reason, coordinator, payload, created_at_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&branch.transaction_id)
            .bind(&branch.branch)
            .bind(op.as_str())
            .bind(result)
            .bind(reason)
            .bind(&branch.coordinator)
            .bind(payload)
            .bind($crate::ledger::now_ms())
            .execute(&mut **tx)
            .await?;
            Ok(())
        }

        /// Voted COMMIT, at or before `prepared_before_ms`, and neither
        /// committed nor aborted.
        async fn in_doubt(
            pool: &Pool<Self>,
            prepared_before_ms: i64,
        ) -> Result<Vec<InDoubt>, sqlx::Error> {
            sqlx::query_as(
                "SELECT p.txn_id, p.branch, p.coordinator, p.payload, p.created_at_ms
                 FROM concord_ledger p
                 WHERE p.op = 'prepare' AND p.result = 'commit' AND p.created_at_ms <= $1
                   AND NOT EXISTS (
                     SELECT 1 FROM concord_ledger d
                     WHERE d.txn_id = p.txn_id AND d.branch = p.branch
                       AND d.op IN ('commit', 'abort'))
                 ORDER BY p.created_at_ms",
            )
            .bind(prepared_before_ms)
            .fetch_all(pool)
            .await
        }
    };
}

pub mod postgres;
pub mod sqlite;
