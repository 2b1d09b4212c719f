//! The operator's API (`concord txn retry | resolve`): cutting a retry's
//! backoff short, and resolving a branch or step by hand through the same
//! audited record (`OperatorResolved`, forced before it takes effect).

use crate::protocol::two_phase::Outcome;
use crate::runtime::error::Error;
use crate::runtime::log;
use crate::runtime::message;
use crate::runtime::shared::Runtime;

use crate::model::OperatorAction;
use crate::model::Resolution;
use crate::model::StepStatus;
use crate::model::TxnId;
use crate::model::TxnState;
use crate::protocol::two_phase::BranchPhase;
use crate::runtime::shared::UNFINISHED;
use crate::runtime::two_phase::live;
use crate::store::Record;
use std::sync::Arc;

impl Runtime {
    /// Makes every retry of the transaction that is waiting out its backoff
    /// now (`concord txn retry`); returns how many there were and the state.
    pub async fn retry(&self, id: TxnId) -> Result<(u32, TxnState), Error> {
        self.in_group(id)?;
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
        self.in_group(id)?;
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
        if let Some(live_message) = shared.messages.get(&id).map(|m| Arc::clone(&m)) {
            check_message_action(&live_message, &action)?;
            self.record_action(id, &action).await?;
            live_message.lock().operator_actions.push(action.clone());
            message::apply_action(shared, &live_message, &action);
            tracing::warn!(%id, branch = %action.branch, "operator resolved a message");
            return Ok(live_message.state());
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
}

/// What an operator may resolve of a message (M6): its producer, while the
/// message is PREPARED (committed: its local transaction committed, deliver;
/// aborted: it did not, drop); a destination, while it is owed its
/// delivery, as committed (it took the message, or never will and the
/// operator takes that on). Anything else would contradict what is known.
fn check_message_action(
    live_message: &message::LiveMessage,
    action: &OperatorAction,
) -> Result<(), Error> {
    use crate::protocol::message::{DestinationPhase, Phase};
    let id = live_message.header.id;
    let inner = live_message.lock();
    let phase = inner.machine.phase();
    if action.branch == message::PRODUCER {
        if phase != Phase::Prepared {
            return Err(Error::CannotResolve(format!(
                "message {id} is {}: its producer's answer is known already; only a PREPARED \
                 message's producer can be resolved",
                message::state_of(phase).as_str()
            )));
        }
        if !matches!(action.outcome, Resolution::Committed | Resolution::Aborted) {
            return Err(Error::CannotResolve(format!(
                "a message's producer is resolved committed (its local transaction committed: \
                 the outbox row is there; deliver) or aborted (it did not: drop), not {}",
                action.outcome.as_str()
            )));
        }
        return Ok(());
    }
    let idx = live_message
        .destinations
        .iter()
        .position(|d| d.name == action.branch)
        .ok_or_else(|| Error::NoSuchBranch {
            id,
            name: action.branch.clone(),
        })?;
    if inner.machine.destination(idx) != Some(DestinationPhase::Owed) {
        return Err(Error::CannotResolve(format!(
            "destination {} of message {id} is not waiting for its delivery (the message is {})",
            action.branch,
            message::state_of(phase).as_str()
        )));
    }
    if action.outcome != Resolution::Committed {
        return Err(Error::CannotResolve(format!(
            "a message's destination is resolved committed (it took the message), not {}: the \
             producer's local transaction committed, so the message cannot be undone",
            action.outcome.as_str()
        )));
    }
    Ok(())
}

impl Runtime {
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
