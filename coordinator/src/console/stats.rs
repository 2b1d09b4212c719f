//! The console's chart: transactions ended per second (committed, aborted,
//! compensated) over the last minutes, and the p50/p99 of how long they
//! took, from their first change in the log to their last. Fed by a watch
//! of every change (the API's, as a client's), so that on a cluster it
//! counts every node's transactions and with several groups every group's;
//! bounded in memory whatever the load.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_proto::v1 as pb;
use concord_proto::v1::coordinator_server::Coordinator;
use futures::StreamExt;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic::Request;

use crate::api::{CoordinatorService, convert};
use crate::model::{TxnId, TxnState};

/// Seconds the chart shows.
pub const WINDOW_SECONDS: usize = 300;
/// Durations kept per second for the percentiles (the first ones).
const SAMPLES_PER_SECOND: usize = 500;
/// Transactions whose start is remembered until they end; past it the
/// oldest are forgotten (their duration is then not sampled).
const OPEN_AT_MOST: usize = 100_000;

/// One second of the chart.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Second {
    /// Milliseconds since the Unix epoch, at the second's start.
    pub at_ms: u64,
    /// COMMITTED (2PC), COMPLETED (saga) and DELIVERED (message).
    pub committed: u32,
    /// ABORTED (2PC) and DROPPED (message).
    pub aborted: u32,
    /// COMPENSATED and FAILED sagas.
    pub compensated: u32,
    #[serde(skip)]
    durations_ms: Vec<u64>,
}

/// What `/api/stats` answers.
#[derive(Debug, Serialize)]
pub struct Snapshot {
    pub seconds: Vec<Second>,
    /// Over the whole window; 0 without samples.
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub samples: usize,
}

#[derive(Default)]
struct Tally {
    seconds: VecDeque<Second>,
    /// When each open transaction's first change was recorded.
    began: HashMap<TxnId, u64>,
    began_order: VecDeque<TxnId>,
}

pub struct Stats {
    tally: Mutex<Tally>,
}

impl Stats {
    /// Starts following the log's changes (every group's, in a deployment
    /// of several) until `stop`.
    pub fn follow(service: Arc<CoordinatorService>, stop: CancellationToken) -> Arc<Self> {
        let stats = Arc::new(Self {
            tally: Mutex::new(Tally::default()),
        });
        let fed = Arc::clone(&stats);
        tokio::spawn(async move {
            tokio::select! {
                () = fed.feed(&service) => {}
                () = stop.cancelled() => {}
            }
        });
        stats
    }

    /// Watches every change from now on through the service (as a client's
    /// WatchTransactions: every group's when there are several), and again
    /// from where it ended whenever its watch ends (it fell behind, the log
    /// or a group could not be read).
    async fn feed(&self, service: &CoordinatorService) {
        use backon::BackoffBuilder;
        let retry = || {
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(10))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let mut backoff = retry();
        // Empty: from the next change.
        let mut cursor = String::new();
        loop {
            let request = pb::WatchTransactionsRequest {
                cursor: cursor.clone(),
                ..Default::default()
            };
            let mut request = Request::new(request);
            // Other groups' nodes check it, as they would a client's.
            if let Some(bearer) = service.credentials().own_bearer() {
                request.metadata_mut().insert("authorization", bearer);
            }
            let mut changes = match service.watch_transactions(request).await {
                Ok(changes) => changes.into_inner(),
                Err(status) => {
                    tracing::warn!(code = ?status.code(), reason = status.message(),
                        "console chart: cannot watch the log; retrying");
                    tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(10))).await;
                    continue;
                }
            };
            while let Some(item) = changes.next().await {
                match item {
                    Ok(change) => {
                        backoff = retry();
                        cursor.clone_from(&change.cursor);
                        self.note_wire(&change);
                    }
                    Err(status) => {
                        if let Some(resume) = status
                            .metadata()
                            .get(concord_proto::metadata::RESUME_CURSOR)
                            .and_then(|value| value.to_str().ok())
                        {
                            resume.clone_into(&mut cursor);
                        }
                        break;
                    }
                }
            }
            tokio::time::sleep(backoff.next().unwrap_or(Duration::from_secs(10))).await;
        }
    }

    /// A change as the API streams it.
    fn note_wire(&self, change: &pb::TransactionChange) {
        let (Ok(id), Some(to)) = (
            change.transaction_id.parse::<TxnId>(),
            convert::state_from_wire(change.new_state),
        ) else {
            return; // a start mark, or a state this build does not know
        };
        let from = convert::state_from_wire(change.old_state);
        self.note(id, from, to, change.at_ms);
    }

    fn note(&self, id: TxnId, from: Option<TxnState>, to: TxnState, at_ms: u64) {
        let mut tally = self.lock();
        // A transaction whose whole life was one write (its first change
        // already terminal) is counted but not timed: the log saw no start.
        if from.is_none() && !to.is_terminal() {
            tally.began.insert(id, at_ms);
            tally.began_order.push_back(id);
            while tally.began_order.len() > OPEN_AT_MOST {
                if let Some(oldest) = tally.began_order.pop_front() {
                    tally.began.remove(&oldest);
                }
            }
        }
        if from == Some(to) || !to.is_terminal() {
            return;
        }
        let began = tally.began.remove(&id);
        let second_ms = at_ms - at_ms % 1_000;
        if tally
            .seconds
            .back()
            .is_none_or(|last| last.at_ms < second_ms)
        {
            tally.seconds.push_back(Second {
                at_ms: second_ms,
                ..Second::default()
            });
            while tally.seconds.len() > WINDOW_SECONDS {
                tally.seconds.pop_front();
            }
        }
        // A change of an earlier second (another node's clock) counts in
        // the newest second rather than reordering the chart.
        let Some(second) = tally.seconds.back_mut() else {
            return;
        };
        match to {
            TxnState::Committed | TxnState::Completed | TxnState::Delivered => {
                second.committed += 1;
            }
            TxnState::Aborted | TxnState::Dropped => second.aborted += 1,
            _ => second.compensated += 1,
        }
        if let Some(began) = began
            && second.durations_ms.len() < SAMPLES_PER_SECOND
        {
            second.durations_ms.push(at_ms.saturating_sub(began));
        }
    }

    pub fn snapshot(&self) -> Snapshot {
        let tally = self.lock();
        let mut durations: Vec<u64> = tally
            .seconds
            .iter()
            .flat_map(|second| second.durations_ms.iter().copied())
            .collect();
        durations.sort_unstable();
        let at = |p: f64| {
            if durations.is_empty() {
                return 0;
            }
            let idx = ((durations.len() - 1) as f64 * p).round() as usize;
            durations[idx.min(durations.len() - 1)]
        };
        Snapshot {
            seconds: tally.seconds.iter().cloned().collect(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            samples: durations.len(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Tally> {
        self.tally
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
