//! The ledger on PostgreSQL: each call's local transaction first takes a
//! transaction-scoped advisory lock on its (transaction, branch), so two
//! calls about the same branch are serialised while calls about other
//! branches run in parallel.

use sqlx::{Pool, Postgres};

use super::{Entry, InDoubt, LedgerDb, LocalTxOf, Op};
use crate::branch::BranchContext;

impl LedgerDb for Postgres {
    async fn install(pool: &Pool<Self>) -> Result<(), sqlx::Error> {
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS concord_ledger (
                txn_id        TEXT NOT NULL,
                branch        TEXT NOT NULL,
                op            TEXT NOT NULL,
                result        TEXT NOT NULL,
                reason        TEXT,
                coordinator   TEXT,
                payload       BYTEA,
                created_at_ms BIGINT NOT NULL,
                PRIMARY KEY (txn_id, branch, op)
            )",
        )
        .execute(pool)
        .await?;
        Ok(())
    }

    async fn begin(
        pool: &Pool<Self>,
        branch: &BranchContext,
    ) -> Result<LocalTxOf<Self>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        Self::lock(&mut tx, branch).await?;
        Ok(tx)
    }

    async fn lock(tx: &mut LocalTxOf<Self>, branch: &BranchContext) -> Result<(), sqlx::Error> {
        // And synchronous_commit on for this transaction, in the same
        // round trip: a vote or an applied decision must be durable when
        // its answer leaves (DESIGN §4), whatever the server's default.
        sqlx::query(
            "SELECT pg_advisory_xact_lock(hashtextextended($1 || '/' || $2, 0)), \
                    set_config('synchronous_commit', 'on', true)",
        )
        .bind(&branch.transaction_id)
        .bind(&branch.branch)
        .execute(&mut **tx)
        .await?;
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
                 HAVING MAX(created_at_ms) <= $1
                    AND NOT (bool_or(op = 'prepare' AND result = 'commit')
                             AND NOT bool_or(op IN ('commit', 'abort'))))",
        )
        .bind(older_than_ms)
        .execute(pool)
        .await?;
        Ok(done.rows_affected())
    }
}
