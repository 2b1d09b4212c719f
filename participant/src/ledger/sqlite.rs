//! The ledger on SQLite: `BEGIN IMMEDIATE` takes the database's write lock
//! at once, so two calls about the same branch are serialised.

use sqlx::{Pool, Sqlite};

use super::{Entry, InDoubt, LedgerDb, LocalTxOf, Op, now_ms};
use crate::branch::BranchContext;

impl LedgerDb for Sqlite {
    async fn install(pool: &Pool<Self>) -> Result<(), sqlx::Error> {
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

    async fn begin(
        pool: &Pool<Self>,
        _branch: &BranchContext,
    ) -> Result<LocalTxOf<Self>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn find(
        tx: &mut LocalTxOf<Self>,
        branch: &BranchContext,
        op: Op,
    ) -> Result<Option<Entry>, sqlx::Error> {
        sqlx::query_as(
            "SELECT result, reason FROM concord_ledger WHERE txn_id = ?1 AND branch = ?2 AND op = ?3",
        )
        .bind(&branch.transaction_id)
        .bind(&branch.branch)
        .bind(op.as_str())
        .fetch_optional(&mut **tx)
        .await
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

    async fn in_doubt(
        pool: &Pool<Self>,
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

    async fn prune(pool: &Pool<Self>, older_than_ms: i64) -> Result<u64, sqlx::Error> {
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
}
