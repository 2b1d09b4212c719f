//! Backoff sleeps an operator can cut short (`concord txn retry`, the
//! `RetryTransaction` RPC): each live transaction and saga has one
//! [`Retries`]; every retry loop of its driver sleeps through it.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::sync::Notify;

#[derive(Default)]
pub struct Retries {
    now: Notify,
    /// Retries sleeping at this moment.
    waiting: AtomicU32,
}

impl Retries {
    /// Sleeps for `delay`, or less if an operator asks for the retry now.
    pub async fn sleep(&self, delay: Duration) {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = self.now.notified() => {}
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }

    /// Ends every sleep now; returns how many there were.
    pub fn now(&self) -> u32 {
        let waiting = self.waiting.load(Ordering::SeqCst);
        self.now.notify_waiters();
        waiting
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn retrying_now_ends_every_sleep_at_once() {
        let retries = Arc::new(Retries::default());
        let sleepers: Vec<_> = (0..2)
            .map(|_| {
                let retries = Arc::clone(&retries);
                tokio::spawn(async move { retries.sleep(Duration::from_secs(3600)).await })
            })
            .collect();
        while retries.waiting.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        assert_eq!(retries.now(), 2);
        for sleeper in sleepers {
            // An hour's sleep ends only if it was woken; the timeout bounds
            // a hang, it measures nothing.
            tokio::time::timeout(Duration::from_secs(30), sleeper)
                .await
                .expect("woken")
                .expect("sleeper");
        }
        assert_eq!(retries.now(), 0);
    }
}
