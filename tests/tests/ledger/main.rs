//! The participant ledger under duplicated, replayed and reordered calls
//! (I5): each (transaction, branch, operation) takes effect once, an abort
//! or compensation that overtakes its prepare or action leaves a tombstone,
//! and the late call is refused. Calls go over real gRPC to participants
//! with real SQLite databases; effects are counted in those databases.

#[path = "../support/mod.rs"]
mod support;

mod cases;
mod outbox;
mod postgres;

use concord_proto::v1 as pb;
use support::TestParticipant;
use support::keys::SignedClient;
use support::saga::StepParticipant;

fn branch(txn: &str, name: &str) -> Option<pb::BranchRef> {
    Some(pb::BranchRef {
        transaction_id: txn.into(),
        branch: name.into(),
        coordinator: String::new(),
    })
}

async fn connect(url: &str) -> SignedClient {
    SignedClient::connect(url.to_owned())
        .await
        .expect("connect")
}

async fn prepare(client: &mut SignedClient, txn: &str) -> pb::Vote {
    let answer = client
        .prepare(pb::PrepareRequest {
            branch: branch(txn, "b1"),
            payload: b"commit".to_vec(),
        })
        .await
        .expect("prepare")
        .into_inner();
    pb::Vote::try_from(answer.vote).expect("vote")
}

async fn commit(client: &mut SignedClient, txn: &str) -> Result<(), tonic::Status> {
    client
        .commit(pb::CommitBranchRequest {
            branch: branch(txn, "b1"),
            payload: b"commit".to_vec(),
        })
        .await
        .map(|_| ())
}

async fn abort(client: &mut SignedClient, txn: &str) -> pb::AbortBranchResponse {
    client
        .abort(pb::AbortBranchRequest {
            branch: branch(txn, "b1"),
            payload: b"commit".to_vec(),
        })
        .await
        .expect("abort")
        .into_inner()
}

#[tokio::test]
async fn a_duplicated_prepare_and_commit_take_effect_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let mut client = connect(&p.url).await;
    let txn = "01890a5d-ac96-774b-bcce-000000000001";
    assert_eq!(prepare(&mut client, txn).await, pb::Vote::Commit);
    assert_eq!(
        prepare(&mut client, txn).await,
        pb::Vote::Commit,
        "same answer again"
    );
    commit(&mut client, txn).await.expect("commit");
    commit(&mut client, txn)
        .await
        .expect("duplicate commit succeeds");
    commit(&mut client, txn).await.expect("and again");
    assert_eq!(p.effects(txn).await, ["prepare", "commit"]);
}

#[tokio::test]
async fn an_abort_before_its_prepare_leaves_a_tombstone_and_the_late_prepare_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let mut client = connect(&p.url).await;
    let txn = "01890a5d-ac96-774b-bcce-000000000002";
    let answer = abort(&mut client, txn).await;
    assert!(!answer.already_committed);
    // The prepare that was overtaken arrives: refused, handler never run.
    assert_eq!(prepare(&mut client, txn).await, pb::Vote::Abort);
    assert!(p.effects(txn).await.is_empty());
    assert_eq!(p.ledger(txn).await, ["abort=tombstone"]);
    // A commit for it is a protocol violation and changes nothing.
    let status = commit(&mut client, txn)
        .await
        .expect_err("commit after abort");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    assert!(p.effects(txn).await.is_empty());
}

#[tokio::test]
async fn an_abort_after_prepare_undoes_once_and_a_duplicate_abort_is_a_no_op() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let mut client = connect(&p.url).await;
    let txn = "01890a5d-ac96-774b-bcce-000000000003";
    assert_eq!(prepare(&mut client, txn).await, pb::Vote::Commit);
    abort(&mut client, txn).await;
    abort(&mut client, txn).await;
    assert_eq!(p.effects(txn).await, ["prepare", "abort"]);
    // A late commit cannot undo the abort.
    assert!(commit(&mut client, txn).await.is_err());
    assert_eq!(p.effects(txn).await, ["prepare", "abort"]);
}

#[tokio::test]
async fn a_one_phase_commit_answers_a_late_abort_with_already_committed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let mut client = connect(&p.url).await;
    let txn = "01890a5d-ac96-774b-bcce-000000000004";
    let request = || pb::CommitOnePhaseRequest {
        branch: branch(txn, "b1"),
        payload: b"commit".to_vec(),
    };
    let first = client
        .commit_one_phase(request())
        .await
        .expect("1pc")
        .into_inner();
    let again = client
        .commit_one_phase(request())
        .await
        .expect("1pc again")
        .into_inner();
    assert_eq!(first.outcome, pb::Outcome::Committed as i32);
    assert_eq!(again.outcome, pb::Outcome::Committed as i32);
    assert!(abort(&mut client, txn).await.already_committed);
    assert_eq!(p.effects(txn).await, ["prepare", "commit"]);
}

#[tokio::test]
async fn saga_steps_run_once_and_a_compensation_that_overtakes_its_action_wins() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = StepParticipant::start(dir.path(), "steps").await;
    let mut client = connect(&p.url).await;
    let execute = |txn: &str, step: &str| pb::ExecuteRequest {
        branch: branch(txn, step),
        payload: b"ok".to_vec(),
    };
    let compensate = |txn: &str, step: &str| pb::CompensateRequest {
        branch: branch(txn, step),
        payload: b"ok".to_vec(),
    };
    let result = |answer: pb::ExecuteResponse| {
        pb::execute_response::Result::try_from(answer.result).expect("result")
    };

    // A duplicated action takes effect once; so does a duplicated compensation.
    let txn = "01890a5d-ac96-774b-bcce-000000000005";
    for _ in 0..3 {
        let answer = client
            .execute(execute(txn, "a"))
            .await
            .expect("execute")
            .into_inner();
        assert_eq!(result(answer), pb::execute_response::Result::Succeeded);
    }
    for _ in 0..2 {
        client
            .compensate(compensate(txn, "a"))
            .await
            .expect("compensate");
    }
    assert_eq!(p.effects(txn).await, ["action:a", "compensate:a"]);

    // A compensation before its action: a tombstone, and the late action is
    // refused without running.
    let txn = "01890a5d-ac96-774b-bcce-000000000006";
    client
        .compensate(compensate(txn, "a"))
        .await
        .expect("compensate first");
    let late = client
        .execute(execute(txn, "a"))
        .await
        .expect("execute")
        .into_inner();
    assert_eq!(result(late), pb::execute_response::Result::Failed);
    assert!(p.effects(txn).await.is_empty());
    assert_eq!(
        p.ledger(txn, "a", "compensate").await.as_deref(),
        Some("tombstone")
    );
}

#[tokio::test]
async fn malformed_branch_references_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let mut client = connect(&p.url).await;
    for branch in [None, branch("", "b1"), branch("t", "")] {
        let status = client
            .prepare(pb::PrepareRequest {
                branch,
                payload: vec![],
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
    }
    // A 2PC-only participant says so to saga calls.
    let status = client
        .execute(pb::ExecuteRequest {
            branch: branch("t", "s"),
            payload: vec![],
        })
        .await
        .expect_err("unsupported");
    assert_eq!(status.code(), tonic::Code::Unimplemented);
}

/// Sends one `Batch` and returns its answers in the order of `calls`.
async fn batch(
    client: &mut SignedClient,
    calls: Vec<Option<pb::batch_call::Call>>,
) -> Result<Vec<pb::BatchAnswer>, tonic::Status> {
    let count = calls.len();
    let calls = calls
        .into_iter()
        .map(|call| pb::BatchCall {
            call,
            timeout_ms: 5_000,
            ..Default::default()
        })
        .collect();
    let mut stream = client.batch(pb::BatchRequest { calls }).await?.into_inner();
    let mut answers: Vec<Option<pb::BatchAnswer>> = vec![None; count];
    while let Some(answer) = stream.message().await? {
        let slot = &mut answers[answer.index as usize];
        assert!(slot.is_none(), "call {} answered twice", answer.index);
        *slot = Some(answer);
    }
    Ok(answers
        .into_iter()
        .enumerate()
        .map(|(index, answer)| answer.unwrap_or_else(|| panic!("call {index} never answered")))
        .collect())
}

#[tokio::test]
async fn a_batch_takes_each_call_through_the_ledger_once_and_fails_only_the_bad_ones() {
    use pb::batch_answer::Answer;
    use pb::batch_call::Call;
    let dir = tempfile::tempdir().expect("temp dir");
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let mut client = connect(&p.url).await;
    let prepare_call = |txn: &str| {
        Some(Call::Prepare(pb::PrepareRequest {
            branch: branch(txn, "b1"),
            payload: b"commit".to_vec(),
        }))
    };
    let answers = batch(
        &mut client,
        vec![
            prepare_call("t1"),
            // A duplicate in the same batch, handled at the same time.
            prepare_call("t1"),
            // An abort before any prepare of its branch: a tombstone.
            Some(Call::Abort(pb::AbortBranchRequest {
                branch: branch("t2", "b1"),
                payload: b"commit".to_vec(),
            })),
            None,
            Some(Call::Prepare(pb::PrepareRequest {
                branch: branch("", "b1"),
                payload: vec![],
            })),
        ],
    )
    .await
    .expect("batch");
    for index in [0, 1] {
        assert_eq!(answers[index].code, 0, "{:?}", answers[index]);
        assert!(
            matches!(&answers[index].answer, Some(Answer::Prepare(vote)) if vote.vote == pb::Vote::Commit as i32),
            "{:?}",
            answers[index]
        );
    }
    assert!(
        matches!(answers[2].answer, Some(Answer::Abort(_))),
        "{:?}",
        answers[2]
    );
    for index in [3, 4] {
        assert_eq!(
            answers[index].code,
            tonic::Code::InvalidArgument as i32,
            "{:?}",
            answers[index]
        );
        assert!(!answers[index].message.is_empty());
    }
    assert_eq!(p.effects("t1").await, ["prepare"]);

    // The late prepare of the tombstoned branch is refused; the commit of
    // t1, sent twice, takes effect once.
    let commit_call = || {
        Some(Call::Commit(pb::CommitBranchRequest {
            branch: branch("t1", "b1"),
            payload: b"commit".to_vec(),
        }))
    };
    let answers = batch(
        &mut client,
        vec![commit_call(), prepare_call("t2"), commit_call()],
    )
    .await
    .expect("batch");
    assert!(
        matches!(answers[0].answer, Some(Answer::Commit(_))),
        "{:?}",
        answers[0]
    );
    assert!(
        matches!(answers[2].answer, Some(Answer::Commit(_))),
        "{:?}",
        answers[2]
    );
    assert!(
        matches!(&answers[1].answer, Some(Answer::Prepare(vote)) if vote.vote == pb::Vote::Abort as i32),
        "{:?}",
        answers[1]
    );
    assert_eq!(p.effects("t1").await, ["prepare", "commit"]);
    assert!(p.effects("t2").await.is_empty());

    // A batch of nothing, or of more than the limit, is refused whole.
    for count in [0, concord_participant::MAX_BATCH_CALLS + 1] {
        let status = batch(&mut client, vec![prepare_call("t3"); count])
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    }
    assert!(p.effects("t3").await.is_empty());
}

/// DESIGN §12 in a `Batch`: each entry carries its own signature and is
/// judged alone. An entry signed for another branch is refused
/// UNAUTHENTICATED and leaves nothing; the genuine entry beside it is
/// applied as usual.
#[tokio::test]
async fn a_forged_entry_in_a_batch_is_refused_and_its_neighbour_applied() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let mut client = connect(&p.url).await;
    let (good, forged) = (
        "01890a5d-ac96-774b-bcce-0000000000a1",
        "01890a5d-ac96-774b-bcce-0000000000a2",
    );
    let prepare = |txn: &str| {
        Some(pb::batch_call::Call::Prepare(pb::PrepareRequest {
            branch: branch(txn, "b1"),
            payload: b"commit".to_vec(),
        }))
    };
    let calls = vec![
        pb::BatchCall {
            call: prepare(good),
            signature: support::keys::sign("Prepare", good, "b1", b"commit"),
            ..Default::default()
        },
        pb::BatchCall {
            call: prepare(forged),
            // A genuine signature, lifted from another branch's call.
            signature: support::keys::sign("Prepare", forged, "b2", b"commit"),
            ..Default::default()
        },
    ];
    let mut stream = client
        .raw()
        .batch(pb::BatchRequest { calls })
        .await
        .expect("batch")
        .into_inner();
    let mut answers = Vec::new();
    while let Some(answer) = stream.message().await.expect("answer") {
        answers.push(answer);
    }
    answers.sort_by_key(|answer| answer.index);
    assert_eq!(answers.len(), 2);
    assert_eq!(answers[0].code, 0, "{:?}", answers[0]);
    assert_eq!(answers[1].code, tonic::Code::Unauthenticated as i32);
    assert!(
        answers[1].message.contains("does not match"),
        "{:?}",
        answers[1]
    );
    assert_eq!(p.effects(good).await, ["prepare"]);
    assert!(p.effects(forged).await.is_empty());
    assert!(p.ledger(forged).await.is_empty(), "no ledger row either");
    // And alone, unsigned, the same call is refused too.
    let status = client
        .raw()
        .prepare(pb::PrepareRequest {
            branch: branch(forged, "b1"),
            payload: b"commit".to_vec(),
        })
        .await
        .expect_err("unsigned");
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    assert!(p.ledger(forged).await.is_empty());
}

/// DESIGN §12: the coordinator signs a `Batch` as a whole. Entries changed
/// after signing (a payload swapped, as a man in the middle would) break
/// it: every entry without a signature of its own is refused
/// UNAUTHENTICATED, and nothing is applied.
#[tokio::test]
async fn a_batch_whose_entries_were_changed_after_signing_is_refused_whole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let p = TestParticipant::start(dir.path(), "p", None).await;
    let mut client = connect(&p.url).await;
    let txns = [
        "01890a5d-ac96-774b-bcce-0000000000b1",
        "01890a5d-ac96-774b-bcce-0000000000b2",
    ];
    let prepare = |txn: &str, payload: &[u8]| pb::BatchCall {
        call: Some(pb::batch_call::Call::Prepare(pb::PrepareRequest {
            branch: branch(txn, "b1"),
            payload: payload.to_vec(),
        })),
        ..Default::default()
    };
    let signed =
        support::keys::batch_signature(&[prepare(txns[0], b"commit"), prepare(txns[1], b"commit")]);
    let changed = vec![prepare(txns[0], b"commit"), prepare(txns[1], b"abort")];
    let mut request = tonic::Request::new(pb::BatchRequest { calls: changed });
    request.metadata_mut().insert(
        concord_proto::signature::SIGNATURE_HEADER,
        signed.parse().expect("ASCII"),
    );
    let mut stream = client
        .raw()
        .batch(request)
        .await
        .expect("batch")
        .into_inner();
    let mut refused = 0;
    while let Some(answer) = stream.message().await.expect("answer") {
        assert_eq!(
            answer.code,
            tonic::Code::Unauthenticated as i32,
            "{answer:?}"
        );
        assert!(answer.message.contains("does not match"), "{answer:?}");
        refused += 1;
    }
    assert_eq!(refused, 2);
    for txn in txns {
        assert!(p.ledger(txn).await.is_empty(), "nothing applied");
    }
    // Signed as sent, the same batch is served.
    let answers = batch(
        &mut client,
        vec![
            prepare(txns[0], b"commit").call,
            prepare(txns[1], b"commit").call,
        ],
    )
    .await
    .expect("batch");
    assert!(answers.iter().all(|a| a.code == 0), "{answers:?}");
    assert_eq!(p.effects(txns[0]).await, ["prepare"]);
}
