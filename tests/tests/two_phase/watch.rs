//! WatchTransactions over real gRPC: changes arrive live and in log order;
//! a cursor resumes with nothing missed and nothing repeated, across a
//! dropped stream and a restarted node; filters; and a consumer that does
//! not read is cut off with the cursor to resume from while transactions
//! keep committing.

use std::net::SocketAddr;

use concord_coordinator::node::{Node, NodeConfig, StoreLocation};
use concord_coordinator::runtime::RuntimeConfig;
use futures::StreamExt;

use super::*;

/// Begins, enlists a and b (b votes `vote`), commits; returns the id.
async fn transfer(s: &Setup, vote: &str) -> String {
    let id = begin(&s.client).await;
    s.client
        .enlist(&id, &s.a.url, "commit", None)
        .await
        .expect("enlist a");
    s.client
        .enlist(&id, &s.b.url, vote, None)
        .await
        .expect("enlist b");
    s.client.commit(&id).await.expect("commit");
    id
}

fn from_oldest() -> pb::WatchTransactionsRequest {
    pb::WatchTransactionsRequest {
        from_oldest: true,
        ..Default::default()
    }
}

/// (id, old state, new state) of each change, as a test compares them.
type Seen = (String, i32, i32);

fn seen(change: &pb::TransactionChange) -> Seen {
    (
        change.transaction_id.clone(),
        change.old_state,
        change.new_state,
    )
}

/// Reads `count` changes from `stream`, bounding a hang at 15 s.
async fn take<S>(stream: &mut S, count: usize) -> Vec<pb::TransactionChange>
where
    S: futures::Stream<Item = Result<pb::TransactionChange, ClientError>> + Unpin,
{
    let mut changes = Vec::with_capacity(count);
    while changes.len() < count {
        let next = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {count} changes came", changes.len()));
        changes.push(next.expect("the stream goes on").expect("a change"));
    }
    changes
}

/// Every change the log keeps, read by a fresh watch from the oldest, up
/// to the newest now (the log has `count` of them).
async fn whole_log(client: &CoordinatorClient, count: usize) -> Vec<Seen> {
    let mut all = client.watch(from_oldest()).await.expect("watch");
    take(&mut all, count).await.iter().map(seen).collect()
}

const ACTIVE: i32 = pb::TransactionState::Active as i32;
const COMMITTING: i32 = pb::TransactionState::Committing as i32;
const COMMITTED: i32 = pb::TransactionState::Committed as i32;
const ABORTED: i32 = pb::TransactionState::Aborted as i32;
const NEW: i32 = pb::TransactionState::Unspecified as i32;

#[tokio::test]
async fn a_watch_sees_each_transaction_change_live_in_log_order() {
    let s = setup().await;
    let mut watch = s
        .client
        .watch(pb::WatchTransactionsRequest::default())
        .await
        .expect("watch");
    // Its first change proves the watch is open before the work starts.
    let opened = begin(&s.client).await;
    let first = take(&mut watch, 1).await;
    assert_eq!(seen(&first[0]), (opened.clone(), NEW, ACTIVE));

    let committed = transfer(&s, "commit").await;
    until_state(&s.client, &committed, pb::TransactionState::Committed).await;
    let refused = transfer(&s, "abort").await;
    until_state(&s.client, &refused, pb::TransactionState::Aborted).await;
    // Read until both ended (an abort's ABORTING may be folded into its
    // end, so the count is not fixed).
    let mut changes = Vec::new();
    while !changes
        .iter()
        .any(|c: &pb::TransactionChange| c.transaction_id == refused && c.new_state == ABORTED)
    {
        changes.extend(take(&mut watch, 1).await);
    }
    // Each transaction's changes in order; the log may fold a state passed
    // within one write, so compare the states each one went through.
    let path = |id: &str| -> Vec<(i32, i32)> {
        changes
            .iter()
            .filter(|c| c.transaction_id == id)
            .map(|c| (c.old_state, c.new_state))
            .collect()
    };
    assert_eq!(
        path(&committed),
        [(NEW, ACTIVE), (ACTIVE, COMMITTING), (COMMITTING, COMMITTED)]
    );
    let aborted = path(&refused);
    assert_eq!(aborted.first(), Some(&(NEW, ACTIVE)));
    assert_eq!(aborted.last().map(|(_, to)| *to), Some(ABORTED));
    let cursors: Vec<&String> = first.iter().chain(&changes).map(|c| &c.cursor).collect();
    assert!(cursors.iter().all(|c| !c.is_empty()));
    let committed_change = changes
        .iter()
        .find(|c| c.new_state == COMMITTED)
        .expect("the commit's end");
    assert_eq!(committed_change.kind, pb::TransactionKind::TwoPhase as i32);
    assert!(committed_change.at_ms > 0);
}

#[tokio::test]
async fn a_cursor_resumes_a_dropped_watch_with_nothing_missed_or_repeated() {
    let s = setup().await;
    for _ in 0..3 {
        transfer(&s, "commit").await;
    }
    let mut watch = s.client.watch(from_oldest()).await.expect("watch");
    let before = take(&mut watch, 4).await;
    drop(watch);
    // Changes recorded while nobody watches.
    for _ in 0..3 {
        let id = transfer(&s, "commit").await;
        until_state(&s.client, &id, pb::TransactionState::Committed).await;
    }
    let resumed_from = before.last().expect("four changes").cursor.clone();
    let mut resumed = s
        .client
        .watch(pb::WatchTransactionsRequest {
            cursor: resumed_from,
            ..Default::default()
        })
        .await
        .expect("watch");
    let after = take(&mut resumed, 14).await;
    let mut stitched: Vec<Seen> = before.iter().map(seen).collect();
    stitched.extend(after.iter().map(seen));
    assert_eq!(stitched, whole_log(&s.client, 18).await);
}

#[tokio::test]
async fn filters_keep_only_the_changes_asked_for() {
    let s = setup().await;
    let committed = transfer(&s, "commit").await;
    until_state(&s.client, &committed, pb::TransactionState::Committed).await;
    let refused = transfer(&s, "abort").await;
    until_state(&s.client, &refused, pb::TransactionState::Aborted).await;

    let ends = |states: Vec<pb::TransactionState>| pb::WatchTransactionsRequest {
        states: states.into_iter().map(|s| s as i32).collect(),
        from_oldest: true,
        ..Default::default()
    };
    let mut committed_only = s
        .client
        .watch(ends(vec![pb::TransactionState::Committed]))
        .await
        .expect("watch");
    assert_eq!(
        seen(&take(&mut committed_only, 1).await[0]),
        (committed.clone(), COMMITTING, COMMITTED)
    );
    let mut one_id = s
        .client
        .watch(pb::WatchTransactionsRequest {
            id_prefix: refused.clone(),
            from_oldest: true,
            ..Default::default()
        })
        .await
        .expect("watch");
    let mine = take(&mut one_id, 2).await;
    assert!(mine.iter().all(|c| c.transaction_id == refused), "{mine:?}");
    // Nothing else comes: a third transaction's changes are filtered out,
    // then a change that passes arrives first.
    let third = transfer(&s, "commit").await;
    until_state(&s.client, &third, pb::TransactionState::Committed).await;
    let mut sagas_only = s
        .client
        .watch(pb::WatchTransactionsRequest {
            kind: pb::TransactionKind::Saga as i32,
            from_oldest: true,
            ..Default::default()
        })
        .await
        .expect("watch");
    let mut flagged_only = s
        .client
        .watch(pb::WatchTransactionsRequest {
            needs_attention: true,
            from_oldest: true,
            ..Default::default()
        })
        .await
        .expect("watch");
    let mut ends_only = s
        .client
        .watch(ends(vec![
            pb::TransactionState::Committed,
            pb::TransactionState::Aborted,
        ]))
        .await
        .expect("watch");
    let ended: Vec<Seen> = take(&mut ends_only, 3).await.iter().map(seen).collect();
    assert_eq!(
        ended.iter().map(|(id, ..)| id.clone()).collect::<Vec<_>>(),
        [committed, refused, third]
    );
    // No saga and nothing flagged in this log: those watches stay silent.
    for (what, stream) in [("sagas", &mut sagas_only), ("flagged", &mut flagged_only)] {
        let next = tokio::time::timeout(Duration::from_millis(300), stream.next()).await;
        assert!(next.is_err(), "the {what} watch got {next:?}");
    }

    // Bad filters are INVALID_ARGUMENT, naming the field.
    let mut raw = s.client.raw();
    for (request, field) in [
        (
            pb::WatchTransactionsRequest {
                id_prefix: "ZZ".into(),
                ..Default::default()
            },
            "id_prefix",
        ),
        (
            pb::WatchTransactionsRequest {
                cursor: "not-a-cursor".into(),
                ..Default::default()
            },
            "cursor",
        ),
        (
            pb::WatchTransactionsRequest {
                states: vec![99],
                ..Default::default()
            },
            "states",
        ),
        (
            pb::WatchTransactionsRequest {
                kind: 7,
                ..Default::default()
            },
            "kind",
        ),
    ] {
        let status = raw.watch_transactions(request).await.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{status:?}");
    }
    // A group, on a node without a shard map, is a precondition it lacks,
    // for a watch and for a listing.
    let watching = raw
        .watch_transactions(pb::WatchTransactionsRequest {
            group: "g1".into(),
            ..Default::default()
        })
        .await
        .map(|_| ());
    let listing = raw
        .list_transactions(pb::ListTransactionsRequest {
            group: "g1".into(),
            ..Default::default()
        })
        .await
        .map(|_| ());
    for answer in [watching, listing] {
        let status = answer.expect_err("refused");
        assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
        assert!(status.message().contains("no shard map"), "{status:?}");
    }
}

#[tokio::test]
async fn a_consumer_that_does_not_read_is_cut_off_with_its_cursor_while_commits_go_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let node = start_coordinator(
        &coordinator_dir,
        RuntimeConfig {
            watch_buffer: 4,
            ..quick_config()
        },
    )
    .await;
    let client = client(&node);
    let a = TestParticipant::start(dir.path(), "a", Some(&coordinator_dir)).await;
    // A client whose HTTP/2 window holds a handful of changes, so that the
    // server's buffer fills while the client reads nothing.
    let channel = tonic::transport::Endpoint::from_shared(node.url())
        .expect("url")
        .initial_stream_window_size(Some(1_024))
        .connect()
        .await
        .expect("connect");
    let mut raw = pb::coordinator_client::CoordinatorClient::new(channel);
    let mut stalled = raw
        .watch_transactions(pb::WatchTransactionsRequest::default())
        .await
        .expect("watch")
        .into_inner();
    // 60 one-branch transactions, each committed while nobody reads the
    // watch: the protocol does not wait for it.
    let mut ids = Vec::new();
    for _ in 0..60 {
        let begun = client.begin(BeginOptions::default()).await.expect("begin");
        client
            .enlist(&begun.transaction_id, &a.url, "commit", None)
            .await
            .expect("enlist");
        let outcome = client.commit(&begun.transaction_id).await.expect("commit");
        assert_eq!(outcome, Outcome::Committed { read_only: false });
        ids.push(begun.transaction_id);
    }
    // The stalled watch holds some changes, then says where to resume.
    let mut got = Vec::new();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(15), stalled.message())
            .await
            .expect("the watch answers")
        {
            Ok(Some(change)) => got.push(change),
            Ok(None) => panic!("the stream ended without a status after {}", got.len()),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::ResourceExhausted, "{ended:?}");
    let resume = ended
        .metadata()
        .get("concord-resume-cursor")
        .expect("the trailer names the cursor")
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(ended.message().contains(&resume), "{ended:?}");
    assert!(
        got.len() < 120,
        "cut off, not fed everything: {}",
        got.len()
    );
    // Resuming there gives the rest: every change exactly once.
    let mut rest = client
        .watch(pb::WatchTransactionsRequest {
            cursor: resume,
            ..Default::default()
        })
        .await
        .expect("watch");
    let total = whole_log(&client, 120).await.len();
    assert_eq!(total, 120, "two changes a transaction at least");
    let mut stitched: Vec<Seen> = got.iter().map(seen).collect();
    stitched.extend(take(&mut rest, 120 - got.len()).await.iter().map(seen));
    assert_eq!(stitched, whole_log(&client, 120).await);
    for id in &ids {
        assert_eq!(a.effects(id).await, ["prepare", "commit"]);
    }
}

#[tokio::test]
async fn a_watch_follows_a_restarted_node_from_its_cursor() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let addr: SocketAddr = support::processes::free_addr();
    let start = |dir: std::path::PathBuf| async move {
        Node::start(NodeConfig {
            runtime: quick_config(),
            ..NodeConfig::new(addr, StoreLocation::DataDir(dir))
        })
        .await
        .expect("coordinator starts")
    };
    let node = start(coordinator_dir.clone()).await;
    let client = client(&node);
    let a = TestParticipant::start(dir.path(), "a", Some(&coordinator_dir)).await;
    let one = |client: CoordinatorClient, a_url: String| async move {
        let begun = client.begin(BeginOptions::default()).await.expect("begin");
        client
            .enlist(&begun.transaction_id, &a_url, "commit", None)
            .await
            .expect("enlist");
        client.commit(&begun.transaction_id).await.expect("commit");
    };
    let mut watch = client.watch(from_oldest()).await.expect("watch");
    one(client.clone(), a.url.clone()).await;
    let before = take(&mut watch, 2).await;

    // The node stops (its watches end UNAVAILABLE, with their cursor) and
    // comes back on the same address and log; the SDK's stream reconnects.
    node.shutdown().await.expect("shutdown");
    let node = start(coordinator_dir.clone()).await;
    for _ in 0..2 {
        one(client.clone(), a.url.clone()).await;
    }
    let after = take(&mut watch, 4).await;
    let mut stitched: Vec<Seen> = before.iter().map(seen).collect();
    stitched.extend(after.iter().map(seen));
    assert_eq!(stitched, whole_log(&client, 6).await);
    drop(node);
}

#[tokio::test]
async fn a_watch_of_what_comes_next_misses_nothing_when_its_connection_breaks_before_its_first_change()
 {
    let s = setup().await;
    // The watch goes through a proxy that can cut its connection (no
    // status, as a network failure); transactions begin directly.
    let target: SocketAddr = s
        ._node
        .url()
        .trim_start_matches("http://")
        .parse()
        .expect("the node's address");
    let proxy = support::proxy::Proxy::start(target).await;
    let through_proxy = CoordinatorClient::connect(proxy.url()).expect("client");
    let earlier = begin(&s.client).await;
    let mut watch = through_proxy
        .watch(pb::WatchTransactionsRequest::default())
        .await
        .expect("watch");

    // Cut before any change reached it, and held cut while a transaction
    // begins: the SDK's reconnect reaches the node only after it.
    proxy.partition(true, true);
    proxy.drop_connections();
    let after = begin(&s.client).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    proxy.heal();
    // The watch resumes from where it started, not from the next change
    // at its reconnect: the new transaction is its first change.
    let first = take(&mut watch, 1).await;
    assert_eq!(seen(&first[0]), (after, NEW, ACTIVE), "not {earlier}");
}

/// DESIGN §12: a node serves at most `--max-watches` watches at once;
/// past it a new one is RESOURCE_EXHAUSTED naming the flag, and once a
/// client goes, its place is free again.
#[tokio::test]
async fn past_max_watches_a_new_watch_is_refused_until_one_ends() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(NodeConfig {
        limits: concord_coordinator::api::Limits {
            max_watches: 2,
            ..Default::default()
        },
        ..super::support::node_config(&dir.path().join("coordinator"))
    })
    .await
    .expect("node");
    let client = support::client(&node);
    let mut raw = client.raw();
    let first = raw
        .watch_transactions(from_oldest())
        .await
        .expect("first watch");
    let _second = raw
        .watch_transactions(from_oldest())
        .await
        .expect("second watch");
    let refused = raw
        .watch_transactions(from_oldest())
        .await
        .expect_err("a third");
    assert_eq!(
        refused.code(),
        tonic::Code::ResourceExhausted,
        "{refused:?}"
    );
    assert!(refused.message().contains("--max-watches"), "{refused:?}");
    drop(first);
    support::eventually("a place for a new watch", || {
        let mut raw = raw.clone();
        async move { raw.watch_transactions(from_oldest()).await.ok() }
    })
    .await;
}
