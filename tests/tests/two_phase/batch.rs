//! Coalesced calls (`Participant.Batch`, docs/decisions.md): calls that
//! wait for one participant while earlier calls to it are in flight share a
//! batch, each keeps its own outcome, and a participant without `Batch` is
//! sent single calls.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use concord_participant::{BeginOptions, BranchSpec, Outcome};
use concord_proto::v1 as pb;
use concord_proto::v1::participant_server::{Participant, ParticipantServer};
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::support::{client, eventually, quick_config, start_coordinator};

/// What the participant saw, per (transaction, branch): the operations in
/// arrival order, and how each arrived.
#[derive(Default)]
struct Seen {
    ops: HashMap<(String, String), Vec<&'static str>>,
    batch_sizes: Vec<usize>,
    single_calls: usize,
}

/// A participant that holds every call until its gate opens, votes ABORT
/// for a branch whose payload says "abort", and records what it was sent.
#[derive(Clone)]
struct Gated {
    gate: Arc<Semaphore>,
    seen: Arc<Mutex<Seen>>,
    /// Answers Batch with UNIMPLEMENTED, as a participant from before it.
    without_batch: bool,
}

impl Gated {
    fn new(without_batch: bool) -> Self {
        Self {
            gate: Arc::new(Semaphore::new(0)),
            seen: Arc::default(),
            without_batch,
        }
    }

    fn open(&self) {
        self.gate.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().expect("seen")
    }

    async fn handle(&self, call: pb::batch_call::Call) -> pb::batch_answer::Answer {
        use pb::batch_answer::Answer;
        use pb::batch_call::Call;
        let _pass = self.gate.acquire().await.expect("gate");
        let (branch, op) = match &call {
            Call::Prepare(r) => (r.branch.clone(), "prepare"),
            Call::Commit(r) => (r.branch.clone(), "commit"),
            Call::Abort(r) => (r.branch.clone(), "abort"),
            other => panic!("a two-branch transaction makes no {other:?}"),
        };
        let branch = branch.expect("branch ref");
        self.seen()
            .ops
            .entry((branch.transaction_id, branch.branch))
            .or_default()
            .push(op);
        match call {
            Call::Prepare(r) => Answer::Prepare(pb::PrepareResponse {
                vote: if r.payload == b"abort" {
                    pb::Vote::Abort
                } else {
                    pb::Vote::Commit
                }
                .into(),
                reason: "said no".into(),
            }),
            Call::Commit(_) => Answer::Commit(pb::CommitBranchResponse {}),
            Call::Abort(_) => Answer::Abort(pb::AbortBranchResponse::default()),
            other => panic!("a two-branch transaction makes no {other:?}"),
        }
    }

    async fn single(&self, call: pb::batch_call::Call) -> pb::batch_answer::Answer {
        self.seen().single_calls += 1;
        self.handle(call).await
    }
}

#[tonic::async_trait]
impl Participant for Gated {
    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        match self
            .single(pb::batch_call::Call::Prepare(request.into_inner()))
            .await
        {
            pb::batch_answer::Answer::Prepare(answer) => Ok(Response::new(answer)),
            _ => unreachable!("a prepare is answered with a vote"),
        }
    }
    async fn commit(
        &self,
        request: Request<pb::CommitBranchRequest>,
    ) -> Result<Response<pb::CommitBranchResponse>, Status> {
        self.single(pb::batch_call::Call::Commit(request.into_inner()))
            .await;
        Ok(Response::new(pb::CommitBranchResponse {}))
    }
    async fn abort(
        &self,
        request: Request<pb::AbortBranchRequest>,
    ) -> Result<Response<pb::AbortBranchResponse>, Status> {
        self.single(pb::batch_call::Call::Abort(request.into_inner()))
            .await;
        Ok(Response::new(pb::AbortBranchResponse::default()))
    }
    async fn commit_one_phase(
        &self,
        _: Request<pb::CommitOnePhaseRequest>,
    ) -> Result<Response<pb::CommitOnePhaseResponse>, Status> {
        Err(Status::unimplemented(
            "every test transaction has two branches",
        ))
    }
    async fn execute(
        &self,
        _: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        Err(Status::unimplemented("no sagas here"))
    }
    async fn compensate(
        &self,
        _: Request<pb::CompensateRequest>,
    ) -> Result<Response<pb::CompensateResponse>, Status> {
        Err(Status::unimplemented("no sagas here"))
    }
    async fn deliver(
        &self,
        _: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        Err(Status::unimplemented("no messages here"))
    }
    async fn check_message(
        &self,
        _: Request<pb::CheckMessageRequest>,
    ) -> Result<Response<pb::CheckMessageResponse>, Status> {
        Err(Status::unimplemented("no messages here"))
    }

    type BatchStream = futures::stream::BoxStream<'static, Result<pb::BatchAnswer, Status>>;

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        if self.without_batch {
            return Err(Status::unimplemented("no Batch here"));
        }
        let calls = request.into_inner().calls;
        self.seen().batch_sizes.push(calls.len());
        let this = self.clone();
        let answers =
            futures::stream::iter(calls.into_iter().zip(0u32..)).then(move |(call, index)| {
                let this = this.clone();
                async move {
                    let call = call.call.expect("every batch call has its call");
                    Ok(pb::BatchAnswer {
                        index,
                        answer: Some(this.handle(call).await),
                        ..Default::default()
                    })
                }
            });
        Ok(Response::new(Box::pin(answers)))
    }
}

async fn serve(participant: Gated, stop: CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(ParticipantServer::new(participant))
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener),
                stop.cancelled_owned(),
            ),
    );
    url
}

/// Runs `count` two-branch transactions at `participant` at once, every
/// fourth with an ABORT vote on its second branch, holding the
/// participant's gate shut until its calls have piled up; returns each
/// transaction's id, whether it was meant to commit, and its outcome.
async fn run_held_transactions(participant: &Gated, count: usize) -> Vec<(String, bool, Outcome)> {
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = CancellationToken::new();
    let url = serve(participant.clone(), stop.clone()).await;
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let spec = |name: &str, vote: &str| BranchSpec {
        participant: url.clone(),
        payload: vote.as_bytes().to_vec(),
        name: Some(name.to_owned()),
    };
    let runs: Vec<_> = (0..count)
        .map(|i| {
            let commits = i % 4 != 0;
            let options = BeginOptions {
                branches: vec![
                    spec("first", "commit"),
                    spec("second", if commits { "commit" } else { "abort" }),
                ],
                ..Default::default()
            };
            let client = client.clone();
            tokio::spawn(async move {
                let (begun, outcome) = client.begin_and_commit(options).await.expect("commit");
                (begun.transaction_id, commits, outcome)
            })
        })
        .collect();
    // Every prepare has reached the participant or waits for it: the first
    // ones are held at the gate, the rest queued behind them.
    eventually("the first calls reach the participant", || async {
        let seen = participant.seen();
        (seen.batch_sizes.len() + seen.single_calls > 0).then_some(())
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    participant.open();
    let mut outcomes = Vec::new();
    for run in runs {
        outcomes.push(run.await.expect("transaction task"));
    }
    // Phase 2 is asynchronous (R4): wait until every call has arrived.
    eventually("every branch hears its decision", || async {
        (participant.seen().ops.values().flatten().count() == expected_calls(count)).then_some(())
    })
    .await;
    node.shutdown().await.expect("shutdown");
    stop.cancel();
    outcomes
}

/// The calls `count` transactions make: a prepare and a decision per
/// branch, less the Abort that a branch which voted ABORT is not sent.
fn expected_calls(count: usize) -> usize {
    let aborted = count.div_ceil(4);
    (count - aborted) * 4 + aborted * 3
}

/// Each transaction's outcome and each branch's calls are what they would be
/// with single calls: its prepare, and the decision the coordinator
/// announced (in either order at this participant, which answers calls of
/// different batches concurrently; the ledger makes an early Abort a
/// tombstone), except for the branch that voted ABORT, which is told
/// nothing more.
fn check_outcomes(participant: &Gated, outcomes: &[(String, bool, Outcome)]) {
    let seen = participant.seen();
    let ops = |id: &str, branch: &str| {
        let mut ops = seen.ops[&(id.to_owned(), branch.to_owned())].clone();
        ops.sort_unstable();
        ops
    };
    for (id, commits, outcome) in outcomes {
        if *commits {
            assert_eq!(*outcome, Outcome::Committed { read_only: false }, "{id}");
            assert_eq!(ops(id, "first"), ["commit", "prepare"], "{id}");
            assert_eq!(ops(id, "second"), ["commit", "prepare"], "{id}");
        } else {
            assert!(
                matches!(outcome, Outcome::Aborted { .. }),
                "{id}: {outcome:?}"
            );
            assert_eq!(ops(id, "first"), ["abort", "prepare"], "{id}");
            assert_eq!(ops(id, "second"), ["prepare"], "{id}");
        }
    }
}

#[tokio::test]
async fn calls_that_pile_up_for_a_participant_share_batches_and_keep_their_own_outcomes() {
    let participant = Gated::new(false);
    let outcomes = run_held_transactions(&participant, 24).await;
    check_outcomes(&participant, &outcomes);
    let seen = participant.seen();
    assert_eq!(seen.single_calls, 0, "every call went in a batch");
    let calls: usize = seen.batch_sizes.iter().sum();
    assert_eq!(calls, expected_calls(24));
    let largest = seen.batch_sizes.iter().max().copied().unwrap_or(0);
    assert!(
        largest > 1 && seen.batch_sizes.len() < calls,
        "calls held up behind the gate were sent together: {:?}",
        seen.batch_sizes
    );
}

#[tokio::test]
async fn a_participant_without_batch_is_sent_single_calls_with_the_same_outcomes() {
    let participant = Gated::new(true);
    let outcomes = run_held_transactions(&participant, 12).await;
    check_outcomes(&participant, &outcomes);
    let seen = participant.seen();
    assert!(seen.batch_sizes.is_empty());
    assert_eq!(seen.single_calls, expected_calls(12));
}

/// DESIGN §12: a batch never exceeds what a participant decodes (4 MiB by
/// default in both SDKs). Sixteen 700 KB calls piled up for one SDK
/// participant would make one 11 MB batch, which it refuses whole, and
/// every prepare in it would count as an ABORT vote; split by bytes, every
/// transaction commits, and each branch took effect once.
#[tokio::test]
async fn calls_with_large_payloads_are_batched_under_what_the_participant_decodes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let p = super::support::TestParticipant::start(dir.path(), "p", None).await;
    let payload = "x".repeat(700_000);
    let runs = (0..8).map(|_| {
        let (client, url, payload) = (client.clone(), p.url.clone(), payload.clone());
        async move {
            let id = client
                .begin(BeginOptions::default())
                .await
                .expect("begin")
                .transaction_id;
            for branch in ["left", "right"] {
                client
                    .enlist(&id, &url, payload.clone(), Some(branch))
                    .await
                    .expect("enlist");
            }
            (client.commit(&id).await.expect("commit"), id)
        }
    });
    for (outcome, id) in futures::future::join_all(runs).await {
        assert_eq!(outcome, Outcome::Committed { read_only: false }, "{id}");
    }
    eventually("every branch prepared and committed once", || async {
        (p.effect_count().await == 8 * 2 * 2).then_some(())
    })
    .await;
}

/// A call larger than gRPC's usual 4 MiB (a coordinator whose
/// `--max-payload-bytes` allows it) is refused by a participant at its
/// default, before its signature or its ledger is looked at, so the
/// prepare counts as an ABORT vote; a participant told to take calls that
/// large (`with_max_call_bytes`) commits it.
#[tokio::test]
async fn a_participant_takes_calls_as_large_as_it_was_told_to() {
    use concord_coordinator::node::{Node, NodeConfig};
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(NodeConfig {
        limits: concord_coordinator::api::Limits {
            max_payload_bytes: 5 * 1024 * 1024,
            ..Default::default()
        },
        ..super::support::node_config(&dir.path().join("coordinator"))
    })
    .await
    .expect("node");
    let client = client(&node);
    let usual = super::support::TestParticipant::start(dir.path(), "usual", None).await;
    let told = super::support::TestParticipant::start_taking(dir.path(), "told", 6 << 20).await;
    let payload = "x".repeat(4_500_000);
    let commit = |url: String| {
        let (client, payload) = (client.clone(), payload.clone());
        async move {
            let id = client
                .begin(BeginOptions::default())
                .await
                .expect("begin")
                .transaction_id;
            // Two branches, so that the large one is prepared (a refused
            // one-phase commit would leave the outcome unknown).
            client
                .enlist(&id, &url, payload, Some("large"))
                .await
                .expect("enlist");
            client
                .enlist(&id, &url, "commit", Some("small"))
                .await
                .expect("enlist");
            (client.commit(&id).await.expect("commit"), id)
        }
    };
    let (refused, refused_id) = commit(usual.url.clone()).await;
    assert!(
        matches!(&refused, Outcome::Aborted { reason } if reason.contains("too large")),
        "{refused:?}"
    );
    // The small branch was prepared and is rolled back; nothing commits.
    let effects = usual.effects(&refused_id).await;
    assert!(!effects.contains(&"commit".to_string()), "{effects:?}");
    let (taken, taken_id) = commit(told.url.clone()).await;
    assert_eq!(taken, Outcome::Committed { read_only: false });
    eventually("both branches committed", || async {
        (told.effects(&taken_id).await == ["prepare", "prepare", "commit", "commit"]).then_some(())
    })
    .await;
}

/// DESIGN §12 (S4): a node serves at most `max_calls` calls at once, every
/// client's together, however many connections they open: past it a call
/// is refused UNAVAILABLE at once, naming the flag, with retry advice, and
/// nothing of it happens; health checks still answer. Once calls end,
/// there is room again.
#[tokio::test]
async fn past_max_calls_a_call_is_refused_at_once_and_health_still_answers() {
    use concord_coordinator::node::{Node, NodeConfig};
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = CancellationToken::new();
    let participant = Gated::new(false);
    let url = serve(participant.clone(), stop.clone()).await;
    let node = Node::start(NodeConfig {
        limits: concord_coordinator::api::Limits {
            max_calls: 2,
            ..Default::default()
        },
        ..super::support::node_config(&dir.path().join("coordinator"))
    })
    .await
    .expect("coordinator starts");
    // Two commits held at the participant's gate take both places, each
    // on a connection of its own.
    let held: Vec<_> = ["first", "second"]
        .into_iter()
        .map(|name| {
            let client =
                concord_participant::CoordinatorClient::connect(node.url()).expect("client");
            // Two branches: a transaction of one would commit in one phase.
            let branch = |part: &str| BranchSpec {
                participant: url.clone(),
                payload: b"commit".to_vec(),
                name: Some(format!("{name}-{part}")),
            };
            let options = BeginOptions {
                branches: vec![branch("a"), branch("b")],
                ..Default::default()
            };
            tokio::spawn(async move { client.begin_and_commit(options).await })
        })
        .collect();
    eventually("both commits' prepares reach the participant", || async {
        let seen = participant.seen();
        (seen.batch_sizes.iter().sum::<usize>() + seen.single_calls >= 4).then_some(())
    })
    .await;
    let third = concord_participant::CoordinatorClient::connect(node.url()).expect("client");
    let refused = third
        .raw()
        .begin(pb::BeginRequest::default())
        .await
        .expect_err("no place left");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("--max-calls"), "{refused:?}");
    assert!(
        refused.metadata().get("grpc-retry-pushback-ms").is_some(),
        "{refused:?}"
    );
    let mut health = tonic_health::pb::health_client::HealthClient::new(
        tonic::transport::Endpoint::from_shared(node.url())
            .expect("url")
            .connect_lazy(),
    );
    let serving = health
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .expect("health answers at the limit")
        .into_inner();
    assert_eq!(
        serving.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    participant.open();
    for commit in held {
        let (_, outcome) = commit.await.expect("task").expect("commit");
        assert!(matches!(outcome, Outcome::Committed { .. }), "{outcome:?}");
    }
    let listed = third
        .raw()
        .list_transactions(pb::ListTransactionsRequest::default())
        .await
        .expect("room again")
        .into_inner();
    assert_eq!(
        listed.transactions.len(),
        2,
        "the refused Begin began nothing"
    );
    stop.cancel();
}
