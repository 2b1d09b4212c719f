//! The producer's outbox for transactional messages (DESIGN §10, M2), on
//! SQLite and on PostgreSQL, with the same cases: the outbox row commits
//! and rolls back with the business change; a check-back finds it, or
//! leaves a tombstone that makes a later publish fail and its business
//! change roll back; a check-back racing an open local transaction waits
//! for it and answers what it did.

use std::time::Duration;

use concord_participant::ledger::{LedgerDb, LocalTxOf};
use concord_participant::outbox::{self, Checked, PublishError};
use sqlx::{Pool, Postgres, Sqlite};

use super::support::postgres::Postgres as Server;

/// The cases, on any database; `insert` adds a row to `debits` in a
/// transaction, `count` counts them.
macro_rules! outbox_cases {
    ($db:ty, $pool:expr, $insert:literal, $count:literal) => {{
        let pool: Pool<$db> = $pool;
        <$db as LedgerDb>::install(&pool).await.expect("ledger");
        sqlx::query("CREATE TABLE debits (id TEXT PRIMARY KEY)")
            .execute(&pool)
            .await
            .expect("business table");
        async fn debit(tx: &mut LocalTxOf<$db>, id: &'static str) -> Result<(), sqlx::Error> {
            sqlx::query($insert).bind(id).execute(&mut **tx).await.map(|_| ())
        }
        let debits = |pool: Pool<$db>| async move {
            let (n,): (i64,) = sqlx::query_as($count).fetch_one(&pool).await.expect("count");
            n
        };

        // Published and committed: the check-back says so, every time.
        let mut tx = pool.begin().await.expect("begin");
        debit(&mut tx, "d1").await.expect("debit");
        outbox::publish::<$db>(&mut tx, "m1").await.expect("publish");
        tx.commit().await.expect("commit");
        assert_eq!(outbox::check(&pool, "m1").await.expect("check"), Checked::Committed);
        assert_eq!(outbox::check(&pool, "m1").await.expect("again"), Checked::Committed);

        // Published, then rolled back: nothing there, and a tombstone now.
        let mut tx = pool.begin().await.expect("begin");
        debit(&mut tx, "d2").await.expect("debit");
        outbox::publish::<$db>(&mut tx, "m2").await.expect("publish");
        tx.rollback().await.expect("rollback");
        assert_eq!(outbox::check(&pool, "m2").await.expect("check"), Checked::RolledBack);
        assert_eq!(outbox::check(&pool, "m2").await.expect("again"), Checked::RolledBack);

        // The check-back came first: the late publish fails, and its local
        // transaction (the debit with it) rolls back.
        assert_eq!(outbox::check(&pool, "m3").await.expect("check"), Checked::RolledBack);
        let mut tx = pool.begin().await.expect("begin");
        debit(&mut tx, "d3").await.expect("debit");
        let late = outbox::publish::<$db>(&mut tx, "m3").await;
        assert!(matches!(late, Err(PublishError::Dropped(ref id)) if id == "m3"), "{late:?}");
        tx.rollback().await.expect("rollback");
        assert_eq!(debits(pool.clone()).await, 1, "only d1 committed");

        // A second publish of one message is refused.
        let mut tx = pool.begin().await.expect("begin");
        let twice = outbox::publish::<$db>(&mut tx, "m1").await;
        assert!(matches!(twice, Err(PublishError::AlreadyPublished(_))), "{twice:?}");
        tx.rollback().await.expect("rollback");

        // A check-back while the local transaction is open waits for it,
        // then answers what it did.
        let mut tx = pool.begin().await.expect("begin");
        debit(&mut tx, "d4").await.expect("debit");
        outbox::publish::<$db>(&mut tx, "m4").await.expect("publish");
        let asking = {
            let pool = pool.clone();
            tokio::spawn(async move { outbox::check(&pool, "m4").await })
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!asking.is_finished(), "the check-back waited for the open transaction");
        tx.commit().await.expect("commit");
        assert_eq!(asking.await.expect("task").expect("check"), Checked::Committed);
        assert_eq!(debits(pool.clone()).await, 2);
    }};
}

#[tokio::test]
async fn the_outbox_commits_with_the_change_and_a_check_back_decides_once_on_sqlite() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(dir.path().join("producer.db"))
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .expect("open");
    outbox_cases!(
        Sqlite,
        pool,
        "INSERT INTO debits (id) VALUES ($1)",
        "SELECT COUNT(*) FROM debits"
    );
}

#[tokio::test]
async fn the_outbox_commits_with_the_change_and_a_check_back_decides_once_on_postgres() {
    let server = Server::start().await;
    let url = server.database("outbox").await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .connect(&url)
        .await
        .expect("connect");
    outbox_cases!(
        Postgres,
        pool,
        "INSERT INTO debits (id) VALUES ($1)",
        "SELECT COUNT(*) FROM debits"
    );
}
