//! The coordinator's store contract (`concord_coordinator::store::contract`)
//! against the PostgreSQL store, on a real server started by the harness
//! (`support::postgres`). SQLite and the in-memory store run the same
//! cases as unit tests of the coordinator crate. Then what only a shared
//! store has: leases, takeover and fencing (DESIGN §6).

#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;

use std::time::Duration;

use concord_coordinator::model::{TxnId, TxnState};
use concord_coordinator::store::contract::{ALL, Open, SHARDED};
use concord_coordinator::store::postgres::{Membership, PostgresStore};
use concord_coordinator::store::{Cluster, Lease, Record, Store};
use futures::FutureExt;
use support::postgres::Postgres;

/// Opens the store on `url`; calling it again reconnects to the same data.
fn opener(url: String) -> Open {
    Box::new(move || {
        let url = url.clone();
        async move {
            let store = PostgresStore::open_url(&url).await.expect("open store");
            Arc::new(store) as Arc<dyn Store>
        }
        .boxed()
    })
}

#[tokio::test]
async fn the_postgres_store_keeps_the_store_contract() {
    let server = Postgres::start().await;
    for (idx, (name, case)) in ALL.iter().chain(SHARDED).enumerate() {
        // A fresh database per case, like a fresh file for SQLite.
        let url = server.database(&format!("contract_{idx}")).await;
        eprintln!("store contract on PostgreSQL: {name}");
        case(opener(url)).await;
    }
}

/// A node on `url` named `name`, with a short lease so that tests expire it
/// without waiting long.
async fn node(url: &str, name: &str) -> PostgresStore {
    let membership = Membership {
        name: name.into(),
        address: format!("http://{name}.invalid:7400"),
        lease: LEASE,
    };
    PostgresStore::open(url, membership).await.expect("join")
}

const LEASE: Duration = Duration::from_millis(300);

fn begun(id: TxnId) -> Record {
    Record::Begun {
        id,
        created_at_ms: 1_000,
        deadline_ms: 600_000,
        idempotency_key: None,
        request_digest: None,
        description: None,
    }
}

fn enlisted(id: TxnId, idx: u32) -> Record {
    Record::Enlisted {
        id,
        idx,
        name: format!("b{idx}"),
        participant: "http://127.0.0.1:1".into(),
        payload: vec![idx as u8],
    }
}

async fn state(store: &PostgresStore, id: TxnId) -> TxnState {
    store
        .transaction(&id)
        .await
        .expect("read")
        .expect("exists")
        .state
}

#[tokio::test]
async fn a_node_taken_over_past_its_lease_can_no_longer_write_and_learns_it() {
    let server = Postgres::start().await;
    let url = server.database("fencing").await;
    let a = node(&url, "a").await;
    let b = node(&url, "b").await;
    let x = TxnId::mint();
    a.append(&[begun(x), enlisted(x, 0)])
        .await
        .expect("a writes");
    let owner = b.owner_of(&x).await.expect("read").expect("owned");
    assert!(owner.live && !owner.is_self);
    assert_eq!(owner.address, "http://a.invalid:7400");

    // b keeps renewing; a does not (it is "paused"). Past a's lease b
    // declares it gone and takes its transaction over.
    tokio::time::sleep(LEASE + Duration::from_millis(200)).await;
    assert_eq!(b.renew().await.expect("renew"), Lease::Held);
    assert_eq!(b.expire_others().await.expect("expire"), 1);
    let claimed = b.claim_unfinished().await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].view.id, x);
    assert_eq!(claimed[0].payloads, vec![vec![0u8]]);
    let owner = b.owner_of(&x).await.expect("read").expect("owned");
    assert!(owner.is_self && owner.live);

    // a wakes up and tries to decide COMMIT, in a batch that also begins a
    // new transaction: the decision is refused, the new one is written.
    let y = TxnId::mint();
    let appended = a
        .append(&[
            Record::Decided {
                id: x,
                at_ms: 2_000,
            },
            begun(y),
        ])
        .await
        .expect("the batch commits");
    assert_eq!(appended.fenced, vec![x]);
    assert_eq!(state(&b, x).await, TxnState::Active, "nothing flipped");
    assert_eq!(state(&b, y).await, TxnState::Active);
    // ...and renewing tells it it is gone.
    assert_eq!(a.renew().await.expect("renew"), Lease::Lost);

    // The new owner decides; its writes go through at the raised epoch.
    let appended = b
        .append(&[Record::Aborting {
            id: x,
            at_ms: 3_000,
            reason: "taken over undecided".into(),
        }])
        .await
        .expect("b writes");
    assert!(appended.fenced.is_empty());
    assert_eq!(state(&b, x).await, TxnState::Aborting);
    let (epoch,): (i64,) = sqlx::query_as("SELECT epoch FROM transactions WHERE id = $1")
        .bind(x.to_string())
        .fetch_one(b.pool())
        .await
        .expect("epoch");
    assert_eq!(epoch, 1);
}

#[tokio::test]
async fn a_restart_under_the_same_name_takes_over_at_once_and_fences_the_old_start() {
    let server = Postgres::start().await;
    let url = server.database("restart").await;
    let old = node(&url, "n1").await;
    let x = TxnId::mint();
    old.append(&[begun(x), enlisted(x, 0)])
        .await
        .expect("write");
    old.append(&[Record::Decided {
        id: x,
        at_ms: 2_000,
    }])
    .await
    .expect("decide");

    // No waiting for the lease: the new start replaces the old one.
    let new = node(&url, "n1").await;
    let claimed = new.claim_unfinished().await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].view.state, TxnState::Committing);
    assert_eq!(old.renew().await.expect("renew"), Lease::Lost);
    let ended = Record::Ended {
        id: x,
        state: TxnState::Committed,
        at_ms: 3_000,
        read_only: false,
        reason: None,
        branches: Vec::new(),
        steps: Vec::new(),
    };
    assert_eq!(
        old.append(std::slice::from_ref(&ended))
            .await
            .expect("batch")
            .fenced,
        vec![x]
    );
    assert_eq!(state(&new, x).await, TxnState::Committing);
    assert!(new.append(&[ended]).await.expect("batch").fenced.is_empty());
    assert_eq!(state(&new, x).await, TxnState::Committed);
    // Nothing left to claim; a node that left is taken over at once.
    assert!(new.claim_unfinished().await.expect("claim").is_empty());
}

#[tokio::test]
async fn a_node_that_leaves_hands_its_transactions_over_without_waiting() {
    let server = Postgres::start().await;
    let url = server.database("leave").await;
    let a = node(&url, "a").await;
    let b = node(&url, "b").await;
    let x = TxnId::mint();
    a.append(&[begun(x)]).await.expect("write");
    assert!(
        b.claim_unfinished().await.expect("claim").is_empty(),
        "a is live"
    );
    a.leave().await.expect("leave");
    let claimed = b.claim_unfinished().await.expect("claim");
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].view.id, x);
}

/// R7 across nodes (issue 17 item 4). Each node serialises its own keyed
/// Begins, but two nodes can both find a key free and both write it: the
/// race is staged by letting node B's look-up miss the key node A has just
/// written. B's write is refused by the unique index; only B's Begin fails
/// (a transaction queued with it is written), and B then answers with A's
/// transaction, as a retry would have; with another request under the key
/// it answers ALREADY_EXISTS.
#[tokio::test]
async fn two_nodes_racing_one_idempotency_key_answer_with_the_winners_transaction() {
    use concord_coordinator::runtime::{BeginTxn, Error, Runtime};
    use support::faulty_store::FaultyStore;

    let server = Postgres::start().await;
    let url = server.database("key_race").await;
    let a = node(&url, "a").await;
    let b = Arc::new(FaultyStore::new(Arc::new(node(&url, "b").await)));
    let runtime = Runtime::start(Arc::clone(&b) as Arc<dyn Store>, support::quick_config())
        .await
        .expect("runtime on node b");

    // Node A wins the key.
    let winner = TxnId::mint();
    let keyed = |id: TxnId, digest: &str| Record::Begun {
        id,
        created_at_ms: 1_000,
        deadline_ms: 600_000,
        idempotency_key: Some("order-9".into()),
        request_digest: Some(digest.into()),
        description: None,
    };
    a.append(&[keyed(winner, "same")]).await.expect("a writes");

    // Node B looked before A wrote, and writes too, while an unkeyed Begin
    // is queued with it (usually in the same batch).
    b.miss_keys(1);
    let begin = |digest: &str| BeginTxn {
        idempotency_key: Some("order-9".into()),
        request_digest: Some(digest.into()),
        ..BeginTxn::default()
    };
    let (raced, other) = tokio::join!(
        runtime.begin(begin("same")),
        runtime.begin(BeginTxn::default())
    );
    let raced = raced.expect("the loser answers with the winner");
    assert_eq!((raced.id, raced.created), (winner, false));
    let other = other.expect("the other Begin is written");
    assert_eq!(state(&a, other.id).await, TxnState::Active);
    // One transaction holds the key, and it is A's.
    let by_key = a
        .by_idempotency_key("order-9")
        .await
        .expect("look up")
        .expect("found");
    assert_eq!(by_key.id, winner);

    // The same race with another request under the key.
    b.miss_keys(1);
    match runtime.begin(begin("other")).await {
        Err(Error::KeyReused { id, .. }) => assert_eq!(id, winner),
        other => panic!("expected KeyReused, got {other:?}"),
    }
    runtime.shutdown().await;
}

/// R2 for an ambiguous Begin (issue 17 item 5): the commit of a Begin's
/// records reaches PostgreSQL but its answer is lost, so the node forgets
/// the transaction and tells its client UNAVAILABLE, while the row stands
/// ACTIVE, owned by a node that is alive (no takeover will come). The
/// owner finds it by itself and ends it, aborted, without a restart.
#[tokio::test]
async fn a_begin_whose_commit_answer_was_lost_is_aborted_by_its_own_node() {
    use concord_coordinator::runtime::{BeginTxn, EnlistBranch, Error, Runtime};
    use support::faulty_store::FaultyStore;

    let server = Postgres::start().await;
    let url = server.database("lost_answer").await;
    let observer = node(&url, "observer").await;
    let store = Arc::new(FaultyStore::new(Arc::new(node(&url, "owner").await)));
    let runtime = Runtime::start(
        Arc::clone(&store) as Arc<dyn Store>,
        support::quick_config(),
    )
    .await
    .expect("runtime");

    store.lose_answers(1);
    let begun = runtime
        .begin(BeginTxn {
            branches: vec![EnlistBranch {
                participant: "http://127.0.0.1:1".into(),
                payload: b"debit".to_vec(),
                name: Some("debit".into()),
            }],
            ..BeginTxn::default()
        })
        .await;
    assert!(matches!(begun, Err(Error::Unavailable(_))), "{begun:?}");
    // The row is there all the same, ACTIVE.
    let listed = observer
        .list(&concord_coordinator::store::ListQuery {
            limit: 10,
            ..Default::default()
        })
        .await
        .expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0].id;
    assert_eq!(listed[0].state, TxnState::Active);
    // Its own node ends it: aborted, with the reason, its branch too.
    support::eventually("the orphaned row is aborted", || async {
        (state(&observer, id).await == TxnState::Aborted).then_some(())
    })
    .await;
    let view = observer
        .transaction(&id)
        .await
        .expect("read")
        .expect("found");
    assert!(
        view.reason
            .as_deref()
            .is_some_and(|r| r.contains("presumed aborted")),
        "{view:?}"
    );
    assert_eq!(
        view.branches.iter().map(|b| b.state).collect::<Vec<_>>(),
        [concord_coordinator::model::BranchState::Aborted]
    );
    runtime.shutdown().await;
}

/// WatchTransactions on a cluster: a watch on one node sees every node's
/// transactions, each change once, since they are all in the one log; the
/// feed reads only rows no running writer can still precede, so changes
/// that two nodes commit at once neither vanish nor come twice.
#[tokio::test]
async fn a_watch_on_one_node_sees_every_nodes_transactions_once() {
    use concord_coordinator::node::{Node, NodeConfig, StoreLocation};
    use concord_participant::{BeginOptions, CoordinatorClient};
    use concord_proto::v1 as pb;
    use futures::StreamExt;

    let server = Postgres::start().await;
    let url = server.database("watch_cluster").await;
    let start = |name: &'static str| {
        let url = url.clone();
        async move {
            Node::start(NodeConfig {
                runtime: support::quick_config(),
                node_name: Some(name.into()),
                lease: Duration::from_secs(5),
                ..NodeConfig::new(
                    std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
                    StoreLocation::Url(url),
                )
            })
            .await
            .expect("node starts")
        }
    };
    let (a, b) = (start("a").await, start("b").await);
    let (on_a, on_b) = (
        CoordinatorClient::connect(a.url()).expect("client a"),
        CoordinatorClient::connect(b.url()).expect("client b"),
    );
    let mut watch = on_b
        .watch(pb::WatchTransactionsRequest {
            states: vec![pb::TransactionState::Aborted as i32],
            ..Default::default()
        })
        .await
        .expect("watch on b");

    // Both nodes write at once: 20 transactions each, begun and rolled back.
    let work = |client: CoordinatorClient| async move {
        let mut ids = Vec::new();
        for _ in 0..20 {
            let id = client
                .begin(BeginOptions::default())
                .await
                .expect("begin")
                .transaction_id;
            client.rollback(&id, "watched").await.expect("rollback");
            ids.push(id);
        }
        ids
    };
    let (from_a, from_b) = tokio::join!(work(on_a), work(on_b.clone()));
    let mut expected: Vec<String> = from_a.into_iter().chain(from_b).collect();
    expected.sort();

    let mut seen = Vec::new();
    let mut cursors = Vec::new();
    while seen.len() < expected.len() {
        let change = tokio::time::timeout(Duration::from_secs(15), watch.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {} ends came", seen.len(), expected.len()))
            .expect("the stream goes on")
            .expect("a change");
        assert_eq!(change.new_state, pb::TransactionState::Aborted as i32);
        cursors.push(change.cursor.clone());
        seen.push(change.transaction_id);
    }
    seen.sort();
    assert_eq!(seen, expected, "every node's transactions, each once");
    // And nothing more: no change comes twice.
    let extra = tokio::time::timeout(Duration::from_millis(500), watch.next()).await;
    assert!(extra.is_err(), "an extra change: {extra:?}");
    drop((a, b));
}

/// DESIGN §11 step 2: the database refuses a new transaction row its copy
/// of the map gives to another group, and a new idempotency key of a shard
/// leaving this group within the margin, whatever the node believed.
#[tokio::test]
async fn the_postgres_log_refuses_another_groups_transactions() {
    use concord_coordinator::shard::{Group, MARGIN_MS, Shard, ShardMap};

    let server = Postgres::start().await;
    let url = server.database("fence").await;
    let store = PostgresStore::open_url(&url).await.expect("open store");
    let group = |name: &str| Group {
        name: name.into(),
        nodes: vec![format!("http://{name}.invalid:7400")],
    };
    // Before any map, any row goes in (a deployment of one group).
    let loose = TxnId::mint().with_rand_a(12);
    store.append(&[begun(loose)]).await.expect("no map yet");
    let now = concord_coordinator::model::now_ms();
    // Shards 0–7 g1's, 8–15 g2's; shard 1 moves to g2 within the margin.
    let map = ShardMap::split(16, vec![group("g1"), group("g2")], 0)
        .and_then(|map| map.with_move(Shard(1), "g2", now + MARGIN_MS / 2))
        .expect("a map");
    store.put_shard_map("g1", &map).await.expect("put");
    let keyed = |id: TxnId| Record::Begun {
        id,
        created_at_ms: 1_000,
        deadline_ms: 600_000,
        idempotency_key: Some(format!("key-{id}")),
        request_digest: None,
        description: None,
    };
    let mine = map.stamp(TxnId::mint(), Shard(2));
    store.append(&[keyed(mine)]).await.expect("g1's own shard");
    for (what, record) in [
        ("g2's shard", begun(map.stamp(TxnId::mint(), Shard(12)))),
        (
            "a key of the shard leaving",
            keyed(map.stamp(TxnId::mint(), Shard(1))),
        ),
    ] {
        let error = store
            .append(std::slice::from_ref(&record))
            .await
            .expect_err(what);
        assert!(error.is_refused_record(), "{what}: {error}");
        assert!(
            store
                .transaction(&record.txn_id())
                .await
                .expect("read")
                .is_none(),
            "{what}"
        );
    }
    // Without a key, the shard's id minted before the switch is still g1's.
    let keyless = map.stamp(TxnId::mint(), Shard(1));
    store
        .append(&[begun(keyless)])
        .await
        .expect("keyless, before the switch");
}

/// DESIGN §12, S5: a database whose default is `synchronous_commit = off`
/// (a commit acknowledged before it reaches the disk) cannot make the
/// coordinator's decisions non-durable: every session of its pool turns
/// it back on.
#[tokio::test]
async fn the_coordinators_sessions_commit_synchronously_whatever_the_servers_default() {
    let server = Postgres::start().await;
    let url = server.database("sync_off").await;
    let admin = sqlx::PgPool::connect(&url).await.expect("connect");
    sqlx::query("ALTER DATABASE sync_off SET synchronous_commit = off")
        .execute(&admin)
        .await
        .expect("turn it off");
    let fresh = sqlx::PgPool::connect(&url).await.expect("connect");
    let (default,): (String,) = sqlx::query_as("SHOW synchronous_commit")
        .fetch_one(&fresh)
        .await
        .expect("show");
    assert_eq!(default, "off", "the database's default for new sessions");
    let store = PostgresStore::open_url(&url).await.expect("open store");
    for _ in 0..3 {
        let (setting,): (String,) = sqlx::query_as("SHOW synchronous_commit")
            .fetch_one(store.pool())
            .await
            .expect("show");
        assert_eq!(setting, "on");
    }
}
