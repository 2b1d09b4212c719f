//! A group of two nodes on one PostgreSQL beside a group of one node on
//! SQLite (DESIGN §11, a static shard map): a call that crosses to the
//! PostgreSQL group reaches whichever of its nodes the map names for the
//! transaction's shard, which need not be the node that owns it; that node
//! forwards it once more, within its group, to the owner.

use concord_coordinator::model::TxnId;
use concord_coordinator::node::{Node, NodeConfig, StoreLocation};
use concord_coordinator::runtime::{RuntimeConfig, Sharding};
use concord_coordinator::shard::{Group, Shard, ShardMap};
use support::TestParticipant;

use super::*;

#[tokio::test]
async fn a_call_crossing_groups_reaches_the_owner_even_when_another_node_of_its_group_gets_it() {
    let postgres = Postgres::start().await;
    let url = postgres.database("groups").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (g1, b1, b2) = (free_addr(), free_addr(), free_addr());
    let http = |addr: SocketAddr| format!("http://{addr}");
    // Shards 0–7 are g1's, 8–15 g2's; g2's calls go to b1 or b2 by shard.
    let mut map = ShardMap::new(
        16,
        Group {
            name: "g1".into(),
            nodes: vec![http(g1)],
        },
        0,
    )
    .and_then(|map| {
        map.with_group(Group {
            name: "g2".into(),
            nodes: vec![http(b1), http(b2)],
        })
    })
    .expect("a map");
    for shard in 8..16 {
        map = map.with_move(Shard(shard), "g2", 1).expect("a move");
    }
    let runtime = |group: &str| RuntimeConfig {
        sharding: Some(Sharding::new(map.clone(), group.into()).expect("a group")),
        ..support::quick_config()
    };
    let g1_node = Node::start(NodeConfig {
        runtime: runtime("g1"),
        ..NodeConfig::new(g1, StoreLocation::DataDir(dir.path().join("g1")))
    })
    .await
    .expect("g1 starts");
    let mut g2_nodes = Vec::new();
    for (name, addr) in [("b1", b1), ("b2", b2)] {
        let node = Node::start(NodeConfig {
            runtime: runtime("g2"),
            node_name: Some(name.into()),
            ..NodeConfig::new(addr, StoreLocation::Url(url.clone()))
        })
        .await
        .expect("a g2 node starts");
        g2_nodes.push((name, addr, node));
    }
    let a = TestParticipant::start(dir.path(), "a", None).await;
    let b = TestParticipant::start(dir.path(), "b", None).await;

    // Each g2 node begins transactions, which it owns; none is committed yet.
    let mut begun = Vec::new();
    for (name, addr, _) in &g2_nodes {
        let on = CoordinatorClient::connect(http(*addr)).expect("client");
        for _ in 0..8 {
            let id = on
                .begin(BeginOptions {
                    branches: ["a", "b"]
                        .iter()
                        .zip([&a.url, &b.url])
                        .map(|(branch, participant)| BranchSpec {
                            participant: participant.clone(),
                            payload: b"commit".to_vec(),
                            name: Some((*branch).into()),
                        })
                        .collect(),
                    ..BeginOptions::default()
                })
                .await
                .expect("begin on a g2 node")
                .transaction_id;
            begun.push((*name, *addr, id));
        }
    }

    // Committed through g1's node: each call crosses to the g2 node the map
    // names for the shard, and from there, when that is not the owner, to
    // the owner.
    let through_g1 = CoordinatorClient::connect(g1_node.url()).expect("client");
    let (mut direct, mut second_hop) = (0, 0);
    for (_, owner, id) in &begun {
        let txn: TxnId = id.parse().expect("an id");
        assert_eq!(map.group_of(txn), "g2", "{id} was begun in g2");
        let named = &map.nodes_of(txn)[usize::from(txn.rand_a()) % 2];
        if *named == http(*owner) {
            direct += 1;
        } else {
            second_hop += 1;
        }
        assert_eq!(
            through_g1.commit(id).await.expect("commit through g1"),
            Outcome::Committed { read_only: false },
            "{id}"
        );
    }
    assert!(
        direct > 0 && second_hop > 0,
        "both paths taken: {direct} direct, {second_hop} with a second hop"
    );
    // Each ended committed in g2's log, applied once at each bank.
    let db = PgPool::connect(&url).await.expect("connect");
    for (_, _, id) in &begun {
        eventually(&format!("{id} ends committed"), || async {
            let (state,): (String,) =
                sqlx::query_as("SELECT state FROM transactions WHERE id = $1")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .ok()?;
            (state == "committed").then_some(())
        })
        .await;
        assert_eq!(a.effects(id).await, ["prepare", "commit"], "{id}");
        assert_eq!(b.effects(id).await, ["prepare", "commit"], "{id}");
    }
}
