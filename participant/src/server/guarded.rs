//! The ledger-guarded paths every call takes, single or batched: each
//! (transaction, branch, operation) runs its handler at most once, inside
//! the same local transaction as its ledger row; duplicates get the first
//! answer, an abort or compensation that comes first leaves a tombstone
//! (DESIGN §4).

use super::*;

impl<DB: LedgerDb, P: TwoPhaseParticipant<DB>, S: SagaStep<DB>> ParticipantService<P, S, DB> {
    pub(super) async fn prepare(
        &self,
        branch: &BranchContext,
        payload: &[u8],
    ) -> Result<Vote, Status> {
        let mut tx = DB::begin(&self.pool, branch).await.map_err(db)?;
        let rows = DB::rows(&mut tx, branch).await.map_err(db)?;
        if rows.get(Op::Abort).is_some() {
            // Hanging prevention: the abort came first and won.
            return Ok(Vote::Abort("branch was already aborted".into()));
        }
        if let Some(entry) = rows.get(Op::Prepare) {
            return Ok(recorded_vote(entry));
        }
        let vote = self.handler.prepare(&mut tx, branch, payload).await?;
        let (result, reason) = match &vote {
            Vote::Commit => ("commit", None),
            Vote::ReadOnly => ("read_only", None),
            Vote::Abort(reason) => {
                // The refusal undoes whatever the handler wrote; only the
                // ledger row remains, so a duplicate Prepare gets the same no.
                tx.rollback().await.map_err(db)?;
                tx = DB::begin(&self.pool, branch).await.map_err(db)?;
                ("abort", Some(reason.as_str()))
            }
        };
        DB::record(&mut tx, branch, Op::Prepare, result, reason, Some(payload))
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        crate::crash::point("participant-after-prepare");
        Ok(vote)
    }

    pub(super) async fn commit(
        &self,
        branch: &BranchContext,
        payload: &[u8],
    ) -> Result<(), Status> {
        let (id, name) = (&branch.transaction_id, &branch.branch);
        let mut tx = DB::begin(&self.pool, branch).await.map_err(db)?;
        let rows = DB::rows(&mut tx, branch).await.map_err(db)?;
        if rows.get(Op::Commit).is_some() {
            return Ok(()); // a duplicate: applied once already (I5)
        }
        if rows.get(Op::Abort).is_some() {
            return Err(Status::failed_precondition(format!(
                "branch {name} of {id} was aborted; it cannot commit"
            )));
        }
        match rows.get(Op::Prepare) {
            None => Err(Status::failed_precondition(format!(
                "branch {name} of {id} was never prepared here"
            ))),
            Some(entry) if entry.result == "read_only" => Ok(()),
            Some(entry) if entry.result == "abort" => Err(Status::failed_precondition(format!(
                "branch {name} of {id} voted ABORT; it cannot commit"
            ))),
            Some(_) => {
                crate::crash::point("participant-before-commit");
                self.handler.commit(&mut tx, branch, payload).await?;
                DB::record(&mut tx, branch, Op::Commit, "done", None, None)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                crate::crash::point("participant-after-commit");
                Ok(())
            }
        }
    }

    /// Returns true when the branch had already committed (one-phase).
    pub(super) async fn abort(
        &self,
        branch: &BranchContext,
        payload: &[u8],
    ) -> Result<bool, Status> {
        let mut tx = DB::begin(&self.pool, branch).await.map_err(db)?;
        let rows = DB::rows(&mut tx, branch).await.map_err(db)?;
        if rows.get(Op::Abort).is_some() {
            return Ok(false);
        }
        if rows.get(Op::Commit).is_some() {
            return Ok(true);
        }
        let result = match rows.get(Op::Prepare) {
            // Abort before prepare: a tombstone, so the late Prepare is refused.
            None => "tombstone",
            Some(entry) if entry.result == "commit" => {
                self.handler.abort(&mut tx, branch, payload).await?;
                "done"
            }
            // It voted ABORT or READ_ONLY: nothing of it is held.
            Some(_) => "done",
        };
        DB::record(&mut tx, branch, Op::Abort, result, None, None)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(false)
    }

    pub(super) async fn commit_one_phase(
        &self,
        branch: &BranchContext,
        payload: &[u8],
    ) -> Result<pb::CommitOnePhaseResponse, Status> {
        let committed = |read_only| pb::CommitOnePhaseResponse {
            outcome: pb::Outcome::Committed.into(),
            reason: String::new(),
            read_only,
        };
        let aborted = |reason: String| pb::CommitOnePhaseResponse {
            outcome: pb::Outcome::Aborted.into(),
            reason,
            read_only: false,
        };
        let mut tx = DB::begin(&self.pool, branch).await.map_err(db)?;
        if DB::find(&mut tx, branch, Op::Commit)
            .await
            .map_err(db)?
            .is_some()
        {
            return Ok(committed(false));
        }
        if DB::find(&mut tx, branch, Op::Abort)
            .await
            .map_err(db)?
            .is_some()
        {
            return Ok(aborted("branch was already aborted".into()));
        }
        if let Some(entry) = DB::find(&mut tx, branch, Op::Prepare).await.map_err(db)? {
            return Ok(match recorded_vote(&entry) {
                Vote::Abort(reason) => aborted(reason),
                Vote::ReadOnly => committed(true),
                Vote::Commit => {
                    self.handler.commit(&mut tx, branch, payload).await?;
                    DB::record(&mut tx, branch, Op::Commit, "done", None, None)
                        .await
                        .map_err(db)?;
                    tx.commit().await.map_err(db)?;
                    committed(false)
                }
            });
        }
        match self.handler.prepare(&mut tx, branch, payload).await? {
            Vote::Commit => {
                // R6: prepare and commit in one local transaction.
                self.handler.commit(&mut tx, branch, payload).await?;
                DB::record(&mut tx, branch, Op::Prepare, "commit", None, Some(payload))
                    .await
                    .map_err(db)?;
                DB::record(&mut tx, branch, Op::Commit, "one_phase", None, None)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                crate::crash::point("participant-after-one-phase");
                Ok(committed(false))
            }
            Vote::ReadOnly => {
                DB::record(&mut tx, branch, Op::Prepare, "read_only", None, None)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(committed(true))
            }
            Vote::Abort(reason) => {
                tx.rollback().await.map_err(db)?;
                let mut tx = DB::begin(&self.pool, branch).await.map_err(db)?;
                DB::record(&mut tx, branch, Op::Prepare, "abort", Some(&reason), None)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(aborted(reason))
            }
        }
    }
}

impl<DB: LedgerDb, P: TwoPhaseParticipant<DB>, S: SagaStep<DB>> ParticipantService<P, S, DB> {
    pub(super) async fn execute_step(
        &self,
        step: &BranchContext,
        payload: &[u8],
    ) -> Result<StepResult, Status> {
        let mut tx = DB::begin(&self.pool, step).await.map_err(db)?;
        if DB::find(&mut tx, step, Op::Compensate)
            .await
            .map_err(db)?
            .is_some()
        {
            // Hanging prevention: the compensation came first and won.
            return Ok(StepResult::Refused("step was already compensated".into()));
        }
        if let Some(entry) = DB::find(&mut tx, step, Op::Action).await.map_err(db)? {
            return Ok(match entry.result.as_str() {
                "done" => StepResult::Done,
                _ => StepResult::Refused(entry.reason.unwrap_or_else(|| "refused".into())),
            });
        }
        let result = self.steps.action(&mut tx, step, payload).await?;
        let (outcome, reason) = match &result {
            StepResult::Done => ("done", None),
            StepResult::Refused(reason) => {
                tx.rollback().await.map_err(db)?;
                tx = DB::begin(&self.pool, step).await.map_err(db)?;
                ("refused", Some(reason.as_str()))
            }
        };
        DB::record(&mut tx, step, Op::Action, outcome, reason, None)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        if matches!(result, StepResult::Done) {
            crate::crash::point("participant-after-action");
        }
        Ok(result)
    }

    pub(super) async fn compensate_step(
        &self,
        step: &BranchContext,
        payload: &[u8],
    ) -> Result<(), Status> {
        let mut tx = DB::begin(&self.pool, step).await.map_err(db)?;
        if DB::find(&mut tx, step, Op::Compensate)
            .await
            .map_err(db)?
            .is_some()
        {
            return Ok(()); // a duplicate (I5)
        }
        let result = match DB::find(&mut tx, step, Op::Action).await.map_err(db)? {
            // Compensation before the action: a tombstone, so the late
            // action is refused.
            None => "tombstone",
            Some(entry) if entry.result == "done" => {
                self.steps.compensate(&mut tx, step, payload).await?;
                "done"
            }
            // The action was refused: nothing of it to undo.
            Some(_) => "done",
        };
        DB::record(&mut tx, step, Op::Compensate, result, None, None)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        crate::crash::point("participant-after-compensate");
        Ok(())
    }

    /// A message delivered to this destination: its handler runs once per
    /// (message, destination), in the local transaction of its ledger row
    /// (M4); a duplicate answers as the first did.
    pub(super) async fn deliver(
        &self,
        message: &BranchContext,
        payload: &[u8],
    ) -> Result<(), Status> {
        let Some(destination) = &self.destination else {
            return Err(ParticipantError::Unsupported("transactional messages").into());
        };
        let mut tx = DB::begin(&self.pool, message).await.map_err(db)?;
        if DB::find(&mut tx, message, Op::Deliver)
            .await
            .map_err(db)?
            .is_some()
        {
            return Ok(()); // a duplicate: applied once already (M4)
        }
        destination.deliver(&mut tx, message, payload).await?;
        DB::record(&mut tx, message, Op::Deliver, "done", None, None)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(())
    }

    /// The coordinator's check-back for a message this service produced
    /// (M2; `crate::outbox`).
    pub(super) async fn check_message(
        &self,
        message_id: &str,
    ) -> Result<crate::outbox::Checked, Status> {
        crate::outbox::check(&self.pool, message_id)
            .await
            .map_err(db)
    }
}
