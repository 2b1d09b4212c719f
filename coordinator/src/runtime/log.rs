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
//! nobody waits for (presumed-abort records, R2) are simply not awaited.
//!
//! The queue is unbounded: what is in it is bounded by the transactions in
//! flight, each of which has at most a few records queued at a time.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::store::{Record, Store, StoreError};

/// Records per database transaction at most. Larger batches amortise the
/// fsync further but hold early waiters longer.
pub const MAX_BATCH_RECORDS: usize = 4096;

struct Submission {
    records: Vec<Record>,
    done: Option<oneshot::Sender<Result<(), Arc<StoreError>>>>,
}

/// Why a forced write did not become durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("the log write failed: {0}")]
    Store(Arc<StoreError>),
    #[error("the log writer has stopped (shutting down)")]
    Stopped,
}

/// A handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct LogWriter {
    queue: mpsc::UnboundedSender<Submission>,
}

/// Resolves once the records it was returned for are durable.
pub struct Durable(Result<oneshot::Receiver<Result<(), Arc<StoreError>>>, LogError>);

impl Durable {
    pub async fn wait(self) -> Result<(), LogError> {
        match self.0?.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(LogError::Store(error)),
            Err(_) => Err(LogError::Stopped),
        }
    }
}

impl LogWriter {
    /// Starts the writer task on `tasks`. It drains what is queued and ends
    /// once every handle is dropped or `shutdown` fires.
    pub fn start(store: Arc<dyn Store>, tasks: &TaskTracker, shutdown: CancellationToken) -> Self {
        let (queue, receiver) = mpsc::unbounded_channel();
        tasks.spawn(run(store, receiver, shutdown));
        Self { queue }
    }

    /// Queues `records` behind everything already queued. Await the answer
    /// to know they are durable, or drop it if nothing depends on that.
    pub fn submit(&self, records: Vec<Record>) -> Durable {
        let (done, wait) = oneshot::channel();
        let submission = Submission {
            records,
            done: Some(done),
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
) {
    let mut batch: Vec<Record> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<Result<(), Arc<StoreError>>>> = Vec::new();
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
        take(first, &mut batch, &mut waiters);
        while batch.len() < MAX_BATCH_RECORDS {
            match receiver.try_recv() {
                Ok(next) => take(next, &mut batch, &mut waiters),
                Err(_) => break,
            }
        }
        let result = store.append(&batch).await.map_err(Arc::new);
        if let Err(error) = &result {
            tracing::error!(%error, records = batch.len(), "log batch failed; nothing in it was applied");
        }
        for waiter in waiters.drain(..) {
            // A waiter that gave up (its caller was cancelled) is fine to skip.
            let _ = waiter.send(result.clone());
        }
        batch.clear();
    }
    tracing::debug!("log writer stopped");
}

fn take(
    submission: Submission,
    batch: &mut Vec<Record>,
    waiters: &mut Vec<oneshot::Sender<Result<(), Arc<StoreError>>>>,
) {
    batch.extend(submission.records);
    if let Some(done) = submission.done {
        waiters.push(done);
    }
}
