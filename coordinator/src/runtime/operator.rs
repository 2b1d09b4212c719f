//! The operator's API (`concord txn retry | resolve`): cutting a retry's
//! backoff short, and resolving a branch or step by hand through the same
//! audited record (`OperatorResolved`, forced before it takes effect).

use super::*;

impl Runtime {
    /// Makes every retry of the transaction that is waiting out its backoff
    /// now (`concord txn retry`); returns how many there were and the state.
    pub async fn retry(&self, id: TxnId) -> Result<(u32, TxnState), Error> {
        if let Some(txn) = self.shared.live.get(&id).map(|t| Arc::clone(&t)) {
            let retried = txn.retries.now();
            tracing::info!(%id, retried, "operator: retry now");
            return Ok((retried, live::state_of(&txn.lock().machine)));
        }
        if let Some(saga) = self.shared.sagas.get(&id).map(|s| Arc::clone(&s)) {
            let retried = saga.retries.now();
            tracing::info!(%id, retried, "operator: retry now");
            return Ok((retried, saga.state()));
        }
        if let Some(message) = self.shared.messages.get(&id).map(|m| Arc::clone(&m)) {
            let retried = message.retries.now();
            tracing::info!(%id, retried, "operator: retry now");
            return Ok((retried, message.state()));
        }
        let view = self
            .shared
            .store
            .transaction(&id)
            .await?
            .ok_or(Error::NotFound(id))?;
        if UNFINISHED.contains(&view.state) {
            return Err(self.elsewhere(id).await);
        }
        Ok((0, view.state))
    }

    /// Records an operator's outcome for a branch or saga step that cannot
    /// answer (`concord txn resolve`), durably, then lets the transaction go
    /// on as if the participant had answered it. Refuses anything that
    /// could leave the transaction half-done (see the proto).
    pub async fn resolve(&self, id: TxnId, action: OperatorAction) -> Result<TxnState, Error> {
        let shared = &self.shared;
        if let Some(txn) = shared.live.get(&id).map(|t| Arc::clone(&t)) {
            let idx = {
                let inner = txn.lock();
                let idx = inner
                    .branches
                    .iter()
                    .position(|b| b.name == action.branch)
                    .ok_or_else(|| Error::NoSuchBranch {
                        id,
                        name: action.branch.clone(),
                    })?;
                let decided = match inner.machine.announced() {
                    Some(Outcome::Committed { .. }) => Resolution::Committed,
                    Some(Outcome::Aborted { .. }) => Resolution::Aborted,
                    None => {
                        return Err(Error::CannotResolve(format!(
                            "transaction {id} has not decided; a branch can be resolved only in \
                             phase 2 (to give up on an undecided transaction, roll it back)"
                        )));
                    }
                };
                if action.outcome != decided {
                    return Err(Error::CannotResolve(format!(
                        "transaction {id} decided {}; resolving branch {} as {} would leave it \
                         half-done",
                        decided.as_str(),
                        action.branch,
                        action.outcome.as_str()
                    )));
                }
                if !matches!(
                    inner.machine.branches().get(idx),
                    Some(BranchPhase::Delivering(_))
                ) {
                    return Err(Error::CannotResolve(format!(
                        "branch {} of transaction {id} is not waiting for its participant",
                        action.branch
                    )));
                }
                idx
            };
            self.record_action(id, &action).await?;
            txn.lock().operator_actions.push(action);
            // The branch's delivery sees the decision at its next attempt.
            txn.retries.now();
            tracing::warn!(%id, branch = idx, "operator resolved a branch");
            return Ok(live::state_of(&txn.lock().machine));
        }
        if let Some(saga) = shared.sagas.get(&id).map(|s| Arc::clone(&s)) {
            let step = saga
                .steps
                .iter()
                .position(|s| s.name == action.branch)
                .ok_or_else(|| Error::NoSuchBranch {
                    id,
                    name: action.branch.clone(),
                })?;
            let status = saga.lock().machine.statuses()[step];
            let fits = matches!(
                (action.outcome, status),
                (Resolution::Compensated, StepStatus::Compensating)
                    | (Resolution::Committed, StepStatus::Running)
            );
            if !fits {
                return Err(Error::CannotResolve(format!(
                    "step {} of saga {id} is {}: only a step whose action is retrying can be \
                     resolved committed, and only one whose compensation is retrying can be \
                     resolved compensated",
                    action.branch,
                    crate::model::step_status_str(status)
                )));
            }
            self.record_action(id, &action).await?;
            saga.lock().operator_actions.push(action);
            saga.retries.now();
            tracing::warn!(%id, step, "operator resolved a saga step");
            return Ok(saga.state());
        }
        let view = shared
            .store
            .transaction(&id)
            .await?
            .ok_or(Error::NotFound(id))?;
        if UNFINISHED.contains(&view.state) {
            return Err(self.elsewhere(id).await);
        }
        Err(Error::CannotResolve(format!(
            "transaction {id} already ended {}; there is nothing to resolve",
            view.state.as_str()
        )))
    }

    /// Makes an operator's action durable before it takes effect.
    async fn record_action(&self, id: TxnId, action: &OperatorAction) -> Result<(), Error> {
        let record = Record::OperatorResolved {
            id,
            action: action.clone(),
        };
        match self.shared.log.force(vec![record]).await {
            Ok(()) => Ok(()),
            Err(log::LogError::Fenced) => Err(Error::TakenOver(id)),
            Err(error) => Err(Error::Unavailable(format!(
                "could not record the operator's decision: {error}"
            ))),
        }
    }
}
