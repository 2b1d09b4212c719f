//! A service for transactional-message tests (DESIGN §10): a producer that
//! debits in its own SQLite database and publishes a message in the same
//! local transaction, and a destination whose `Deliver` writes each message
//! it takes to its `inbox` table, in the same local transaction as the
//! ledger row, so tests count effects and their order.
//!
//! A delivery whose payload starts with `flaky:N ` fails (UNAVAILABLE) the
//! first N times it reaches this destination; one starting `until:N ` fails
//! until the inbox holds N messages; one that is `down` always fails (the
//! shared ledger cases, `sdk/ledger-cases.json`); [`MessageParticipant::down`]
//! makes every delivery fail until it is lifted.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use concord_participant::message::PreparedMessage;
use concord_participant::outbox::PublishError;
use concord_participant::{
    BranchContext, LocalTx, MessageDestination, ParticipantError, ParticipantService, Unsupported,
};
use sqlx::SqlitePool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Inbox {
    /// Failed deliveries so far, per (message, destination).
    failures: Mutex<HashMap<(String, String), u32>>,
    down: Arc<AtomicBool>,
}

impl MessageDestination for Inbox {
    async fn deliver(
        &self,
        tx: &mut LocalTx,
        message: &BranchContext,
        payload: &[u8],
    ) -> Result<(), ParticipantError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(ParticipantError::Unavailable(
                "the destination is down".into(),
            ));
        }
        let text = String::from_utf8_lossy(payload).to_string();
        if text == "down" {
            return Err(ParticipantError::Unavailable(
                "scripted: the destination is down".into(),
            ));
        }
        if let Some(limit) = text
            .strip_prefix("flaky:")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<u32>().ok())
        {
            let mut failures = self.failures.lock().expect("lock");
            let seen = failures
                .entry((message.transaction_id.clone(), message.branch.clone()))
                .or_insert(0);
            if *seen < limit {
                *seen += 1;
                return Err(ParticipantError::Unavailable("scripted failure".into()));
            }
        }
        if let Some(wanted) = text
            .strip_prefix("until:")
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse::<i64>().ok())
        {
            let (held,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM inbox")
                .fetch_one(&mut **tx)
                .await?;
            if held < wanted {
                return Err(ParticipantError::Unavailable("waiting for others".into()));
            }
        }
        sqlx::query("INSERT INTO inbox (message_id, destination, payload) VALUES (?1, ?2, ?3)")
            .bind(&message.transaction_id)
            .bind(&message.branch)
            .bind(&text)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

pub struct MessageParticipant {
    pub url: String,
    pub pool: SqlitePool,
    down: Arc<AtomicBool>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl MessageParticipant {
    pub async fn start(dir: &Path, name: &str) -> Self {
        let addr = super::processes::free_addr().to_string();
        Self::start_on(dir, name, &addr).await
    }

    /// Starts on `addr` with the database `name` in `dir` (a restart when
    /// it exists).
    pub async fn start_on(dir: &Path, name: &str, addr: &str) -> Self {
        let pool = super::participant_db(
            dir,
            name,
            "CREATE TABLE IF NOT EXISTS inbox (message_id TEXT NOT NULL, \
             destination TEXT NOT NULL, payload TEXT NOT NULL)",
        )
        .await;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS debits (id TEXT PRIMARY KEY, amount INTEGER NOT NULL)",
        )
        .execute(&pool)
        .await
        .expect("debits table");
        let inbox = Inbox::default();
        let down = Arc::clone(&inbox.down);
        let service = ParticipantService::new(Unsupported, pool.clone())
            .await
            .expect("ledger")
            .with_messages(inbox);
        let (url, stop, task) = super::serve_participant(service, addr).await;
        Self {
            url,
            pool,
            down,
            stop,
            task,
        }
    }

    /// Every delivery fails (UNAVAILABLE) while `down`.
    pub fn down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// The producer's side: [`debit_and_publish`] on this service's
    /// database.
    pub async fn debit_and_publish(
        &self,
        debit_id: &str,
        amount: i64,
        message: &PreparedMessage,
        commit: bool,
    ) -> Result<(), PublishError> {
        debit_and_publish(&self.pool, debit_id, amount, message, commit).await
    }

    pub async fn debits(&self) -> Vec<String> {
        sqlx::query_as::<_, (String,)>("SELECT id FROM debits ORDER BY id")
            .fetch_all(&self.pool)
            .await
            .expect("debits")
            .into_iter()
            .map(|(id,)| id)
            .collect()
    }

    /// Every message this destination took, in the order it took them, as
    /// (message id, destination name, payload).
    pub async fn inbox(&self) -> Vec<(String, String, String)> {
        sqlx::query_as("SELECT message_id, destination, payload FROM inbox ORDER BY rowid")
            .fetch_all(&self.pool)
            .await
            .expect("inbox")
    }

    /// How many times `message_id` took effect here.
    pub async fn received(&self, message_id: &str) -> usize {
        self.inbox()
            .await
            .iter()
            .filter(|(id, ..)| id == message_id)
            .count()
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// The producer's local transaction, on its database `pool` (whether or
/// not its service is up): debits `amount` as `debit_id` and publishes
/// `message` in the same local transaction, which commits if `commit` and
/// rolls back otherwise.
pub async fn debit_and_publish(
    pool: &SqlitePool,
    debit_id: &str,
    amount: i64,
    message: &PreparedMessage,
    commit: bool,
) -> Result<(), PublishError> {
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO debits (id, amount) VALUES (?1, ?2)")
        .bind(debit_id)
        .bind(amount)
        .execute(&mut *tx)
        .await?;
    message.publish_with(&mut tx).await?;
    if commit {
        tx.commit().await?;
    } else {
        tx.rollback().await?;
    }
    Ok(())
}
