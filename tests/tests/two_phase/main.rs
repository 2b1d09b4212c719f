//! Two-phase commit over real gRPC on loopback, with the coordinator's log
//! and every participant's database in real SQLite files: each rule R1–R7 of
//! docs/design.md §2, checked by what the participants' databases hold.

#[path = "../support/mod.rs"]
mod support;

mod admin;
mod bad_input;
mod batch;
mod decision;
mod docs;
mod fuzz;
mod groups;
mod log_failures;
mod tls;
mod unreachable;
mod watch;

use std::time::Duration;

use concord_coordinator::node::Node;
use concord_participant::{BeginOptions, ClientError, CommitOptions, CoordinatorClient, Outcome};
use concord_proto::v1 as pb;
use support::{
    TestParticipant, client, coordinator_state, eventually, quick_config, start_coordinator,
};

struct Setup {
    dir: tempfile::TempDir,
    _node: Node,
    client: CoordinatorClient,
    a: TestParticipant,
    b: TestParticipant,
}

impl Setup {
    fn coordinator_dir(&self) -> std::path::PathBuf {
        self.dir.path().join("coordinator")
    }
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = client(&node);
    let a = TestParticipant::start(dir.path(), "a", Some(&coordinator_dir)).await;
    let b = TestParticipant::start(dir.path(), "b", Some(&coordinator_dir)).await;
    Setup {
        dir,
        _node: node,
        client,
        a,
        b,
    }
}

async fn begin(client: &CoordinatorClient) -> String {
    client
        .begin(BeginOptions::default())
        .await
        .expect("begin")
        .transaction_id
}

async fn state(client: &CoordinatorClient, id: &str) -> pb::TransactionState {
    let txn = client.transaction(id).await.expect("get transaction");
    pb::TransactionState::try_from(txn.state).expect("known state")
}

async fn until_state(client: &CoordinatorClient, id: &str, want: pb::TransactionState) {
    eventually(&format!("{id} reaches {want:?}"), || async {
        (state(client, id).await == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn commit_applies_at_every_participant_after_the_decision_is_durable() {
    let s = setup().await;
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "commit", None)
        .await
        .expect("enlist a");
    s.client
        .enlist(&id, &s.b.url, "commit", None)
        .await
        .expect("enlist b");
    let outcome = s.client.commit(&id).await.expect("commit");
    assert_eq!(outcome, Outcome::Committed { read_only: false });
    // R1: the decision is on disk by the time the client hears it.
    let on_disk = coordinator_state(&s.coordinator_dir(), &id).await;
    assert!(
        matches!(on_disk.as_deref(), Some("committing" | "committed")),
        "{on_disk:?}"
    );
    until_state(&s.client, &id, pb::TransactionState::Committed).await;
    // Each participant prepared and committed exactly once, and heard
    // Commit only after the decision was durable (no r1-violation).
    assert_eq!(s.a.effects(&id).await, ["prepare", "commit"]);
    assert_eq!(s.b.effects(&id).await, ["prepare", "commit"]);
    let txn = s.client.transaction(&id).await.expect("get");
    assert_eq!(txn.branches.len(), 2);
    assert!(
        txn.branches
            .iter()
            .all(|b| b.state == pb::BranchState::Committed as i32)
    );
    assert!(txn.decided_at_ms >= txn.created_at_ms && txn.ended_at_ms >= txn.decided_at_ms);
}

#[tokio::test]
async fn wait_for_completion_answers_after_every_participant_committed() {
    let s = setup().await;
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "commit", None)
        .await
        .expect("enlist");
    s.client
        .enlist(&id, &s.b.url, "commit", None)
        .await
        .expect("enlist");
    let options = CommitOptions {
        wait_for_completion: true,
        prepare_timeout: None,
    };
    let outcome = s.client.commit_with(&id, options).await.expect("commit");
    assert_eq!(outcome, Outcome::Committed { read_only: false });
    // R4: no polling needed; both effects are already there.
    assert_eq!(s.a.effects(&id).await, ["prepare", "commit"]);
    assert_eq!(s.b.effects(&id).await, ["prepare", "commit"]);
    assert_eq!(state(&s.client, &id).await, pb::TransactionState::Committed);
}

#[tokio::test]
async fn an_abort_vote_aborts_everywhere() {
    let s = setup().await;
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "commit", None)
        .await
        .expect("enlist");
    s.client
        .enlist(&id, &s.b.url, "abort", None)
        .await
        .expect("enlist");
    let outcome = s.client.commit(&id).await.expect("commit");
    assert_eq!(
        outcome,
        Outcome::Aborted {
            reason: "scripted refusal".into()
        }
    );
    until_state(&s.client, &id, pb::TransactionState::Aborted).await;
    // I1: never committed anywhere. The YES voter was told to abort; the
    // refuser undid its own part (its prepare effect rolled back with it).
    assert_eq!(s.a.effects(&id).await, ["prepare", "abort"]);
    assert!(s.b.effects(&id).await.is_empty());
    assert_eq!(s.b.ledger(&id).await, ["prepare=abort"]);
}

#[tokio::test]
async fn a_participant_that_hangs_past_the_prepare_deadline_votes_abort() {
    let s = setup().await;
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "commit", None)
        .await
        .expect("enlist");
    s.client
        .enlist(&id, &s.b.url, "hang", None)
        .await
        .expect("enlist");
    let options = CommitOptions {
        wait_for_completion: false,
        prepare_timeout: Some(Duration::from_millis(200)),
    };
    let outcome = s.client.commit_with(&id, options).await.expect("commit");
    let Outcome::Aborted { reason } = outcome else {
        panic!("expected an abort, got {outcome:?}");
    };
    assert!(reason.contains("deadline"), "{reason}");
    until_state(&s.client, &id, pb::TransactionState::Aborted).await;
    assert_eq!(s.a.effects(&id).await, ["prepare", "abort"]);
    // The slow prepare was cut off or refused: nothing of it remains.
    eventually("b settles", || async {
        let ledger = s.b.ledger(&id).await;
        ledger
            .iter()
            .any(|row| row.starts_with("abort="))
            .then_some(())
    })
    .await;
    assert!(!s.b.effects(&id).await.contains(&"commit".to_string()));
}

#[tokio::test]
async fn client_rollback_before_commit_aborts_without_calling_any_branch() {
    let s = setup().await;
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "commit", None)
        .await
        .expect("enlist");
    s.client
        .enlist(&id, &s.b.url, "commit", None)
        .await
        .expect("enlist");
    s.client
        .rollback(&id, "changed my mind")
        .await
        .expect("rollback");
    until_state(&s.client, &id, pb::TransactionState::Aborted).await;
    // Never sent a Prepare, so holding nothing: presumed abort (R2) sends
    // them nothing, and a participant asking is told ABORTED.
    assert!(s.a.ledger(&id).await.is_empty());
    assert!(s.b.ledger(&id).await.is_empty());
    assert!(s.a.effects(&id).await.is_empty());
    let mut raw = s.client.raw();
    let asked = raw
        .get_outcome(pb::GetOutcomeRequest {
            transaction_id: id.clone(),
        })
        .await
        .expect("get outcome")
        .into_inner();
    assert_eq!(asked.outcome, pb::Outcome::Aborted as i32);
    let txn = s.client.transaction(&id).await.expect("get");
    assert_eq!(txn.reason, "changed my mind");
    // Rolling back again is harmless; committing now reports the abort.
    s.client
        .rollback(&id, "again")
        .await
        .expect("second rollback");
    assert!(matches!(
        s.client.commit(&id).await,
        Ok(Outcome::Aborted { .. })
    ));
}

#[tokio::test]
async fn a_single_branch_commits_in_one_phase() {
    let s = setup().await;
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "commit", None)
        .await
        .expect("enlist");
    let outcome = s.client.commit(&id).await.expect("commit");
    assert_eq!(outcome, Outcome::Committed { read_only: false });
    // R6: one round trip: prepare and commit in one local transaction.
    assert_eq!(s.a.effects(&id).await, ["prepare", "commit"]);
    assert_eq!(
        s.a.ledger(&id).await,
        ["commit=one_phase", "prepare=commit"]
    );
    until_state(&s.client, &id, pb::TransactionState::Committed).await;
    // No decision record was forced: the transaction went straight to its end.
    let txn = s.client.transaction(&id).await.expect("get");
    assert_eq!(txn.branches[0].attempts, 1);
}

#[tokio::test]
async fn a_single_branch_committed_in_its_begin_commits_only_once_it_is_in_the_log() {
    use concord_participant::BranchSpec;
    let s = setup().await;
    // The participant checks the coordinator's log when the one-phase
    // commit arrives; several rounds, since the write and the call race.
    for _ in 0..10 {
        let (begun, outcome) = s
            .client
            .begin_and_commit(BeginOptions {
                branches: vec![BranchSpec {
                    participant: s.a.url.clone(),
                    payload: b"commit".to_vec(),
                    name: None,
                }],
                ..Default::default()
            })
            .await
            .expect("begin and commit");
        assert_eq!(outcome, Outcome::Committed { read_only: false });
        assert_eq!(
            s.a.effects(&begun.transaction_id).await,
            ["prepare", "commit"]
        );
    }
}

#[tokio::test]
async fn read_only_branches_skip_phase_two() {
    let s = setup().await;
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "readonly", None)
        .await
        .expect("enlist");
    s.client
        .enlist(&id, &s.b.url, "commit", None)
        .await
        .expect("enlist");
    let outcome = s.client.commit_with(
        &id,
        CommitOptions {
            wait_for_completion: true,
            prepare_timeout: None,
        },
    );
    assert_eq!(
        outcome.await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    assert_eq!(s.a.effects(&id).await, ["prepare"]);
    assert_eq!(s.b.effects(&id).await, ["prepare", "commit"]);

    let all_read_only = begin(&s.client).await;
    s.client
        .enlist(&all_read_only, &s.a.url, "readonly", None)
        .await
        .expect("enlist");
    s.client
        .enlist(&all_read_only, &s.b.url, "readonly", None)
        .await
        .expect("enlist");
    let outcome = s.client.commit(&all_read_only).await.expect("commit");
    assert_eq!(outcome, Outcome::Committed { read_only: true });
    until_state(&s.client, &all_read_only, pb::TransactionState::Committed).await;
    assert_eq!(s.a.effects(&all_read_only).await, ["prepare"]);
    assert_eq!(s.b.effects(&all_read_only).await, ["prepare"]);
    assert!(
        s.client
            .transaction(&all_read_only)
            .await
            .expect("get")
            .read_only
    );
}

#[tokio::test]
async fn the_same_idempotency_key_gives_one_transaction() {
    let s = setup().await;
    let options = || BeginOptions {
        idempotency_key: Some("order-42".into()),
        ..Default::default()
    };
    let first = s.client.begin(options()).await.expect("begin");
    let second = s.client.begin(options()).await.expect("begin again");
    assert!(first.created);
    assert!(!second.created);
    assert_eq!(first.transaction_id, second.transaction_id);
    // Still the same after the transaction ended and left memory.
    s.client
        .enlist(&first.transaction_id, &s.a.url, "commit", Some("only"))
        .await
        .expect("enlist");
    // A retried enlist of the same branch adds nothing.
    let again = s
        .client
        .enlist(&first.transaction_id, &s.a.url, "commit", Some("only"))
        .await
        .expect("enlist again");
    assert_eq!(again, "only");
    s.client
        .commit_with(
            &first.transaction_id,
            CommitOptions {
                wait_for_completion: true,
                prepare_timeout: None,
            },
        )
        .await
        .expect("commit");
    let third = s
        .client
        .begin(options())
        .await
        .expect("begin after the end");
    assert_eq!(third.transaction_id, first.transaction_id);
    assert!(!third.created);
    assert_eq!(
        s.a.effects(&first.transaction_id).await,
        ["prepare", "commit"]
    );
    // A different key is a different transaction.
    let other = s
        .client
        .begin(BeginOptions {
            idempotency_key: Some("order-43".into()),
            ..Default::default()
        })
        .await
        .expect("begin");
    assert_ne!(other.transaction_id, first.transaction_id);
}

#[tokio::test]
async fn a_transaction_past_its_timeout_aborts_without_any_call() {
    let s = setup().await;
    let begun = s
        .client
        .begin(BeginOptions {
            timeout: Some(Duration::from_millis(100)),
            ..Default::default()
        })
        .await
        .expect("begin");
    let id = begun.transaction_id;
    s.client
        .enlist(&id, &s.a.url, "commit", None)
        .await
        .expect("enlist");
    until_state(&s.client, &id, pb::TransactionState::Aborted).await;
    let txn = s.client.transaction(&id).await.expect("get");
    assert!(txn.reason.contains("timed out"), "{}", txn.reason);
    // Never sent a Prepare: told nothing (R2).
    assert!(s.a.ledger(&id).await.is_empty());
    // A late commit learns the abort; a late enlist is refused.
    assert!(matches!(
        s.client.commit(&id).await,
        Ok(Outcome::Aborted { .. })
    ));
    let late = s.client.enlist(&id, &s.b.url, "commit", None).await;
    assert!(
        matches!(late, Err(ClientError::FailedPrecondition(_))),
        "{late:?}"
    );
}

#[tokio::test]
async fn phase_two_is_retried_until_the_participant_acknowledges() {
    let s = setup().await;
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "flaky-commit:3", None)
        .await
        .expect("enlist");
    s.client
        .enlist(&id, &s.b.url, "commit", None)
        .await
        .expect("enlist");
    assert_eq!(
        s.client.commit(&id).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    until_state(&s.client, &id, pb::TransactionState::Committed).await;
    assert_eq!(s.a.effects(&id).await, ["prepare", "commit"]);
    let txn = s.client.transaction(&id).await.expect("get");
    let flaky = txn
        .branches
        .iter()
        .find(|b| b.participant == s.a.url)
        .expect("branch a");
    // One prepare, three failed commits, one that worked.
    assert_eq!(flaky.attempts, 5);
    assert!(
        flaky.last_error.contains("scripted commit failure"),
        "{}",
        flaky.last_error
    );
}

#[tokio::test]
async fn phase_two_resumes_after_a_coordinator_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let a = TestParticipant::start(dir.path(), "a", Some(&coordinator_dir)).await;
    let b = TestParticipant::start(dir.path(), "b", Some(&coordinator_dir)).await;
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = client(&node);
    let id = begin(&client).await;
    client
        .enlist(&id, &a.url, "commit", None)
        .await
        .expect("enlist");
    // b cannot be reached: its address is a stopped participant's.
    let gone = TestParticipant::start(dir.path(), "gone", None).await;
    let gone_url = gone.url.clone();
    gone.stop().await;
    client
        .enlist(&id, &b.url, "commit", None)
        .await
        .expect("enlist");
    let undecided = begin(&client).await;
    client
        .enlist(&undecided, &a.url, "commit", None)
        .await
        .expect("enlist");
    client
        .enlist(&undecided, &gone_url, "commit", None)
        .await
        .expect("enlist");
    assert!(matches!(
        client.commit(&id).await,
        Ok(Outcome::Committed { .. })
    ));
    until_state(&client, &id, pb::TransactionState::Committed).await;
    node.shutdown().await.expect("shutdown");

    // R2: `undecided` never decided. After the restart it aborts, and the
    // participant that was enlisted is told.
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = support::client(&node);
    until_state(&client, &undecided, pb::TransactionState::Aborting).await;
    eventually("a hears the abort", || async {
        (a.ledger(&undecided).await == ["abort=tombstone"]).then_some(())
    })
    .await;
    assert_eq!(
        client.outcome(&undecided).await.expect("outcome"),
        Outcome::Aborted {
            reason: String::new()
        }
    );
    // The committed one stays committed (I2).
    assert_eq!(state(&client, &id).await, pb::TransactionState::Committed);
    assert_eq!(a.effects(&id).await, ["prepare", "commit"]);
    assert_eq!(b.effects(&id).await, ["prepare", "commit"]);
}

#[tokio::test]
async fn a_committed_decision_is_redelivered_after_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let a = TestParticipant::start(dir.path(), "a", Some(&coordinator_dir)).await;
    let b = TestParticipant::start(dir.path(), "b", Some(&coordinator_dir)).await;
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = client(&node);
    let id = begin(&client).await;
    client
        .enlist(&id, &a.url, "commit", None)
        .await
        .expect("enlist");
    // b fails its commit many times: phase 2 is still running at shutdown.
    client
        .enlist(&id, &b.url, "flaky-commit:1000000", None)
        .await
        .expect("enlist");
    assert!(matches!(
        client.commit(&id).await,
        Ok(Outcome::Committed { .. })
    ));
    eventually("b refused a commit", || async {
        let txn = client.transaction(&id).await.ok()?;
        txn.branches
            .iter()
            .any(|b| !b.last_error.is_empty())
            .then_some(())
    })
    .await;
    node.shutdown().await.expect("shutdown");
    assert_eq!(
        coordinator_state(&coordinator_dir, &id).await.as_deref(),
        Some("committing")
    );
    // Restarted while b still fails: the recovered transaction keeps
    // retrying, and shutting down does not wait for it to finish.
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = support::client(&node);
    assert_eq!(state(&client, &id).await, pb::TransactionState::Committing);
    eventually("the recovered delivery is retried", || async {
        let txn = client.transaction(&id).await.ok()?;
        txn.branches.iter().any(|b| b.attempts > 2).then_some(())
    })
    .await;
    tokio::time::timeout(Duration::from_secs(30), node.shutdown())
        .await
        .expect("shutdown does not hang on unfinished recovered work")
        .expect("shutdown");
    // b is replaced by a healthy participant on the same database and port.
    let b_addr = b.url.trim_start_matches("http://").to_owned();
    b.stop().await;
    let b =
        TestParticipant::restart_healthy(dir.path(), "b", Some(&coordinator_dir), &b_addr, None)
            .await;
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = support::client(&node);
    // R3: the restarted coordinator finishes phase 2.
    until_state(&client, &id, pb::TransactionState::Committed).await;
    assert_eq!(a.effects(&id).await, ["prepare", "commit"]);
    assert_eq!(b.effects(&id).await, ["prepare", "commit"]);
}

#[tokio::test]
async fn unknown_ids_are_not_found_and_presumed_aborted() {
    let s = setup().await;
    let unknown = "01890a5d-ac96-774b-bcce-b302099a8057";
    for result in [
        s.client.transaction(unknown).await.map(|_| ()),
        s.client.commit(unknown).await.map(|_| ()),
        s.client.rollback(unknown, "").await,
        s.client
            .enlist(unknown, &s.a.url, "commit", None)
            .await
            .map(|_| ()),
    ] {
        assert!(
            matches!(result, Err(ClientError::NotFound(_))),
            "{result:?}"
        );
    }
    // R2: a participant asking about an id nobody knows hears ABORTED.
    assert_eq!(
        s.client.outcome(unknown).await.expect("outcome"),
        Outcome::Aborted {
            reason: String::new()
        }
    );
}

#[tokio::test]
async fn enlisting_into_a_decided_transaction_is_refused() {
    let s = setup().await;
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "commit", None)
        .await
        .expect("enlist");
    s.client
        .enlist(&id, &s.b.url, "commit", None)
        .await
        .expect("enlist");
    s.client
        .commit_with(
            &id,
            CommitOptions {
                wait_for_completion: true,
                prepare_timeout: None,
            },
        )
        .await
        .expect("commit");
    let late = s.client.enlist(&id, &s.a.url, "commit", Some("late")).await;
    assert!(
        matches!(late, Err(ClientError::FailedPrecondition(_))),
        "{late:?}"
    );
    let rollback = s.client.rollback(&id, "too late").await;
    assert!(
        matches!(rollback, Err(ClientError::FailedPrecondition(_))),
        "{rollback:?}"
    );
    // A branch name enlisted twice with different content is a conflict.
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "commit", Some("x"))
        .await
        .expect("enlist");
    let conflict = s.client.enlist(&id, &s.b.url, "commit", Some("x")).await;
    assert!(
        matches!(conflict, Err(ClientError::AlreadyExists(_))),
        "{conflict:?}"
    );
    assert_eq!(
        s.client.transaction(&id).await.expect("get").branches.len(),
        1
    );
}

#[tokio::test]
async fn transactions_are_listed_newest_first_in_pages() {
    let s = setup().await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        ids.push(begin(&s.client).await);
    }
    s.client.rollback(&ids[0], "").await.expect("rollback");
    let mut raw = s.client.raw();
    let page = raw
        .list_transactions(pb::ListTransactionsRequest {
            needs_attention: false,
            states: vec![],
            page_size: 3,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let listed: Vec<&str> = page.transactions.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(listed, [ids[4].as_str(), ids[3].as_str(), ids[2].as_str()]);
    let rest = raw
        .list_transactions(pb::ListTransactionsRequest {
            needs_attention: false,
            states: vec![],
            page_size: 3,
            page_token: page.next_page_token,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    let listed: Vec<&str> = rest.transactions.iter().map(|t| t.id.as_str()).collect();
    assert_eq!(listed, [ids[1].as_str(), ids[0].as_str()]);
    assert!(rest.next_page_token.is_empty());
    let active = raw
        .list_transactions(pb::ListTransactionsRequest {
            needs_attention: false,
            states: vec![pb::TransactionState::Active as i32],
            page_size: 0,
            page_token: String::new(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(active.transactions.len(), 4);
}

/// Asks the reflection service of `$version` (v1 or v1alpha, each with its
/// own generated client) for the services, and for the file that defines
/// the Coordinator; returns the service names and that file's name.
macro_rules! reflect {
    ($version:ident, $channel:expr) => {{
        use tonic_reflection::pb::$version::ServerReflectionRequest;
        use tonic_reflection::pb::$version::server_reflection_client::ServerReflectionClient;
        use tonic_reflection::pb::$version::server_reflection_request::MessageRequest;
        use tonic_reflection::pb::$version::server_reflection_response::MessageResponse;
        let ask = |message| ServerReflectionRequest {
            host: String::new(),
            message_request: Some(message),
        };
        let requests = [
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "concord.v1.Coordinator".into(),
            )),
        ];
        let mut answers = ServerReflectionClient::new($channel)
            .server_reflection_info(tokio_stream::iter(requests))
            .await
            .expect(concat!("reflection ", stringify!($version)))
            .into_inner();
        let mut services = Vec::new();
        let mut files = Vec::new();
        while let Some(answer) = answers.message().await.expect("answer") {
            match answer.message_response {
                Some(MessageResponse::ListServicesResponse(list)) => {
                    services.extend(list.service.into_iter().map(|s| s.name));
                }
                Some(MessageResponse::FileDescriptorResponse(found)) => {
                    for bytes in found.file_descriptor_proto {
                        let file = <prost_types::FileDescriptorProto as prost::Message>::decode(
                            bytes.as_slice(),
                        )
                        .expect("a file descriptor");
                        files.push(file.name.unwrap_or_default());
                    }
                }
                other => panic!("unexpected reflection answer {other:?}"),
            }
        }
        (services, files)
    }};
}

#[tokio::test]
async fn health_and_reflection_v1_and_v1alpha_are_served() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let s = setup().await;
    let channel = tonic::transport::Endpoint::from_shared(s._node.url())
        .expect("url")
        .connect()
        .await
        .expect("connect");
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: "concord.v1.Coordinator".into(),
        })
        .await
        .expect("health")
        .into_inner()
        .status;
    assert_eq!(status, ServingStatus::Serving as i32);

    // grpcurl and tonic ask v1; Python's grpcio-reflection asks v1alpha.
    for (version, (services, files)) in [
        ("v1", reflect!(v1, channel.clone())),
        ("v1alpha", reflect!(v1alpha, channel.clone())),
    ] {
        assert!(
            services.iter().any(|name| name == "concord.v1.Coordinator"),
            "{version} lists {services:?}"
        );
        assert!(
            files
                .iter()
                .any(|name| name == "concord/v1/coordinator.proto"),
            "{version} finds the Coordinator in {files:?}"
        );
    }
}

#[tokio::test]
async fn a_preparing_transaction_is_listed_as_preparing() {
    let s = setup().await;
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "commit", None)
        .await
        .expect("enlist");
    s.client
        .enlist(&id, &s.b.url, "hang", None)
        .await
        .expect("enlist");
    // Stored as ACTIVE until decided, the transaction is PREPARING while b
    // takes its time; a listing by state must see the live state.
    let commit = {
        let client = s.client.clone();
        let id = id.clone();
        tokio::spawn(async move { client.commit(&id).await })
    };
    let listed = eventually("listed as preparing", || async {
        let page = s
            .client
            .raw()
            .list_transactions(pb::ListTransactionsRequest {
                states: vec![pb::TransactionState::Preparing as i32],
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        page.transactions.into_iter().find(|t| t.id == id)
    })
    .await;
    assert_eq!(listed.state, pb::TransactionState::Preparing as i32);
    // It ends one way or the other once b answers or times out.
    let outcome = commit.await.expect("join").expect("commit");
    assert!(matches!(
        outcome,
        Outcome::Committed { .. } | Outcome::Aborted { .. }
    ));
}

#[tokio::test]
async fn branches_given_with_begin_take_part_like_enlisted_ones() {
    use concord_participant::BranchSpec;
    let s = setup().await;
    let begun = s
        .client
        .begin(BeginOptions {
            branches: vec![
                BranchSpec {
                    participant: s.a.url.clone(),
                    payload: b"commit".to_vec(),
                    name: Some("debit".into()),
                },
                BranchSpec {
                    participant: s.b.url.clone(),
                    payload: b"commit".to_vec(),
                    name: None,
                },
            ],
            ..Default::default()
        })
        .await
        .expect("begin");
    assert_eq!(begun.branches, ["debit", "b2"]);
    let id = begun.transaction_id;
    // Durable with the Begin: on disk before the answer.
    let txn = s.client.transaction(&id).await.expect("get");
    assert_eq!(txn.branches.len(), 2);
    // More can still enlist; then commit as usual.
    s.client
        .enlist(&id, &s.a.url, "readonly", Some("audit"))
        .await
        .expect("enlist");
    let outcome = s
        .client
        .commit_with(
            &id,
            CommitOptions {
                wait_for_completion: true,
                prepare_timeout: None,
            },
        )
        .await
        .expect("commit");
    assert_eq!(outcome, Outcome::Committed { read_only: false });
    assert_eq!(s.a.effects(&id).await, ["prepare", "prepare", "commit"]);
    assert_eq!(s.b.effects(&id).await, ["prepare", "commit"]);
}

#[tokio::test]
async fn begin_can_commit_in_the_same_call() {
    use concord_participant::BranchSpec;
    let s = setup().await;
    let spec = |url: &str, vote: &str| BranchSpec {
        participant: url.to_owned(),
        payload: vote.as_bytes().to_vec(),
        name: None,
    };
    let options = BeginOptions {
        idempotency_key: Some("one-call".into()),
        branches: vec![spec(&s.a.url, "commit"), spec(&s.b.url, "commit")],
        ..Default::default()
    };
    let (begun, outcome) = s
        .client
        .begin_and_commit(options.clone())
        .await
        .expect("begin and commit");
    assert_eq!(outcome, Outcome::Committed { read_only: false });
    let id = begun.transaction_id;
    // R1: the decision is on disk by the time the client hears it.
    let on_disk = coordinator_state(&s.coordinator_dir(), &id).await;
    assert!(
        matches!(on_disk.as_deref(), Some("committing" | "committed")),
        "{on_disk:?}"
    );
    until_state(&s.client, &id, pb::TransactionState::Committed).await;
    // A retry with the same key reports the same outcome and runs nothing again.
    let (again, outcome) = s.client.begin_and_commit(options).await.expect("retried");
    assert_eq!(
        (again.transaction_id.as_str(), again.created),
        (id.as_str(), false)
    );
    assert_eq!(outcome, Outcome::Committed { read_only: false });
    assert_eq!(s.a.effects(&id).await, ["prepare", "commit"]);
    assert_eq!(s.b.effects(&id).await, ["prepare", "commit"]);

    // An ABORT vote aborts in the same call, and nothing commits anywhere.
    let (begun, outcome) = s
        .client
        .begin_and_commit(BeginOptions {
            branches: vec![spec(&s.a.url, "commit"), spec(&s.b.url, "abort")],
            ..Default::default()
        })
        .await
        .expect("begin and commit");
    assert!(matches!(outcome, Outcome::Aborted { .. }), "{outcome:?}");
    let id = begun.transaction_id;
    until_state(&s.client, &id, pb::TransactionState::Aborted).await;
    assert!(!s.a.effects(&id).await.contains(&"commit".to_string()));
    assert!(!s.b.effects(&id).await.contains(&"commit".to_string()));
}
