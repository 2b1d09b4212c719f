//! Sagas over real gRPC on loopback, with the coordinator's log and the
//! participant's database in real SQLite files: ordering, parallelism, each
//! step kind, retry policy and its cap, compensation order, NEEDS_ATTENTION,
//! idempotent resubmission, restart, and bad input — checked by the effects
//! in the participant's database, not only by states.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use concord_coordinator::node::Node;
use concord_participant::saga::{RetryPolicy, Saga, SagaState, Step};
use concord_participant::{ClientError, CoordinatorClient};
use concord_proto::v1 as pb;
use support::saga::StepParticipant;
use support::{client, eventually, quick_config, start_coordinator};

struct Setup {
    _dir: tempfile::TempDir,
    _node: Node,
    client: CoordinatorClient,
    p: StepParticipant,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let p = StepParticipant::start(dir.path(), "steps").await;
    Setup {
        _dir: dir,
        _node: node,
        client,
        p,
    }
}

/// Quick retries for tests: 10 ms doubling, `attempts` attempts.
fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy::attempts(attempts, Duration::from_millis(10))
}

fn step(p: &StepParticipant, name: &str, action: &str) -> Step {
    Step::new(name, &p.url)
        .action(action)
        .compensation("ok")
        .retry(quick(3))
}

async fn steps(client: &CoordinatorClient, id: &str) -> Vec<(String, pb::StepState)> {
    client
        .transaction(id)
        .await
        .expect("get")
        .steps
        .into_iter()
        .map(|s| (s.name, pb::StepState::try_from(s.state).expect("state")))
        .collect()
}

#[tokio::test]
async fn a_plain_list_runs_in_order_and_completes() {
    let s = setup().await;
    let done = Saga::new()
        .step(step(&s.p, "a", "ok"))
        .step(step(&s.p, "b", "ok"))
        .step(step(&s.p, "c", "ok"))
        .run(&s.client)
        .await
        .expect("saga");
    assert_eq!(done.state, SagaState::Completed);
    assert_eq!(
        s.p.effects(&done.transaction_id).await,
        ["action:a", "action:b", "action:c"]
    );
    let txn = s
        .client
        .transaction(&done.transaction_id)
        .await
        .expect("get");
    assert_eq!(txn.kind, pb::TransactionKind::Saga as i32);
    assert!(
        txn.steps
            .iter()
            .all(|st| st.state == pb::StepState::Succeeded as i32 && st.attempts == 1)
    );
    assert_eq!(txn.steps[1].depends_on, ["a"]);
}

#[tokio::test]
async fn steps_whose_dependencies_are_done_run_in_parallel() {
    let s = setup().await;
    // hotel and car each wait inside their action for the other, on two
    // participants sharing one barrier: the saga can only complete if the
    // coordinator calls them at the same time (the barrier gives up after
    // 5 s and refuses).
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
    let hotels = StepParticipant::start_sharing(s._dir.path(), "hotels", barrier.clone()).await;
    let cars = StepParticipant::start_sharing(s._dir.path(), "cars", barrier).await;
    let done = Saga::new()
        .step(step(&s.p, "flight", "ok"))
        .step(step(&hotels, "hotel", "barrier").after(["flight"]))
        .step(step(&cars, "car", "barrier").after(["flight"]))
        .step(
            Step::new("payment", &s.p.url)
                .action("ok")
                .pivot()
                .after(["hotel", "car"]),
        )
        .step(Step::new("email", &s.p.url).action("ok").retriable())
        .run(&s.client)
        .await
        .expect("saga");
    assert_eq!(done.state, SagaState::Completed, "{}", done.reason);
    let id = &done.transaction_id;
    assert_eq!(hotels.effects(id).await, ["action:hotel"]);
    assert_eq!(cars.effects(id).await, ["action:car"]);
    assert_eq!(
        s.p.effects(id).await,
        ["action:flight", "action:payment", "action:email"]
    );
}

#[tokio::test]
async fn a_refusal_compensates_the_done_steps_in_reverse_order() {
    let s = setup().await;
    let done = Saga::new()
        .step(step(&s.p, "a", "ok"))
        .step(step(&s.p, "b", "ok"))
        .step(step(&s.p, "c", "refuse"))
        .step(step(&s.p, "d", "ok"))
        .run(&s.client)
        .await
        .expect("saga");
    assert_eq!(done.state, SagaState::Compensated);
    assert_eq!(done.reason, "scripted refusal");
    assert_eq!(
        s.p.effects(&done.transaction_id).await,
        ["action:a", "action:b", "compensate:b", "compensate:a"]
    );
    use pb::StepState as S;
    assert_eq!(
        steps(&s.client, &done.transaction_id).await,
        [
            ("a".to_string(), S::Compensated),
            ("b".to_string(), S::Compensated),
            ("c".to_string(), S::Failed),
            ("d".to_string(), S::Skipped)
        ]
    );
}

#[tokio::test]
async fn a_parallel_branch_is_compensated_before_what_it_depends_on() {
    let s = setup().await;
    let done = Saga::new()
        .step(step(&s.p, "flight", "ok"))
        .step(step(&s.p, "hotel", "ok").after(["flight"]))
        .step(step(&s.p, "car", "refuse").after(["flight"]))
        .step(
            Step::new("payment", &s.p.url)
                .action("ok")
                .pivot()
                .after(["hotel", "car"]),
        )
        .run(&s.client)
        .await
        .expect("saga");
    assert_eq!(done.state, SagaState::Compensated);
    let effects = s.p.effects(&done.transaction_id).await;
    // The hotel may have been booked (parallel to the car); if so it is
    // undone before the flight, and the flight is undone last.
    assert_eq!(
        effects.last().map(String::as_str),
        Some("compensate:flight")
    );
    assert_eq!(
        effects.contains(&"action:hotel".to_string()),
        effects.contains(&"compensate:hotel".to_string())
    );
    assert!(!effects.iter().any(|e| e.ends_with(":payment")));
}

#[tokio::test]
async fn retries_recover_a_flaky_step() {
    let s = setup().await;
    let done = Saga::new()
        .step(
            Step::new("a", &s.p.url)
                .action("flaky:2")
                .compensation("ok")
                .retry(quick(5)),
        )
        .run(&s.client)
        .await
        .expect("saga");
    assert_eq!(done.state, SagaState::Completed);
    let txn = s
        .client
        .transaction(&done.transaction_id)
        .await
        .expect("get");
    assert_eq!(txn.steps[0].attempts, 3, "two failures, then success");
    assert!(
        txn.steps[0]
            .last_error
            .contains("scripted transient failure")
    );
    assert_eq!(s.p.effects(&done.transaction_id).await, ["action:a"]);
}

#[tokio::test]
async fn exhausted_retries_count_as_maybe_done_and_are_compensated() {
    let s = setup().await;
    let done = Saga::new()
        .step(step(&s.p, "a", "ok"))
        .step(
            Step::new("b", &s.p.url)
                .action("flaky:100")
                .compensation("ok")
                .retry(quick(3)),
        )
        .run(&s.client)
        .await
        .expect("saga");
    assert_eq!(done.state, SagaState::Compensated);
    assert!(done.reason.contains("3 attempts"), "{}", done.reason);
    let txn = s
        .client
        .transaction(&done.transaction_id)
        .await
        .expect("get");
    // The retry policy's cap: exactly 3 attempts.
    assert_eq!(txn.steps[1].attempts, 3);
    assert_eq!(txn.steps[1].state, pb::StepState::Compensated as i32);
    // Read back from the log once the saga ended: a's success was recorded
    // before b ran, and its compensation after; the end record must not
    // have left the log at the first.
    assert_eq!(txn.steps[0].state, pb::StepState::Compensated as i32);
    assert_eq!(txn.steps[0].attempts, 1);
    assert_eq!(txn.steps[0].compensation_attempts, 1);
    // b's compensation reached the participant, which had nothing to undo:
    // the ledger left a tombstone, and only a's compensation took effect.
    assert_eq!(
        s.p.ledger(&done.transaction_id, "b", "compensate")
            .await
            .as_deref(),
        Some("tombstone")
    );
    assert_eq!(
        s.p.effects(&done.transaction_id).await,
        ["action:a", "compensate:a"]
    );
}

#[tokio::test]
async fn after_the_pivot_a_saga_only_moves_forward() {
    let s = setup().await;
    // The email step fails past its budget of 2 attempts, then succeeds: it
    // is retried, never compensated, and the saga completes.
    let done = Saga::new()
        .step(step(&s.p, "a", "ok"))
        .step(Step::new("pay", &s.p.url).action("ok").pivot())
        .step(
            Step::new("email", &s.p.url)
                .action("flaky:4")
                .retriable()
                .retry(quick(2)),
        )
        .run(&s.client)
        .await
        .expect("saga");
    assert_eq!(done.state, SagaState::Completed);
    assert_eq!(
        s.p.effects(&done.transaction_id).await,
        ["action:a", "action:pay", "action:email"]
    );
    let txn = s
        .client
        .transaction(&done.transaction_id)
        .await
        .expect("get");
    assert_eq!(txn.steps[2].attempts, 5);
    assert!(!txn.needs_attention, "resolved by itself");
}

#[tokio::test]
async fn a_failing_pivot_compensates_and_a_failing_retriable_step_fails_the_saga() {
    let s = setup().await;
    let pivot_refused = Saga::new()
        .step(step(&s.p, "a", "ok"))
        .step(Step::new("pay", &s.p.url).action("refuse").pivot())
        .run(&s.client)
        .await
        .expect("saga");
    assert_eq!(pivot_refused.state, SagaState::Compensated);
    assert_eq!(
        s.p.effects(&pivot_refused.transaction_id).await,
        ["action:a", "compensate:a"]
    );

    let failed = Saga::new()
        .step(step(&s.p, "a", "ok"))
        .step(Step::new("pay", &s.p.url).action("ok").pivot())
        .step(Step::new("email", &s.p.url).action("refuse").retriable())
        .run(&s.client)
        .await
        .expect("saga");
    assert_eq!(failed.state, SagaState::Failed);
    // Nothing compensated after the pivot; an operator must look.
    assert_eq!(
        s.p.effects(&failed.transaction_id).await,
        ["action:a", "action:pay"]
    );
    assert!(
        s.client
            .transaction(&failed.transaction_id)
            .await
            .expect("get")
            .needs_attention
    );
}

#[tokio::test]
async fn a_compensation_that_keeps_failing_is_flagged_needs_attention() {
    let s = setup().await;
    let accepted = Saga::new()
        .step(
            Step::new("a", &s.p.url)
                .action("ok")
                .compensation("stuck")
                .retry(quick(2)),
        )
        .step(step(&s.p, "b", "refuse"))
        .submit(&s.client)
        .await
        .expect("saga");
    let id = accepted.transaction_id;
    eventually("flagged", || async {
        s.client
            .transaction(&id)
            .await
            .ok()?
            .needs_attention
            .then_some(())
    })
    .await;
    let txn = s.client.transaction(&id).await.expect("get");
    assert_eq!(txn.state, pb::TransactionState::Compensating as i32);
    assert!(txn.steps[0].compensation_attempts >= 2);
    assert!(
        txn.steps[0]
            .last_error
            .contains("scripted compensation failure")
    );
    // Operators find it in the NEEDS_ATTENTION queue; it is never dropped.
    let queue = s
        .client
        .raw()
        .list_transactions(pb::ListTransactionsRequest {
            needs_attention: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(queue.transactions.len(), 1);
    assert_eq!(queue.transactions[0].id, id);
    assert!(s.p.effects(&id).await == ["action:a"]);
}

#[tokio::test]
async fn resubmitting_with_the_same_key_runs_nothing_again() {
    let s = setup().await;
    let saga = || {
        Saga::new()
            .idempotency_key("trip-7")
            .step(step(&s.p, "a", "ok"))
            .step(step(&s.p, "b", "ok"))
    };
    let first = saga().run(&s.client).await.expect("saga");
    let second = saga().run(&s.client).await.expect("again");
    assert!(first.created && !second.created);
    assert_eq!(first.transaction_id, second.transaction_id);
    assert_eq!(second.state, SagaState::Completed);
    assert_eq!(
        s.p.effects(&first.transaction_id).await,
        ["action:a", "action:b"]
    );
}

#[tokio::test]
async fn a_restarted_coordinator_resumes_sagas_forward_and_backward() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let p = StepParticipant::start(dir.path(), "steps").await;
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = support::client(&node);
    let endless = RetryPolicy {
        max_delay: Some(Duration::from_millis(50)),
        ..quick(1000)
    };
    // Forward: b keeps failing transiently when the coordinator stops.
    let forward = Saga::new()
        .step(step(&p, "a", "ok"))
        .step(
            Step::new("b", &p.url)
                .action("flaky:100000")
                .compensation("ok")
                .retry(endless.clone()),
        )
        .step(step(&p, "c", "ok"))
        .submit(&client)
        .await
        .expect("saga");
    // Backward: a's compensation keeps failing when the coordinator stops.
    let backward = Saga::new()
        .step(
            Step::new("a", &p.url)
                .action("ok")
                .compensation("flaky:100000")
                .retry(endless),
        )
        .step(step(&p, "b", "refuse"))
        .submit(&client)
        .await
        .expect("saga");
    eventually("both sagas are under way", || async {
        let f = client.transaction(&forward.transaction_id).await.ok()?;
        let b = client.transaction(&backward.transaction_id).await.ok()?;
        (f.steps[1].attempts > 1 && b.steps[0].compensation_attempts > 1).then_some(())
    })
    .await;
    tokio::time::timeout(Duration::from_secs(30), node.shutdown())
        .await
        .expect("shutdown does not hang")
        .expect("shutdown");
    let addr = p.addr();
    p.stop().await;

    let p = StepParticipant::restart_healthy(dir.path(), "steps", &addr).await;
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = support::client(&node);
    for id in [&forward.transaction_id, &backward.transaction_id] {
        eventually("the saga ends after the restart", || async {
            let state = client.transaction(id).await.ok()?.state;
            SagaState::from_wire(state).filter(|s| s.is_terminal())
        })
        .await;
    }
    let state = |id: &str| {
        let client = client.clone();
        let id = id.to_owned();
        async move { SagaState::from_wire(client.transaction(&id).await.expect("get").state) }
    };
    assert_eq!(
        state(&forward.transaction_id).await,
        Some(SagaState::Completed)
    );
    assert_eq!(
        state(&backward.transaction_id).await,
        Some(SagaState::Compensated)
    );
    // Each effect exactly once, across the restart.
    assert_eq!(
        p.effects(&forward.transaction_id).await,
        ["action:a", "action:b", "action:c"]
    );
    assert_eq!(
        p.effects(&backward.transaction_id).await,
        ["action:a", "compensate:a"]
    );
}

#[tokio::test]
async fn bad_sagas_are_refused_with_the_step_named_and_nothing_runs() {
    let s = setup().await;
    let url = s.p.url.as_str();
    let ok = |name: &str| Step::new(name, url).action("ok").compensation("ok");
    let cases: Vec<(Saga, &str)> = vec![
        (Saga::new(), "steps is empty"),
        (
            Saga::new().step(ok("a")).step(ok("a")),
            "step \"a\" is declared twice",
        ),
        (
            Saga::new().step(ok("a").after(["zzz"])),
            "step \"a\": depends on \"zzz\"",
        ),
        (
            Saga::new()
                .step(ok("a").after(["b"]))
                .step(ok("b").after(["a"])),
            "cycle through step",
        ),
        (
            Saga::new().step(Step::new("a", url).action("ok")),
            "step \"a\": a compensatable step needs a compensation",
        ),
        (
            Saga::new().step(ok("a")).step(ok("p").pivot()),
            "step \"p\": only compensatable steps have a compensation",
        ),
        (
            Saga::new()
                .step(Step::new("p1", url).pivot())
                .step(Step::new("p2", url).pivot()),
            "both pivots",
        ),
        (
            Saga::new()
                .step(ok("a"))
                .step(Step::new("e", url).retriable().first()),
            "retriable step \"e\" must come after step \"a\"",
        ),
        (
            Saga::new().step(ok("a").attempt_timeout(Duration::from_secs(601))),
            "step \"a\": attempt_timeout_ms",
        ),
        (
            Saga::new().step(ok("a").retry(RetryPolicy {
                multiplier: Some(11.0),
                ..RetryPolicy::default()
            })),
            "step \"a\": retry.multiplier",
        ),
        (
            Saga::new().step(ok("a").retry(RetryPolicy {
                max_attempts: Some(1001),
                ..RetryPolicy::default()
            })),
            "step \"a\": retry.max_attempts",
        ),
        (
            Saga::new().step(ok("a").retry(RetryPolicy {
                initial_delay: Some(Duration::from_millis(500)),
                max_delay: Some(Duration::from_millis(100)),
                ..RetryPolicy::default()
            })),
            "step \"a\": retry.max_delay_ms",
        ),
        (
            Saga::new().step(Step::new("a", "not a uri").compensation("x")),
            "step \"a\": participant",
        ),
        (
            Saga::new().step(Step::new("bad name", url).compensation("x")),
            "steps[0].name",
        ),
        (
            (0..257).fold(Saga::new(), |saga, i| saga.step(ok(&format!("s{i}")))),
            "the limit is 256",
        ),
    ];
    for (saga, needle) in cases {
        match saga.submit(&s.client).await {
            Err(ClientError::InvalidArgument(message)) => {
                assert!(
                    message.contains(needle),
                    "{message:?} does not mention {needle:?}"
                );
            }
            other => panic!("expected INVALID_ARGUMENT mentioning {needle:?}, got {other:?}"),
        }
    }
    let listed = s
        .client
        .raw()
        .list_transactions(pb::ListTransactionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.transactions.is_empty(), "nothing was created");
}

#[tokio::test]
async fn saga_ids_take_no_two_phase_calls() {
    let s = setup().await;
    let done = Saga::new()
        .step(step(&s.p, "a", "ok"))
        .run(&s.client)
        .await
        .expect("saga");
    let commit = s.client.commit(&done.transaction_id).await;
    assert!(
        matches!(commit, Err(ClientError::FailedPrecondition(_))),
        "{commit:?}"
    );
    let enlist = s
        .client
        .enlist(&done.transaction_id, &s.p.url, "x", None)
        .await;
    assert!(
        matches!(enlist, Err(ClientError::FailedPrecondition(_))),
        "{enlist:?}"
    );
}

#[tokio::test]
async fn an_operator_resolves_a_compensation_that_keeps_failing_and_the_saga_ends_compensated() {
    let s = setup().await;
    let accepted = Saga::new()
        .step(
            Step::new("a", &s.p.url)
                .action("ok")
                .compensation("stuck")
                .retry(quick(2)),
        )
        .step(step(&s.p, "b", "refuse"))
        .submit(&s.client)
        .await
        .expect("saga");
    let id = accepted.transaction_id;
    eventually("flagged", || async {
        s.client
            .transaction(&id)
            .await
            .ok()?
            .needs_attention
            .then_some(())
    })
    .await;
    let mut raw = s.client.raw();
    let resolve = |branch: &str, outcome: pb::Resolution| pb::ResolveBranchRequest {
        transaction_id: id.clone(),
        branch: branch.into(),
        outcome: outcome.into(),
        reason: "hotel cancelled by phone".into(),
        operator: "carol".into(),
    };
    // Step b never ran its action: nothing of it to resolve.
    let refused = raw
        .resolve_branch(resolve("b", pb::Resolution::Compensated))
        .await
        .expect_err("b is not compensating");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let answer = raw
        .resolve_branch(resolve("a", pb::Resolution::Compensated))
        .await
        .expect("resolve")
        .into_inner();
    assert!(
        answer.state == pb::TransactionState::Compensating as i32
            || answer.state == pb::TransactionState::Compensated as i32
    );
    eventually("the saga ends compensated", || async {
        let txn = s.client.transaction(&id).await.ok()?;
        (txn.state == pb::TransactionState::Compensated as i32).then_some(txn)
    })
    .await;
    let txn = s.client.transaction(&id).await.expect("get");
    assert!(!txn.needs_attention, "resolved: off the attention queue");
    assert_eq!(txn.operator_actions.len(), 1);
    assert_eq!(txn.operator_actions[0].operator, "carol");
    // The participant's compensation never succeeded; the operator's word
    // stands for it.
    assert!(s.p.effects(&id).await == ["action:a"]);
}
