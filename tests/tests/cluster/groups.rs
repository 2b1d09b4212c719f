//! Several groups of nodes routing by one shard map (DESIGN §11).
//!
//! - A group of two nodes on one PostgreSQL beside a group of one node on
//!   SQLite, in process: a call that crosses to the PostgreSQL group
//!   reaches whichever of its nodes the map names for the transaction's
//!   shard, which need not be the node that owns it; that node forwards it
//!   once more, within its group, to the owner; and when the node the map
//!   names is down, the call goes to the group's next node.
//! - Two groups of two `concord serve` processes, each group on a
//!   PostgreSQL of its own, bank transfers (keyed, spread over both
//!   groups' shards, sent to any node) under load, one node of each group
//!   killed with SIGKILL, then half of group 1's shards moved to group 2
//!   with `concord shards move`: every transaction is in the log of the
//!   group the final map gives it to and no other (those of the moved
//!   shards in group 1's before the switch, group 2's after), no key began
//!   two transactions, a key retried across the move finds its first
//!   transaction, what a client was told stands, the banks applied exactly
//!   the committed transfers, and no money appears or vanishes.

use concord_coordinator::model::TxnId;
use concord_coordinator::node::{Node, NodeConfig, StoreLocation};
use concord_coordinator::runtime::{RuntimeConfig, Sharding};
use concord_coordinator::shard::{Group, ShardMap};
use support::TestParticipant;

use super::*;
use crate::{Told, Transfer, check_banks, collect, node_args, start_bank};

#[tokio::test]
async fn a_call_crossing_groups_reaches_the_owner_even_when_another_node_of_its_group_gets_it() {
    let postgres = Postgres::start().await;
    let url = postgres.database("groups").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let (g1, b1, b2) = (free_addr(), free_addr(), free_addr());
    let http = |addr: SocketAddr| format!("http://{addr}");
    // Shards 0–7 are g1's, 8–15 g2's; g2's calls go to b1 or b2 by shard.
    let map = ShardMap::split(
        16,
        vec![
            Group {
                name: "g1".into(),
                nodes: vec![http(g1)],
            },
            Group {
                name: "g2".into(),
                nodes: vec![http(b1), http(b2)],
            },
        ],
        0,
    )
    .expect("a map");
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

    // b1 stops; b2's transactions whose shard the map gives to b1 first
    // still commit through g1: b1 refuses the connection, so g1 tries b2.
    let (_, b2_addr, _) = &g2_nodes[1];
    let on_b2 = CoordinatorClient::connect(http(*b2_addr)).expect("client");
    let mut named_b1 = Vec::new();
    while named_b1.len() < 3 {
        let id = on_b2
            .begin(BeginOptions::default())
            .await
            .expect("begin on b2")
            .transaction_id;
        let txn: TxnId = id.parse().expect("an id");
        if map.nodes_of(txn)[usize::from(txn.rand_a()) % 2] == http(b1) {
            named_b1.push(id);
        }
    }
    let (_, _, b1_node) = g2_nodes.remove(0);
    b1_node.shutdown().await.expect("b1 stops");
    for id in &named_b1 {
        through_g1
            .enlist(id, &a.url, "commit", Some("a"))
            .await
            .expect("enlist through g1, b1 down");
        assert_eq!(
            through_g1
                .commit(id)
                .await
                .expect("commit through g1, b1 down"),
            Outcome::Committed { read_only: false },
            "{id}"
        );
    }
}

/// The node processes of two groups, each group two `concord serve` nodes
/// on a PostgreSQL of its own, routing by one shard map file.
struct TwoGroups {
    dir: tempfile::TempDir,
    _postgres: [Postgres; 2],
    urls: [String; 2],
    map: ShardMap,
    map_file: std::path::PathBuf,
    /// Nodes 0 and 1 are g1's, 2 and 3 g2's.
    nodes: [SocketAddr; 4],
    banks: [SocketAddr; 2],
}

impl TwoGroups {
    async fn new() -> Self {
        let postgres = [Postgres::start().await, Postgres::start().await];
        let urls = [
            postgres[0].database("concord").await,
            postgres[1].database("concord").await,
        ];
        let nodes = [free_addr(), free_addr(), free_addr(), free_addr()];
        let group = |name: &str, members: &[SocketAddr]| Group {
            name: name.into(),
            nodes: members.iter().map(|a| format!("http://{a}")).collect(),
        };
        let map = ShardMap::split(
            16,
            vec![group("g1", &nodes[..2]), group("g2", &nodes[2..])],
            0,
        )
        .expect("a map");
        let dir = tempfile::tempdir().expect("temp dir");
        let map_file = dir.path().join("shards.json");
        std::fs::write(&map_file, serde_json::to_string(&map).expect("json")).expect("map file");
        Self {
            dir,
            _postgres: postgres,
            urls,
            map,
            map_file,
            nodes,
            banks: [free_addr(), free_addr()],
        }
    }

    async fn node(&self, node: usize) -> Proc {
        let group = node / 2;
        let mut args = node_args(node, self.nodes[node], &self.urls[group], LEASE_MS);
        args.extend([
            "--shard-map".to_owned(),
            self.map_file.display().to_string(),
            "--group".to_owned(),
            ["g1", "g2"][group].to_owned(),
        ]);
        let exe = env!("CARGO_BIN_EXE_concord-failpoints");
        let log = self.dir.path().join(format!("node{node}.log"));
        Proc::start_logged(
            &format!("node{node}"),
            exe,
            &args,
            None,
            self.nodes[node],
            Some(&log),
        )
        .await
    }

    /// Clients moving one cent from alice to bob until `stop`, each
    /// transfer one keyed Begin that commits. Even clients send to the
    /// nodes in turn (the nodes forward what is another group's); odd ones
    /// route by the shard map themselves (`connect_groups`). A failed call
    /// is retried with the same key on the next node (R7), so the client
    /// learns its transaction's id and outcome when any node answers.
    fn load(&self, clients: usize, stop: &CancellationToken) -> Vec<JoinHandle<Vec<Transfer>>> {
        let urls: Vec<String> = self.nodes.iter().map(|a| format!("http://{a}")).collect();
        let each: Arc<Vec<CoordinatorClient>> = Arc::new(
            urls.iter()
                .map(|url| {
                    CoordinatorClient::connect(url.clone())
                        .expect("client")
                        .with_timeout(Duration::from_secs(5))
                })
                .collect(),
        );
        let routed = CoordinatorClient::connect_groups(urls.clone())
            .expect("client")
            .with_timeout(Duration::from_secs(5));
        let routed = Arc::new(vec![routed; urls.len()]);
        let banks = self.banks.map(|addr| format!("http://{addr}"));
        (0..clients)
            .map(|client| {
                let nodes = if client % 2 == 0 {
                    Arc::clone(&each)
                } else {
                    Arc::clone(&routed)
                };
                let (banks, stop) = (banks.clone(), stop.clone());
                tokio::spawn(async move {
                    let mut done = Vec::new();
                    let mut turn = client;
                    while !stop.is_cancelled() {
                        let key = format!("transfer-{client}-{turn}");
                        for attempt in 0..nodes.len() {
                            let on = &nodes[(turn + attempt) % nodes.len()];
                            match on.begin_and_commit(one_cent(&key, &banks)).await {
                                Ok((begun, outcome)) => {
                                    let told = match outcome {
                                        Outcome::Committed { .. } => Told::Committed,
                                        Outcome::Aborted { .. } => Told::Aborted,
                                        Outcome::Undecided => Told::Unknown,
                                    };
                                    done.push(Transfer {
                                        id: begun.transaction_id,
                                        told,
                                    });
                                    break;
                                }
                                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                            }
                        }
                        turn += 1;
                    }
                    done
                })
            })
            .collect()
    }

    /// Each group's transactions, id to state, once none is unfinished.
    async fn ended(&self) -> [HashMap<String, String>; 2] {
        let mut states = [HashMap::new(), HashMap::new()];
        for (group, url) in self.urls.iter().enumerate() {
            let db = PgPool::connect(url).await.expect("connect");
            eventually(
                &format!("every transaction of g{} ends", group + 1),
                || async {
                    let (unfinished,): (i64,) = sqlx::query_as(
                        "SELECT COUNT(*) FROM transactions
                     WHERE state IN ('active', 'committing', 'aborting')",
                    )
                    .fetch_one(&db)
                    .await
                    .ok()?;
                    (unfinished == 0).then_some(())
                },
            )
            .await;
            states[group] =
                sqlx::query_as::<_, (String, String)>("SELECT id, state FROM transactions")
                    .fetch_all(&db)
                    .await
                    .expect("states")
                    .into_iter()
                    .collect();
        }
        states
    }
}

/// One cent from alice (bank a) to bob (bank b), begun with `key`.
fn one_cent(key: &str, banks: &[String; 2]) -> BeginOptions {
    let leg = |bank: &String, account: &str, delta: i64, name: &str| BranchSpec {
        participant: bank.clone(),
        payload: concord_example_bank::Movement {
            account: account.into(),
            delta,
        }
        .to_payload(),
        name: Some(name.into()),
    };
    BeginOptions {
        idempotency_key: Some(key.to_owned()),
        branches: vec![
            leg(&banks[0], "alice", -1, "debit"),
            leg(&banks[1], "bob", 1, "credit"),
        ],
        ..BeginOptions::default()
    }
}

/// The shards `concord shards move` gives g2 under load: half of g1's.
const MOVED: [u16; 4] = [0, 1, 2, 3];

#[tokio::test]
async fn two_groups_each_on_its_own_postgres_lose_nothing_when_nodes_die_and_shards_move() {
    let groups = TwoGroups::new().await;
    let _a = start_bank(groups.dir.path(), "a", groups.banks[0], None).await;
    let _b = start_bank(groups.dir.path(), "b", groups.banks[1], None).await;
    let _n0 = groups.node(0).await;
    let n1 = groups.node(1).await;
    let _n2 = groups.node(2).await;
    let n3 = groups.node(3).await;
    let node = |n: usize| {
        CoordinatorClient::connect(format!("http://{}", groups.nodes[n])).expect("client")
    };
    let banks = groups.banks.map(|addr| format!("http://{addr}"));

    let stop = CancellationToken::new();
    let load = groups.load(8, &stop);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // One node of each group dies; its group's other node takes its
    // transactions over after the lease.
    n1.kill().await;
    n3.kill().await;
    // A transfer of a shard about to move, committed in g1 before the move.
    let key = (0..)
        .map(|i| format!("before-the-move-{i}"))
        .find(|key| MOVED.contains(&groups.map.shard_for_key(key).0))
        .expect("a key");
    let (before, _) = node(0)
        .begin_and_commit(one_cent(&key, &banks))
        .await
        .expect("a transfer before the move");
    // Half of g1's shards move to g2 under load, through the surviving
    // nodes (the map still names the dead ones: the tool tries each).
    let moving = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .args([
            "shards",
            "--coordinator",
            &format!("http://{}", groups.nodes[0]),
        ])
        .arg("move")
        .args(MOVED.map(|shard| shard.to_string()))
        .args(["--to", "g2", "--switch-in-ms", "4000"])
        .output()
        .await
        .expect("run concord shards move");
    let told = String::from_utf8_lossy(&moving.stdout);
    assert!(
        moving.status.success(),
        "concord shards move failed: {}\n{told}",
        String::from_utf8_lossy(&moving.stderr)
    );
    // The transfer's key, retried through g2 after the move, finds the
    // transaction g1 logged (its key handed over), not a second one.
    let again = node(2)
        .begin(one_cent(&key, &banks))
        .await
        .expect("the key again, after the move");
    assert_eq!(
        (&again.transaction_id, again.created),
        (&before.transaction_id, false)
    );
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    stop.cancel();
    let transfers = collect(load).await;

    // The map every node follows now, from g1's database.
    let db = PgPool::connect(&groups.urls[0]).await.expect("connect");
    let (body,): (String,) =
        sqlx::query_as("SELECT body FROM shard_maps ORDER BY version DESC LIMIT 1")
            .fetch_one(&db)
            .await
            .expect("the stored map");
    let map: ShardMap = serde_json::from_str(&body).expect("a map");
    let switch_ms = map.owners[0].last().expect("an owner").from_ms;
    for shard in MOVED {
        let history = &map.owners[usize::from(shard)];
        assert_eq!(
            history.iter().map(|o| o.group.as_str()).collect::<Vec<_>>(),
            ["g1", "g2"],
            "shard {shard}"
        );
        assert_eq!(history[1].from_ms, switch_ms);
    }

    let states = groups.ended().await;
    let mut committed = HashSet::new();
    let mut per_group = [0usize; 2];
    for transfer in &transfers {
        let txn: TxnId = transfer.id.parse().expect("an id");
        let group = usize::from(map.group_of(txn) == "g2");
        // In its own group's log, and not in the other's.
        let state = states[group]
            .get(&transfer.id)
            .unwrap_or_else(|| panic!("{} is not in g{}'s log", transfer.id, group + 1));
        assert!(
            !states[1 - group].contains_key(&transfer.id),
            "{} is in both groups' logs",
            transfer.id
        );
        match (transfer.told, state.as_str()) {
            (Told::Committed, "committed") | (Told::Aborted, "aborted") => {}
            (Told::Unknown, "committed" | "aborted") => {}
            (told, state) => panic!("{}: told {told:?}, ended {state}", transfer.id),
        }
        per_group[group] += 1;
    }
    // Every transaction either log holds, those no client heard of too, is
    // that group's by the map: no group logged another's, before or after
    // the switch. And the moved shards had transactions on both sides of
    // it: g1's before, g2's after.
    let mut moved_sides = [0usize; 2];
    for (group, group_states) in states.iter().enumerate() {
        for id in group_states.keys() {
            let txn: TxnId = id.parse().expect("an id");
            assert_eq!(
                map.group_of(txn),
                ["g1", "g2"][group],
                "{id} is in g{}'s log",
                group + 1
            );
            if map
                .shard_of(txn)
                .is_some_and(|shard| MOVED.contains(&shard.0))
            {
                assert_eq!(txn.unix_ms() >= switch_ms, group == 1, "{id}");
                moved_sides[group] += 1;
            }
        }
    }
    assert!(
        moved_sides[0] > 0 && moved_sides[1] > 0,
        "the moved shards' transactions on both sides of the switch: {moved_sides:?}"
    );
    // No idempotency key began two transactions, in one log or across both
    // (R7 across the move).
    let mut keys = HashMap::new();
    for (group, url) in groups.urls.iter().enumerate() {
        let db = PgPool::connect(url).await.expect("connect");
        let rows: Vec<(String, String)> = sqlx::query_as(
            "SELECT idempotency_key, id FROM transactions WHERE idempotency_key IS NOT NULL",
        )
        .fetch_all(&db)
        .await
        .expect("keys");
        for (key, id) in rows {
            if let Some(first) = keys.insert(key.clone(), (group, id.clone())) {
                panic!("key {key} began {first:?} and {id} in g{}", group + 1);
            }
        }
    }
    // The banks must match every committed transaction of either log.
    for group_states in &states {
        committed.extend(
            group_states
                .iter()
                .filter(|(_, state)| *state == "committed")
                .map(|(id, _)| id.clone()),
        );
    }
    assert!(
        per_group[0] > 0 && per_group[1] > 0,
        "transfers in both groups: {per_group:?}"
    );
    assert!(!committed.is_empty());
    check_banks(groups.dir.path(), &committed).await;
    let mut taken_over = [0i64; 2];
    for (group, url) in groups.urls.iter().enumerate() {
        let db = PgPool::connect(url).await.expect("connect");
        (taken_over[group],) = sqlx::query_as("SELECT COUNT(*) FROM transactions WHERE epoch > 0")
            .fetch_one(&db)
            .await
            .expect("count");
    }
    eprintln!(
        "transfers: {} (g1 {}, g2 {}), committed {}, taken over by the survivors \
         {taken_over:?}, in the moved shards before/after the switch {moved_sides:?}; {}",
        transfers.len(),
        per_group[0],
        per_group[1],
        committed.len(),
        told.trim()
    );
}
