//! The SQLite log's writing side: one thread that owns the connection every
//! batch is written on, and applies each batch's records, in order, as one
//! `BEGIN IMMEDIATE` … `COMMIT` (one fsync: R1).
//!
//! Why a thread of its own and not sqlx: the log writer's batch was the
//! coordinator's serial path, and on sqlx each batch was encoded into JSON
//! arrays on the runtime, handed to sqlx's worker thread, decoded again by
//! SQLite's JSON functions and looked up field by field (a fifth of the
//! SQLite thread's time, measured with `perf`), with a hand-off between
//! threads per statement. Here the records travel to the thread as they
//! are, and each becomes a cached prepared statement with its values bound:
//! no encoding, one hand-off there and one back per batch.
//!
//! The thread ends when the [`WriterThread`] handle is closed or dropped
//! (the store with it): it finishes the batch in hand and closes the
//! connection; [`WriterThread::close`] also waits for that.
//!
//! A COMMIT that fails with an I/O error is the end of the thread: the
//! fsync may have failed, and after a failed fsync the operating system
//! may have dropped pages it had accepted, so the same write retried on the
//! same file can report durable what is not (PostgreSQL's "fsyncgate").
//! The batch is answered [`StoreError::SyncFailed`], every later one
//! [`StoreError::WriterStopped`], and the node exits (crash-only) so that a
//! restart recovers from what the log holds (docs/design.md).

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use rusqlite::{Connection, OpenFlags, TransactionBehavior, params};
use tokio::sync::oneshot;

use super::rows::{duration_ms, to_i64};
use super::{BranchEnd, Record, StepProgress, StoreError};
use crate::model::{TxnId, VoteKind, message_via_str, step_kind_str, step_status_str};

/// One batch for the thread and where its outcome goes.
struct Job {
    batch: Vec<Record>,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// A handle to the writing thread.
#[derive(Debug)]
pub(crate) struct WriterThread {
    /// None once closed: every later batch is `WriterStopped`.
    jobs: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    thread: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl WriterThread {
    /// Opens `path` (an existing, migrated database) on a new thread and
    /// returns once the connection is ready. The thread holds `held` (the
    /// log's lock) until it ends, so the log is free exactly when nothing
    /// of this process can write it any more.
    pub(crate) async fn start(
        path: &Path,
        busy_timeout: Duration,
        held: impl Send + 'static,
    ) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        let (jobs, receiver) = mpsc::channel::<Job>();
        let (ready, opened) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("concord-sqlite".into())
            .spawn(move || {
                let _held = held;
                let connection = match open(&path, busy_timeout) {
                    Ok(connection) => {
                        let _ = ready.send(Ok(()));
                        connection
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                serve(connection, receiver, busy_timeout);
            })
            .map_err(StoreError::WriterThread)?;
        match opened.await {
            Ok(Ok(())) => Ok(Self {
                jobs: std::sync::Mutex::new(Some(jobs)),
                thread: std::sync::Mutex::new(Some(thread)),
            }),
            Ok(Err(error)) => Err(error.into()),
            Err(_) => Err(StoreError::WriterStopped),
        }
    }

    /// Writes `batch` as one database transaction; resolves once it is
    /// durable, or failed with nothing of it applied.
    pub(crate) async fn append(&self, batch: Vec<Record>) -> Result<(), StoreError> {
        let (done, outcome) = oneshot::channel();
        let sent = match &*self.jobs.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(jobs) => jobs.send(Job { batch, done }).is_ok(),
            None => false,
        };
        if !sent {
            return Err(StoreError::WriterStopped);
        }
        outcome.await.map_err(|_| StoreError::WriterStopped)?
    }

    /// Stops the thread and waits until it has closed its connection and
    /// let go of what it holds: the batch in hand is finished, nothing is
    /// written after.
    pub(crate) async fn close(&self) {
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        let thread = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(thread) = thread {
            // A join blocks: off the runtime's threads.
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }
}

impl Drop for WriterThread {
    /// A store dropped without [`WriterThread::close`] (tests, an embedder):
    /// the thread is stopped and waited for here, so that the log's lock is
    /// free once the store is gone. Idle, it ends at once; in the middle of
    /// a batch, once that batch's commit returns.
    fn drop(&mut self) {
        drop(self.jobs.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(thread) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = thread.join();
        }
    }
}

fn open(path: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let connection = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // WAL is a property of the file (the pool set it already; asked again
    // so that this connection can never write in another mode); synchronous
    // and foreign keys are per connection. R1: FULL makes a commit return
    // only after the WAL is fsynced.
    connection.pragma_update(None, "journal_mode", "wal")?;
    connection.pragma_update(None, "synchronous", "full")?;
    connection.pragma_update(None, "foreign_keys", "on")?;
    connection.busy_timeout(busy_timeout)?;
    connection.set_prepared_statement_cache_capacity(32);
    Ok(connection)
}

/// The thread's loop: one batch at a time, in the order they were sent.
fn serve(mut connection: Connection, jobs: mpsc::Receiver<Job>, busy_timeout: Duration) {
    while let Ok(Job { batch, done }) = jobs.recv() {
        let outcome = match write(&mut connection, &batch) {
            Err(Failure::Commit(error)) if is_io_error(&error) => {
                let path = connection.path().unwrap_or("?").to_owned();
                let _ = done.send(Err(StoreError::SyncFailed {
                    path,
                    cause: error.to_string(),
                }));
                // Nothing more on this file from this process (see above).
                return;
            }
            Err(Failure::Apply(error) | Failure::Commit(error)) => Err(error),
            Ok(()) => Ok(()),
        };
        if outcome.is_err() && !connection.is_autocommit() {
            // The rollback on drop failed and the transaction is still
            // open: the next batch's BEGIN would fail on it. Try once more,
            // then start over on a new connection.
            if connection.execute_batch("ROLLBACK").is_err()
                && let Some(path) = connection.path().map(std::path::PathBuf::from)
                && let Ok(fresh) = open(&path, busy_timeout)
            {
                connection = fresh;
            }
        }
        // The log writer may have stopped waiting (shutdown); nothing to do.
        let _ = done.send(outcome.map_err(|source| StoreError::LogWrite {
            path: connection.path().unwrap_or("?").to_owned(),
            source,
        }));
    }
}

/// Applies `batch` in one transaction. Dropping the transaction on an error
/// rolls it back, so a failed batch applies nothing (R1: its waiters hear
/// it failed) and the next one starts clean. `BEGIN IMMEDIATE` takes the
/// write lock up front, so a batch never fails halfway for want of it (an
/// operator's tool or the retention sweep may hold it for a moment; the
/// busy timeout waits).
fn write(connection: &mut Connection, batch: &[Record]) -> Result<(), Failure> {
    let transaction = connection
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(Failure::Apply)?;
    for record in batch {
        apply(&transaction, record).map_err(Failure::Apply)?;
    }
    #[cfg(feature = "failpoints")]
    if fail::eval("sqlite-commit-io-error", |_| ()).is_some() {
        // As a failed fsync of the WAL reports itself; the transaction
        // is rolled back as it is dropped.
        return Err(Failure::Commit(rusqlite::Error::SqliteFailure(
            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_IOERR_FSYNC),
            Some("disk I/O error (injected at sqlite-commit-io-error)".into()),
        )));
    }
    transaction.commit().map_err(Failure::Commit)
}

/// Where a batch failed: applying its records (nothing written; the next
/// batch may go on), or committing them.
enum Failure {
    Apply(rusqlite::Error),
    Commit(rusqlite::Error),
}

/// SQLITE_IOERR and its extended codes (a failed write, fsync, truncate).
/// A full disk is SQLITE_FULL: nothing was written, and writing again once
/// there is room is safe.
fn is_io_error(error: &rusqlite::Error) -> bool {
    matches!(
        error,
        rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::SystemIoFailure
    )
}

/// One record's rows. Records apply in the order the protocol produced them,
/// as replaying the log would.
fn apply(db: &Connection, record: &Record) -> rusqlite::Result<()> {
    match record {
        Record::Begun {
            id,
            created_at_ms,
            deadline_ms,
            idempotency_key,
            request_digest,
            description,
        } => {
            db.prepare_cached(INSERT_TRANSACTION)?.execute(params![
                id.to_string(),
                "two_phase",
                "active",
                to_i64(*created_at_ms),
                to_i64(*deadline_ms),
                idempotency_key,
                description,
                request_digest,
            ])?;
        }
        Record::SagaSubmitted {
            id,
            created_at_ms,
            idempotency_key,
            request_digest,
            description,
            steps,
        } => {
            let txn = id.to_string();
            db.prepare_cached(INSERT_TRANSACTION)?.execute(params![
                txn,
                "saga",
                "running",
                to_i64(*created_at_ms),
                0i64,
                idempotency_key,
                description,
                request_digest,
            ])?;
            let mut insert = db.prepare_cached(INSERT_STEP)?;
            for (idx, step) in steps.iter().enumerate() {
                let depends_on: Vec<String> =
                    step.depends_on.iter().map(ToString::to_string).collect();
                insert.execute(params![
                    txn,
                    to_i64(idx as u64),
                    step.name,
                    step.participant,
                    step_kind_str(step.kind),
                    step.action,
                    step.compensation,
                    depends_on.join(","),
                    duration_ms(step.attempt_timeout),
                    duration_ms(step.retry.initial_delay),
                    step.retry.multiplier,
                    duration_ms(step.retry.max_delay),
                    step.retry.max_attempts,
                    step.retry.jitter,
                ])?;
            }
        }
        Record::MessagePrepared {
            id,
            created_at_ms,
            check_at_ms,
            idempotency_key,
            request_digest,
            description,
            producer,
            ordering_key,
            destinations,
        } => {
            let txn = id.to_string();
            db.prepare_cached(INSERT_MESSAGE)?.execute(params![
                txn,
                to_i64(*created_at_ms),
                to_i64(*check_at_ms),
                idempotency_key,
                description,
                request_digest,
                producer,
                ordering_key,
            ])?;
            let mut insert = db.prepare_cached(INSERT_BRANCH)?;
            for (idx, destination) in destinations.iter().enumerate() {
                insert.execute(params![
                    txn,
                    to_i64(idx as u64),
                    destination.name,
                    destination.participant,
                    destination.payload,
                ])?;
            }
        }
        Record::MessageDecided {
            id,
            at_ms,
            via,
            ordering_seq,
        } => {
            db.prepare_cached(DECIDE_MESSAGE)?.execute(params![
                id.to_string(),
                to_i64(*at_ms),
                message_via_str(*via),
                ordering_seq.map(to_i64),
            ])?;
        }
        Record::Enlisted {
            id,
            idx,
            name,
            participant,
            payload,
        } => {
            db.prepare_cached(INSERT_BRANCH)?.execute(params![
                id.to_string(),
                idx,
                name,
                participant,
                payload,
            ])?;
        }
        Record::Decided { id, at_ms } => {
            db.prepare_cached(DECIDE)?
                .execute(params![id.to_string(), to_i64(*at_ms)])?;
        }
        Record::Aborting { id, at_ms, reason } => {
            db.prepare_cached(ABORT)?
                .execute(params![id.to_string(), to_i64(*at_ms), reason])?;
        }
        Record::StepRecorded {
            id,
            saga_state,
            reason,
            step,
        } => {
            // The step first: the change feed (written by triggers, in
            // statement order) then shows a step's outcome before the
            // saga's state it caused, as the console's timeline reads them.
            progress(db, id, step)?;
            db.prepare_cached(SAGA_STATE)?.execute(params![
                id.to_string(),
                saga_state.as_str(),
                reason
            ])?;
        }
        Record::NeedsAttention { id } => {
            db.prepare_cached(NEEDS_ATTENTION)?
                .execute(params![id.to_string()])?;
        }
        Record::OperatorResolved { id, action } => {
            db.prepare_cached(OPERATOR_ACTION)?.execute(params![
                id.to_string(),
                to_i64(action.at_ms),
                action.branch,
                action.outcome.as_str(),
                action.reason,
                action.operator,
            ])?;
        }
        Record::Ended {
            id,
            state,
            at_ms,
            read_only,
            reason,
            branches,
            steps,
        } => {
            let txn = id.to_string();
            db.prepare_cached(END)?.execute(params![
                txn,
                state.as_str(),
                to_i64(*at_ms),
                read_only,
                reason,
            ])?;
            for BranchEnd {
                idx,
                state,
                vote,
                attempts,
                last_error,
            } in branches
            {
                db.prepare_cached(BRANCH_END)?.execute(params![
                    txn,
                    idx,
                    state.as_str(),
                    vote.map(VoteKind::as_str),
                    attempts,
                    last_error,
                ])?;
            }
            for step in steps {
                progress(db, id, step)?;
            }
        }
    }
    Ok(())
}

fn progress(db: &Connection, id: &TxnId, step: &StepProgress) -> rusqlite::Result<()> {
    db.prepare_cached(STEP_PROGRESS)?.execute(params![
        id.to_string(),
        step.idx,
        step_status_str(step.status),
        step.attempts,
        step.compensation_attempts,
        step.last_error,
    ])?;
    Ok(())
}

const INSERT_TRANSACTION: &str = "
    INSERT INTO transactions
      (id, kind, state, created_at_ms, deadline_ms, idempotency_key, description,
       request_digest)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const INSERT_MESSAGE: &str = "
    INSERT INTO transactions
      (id, kind, state, created_at_ms, deadline_ms, idempotency_key, description,
       request_digest, producer, ordering_key)
    VALUES (?1, 'message', 'prepared', ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const INSERT_BRANCH: &str = "
    INSERT INTO branches (txn_id, idx, name, participant, payload, state)
    VALUES (?1, ?2, ?3, ?4, ?5, 'enlisted')";

const INSERT_STEP: &str = "
    INSERT INTO saga_steps
      (txn_id, idx, name, participant, kind, action, compensation, depends_on,
       attempt_timeout_ms, retry_initial_ms, retry_multiplier, retry_max_ms,
       retry_max_attempts, retry_jitter)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

// R1/R2: a decision applies only to a transaction still active.
const DECIDE: &str = "
    UPDATE transactions SET state = 'committing', decided_at_ms = ?2
    WHERE id = ?1 AND state = 'active'";

// M1: a message's decision applies only to a message still prepared.
const DECIDE_MESSAGE: &str = "
    UPDATE transactions SET state = 'delivering', decided_at_ms = ?2, reason = ?3,
        ordering_seq = ?4
    WHERE id = ?1 AND state = 'prepared'";

const ABORT: &str = "
    UPDATE transactions SET state = 'aborting', decided_at_ms = ?2, reason = ?3
    WHERE id = ?1 AND state = 'active'";

// Most step records leave the saga's state and reason as they were
// (RUNNING, none): such rows are looked up but not rewritten.
const SAGA_STATE: &str = "
    UPDATE transactions SET state = ?2, reason = ?3
    WHERE id = ?1 AND (state, reason) IS NOT (?2, ?3)";

const STEP_PROGRESS: &str = "
    UPDATE saga_steps
    SET state = ?3, attempts = ?4, compensation_attempts = ?5, last_error = ?6
    WHERE txn_id = ?1 AND idx = ?2";

const NEEDS_ATTENTION: &str = "UPDATE transactions SET needs_attention = 1 WHERE id = ?1";

const OPERATOR_ACTION: &str = "
    INSERT INTO operator_actions (txn_id, at_ms, branch, outcome, reason, operator)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6)";

// The decided_at stamp stays the decision's; an abort decided and ended in
// one step gets both. A saga that needed attention while retrying no longer
// does once it ended, unless it FAILED.
const END: &str = "
    UPDATE transactions
    SET state = ?2, ended_at_ms = ?3, read_only = ?4, reason = ?5,
        decided_at_ms = COALESCE(decided_at_ms, ?3),
        needs_attention = (?2 = 'failed')
    WHERE id = ?1";

const BRANCH_END: &str = "
    UPDATE branches SET state = ?3, vote = ?4, attempts = ?5, last_error = ?6
    WHERE txn_id = ?1 AND idx = ?2";
