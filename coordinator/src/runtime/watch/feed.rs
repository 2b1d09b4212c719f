//! What a watch is made of, apart from the tasks that run it: its filter,
//! where it starts and why it ends, the buffer and paging limits, and the
//! node's one fan-out of changes ([`Feed`]) that every watch follows.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast;

use crate::model::{Change, Cursor, TxnKind, TxnState};
use crate::store::StoreError;

/// Changes a watch may hold for a client that is slow to read them
/// (`RuntimeConfig::watch_buffer`); past it, the watch ends with the cursor
/// to resume from.
pub const WATCH_BUFFER: usize = 1024;

/// Changes read from the log in one go.
pub(in crate::runtime) const PAGE: u32 = 512;

/// Changes the tailer keeps for watches between their reads; one that
/// falls further behind reads what it missed from the log.
pub(in crate::runtime) const FANOUT: usize = 4096;

/// How often the tailer looks for changes other nodes wrote (a shared
/// store), and at most how often it reads after this node's writes.
pub(in crate::runtime) const POLL_SHARED: Duration = Duration::from_millis(200);
pub(in crate::runtime) const POLL_OWN: Duration = Duration::from_secs(1);
pub(in crate::runtime) const READ_AT_MOST_EVERY: Duration = Duration::from_millis(20);

/// Which changes a watch wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchFilter {
    /// Changes leaving the transaction in one of these; empty: any.
    pub states: Vec<TxnState>,
    pub kind: Option<TxnKind>,
    /// Only changes of transactions flagged NEEDS_ATTENTION.
    pub needs_attention: bool,
    /// Only ids starting with this.
    pub id_prefix: String,
}

impl WatchFilter {
    pub fn admits(&self, change: &Change) -> bool {
        (self.states.is_empty() || self.states.contains(&change.to))
            && self.kind.is_none_or(|kind| kind == change.kind)
            && (!self.needs_attention || change.needs_attention)
            && (self.id_prefix.is_empty()
                || change.id.to_string().starts_with(self.id_prefix.as_str()))
    }
}

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WatchStart {
    /// After this change (a cursor from an earlier stream).
    After(Cursor),
    /// With the next change recorded.
    Next,
    /// With the oldest change the log keeps.
    Oldest,
}

/// Why a watch ended. Each names the cursor to resume from: the last change
/// the watch dealt with (handed to the client or filtered out), None when
/// it dealt with none.
#[derive(Debug, thiserror::Error)]
pub enum WatchEnd {
    #[error("the watch fell more than {buffer} changes behind its client")]
    FellBehind {
        buffer: usize,
        resume: Option<Cursor>,
    },
    #[error("the node is shutting down")]
    ShuttingDown { resume: Option<Cursor> },
    #[error("the log could not be read: {error}")]
    Store {
        resume: Option<Cursor>,
        error: StoreError,
    },
}

impl WatchEnd {
    pub fn resume(&self) -> Option<Cursor> {
        match self {
            Self::FellBehind { resume, .. }
            | Self::ShuttingDown { resume }
            | Self::Store { resume, .. } => *resume,
        }
    }
}

/// One change as the tailer hands it out, with the change the tailer read
/// before it: a watch that has not seen that one may have missed some (the
/// tailer started after the watch caught up), and reads the log again.
pub(in crate::runtime) struct Fed {
    pub(in crate::runtime) previous: Option<Cursor>,
    pub(in crate::runtime) change: Change,
}

/// The node's tailer: its fan-out, and whether it runs.
pub(crate) struct Feed {
    pub(in crate::runtime) fanout: broadcast::Sender<Arc<Fed>>,
    pub(in crate::runtime) running: std::sync::Mutex<bool>,
}

impl Default for Feed {
    fn default() -> Self {
        Self {
            fanout: broadcast::channel(FANOUT).0,
            running: std::sync::Mutex::new(false),
        }
    }
}
