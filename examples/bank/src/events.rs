//! Transactional messages in the bank example (DESIGN §10): a payment
//! between two accounts of one bank is a local transaction of that bank,
//! and its "transfer completed" event reaches the audit service and the
//! notification service exactly once if and only if the payment committed
//! — even if the bank dies right after its commit.
//!
//! - [`pay`]: the bank's side. Prepares the event at the coordinator,
//!   moves the money and writes the event's outbox row in one local
//!   transaction, commits, submits. The account service answers the
//!   coordinator's check-back from that outbox (its `ParticipantService`
//!   does), so a bank that dies before submitting still gets its event
//!   delivered, and one whose payment rolled back gets none.
//! - [`EventLog`]: an event service's side (audit, notifications): each
//!   event is written to its `events` table through the SDK's ledger, so a
//!   redelivered event is recorded once.

use std::path::Path;

use concord_participant::message::{Destination, Message};
use concord_participant::{
    BranchContext, ClientError, CoordinatorClient, LocalTx, MessageDestination, ParticipantError,
};
use serde::{Deserialize, Serialize};
use sqlx::{FromRow, SqlitePool};

/// What the event services are told.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransferCompleted {
    /// "transfer completed".
    pub event: String,
    pub bank: String,
    pub from: String,
    pub to: String,
    /// Cents.
    pub amount: i64,
}

/// One event as an event service recorded it.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Event {
    pub message_id: String,
    /// The name the bank gave this service (its destination name).
    pub destination: String,
    pub body: String,
}

/// Opens (creating if needed) an event service's database.
pub async fn open_events_db(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    let pool = crate::open_db(path).await?;
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS events (
            message_id  TEXT NOT NULL,
            destination TEXT NOT NULL,
            body        TEXT NOT NULL
        )",
    )
    .execute(&pool)
    .await?;
    Ok(pool)
}

/// Every event recorded, in the order it arrived.
pub async fn events(pool: &SqlitePool) -> Result<Vec<Event>, sqlx::Error> {
    sqlx::query_as("SELECT message_id, destination, body FROM events ORDER BY rowid")
        .fetch_all(pool)
        .await
}

/// An event service: records each event it is delivered.
#[derive(Debug, Clone, Default)]
pub struct EventLog;

impl MessageDestination for EventLog {
    async fn deliver(
        &self,
        tx: &mut LocalTx,
        message: &BranchContext,
        payload: &[u8],
    ) -> Result<(), ParticipantError> {
        let body = std::str::from_utf8(payload)
            .map_err(|e| ParticipantError::InvalidPayload(format!("an event is UTF-8: {e}")))?;
        sqlx::query("INSERT INTO events (message_id, destination, body) VALUES (?1, ?2, ?3)")
            .bind(&message.transaction_id)
            .bind(&message.branch)
            .bind(body)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

/// Serves an event service for the database `pool` on `listener` until
/// `shutdown` resolves.
pub async fn serve_events(
    pool: SqlitePool,
    callers: concord_participant::Callers,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let service =
        concord_participant::ParticipantService::new(concord_participant::Unsupported, pool)
            .await?
            .with_messages(EventLog)
            .obeying(callers);
    service.serve(listener, shutdown).await?;
    Ok(())
}

/// What became of a payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payment {
    /// Committed; its event is delivered (now, or by the check-back if the
    /// submit did not get through).
    Paid { message_id: String },
    /// Not enough money, or no such payee: rolled back; its event is
    /// dropped, never sent.
    Refused { message_id: String },
}

#[derive(Debug, thiserror::Error)]
pub enum PayError {
    #[error("the coordinator: {0}")]
    Coordinator(#[from] ClientError),
    #[error("the bank's database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the outbox: {0}")]
    Outbox(#[from] concord_participant::outbox::PublishError),
}

/// Moves `amount` cents from `from` to `to` within the bank whose database
/// is `pool` and whose account service is served at `bank_url`, and tells
/// each of `services` (name, endpoint) "transfer completed" once it
/// committed, in the order of `from`'s payments (the ordering key).
pub async fn pay(
    client: &CoordinatorClient,
    bank_url: &str,
    pool: &SqlitePool,
    (from, to, amount): (&str, &str, i64),
    services: &[(&str, &str)],
) -> Result<Payment, PayError> {
    let event = serde_json::to_string(&TransferCompleted {
        event: "transfer completed".into(),
        bank: bank_url.to_owned(),
        from: from.to_owned(),
        to: to.to_owned(),
        amount,
    })
    .unwrap_or_default();
    let mut message = Message::new(bank_url)
        .ordering_key(from)
        .description(format!("transfer completed: {amount} from {from} to {to}"))
        // A refused payment never submits its message: the coordinator
        // asks the bank after this long (the least it takes) and drops it
        // (M2), so the message does not wait on a producer that is gone.
        .check_after(std::time::Duration::from_secs(1));
    for (name, url) in services {
        message = message.to(Destination::new(*name, *url).payload(event.clone()));
    }
    let message = message.prepare(client).await?;
    let message_id = message.id().to_owned();
    let mut tx = pool.begin().await?;
    let debited = sqlx::query(
        "UPDATE accounts SET balance = balance - ?2 WHERE name = ?1 AND balance - held >= ?2",
    )
    .bind(from)
    .bind(amount)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if debited == 0 {
        // Its check-back will find no outbox row: dropped (M2).
        tx.rollback().await?;
        return Ok(Payment::Refused { message_id });
    }
    let credited = sqlx::query("UPDATE accounts SET balance = balance + ?2 WHERE name = ?1")
        .bind(to)
        .bind(amount)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    if credited == 0 {
        tx.rollback().await?;
        return Ok(Payment::Refused { message_id });
    }
    message.publish_with(&mut tx).await?;
    tx.commit().await?;
    // Committed: the event will be delivered. A failed submit only means
    // the coordinator learns it from its check-back instead.
    if let Err(error) = message.submit(client).await {
        tracing::warn!(%message_id, %error, "submit failed; the check-back will deliver");
    }
    Ok(Payment::Paid { message_id })
}
