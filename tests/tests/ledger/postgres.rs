//! The same ledger guarantees with the participant's database on a real
//! PostgreSQL, started by the test harness (`support::postgres`).

use concord_participant::{
    BeginOptions, BranchContext, LocalTxOf, Outcome, ParticipantError, ParticipantService,
    SagaStep, StepResult, TwoPhaseParticipant, Vote,
};
use concord_proto::v1 as pb;
use sqlx::{PgPool, Postgres};
use tokio_util::sync::CancellationToken;

use super::support::keys::SignedClient;
use super::support::postgres::Postgres as Server;
use super::support::{TestParticipant, eventually, quick_config, start_coordinator};
use super::{branch, connect};

/// A participant keeping its ledger and its effects in PostgreSQL; each
/// call's payload says what to do, as in `support::Scripted`.
struct PgScripted;

async fn effect(
    tx: &mut LocalTxOf<Postgres>,
    branch: &BranchContext,
    op: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO effects (txn_id, branch, op) VALUES ($1, $2, $3)")
        .bind(&branch.transaction_id)
        .bind(&branch.branch)
        .bind(op)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl TwoPhaseParticipant<Postgres> for PgScripted {
    async fn prepare(
        &self,
        tx: &mut LocalTxOf<Postgres>,
        branch: &BranchContext,
        payload: &[u8],
    ) -> Result<Vote, ParticipantError> {
        effect(tx, branch, "prepare").await?;
        Ok(match payload {
            b"abort" => Vote::Abort("scripted refusal".into()),
            b"readonly" => Vote::ReadOnly,
            _ => Vote::Commit,
        })
    }

    async fn commit(
        &self,
        tx: &mut LocalTxOf<Postgres>,
        branch: &BranchContext,
        _: &[u8],
    ) -> Result<(), ParticipantError> {
        effect(tx, branch, "commit").await?;
        Ok(())
    }

    async fn abort(
        &self,
        tx: &mut LocalTxOf<Postgres>,
        branch: &BranchContext,
        _: &[u8],
    ) -> Result<(), ParticipantError> {
        effect(tx, branch, "abort").await?;
        Ok(())
    }
}

impl SagaStep<Postgres> for PgScripted {
    async fn action(
        &self,
        tx: &mut LocalTxOf<Postgres>,
        step: &BranchContext,
        payload: &[u8],
    ) -> Result<StepResult, ParticipantError> {
        if payload == b"refuse" {
            return Ok(StepResult::Refused("scripted refusal".into()));
        }
        effect(tx, step, "action").await?;
        Ok(StepResult::Done)
    }

    async fn compensate(
        &self,
        tx: &mut LocalTxOf<Postgres>,
        step: &BranchContext,
        _: &[u8],
    ) -> Result<(), ParticipantError> {
        effect(tx, step, "compensate").await?;
        Ok(())
    }
}

struct PgParticipant {
    url: String,
    pool: PgPool,
    stop: CancellationToken,
}

impl PgParticipant {
    async fn start(database_url: &str) -> Self {
        Self::start_resolving(database_url, None).await
    }

    /// [`PgParticipant::start`], its resolver asking `coordinator`.
    async fn start_resolving(database_url: &str, coordinator: Option<String>) -> Self {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(8)
            .connect(database_url)
            .await
            .expect("connect");
        sqlx::query("CREATE TABLE IF NOT EXISTS effects (id BIGSERIAL PRIMARY KEY, txn_id TEXT, branch TEXT, op TEXT)")
            .execute(&pool)
            .await
            .expect("effects table");
        let service = ParticipantService::new(PgScripted, pool.clone())
            .await
            .expect("ledger")
            .with_saga(PgScripted)
            .with_coordinator_keys(super::support::keys::trusted())
            .with_resolver(concord_participant::ResolverConfig {
                coordinator,
                ..Default::default()
            });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        tokio::spawn(async move { service.serve(listener, shutdown).await.expect("serves") });
        Self { url, pool, stop }
    }

    async fn effects(&self, txn: &str) -> Vec<String> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT op FROM effects WHERE txn_id = $1 ORDER BY id")
                .bind(txn)
                .fetch_all(&self.pool)
                .await
                .expect("effects");
        rows.into_iter().map(|(op,)| op).collect()
    }
}

impl Drop for PgParticipant {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn prepare(txn: &str) -> pb::PrepareRequest {
    pb::PrepareRequest {
        branch: branch(txn, "b1"),
        payload: b"commit".to_vec(),
    }
}

#[tokio::test]
async fn the_ledger_on_postgres_applies_each_call_once() {
    let server = Server::start().await;
    let p = PgParticipant::start(&server.database("ledger").await).await;
    let mut client = connect(&p.url).await;

    // Duplicated prepare and commit: one effect each.
    let txn = "01890a5d-ac96-774b-bcce-000000000101";
    for _ in 0..2 {
        let vote = client
            .prepare(prepare(txn))
            .await
            .expect("prepare")
            .into_inner()
            .vote;
        assert_eq!(vote, pb::Vote::Commit as i32);
    }
    for _ in 0..3 {
        client
            .commit(pb::CommitBranchRequest {
                branch: branch(txn, "b1"),
                payload: vec![],
            })
            .await
            .expect("commit");
    }
    assert_eq!(p.effects(txn).await, ["prepare", "commit"]);

    // Abort before prepare: tombstone; the late prepare is refused.
    let txn = "01890a5d-ac96-774b-bcce-000000000102";
    client
        .abort(pb::AbortBranchRequest {
            branch: branch(txn, "b1"),
            payload: vec![],
        })
        .await
        .expect("abort");
    let vote = client
        .prepare(prepare(txn))
        .await
        .expect("prepare")
        .into_inner()
        .vote;
    assert_eq!(vote, pb::Vote::Abort as i32);
    assert!(p.effects(txn).await.is_empty());

    // Compensation before action: the late action is refused.
    let txn = "01890a5d-ac96-774b-bcce-000000000103";
    client
        .compensate(pb::CompensateRequest {
            branch: branch(txn, "s"),
            payload: vec![],
        })
        .await
        .expect("compensate");
    let late = client
        .execute(pb::ExecuteRequest {
            branch: branch(txn, "s"),
            payload: b"ok".to_vec(),
        })
        .await
        .expect("execute")
        .into_inner();
    assert_eq!(late.result, pb::execute_response::Result::Failed as i32);
    assert!(p.effects(txn).await.is_empty());
}

#[tokio::test]
async fn concurrent_duplicates_on_postgres_take_effect_once() {
    let server = Server::start().await;
    let p = PgParticipant::start(&server.database("ledger").await).await;
    let txn = "01890a5d-ac96-774b-bcce-000000000201";
    // Twenty copies of one Prepare at once: the advisory lock serialises
    // them, so one runs the handler and the rest read its row.
    let calls = (0..20).map(|_| {
        let url = p.url.clone();
        async move {
            let mut client = connect(&url).await;
            client
                .prepare(prepare(txn))
                .await
                .expect("prepare")
                .into_inner()
                .vote
        }
    });
    let votes = futures::future::join_all(calls).await;
    assert!(
        votes.iter().all(|v| *v == pb::Vote::Commit as i32),
        "{votes:?}"
    );
    assert_eq!(p.effects(txn).await, ["prepare"]);
}

#[tokio::test]
async fn a_transaction_spans_a_sqlite_and_a_postgres_participant() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = super::support::client(&node);
    let lite = TestParticipant::start(dir.path(), "lite", None).await;
    let pg = PgParticipant::start(&server.database("ledger").await).await;
    for (payload, committed) in [("commit", true), ("abort", false)] {
        let id = client
            .begin(BeginOptions::default())
            .await
            .expect("begin")
            .transaction_id;
        client
            .enlist(&id, &lite.url, "commit", None)
            .await
            .expect("enlist");
        client
            .enlist(&id, &pg.url, payload, None)
            .await
            .expect("enlist");
        let outcome = client.commit(&id).await.expect("commit");
        assert_eq!(
            matches!(outcome, Outcome::Committed { .. }),
            committed,
            "{outcome:?}"
        );
        let (lite_want, pg_want): (&[&str], &[&str]) = if committed {
            (&["prepare", "commit"], &["prepare", "commit"])
        } else {
            // The refusal rolled back the PostgreSQL prepare with it.
            (&["prepare", "abort"], &[])
        };
        eventually("both participants settle", || async {
            (lite.effects(&id).await == lite_want && pg.effects(&id).await == pg_want).then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn a_postgres_participant_resolves_its_in_doubt_branch_after_a_restart() {
    let server = Server::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let url = server.database("ledger").await;
    let p = PgParticipant::start(&url).await;
    let txn = "01890a5d-ac96-774b-bcce-000000000301";
    let mut client = SignedClient::connect(p.url.clone()).await.expect("connect");
    client.prepare(prepare(txn)).await.expect("prepare");
    drop(p);
    // Restarted, it finds the branch nobody decided and asks the
    // coordinator it was given (never one a call named): aborted.
    let p = PgParticipant::start_resolving(&url, Some(node.url())).await;
    eventually("the in-doubt branch is aborted", || async {
        (p.effects(txn).await == ["prepare", "abort"]).then_some(())
    })
    .await;
}
