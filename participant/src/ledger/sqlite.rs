//! The ledger on SQLite: `BEGIN IMMEDIATE` takes the database's write lock
//! at once, so two calls about the same branch are serialised.

use sqlx::{Pool, Sqlite};

use super::{Entry, InDoubt, LedgerDb, LocalTxOf, Op};
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

    async fn lock(_tx: &mut LocalTxOf<Self>, _branch: &BranchContext) -> Result<(), sqlx::Error> {
        // SQLite has one writer at a time: a transaction begun IMMEDIATE
        // holds the lock from its start, and a deferred one that loses the
        // race fails on its first write (busy, or the row now there)
        // rather than interleaving.
        Ok(())
    }

    // find, record, in_doubt: the same statements on every database.
    shared_statements!();

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
