//! The ledger cases shared with the Python SDK (`sdk/ledger-cases.json`),
//! run against the Rust SDK's participants over gRPC: the scripted 2PC
//! participant for prepare, commit, abort and one-phase commit, the
//! scripted saga participant for execute and compensate, the message
//! participant for deliver and check-backs. The Python side
//! runs the same file (`sdk/python/tests/test_ledger_cases.py`), so the two
//! SDKs are held to one list of anomalies.

use serde::Deserialize;

use super::support::message::MessageParticipant;
use super::*;

#[derive(Deserialize)]
struct Cases {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    calls: Vec<Call>,
    effects: Vec<String>,
    ledger: Vec<String>,
}

#[derive(Deserialize)]
struct Call {
    call: String,
    payload: String,
    expect: String,
}

/// The call's answer, written as the cases write expectations.
async fn answer(
    two_phase: &mut SignedClient,
    steps: &mut SignedClient,
    messages: &mut SignedClient,
    txn: &str,
    call: &Call,
) -> String {
    let payload = call.payload.as_bytes().to_vec();
    let branch = branch(txn, "b1");
    let vote = |vote: i32| match pb::Vote::try_from(vote) {
        Ok(pb::Vote::Commit) => "vote COMMIT",
        Ok(pb::Vote::Abort) => "vote ABORT",
        Ok(pb::Vote::ReadOnly) => "vote READ_ONLY",
        _ => "vote UNSPECIFIED",
    };
    let answered: Result<String, tonic::Status> = match call.call.as_str() {
        "prepare" => two_phase
            .prepare(pb::PrepareRequest { branch, payload })
            .await
            .map(|a| vote(a.into_inner().vote).to_owned()),
        "commit" => two_phase
            .commit(pb::CommitBranchRequest { branch, payload })
            .await
            .map(|_| "ok".to_owned()),
        "abort" => two_phase
            .abort(pb::AbortBranchRequest { branch, payload })
            .await
            .map(|a| {
                if a.into_inner().already_committed {
                    "already_committed"
                } else {
                    "not_committed"
                }
                .to_owned()
            }),
        "commit_one_phase" => two_phase
            .commit_one_phase(pb::CommitOnePhaseRequest { branch, payload })
            .await
            .map(|a| {
                let a = a.into_inner();
                match (a.outcome == pb::Outcome::Committed as i32, a.read_only) {
                    (true, true) => "committed read_only",
                    (true, false) => "committed",
                    (false, _) => "aborted",
                }
                .to_owned()
            }),
        "execute" => steps
            .execute(pb::ExecuteRequest { branch, payload })
            .await
            .map(|a| {
                if a.into_inner().result == pb::execute_response::Result::Succeeded as i32 {
                    "succeeded"
                } else {
                    "failed"
                }
                .to_owned()
            }),
        "compensate" => steps
            .compensate(pb::CompensateRequest { branch, payload })
            .await
            .map(|_| "ok".to_owned()),
        "deliver" => messages
            .deliver(pb::DeliverRequest { branch, payload })
            .await
            .map(|_| "ok".to_owned()),
        "check_message" => messages
            .check_message(pb::CheckMessageRequest {
                transaction_id: txn.to_owned(),
            })
            .await
            .map(|a| {
                if a.into_inner().result == pb::check_message_response::Result::Committed as i32 {
                    "committed"
                } else {
                    "rolled_back"
                }
                .to_owned()
            }),
        other => panic!("unknown call {other:?} in sdk/ledger-cases.json"),
    };
    answered.unwrap_or_else(|status| format!("error {}", code_name(status.code())))
}

/// A status code as gRPC names it (`FAILED_PRECONDITION`), as Python's
/// `grpc.StatusCode` prints it.
fn code_name(code: tonic::Code) -> String {
    let mut name = String::new();
    for (i, c) in format!("{code:?}").chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            name.push('_');
        }
        name.push(c.to_ascii_uppercase());
    }
    name
}

#[tokio::test]
async fn the_ledger_cases_shared_with_the_python_sdk_hold() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/ledger-cases.json");
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(&path).expect("the cases"))
        .expect("the cases' JSON");
    assert!(cases.cases.len() >= 10, "{} cases", cases.cases.len());
    let dir = tempfile::tempdir().expect("temp dir");
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let s = StepParticipant::start(dir.path(), "steps").await;
    let m = MessageParticipant::start(dir.path(), "messages").await;
    let (mut two_phase, mut steps) = (connect(&p.url).await, connect(&s.url).await);
    let mut messages = connect(&m.url).await;
    for (i, case) in cases.cases.iter().enumerate() {
        let txn = format!("01890a5d-ac96-774b-bcce-{i:012}");
        for (n, call) in case.calls.iter().enumerate() {
            let got = answer(&mut two_phase, &mut steps, &mut messages, &txn, call).await;
            assert_eq!(got, call.expect, "{}: call {n} ({})", case.name, call.call);
        }
        let mut effects = p.effects(&txn).await;
        effects.extend(
            s.effects(&txn)
                .await
                .into_iter()
                .map(|e| e.trim_end_matches(":b1").to_owned()),
        );
        // A delivery's effect is its row in the destination's inbox.
        let (delivered,): (i64,) =
            sqlx::query_as("SELECT COUNT(*) FROM inbox WHERE message_id = ?1")
                .bind(&txn)
                .fetch_one(&m.pool)
                .await
                .expect("inbox");
        effects.extend((0..delivered).map(|_| "deliver".to_owned()));
        assert_eq!(effects, case.effects, "{}: effects", case.name);
        let mut ledger = p.ledger(&txn).await;
        for pool in [&s.pool, &m.pool] {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT op, result FROM concord_ledger WHERE txn_id = ?1")
                    .bind(&txn)
                    .fetch_all(pool)
                    .await
                    .expect("ledger");
            ledger.extend(rows.into_iter().map(|(op, r)| format!("{op}={r}")));
        }
        ledger.sort();
        assert_eq!(ledger, case.ledger, "{}: ledger", case.name);
    }
}
