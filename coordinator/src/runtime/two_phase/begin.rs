//! Beginning a transaction: its first record queued before anyone can
//! learn its id, branches given with the Begin enlisted in the same write,
//! and an idempotency key found again answered with the first transaction
//! (R7), on this node or, through the store, on any.

use crate::runtime::two_phase::live;

use crate::model::TxnId;
use crate::model::TxnKind;
use crate::model::TxnState;
use crate::protocol::two_phase::TwoPhase;
use crate::runtime::error::Error;
use crate::runtime::keys::KeyClaim;
use crate::runtime::requests::BeginTxn;
use crate::runtime::requests::BeginWrite;
use crate::runtime::requests::Begun;
use crate::runtime::requests::EnlistBranch;
use crate::runtime::requests::TxnHeader;
use crate::runtime::shared::Runtime;
use crate::runtime::two_phase::live::BranchInfo;
use crate::runtime::two_phase::live::LiveTxn;
use crate::store::Record;
use std::sync::Arc;

impl Runtime {
    /// Begins a transaction, or finds the one begun with the same key (R7).
    /// Answers once its record is durable.
    pub async fn begin(&self, request: BeginTxn) -> Result<Begun, Error> {
        self.begin_as(request, BeginWrite::Wait).await
    }

    /// Begins a transaction that [`Runtime::commit`] is called for at once
    /// (`BeginRequest.commit`): answers without waiting for its record,
    /// which is written while the prepares are out and, with two or more
    /// branches, usually in the decision's own batch (see
    /// `Inner::begin_write`). One fsync on the commit's path, not two.
    ///
    /// Not on a store several nodes share: there, a node that finds no
    /// record of a transaction presumes it aborted (GetOutcome) although
    /// its owner may still commit it, so the record must be durable before
    /// any participant can prepare and ask (DESIGN §6).
    pub async fn begin_to_commit(&self, request: BeginTxn) -> Result<Begun, Error> {
        let write = if self.shared.store.cluster().is_some() {
            BeginWrite::Wait
        } else {
            BeginWrite::BeforeDecision
        };
        self.begin_as(request, write).await
    }

    async fn begin_as(&self, request: BeginTxn, write: BeginWrite) -> Result<Begun, Error> {
        let shared = &self.shared;
        let (key, digest) = (
            request.idempotency_key.clone(),
            request.request_digest.clone(),
        );
        let _claim = match self.claim_key(key.as_deref(), digest.as_ref()).await? {
            KeyClaim::Taken(id, state) => {
                return Ok(Begun {
                    id,
                    created: false,
                    state,
                    branches: Vec::new(),
                });
            }
            KeyClaim::Free(guard) => guard,
        };
        let id = self.mint(key.as_deref())?;
        shared.note_begun(id);
        let created_at_ms = shared.config.clock.now_ms();
        let timeout = request.timeout.unwrap_or(shared.config.default_txn_timeout);
        let deadline_ms =
            created_at_ms.saturating_add(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX));
        let header = TxnHeader {
            id,
            created_at_ms,
            deadline_ms,
            idempotency_key: request.idempotency_key.clone(),
            request_digest: request.request_digest.clone(),
            description: request.description.clone(),
        };
        let txn = Arc::new(LiveTxn::new(
            header,
            TwoPhase::new(),
            // Sized once: grown by doubling, a live transaction's branch
            // list held twice the memory it used.
            Vec::with_capacity(request.branches.len()),
            shared.config.default_prepare_timeout,
        ));
        // Branches given with the Begin are enlisted before anyone can learn
        // the id, and recorded in the same write.
        let mut records = vec![Record::Begun {
            id,
            created_at_ms,
            deadline_ms,
            idempotency_key: request.idempotency_key.clone(),
            request_digest: request.request_digest,
            description: request.description,
        }];
        let mut names = Vec::with_capacity(request.branches.len());
        {
            let mut inner = txn.lock();
            for branch in request.branches {
                let (name, record) =
                    add_branch(&mut inner, id, branch, shared.config.max_branches)?;
                names.push(name);
                records.push(record);
            }
        }
        shared.live.insert(id, Arc::clone(&txn));
        if let Some(key) = &request.idempotency_key {
            shared.keys().insert(key.clone(), id);
        }
        // Queued before anyone can learn the id, so every later record of
        // this transaction follows it in the log. A transaction that commits
        // at once with two or more branches queues them lazily: they ride
        // with its decision, one fsync for both (`driver`'s LogDecision);
        // with one branch they are forced, since its one-phase commit is
        // the decision and must follow them.
        let durable = if write == BeginWrite::BeforeDecision && names.len() > 1 {
            shared.log.submit_lazy(records)
        } else {
            shared.log.submit(records)
        };
        drop(_claim);
        if write == BeginWrite::BeforeDecision {
            txn.lock().begin_write = Some(durable);
            crate::metrics::begun(TxnKind::TwoPhase);
            return Ok(Begun {
                id,
                created: true,
                state: TxnState::Active,
                branches: names,
            });
        }
        let forget = {
            let shared = Arc::clone(shared);
            async move {
                let written = durable.wait().await;
                match &written {
                    Ok(()) => txn.mark_recorded(),
                    Err(_) => {
                        shared.forget(&txn);
                        shared.note_doubtful(txn.header.id);
                    }
                }
                written
            }
        };
        if let Err(error) = self.detached(forget).await? {
            if let Some(key) = &key
                && let Some((id, state)) =
                    self.key_taken_meanwhile(key, digest.as_ref(), id).await?
            {
                return Ok(Begun {
                    id,
                    created: false,
                    state,
                    branches: Vec::new(),
                });
            }
            return Err(Error::Unavailable(format!(
                "could not record the new transaction: {error}"
            )));
        }
        crate::metrics::begun(TxnKind::TwoPhase);
        Ok(Begun {
            id,
            created: true,
            state: TxnState::Active,
            branches: names,
        })
    }
}

/// Adds a branch to a transaction's state machine and branch list; returns
/// its name and the record that makes it durable (queued by the caller under
/// the same lock, so records keep protocol order).
pub(super) fn add_branch(
    inner: &mut live::Inner,
    id: TxnId,
    branch: EnlistBranch,
    max_branches: usize,
) -> Result<(String, Record), Error> {
    if inner.branches.len() >= max_branches {
        return Err(Error::TooManyBranches {
            limit: max_branches,
        });
    }
    let idx = inner.machine.enlist()?;
    let name = match branch.name {
        Some(name) => name,
        None => generated_name(&inner.branches, idx),
    };
    inner.branches.push(BranchInfo {
        name: name.clone(),
        participant: branch.participant.clone(),
        payload: branch.payload.clone(),
        vote: None,
        attempts: 0,
        last_error: None,
    });
    let record = Record::Enlisted {
        id,
        idx: u32::try_from(idx).unwrap_or(u32::MAX),
        name: name.clone(),
        participant: branch.participant,
        payload: branch.payload,
    };
    Ok((name, record))
}

/// "b<N>" for the N-th branch, skipping names a client already chose.
fn generated_name(branches: &[BranchInfo], idx: usize) -> String {
    let mut n = idx + 1;
    loop {
        let name = format!("b{n}");
        if !branches.iter().any(|b| b.name == name) {
            return name;
        }
        n += 1;
    }
}
