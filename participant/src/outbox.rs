//! The producer's side of a transactional message (DESIGN §10), under
//! [`crate::message`]: the outbox row that commits with the business
//! change, and the answer to the coordinator's check-back.
//!
//! The outbox row is a ledger row, `(message id, "message", "publish")`,
//! written by [`publish`] in the producer's own local transaction. The
//! check-back ([`check`]) looks for it in a local transaction of its own,
//! serialised with a publish of the same message as any two ledger calls
//! about one branch are; when it finds none it writes a tombstone in its
//! place (result `rolled_back`) before answering. A local transaction that
//! then tries to publish fails on the tombstone and rolls back, so the
//! producer never commits a change whose message was dropped, and the
//! coordinator never drops one whose change committed (M2).

use sqlx::Pool;

use crate::branch::BranchContext;
use crate::ledger::{LedgerDb, LocalTxOf, Op};

/// The branch name outbox rows go under.
const OUTBOX: &str = "message";
const PUBLISHED: &str = "committed";
const TOMBSTONE: &str = "rolled_back";

/// What a check-back found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// The outbox row is there: the local transaction committed.
    Committed,
    /// It was not; a tombstone now stands in its place.
    RolledBack,
}

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The coordinator asked about this message, found no outbox row, and
    /// dropped it: this local transaction must roll back.
    #[error(
        "message {0} was dropped: the coordinator's check-back found it unpublished; roll \
         back this local transaction"
    )]
    Dropped(String),
    /// Another local transaction already published this message.
    #[error("message {0} was already published by another local transaction")]
    AlreadyPublished(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
}

fn outbox(message_id: &str) -> BranchContext {
    BranchContext {
        transaction_id: message_id.to_owned(),
        branch: OUTBOX.to_owned(),
        coordinator: String::new(),
        one_phase: false,
        traceparent: None,
    }
}

fn unique_violation(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(e) if e.is_unique_violation())
}

/// Writes the outbox row of `message_id` in `tx`, the local transaction
/// that makes the business change: the message is published if and only
/// if `tx` commits. Fails with [`PublishError::Dropped`] when a check-back
/// came first; the caller must then roll `tx` back.
pub async fn publish<DB: LedgerDb>(
    tx: &mut LocalTxOf<DB>,
    message_id: &str,
) -> Result<(), PublishError> {
    let row = outbox(message_id);
    // Serialised with a check-back of the same message (the ledger's lock
    // for one branch), so that the two never both think they came first.
    DB::lock(tx, &row).await?;
    if let Some(found) = DB::find(tx, &row, Op::Publish).await? {
        return Err(if found.result == TOMBSTONE {
            PublishError::Dropped(message_id.to_owned())
        } else {
            PublishError::AlreadyPublished(message_id.to_owned())
        });
    }
    match DB::record(tx, &row, Op::Publish, PUBLISHED, None, None).await {
        Ok(()) => Ok(()),
        // A row committed after our look (a check-back's tombstone, on a
        // database whose lock the caller's transaction took late; or,
        // against the rules, a concurrent publish of the same message):
        // either way this transaction must not commit.
        Err(error) if unique_violation(&error) => Err(PublishError::Dropped(message_id.to_owned())),
        Err(error) => Err(error.into()),
    }
}

/// Answers the coordinator's check-back for `message_id`: Committed if
/// its outbox row is there; otherwise writes the tombstone, commits it,
/// and answers RolledBack. Asking again gives the same answer.
pub async fn check<DB: LedgerDb>(
    pool: &Pool<DB>,
    message_id: &str,
) -> Result<Checked, sqlx::Error> {
    let row = outbox(message_id);
    let mut tx = DB::begin(pool, &row).await?;
    let answer = match DB::find(&mut tx, &row, Op::Publish).await? {
        Some(found) if found.result == TOMBSTONE => Checked::RolledBack,
        Some(_) => Checked::Committed,
        None => match DB::record(&mut tx, &row, Op::Publish, TOMBSTONE, None, None).await {
            Ok(()) => Checked::RolledBack,
            // A publish committed between our look and our write.
            Err(error) if unique_violation(&error) => {
                tx.rollback().await?;
                return Box::pin(check(pool, message_id)).await;
            }
            Err(error) => return Err(error),
        },
    };
    tx.commit().await?;
    Ok(answer)
}
