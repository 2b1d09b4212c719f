//! Starting the runtime: the shared state built, the node's group settled
//! with its database (§11), and every background task spawned on the one
//! tracker — recovery, the sweeper, the doubtful writes' check, the
//! pruner, the lease keeper (§6), the shard map's follower. Above every
//! other module of the runtime; nothing imports it.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::runtime::groups::{follow, settle};
use crate::runtime::lease::keep;
use crate::runtime::log::LogWriter;
use crate::runtime::message::live::Orders;
use crate::runtime::participants::Participants;
use crate::runtime::recovery::recover;
use crate::runtime::shared::{Runtime, RuntimeConfig, Shared};
use crate::runtime::sweep::{end_doubtful_writes, prune, sweep};
use crate::runtime::watch::feed::Feed;
use crate::store::{Store, StoreError};

impl Runtime {
    /// Starts the log writer and the sweeper, and loads every unfinished
    /// transaction from the store in the background, finishing them while
    /// new requests are served. Until a transaction is loaded, calls about it
    /// are answered from the store (GetOutcome: its decision, or presumed
    /// abort for one that never decided, which recovery will abort) or
    /// UNAVAILABLE "not loaded yet; retry" (Enlist, Commit, Rollback).
    pub async fn start(store: Arc<dyn Store>, config: RuntimeConfig) -> Result<Self, StoreError> {
        // First, before any task is spawned: a database that refuses the
        // node's group stops the start with nothing left running.
        let placement = settle(&*store, config.sharding.clone()).await?;
        let tasks = TaskTracker::new();
        let shutdown = CancellationToken::new();
        let log = LogWriter::start(Arc::clone(&store), &tasks, shutdown.clone());
        let participants = Participants::new(
            config.connect_timeout,
            config.advertised_url.clone(),
            config.dialer.clone(),
            config.peer_tls.clone(),
        )
        .with_signer(config.signer.clone())
        .with_batching(config.batch_calls, tasks.clone(), shutdown.clone());
        let watches_end = shutdown.child_token();
        let shared = Arc::new(Shared {
            config,
            store,
            log,
            participants,
            live: DashMap::default(),
            sagas: DashMap::default(),
            messages: DashMap::default(),
            orders: Orders::default(),
            recovered: tokio::sync::watch::channel(false).0,
            keys: Mutex::new(HashMap::new()),
            doubtful: Mutex::new(Vec::new()),
            begin_keys: tokio::sync::Mutex::new(()),
            tasks,
            shutdown,
            lease_lost: CancellationToken::new(),
            draining: CancellationToken::new(),
            recovery_backlog: std::sync::atomic::AtomicUsize::new(0),
            begun_while_recovering: Mutex::new(Some(HashSet::new())),
            feed: Feed::default(),
            watches_end,
            placement,
        });
        let runtime = Self { shared };
        runtime
            .shared
            .tasks
            .spawn(recover(Arc::clone(&runtime.shared)));
        runtime
            .shared
            .tasks
            .spawn(sweep(Arc::clone(&runtime.shared)));
        runtime
            .shared
            .tasks
            .spawn(end_doubtful_writes(Arc::clone(&runtime.shared)));
        if runtime.shared.config.retention.is_some() {
            runtime
                .shared
                .tasks
                .spawn(prune(Arc::clone(&runtime.shared)));
        }
        if runtime.shared.store.cluster().is_some() {
            runtime
                .shared
                .tasks
                .spawn(keep(Arc::clone(&runtime.shared)));
        }
        if runtime.shared.placement.is_some() {
            runtime
                .shared
                .tasks
                .spawn(follow(Arc::clone(&runtime.shared)));
        }
        Ok(runtime)
    }
}
