//! The tonic `Participant` service: each RPC decoded, its branch context
//! built, and handed to the same answer as a `Batch` entry gets.

use super::*;

/// The `Participant` impl: the one-branch RPCs share one shape (decode,
/// build the branch's context, answer), written once here; `Batch` and
/// anything else follow as they are.
macro_rules! participant_service {
    (
        $($method:ident($request:ident) -> $response:ident as $name:literal =
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
                    let (metadata, _, request) = request.into_parts();
                    let $branch = context(request.branch, traceparent)?;
                    let $payload = request.payload;
                    // DESIGN §12: the coordinator's, or nothing is done.
                    self.trust.check($name, &$branch, &$payload, signature(&metadata))?;
                    let $service = self;
                    Ok(Response::new($answer.await?))
                }
            )*
            $($rest)*
        }
    };
}

participant_service! {
    prepare(PrepareRequest) -> PrepareResponse as "Prepare" =
        |service, branch, payload| service.prepare_answer(&branch, &payload);
    commit(CommitBranchRequest) -> CommitBranchResponse as "Commit" =
        |service, branch, payload| service.commit_answer(&branch, &payload);
    abort(AbortBranchRequest) -> AbortBranchResponse as "Abort" =
        |service, branch, payload| service.abort_answer(&branch, &payload);
    commit_one_phase(CommitOnePhaseRequest) -> CommitOnePhaseResponse as "CommitOnePhase" =
        |service, branch, payload| service.commit_one_phase_answer(branch, &payload);
    execute(ExecuteRequest) -> ExecuteResponse as "Execute" =
        |service, step, payload| service.execute_answer(&step, &payload);
    compensate(CompensateRequest) -> CompensateResponse as "Compensate" =
        |service, step, payload| service.compensate_answer(&step, &payload);
    deliver(DeliverRequest) -> DeliverResponse as "Deliver" =
        |service, message, payload| service.deliver_answer(&message, &payload);
    @rest {
        async fn check_message(
            &self,
            request: Request<pb::CheckMessageRequest>,
        ) -> Result<Response<pb::CheckMessageResponse>, Status> {
            let (metadata, _, request) = request.into_parts();
            Ok(Response::new(
                self.check_message_answer(request, signature(&metadata)).await?,
            ))
        }

        type BatchStream = futures::stream::BoxStream<'static, Result<pb::BatchAnswer, Status>>;

        async fn batch(
            &self,
            request: Request<pb::BatchRequest>,
        ) -> Result<Response<Self::BatchStream>, Status> {
            let (metadata, _, request) = request.into_parts();
            let calls = request.calls;
            if calls.is_empty() || calls.len() > MAX_BATCH_CALLS {
                return Err(Status::invalid_argument(format!(
                    "a batch holds 1 to {MAX_BATCH_CALLS} calls, not {}",
                    calls.len()
                )));
            }
            // DESIGN §12: the coordinator signs a batch as a whole; a call
            // in a batch not vouched for must carry a signature of its own.
            let vouched = self.trust.check_batch(&calls, signature(&metadata));
            // Every call at once, as separate calls would run, each answered
            // when it is done: one slow branch holds up no other.
            let answers: futures::stream::FuturesUnordered<_> = calls
                .into_iter()
                .zip(0u32..)
                .map(|(call, index)| {
                    let service = self.clone();
                    let vouched = vouched.clone();
                    async move {
                        Ok(pb::BatchAnswer {
                            index,
                            ..service.batch_call(call, vouched).await
                        })
                    }
                })
                .collect();
            Ok(Response::new(Box::pin(answers)))
        }
    }
}

/// The signature a call sent alone carries (DESIGN §12).
fn signature(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    metadata
        .get(concord_proto::signature::SIGNATURE_HEADER)?
        .to_str()
        .ok()
}
