//! The decision of a transaction committed in its own Begin shares a log
//! batch with the transaction's records when it can (docs/decisions.md, "Commit
//! inside Begin"). R1 must hold when the records' own batch fails: the
//! decision may not count as durable on its own, since it then found no
//! transaction to update.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use concord_coordinator::model::{TxnId, TxnState, TxnView};
use concord_coordinator::protocol::two_phase::Outcome;
use concord_coordinator::runtime::{BeginTxn, EnlistBranch, Runtime};
use concord_coordinator::store::memory::MemoryStore;
use concord_coordinator::store::{Appended, ListQuery, Record, Store, StoreError, Unfinished};
use futures::FutureExt;
use futures::future::BoxFuture;

use super::support::{TestParticipant, eventually, quick_config};

/// The in-memory log, except that the first batch holding a Begun record
/// fails (nothing of it applied, as the Store contract says of a failure).
#[derive(Default)]
struct BegunBatchFails {
    log: MemoryStore,
    failed: AtomicBool,
}

impl Store for BegunBatchFails {
    fn append<'a>(&'a self, batch: &'a [Record]) -> BoxFuture<'a, Result<Appended, StoreError>> {
        let begun = batch.iter().any(|r| matches!(r, Record::Begun { .. }));
        if begun && !self.failed.swap(true, Ordering::SeqCst) {
            return futures::future::ready(Err(StoreError::Corrupt("disk full".into()))).boxed();
        }
        self.log.append(batch)
    }
    fn transaction<'a>(
        &'a self,
        id: &'a TxnId,
    ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
        self.log.transaction(id)
    }
    fn by_idempotency_key<'a>(
        &'a self,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
        self.log.by_idempotency_key(key)
    }
    fn list<'a>(&'a self, query: &'a ListQuery) -> BoxFuture<'a, Result<Vec<TxnView>, StoreError>> {
        self.log.list(query)
    }
    fn unfinished(&self) -> BoxFuture<'_, Result<Vec<Unfinished>, StoreError>> {
        self.log.unfinished()
    }

    fn changes<'a>(
        &'a self,
        after: Option<concord_coordinator::model::Cursor>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<concord_coordinator::model::Change>, StoreError>> {
        self.log.changes(after, limit)
    }

    fn newest_change(
        &self,
    ) -> BoxFuture<'_, Result<Option<concord_coordinator::model::Cursor>, StoreError>> {
        self.log.newest_change()
    }
}

#[tokio::test]
async fn a_failed_batch_of_the_begun_records_is_written_again_with_the_decision() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = Arc::new(BegunBatchFails::default());
    let runtime = Runtime::start(Arc::clone(&store) as Arc<dyn Store>, quick_config())
        .await
        .expect("runtime");
    let a = TestParticipant::start(dir.path(), "a", None).await;
    let b = TestParticipant::start(dir.path(), "b", None).await;
    let branch = |url: &str, script: &str| EnlistBranch {
        participant: url.to_owned(),
        payload: script.as_bytes().to_vec(),
        name: None,
    };
    // Branch a takes 3 s to prepare, so the lazily queued Begun records are
    // written (and fail) in a batch of their own, long before the decision.
    let begun = runtime
        .begin_to_commit(BeginTxn {
            branches: vec![branch(&a.url, "hang"), branch(&b.url, "commit")],
            ..Default::default()
        })
        .await
        .expect("begin");
    let committed = runtime
        .commit(begun.id, false, Some(Duration::from_secs(10)))
        .await
        .expect("commit");
    assert_eq!(committed.outcome, Outcome::Committed { read_only: false });
    assert!(
        store.failed.load(Ordering::SeqCst),
        "the Begun batch failed"
    );
    // R1: by the time the client hears COMMITTED, the log holds the
    // transaction, its branches and the decision.
    let logged = store
        .transaction(&begun.id)
        .await
        .expect("read the log")
        .expect("the transaction is in the log");
    assert!(
        matches!(logged.state, TxnState::Committing | TxnState::Committed),
        "{:?}",
        logged.state
    );
    assert_eq!(logged.branches.len(), 2);
    let id = begun.id.to_string();
    eventually("both branches commit", || async {
        (a.effects(&id).await == ["prepare", "commit"]
            && b.effects(&id).await == ["prepare", "commit"])
        .then_some(())
    })
    .await;
    runtime.shutdown().await;
}
