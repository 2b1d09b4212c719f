//! Two groups of one node each (DESIGN §11, as built so far: a static shard
//! map), each with its own SQLite log: transactions spread over both by
//! their shard, a call that reaches the wrong group is forwarded to the
//! right one, each transaction is in its own group's log only, and no node
//! presumes another group's transaction aborted.

use std::net::SocketAddr;

use concord_coordinator::model::TxnId;
use concord_coordinator::node::{Node, NodeConfig, StoreLocation};
use concord_coordinator::runtime::Sharding;
use concord_coordinator::shard::{Group, Shard, ShardMap};
use concord_participant::{BeginOptions, BranchSpec, Outcome};

use super::support::processes::free_addr;
use super::*;

struct Groups {
    dir: tempfile::TempDir,
    map: ShardMap,
    g1: Node,
    g2: Node,
    a: TestParticipant,
    b: TestParticipant,
}

impl Groups {
    fn log(&self, group: &str) -> std::path::PathBuf {
        self.dir.path().join(group)
    }
}

/// 16 shards: 0–7 group g1's, 8–15 group g2's, from the founding on.
async fn two_groups() -> Groups {
    let dir = tempfile::tempdir().expect("temp dir");
    let (addr1, addr2) = (free_addr(), free_addr());
    let group = |name: &str, addr: SocketAddr| Group {
        name: name.into(),
        nodes: vec![format!("http://{addr}")],
    };
    let mut map = ShardMap::new(16, group("g1", addr1), 0)
        .and_then(|map| map.with_group(group("g2", addr2)))
        .expect("a map");
    for shard in 8..16 {
        map = map.with_move(Shard(shard), "g2", 1).expect("a move");
    }
    let start = |name: &'static str, addr: SocketAddr| {
        let sharding = Sharding::new(map.clone(), name.into()).expect("a group of the map");
        let data = dir.path().join(name);
        async move {
            Node::start(NodeConfig {
                runtime: concord_coordinator::runtime::RuntimeConfig {
                    sharding: Some(sharding),
                    ..quick_config()
                },
                ..NodeConfig::new(addr, StoreLocation::DataDir(data))
            })
            .await
            .expect("node starts")
        }
    };
    let g1 = start("g1", addr1).await;
    let g2 = start("g2", addr2).await;
    let a = TestParticipant::start(dir.path(), "a", None).await;
    let b = TestParticipant::start(dir.path(), "b", None).await;
    Groups {
        dir,
        map,
        g1,
        g2,
        a,
        b,
    }
}

#[tokio::test]
async fn transactions_spread_over_two_groups_and_every_call_reaches_the_right_one() {
    let g = two_groups().await;
    // Every client talks to g1's node only.
    let client = client(&g.g1);
    let mut ids = Vec::new();
    for i in 0..24 {
        let key = format!("transfer-{i}");
        let begun = client
            .begin(BeginOptions {
                idempotency_key: Some(key.clone()),
                ..BeginOptions::default()
            })
            .await
            .expect("begin");
        let id = begun.transaction_id.clone();
        // Enlist and Commit go to g1's node too, forwarded when the
        // transaction is g2's.
        client
            .enlist(&id, &g.a.url, "commit", Some("a"))
            .await
            .expect("enlist a");
        client
            .enlist(&id, &g.b.url, "commit", Some("b"))
            .await
            .expect("enlist b");
        assert_eq!(
            client.commit(&id).await.expect("commit"),
            Outcome::Committed { read_only: false }
        );
        ids.push((Some(key), id));
    }
    for _ in 0..8 {
        let (begun, outcome) = client
            .begin_and_commit(BeginOptions {
                branches: vec![
                    BranchSpec {
                        participant: g.a.url.clone(),
                        payload: b"commit".to_vec(),
                        name: Some("a".into()),
                    },
                    BranchSpec {
                        participant: g.b.url.clone(),
                        payload: b"commit".to_vec(),
                        name: Some("b".into()),
                    },
                ],
                ..BeginOptions::default()
            })
            .await
            .expect("begin and commit");
        assert_eq!(outcome, Outcome::Committed { read_only: false });
        ids.push((None, begun.transaction_id));
    }

    let mut per_group = std::collections::HashMap::<&str, usize>::new();
    for (key, id) in &ids {
        let txn: TxnId = id.parse().expect("an id");
        let group = g.map.group_of(txn);
        *per_group.entry(group).or_default() += 1;
        match key {
            // A keyed transaction lives on its key's shard...
            Some(key) => assert_eq!(g.map.shard_of(txn), Some(g.map.shard_for_key(key))),
            // ...a keyless one on a shard of the node that began it.
            None => assert_eq!(group, "g1", "keyless {id} was begun on g1's node"),
        }
        let other = if group == "g1" { "g2" } else { "g1" };
        // In its own group's log, ended, and in the other group's not at all.
        until_logged(&g.log(group), id, "committed").await;
        assert_eq!(coordinator_state(&g.log(other), id).await, None, "{id}");
        // Each participant prepared and committed it once.
        assert_eq!(g.a.effects(id).await, ["prepare", "commit"], "{id}");
        assert_eq!(g.b.effects(id).await, ["prepare", "commit"], "{id}");
        // Asked through either node, its outcome is its group's: never
        // presumed aborted by a node whose log does not hold it (R2).
        for node in [&g.g1, &g.g2] {
            assert_eq!(
                super::client(node).outcome(id).await.expect("outcome"),
                Outcome::Committed { read_only: false },
                "{id} through {}",
                node.url()
            );
            let seen = super::client(node)
                .transaction(id)
                .await
                .expect("get transaction");
            assert_eq!(seen.state, pb::TransactionState::Committed as i32, "{id}");
            // And says where it lives (`concord txn show` prints it).
            let shard = g.map.shard_of(txn).map(|s| u32::from(s.0));
            assert_eq!((seen.group.as_str(), Some(seen.shard)), (group, shard));
        }
    }
    assert!(
        per_group.get("g2").copied().unwrap_or(0) >= 4 && per_group["g1"] >= 8,
        "the keys spread over both groups: {per_group:?}"
    );

    // A keyed Begin retried through the other group's node finds the first
    // transaction (R7 across groups).
    for (key, id) in ids.iter().filter(|(key, _)| key.is_some()).take(6) {
        let again = super::client(&g.g2)
            .begin(BeginOptions {
                idempotency_key: key.clone(),
                ..BeginOptions::default()
            })
            .await
            .expect("begin again");
        assert_eq!((&again.transaction_id, again.created), (id, false));
    }
}

/// Waits until `id`'s row in the SQLite log at `dir` says `state` (its end
/// record is lazy).
async fn until_logged(dir: &std::path::Path, id: &str, state: &str) {
    eventually(&format!("{id} {state} in {}", dir.display()), || async {
        (coordinator_state(dir, id).await.as_deref() == Some(state)).then_some(())
    })
    .await;
}
