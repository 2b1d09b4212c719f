//! WatchTransactions' feed: one tailer per node reads the log's change feed
//! ([`Store::changes`](crate::store::Store::changes)) and hands each change to every watch; a watch first
//! catches up from the log, so that a cursor from an earlier stream misses
//! nothing the log keeps, then follows the tailer.
//!
//! Nothing here waits for a watcher, so no watcher can slow the protocol:
//! the tailer broadcasts without blocking (a watch that lags behind it
//! reads what it missed from the log), and a watch whose client does not
//! keep up (its bounded buffer full) ends, naming the cursor to resume
//! from. The tailer runs only while someone watches. On a shared store it
//! sees every node's changes, since they are all in the one log.

use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio::sync::{broadcast, mpsc};

use crate::model::{Change, Cursor};
use crate::runtime::shared::{Runtime, Shared};
use crate::store::StoreError;

pub(crate) mod feed;

use feed::{Fed, PAGE, POLL_OWN, POLL_SHARED, READ_AT_MOST_EVERY};
pub use feed::{WATCH_BUFFER, WatchEnd, WatchFilter, WatchStart};

impl Runtime {
    /// Starts a watch: the changes `filter` admits, from `start` on, then
    /// as they are recorded, each once and in log order. The stream ends
    /// with a [`WatchEnd`] (or simply stops when the receiver is dropped).
    ///
    /// A watch of the next change reads where the log ends before it
    /// returns, so that it sees every change recorded after the call.
    pub async fn watch(
        &self,
        filter: WatchFilter,
        start: WatchStart,
    ) -> Result<mpsc::Receiver<Result<Change, WatchEnd>>, StoreError> {
        let start = self.watch_start(start).await?;
        let (client, changes) = mpsc::channel(self.shared.config.watch_buffer.max(1));
        let shared = Arc::clone(&self.shared);
        // Subscribed before the catch-up reads the log, so that nothing
        // recorded meanwhile falls between the two.
        let live = shared.feed.fanout.subscribe();
        ensure_tailer(&shared);
        let stop = shared.watches_end.clone();
        self.shared.tasks.spawn(async move {
            let mut watch = Watch {
                shared,
                filter,
                client,
                dealt: None,
            };
            let ended = tokio::select! {
                ended = watch.run(start, live) => ended,
                () = stop.cancelled() => Some(WatchEnd::ShuttingDown { resume: watch.dealt }),
            };
            if let Some(end) = ended {
                watch.end(end).await;
            }
        });
        Ok(changes)
    }

    /// Where a watch from `start` begins in the log: the next change is
    /// the one after the newest recorded now (from the oldest kept when the
    /// log has none yet). A watch of every group (DESIGN §11) learns each
    /// group's start this way, to resume from it.
    pub async fn watch_start(&self, start: WatchStart) -> Result<WatchStart, StoreError> {
        Ok(match start {
            WatchStart::Next => match self.shared.store.newest_change().await? {
                Some(newest) => WatchStart::After(newest),
                None => WatchStart::Oldest,
            },
            start => start,
        })
    }

    /// Ends every watch (UNAVAILABLE, with its resume cursor): a node
    /// stopping its server does so first, since the server waits for open
    /// streams to end.
    pub fn end_watches(&self) {
        self.shared.watches_end.cancel();
    }
}

/// One watch's task.
struct Watch {
    shared: Arc<Shared>,
    filter: WatchFilter,
    client: mpsc::Sender<Result<Change, WatchEnd>>,
    /// The last change handed to the client or filtered out.
    dealt: Option<Cursor>,
}

impl Watch {
    /// Catches up from the log, then follows the tailer. Returns why it
    /// ended, or None when the client went away.
    async fn run(
        &mut self,
        start: WatchStart,
        mut live: broadcast::Receiver<Arc<Fed>>,
    ) -> Option<WatchEnd> {
        let mut after = match start {
            WatchStart::After(cursor) => Some(cursor),
            // `Runtime::watch` resolved Next already.
            WatchStart::Oldest | WatchStart::Next => None,
        };
        self.dealt = after;
        loop {
            if let Err(end) = self.catch_up(&mut after).await {
                return end;
            }
            loop {
                tokio::select! {
                    () = self.client.closed() => return None,
                    fed = live.recv() => match fed {
                        Ok(fed) => {
                            let change = &fed.change;
                            if after.is_some_and(|seen| change.cursor <= seen) {
                                continue; // already read from the log
                            }
                            if fed.previous > after {
                                break; // a gap: the log has it
                            }
                            after = Some(change.cursor);
                            if let Err(end) = self.deal(change) {
                                return end;
                            }
                        }
                        // Behind the tailer: what it missed is in the log.
                        Err(broadcast::error::RecvError::Lagged(_)) => break,
                        Err(broadcast::error::RecvError::Closed) => {
                            return Some(WatchEnd::ShuttingDown { resume: self.dealt });
                        }
                    },
                }
            }
        }
    }

    /// Reads the log after `after` until it has nothing more.
    async fn catch_up(&mut self, after: &mut Option<Cursor>) -> Result<(), Option<WatchEnd>> {
        loop {
            let page = match self.shared.store.changes(*after, PAGE).await {
                Ok(page) => page,
                Err(error) => return Err(Some(self.store_failed(error))),
            };
            let full = page.len() == PAGE as usize;
            for change in page {
                *after = Some(change.cursor);
                self.deal(&change)?;
            }
            if !full {
                return Ok(());
            }
        }
    }

    /// Hands `change` to the client if the filter admits it, without ever
    /// waiting for the client.
    fn deal(&mut self, change: &Change) -> Result<(), Option<WatchEnd>> {
        if self.filter.admits(change) {
            match self.client.try_send(Ok(change.clone())) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(Some(WatchEnd::FellBehind {
                        buffer: self.client.max_capacity(),
                        resume: self.dealt,
                    }));
                }
                Err(mpsc::error::TrySendError::Closed(_)) => return Err(None),
            }
        }
        self.dealt = Some(change.cursor);
        Ok(())
    }

    fn store_failed(&self, error: StoreError) -> WatchEnd {
        WatchEnd::Store {
            resume: self.dealt,
            error,
        }
    }

    /// Tells the client why its watch ended, once it has read what is
    /// buffered; a client that reads nothing more for a while, or a node
    /// that stops, ends the wait. A node stopping does not wait at all: the
    /// server's graceful stop waits for this stream, and a client that
    /// reads nothing must not hold it up (it resumes from its last change).
    async fn end(self, end: WatchEnd) {
        if matches!(end, WatchEnd::ShuttingDown { .. }) {
            let _ = self.client.try_send(Err(end));
            return;
        }
        tokio::select! {
            _ = self.client.send(Err(end)) => {}
            () = tokio::time::sleep(Duration::from_secs(30)) => {}
            () = self.shared.watches_end.cancelled() => {}
        }
    }
}

/// Starts the tailer unless it runs.
fn ensure_tailer(shared: &Arc<Shared>) {
    let mut running = shared
        .feed
        .running
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if *running {
        return;
    }
    *running = true;
    shared.tasks.spawn(tail(Arc::clone(shared)));
}

/// Reads the log's new changes and hands them to every watch, while anyone
/// watches. Starts at the newest change: a watch catches up by itself.
async fn tail(shared: Arc<Shared>) {
    let written = shared.log.written();
    let poll = if shared.store.cluster().is_some() {
        POLL_SHARED
    } else {
        POLL_OWN
    };
    let retry = || {
        ExponentialBuilder::default()
            .with_min_delay(READ_AT_MOST_EVERY)
            .with_max_delay(Duration::from_secs(2))
            .with_jitter()
            .without_max_times()
            .build()
    };
    let mut backoff = retry();
    let mut after = None;
    let mut started = false;
    loop {
        {
            // Checked under the lock a new watch takes to start the
            // tailer, so that none subscribes unseen as this one stops.
            let mut running = shared
                .feed
                .running
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if shared.feed.fanout.receiver_count() == 0 || shared.shutdown.is_cancelled() {
                *running = false;
                return;
            }
        }
        let read = if started {
            shared.store.changes(after, PAGE).await
        } else {
            shared.store.newest_change().await.map(|newest| {
                after = newest;
                started = true;
                Vec::new()
            })
        };
        let more = match read {
            Ok(page) => {
                backoff = retry();
                let full = page.len() == PAGE as usize;
                for change in page {
                    let previous = after.replace(change.cursor);
                    // No receiver left: the check above ends the tailer.
                    let _ = shared.feed.fanout.send(Arc::new(Fed { previous, change }));
                }
                full
            }
            Err(error) => {
                tracing::warn!(%error, "watch feed: cannot read the log's changes; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff.next().unwrap_or(POLL_OWN)) => {}
                    () = shared.shutdown.cancelled() => return,
                }
                continue;
            }
        };
        if more {
            continue;
        }
        tokio::select! {
            () = written.notified() => {
                // Reads coalesce writes that come close together.
                tokio::time::sleep(READ_AT_MOST_EVERY).await;
            }
            () = tokio::time::sleep(poll) => {}
            () = shared.shutdown.cancelled() => {}
        }
    }
}
