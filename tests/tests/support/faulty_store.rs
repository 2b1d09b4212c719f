//! A real store (SQLite or PostgreSQL) with faults injected in front of it:
//! writes that fail a number of times or until told otherwise (a full
//! disk, a database that refuses), and idempotency-key lookups that miss
//! a key another node has just written (the race window between two
//! nodes' look-ups and writes). What is not failed goes to the real store.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use concord_coordinator::model::{TxnId, TxnView};
use concord_coordinator::store::{
    Appended, Cluster, ListQuery, Record, Store, StoreError, Unfinished,
};
use futures::FutureExt;
use futures::future::BoxFuture;

pub struct FaultyStore {
    inner: Arc<dyn Store>,
    fail_next: AtomicU32,
    fail_always: AtomicBool,
    stale_key_lookups: AtomicU32,
    appends: AtomicU32,
    slow_next_ms: AtomicU32,
    ambiguous_next: AtomicU32,
}

/// What a full disk answers: ENOSPC.
fn disk_full() -> StoreError {
    StoreError::Database(sqlx::Error::Io(std::io::Error::from_raw_os_error(28)))
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Self {
        Self {
            inner,
            fail_next: AtomicU32::new(0),
            fail_always: AtomicBool::new(false),
            stale_key_lookups: AtomicU32::new(0),
            appends: AtomicU32::new(0),
            slow_next_ms: AtomicU32::new(0),
            ambiguous_next: AtomicU32::new(0),
        }
    }

    /// The next `n` writes fail, applying nothing.
    pub fn fail_next(&self, n: u32) {
        self.fail_next.store(n, Ordering::SeqCst);
    }

    /// Every write fails until called again with false.
    pub fn fail_always(&self, on: bool) {
        self.fail_always.store(on, Ordering::SeqCst);
    }

    /// The next `n` key look-ups find nothing, as if made before another
    /// node wrote the key.
    pub fn miss_keys(&self, n: u32) {
        self.stale_key_lookups.store(n, Ordering::SeqCst);
    }

    /// The next write takes `ms` longer (a slow fsync).
    pub fn slow_next(&self, ms: u32) {
        self.slow_next_ms.store(ms, Ordering::SeqCst);
    }

    /// The next `n` writes are applied, but answered as failed: a commit
    /// whose answer was lost on its way back from the database.
    pub fn lose_answers(&self, n: u32) {
        self.ambiguous_next.store(n, Ordering::SeqCst);
    }

    /// Writes attempted so far, failed or not.
    pub fn appends(&self) -> u32 {
        self.appends.load(Ordering::SeqCst)
    }

    fn take(counter: &AtomicU32) -> bool {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl Store for FaultyStore {
    fn append<'a>(&'a self, batch: &'a [Record]) -> BoxFuture<'a, Result<Appended, StoreError>> {
        self.appends.fetch_add(1, Ordering::SeqCst);
        if self.fail_always.load(Ordering::SeqCst) || Self::take(&self.fail_next) {
            return futures::future::ready(Err(disk_full())).boxed();
        }
        let slow = self.slow_next_ms.swap(0, Ordering::SeqCst);
        let ambiguous = Self::take(&self.ambiguous_next);
        async move {
            if slow > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(u64::from(slow))).await;
            }
            let appended = self.inner.append(batch).await?;
            if ambiguous {
                return Err(StoreError::Database(sqlx::Error::Io(std::io::Error::from(
                    std::io::ErrorKind::ConnectionReset,
                ))));
            }
            Ok(appended)
        }
        .boxed()
    }

    fn transaction<'a>(
        &'a self,
        id: &'a TxnId,
    ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
        self.inner.transaction(id)
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        self.inner.close()
    }

    fn id_floor(
        &self,
        before: Option<TxnId>,
        n: u32,
    ) -> BoxFuture<'_, Result<Option<TxnId>, StoreError>> {
        self.inner.id_floor(before, n)
    }

    fn by_idempotency_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
        if Self::take(&self.stale_key_lookups) {
            return futures::future::ready(Ok(None)).boxed();
        }
        self.inner.by_idempotency_key(key)
    }

    fn list<'a>(&'a self, query: &'a ListQuery) -> BoxFuture<'a, Result<Vec<TxnView>, StoreError>> {
        self.inner.list(query)
    }

    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<Unfinished>, StoreError>> {
        self.inner.unfinished()
    }

    fn changes<'a>(
        &'a self,
        after: Option<concord_coordinator::model::Cursor>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<concord_coordinator::model::Change>, StoreError>> {
        self.inner.changes(after, limit)
    }

    fn newest_change(
        &self,
    ) -> BoxFuture<'_, Result<Option<concord_coordinator::model::Cursor>, StoreError>> {
        self.inner.newest_change()
    }

    fn claim_unfinished(&self) -> BoxFuture<'_, Result<Vec<Unfinished>, StoreError>> {
        self.inner.claim_unfinished()
    }

    fn cluster(&self) -> Option<&dyn Cluster> {
        self.inner.cluster()
    }
}
