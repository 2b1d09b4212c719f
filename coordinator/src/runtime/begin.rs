//! Beginning a transaction: its first record queued before anyone can
//! learn its id, branches given with the Begin enlisted in the same write,
//! and an idempotency key found again answered with the first transaction
//! (R7), on this node or, through the store, on any.

use super::*;

/// What a new request's idempotency key found (see [`Runtime::claim_key`]).
pub(super) enum KeyClaim<'a> {
    /// The key names an earlier transaction or saga: answer with it.
    Taken(TxnId, TxnState),
    /// Go on, holding the key (if any) until the first record is queued.
    Free(Option<tokio::sync::MutexGuard<'a, ()>>),
}

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
                        shared.note_doubtful(txn.id);
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

    /// Whether a new Begin or SubmitSaga may go on: not while draining, and
    /// not when its idempotency key names an earlier request (R7). A free
    /// key comes with the guard that keeps other keyed requests out until
    /// the new one's first record is queued.
    pub(super) async fn claim_key(
        &self,
        key: Option<&str>,
        digest: Option<&RequestDigest>,
    ) -> Result<KeyClaim<'_>, Error> {
        if self.shared.draining.is_cancelled() {
            return Err(Error::Draining);
        }
        let Some(key) = key else {
            self.room_for_one_more()?;
            return Ok(KeyClaim::Free(None));
        };
        // DESIGN §11: a key of another group's shard is looked up all the
        // same (the request was forwarded here by the group the shard moved
        // to, which holds the key handed over, and this group holds its
        // transaction), but a new transaction is not begun for it.
        let placed = self.key_in_group(Some(key));
        if let Err(error) = &placed
            && !matches!(error, Error::OtherGroup { .. })
        {
            return Err(placed.unwrap_err());
        }
        let guard = self.shared.begin_keys.lock().await;
        if let Some((id, state)) = self.find_key(key, digest).await? {
            return Ok(KeyClaim::Taken(id, state));
        }
        placed?;
        if let Some(elsewhere) = self.handed_over(key, digest).await? {
            return Err(elsewhere);
        }
        // A retry of a request already taken is answered above, at the
        // cap or not: only a new transaction is refused.
        self.room_for_one_more()?;
        Ok(KeyClaim::Free(Some(guard)))
    }

    /// DESIGN §12: a node holds at most `max_in_flight` live transactions
    /// (2PC, sagas and messages together), each some kilobytes of memory
    /// and a share of its participants' calls; past it a new one is
    /// refused (RESOURCE_EXHAUSTED, to retry later) instead of the node
    /// running out of memory under a flood.
    fn room_for_one_more(&self) -> Result<(), Error> {
        let shared = &self.shared;
        let limit = shared.config.max_in_flight;
        let live = shared.live.len() + shared.sagas.len() + shared.messages.len();
        if live >= limit {
            return Err(Error::TooManyInFlight { limit });
        }
        Ok(())
    }

    /// The transaction or saga begun with `key`, and its state. Called with
    /// `begin_keys` held, so that no other request claims the key meanwhile.
    /// A key first used with another request is [`Error::KeyReused`] (R7);
    /// one whose first request's digest is unknown (begun before digests
    /// were kept) is taken as the same request, as it always was.
    pub(super) async fn find_key(
        &self,
        key: &str,
        digest: Option<&RequestDigest>,
    ) -> Result<Option<(TxnId, TxnState)>, Error> {
        let shared = &self.shared;
        let same = |id: TxnId, first: Option<&RequestDigest>| match (first, digest) {
            (Some(first), Some(digest)) if first != digest => Err(Error::KeyReused {
                key: key.to_owned(),
                id,
            }),
            _ => Ok(()),
        };
        let live = shared.keys().get(key).copied();
        if let Some(id) = live {
            let recording = || {
                Error::Unavailable(format!(
                    "the request first made with idempotency key {key:?} is still being \
                     recorded; retry"
                ))
            };
            let recorded = std::sync::atomic::Ordering::SeqCst;
            if let Some(txn) = shared.live.get(&id) {
                same(id, txn.request_digest.as_ref())?;
                // Not an id the log may never hold (R7, R1).
                if !txn.recorded.load(recorded) {
                    return Err(recording());
                }
                return Ok(Some((id, live::state_of(&txn.lock().machine))));
            }
            if let Some(saga) = shared.sagas.get(&id) {
                same(id, saga.header.request_digest.as_ref())?;
                // §3: accepted means durable.
                if !saga.recorded.load(recorded) {
                    return Err(recording());
                }
                return Ok(Some((id, saga.state())));
            }
            if let Some(message) = shared.messages.get(&id) {
                same(id, message.header.request_digest.as_ref())?;
                // The producer must never publish an id the log may not
                // hold (§10).
                if !message.recorded.load(recorded) {
                    return Err(recording());
                }
                return Ok(Some((id, message.state())));
            }
        }
        match shared.store.by_idempotency_key(key).await? {
            Some(view) => {
                same(view.id, view.request_digest.as_ref())?;
                Ok(Some((view.id, view.state)))
            }
            None => Ok(None),
        }
    }

    /// After a keyed Begin or SubmitSaga failed to record itself: whether
    /// another node took the key meanwhile (R7 across nodes). Each node
    /// serialises its own keyed requests, but two nodes sharing a store can
    /// both find a key free and both write it; the store's unique index
    /// refuses the second, whose records alone fail (the log writer applies
    /// a failed batch one submission at a time), and the loser then answers
    /// with the winner's transaction, as a retry would have.
    ///
    /// The key may also name `own`, the request's own transaction, whose
    /// write went through although it was reported failed (an answer lost
    /// on the way back): that one was forgotten and is ended as doubtful
    /// (`end_doubtful`), so its id is not handed out.
    pub(super) async fn key_taken_meanwhile(
        &self,
        key: &str,
        digest: Option<&RequestDigest>,
        own: TxnId,
    ) -> Result<Option<(TxnId, TxnState)>, Error> {
        match self.find_key(key, digest).await {
            Ok(found) => Ok(found.filter(|(id, _)| *id != own)),
            Err(error @ Error::KeyReused { .. }) => Err(error),
            // The store that failed the write may fail the read too: the
            // caller reports the write's error.
            Err(_) => Ok(None),
        }
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
