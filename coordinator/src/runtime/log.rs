//! The group-commit log writer (DESIGN §5).
//!
//! One task owns every write to the store. Callers hand it records; it takes
//! whatever has queued up since its last write (up to [`MAX_BATCH_RECORDS`]),
//! applies it as one database transaction — one fsync for many transactions —
//! and then wakes each caller whose records were in it. At low load a record
//! is written the moment it arrives (no fixed delay); under load, batches grow
//! by themselves while the previous fsync is running.
//!
//! [`LogWriter::submit`] queues records synchronously, so a caller holding a
//! transaction's lock queues them in the order the protocol produced them;
//! the returned [`Durable`] resolves once they are on disk (R1). Records
//! nobody is held up by (an end record, a presumed-abort record, R2) are
//! queued lazily: they travel with the next forced write, or after
//! [`LAZY_DELAY`] on their own.
//!
//! On a store several nodes share, a record of a transaction another node
//! has taken over is refused (fencing, DESIGN §6); its waiter gets
//! [`LogError::Fenced`] while the rest of the batch is written.
//!
//! A batch the store refuses for one of its records (a constraint
//! violation: an idempotency key another node took meanwhile) is applied
//! again one submission at a time, so that only that record's caller fails
//! and the others' records are written. While batches fail the writer
//! reports the log unhealthy ([`LogWriter::health`]; the node answers
//! NOT_SERVING), and healthy again after the next batch that succeeds.
//!
//! The queue is unbounded: what is in it is bounded by the transactions in
//! flight, each of which has at most a few records queued at a time.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::model::TxnId;
use crate::store::{Appended, Record, Store, StoreError};

/// Records per database transaction at most. Larger batches amortise the
/// fsync further but hold early waiters longer.
pub const MAX_BATCH_RECORDS: usize = 4096;

/// How long records nobody is held up by ([`LogWriter::submit_lazy`]) may
/// wait for a forced write to travel with, before they get a batch (and an
/// fsync) of their own.
pub const LAZY_DELAY: std::time::Duration = std::time::Duration::from_millis(2);

struct Submission {
    records: Vec<Record>,
    done: Option<oneshot::Sender<Result<(), LogError>>>,
    /// Someone is held up until these records are durable.
    urgent: bool,
}

/// One submission in a batch: the transaction its records are about (they
/// all are about one), where they sit in the batch, and where to send the
/// answer.
struct Waiter {
    txn: Option<TxnId>,
    records: std::ops::Range<usize>,
    done: Option<oneshot::Sender<Result<(), LogError>>>,
}

/// Whether the log is taking writes: the last batch was durable, or every
/// write since the last durable one failed, the last with `error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogHealth {
    Writing,
    Failing {
        error: String,
    },
    /// A write may have been lost (`StoreError::SyncFailed`): the node must
    /// stop and recover from the log. Final.
    Lost {
        error: String,
    },
}

/// Why a forced write did not become durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("the log write failed: {0}")]
    Store(Arc<StoreError>),
    #[error("the log writer has stopped (shutting down)")]
    Stopped,
    #[error("refused: another coordinator node took this transaction over (fencing)")]
    Fenced,
}

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    queue: mpsc::UnboundedSender<Submission>,
    health: tokio::sync::watch::Receiver<LogHealth>,
    /// Notified after each write that applied something: the watch feed
    /// reads the log's new changes then rather than at its next poll.
    written: Arc<tokio::sync::Notify>,
}

/// Resolves once the records it was returned for are durable.
pub struct Durable(Result<oneshot::Receiver<Result<(), LogError>>, LogError>);

impl Durable {
    pub async fn wait(self) -> Result<(), LogError> {
        match self.0?.await {
            Ok(result) => result,
            Err(_) => Err(LogError::Stopped),
        }
    }
}

impl LogWriter {
    /// Starts the writer task on `tasks`. It drains what is queued and ends
    /// once every handle is dropped or `shutdown` fires.
    pub fn start(store: Arc<dyn Store>, tasks: &TaskTracker, shutdown: CancellationToken) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        let (health, watch) = tokio::sync::watch::channel(LogHealth::Writing);
        let written = Arc::new(tokio::sync::Notify::new());
        tasks.spawn(run(store, receiver, shutdown, health, Arc::clone(&written)));
        Self {
            queue,
            health: watch,
            written,
        }
    }

    /// Notified (one permit kept) after each write that applied something.
    pub fn written(&self) -> Arc<tokio::sync::Notify> {
        Arc::clone(&self.written)
    }

    /// Follows whether the log is taking writes.
    pub fn health(&self) -> tokio::sync::watch::Receiver<LogHealth> {
        self.health.clone()
    }

    /// Queues `records` behind everything already queued. Await the answer
    /// to know they are durable, or drop it if nothing depends on that.
    pub fn submit(&self, records: Vec<Record>) -> Durable {
        self.send(records, true)
    }

    /// Queues records nobody is held up by (a transaction's end, a presumed
    /// abort): they ride along with the next forced write, or are written
    /// on their own after [`LAZY_DELAY`]. At low load this spares an fsync
    /// per transaction, and the next decision does not queue behind it.
    pub fn submit_lazy(&self, records: Vec<Record>) -> Durable {
        self.send(records, false)
    }

    fn send(&self, records: Vec<Record>, urgent: bool) -> Durable {
        let (done, wait) = oneshot::channel();
        let submission = Submission {
            records,
            done: Some(done),
            urgent,
        };
        match self.queue.send(submission) {
            Ok(()) => Durable(Ok(wait)),
            Err(_) => Durable(Err(LogError::Stopped)),
        }
    }

    /// Writes `records` and returns once they are durable.
    pub async fn force(&self, records: Vec<Record>) -> Result<(), LogError> {
        self.submit(records).wait().await
    }
}

async fn run(
    store: Arc<dyn Store>,
    mut receiver: mpsc::UnboundedReceiver<Submission>,
    shutdown: CancellationToken,
    health: tokio::sync::watch::Sender<LogHealth>,
    written: Arc<tokio::sync::Notify>,
) {
    let mut batch: Vec<Record> = Vec::new();
    let mut waiters: Vec<Waiter> = Vec::new();
    loop {
        let first = tokio::select! {
            biased;
            next = receiver.recv() => next,
            () = shutdown.cancelled() => {
                // Stop taking new work, but write what was already queued:
                // its callers may be waiting on it.
                receiver.close();
                receiver.recv().await
            }
        };
        let Some(first) = first else { break };
        let mut urgent = take(first, &mut batch, &mut waiters);
        urgent |= take_queued(&mut receiver, &mut batch, &mut waiters);
        if !urgent {
            // Only lazy records: give a forced write a moment to come along.
            let linger = tokio::time::sleep(LAZY_DELAY);
            tokio::pin!(linger);
            while !urgent && batch.len() < MAX_BATCH_RECORDS {
                tokio::select! {
                    biased;
                    next = receiver.recv() => match next {
                        Some(next) => {
                            urgent = take(next, &mut batch, &mut waiters);
                            urgent |= take_queued(&mut receiver, &mut batch, &mut waiters);
                        }
                        None => break,
                    },
                    () = &mut linger => break,
                    () = shutdown.cancelled() => break,
                }
            }
        }
        let result = append(store.as_ref(), &batch).await;
        if let Err(error) = &result
            && waiters.len() > 1
            && error.is_refused_record()
        {
            // One submission's records are what the store refuses (a
            // constraint violation): apply each alone, in order, so the
            // others are written and only the refused one fails. (Not for
            // the store's own failures, a full disk or a lost connection:
            // they would fail each alone too, one wait at a time.) Records
            // of one transaction in different submissions keep their order,
            // and a caller that needs an earlier submission durable waits
            // for that one's answer too (`driver::write_decision`).
            tracing::warn!(%error, submissions = waiters.len(), "log batch failed; applying its submissions one at a time");
            let mut any_written = false;
            let mut lost = None;
            for waiter in waiters.drain(..) {
                let alone = append(store.as_ref(), &batch[waiter.records.clone()]).await;
                any_written |= alone.is_ok();
                if matches!(&alone, Err(e) if matches!(**e, StoreError::SyncFailed { .. })) {
                    lost = Some(alone.clone());
                }
                answer(waiter, &alone);
            }
            report(&health, any_written, lost.as_ref().unwrap_or(&result));
            if any_written {
                written.notify_one();
            }
        } else {
            report(&health, result.is_ok(), &result);
            if result.is_ok() {
                written.notify_one();
            }
            for waiter in waiters.drain(..) {
                answer(waiter, &result);
            }
        }
        batch.clear();
    }
    tracing::debug!("log writer stopped");
}

/// Applies `records` as one database transaction, with its metrics.
async fn append(store: &dyn Store, records: &[Record]) -> Result<Appended, Arc<StoreError>> {
    let started = std::time::Instant::now();
    let result = store.append(records).await.map_err(Arc::new);
    match &result {
        Ok(appended) => {
            crate::metrics::log_batch(records.len(), started.elapsed().as_secs_f64());
            if !appended.fenced.is_empty() {
                crate::metrics::fenced(appended.fenced.len());
            }
        }
        Err(error) => {
            crate::metrics::log_write_failure();
            tracing::error!(%error, records = records.len(), "log write failed; nothing in it was applied");
        }
    }
    result
}

/// Tells one caller how its records fared.
fn answer(waiter: Waiter, result: &Result<Appended, Arc<StoreError>>) {
    let answer = match result {
        Ok(appended) if waiter.txn.is_some_and(|id| appended.fenced.contains(&id)) => {
            Err(LogError::Fenced)
        }
        Ok(_) => Ok(()),
        Err(error) => Err(LogError::Store(Arc::clone(error))),
    };
    // A waiter that gave up (its caller was cancelled) is fine to skip.
    if let Some(done) = waiter.done {
        let _ = done.send(answer);
    }
}

/// The log is healthy again as soon as anything was written, and failing
/// while nothing is.
fn report(
    health: &tokio::sync::watch::Sender<LogHealth>,
    written: bool,
    result: &Result<Appended, Arc<StoreError>>,
) {
    let now = match (written, result) {
        (_, Err(error)) if matches!(**error, StoreError::SyncFailed { .. }) => LogHealth::Lost {
            error: error.to_string(),
        },
        (true, _) | (false, Ok(_)) => LogHealth::Writing,
        (false, Err(error)) => LogHealth::Failing {
            error: error.to_string(),
        },
    };
    health.send_if_modified(|current| {
        let changed = *current != now && !matches!(current, LogHealth::Lost { .. });
        if changed {
            match &now {
                LogHealth::Writing => tracing::info!("the log takes writes again"),
                LogHealth::Failing { error } => {
                    tracing::error!(%error, "the log takes no writes; answering NOT_SERVING until it does")
                }
                LogHealth::Lost { error } => tracing::error!(%error, "the log may have lost a write"),
            }
            *current = now.clone();
        }
        changed
    });
}

/// Adds a submission to the batch; true if someone is held up by it.
fn take(submission: Submission, batch: &mut Vec<Record>, waiters: &mut Vec<Waiter>) -> bool {
    let start = batch.len();
    waiters.push(Waiter {
        txn: submission.records.first().map(Record::txn_id),
        records: start..start + submission.records.len(),
        done: submission.done,
    });
    batch.extend(submission.records);
    submission.urgent
}

/// Adds what is already queued, up to the batch limit; true if any of it
/// is urgent.
fn take_queued(
    receiver: &mut mpsc::UnboundedReceiver<Submission>,
    batch: &mut Vec<Record>,
    waiters: &mut Vec<Waiter>,
) -> bool {
    let mut urgent = false;
    while batch.len() < MAX_BATCH_RECORDS {
        match receiver.try_recv() {
            Ok(next) => urgent |= take(next, batch, waiters),
            Err(_) => break,
        }
    }
    urgent
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    use futures::FutureExt;
    use futures::future::BoxFuture;

    use super::*;
    use crate::model::{TxnId, TxnView};
    use crate::store::{Appended, ListQuery, Unfinished};

    /// Records each batch it is handed; each append takes 20 ms, like a
    /// slow fsync, and can be told to fail.
    #[derive(Default)]
    struct SlowStore {
        batches: Mutex<Vec<usize>>,
        fail: AtomicBool,
        /// Any batch holding this transaction's records fails, as a batch
        /// with a record that breaks a constraint does.
        poison: Mutex<Option<TxnId>>,
        /// Appends asked for, failed or not.
        attempts: std::sync::atomic::AtomicUsize,
    }

    impl Store for SlowStore {
        fn append<'a>(
            &'a self,
            batch: &'a [Record],
        ) -> BoxFuture<'a, Result<Appended, StoreError>> {
            async move {
                self.attempts.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(20)).await;
                if self.fail.load(Ordering::SeqCst) {
                    return Err(StoreError::Corrupt("disk on fire".into()));
                }
                let poison = *self.poison.lock().expect("lock");
                if batch.iter().any(|r| Some(r.txn_id()) == poison) {
                    return Err(StoreError::Refused("UNIQUE constraint failed".into()));
                }
                self.batches.lock().expect("lock").push(batch.len());
                Ok(Appended::default())
            }
            .boxed()
        }
        fn transaction<'a>(
            &'a self,
            _: &'a TxnId,
        ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
            async { Ok(None) }.boxed()
        }
        fn by_idempotency_key<'a>(
            &'a self,
            _: &'a str,
        ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
            async { Ok(None) }.boxed()
        }
        fn list<'a>(&'a self, _: &'a ListQuery) -> BoxFuture<'a, Result<Vec<TxnView>, StoreError>> {
            async { Ok(Vec::new()) }.boxed()
        }
        fn unfinished(&self) -> BoxFuture<'_, Result<Vec<Unfinished>, StoreError>> {
            async { Ok(Vec::new()) }.boxed()
        }
        fn changes<'a>(
            &'a self,
            _: Option<crate::model::Cursor>,
            _: u32,
        ) -> BoxFuture<'a, Result<Vec<crate::model::Change>, StoreError>> {
            async { Ok(Vec::new()) }.boxed()
        }
        fn newest_change(&self) -> BoxFuture<'_, Result<Option<crate::model::Cursor>, StoreError>> {
            async { Ok(None) }.boxed()
        }
    }

    fn record() -> Record {
        Record::Decided {
            id: TxnId::mint(),
            at_ms: 1,
        }
    }

    #[tokio::test]
    async fn records_queued_during_a_write_share_the_next_batch() {
        let store = Arc::new(SlowStore::default());
        let tasks = TaskTracker::new();
        let log = LogWriter::start(store.clone(), &tasks, CancellationToken::new());
        // The first record is written at once (no fixed delay)...
        let first = log.submit(vec![record()]);
        tokio::time::sleep(Duration::from_millis(5)).await;
        // ...and the 50 that arrive while it is being written go together.
        let rest: Vec<Durable> = (0..50).map(|_| log.submit(vec![record()])).collect();
        first.wait().await.expect("durable");
        for durable in rest {
            durable.wait().await.expect("durable");
        }
        assert_eq!(*store.batches.lock().expect("lock"), vec![1, 50]);
    }

    #[tokio::test]
    async fn lazy_records_wait_for_a_forced_write_and_never_hold_one_up() {
        let store = Arc::new(SlowStore::default());
        let tasks = TaskTracker::new();
        let log = LogWriter::start(store.clone(), &tasks, CancellationToken::new());
        // Alone, a lazy record is written after the lazy delay...
        log.submit_lazy(vec![record()])
            .wait()
            .await
            .expect("durable");
        // ...but one followed by a forced record goes with it, in one batch.
        let lazy = log.submit_lazy(vec![record(), record()]);
        tokio::time::sleep(LAZY_DELAY / 4).await;
        log.force(vec![record()]).await.expect("durable");
        lazy.wait().await.expect("durable");
        assert_eq!(*store.batches.lock().expect("lock"), vec![1, 3]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_every_waiter_in_it() {
        let store = Arc::new(SlowStore::default());
        store.fail.store(true, Ordering::SeqCst);
        let tasks = TaskTracker::new();
        let log = LogWriter::start(store.clone(), &tasks, CancellationToken::new());
        let waits: Vec<Durable> = (0..3).map(|_| log.submit(vec![record()])).collect();
        for durable in waits {
            assert!(matches!(durable.wait().await, Err(LogError::Store(_))));
        }
        assert!(store.batches.lock().expect("lock").is_empty());
        // The store's own failure (not a record's) is not tried again one
        // submission at a time: each would fail alike, one wait after the
        // other: the three shared one batch, tried once.
        assert_eq!(store.attempts.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_refused_record_fails_only_its_caller_and_the_rest_of_its_batch_is_written() {
        let store = Arc::new(SlowStore::default());
        let tasks = TaskTracker::new();
        let log = LogWriter::start(store.clone(), &tasks, CancellationToken::new());
        let refused = record();
        *store.poison.lock().expect("lock") = Some(refused.txn_id());
        // Held behind a first write, so the three below share one batch.
        let first = log.submit(vec![record()]);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let before = log.submit(vec![record()]);
        let poisoned = log.submit(vec![refused]);
        let after = log.submit(vec![record(), record()]);
        first.wait().await.expect("durable");
        before
            .wait()
            .await
            .expect("written although its batch failed");
        assert!(matches!(poisoned.wait().await, Err(LogError::Store(_))));
        after
            .wait()
            .await
            .expect("written although its batch failed");
        // The first batch, then each good submission of the failed one.
        assert_eq!(*store.batches.lock().expect("lock"), vec![1, 1, 2]);
        // Something was written: the log is healthy.
        assert_eq!(*log.health().borrow(), LogHealth::Writing);
    }

    #[tokio::test]
    async fn the_log_is_unhealthy_while_every_write_fails_and_healthy_after_one_succeeds() {
        let store = Arc::new(SlowStore::default());
        let tasks = TaskTracker::new();
        let log = LogWriter::start(store.clone(), &tasks, CancellationToken::new());
        let mut health = log.health();
        store.fail.store(true, Ordering::SeqCst);
        assert!(log.force(vec![record()]).await.is_err());
        assert!(
            matches!(&*health.borrow_and_update(), LogHealth::Failing { error } if error.contains("disk on fire"))
        );
        store.fail.store(false, Ordering::SeqCst);
        log.force(vec![record()]).await.expect("durable");
        assert!(health.has_changed().expect("writer running"));
        assert_eq!(*health.borrow_and_update(), LogHealth::Writing);
    }

    #[tokio::test]
    async fn shutdown_writes_what_was_queued_then_refuses_more() {
        let store = Arc::new(SlowStore::default());
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let log = LogWriter::start(store.clone(), &tasks, shutdown.clone());
        let queued = log.submit(vec![record(), record()]);
        shutdown.cancel();
        queued
            .wait()
            .await
            .expect("queued before shutdown: written");
        tasks.close();
        tasks.wait().await;
        assert!(matches!(
            log.force(vec![record()]).await,
            Err(LogError::Stopped)
        ));
        assert_eq!(*store.batches.lock().expect("lock"), vec![2]);
    }
}
