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

/// A service's SQLite database in WAL mode, waiting up to 10 s for the
/// write lock (a check-back waits for an open local transaction).
async fn sqlite(path: &std::path::Path) -> Pool<Sqlite> {
    let options = sqlx::sqlite::SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    sqlx::sqlite::SqlitePoolOptions::new()
        .connect_with(options)
        .await
        .expect("open")
}

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
    let pool = sqlite(&dir.path().join("producer.db")).await;
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

/// A destination that writes each message's payload to `inbox`.
struct Inbox;

impl concord_participant::MessageDestination for Inbox {
    async fn deliver(
        &self,
        tx: &mut LocalTxOf<Sqlite>,
        message: &concord_participant::BranchContext,
        payload: &[u8],
    ) -> Result<(), concord_participant::ParticipantError> {
        sqlx::query("INSERT INTO inbox (message, body) VALUES ($1, $2)")
            .bind(&message.transaction_id)
            .bind(payload)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// The two Participant RPCs of messages over real gRPC: a destination
/// applies a message once however often it is delivered, alone or in a
/// batch; a producer answers check-backs from its outbox; a service that
/// takes no messages says so.
#[tokio::test]
async fn a_destination_applies_each_message_once_and_a_producer_answers_its_check_backs() {
    use concord_participant::{ParticipantService, Unsupported};
    use concord_proto::v1 as pb;

    let dir = tempfile::tempdir().expect("temp dir");
    let pool = sqlite(&dir.path().join("service.db")).await;
    sqlx::query("CREATE TABLE inbox (message TEXT NOT NULL, body BLOB NOT NULL)")
        .execute(&pool)
        .await
        .expect("inbox");
    let stop = tokio_util::sync::CancellationToken::new();
    let serve = |service: ParticipantService<Unsupported, Unsupported, Sqlite>| {
        let stop = stop.clone();
        async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let url = format!("http://{}", listener.local_addr().expect("addr"));
            let service = service.with_coordinator_keys(crate::support::keys::trusted());
            tokio::spawn(service.serve(listener, stop.cancelled_owned()));
            url
        }
    };
    let with_inbox = ParticipantService::new(Unsupported, pool.clone())
        .await
        .expect("service")
        .with_messages(Inbox);
    let mut service = super::connect(&serve(with_inbox).await).await;
    let deliver = |name: &str| pb::DeliverRequest {
        branch: super::branch("m-7", name),
        payload: b"transfer completed".to_vec(),
    };
    // Delivered three times, once in a batch: one row.
    service.deliver(deliver("audit")).await.expect("deliver");
    service.deliver(deliver("audit")).await.expect("again");
    let mut batch = service
        .batch(pb::BatchRequest {
            calls: vec![pb::BatchCall {
                call: Some(pb::batch_call::Call::Deliver(deliver("audit"))),
                ..Default::default()
            }],
        })
        .await
        .expect("batch")
        .into_inner();
    let answer = batch.message().await.expect("answer").expect("one");
    assert_eq!(answer.code, 0, "{answer:?}");
    let (rows,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM inbox")
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 1, "one effect however often delivered (M4)");

    // The check-back: published and committed, then one never published.
    // IMMEDIATE: on SQLite a deferred transaction whose first statement
    // reads (publish looks for a tombstone first) fails at its first write
    // when the service's own maintenance wrote meanwhile (SQLITE_BUSY).
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
    outbox::publish::<Sqlite>(&mut tx, "m-8")
        .await
        .expect("publish");
    tx.commit().await.expect("commit");
    let check = |id: &str| pb::CheckMessageRequest {
        transaction_id: id.into(),
    };
    use pb::check_message_response::Result as Answer;
    let committed = service.check_message(check("m-8")).await.expect("check");
    assert_eq!(committed.into_inner().result, Answer::Committed as i32);
    let unknown = service.check_message(check("m-9")).await.expect("check");
    assert_eq!(unknown.into_inner().result, Answer::RolledBack as i32);
    let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.expect("begin");
    assert!(matches!(
        outbox::publish::<Sqlite>(&mut tx, "m-9").await,
        Err(PublishError::Dropped(_))
    ));
    tx.rollback().await.expect("rollback");
    let bad = service
        .check_message(check(""))
        .await
        .expect_err("empty id");
    assert_eq!(bad.code(), tonic::Code::InvalidArgument);

    // A service that takes no messages answers UNIMPLEMENTED.
    let plain = ParticipantService::new(Unsupported, pool.clone())
        .await
        .expect("service");
    let mut plain = super::connect(&serve(plain).await).await;
    let refused = plain.deliver(deliver("audit")).await.expect_err("no");
    assert_eq!(refused.code(), tonic::Code::Unimplemented, "{refused:?}");
    stop.cancel();
}
