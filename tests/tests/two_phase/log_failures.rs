//! A log that fails writes (issue 17 item 1): a real coordinator on a real
//! SQLite log, with writes failed in front of it. A few failures are
//! retried with backoff and nobody notices; a log that takes no writes at
//! all makes the clients waiting on a decision hear UNAVAILABLE with the
//! store's reason (never an outcome that is not durable), the node answer
//! NOT_SERVING, and, once writes succeed again, the node serve and finish
//! the transaction by itself, without a restart.

use std::sync::Arc;
use std::time::Duration;

use concord_coordinator::api::{self, Access, Limits};
use concord_coordinator::runtime::Runtime;
use concord_coordinator::store::Store;
use concord_coordinator::store::sqlite::SqliteStore;
use concord_participant::{BeginOptions, BranchSpec, ClientError, CoordinatorClient, Outcome};
use concord_proto::v1 as pb;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use super::support::faulty_store::FaultyStore;
use super::support::{TestParticipant, coordinator_state, eventually, quick_config};

/// A coordinator served over gRPC on `127.0.0.1:0` with its log behind
/// `FaultyStore`.
struct Served {
    url: String,
    store: Arc<FaultyStore>,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Served {
    async fn start(dir: &std::path::Path) -> Self {
        let sqlite = SqliteStore::open_dir(dir).await.expect("sqlite log");
        let store = Arc::new(FaultyStore::new(Arc::new(sqlite)));
        let runtime = Runtime::start(Arc::clone(&store) as Arc<dyn Store>, quick_config())
            .await
            .expect("runtime");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let server = tokio::spawn({
            let stop = stop.clone();
            async move {
                let served = api::serve(
                    listener,
                    runtime.clone(),
                    Limits::default(),
                    Access::default(),
                    stop.cancelled_owned(),
                )
                .await;
                assert!(served.is_ok(), "{served:?}");
                runtime.shutdown().await;
            }
        });
        Self {
            url,
            store,
            stop,
            server,
        }
    }

    async fn health(&self) -> i32 {
        let channel = tonic::transport::Endpoint::from_shared(self.url.clone())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: "concord.v1.Coordinator".into(),
            })
            .await
            .expect("health")
            .into_inner()
            .status
    }

    async fn stop(self) {
        self.stop.cancel();
        let _ = self.server.await;
    }
}

fn transfer(a: &TestParticipant, b: &TestParticipant) -> BeginOptions {
    let branch = |url: &str| BranchSpec {
        participant: url.to_owned(),
        payload: b"commit".to_vec(),
        name: None,
    };
    BeginOptions {
        branches: vec![branch(&a.url), branch(&b.url)],
        ..BeginOptions::default()
    }
}

#[tokio::test]
async fn a_log_that_fails_a_few_writes_then_takes_them_commits_as_usual() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Served::start(&dir.path().join("coordinator")).await;
    let a = TestParticipant::start(dir.path(), "a", None).await;
    let b = TestParticipant::start(dir.path(), "b", None).await;
    let client = CoordinatorClient::connect(node.url.clone()).expect("client");
    let id = client
        .begin(transfer(&a, &b))
        .await
        .expect("begin")
        .transaction_id;
    // The decision's write fails three times (fewer than the six attempts
    // after which a client is told), then goes through.
    let before = node.store.appends();
    node.store.fail_next(3);
    assert_eq!(
        client.commit(&id).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    assert!(
        node.store.appends() >= before + 4,
        "the failed writes were retried"
    );
    eventually("both banks committed", || async {
        let done = a.effects(&id).await == ["prepare", "commit"]
            && b.effects(&id).await == ["prepare", "commit"];
        done.then_some(())
    })
    .await;
    assert_eq!(node.health().await, ServingStatus::Serving as i32);
    node.stop().await;
}

#[tokio::test]
async fn a_log_that_takes_no_writes_answers_unavailable_and_not_serving_then_recovers_by_itself() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("coordinator");
    let node = Served::start(&data).await;
    let a = TestParticipant::start(dir.path(), "a", None).await;
    let b = TestParticipant::start(dir.path(), "b", None).await;
    let client = CoordinatorClient::connect(node.url.clone()).expect("client");
    let id = client
        .begin(transfer(&a, &b))
        .await
        .expect("begin")
        .transaction_id;

    // The disk fills up between the prepares and the decision.
    node.store.fail_always(true);
    let answer = client.commit(&id).await;
    // Not COMMITTED (the decision is not durable, R1), not ABORTED (it may
    // yet be), and not silence: UNAVAILABLE naming the store's error.
    match &answer {
        Err(ClientError::Unavailable(message)) => {
            assert!(message.contains("No space left on device"), "{message}");
            assert!(message.contains("keeps trying"), "{message}");
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }
    assert_eq!(node.health().await, ServingStatus::NotServing as i32);
    // Nothing was decided: the log holds the transaction as active, and
    // neither bank heard a Commit.
    assert_eq!(
        coordinator_state(&data, &id).await.as_deref(),
        Some("active")
    );
    assert_eq!(a.effects(&id).await, ["prepare"]);
    assert_eq!(b.effects(&id).await, ["prepare"]);
    // A new transaction cannot be recorded either, and says so.
    match client.begin(BeginOptions::default()).await {
        Err(ClientError::Unavailable(message)) => {
            assert!(message.contains("No space left on device"), "{message}");
        }
        other => panic!("expected UNAVAILABLE, got {other:?}"),
    }

    // Space is freed: the node serves again and finishes the transaction,
    // without a restart.
    node.store.fail_always(false);
    eventually("the decision is written and delivered", || async {
        let done = a.effects(&id).await == ["prepare", "commit"]
            && b.effects(&id).await == ["prepare", "commit"];
        done.then_some(())
    })
    .await;
    eventually("the node serves again", || async {
        (node.health().await == ServingStatus::Serving as i32).then_some(())
    })
    .await;
    let txn = client.transaction(&id).await.expect("get");
    assert!(
        txn.state == pb::TransactionState::Committed as i32
            || txn.state == pb::TransactionState::Committing as i32,
        "{txn:?}"
    );
    // Commit asked again tells the outcome now.
    assert_eq!(
        client.commit(&id).await.expect("commit again"),
        Outcome::Committed { read_only: false }
    );
    let again = client
        .begin(transfer(&a, &b))
        .await
        .expect("begin after recovery")
        .transaction_id;
    assert_eq!(
        client.commit(&again).await.expect("commit after recovery"),
        Outcome::Committed { read_only: false }
    );
    node.stop().await;
    // Let the sleeps settle before the temp dir goes.
    tokio::time::sleep(Duration::from_millis(10)).await;
}

/// §3 and R7 (found by the simulation with store faults): a keyed request
/// retried while the first one's record is still being written must not be
/// answered as if it were durable. The retry is UNAVAILABLE ("still being
/// recorded"), and once the record is durable a retry gets the first one.
#[tokio::test]
async fn a_key_retried_while_its_first_request_is_being_recorded_is_not_told_it_is_accepted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Served::start(&dir.path().join("coordinator")).await;
    let client = CoordinatorClient::connect(node.url.clone()).expect("client");
    let saga = pb::SubmitSagaRequest {
        idempotency_key: "trip-9".into(),
        steps: vec![pb::SagaStep {
            name: "pay".into(),
            participant: "http://127.0.0.1:1".into(),
            kind: pb::StepKind::Pivot as i32,
            action: b"x".to_vec(),
            ..pb::SagaStep::default()
        }],
        ..pb::SubmitSagaRequest::default()
    };
    node.store.slow_next(1_000);
    let first = tokio::spawn({
        let (client, saga) = (client.clone(), saga.clone());
        async move { client.raw().submit_saga(saga).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = client
        .raw()
        .submit_saga(saga.clone())
        .await
        .expect_err("not accepted before it is durable");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    assert!(
        status.message().contains("still being recorded"),
        "{}",
        status.message()
    );
    let first = first
        .await
        .expect("first request")
        .expect("accepted once durable")
        .into_inner();
    assert!(first.created);
    let again = client
        .raw()
        .submit_saga(saga)
        .await
        .expect("a retry after it is durable")
        .into_inner();
    assert_eq!(
        (again.transaction_id, again.created),
        (first.transaction_id, false)
    );
    node.stop().await;
}

/// A transaction whose first record is still being written (a slow disk)
/// is in memory only, yet the listing shows it, as GetTransaction would:
/// every transaction in flight is visible to an operator.
#[tokio::test]
async fn a_transaction_whose_record_is_still_being_written_is_listed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Served::start(&dir.path().join("coordinator")).await;
    let client = CoordinatorClient::connect(node.url.clone()).expect("client");
    node.store.slow_next(1_500);
    let begin = {
        let client = client.clone();
        tokio::spawn(async move { client.begin(BeginOptions::default()).await })
    };
    let listed = eventually("listed while its record is written", || async {
        let page = client
            .raw()
            .list_transactions(pb::ListTransactionsRequest::default())
            .await
            .ok()?
            .into_inner();
        page.transactions.into_iter().next()
    })
    .await;
    assert_eq!(listed.state, pb::TransactionState::Active as i32);
    assert_eq!(
        coordinator_state(&dir.path().join("coordinator"), &listed.id).await,
        None,
        "listed before the log had it"
    );
    let begun = begin.await.expect("join").expect("begin");
    assert_eq!(begun.transaction_id, listed.id);
    node.stop().await;
}
