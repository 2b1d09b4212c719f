//! PrepareMessage and SubmitMessage (DESIGN §10): a message durable before
//! its id is handed out, a key found again answered with the first message
//! (R7), and a submit that decides it. The message in memory and its
//! driver are in [`super`].

use crate::model::TxnId;
use crate::model::TxnKind;
use crate::model::TxnState;
use crate::runtime::error::Error;
use crate::runtime::keys::KeyClaim;
use crate::runtime::message;
use crate::runtime::message::LiveMessage;
use crate::runtime::requests::MessageAccepted;
use crate::runtime::requests::PrepareMessage;
use crate::runtime::requests::TxnHeader;
use crate::runtime::shared::Runtime;
use crate::store::Record;
use std::sync::Arc;

use crate::protocol::message::{Event as MessageEvent, Message};

impl Runtime {
    /// Prepares a message: durable before the answer, so that the producer
    /// never publishes an id the coordinator could forget. A known
    /// idempotency key returns the first message.
    pub async fn prepare_message(&self, request: PrepareMessage) -> Result<MessageAccepted, Error> {
        let shared = &self.shared;
        let (key, digest) = (
            request.idempotency_key.clone(),
            request.request_digest.clone(),
        );
        let claim = match self.claim_key(key.as_deref(), digest.as_ref()).await? {
            KeyClaim::Taken(id, state) => return self.found_message(id, state).await,
            KeyClaim::Free(guard) => guard,
        };
        let id = self.mint(key.as_deref())?;
        shared.note_begun(id);
        let created_at_ms = shared.config.clock.now_ms();
        let check_at_ms = created_at_ms
            .saturating_add(u64::try_from(request.check_after.as_millis()).unwrap_or(u64::MAX));
        let header = TxnHeader {
            id,
            created_at_ms,
            deadline_ms: check_at_ms,
            idempotency_key: request.idempotency_key.clone(),
            request_digest: request.request_digest.clone(),
            description: request.description.clone(),
        };
        let live_message = Arc::new(LiveMessage::new(
            header,
            request.producer.clone(),
            request.ordering_key.clone(),
            request.destinations.clone(),
            Message::prepared(request.destinations.len()),
        ));
        shared.messages.insert(id, Arc::clone(&live_message));
        if let Some(key) = &request.idempotency_key {
            shared.keys().insert(key.clone(), id);
        }
        let durable = shared.log.submit(vec![Record::MessagePrepared {
            id,
            created_at_ms,
            check_at_ms,
            idempotency_key: request.idempotency_key,
            request_digest: request.request_digest,
            description: request.description,
            producer: request.producer,
            ordering_key: request.ordering_key,
            destinations: request.destinations,
        }]);
        drop(claim);
        let start = {
            let shared = Arc::clone(shared);
            async move {
                let written = durable.wait().await;
                if written.is_ok() {
                    live_message
                        .recorded
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                // Driven either way. A PREPARED record whose write failed
                // may be in the log all the same (an answer lost on the
                // way back), and nobody was told its id, so no outbox row
                // can name it: its check-back, due after the usual wait,
                // drops it (M2), and its end record then ends it in the
                // log too if it is there. (Ending it at once would be
                // wrong if a retry with its key found it in the log
                // meanwhile: the producer could then publish it.)
                message::start(&shared, live_message);
                written
            }
        };
        if let Err(error) = self.detached(start).await? {
            if let Some(key) = &key
                && let Some((id, state)) =
                    self.key_taken_meanwhile(key, digest.as_ref(), id).await?
            {
                return self.found_message(id, state).await;
            }
            return Err(Error::Unavailable(format!(
                "could not record the message: {error}"
            )));
        }
        crate::metrics::begun(TxnKind::Message);
        Ok(MessageAccepted {
            id,
            created: true,
            state: TxnState::Prepared,
        })
    }

    /// The answer to a PrepareMessage whose key found `id`.
    async fn found_message(&self, id: TxnId, state: TxnState) -> Result<MessageAccepted, Error> {
        let kind = match self.shared.messages.get(&id) {
            Some(_) => TxnKind::Message,
            None => self.transaction(id).await?.kind,
        };
        if kind != TxnKind::Message {
            return Err(Error::Unavailable(format!(
                "idempotency key belongs to transaction {id}, which is not a message"
            )));
        }
        Ok(MessageAccepted {
            id,
            created: false,
            state,
        })
    }

    /// The producer's local transaction committed: delivers (M1). Answers
    /// once the message is DELIVERING, or with `wait` once it is
    /// DELIVERED. A dropped message is refused (M2).
    pub async fn submit_message(&self, id: TxnId, wait: bool) -> Result<TxnState, Error> {
        self.in_group(id)?;
        let shared = &self.shared;
        let Some(live_message) = shared.messages.get(&id).map(|m| Arc::clone(&m)) else {
            let view = shared
                .store
                .transaction(&id)
                .await?
                .ok_or(Error::NotFound(id))?;
            return match (view.kind, view.state) {
                (TxnKind::Message, TxnState::Dropped) => Err(Error::MessageDropped(id)),
                (TxnKind::Message, TxnState::Prepared | TxnState::Delivering) => {
                    Err(self.elsewhere(id).await)
                }
                (TxnKind::Message, state) => Ok(state),
                _ => Err(Error::NotAMessage(id)),
            };
        };
        if live_message.ordering_key.is_some() {
            self.until_recovered().await?;
        }
        {
            let mut inner = live_message.lock();
            let effects = inner
                .machine
                .apply(MessageEvent::Submitted)
                .map_err(|_| Error::MessageDropped(id))?;
            message::decided(shared, &live_message, &mut inner, &effects);
        }
        if wait {
            tokio::select! {
                biased;
                () = live_message.settled() => {}
                () = shared.shutdown.cancelled() => return Err(Error::ShuttingDown),
            }
        }
        if live_message
            .taken_over
            .load(std::sync::atomic::Ordering::SeqCst)
        {
            return Err(Error::TakenOver(id));
        }
        Ok(live_message.state())
    }

    /// Waits until the start-up recovery has taken in the log's unfinished
    /// transactions (M5: a keyed message decided before then could go
    /// ahead of a recovered one of its key).
    async fn until_recovered(&self) -> Result<(), Error> {
        let mut recovered = self.shared.recovered.subscribe();
        tokio::select! {
            biased;
            result = recovered.wait_for(|done| *done) => {
                result.map_err(|_| Error::ShuttingDown)?;
                Ok(())
            }
            () = self.shared.shutdown.cancelled() => Err(Error::ShuttingDown),
        }
    }
}
