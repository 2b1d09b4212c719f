//! The tonic `Participant` service: each RPC decoded, its branch context
//! built, and handed to the same answer as a `Batch` entry gets.

use super::*;

#[tonic::async_trait]
impl<DB: LedgerDb, P: TwoPhaseParticipant<DB>, S: SagaStep<DB>> Participant
    for ParticipantService<P, S, DB>
{
    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let traceparent = traceparent(&request);
        let request = request.into_inner();
        let step = context(request.branch, traceparent)?;
        Ok(Response::new(
            self.execute_answer(&step, &request.payload).await?,
        ))
    }

    async fn compensate(
        &self,
        request: Request<pb::CompensateRequest>,
    ) -> Result<Response<pb::CompensateResponse>, Status> {
        let traceparent = traceparent(&request);
        let request = request.into_inner();
        let step = context(request.branch, traceparent)?;
        Ok(Response::new(
            self.compensate_answer(&step, &request.payload).await?,
        ))
    }

    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let traceparent = traceparent(&request);
        let request = request.into_inner();
        let branch = context(request.branch, traceparent)?;
        Ok(Response::new(
            self.prepare_answer(&branch, &request.payload).await?,
        ))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitBranchRequest>,
    ) -> Result<Response<pb::CommitBranchResponse>, Status> {
        let traceparent = traceparent(&request);
        let request = request.into_inner();
        let branch = context(request.branch, traceparent)?;
        Ok(Response::new(
            self.commit_answer(&branch, &request.payload).await?,
        ))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortBranchRequest>,
    ) -> Result<Response<pb::AbortBranchResponse>, Status> {
        let traceparent = traceparent(&request);
        let request = request.into_inner();
        let branch = context(request.branch, traceparent)?;
        Ok(Response::new(
            self.abort_answer(&branch, &request.payload).await?,
        ))
    }

    type BatchStream = futures::stream::BoxStream<'static, Result<pb::BatchAnswer, Status>>;

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        let calls = request.into_inner().calls;
        if calls.is_empty() || calls.len() > MAX_BATCH_CALLS {
            return Err(Status::invalid_argument(format!(
                "a batch holds 1 to {MAX_BATCH_CALLS} calls, not {}",
                calls.len()
            )));
        }
        // Every call at once, as separate calls would run, each answered
        // when it is done: one slow branch holds up no other.
        let answers: futures::stream::FuturesUnordered<_> = calls
            .into_iter()
            .zip(0u32..)
            .map(|(call, index)| {
                let service = self.clone();
                async move {
                    Ok(pb::BatchAnswer {
                        index,
                        ..service.batch_call(call).await
                    })
                }
            })
            .collect();
        Ok(Response::new(Box::pin(answers)))
    }

    async fn commit_one_phase(
        &self,
        request: Request<pb::CommitOnePhaseRequest>,
    ) -> Result<Response<pb::CommitOnePhaseResponse>, Status> {
        let traceparent = traceparent(&request);
        let request = request.into_inner();
        let branch = context(request.branch, traceparent)?;
        Ok(Response::new(
            self.commit_one_phase_answer(branch, &request.payload)
                .await?,
        ))
    }
}
