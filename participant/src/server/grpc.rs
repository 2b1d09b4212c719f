//! The tonic `Participant` service: each RPC decoded, its branch context
//! built, and handed to the same answer as a `Batch` entry gets.

use super::*;

/// The `Participant` impl: the one-branch RPCs share one shape (decode,
/// build the branch's context, answer), written once here; `Batch` and
/// anything else follow as they are.
macro_rules! participant_service {
    (
        $($method:ident($request:ident) -> $response:ident =
            |$service:ident, $branch:ident, $payload:ident| $answer:expr;)*
        @rest { $($rest:tt)* }
    ) => {
        #[tonic::async_trait]
        impl<DB: LedgerDb, P: TwoPhaseParticipant<DB>, S: SagaStep<DB>> Participant
            for ParticipantService<P, S, DB>
        {
            $(
                async fn $method(
                    &self,
                    request: Request<pb::$request>,
                ) -> Result<Response<pb::$response>, Status> {
                    let traceparent = traceparent(&request);
                    let request = request.into_inner();
                    let $branch = context(request.branch, traceparent)?;
                    let $payload = request.payload;
                    let $service = self;
                    Ok(Response::new($answer.await?))
                }
            )*
            $($rest)*
        }
    };
}

participant_service! {
    prepare(PrepareRequest) -> PrepareResponse =
        |service, branch, payload| service.prepare_answer(&branch, &payload);
    commit(CommitBranchRequest) -> CommitBranchResponse =
        |service, branch, payload| service.commit_answer(&branch, &payload);
    abort(AbortBranchRequest) -> AbortBranchResponse =
        |service, branch, payload| service.abort_answer(&branch, &payload);
    commit_one_phase(CommitOnePhaseRequest) -> CommitOnePhaseResponse =
        |service, branch, payload| service.commit_one_phase_answer(branch, &payload);
    execute(ExecuteRequest) -> ExecuteResponse =
        |service, step, payload| service.execute_answer(&step, &payload);
    compensate(CompensateRequest) -> CompensateResponse =
        |service, step, payload| service.compensate_answer(&step, &payload);
    deliver(DeliverRequest) -> DeliverResponse =
        |service, message, payload| service.deliver_answer(&message, &payload);
    @rest {
        async fn check_message(
            &self,
            request: Request<pb::CheckMessageRequest>,
        ) -> Result<Response<pb::CheckMessageResponse>, Status> {
            Ok(Response::new(
                self.check_message_answer(request.into_inner()).await?,
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
    }
}
