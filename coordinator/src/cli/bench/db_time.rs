//! A group's database time under `concord bench --database-url`: how long
//! PostgreSQL spent running the log's batch function (`concord_append`,
//! migrations/postgres/0004_append.sql) for the run's transactions, from
//! its own function statistics. On this 2-core machine the groups of a run
//! share the cores; a group's database time per transaction is what each
//! would spend on a machine of its own (docs/operations.md, "Sizing").

use sqlx::postgres::PgPool;

/// What one group's database did during a run.
pub struct GroupTime {
    /// Transactions the group's log holds from the run.
    pub transactions: i64,
    /// Calls of `concord_append` (one per batch the log writer wrote).
    pub appends: i64,
    /// Their total time inside the function, in milliseconds (the commit's
    /// WAL flush after it is not counted).
    pub append_ms: f64,
}

/// Turns on PostgreSQL's statistics of PL/pgSQL functions for the sessions
/// the nodes open next, and clears those held: needs a superuser, as the
/// harness's and `scripts/bench-xa.sh`'s servers have; without one the run
/// goes on and reports no database time.
pub async fn track(url: &str) {
    let Ok(db) = PgPool::connect(url).await else {
        return;
    };
    let set = sqlx::query("SELECT current_database()")
        .fetch_one(&db)
        .await
        .ok()
        .map(|row| sqlx::Row::get::<String, _>(&row, 0));
    if let Some(name) = set {
        let quoted = name.replace('"', "\"\"");
        let alter = format!("ALTER DATABASE \"{quoted}\" SET track_functions = 'pl'");
        if let Err(error) = sqlx::raw_sql(sqlx::AssertSqlSafe(alter)).execute(&db).await {
            tracing::warn!(%error, "cannot track the database's function time; none reported");
        }
    }
    let _ = sqlx::query("SELECT pg_stat_reset()").execute(&db).await;
    db.close().await;
}

/// The group's database time since [`track`], and its transactions begun
/// since `since_ms`; None when PostgreSQL kept no statistics.
pub async fn read(url: &str, since_ms: u64) -> Option<GroupTime> {
    let db = PgPool::connect(url).await.ok()?;
    // Statistics reach the shared view when a backend goes idle, at most
    // a second later.
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let (appends, append_ms): (i64, f64) = sqlx::query_as(
        "SELECT calls, total_time FROM pg_stat_user_functions WHERE funcname = 'concord_append'",
    )
    .fetch_optional(&db)
    .await
    .ok()
    .flatten()?;
    let (transactions,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM transactions WHERE created_at_ms >= $1")
            .bind(i64::try_from(since_ms).unwrap_or(i64::MAX))
            .fetch_one(&db)
            .await
            .ok()?;
    db.close().await;
    Some(GroupTime {
        transactions,
        appends,
        append_ms,
    })
}
