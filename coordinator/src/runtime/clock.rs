//! Where the runtime reads the wall clock and gets new transaction ids.
//!
//! Production uses [`SystemClock`]: the system clock and UUIDv7 ids. A
//! deterministic simulation supplies its own clock (simulated time, ids from
//! a counter), so that one seed decides every value a run produces. Timers
//! and deadlines use `tokio::time`, which a simulation already controls.

use std::fmt::Debug;

use crate::model::{TxnId, now_ms};

pub trait Clock: Debug + Send + Sync + 'static {
    /// Milliseconds since the Unix epoch: creation, decision and end stamps,
    /// and transaction timeouts (R5).
    fn now_ms(&self) -> u64;

    /// A new transaction id, ordered after every id minted before it (R7).
    fn mint(&self) -> TxnId;
}

/// The system clock and UUIDv7 ids.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn mint(&self) -> TxnId {
        TxnId::mint()
    }
}
