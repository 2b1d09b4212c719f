//! The wire answer of each call, shared by single calls and `Batch`
//! entries, and a `Batch` entry's dispatch.

use super::*;

/// Most calls one `Batch` may carry (participant.proto).
pub const MAX_BATCH_CALLS: usize = 1024;

/// The wire answer of each call, shared by single calls and `Batch` entries
/// so that both take the same ledger-guarded paths.
impl<DB: LedgerDb, P: TwoPhaseParticipant<DB>, S: SagaStep<DB>> ParticipantService<P, S, DB> {
    pub(super) async fn prepare_answer(
        &self,
        branch: &BranchContext,
        payload: &[u8],
    ) -> Result<pb::PrepareResponse, Status> {
        let vote = ParticipantService::prepare(self, branch, payload)
            .instrument(span(branch, "prepare"))
            .await?;
        tracing::debug!(txn = %branch.transaction_id, branch = %branch.branch, ?vote, "prepared");
        let (vote, reason) = match vote {
            Vote::Commit => (pb::Vote::Commit, String::new()),
            Vote::ReadOnly => (pb::Vote::ReadOnly, String::new()),
            Vote::Abort(reason) => (pb::Vote::Abort, reason),
        };
        Ok(pb::PrepareResponse {
            vote: vote.into(),
            reason,
        })
    }

    pub(super) async fn commit_answer(
        &self,
        branch: &BranchContext,
        payload: &[u8],
    ) -> Result<pb::CommitBranchResponse, Status> {
        ParticipantService::commit(self, branch, payload)
            .instrument(span(branch, "commit"))
            .await?;
        Ok(pb::CommitBranchResponse {})
    }

    pub(super) async fn abort_answer(
        &self,
        branch: &BranchContext,
        payload: &[u8],
    ) -> Result<pb::AbortBranchResponse, Status> {
        let already_committed = ParticipantService::abort(self, branch, payload)
            .instrument(span(branch, "abort"))
            .await?;
        Ok(pb::AbortBranchResponse { already_committed })
    }

    pub(super) async fn commit_one_phase_answer(
        &self,
        branch: BranchContext,
        payload: &[u8],
    ) -> Result<pb::CommitOnePhaseResponse, Status> {
        let branch = BranchContext {
            one_phase: true,
            ..branch
        };
        ParticipantService::commit_one_phase(self, &branch, payload)
            .instrument(span(&branch, "commit_one_phase"))
            .await
    }

    pub(super) async fn execute_answer(
        &self,
        step: &BranchContext,
        payload: &[u8],
    ) -> Result<pb::ExecuteResponse, Status> {
        let result = self
            .execute_step(step, payload)
            .instrument(span(step, "execute"))
            .await?;
        tracing::debug!(saga = %step.transaction_id, step = %step.branch, ?result, "executed");
        let (result, reason) = match result {
            StepResult::Done => (pb::execute_response::Result::Succeeded, String::new()),
            StepResult::Refused(reason) => (pb::execute_response::Result::Failed, reason),
        };
        Ok(pb::ExecuteResponse {
            result: result.into(),
            reason,
        })
    }

    pub(super) async fn compensate_answer(
        &self,
        step: &BranchContext,
        payload: &[u8],
    ) -> Result<pb::CompensateResponse, Status> {
        self.compensate_step(step, payload)
            .instrument(span(step, "compensate"))
            .await?;
        Ok(pb::CompensateResponse {})
    }

    pub(super) async fn deliver_answer(
        &self,
        message: &BranchContext,
        payload: &[u8],
    ) -> Result<pb::DeliverResponse, Status> {
        ParticipantService::deliver(self, message, payload)
            .instrument(span(message, "deliver"))
            .await?;
        Ok(pb::DeliverResponse {})
    }

    pub(super) async fn check_message_answer(
        &self,
        request: pb::CheckMessageRequest,
        signature: Option<&str>,
    ) -> Result<pb::CheckMessageResponse, Status> {
        use pb::check_message_response::Result as Answer;
        if request.transaction_id.is_empty() || request.transaction_id.len() > 128 {
            return Err(Status::invalid_argument(
                "transaction_id must be the message's id (1 to 128 bytes)",
            ));
        }
        // DESIGN §12: a check-back answered to a stranger leaves a
        // tombstone that can roll back the producer's own transaction.
        self.trust.check_call(
            &concord_proto::signature::SignedCall {
                method: "CheckMessage",
                transaction_id: &request.transaction_id,
                branch: "",
                payload: b"",
            },
            signature,
        )?;
        let result = match self.check_message(&request.transaction_id).await? {
            crate::outbox::Checked::Committed => Answer::Committed,
            crate::outbox::Checked::RolledBack => Answer::RolledBack,
        };
        Ok(pb::CheckMessageResponse {
            result: result.into(),
        })
    }

    /// One entry of a `Batch`: handled as its own call, its failure its own.
    /// `vouched`: whether the batch's own signature covers it (DESIGN §12).
    pub(super) async fn batch_call(
        &self,
        call: pb::BatchCall,
        vouched: Result<(), Status>,
    ) -> pb::BatchAnswer {
        use pb::batch_answer::Answer;
        use pb::batch_call::Call;
        let traceparent = trace_context(call.traceparent);
        // DESIGN §12: vouched for by the batch's signature, or by its own;
        // checked before its work.
        let trusted = |method, branch: &BranchContext, payload: &[u8]| match &vouched {
            Ok(()) => Ok(()),
            Err(refused) if call.signature.is_empty() => Err(refused.clone()),
            Err(_) => self
                .trust
                .check(method, branch, payload, Some(call.signature.as_str())),
        };
        let run = async {
            match call.call {
                Some(Call::Prepare(request)) => {
                    let branch = context(request.branch, traceparent)?;
                    trusted("Prepare", &branch, &request.payload)?;
                    self.prepare_answer(&branch, &request.payload)
                        .await
                        .map(Answer::Prepare)
                }
                Some(Call::Commit(request)) => {
                    let branch = context(request.branch, traceparent)?;
                    trusted("Commit", &branch, &request.payload)?;
                    self.commit_answer(&branch, &request.payload)
                        .await
                        .map(Answer::Commit)
                }
                Some(Call::Abort(request)) => {
                    let branch = context(request.branch, traceparent)?;
                    trusted("Abort", &branch, &request.payload)?;
                    self.abort_answer(&branch, &request.payload)
                        .await
                        .map(Answer::Abort)
                }
                Some(Call::CommitOnePhase(request)) => {
                    let branch = context(request.branch, traceparent)?;
                    trusted("CommitOnePhase", &branch, &request.payload)?;
                    self.commit_one_phase_answer(branch, &request.payload)
                        .await
                        .map(Answer::CommitOnePhase)
                }
                Some(Call::Execute(request)) => {
                    let step = context(request.branch, traceparent)?;
                    trusted("Execute", &step, &request.payload)?;
                    self.execute_answer(&step, &request.payload)
                        .await
                        .map(Answer::Execute)
                }
                Some(Call::Compensate(request)) => {
                    let step = context(request.branch, traceparent)?;
                    trusted("Compensate", &step, &request.payload)?;
                    self.compensate_answer(&step, &request.payload)
                        .await
                        .map(Answer::Compensate)
                }
                Some(Call::Deliver(request)) => {
                    let message = context(request.branch, traceparent)?;
                    trusted("Deliver", &message, &request.payload)?;
                    self.deliver_answer(&message, &request.payload)
                        .await
                        .map(Answer::Deliver)
                }
                None => Err(Status::invalid_argument(
                    "a batch call must set one of its calls (prepare, commit, abort, \
                     commit_one_phase, execute, compensate, deliver)",
                )),
            }
        };
        // R5: the entry's own deadline, as its own call's grpc-timeout would be.
        let result = match call.timeout_ms {
            0 => run.await,
            ms => tokio::time::timeout(std::time::Duration::from_millis(ms.into()), run)
                .await
                .unwrap_or_else(|_| {
                    Err(Status::deadline_exceeded(format!(
                        "the call's {ms} ms deadline passed"
                    )))
                }),
        };
        match result {
            Ok(answer) => pb::BatchAnswer {
                answer: Some(answer),
                ..Default::default()
            },
            Err(status) => pb::BatchAnswer {
                code: status.code() as i32,
                message: status.message().to_owned(),
                ..Default::default()
            },
        }
    }
}
