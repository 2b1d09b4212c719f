//! Crash recovery across processes' boundaries: participants that restart
//! holding a prepared branch resolve it by asking the coordinator (DESIGN
//! §4), and (in `process`) the real binaries killed with SIGKILL at each log
//! boundary finish every transaction correctly after a restart.

#[path = "../support/mod.rs"]
mod support;

mod boundary;
mod disk;
mod matrix;
mod process;
mod traces;

use concord_participant::{BeginOptions, Outcome};
use concord_proto::v1 as pb;
use support::keys::SignedClient;
use support::{TestParticipant, client, eventually, quick_config, start_coordinator};

#[tokio::test]
async fn a_restarted_participant_learns_the_commit_it_missed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    // a votes YES but cannot commit; then it restarts somewhere the
    // coordinator's phase-2 retries never reach.
    let a = TestParticipant::start(dir.path(), "a", None).await;
    let b = TestParticipant::start(dir.path(), "b", None).await;
    let id = client
        .begin(BeginOptions::default())
        .await
        .expect("begin")
        .transaction_id;
    client
        .enlist(&id, &a.url, "flaky-commit:1000000", None)
        .await
        .expect("enlist");
    client
        .enlist(&id, &b.url, "commit", None)
        .await
        .expect("enlist");
    assert_eq!(
        client.commit(&id).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    assert_eq!(a.effects(&id).await, ["prepare"]);
    a.stop().await;

    let a =
        TestParticipant::restart_healthy(dir.path(), "a", None, "127.0.0.1:0", Some(&node.url()))
            .await;
    // The resolver finds the prepared branch, asks GetOutcome, commits once.
    eventually("a resolves its in-doubt branch", || async {
        (a.effects(&id).await == ["prepare", "commit"]).then_some(())
    })
    .await;
    assert_eq!(b.effects(&id).await, ["prepare", "commit"]);
}

#[tokio::test]
async fn a_prepared_branch_the_coordinator_never_decided_is_presumed_aborted() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let a = TestParticipant::start(dir.path(), "a", None).await;
    // A prepare for a transaction the coordinator has no record of (its
    // Begin was lost, say): the participant must not hold it forever.
    let id = "01890a5d-ac96-774b-bcce-00000000abcd";
    let mut raw = SignedClient::connect(a.url.clone()).await.expect("connect");
    let vote = raw
        .prepare(pb::PrepareRequest {
            branch: Some(pb::BranchRef {
                transaction_id: id.into(),
                branch: "b1".into(),
                coordinator: node.url(),
            }),
            payload: b"commit".to_vec(),
        })
        .await
        .expect("prepare")
        .into_inner()
        .vote;
    assert_eq!(vote, pb::Vote::Commit as i32);
    a.stop().await;
    let a =
        TestParticipant::restart_healthy(dir.path(), "a", None, "127.0.0.1:0", Some(&node.url()))
            .await;
    eventually("a aborts the branch nobody decided", || async {
        (a.effects(id).await == ["prepare", "abort"]).then_some(())
    })
    .await;
}
