//! Two-phase commit at run time (DESIGN §2–§5): a transaction in memory
//! ([`live`]), the one task that executes its effects ([`driver`]), and the
//! entry points — Begin (`begin`), Enlist, Commit, Rollback, and waiting
//! for the decision (R1 before R4).

use crate::model::TxnId;
use crate::model::TxnState;
use crate::protocol::two_phase::Event;
use crate::protocol::two_phase::Outcome;
use crate::protocol::two_phase::Rejected;
use crate::runtime::error::Error;
use crate::runtime::log;
use crate::runtime::requests::Committed;
use crate::runtime::requests::EnlistBranch;
use crate::runtime::requests::Enlisted;
use crate::runtime::shared::Runtime;
use crate::runtime::two_phase::begin::add_branch;
use crate::runtime::two_phase::live::LiveTxn;
use std::sync::Arc;
use std::time::Duration;

pub(crate) mod begin;
pub mod driver;
pub mod live;

impl Runtime {
    /// Enlists a branch; answers once the branch is durable.
    pub async fn enlist(&self, id: TxnId, branch: EnlistBranch) -> Result<Enlisted, Error> {
        self.in_group(id)?;
        let shared = &self.shared;
        let txn = self.live_or_finished(id).await?;
        let (name, durable) = {
            let mut inner = txn.lock();
            if let Some(name) = &branch.name
                && let Some(existing) = inner.branches.iter().find(|b| &b.name == name)
            {
                // A retried Enlist: the same branch, not a second one.
                if existing.participant == branch.participant && existing.payload == branch.payload
                {
                    return Ok(Enlisted {
                        name: name.clone(),
                        created: false,
                    });
                }
                return Err(Error::BranchConflict { name: name.clone() });
            }
            let (name, record) = add_branch(&mut inner, id, branch, shared.config.max_branches)?;
            let durable = shared.log.submit(vec![record]);
            (name, durable)
        };
        let settle = {
            let shared = Arc::clone(shared);
            let name = name.clone();
            async move {
                let error = durable.wait().await.err()?;
                if matches!(error, log::LogError::Fenced) {
                    driver::taken_over(&shared, &txn);
                    return Some(Error::TakenOver(txn.header.id));
                }
                // The branch may or may not be on disk: abort, which is safe
                // either way (R2), rather than commit with a branch we might
                // forget.
                let mut inner = txn.lock();
                let reason = format!("could not record branch {name}: {error}");
                if let Ok(effects) = inner.machine.apply(Event::RollbackRequested {
                    reason: reason.clone(),
                }) {
                    driver::dispatch(&shared, &txn, &mut inner, effects);
                }
                Some(Error::Unavailable(reason))
            }
        };
        if let Some(error) = self.detached(settle).await? {
            return Err(error);
        }
        Ok(Enlisted {
            name,
            created: true,
        })
    }

    /// Runs the commit protocol and answers once the decision is durable
    /// (R1, R4), or once every branch acknowledged it with `wait`.
    pub async fn commit(
        &self,
        id: TxnId,
        wait: bool,
        prepare_timeout: Option<Duration>,
    ) -> Result<Committed, Error> {
        self.in_group(id)?;
        let shared = &self.shared;
        let Some(txn) = shared.live.get(&id).map(|t| Arc::clone(&t)) else {
            // Boxed: a store read's future, inline, would size every
            // waiting Commit's future for the whole wait.
            return Box::pin(self.finished_outcome(id)).await;
        };
        {
            let mut inner = txn.lock();
            if let Some(timeout) = prepare_timeout {
                inner.prepare_timeout = timeout;
            }
            let effects = inner.machine.apply(Event::CommitRequested)?;
            driver::dispatch(shared, &txn, &mut inner, effects);
        }
        let started = std::time::Instant::now();
        let outcome = self.announced(&txn).await?;
        crate::metrics::phase("commit", started.elapsed().as_secs_f64());
        if wait {
            self.until_ended(&txn).await?;
        }
        let state = live::state_of(&txn.lock().machine);
        Ok(Committed { outcome, state })
    }

    /// Rolls back an undecided transaction.
    pub async fn rollback(&self, id: TxnId, reason: String) -> Result<TxnState, Error> {
        self.in_group(id)?;
        let shared = &self.shared;
        let Some(txn) = shared.live.get(&id).map(|t| Arc::clone(&t)) else {
            return match Box::pin(self.finished_outcome(id)).await?.outcome {
                Outcome::Aborted { .. } => Ok(TxnState::Aborted),
                Outcome::Committed { .. } => Err(Rejected::AlreadyCommitted.into()),
            };
        };
        {
            let mut inner = txn.lock();
            let effects = inner.machine.apply(Event::RollbackRequested { reason })?;
            driver::dispatch(shared, &txn, &mut inner, effects);
        }
        // A one-phase commit racing the rollback may have won: say so.
        match self.announced(&txn).await? {
            Outcome::Committed { .. } => Err(Rejected::AlreadyCommitted.into()),
            Outcome::Aborted { .. } => Ok(live::state_of(&txn.lock().machine)),
        }
    }

    /// Waits for the decision to be announced (after R1's durable write).
    /// A transaction that ends unannounced was taken over by another node.
    async fn announced(&self, txn: &LiveTxn) -> Result<Outcome, Error> {
        let mut progress = txn.progress.subscribe();
        let undurable = || txn.undurable.load(std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            biased;
            result = progress.wait_for(|p| p.outcome.is_some() || p.ended || undurable()) => {
                match result {
                    Ok(progress) => match (&progress.outcome, progress.ended) {
                        (Some(outcome), _) => Ok(outcome.clone()),
                        // Ended unannounced: another node took it over.
                        (None, true) => Err(Error::TakenOver(txn.header.id)),
                        // Never an outcome that is not durable (R1): say why
                        // there is none yet.
                        (None, false) => {
                            Err(Error::Unavailable(txn.undurable_reason().unwrap_or_default()))
                        }
                    },
                    Err(_) => Err(Error::ShuttingDown),
                }
            }
            () = self.shared.shutdown.cancelled() => Err(Error::ShuttingDown),
        }
    }

    async fn until_ended(&self, txn: &LiveTxn) -> Result<(), Error> {
        let mut progress = txn.progress.subscribe();
        let undurable = || txn.undurable.load(std::sync::atomic::Ordering::SeqCst);
        tokio::select! {
            biased;
            result = progress.wait_for(|p| p.ended || undurable()) => match result {
                Ok(progress) if progress.ended => Ok(()),
                Ok(_) => Err(Error::Unavailable(txn.undurable_reason().unwrap_or_default())),
                Err(_) => Err(Error::ShuttingDown),
            },
            () = self.shared.shutdown.cancelled() => Err(Error::ShuttingDown),
        }
    }
}
