//! Network faults between coordinator and participants, and between client
//! and coordinator, injected by a loopback proxy (`support::proxy`):
//! partitions during prepare, during phase 2 and during a saga
//! compensation, and a response lost after the participant applied the
//! change. Outcomes are checked in the participants' databases.

#[path = "../support/mod.rs"]
mod support;

use std::net::SocketAddr;
use std::time::Duration;

use concord_participant::saga::{RetryPolicy, Saga, SagaState, Step};
use concord_participant::{BeginOptions, ClientError, CommitOptions, CoordinatorClient, Outcome};
use concord_proto::v1 as pb;
use support::proxy::Proxy;
use support::saga::StepParticipant;
use support::{
    TestParticipant, client, coordinator_step_state, eventually, quick_config, start_coordinator,
};

fn addr(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .parse()
        .expect("socket address")
}

async fn state(client: &CoordinatorClient, id: &str) -> pb::TransactionState {
    pb::TransactionState::try_from(client.transaction(id).await.expect("get").state).expect("state")
}

async fn until(client: &CoordinatorClient, id: &str, want: pb::TransactionState) {
    eventually(&format!("{id} reaches {want:?}"), || async {
        (state(client, id).await == want).then_some(())
    })
    .await;
}

/// A coordinator and two participants, b reached only through a proxy.
struct Setup {
    _dir: tempfile::TempDir,
    _node: concord_coordinator::node::Node,
    client: CoordinatorClient,
    a: TestParticipant,
    b: TestParticipant,
    proxy: Proxy,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let a = TestParticipant::start(dir.path(), "a", None).await;
    let b = TestParticipant::start(dir.path(), "b", None).await;
    let proxy = Proxy::start(addr(&b.url)).await;
    Setup {
        _dir: dir,
        _node: node,
        client,
        a,
        b,
        proxy,
    }
}

impl Setup {
    async fn transaction(&self) -> String {
        let id = self
            .client
            .begin(BeginOptions::default())
            .await
            .expect("begin")
            .transaction_id;
        self.client
            .enlist(&id, &self.a.url, "commit", None)
            .await
            .expect("enlist a");
        self.client
            .enlist(&id, &self.proxy.url(), "commit", None)
            .await
            .expect("enlist b");
        id
    }
}

#[tokio::test]
async fn a_partition_during_prepare_aborts_everywhere() {
    let s = setup().await;
    let id = s.transaction().await;
    s.proxy.partition(true, true);
    let outcome = s
        .client
        .commit_with(
            &id,
            CommitOptions {
                wait_for_completion: false,
                prepare_timeout: Some(Duration::from_millis(300)),
            },
        )
        .await
        .expect("commit");
    assert!(
        matches!(&outcome, Outcome::Aborted { reason } if reason.contains("deadline")),
        "{outcome:?}"
    );
    // b, cut off, is still owed its Abort: the transaction waits for it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(state(&s.client, &id).await, pb::TransactionState::Aborting);
    s.proxy.heal();
    until(&s.client, &id, pb::TransactionState::Aborted).await;
    assert_eq!(s.a.effects(&id).await, ["prepare", "abort"]);
    // b's held Prepare arrived after (or with) the Abort: whichever came
    // first, nothing was committed there.
    assert!(!s.b.effects(&id).await.contains(&"commit".to_string()));
    assert!(
        s.b.ledger(&id)
            .await
            .iter()
            .any(|row| row.starts_with("abort="))
    );
}

#[tokio::test]
async fn a_partition_during_phase_two_delays_the_commit_but_never_loses_it() {
    let s = setup().await;
    // With latency on b's link, its Commit is still on the wire when the
    // client hears COMMITTED; the partition catches it there.
    s.proxy.latency(Duration::from_millis(300));
    let id = s.transaction().await;
    assert_eq!(
        s.client.commit(&id).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    s.proxy.partition(true, true);
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        state(&s.client, &id).await,
        pb::TransactionState::Committing
    );
    assert_eq!(s.b.effects(&id).await, ["prepare"]);
    s.proxy.latency(Duration::ZERO);
    s.proxy.heal();
    until(&s.client, &id, pb::TransactionState::Committed).await;
    assert_eq!(s.a.effects(&id).await, ["prepare", "commit"]);
    assert_eq!(s.b.effects(&id).await, ["prepare", "commit"]);
}

#[tokio::test]
async fn a_lost_acknowledgement_is_retried_and_applied_once() {
    let s = setup().await;
    s.proxy.latency(Duration::from_millis(150));
    let id = s.transaction().await;
    assert_eq!(
        s.client.commit(&id).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    // The Commit gets through; b's acknowledgement does not.
    s.proxy.partition(false, true);
    eventually("b applies the commit", || async {
        (s.b.effects(&id).await == ["prepare", "commit"]).then_some(())
    })
    .await;
    // The held acknowledgement is lost with the connection.
    s.proxy.latency(Duration::ZERO);
    s.proxy.drop_connections();
    s.proxy.heal();
    until(&s.client, &id, pb::TransactionState::Committed).await;
    // The coordinator delivered again; b's ledger answered the duplicate
    // without a second effect (I5).
    assert_eq!(s.b.effects(&id).await, ["prepare", "commit"]);
    let txn = s.client.transaction(&id).await.expect("get");
    let b = txn
        .branches
        .iter()
        .find(|b| b.participant == s.proxy.url())
        .expect("branch b");
    assert!(
        b.attempts >= 3,
        "prepare and at least two commits: {}",
        b.attempts
    );
}

#[tokio::test]
async fn a_partition_during_a_saga_compensation_delays_it_but_never_drops_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let p = StepParticipant::start(dir.path(), "steps").await;
    let proxy = Proxy::start(addr(&p.url)).await;
    proxy.latency(Duration::from_millis(250));
    let retry = RetryPolicy {
        max_delay: Some(Duration::from_millis(100)),
        ..RetryPolicy::attempts(3, Duration::from_millis(20))
    };
    let accepted = Saga::new()
        .step(
            Step::new("a", proxy.url())
                .action("ok")
                .compensation("ok")
                .retry(retry.clone()),
        )
        .step(
            Step::new("b", &p.url)
                .action("refuse")
                .compensation("ok")
                .retry(retry),
        )
        .submit(&client)
        .await
        .expect("submit");
    let id = accepted.transaction_id;
    // b refuses; a's compensation is on the wire when the partition falls.
    until(&client, &id, pb::TransactionState::Compensating).await;
    proxy.partition(true, true);
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        state(&client, &id).await,
        pb::TransactionState::Compensating
    );
    assert_eq!(p.effects(&id).await, ["action:a"]);
    proxy.latency(Duration::ZERO);
    proxy.drop_connections();
    proxy.heal();
    let ended = eventually("the saga ends", || async {
        SagaState::from_wire(client.transaction(&id).await.ok()?.state).filter(|s| s.is_terminal())
    })
    .await;
    assert_eq!(ended, SagaState::Compensated);
    assert_eq!(p.effects(&id).await, ["action:a", "compensate:a"]);
}

#[tokio::test]
async fn a_client_that_loses_the_commit_answer_learns_the_outcome_by_asking() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let a = TestParticipant::start(dir.path(), "a", None).await;
    let b = TestParticipant::start(dir.path(), "b", None).await;
    let proxy = Proxy::start(node.addr()).await;
    let client = CoordinatorClient::connect(proxy.url())
        .expect("client")
        .with_timeout(Duration::from_millis(500));
    let id = client
        .begin(BeginOptions::default())
        .await
        .expect("begin")
        .transaction_id;
    client
        .enlist(&id, &a.url, "commit", None)
        .await
        .expect("enlist");
    client
        .enlist(&id, &b.url, "commit", None)
        .await
        .expect("enlist");
    // The Commit reaches the coordinator; its answer does not.
    proxy.partition(false, true);
    let lost = client.commit(&id).await;
    assert!(
        matches!(lost, Err(ClientError::DeadlineExceeded(_))),
        "{lost:?}"
    );
    proxy.drop_connections();
    proxy.heal();
    // Asking again (Commit is idempotent) gives the outcome that was
    // decided; the first try may meet the broken connection, which the SDK
    // reports as UNAVAILABLE: retryable.
    let again = eventually("the commit answer", || async {
        match client.commit(&id).await {
            Err(ClientError::Unavailable(_)) => None,
            other => Some(other),
        }
    })
    .await;
    assert_eq!(
        again.expect("commit again"),
        Outcome::Committed { read_only: false }
    );
    eventually("both commit once", || async {
        (a.effects(&id).await == ["prepare", "commit"]
            && b.effects(&id).await == ["prepare", "commit"])
        .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_step_whose_answers_are_lost_is_recorded_unknown_before_it_is_compensated() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = client(&node);
    let p = StepParticipant::start(dir.path(), "steps").await;
    let proxy = Proxy::start(addr(&p.url)).await;
    // Requests reach the participant, answers never come back: the action
    // runs, the coordinator cannot know it did.
    proxy.partition(false, true);
    let accepted = Saga::new()
        .step(
            Step::new("a", proxy.url())
                .action("ok")
                .compensation("stuck")
                .attempt_timeout(Duration::from_millis(200))
                .retry(RetryPolicy::attempts(2, Duration::from_millis(10))),
        )
        .submit(&client)
        .await
        .expect("submit");
    let id = accepted.transaction_id;
    let recorded = eventually("step a recorded", || async {
        coordinator_step_state(&coordinator_dir, &id, 0)
            .await
            .filter(|state| state != "pending")
    })
    .await;
    // I4: past its budget the step may have run, and that is what must be
    // on disk before its compensation goes out. A record saying
    // "compensating" would read as "never finished" after a restart, and
    // the saga would go forward over a compensation already sent.
    assert_eq!(recorded, "unknown");
    assert_eq!(p.effects(&id).await, ["action:a"]);
    assert_eq!(
        state(&client, &id).await,
        pb::TransactionState::Compensating
    );
}
