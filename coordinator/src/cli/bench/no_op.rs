//! The bench's own participants: they say yes to everything at once, so
//! that the bench measures the coordinator, not a participant's work.

use super::*;

/// A participant that says yes to everything at once: the benchmark
/// measures the coordinator, not a participant's work. It counts the RPCs
/// it serves (a `Batch` is one), shared by all the bench's participants.
/// With `hold`, every Prepare (alone or in a `Batch`) is answered only
/// after that long: each client's transaction then stays in flight in the
/// coordinator, which is how the memory per in-flight transaction is
/// measured (`--hold`, scripts/bench-memory.sh).
#[derive(Clone, Default)]
pub(super) struct NoOp {
    pub(super) rpcs: Arc<AtomicU64>,
    pub(super) hold: Duration,
}

impl NoOp {
    fn served(&self) {
        self.rpcs.fetch_add(1, Ordering::Relaxed);
    }

    async fn held(&self) {
        if !self.hold.is_zero() {
            tokio::time::sleep(self.hold).await;
        }
    }
}

#[tonic::async_trait]
impl Participant for NoOp {
    async fn prepare(
        &self,
        _: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        self.served();
        self.held().await;
        Ok(Response::new(voted_commit()))
    }
    async fn commit(
        &self,
        _: Request<pb::CommitBranchRequest>,
    ) -> Result<Response<pb::CommitBranchResponse>, Status> {
        self.served();
        Ok(Response::new(pb::CommitBranchResponse {}))
    }
    async fn abort(
        &self,
        _: Request<pb::AbortBranchRequest>,
    ) -> Result<Response<pb::AbortBranchResponse>, Status> {
        self.served();
        Ok(Response::new(pb::AbortBranchResponse::default()))
    }
    async fn commit_one_phase(
        &self,
        _: Request<pb::CommitOnePhaseRequest>,
    ) -> Result<Response<pb::CommitOnePhaseResponse>, Status> {
        self.served();
        Ok(Response::new(committed_in_one_phase()))
    }
    async fn execute(
        &self,
        _: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        self.served();
        Ok(Response::new(executed()))
    }
    async fn compensate(
        &self,
        _: Request<pb::CompensateRequest>,
    ) -> Result<Response<pb::CompensateResponse>, Status> {
        self.served();
        Ok(Response::new(pb::CompensateResponse {}))
    }
    async fn deliver(
        &self,
        _: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        self.served();
        Ok(Response::new(pb::DeliverResponse {}))
    }
    async fn check_message(
        &self,
        _: Request<pb::CheckMessageRequest>,
    ) -> Result<Response<pb::CheckMessageResponse>, Status> {
        self.served();
        Ok(Response::new(pb::CheckMessageResponse {
            result: pb::check_message_response::Result::Committed.into(),
        }))
    }
    type BatchStream = futures::stream::Iter<std::vec::IntoIter<Result<pb::BatchAnswer, Status>>>;

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        self.served();
        use pb::batch_answer::Answer;
        use pb::batch_call::Call;
        let calls = request.into_inner().calls;
        if calls
            .iter()
            .any(|call| matches!(call.call, Some(Call::Prepare(_))))
        {
            self.held().await;
        }
        let answers: Vec<_> = calls
            .into_iter()
            .zip(0u32..)
            .map(|(call, index)| {
                Ok(pb::BatchAnswer {
                    index,
                    answer: call.call.map(|call| match call {
                        Call::Prepare(_) => Answer::Prepare(voted_commit()),
                        Call::Commit(_) => Answer::Commit(pb::CommitBranchResponse {}),
                        Call::Abort(_) => Answer::Abort(pb::AbortBranchResponse::default()),
                        Call::CommitOnePhase(_) => Answer::CommitOnePhase(committed_in_one_phase()),
                        Call::Execute(_) => Answer::Execute(executed()),
                        Call::Compensate(_) => Answer::Compensate(pb::CompensateResponse {}),
                        Call::Deliver(_) => Answer::Deliver(pb::DeliverResponse {}),
                    }),
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(answers)))
    }
}

// The answers, the same alone or in a batch.
fn voted_commit() -> pb::PrepareResponse {
    pb::PrepareResponse {
        vote: pb::Vote::Commit.into(),
        reason: String::new(),
    }
}

fn committed_in_one_phase() -> pb::CommitOnePhaseResponse {
    pb::CommitOnePhaseResponse {
        outcome: pb::Outcome::Committed.into(),
        ..Default::default()
    }
}

fn executed() -> pb::ExecuteResponse {
    pb::ExecuteResponse {
        result: pb::execute_response::Result::Succeeded.into(),
        reason: String::new(),
    }
}

/// Serves a no-op participant on a loopback port until `stop`.
pub(super) async fn start_no_op(
    stop: &CancellationToken,
    participant: NoOp,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = stop.clone();
    let task = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(ParticipantServer::new(participant))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop.cancelled_owned(),
            )
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "no-op participant stopped");
        }
    });
    Ok((url, task))
}
