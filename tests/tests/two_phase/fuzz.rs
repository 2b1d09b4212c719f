//! Fuzzing the coordinator's front door: generated requests for every RPC
//! (proptest strategies over every field, valid and not), and bytes that are
//! not protobuf at all, sent over real gRPC to one coordinator. Whatever
//! arrives, the answer is a status that says what was wrong (never UNKNOWN,
//! a panic, or silence), the coordinator keeps serving, and what it had
//! decided before stays decided.
//!
//! A bounded number of cases per RPC (`CONCORD_FUZZ_CASES`, default 150),
//! so that it runs in every `cargo test`; raise it for a longer run.

use std::fmt::Debug;

use concord_participant::{BeginOptions, BranchSpec, Outcome};
use concord_proto::v1 as pb;
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, TestRng, TestRunner};
use tonic::Code;

use super::support::{TestParticipant, client, quick_config, start_coordinator};

fn cases() -> u32 {
    std::env::var("CONCORD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150)
}

/// Text the way clients get it wrong: empty, plausible, too long, any
/// Unicode.
fn text(max: usize) -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        "[a-z0-9:._-]{1,12}",
        proptest::string::string_regex(&format!(".{{0,{max}}}")).expect("regex"),
        (0usize..3).prop_map(move |n| "x".repeat(max * 4 + n)),
    ]
}

/// Transaction ids: valid and unknown, malformed, or a known one.
fn txn_id(known: Vec<String>) -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(known),
        Just("0192a0b0-0000-7000-8000-000000000000".to_string()),
        "[0-9a-fA-F-]{30,40}",
        text(64),
    ]
}

/// Endpoints that parse as URIs but can never be dialled as given: each
/// must be INVALID_ARGUMENT wherever it appears (issue 23).
const UNUSABLE_ENDPOINTS: [&str; 5] = [
    "http://127.0.0.1",
    "http://127.0.0.1:0",
    "http://127.0.0.1:65536",
    "http://127.0.0.1:7501/v1/participant",
    "http://user@127.0.0.1:7501",
];

fn endpoint() -> impl Strategy<Value = String> {
    prop_oneof![
        proptest::sample::select(UNUSABLE_ENDPOINTS.to_vec()).prop_map(str::to_owned),
        // Refuses connections at once: prepares fail fast.
        Just("http://127.0.0.1:1".to_string()),
        Just("https://example.invalid:7501/".to_string()),
        "(http|https|ftp)://[a-z.]{0,12}(:[0-9]{0,6})?(/[a-z]{0,4})?",
        text(300),
    ]
}

fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..64),
        // Just over the 1 MiB limit.
        Just(vec![7u8; 1024 * 1024 + 1]),
    ]
}

fn millis() -> impl Strategy<Value = u64> {
    prop_oneof![Just(0u64), 1u64..100, any::<u64>()]
}

fn begin(known: Vec<String>) -> impl Strategy<Value = pb::BeginRequest> {
    let _ = known;
    (
        millis(),
        text(256),
        text(2048),
        proptest::collection::vec(
            (endpoint(), payload(), text(128)).prop_map(|(participant, payload, branch)| {
                pb::BranchSpec {
                    participant,
                    payload,
                    branch,
                }
            }),
            0..4,
        ),
        any::<bool>(),
        prop_oneof![Just(0u64), 1u64..50, any::<u64>()],
    )
        .prop_map(
            |(timeout_ms, idempotency_key, description, branches, commit, prepare)| {
                pb::BeginRequest {
                    timeout_ms,
                    idempotency_key,
                    description,
                    branches,
                    commit,
                    prepare_timeout_ms: prepare,
                }
            },
        )
}

fn enlist(known: Vec<String>) -> impl Strategy<Value = pb::EnlistRequest> {
    (txn_id(known), endpoint(), payload(), text(128)).prop_map(
        |(transaction_id, participant, payload, branch)| pb::EnlistRequest {
            transaction_id,
            participant,
            payload,
            branch,
        },
    )
}

fn step() -> impl Strategy<Value = pb::SagaStep> {
    (
        text(128),
        endpoint(),
        payload(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
        proptest::collection::vec(text(16), 0..3),
        any::<i32>(),
        millis(),
        proptest::option::of((
            millis(),
            any::<f64>(),
            millis(),
            any::<u32>(),
            any::<bool>(),
        )),
    )
        .prop_map(
            |(name, participant, action, compensation, deps, kind, timeout, retry)| pb::SagaStep {
                name,
                participant,
                action,
                compensation,
                depends_on: Some(pb::Dependencies { steps: deps }),
                kind,
                attempt_timeout_ms: timeout,
                retry: retry.map(|(initial, multiplier, max, attempts, no_jitter)| {
                    pb::RetryPolicy {
                        initial_delay_ms: initial,
                        multiplier,
                        max_delay_ms: max,
                        max_attempts: attempts,
                        disable_jitter: no_jitter,
                    }
                }),
            },
        )
}

fn submit_saga() -> impl Strategy<Value = pb::SubmitSagaRequest> {
    (
        proptest::collection::vec(step(), 0..5),
        text(256),
        text(2048),
    )
        .prop_map(
            |(steps, idempotency_key, description)| pb::SubmitSagaRequest {
                steps,
                idempotency_key,
                // Waiting would hold the call for as long as a real saga runs.
                wait: false,
                description,
            },
        )
}

fn prepare_message() -> impl Strategy<Value = pb::PrepareMessageRequest> {
    (
        endpoint(),
        proptest::collection::vec((text(128), endpoint(), payload()), 0..4),
        millis(),
        text(256),
        text(256),
        text(512),
    )
        .prop_map(
            |(
                producer,
                destinations,
                check_after_ms,
                ordering_key,
                idempotency_key,
                description,
            )| {
                pb::PrepareMessageRequest {
                    producer,
                    destinations: destinations
                        .into_iter()
                        .map(|(name, participant, payload)| pb::MessageDestination {
                            name,
                            participant,
                            payload,
                        })
                        .collect(),
                    check_after_ms,
                    ordering_key,
                    idempotency_key,
                    description,
                }
            },
        )
}

fn list() -> impl Strategy<Value = pb::ListTransactionsRequest> {
    (
        proptest::collection::vec(any::<i32>(), 0..4),
        any::<bool>(),
        any::<u32>(),
        text(64),
        any::<i32>(),
        millis(),
        text(16),
        text(300),
    )
        .prop_map(
            |(states, needs_attention, page_size, page_token, kind, min_age_ms, group, text)| {
                pb::ListTransactionsRequest {
                    states,
                    needs_attention,
                    page_size,
                    page_token,
                    kind,
                    min_age_ms,
                    group,
                    text,
                }
            },
        )
}

fn resolve(known: Vec<String>) -> impl Strategy<Value = pb::ResolveBranchRequest> {
    (
        txn_id(known),
        text(128),
        any::<i32>(),
        text(1024),
        text(256),
    )
        .prop_map(|(transaction_id, branch, outcome, reason, operator)| {
            pb::ResolveBranchRequest {
                transaction_id,
                branch,
                outcome,
                reason,
                operator,
            }
        })
}

/// Every call has a deadline. A Commit whose only participant cannot be
/// reached stays in doubt (a one-phase commit may have happened) until that
/// participant answers the Abort: such a call ends DEADLINE_EXCEEDED, which
/// is the honest answer.
fn within<T>(message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(std::time::Duration::from_secs(2));
    request
}

/// Begin (with `commit`) and Commit wait for participants; only they may
/// run into the caller's deadline (the client reports it as CANCELLED
/// "Timeout expired", or the server as DEADLINE_EXCEEDED).
fn may_wait_on_a_participant(rpc: &str) -> bool {
    matches!(rpc, "Begin" | "Commit")
}

/// The statuses a coordinator may answer bad input with; each error must
/// say something.
fn check<T: Debug>(rpc: &str, request: &impl Debug, result: Result<T, tonic::Status>) {
    let Err(status) = result else { return };
    let precise = matches!(
        status.code(),
        Code::InvalidArgument
            | Code::NotFound
            | Code::FailedPrecondition
            | Code::AlreadyExists
            | Code::ResourceExhausted
            | Code::OutOfRange
    ) || (may_wait_on_a_participant(rpc)
        && matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled));
    assert!(
        precise && !status.message().is_empty(),
        "{rpc} answered {:?} {:?} to {:.400}",
        status.code(),
        status.message(),
        format!("{request:?}")
    );
}

/// A request naming an unusable endpoint must be refused as such, whatever
/// else it holds (fields are checked before anything is looked up).
fn check_endpoints<T: Debug>(
    rpc: &str,
    endpoints: &[&str],
    request: &impl Debug,
    result: &Result<T, tonic::Status>,
) {
    if endpoints.iter().any(|e| UNUSABLE_ENDPOINTS.contains(e)) {
        let code = result.as_ref().err().map(tonic::Status::code);
        assert_eq!(
            code,
            Some(Code::InvalidArgument),
            "{rpc} with an unusable endpoint: {:.400}",
            format!("{request:?}")
        );
    }
}

/// Draws `cases()` values of `strategy`.
fn draws<S: Strategy>(runner: &mut TestRunner, strategy: S) -> Vec<S::Value> {
    (0..cases())
        .map(|_| strategy.new_tree(runner).expect("generate").current())
        .collect()
}

#[tokio::test]
async fn any_request_to_any_rpc_gets_a_precise_answer_and_changes_nothing_decided() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = client(&node);
    let p = TestParticipant::start(dir.path(), "p", Some(&coordinator_dir)).await;
    // Something decided before the barrage, and something still active.
    let committed = client
        .begin(BeginOptions {
            branches: vec![
                BranchSpec {
                    participant: p.url.clone(),
                    payload: b"commit".to_vec(),
                    name: Some("one".into()),
                },
                BranchSpec {
                    participant: p.url.clone(),
                    payload: b"commit".to_vec(),
                    name: Some("two".into()),
                },
            ],
            ..BeginOptions::default()
        })
        .await
        .expect("begin")
        .transaction_id;
    assert_eq!(
        client.commit(&committed).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    let active = client
        .begin(BeginOptions::default())
        .await
        .expect("begin")
        .transaction_id;
    let known = vec![committed.clone(), active.clone()];

    // A fixed seed: a failure replays exactly.
    let mut runner = TestRunner::new_with_rng(
        Config {
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(proptest::test_runner::RngAlgorithm::ChaCha, &[7; 32]),
    );
    let mut raw = client.raw();
    for request in draws(&mut runner, begin(known.clone())) {
        let result = raw.begin(within(request.clone())).await;
        let endpoints: Vec<&str> = request
            .branches
            .iter()
            .map(|b| b.participant.as_str())
            .collect();
        check_endpoints("Begin", &endpoints, &request, &result);
        check("Begin", &request, result);
    }
    for request in draws(&mut runner, enlist(known.clone())) {
        let result = raw.enlist(within(request.clone())).await;
        check_endpoints("Enlist", &[request.participant.as_str()], &request, &result);
        check("Enlist", &request, result);
    }
    for request in draws(&mut runner, submit_saga()) {
        let result = raw.submit_saga(within(request.clone())).await;
        let endpoints: Vec<&str> = request
            .steps
            .iter()
            .map(|s| s.participant.as_str())
            .collect();
        check_endpoints("SubmitSaga", &endpoints, &request, &result);
        check("SubmitSaga", &request, result);
    }
    for request in draws(&mut runner, prepare_message()) {
        let result = raw.prepare_message(within(request.clone())).await;
        let endpoints: Vec<&str> = std::iter::once(request.producer.as_str())
            .chain(request.destinations.iter().map(|d| d.participant.as_str()))
            .collect();
        check_endpoints("PrepareMessage", &endpoints, &request, &result);
        check("PrepareMessage", &request, result);
    }
    for request in draws(&mut runner, list()) {
        check(
            "ListTransactions",
            &request,
            raw.list_transactions(within(request.clone())).await,
        );
    }
    for request in draws(&mut runner, resolve(known.clone())) {
        check(
            "ResolveBranch",
            &request,
            raw.resolve_branch(within(request.clone())).await,
        );
    }
    let ids = draws(
        &mut runner,
        (txn_id(known.clone()), text(1024), any::<bool>(), millis()),
    );
    for (id, reason, wait, prepare) in ids {
        // Never commit or roll back the two witnesses: they must stay as
        // they are.
        if id != active {
            let commit = pb::CommitRequest {
                transaction_id: id.clone(),
                wait_for_completion: wait,
                prepare_timeout_ms: prepare,
            };
            check("Commit", &commit, raw.commit(within(commit.clone())).await);
        }
        if id != committed && id != active {
            let rollback = pb::RollbackRequest {
                transaction_id: id.clone(),
                reason,
            };
            check(
                "Rollback",
                &rollback,
                raw.rollback(within(rollback.clone())).await,
            );
        }
        let get = pb::GetTransactionRequest {
            transaction_id: id.clone(),
            include_payloads: true,
        };
        check(
            "GetTransaction",
            &get,
            raw.get_transaction(within(get.clone())).await,
        );
        let outcome = pb::GetOutcomeRequest {
            transaction_id: id.clone(),
        };
        check(
            "GetOutcome",
            &outcome,
            raw.get_outcome(within(outcome.clone())).await,
        );
        // Not the active witness: a 2PC transaction is no message, and
        // the answer must say so without touching it.
        let submit = pb::SubmitMessageRequest {
            transaction_id: id.clone(),
            wait,
        };
        check(
            "SubmitMessage",
            &submit,
            raw.submit_message(within(submit.clone())).await,
        );
        let retry = pb::RetryTransactionRequest { transaction_id: id };
        check(
            "RetryTransaction",
            &retry,
            raw.retry_transaction(within(retry.clone())).await,
        );
    }

    // Still serving, and what was decided is as it was.
    let txn = client.transaction(&committed).await.expect("get");
    assert_eq!(txn.state, pb::TransactionState::Committed as i32);
    assert_eq!(
        p.effects(&committed).await,
        ["prepare", "prepare", "commit", "commit"]
    );
    let txn = client.transaction(&active).await.expect("get");
    assert_eq!(txn.state, pb::TransactionState::Active as i32);
    let after = client
        .begin(BeginOptions {
            branches: vec![BranchSpec {
                participant: p.url.clone(),
                payload: b"commit".to_vec(),
                name: None,
            }],
            ..BeginOptions::default()
        })
        .await
        .expect("begin after the barrage")
        .transaction_id;
    assert_eq!(
        client.commit(&after).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
}
