//! Idempotency keys (R7) and admission: whether a new Begin, SubmitSaga
//! or PrepareMessage may go on — not while draining, not past
//! `max_in_flight` (DESIGN §12), and not when its key names an earlier
//! request, which is answered instead, found in memory or in the store; a
//! key another node took meanwhile found after a failed write.

use crate::model::RequestDigest;
use crate::model::TxnId;
use crate::model::TxnState;
use crate::runtime::error::Error;
use crate::runtime::shared::Runtime;
use crate::runtime::two_phase::live;

/// What a new request's idempotency key found (see [`Runtime::claim_key`]).
pub(crate) enum KeyClaim<'a> {
    /// The key names an earlier transaction or saga: answer with it.
    Taken(TxnId, TxnState),
    /// Go on, holding the key (if any) until the first record is queued.
    Free(Option<tokio::sync::MutexGuard<'a, ()>>),
}

impl Runtime {
    /// Whether a new Begin or SubmitSaga may go on: not while draining, and
    /// not when its idempotency key names an earlier request (R7). A free
    /// key comes with the guard that keeps other keyed requests out until
    /// the new one's first record is queued.
    pub(crate) async fn claim_key(
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
    pub(crate) async fn find_key(
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
                same(id, txn.header.request_digest.as_ref())?;
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
    pub(crate) async fn key_taken_meanwhile(
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
