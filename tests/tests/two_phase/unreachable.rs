//! Branches that can never hear anything: a participant address nothing
//! listens on, a transaction rolled back before any Prepare. Presumed abort
//! (R2) owes an Abort only to a branch that may hold a prepared part, so
//! none of these keeps a transaction from ending; and a one-phase commit
//! that certainly never left aborts at once instead of at the caller's
//! deadline (issue 17 item 7, issue 23 item 1).

use std::time::Duration;

use concord_participant::{BeginOptions, BranchSpec, Outcome};
use concord_proto::v1 as pb;
use tonic::Code;

use super::support::{TestParticipant, client, eventually, quick_config, start_coordinator};

/// Port 1 on loopback: connections are refused at once, so no request to
/// it ever leaves the coordinator.
const REFUSING: &str = "http://127.0.0.1:1";

fn branch(participant: &str, payload: &str, name: &str) -> BranchSpec {
    BranchSpec {
        participant: participant.to_owned(),
        payload: payload.as_bytes().to_vec(),
        name: Some(name.to_owned()),
    }
}

#[tokio::test]
async fn a_prepare_that_never_left_owes_no_abort_and_the_transaction_ends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let id = client
        .begin(BeginOptions {
            branches: vec![
                branch(&p.url, "commit", "reachable"),
                branch(REFUSING, "commit", "refusing"),
            ],
            ..BeginOptions::default()
        })
        .await
        .expect("begin")
        .transaction_id;
    let outcome = client.commit(&id).await.expect("commit");
    assert!(
        matches!(&outcome, Outcome::Aborted { reason } if reason.contains("refusing")),
        "{outcome:?}"
    );
    // It ends, without an operator: the reachable branch, which prepared,
    // hears the Abort; the refusing one is owed nothing.
    let txn = eventually("the transaction ends", || async {
        let txn = client.transaction(&id).await.expect("get");
        (txn.state == pb::TransactionState::Aborted as i32).then_some(txn)
    })
    .await;
    let states: Vec<(String, i32)> = txn
        .branches
        .iter()
        .map(|b| (b.name.clone(), b.state))
        .collect();
    assert_eq!(
        states,
        [
            ("reachable".to_string(), pb::BranchState::Aborted as i32),
            ("refusing".to_string(), pb::BranchState::Aborted as i32),
        ]
    );
    // The Abort went out as soon as the refusing branch's vote was in, so
    // it may have overtaken the reachable branch's Prepare (a tombstone,
    // and the late Prepare refused): either way nothing stays prepared.
    let effects = p.effects(&id).await;
    assert!(
        effects == ["prepare", "abort"] || !effects.contains(&"prepare".to_string()),
        "{effects:?}"
    );
    assert!(
        p.ledger(&id)
            .await
            .iter()
            .any(|row| row.starts_with("abort=")),
        "{:?}",
        p.ledger(&id).await
    );
}

#[tokio::test]
async fn a_rollback_before_any_prepare_tells_no_branch_and_ends_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let id = client
        .begin(BeginOptions {
            branches: vec![
                branch(&p.url, "commit", "enlisted"),
                branch(REFUSING, "commit", "refusing"),
            ],
            ..BeginOptions::default()
        })
        .await
        .expect("begin")
        .transaction_id;
    client
        .rollback(&id, "changed my mind")
        .await
        .expect("rollback");
    let txn = eventually("the transaction ends", || async {
        let txn = client.transaction(&id).await.expect("get");
        (txn.state == pb::TransactionState::Aborted as i32).then_some(txn)
    })
    .await;
    assert!(
        txn.branches
            .iter()
            .all(|b| b.state == pb::BranchState::Aborted as i32 && b.attempts == 0),
        "{:?}",
        txn.branches
    );
    // Nothing was sent to either branch.
    assert!(p.effects(&id).await.is_empty());
    assert!(p.ledger(&id).await.is_empty());
}

#[tokio::test]
async fn a_one_phase_commit_that_never_left_aborts_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let mut raw = client.raw();
    // Without the fix the answer waited for the caller's deadline (the
    // outcome was unknown until an Abort that can never be delivered).
    let mut request = tonic::Request::new(pb::BeginRequest {
        branches: vec![pb::BranchSpec {
            participant: REFUSING.into(),
            payload: b"commit".to_vec(),
            branch: "only".into(),
        }],
        commit: true,
        ..pb::BeginRequest::default()
    });
    request.set_timeout(Duration::from_secs(30));
    let begun = raw.begin(request).await.expect("begin").into_inner();
    let commit = begun.commit.expect("commit answer");
    assert_eq!(begun.state, pb::TransactionState::Aborted as i32);
    assert_eq!(commit.outcome, pb::Outcome::Aborted as i32);
    assert!(commit.reason.contains("not sent"), "{:?}", commit.reason);
    let txn = client
        .transaction(&begun.transaction_id)
        .await
        .expect("get");
    assert_eq!(txn.state, pb::TransactionState::Aborted as i32);
    assert_eq!(txn.branches[0].state, pb::BranchState::Aborted as i32);
}

#[tokio::test]
async fn a_one_phase_commit_that_may_have_arrived_still_waits_for_the_participant() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let mut raw = client.raw();
    // The call reaches the participant, which takes 3 s: past the 200 ms
    // prepare deadline, the coordinator cannot know whether it committed.
    let mut request = tonic::Request::new(pb::BeginRequest {
        branches: vec![pb::BranchSpec {
            participant: p.url.clone(),
            payload: b"hang".to_vec(),
            branch: "only".into(),
        }],
        commit: true,
        prepare_timeout_ms: 200,
        ..pb::BeginRequest::default()
    });
    request.set_timeout(Duration::from_secs(30));
    let begun = raw.begin(request).await.expect("begin").into_inner();
    // The answer is the participant's: its ledger settled the race between
    // the late one-phase commit and the Abort, and the coordinator reports
    // what happened there, whichever it was.
    let commit = begun.commit.expect("commit answer");
    let effects = p.effects(&begun.transaction_id).await;
    // A one-phase commit that ran shows as its "prepare" effect; one the
    // Abort overtook never ran.
    match pb::Outcome::try_from(commit.outcome) {
        Ok(pb::Outcome::Committed) => assert_eq!(effects, ["prepare"], "{effects:?}"),
        Ok(pb::Outcome::Aborted) => {
            assert!(!effects.contains(&"prepare".to_string()), "{effects:?}");
        }
        other => panic!("unexpected outcome {other:?}"),
    }
}

#[tokio::test]
async fn a_key_reused_with_another_request_is_refused_and_names_the_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("coordinator");
    let node = start_coordinator(&data, quick_config()).await;
    let client = client(&node);
    let mut raw = client.raw();
    let begin = |participant: &str| pb::BeginRequest {
        idempotency_key: "order-7".into(),
        branches: vec![pb::BranchSpec {
            participant: participant.into(),
            payload: b"commit".to_vec(),
            branch: "a".into(),
        }],
        ..pb::BeginRequest::default()
    };
    let first = raw
        .begin(begin("http://127.0.0.1:7501"))
        .await
        .expect("begin")
        .into_inner();
    assert!(first.created);
    // The same request again: a retry, answered with the first.
    let again = raw
        .begin(begin("http://127.0.0.1:7501"))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(
        (again.transaction_id.as_str(), again.created),
        (first.transaction_id.as_str(), false)
    );
    // Asking also to commit is how the request is answered, not another one.
    let mut committing = begin("http://127.0.0.1:7501");
    committing.commit = true;
    committing.prepare_timeout_ms = 100;
    let committed = raw.begin(committing).await.expect("begin to commit");
    assert_eq!(committed.into_inner().transaction_id, first.transaction_id);
    // Another body under the same key.
    let refused = |status: tonic::Status| {
        assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
        assert!(
            status.message().contains("different request"),
            "{}",
            status.message()
        );
        assert!(
            status.message().contains(&first.transaction_id),
            "{}",
            status.message()
        );
        assert_eq!(
            status
                .metadata()
                .get("concord-transaction-id")
                .and_then(|v| v.to_str().ok()),
            Some(first.transaction_id.as_str())
        );
    };
    refused(
        raw.begin(begin("http://127.0.0.1:7502"))
            .await
            .expect_err("other branches"),
    );
    // A saga under a key a 2PC transaction holds is another request too.
    let saga = pb::SubmitSagaRequest {
        idempotency_key: "order-7".into(),
        steps: vec![pb::SagaStep {
            name: "s".into(),
            participant: "http://127.0.0.1:7501".into(),
            kind: pb::StepKind::Pivot as i32,
            action: b"x".to_vec(),
            ..pb::SagaStep::default()
        }],
        ..pb::SubmitSagaRequest::default()
    };
    refused(raw.submit_saga(saga.clone()).await.expect_err("saga"));
    // Nothing changed: one transaction, its one branch.
    let txn = client
        .transaction(&first.transaction_id)
        .await
        .expect("get");
    assert_eq!(txn.branches.len(), 1);
    assert_eq!(txn.branches[0].participant, "http://127.0.0.1:7501");

    // After a restart the key's first request is known from the log.
    node.shutdown().await.expect("shutdown");
    let node = start_coordinator(&data, quick_config()).await;
    let mut raw = super::support::client(&node).raw();
    refused(
        raw.begin(begin("http://127.0.0.1:7502"))
            .await
            .expect_err("other branches after restart"),
    );
    let again = raw
        .begin(begin("http://127.0.0.1:7501"))
        .await
        .expect("retry after restart")
        .into_inner();
    assert_eq!(again.transaction_id, first.transaction_id);

    // A saga's key, the same way (on a participant that completes it, so
    // that a retry waiting for the end gets one).
    let steps = super::support::saga::StepParticipant::start(dir.path(), "steps").await;
    let mut first_saga = saga.clone();
    first_saga.idempotency_key = "trip-1".into();
    first_saga.steps[0].participant = steps.url.clone();
    first_saga.steps[0].action = b"ok".to_vec();
    let submitted = raw
        .submit_saga(first_saga.clone())
        .await
        .expect("saga")
        .into_inner();
    let mut other = first_saga.clone();
    other.steps[0].action = b"refuse".to_vec();
    let status = raw.submit_saga(other).await.expect_err("other steps");
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains(&submitted.transaction_id));
    let mut waiting = first_saga;
    waiting.wait = true;
    let retried = raw.submit_saga(waiting).await.expect("retry").into_inner();
    assert_eq!(
        (retried.transaction_id, retried.created),
        (submitted.transaction_id, false)
    );
}

/// A log written before endpoints were checked at the door may hold an
/// address no coordinator can dial (not a URI at all). Recovered without a
/// decision, its transaction aborts; the Abort to that branch can never be
/// sent, and no Prepare can ever have reached it, so it does not keep the
/// transaction from ending (it used to be retried forever).
#[tokio::test]
async fn a_recovered_branch_at_an_address_no_one_can_dial_does_not_keep_its_transaction_open() {
    use concord_coordinator::model::TxnId;
    use concord_coordinator::store::sqlite::SqliteStore;
    use concord_coordinator::store::{Record, Store};

    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("coordinator");
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let id = TxnId::mint();
    {
        let store = SqliteStore::open_dir(&data).await.expect("log");
        let now = concord_coordinator::model::now_ms();
        store
            .append(&[
                Record::Begun {
                    id,
                    created_at_ms: now,
                    deadline_ms: now + 600_000,
                    idempotency_key: None,
                    request_digest: None,
                    description: None,
                },
                Record::Enlisted {
                    id,
                    idx: 0,
                    name: "legacy".into(),
                    participant: "not a uri".into(),
                    payload: b"commit".to_vec(),
                },
                Record::Enlisted {
                    id,
                    idx: 1,
                    name: "reachable".into(),
                    participant: p.url.clone(),
                    payload: b"commit".to_vec(),
                },
            ])
            .await
            .expect("write the old log");
    }
    let node = start_coordinator(&data, quick_config()).await;
    let client = client(&node);
    let txn = eventually("the recovered transaction ends", || async {
        let txn = client.transaction(&id.to_string()).await.ok()?;
        (txn.state == pb::TransactionState::Aborted as i32).then_some(txn)
    })
    .await;
    assert!(
        txn.branches
            .iter()
            .all(|b| b.state == pb::BranchState::Aborted as i32),
        "{:?}",
        txn.branches
    );
    // The reachable branch, which may have prepared before the crash, was
    // told (R2: recovery tells every branch it can).
    assert!(
        p.ledger(&id.to_string())
            .await
            .iter()
            .any(|row| row.starts_with("abort=")),
        "{:?}",
        p.ledger(&id.to_string()).await
    );
}

/// DESIGN §12 (S6): with `--allowed-participants`, a participant outside
/// the list is never called, by address or by a name that resolves
/// outside it: the transaction aborts naming the rule, and the
/// participant's database holds nothing. Listed (by network or by name),
/// the same participant commits.
#[tokio::test]
async fn a_participant_outside_the_allowed_networks_is_never_called() {
    use concord_coordinator::runtime::RuntimeConfig;
    use concord_coordinator::runtime::dial::DialPolicy;
    use concord_coordinator::runtime::participants::Dialer;
    let dir = tempfile::tempdir().expect("temp dir");
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let by_name = p.url.replace("127.0.0.1", "localhost");
    let node_with = |name: &str, allowed: &[&str]| {
        let policy = DialPolicy::parse(&allowed.iter().map(|a| a.to_string()).collect::<Vec<_>>())
            .expect("a rule");
        let data = dir.path().join(name);
        async move {
            start_coordinator(
                &data,
                RuntimeConfig {
                    dialer: Dialer::tcp(policy),
                    ..quick_config()
                },
            )
            .await
        }
    };
    let commit = |node: &concord_coordinator::node::Node, url: String| {
        let client = client(node);
        async move {
            let begin = BeginOptions {
                branches: vec![branch(&url, "commit", "b")],
                ..BeginOptions::default()
            };
            let (begun, outcome) = client.begin_and_commit(begin).await.expect("commit");
            (begun.transaction_id, outcome)
        }
    };

    let closed = node_with("closed", &["10.0.0.0/8", "bank.internal"]).await;
    for url in [p.url.clone(), by_name.clone()] {
        let (id, outcome) = commit(&closed, url.clone()).await;
        assert!(
            matches!(&outcome, Outcome::Aborted { reason } if reason.contains("--allowed-participants")),
            "{url}: {outcome:?}"
        );
        assert!(
            p.ledger(&id).await.is_empty(),
            "{url}: the participant heard nothing"
        );
    }
    assert_eq!(p.effect_count().await, 0);

    for (name, allowed, url) in [
        ("by-network", &["127.0.0.0/8"][..], p.url.clone()),
        ("by-name", &["localhost"][..], by_name.clone()),
    ] {
        let open = node_with(name, allowed).await;
        let (id, outcome) = commit(&open, url).await;
        assert!(
            matches!(outcome, Outcome::Committed { .. }),
            "{name}: {outcome:?}"
        );
        assert!(
            !p.effects(&id).await.is_empty(),
            "{name}: committed at the participant"
        );
    }
}
