//! The producer's side of a transactional message (DESIGN §10): build it,
//! prepare it at the coordinator, publish it in the same local database
//! transaction as the business change, then submit it.
//!
//! ```no_run
//! # async fn transfer(
//! #     client: &concord_participant::CoordinatorClient,
//! #     pool: &sqlx::SqlitePool,
//! # ) -> Result<(), Box<dyn std::error::Error>> {
//! use concord_participant::message::{Destination, Message};
//! let message = Message::new("http://bank:7501") // answers the check-back
//!     .to(Destination::new("audit", "http://audit:7602").payload("acct-42 -100"))
//!     .to(Destination::new("notify", "http://notify:7603").payload("acct-42 -100"))
//!     .ordering_key("acct-42")
//!     .prepare(client)
//!     .await?;
//! let mut tx = pool.begin().await?;
//! sqlx::query("UPDATE accounts SET balance = balance - 100 WHERE id = 42")
//!     .execute(&mut *tx)
//!     .await?;
//! message.publish_with(&mut tx).await?; // the outbox row, in the same local transaction
//! tx.commit().await?;
//! // Delivered from here on. Were this process to die before submitting,
//! // the coordinator would ask (the check-back), find the outbox row and
//! // deliver all the same.
//! message.submit(client).await?;
//! # Ok(()) }
//! ```
//!
//! What is guaranteed: each destination sees the message once in effect
//! (its ledger absorbs redeliveries) if and only if the local transaction
//! committed. With an ordering key, a destination sees a key's messages in
//! the order they were submitted (or confirmed by check-back), each after
//! the one before it acknowledged there; not across destinations, not
//! across keys, and on several coordinator nodes only among the messages
//! one node decided.

use std::time::Duration;

use concord_proto::v1 as pb;

use crate::client::{ClientError, CoordinatorClient, MessageState};
use crate::ledger::{LedgerDb, LocalTxOf};
use crate::outbox::{self, PublishError};

/// One destination: a participant serving `Deliver` (see
/// [`crate::ParticipantService::with_messages`]) and what it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    name: String,
    participant: String,
    payload: Vec<u8>,
}

impl Destination {
    /// `name` is unique within the message (the destination's ledger key
    /// with the message id); `participant` its endpoint URI.
    pub fn new(name: impl Into<String>, participant: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            participant: participant.into(),
            payload: Vec::new(),
        }
    }

    pub fn payload(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.payload = payload.into();
        self
    }
}

/// A message being built.
#[derive(Debug, Clone)]
pub struct Message {
    request: pb::PrepareMessageRequest,
}

impl Message {
    /// A message from the producer whose Participant service answers
    /// check-backs at `producer` (a [`crate::ParticipantService`] does,
    /// from the outbox, whatever else it serves).
    pub fn new(producer: impl Into<String>) -> Self {
        Self {
            request: pb::PrepareMessageRequest {
                producer: producer.into(),
                ..Default::default()
            },
        }
    }

    /// Adds a destination.
    pub fn to(mut self, destination: Destination) -> Self {
        self.request.destinations.push(pb::MessageDestination {
            name: destination.name,
            participant: destination.participant,
            payload: destination.payload,
        });
        self
    }

    /// Delivers this message to each destination after the earlier ones
    /// with the same key (M5).
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.request.ordering_key = key.into();
        self
    }

    /// How long the coordinator waits for [`PreparedMessage::submit`]
    /// before it asks the producer (1 s to 1 day; 5 s by default).
    pub fn check_after(mut self, after: Duration) -> Self {
        self.request.check_after_ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Makes `prepare` idempotent: a retry answers the same message.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.request.idempotency_key = key.into();
        self
    }

    /// Free text shown to operators.
    pub fn description(mut self, text: impl Into<String>) -> Self {
        self.request.description = text.into();
        self
    }

    /// The request as sent.
    pub fn into_request(self) -> pb::PrepareMessageRequest {
        self.request
    }

    /// Records the message at the coordinator (durably) and returns its
    /// id. Nothing is delivered until it is published and submitted.
    pub async fn prepare(self, client: &CoordinatorClient) -> Result<PreparedMessage, ClientError> {
        let answer = client.prepare_message(self.request).await?;
        if MessageState::from_wire(answer.state) == Some(MessageState::Dropped) {
            return Err(ClientError::FailedPrecondition(format!(
                "the idempotency key names message {}, which was dropped; prepare a new one \
                 with a new key",
                answer.transaction_id
            )));
        }
        Ok(PreparedMessage {
            id: answer.transaction_id,
        })
    }
}

/// A message the coordinator has recorded: publish it in the local
/// transaction that makes the change, then submit it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedMessage {
    id: String,
}

impl PreparedMessage {
    /// A message prepared earlier, by its id.
    pub fn from_id(id: impl Into<String>) -> Self {
        Self { id: id.into() }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Writes the outbox row in `tx`: the message is published if and only
    /// if `tx` commits. [`PublishError::Dropped`] means the coordinator's
    /// check-back came first and dropped it: roll `tx` back.
    ///
    /// On SQLite, a deferred transaction (`pool.begin()`) whose first
    /// statement is this one reads before it writes, and fails with
    /// "database is locked" if another connection wrote in between (SQLite
    /// cannot upgrade a stale read to a write). Begin it with
    /// `pool.begin_with("BEGIN IMMEDIATE")`, or make the business change
    /// (a write) first, as in the module's example.
    pub async fn publish_with<DB: LedgerDb>(
        &self,
        tx: &mut LocalTxOf<DB>,
    ) -> Result<(), PublishError> {
        outbox::publish(tx, &self.id).await
    }

    /// Tells the coordinator the local transaction committed: it delivers
    /// at once (not after `check_after`). Safe to retry; if it never gets
    /// through, the check-back delivers all the same.
    pub async fn submit(&self, client: &CoordinatorClient) -> Result<MessageState, ClientError> {
        client.submit_message(&self.id, false).await
    }

    /// As [`PreparedMessage::submit`], answering once every destination
    /// acknowledged.
    pub async fn submit_and_wait(
        &self,
        client: &CoordinatorClient,
    ) -> Result<MessageState, ClientError> {
        client.submit_message(&self.id, true).await
    }
}
