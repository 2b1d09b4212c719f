//! Two groups of one node each (DESIGN §11), each with its own SQLite log:
//! transactions spread over both by their shard, a call that reaches the
//! wrong group is forwarded to the right one, each transaction is in its
//! own group's log only, and no node presumes another group's transaction
//! aborted. A shard moved with `concord shards move` keeps its
//! transactions where they were and its keys: a Begin retried across the
//! move finds its first transaction, through either group.

use std::net::SocketAddr;

use concord_coordinator::model::{TxnId, now_ms};
use concord_coordinator::node::{Node, NodeConfig, StoreLocation};
use concord_coordinator::runtime::Sharding;
use concord_coordinator::shard::{Group, ShardMap};
use concord_participant::{BeginOptions, BranchSpec, ClientError, CoordinatorClient, Outcome};

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
    let map = ShardMap::split(16, vec![group("g1", addr1), group("g2", addr2)], 0).expect("a map");
    let g1 = group_node(&map, "g1", dir.path()).await;
    let g2 = group_node(&map, "g2", dir.path()).await;
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

/// The node of group `name` of `map`, on the address the map gives it,
/// its log in `dir/name` (started again after a stop, the same node).
async fn group_node(map: &ShardMap, name: &str, dir: &std::path::Path) -> Node {
    let sharding = Sharding::new(map.clone(), name.into()).expect("a group of the map");
    let addr: SocketAddr = map
        .nodes_of_group(name)
        .first()
        .and_then(|url| url.strip_prefix("http://"))
        .and_then(|addr| addr.parse().ok())
        .expect("the group's address");
    Node::start(NodeConfig {
        runtime: concord_coordinator::runtime::RuntimeConfig {
            sharding: Some(sharding),
            ..quick_config()
        },
        ..NodeConfig::new(addr, StoreLocation::DataDir(dir.join(name)))
    })
    .await
    .expect("node starts")
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

#[tokio::test]
async fn a_shard_moved_to_another_group_keeps_its_transactions_and_its_keys() {
    let g = two_groups().await;
    let g1 = client(&g.g1);
    // Two keys of one of g1's shards: one transaction committed before the
    // move, one left open across it.
    let shard = (0..)
        .map(|i| g.map.shard_for_key(&format!("trip-{i}")))
        .find(|shard| g.map.owner_at(*shard, now_ms()) == "g1")
        .expect("a key of g1's");
    let keys: Vec<String> = (0..)
        .map(|i| format!("trip-{i}"))
        .filter(|key| g.map.shard_for_key(key) == shard)
        .take(3)
        .collect();
    assert_eq!(g.map.owner_at(shard, now_ms()), "g1");
    let both = |payload: &str| {
        vec![
            BranchSpec {
                participant: g.a.url.clone(),
                payload: payload.as_bytes().to_vec(),
                name: Some("a".into()),
            },
            BranchSpec {
                participant: g.b.url.clone(),
                payload: payload.as_bytes().to_vec(),
                name: Some("b".into()),
            },
        ]
    };
    let keyed = |key: &str, branches| BeginOptions {
        idempotency_key: Some(key.to_owned()),
        branches,
        ..BeginOptions::default()
    };
    let (done, outcome) = g1
        .begin_and_commit(keyed(&keys[0], both("commit")))
        .await
        .expect("a transfer before the move");
    assert_eq!(outcome, Outcome::Committed { read_only: false });
    let open = g1
        .begin(keyed(&keys[1], both("commit")))
        .await
        .expect("a transfer left open");

    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .args(["shards", "--coordinator", &g.g2.url(), "move"])
        .arg(shard.0.to_string())
        .args(["--to", "g2", "--switch-in-ms", "4000"])
        .output()
        .await
        .expect("run concord shards move");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "concord shards move failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains(&format!(
            "shard {}: 2 idempotency keys handed over from group \"g1\" to group \"g2\"",
            shard.0
        )),
        "{stdout}"
    );

    // Retried through either group, each key finds its first transaction,
    // which stays g1's.
    for node in [&g.g2, &g.g1] {
        for (key, id) in [
            (&keys[0], &done.transaction_id),
            (&keys[1], &open.transaction_id),
        ] {
            let again = super::client(node)
                .begin(keyed(key, both("commit")))
                .await
                .unwrap_or_else(|e| panic!("{key} again through {}: {e}", node.url()));
            assert_eq!((&again.transaction_id, again.created), (id, false), "{key}");
        }
    }
    // The open one commits through g2's node (forwarded to g1, its group).
    assert_eq!(
        client(&g.g2)
            .commit(&open.transaction_id)
            .await
            .expect("commit across the move"),
        Outcome::Committed { read_only: false }
    );
    // A new key of the shard begins in g2 now, even through g1's node.
    let (moved, outcome) = g1
        .begin_and_commit(keyed(&keys[2], both("commit")))
        .await
        .expect("a transfer after the move");
    assert_eq!(outcome, Outcome::Committed { read_only: false });
    let moved_id: TxnId = moved.transaction_id.parse().expect("an id");
    assert_eq!(g.map.shard_of(moved_id), Some(shard));

    for (id, group, other) in [
        (&done.transaction_id, "g1", "g2"),
        (&open.transaction_id, "g1", "g2"),
        (&moved.transaction_id, "g2", "g1"),
    ] {
        until_logged(&g.log(group), id, "committed").await;
        assert_eq!(coordinator_state(&g.log(other), id).await, None, "{id}");
        assert_eq!(g.a.effects(id).await, ["prepare", "commit"], "{id}");
        assert_eq!(g.b.effects(id).await, ["prepare", "commit"], "{id}");
        let seen = super::client(&g.g1)
            .transaction(id)
            .await
            .expect("get transaction");
        assert_eq!(
            (seen.group.as_str(), seen.shard),
            (group, u32::from(shard.0))
        );
    }
    // Both nodes follow the new version; the handover is done.
    for node in [&g.g1, &g.g2] {
        let held = super::client(node)
            .raw()
            .get_shard_map(pb::GetShardMapRequest {})
            .await
            .expect("get shard map")
            .into_inner();
        let map = held.map.expect("a map");
        assert_eq!(map.version, g.map.version + 1, "{}", node.url());
        assert!(held.pending.is_empty(), "{:?}", held.pending);
    }
}

/// A client given one node's address reads the map and sends each call to
/// the group that owns it: with group g1's only node stopped, group g2's
/// transactions still begin, commit and answer through it, which a client
/// forwarded by g1's node could not do.
#[tokio::test]
async fn a_move_called_off_before_its_switch_leaves_the_shard_and_its_keys_where_they_were() {
    let g = two_groups().await;
    let g1 = client(&g.g1);
    let shard = (0..)
        .map(|i| g.map.shard_for_key(&format!("stay-{i}")))
        .find(|shard| g.map.owner_at(*shard, now_ms()) == "g1")
        .expect("a key of g1's");
    let keys: Vec<String> = (0..)
        .map(|i| format!("stay-{i}"))
        .filter(|key| g.map.shard_for_key(key) == shard)
        .take(2)
        .collect();
    let keyed = |key: &str| BeginOptions {
        idempotency_key: Some(key.to_owned()),
        branches: vec![BranchSpec {
            participant: g.a.url.clone(),
            payload: b"commit".to_vec(),
            name: Some("a".into()),
        }],
        ..BeginOptions::default()
    };
    let (before, _) = g1
        .begin_and_commit(keyed(&keys[0]))
        .await
        .expect("a transfer before the move");

    // A move 8 s ahead, running (it waits for its switch to hand the keys
    // over), called off while it waits.
    let moving = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .args(["shards", "--coordinator", &g.g1.url(), "move"])
        .arg(shard.0.to_string())
        .args(["--to", "g2", "--switch-in-ms", "8000"])
        .output();
    let moving = tokio::spawn(moving);
    let version = g.map.version + 1;
    eventually("the move is written to both groups", || async {
        let held = |node: &Node| {
            let mut raw = super::client(node).raw();
            async move {
                raw.get_shard_map(pb::GetShardMapRequest {})
                    .await
                    .ok()
                    .and_then(|held| held.into_inner().map)
                    .map(|map| map.version)
            }
        };
        (held(&g.g1).await == Some(version) && held(&g.g2).await == Some(version)).then_some(())
    })
    .await;
    let called_off = shards(&["--coordinator", &g.g2.url(), "cancel", &shard.0.to_string()]).await;
    assert!(
        called_off.contains(&format!("the move of shard {} to group \"g2\"", shard.0))
            && called_off.contains("the shard stays with group \"g1\""),
        "{called_off}"
    );
    let moved = moving
        .await
        .expect("the move's task")
        .expect("concord shards move");
    assert!(
        moved.status.success(),
        "{}",
        String::from_utf8_lossy(&moved.stderr)
    );

    // Both groups follow the version that calls it off, owe no keys, and
    // the shard is g1's now and from now on.
    for node in [&g.g1, &g.g2] {
        let held = super::client(node)
            .raw()
            .get_shard_map(pb::GetShardMapRequest {})
            .await
            .expect("the map")
            .into_inner();
        assert!(held.pending.is_empty(), "{:?}", held.pending);
        let map = ShardMap::from_wire(held.map.expect("a map")).expect("a valid map");
        assert_eq!(map.version, version + 1);
        assert_eq!(map.owner_at(shard, now_ms()), "g1");
        assert_eq!(map.owner_at(shard, u64::MAX), "g1");
    }
    // The key used before finds its transaction through either group; a
    // new key of the shard begins in g1.
    for node in [&g.g2, &g.g1] {
        let again = super::client(node)
            .begin(keyed(&keys[0]))
            .await
            .expect("the key again");
        assert_eq!(
            (&again.transaction_id, again.created),
            (&before.transaction_id, false)
        );
    }
    let (after, _) = client(&g.g2)
        .begin_and_commit(keyed(&keys[1]))
        .await
        .expect("a transfer after");
    until_logged(&g.log("g1"), &after.transaction_id, "committed").await;
    assert_eq!(
        coordinator_state(&g.log("g2"), &after.transaction_id).await,
        None
    );

    // Nothing is moving now: there is nothing to call off.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .args(["shards", "--coordinator", &g.g1.url(), "cancel"])
        .arg(shard.0.to_string())
        .output()
        .await
        .expect("run concord shards cancel");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("is not moving"), "{stderr}");

    // A version that takes a shard from g1 at a time already past is
    // refused by both groups, and neither map changes: by g1, which may
    // have begun transactions of the shard since; by g2, because g1 does
    // not hold that switch.
    let held = |node: &Node| {
        let mut raw = super::client(node).raw();
        async move {
            let wire = raw
                .get_shard_map(pb::GetShardMapRequest {})
                .await
                .expect("the map")
                .into_inner()
                .map
                .expect("a map");
            ShardMap::from_wire(wire).expect("a valid map")
        }
    };
    let now_map = held(&g.g1).await;
    let other = (0..16)
        .map(concord_coordinator::shard::Shard)
        .find(|s| *s != shard && now_map.owner_at(*s, u64::MAX) == "g1")
        .expect("another shard of g1's");
    let late = now_map
        .with_move(other, "g2", now_ms() - 10_000)
        .expect("a map");
    for (node, says) in [
        (&g.g1, "would leave group \"g1\""),
        (&g.g2, "does not hold that switch"),
    ] {
        let refused = super::client(node)
            .raw()
            .put_shard_map(pb::PutShardMapRequest {
                map: Some(late.to_wire()),
            })
            .await
            .expect_err("a switch in the past");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition);
        assert!(refused.message().contains(says), "{}", refused.message());
        assert_eq!(held(node).await, now_map);
    }
}

#[tokio::test]
async fn a_move_that_reached_only_the_group_it_leaves_is_finished_by_sync_after_its_switch() {
    let g = two_groups().await;
    let g1 = client(&g.g1);
    let shard = (0..)
        .map(|i| g.map.shard_for_key(&format!("late-{i}")))
        .find(|shard| g.map.owner_at(*shard, now_ms()) == "g1")
        .expect("a key of g1's");
    let key = (0..)
        .map(|i| format!("late-{i}"))
        .find(|key| g.map.shard_for_key(key) == shard)
        .expect("a key of the shard");
    let keyed = || BeginOptions {
        idempotency_key: Some(key.clone()),
        branches: vec![BranchSpec {
            participant: g.a.url.clone(),
            payload: b"commit".to_vec(),
            name: Some("a".into()),
        }],
        ..BeginOptions::default()
    };
    let (first, _) = g1.begin_and_commit(keyed()).await.expect("a transfer");
    // The move reaches g1 (as `concord shards move` writes it first) and
    // not g2; its switch passes.
    let switch = now_ms() + 2_000;
    let moved = g.map.with_move(shard, "g2", switch).expect("a move");
    super::client(&g.g1)
        .raw()
        .put_shard_map(pb::PutShardMapRequest {
            map: Some(moved.to_wire()),
        })
        .await
        .expect("g1 takes the move");
    tokio::time::sleep(std::time::Duration::from_millis(
        (switch + 1_500).saturating_sub(now_ms()),
    ))
    .await;
    // `sync` writes it to g2, whose switch is past: g2 asks g1, which
    // holds it, and takes it; the keys are handed over.
    let synced = shards(&["--coordinator", &g.g1.url(), "sync"]).await;
    assert!(
        synced.contains(&format!(
            "shard {}: 1 idempotency key handed over from group \"g1\" to group \"g2\"",
            shard.0
        )),
        "{synced}"
    );
    let version = super::client(&g.g2)
        .raw()
        .get_shard_map(pb::GetShardMapRequest {})
        .await
        .expect("g2's map")
        .into_inner()
        .map
        .map(|map| map.version);
    assert_eq!(version, Some(moved.version));
    // The key finds its transaction through g2, which now owns the shard.
    let again = client(&g.g2).begin(keyed()).await.expect("the key again");
    assert_eq!(
        (&again.transaction_id, again.created),
        (&first.transaction_id, false)
    );
}

#[tokio::test]
async fn a_client_that_reads_the_map_sends_each_call_to_its_group_itself() {
    let Groups {
        dir: _dir,
        map,
        g1,
        g2: _g2,
        a,
        b,
    } = two_groups().await;
    let client = CoordinatorClient::connect_groups([g1.url()]).expect("a client");
    let branches = vec![
        BranchSpec {
            participant: a.url.clone(),
            payload: b"commit".to_vec(),
            name: Some("a".into()),
        },
        BranchSpec {
            participant: b.url.clone(),
            payload: b"commit".to_vec(),
            name: Some("b".into()),
        },
    ];
    let keyed = |key: &str, branches: &Vec<BranchSpec>| BeginOptions {
        idempotency_key: Some(key.to_owned()),
        branches: branches.clone(),
        ..BeginOptions::default()
    };
    let of_group = |group: &'static str| {
        let map = map.clone();
        (0..)
            .map(|i| format!("order-{i}"))
            .filter(move |key| map.owner_at(map.shard_for_key(key), now_ms()) == group)
    };
    let mut g2_keys = of_group("g2");
    // Begun while g1's node is up (the map is read from it).
    let open = client
        .begin(keyed(&g2_keys.next().expect("a key"), &branches))
        .await
        .expect("begin");
    let open_id: TxnId = open.transaction_id.parse().expect("an id");
    assert_eq!(map.group_of(open_id), "g2");
    g1.shutdown().await.expect("g1 stops");

    assert_eq!(
        client
            .commit(&open.transaction_id)
            .await
            .expect("commit, g1 down"),
        Outcome::Committed { read_only: false }
    );
    assert_eq!(
        client
            .outcome(&open.transaction_id)
            .await
            .expect("outcome, g1 down"),
        Outcome::Committed { read_only: false }
    );
    let (later, outcome) = client
        .begin_and_commit(keyed(&g2_keys.next().expect("a key"), &branches))
        .await
        .expect("a keyed transfer of g2's, g1 down");
    assert_eq!(outcome, Outcome::Committed { read_only: false });
    // Keyless: whichever node comes first in turn, a refused connection
    // sends the call to the next.
    for _ in 0..3 {
        let (keyless, outcome) = client
            .begin_and_commit(BeginOptions {
                branches: branches.clone(),
                ..BeginOptions::default()
            })
            .await
            .expect("a keyless transfer, g1 down");
        assert_eq!(outcome, Outcome::Committed { read_only: false });
        let id: TxnId = keyless.transaction_id.parse().expect("an id");
        assert_eq!(map.group_of(id), "g2");
    }
    for id in [&open.transaction_id, &later.transaction_id] {
        assert_eq!(a.effects(id).await, ["prepare", "commit"], "{id}");
        assert_eq!(b.effects(id).await, ["prepare", "commit"], "{id}");
    }
    // g1's own keys wait for g1: UNAVAILABLE, nothing begun elsewhere.
    let refused = client
        .begin(keyed(&of_group("g1").next().expect("a key"), &branches))
        .await
        .expect_err("g1 is down");
    assert!(
        matches!(refused, ClientError::Unavailable(_)),
        "{refused:?}"
    );
}

/// Growing as an operator would (docs/operations.md): a deployment founded
/// with one group by `concord shards init`, a second group added with
/// `add-group`, half the shards moved to it with `move`; what was begun
/// before stays in the first group and answers through either, new
/// transactions of the moved shards go to the second.
#[tokio::test]
async fn a_deployment_grows_from_one_group_to_two_with_concord_shards() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (addr1, addr2) = (free_addr(), free_addr());
    let (url1, url2) = (format!("http://{addr1}"), format!("http://{addr2}"));
    let (v1, v2) = (dir.path().join("v1.json"), dir.path().join("v2.json"));
    shards(&[
        "init",
        "--shards",
        "16",
        "--group",
        &format!("g1={url1}"),
        "--out",
        &v1.display().to_string(),
    ])
    .await;
    let start = |group: &'static str, addr: SocketAddr, file: &std::path::Path| {
        let map: ShardMap =
            serde_json::from_str(&std::fs::read_to_string(file).expect("map file")).expect("a map");
        let data = dir.path().join(group);
        async move {
            Node::start(NodeConfig {
                runtime: concord_coordinator::runtime::RuntimeConfig {
                    sharding: Some(Sharding::new(map, group.into()).expect("a group")),
                    ..quick_config()
                },
                ..NodeConfig::new(addr, StoreLocation::DataDir(data))
            })
            .await
            .expect("node starts")
        }
    };
    let g1 = start("g1", addr1, &v1).await;
    let a = TestParticipant::start(dir.path(), "a", None).await;
    let through_g1 = client(&g1);
    let transfer = |key: String| BeginOptions {
        idempotency_key: Some(key),
        branches: vec![BranchSpec {
            participant: a.url.clone(),
            payload: b"commit".to_vec(),
            name: Some("a".into()),
        }],
        ..BeginOptions::default()
    };
    let mut before = Vec::new();
    for i in 0..16 {
        let (begun, outcome) = through_g1
            .begin_and_commit(transfer(format!("early-{i}")))
            .await
            .expect("a transfer with one group");
        assert_eq!(outcome, Outcome::Committed { read_only: false });
        before.push(begun.transaction_id);
    }

    let added = shards(&[
        "--coordinator",
        &url1,
        "add-group",
        "g2",
        "--node",
        &url2,
        "--out",
        &v2.display().to_string(),
    ])
    .await;
    assert!(
        added.contains("map version 2 written to every group"),
        "{added}"
    );
    let g2 = start("g2", addr2, &v2).await;
    let moved = shards(&[
        "--coordinator",
        &url2,
        "move",
        "8",
        "9",
        "10",
        "11",
        "12",
        "13",
        "14",
        "15",
        "--to",
        "g2",
        "--switch-in-ms",
        "4000",
    ])
    .await;
    assert!(
        moved.contains("map version 3: shards [8, 9, 10, 11, 12, 13, 14, 15]"),
        "{moved}"
    );
    assert_eq!(
        moved.matches("handed over from group \"g1\"").count(),
        8,
        "{moved}"
    );
    let shown = shards(&["--coordinator", &url1, "show"]).await;
    assert!(shown.contains("group \"g1\": 8 shards now"), "{shown}");
    assert!(shown.contains("group \"g2\": 8 shards now"), "{shown}");
    assert!(!shown.contains("not handed over"), "{shown}");
    // Nothing is owed: sync writes the newest version everywhere, no more.
    let synced = shards(&["--coordinator", &url2, "sync"]).await;
    assert!(!synced.contains("handed over"), "{synced}");

    let map: ShardMap =
        serde_json::from_str(&std::fs::read_to_string(&v2).expect("map file")).expect("a map");
    // What was begun before stays g1's and answers through g2 too.
    for id in &before {
        let seen = client(&g2).transaction(id).await.expect("through g2");
        assert_eq!(
            (seen.group.as_str(), seen.state),
            ("g1", pb::TransactionState::Committed as i32)
        );
        assert_eq!(
            coordinator_state(&dir.path().join("g2"), id).await,
            None,
            "{id}"
        );
    }
    // New transactions of the moved shards are g2's, of the others g1's.
    let mut per_group = std::collections::HashMap::<String, usize>::new();
    for i in 0..16 {
        let (begun, outcome) = through_g1
            .begin_and_commit(transfer(format!("late-{i}")))
            .await
            .expect("a transfer with two groups");
        assert_eq!(outcome, Outcome::Committed { read_only: false });
        let seen = client(&g2)
            .transaction(&begun.transaction_id)
            .await
            .expect("seen");
        let shard = map.shard_for_key(&format!("late-{i}")).0;
        assert_eq!(
            seen.group,
            if shard >= 8 { "g2" } else { "g1" },
            "shard {shard}"
        );
        until_logged(
            &dir.path().join(&seen.group),
            &begun.transaction_id,
            "committed",
        )
        .await;
        *per_group.entry(seen.group).or_default() += 1;
    }
    assert!(
        per_group.len() == 2,
        "both groups took new transactions: {per_group:?}"
    );
}

#[tokio::test]
async fn one_listing_shows_every_groups_transactions_and_names_a_group_that_is_down() {
    let g = two_groups().await;
    let client = client(&g.g1);
    // 20 transfers committed and 6 left open, spread over both groups by
    // their keys.
    let mut committed = Vec::new();
    let mut open = Vec::new();
    for i in 0..26 {
        let options = BeginOptions {
            idempotency_key: Some(format!("listed-{i}")),
            branches: vec![BranchSpec {
                participant: g.a.url.clone(),
                payload: b"commit".to_vec(),
                name: Some("a".into()),
            }],
            ..BeginOptions::default()
        };
        if i < 20 {
            let (begun, outcome) = client.begin_and_commit(options).await.expect("commit");
            assert_eq!(outcome, Outcome::Committed { read_only: false });
            committed.push(begun.transaction_id);
        } else {
            open.push(client.begin(options).await.expect("begin").transaction_id);
        }
    }
    let group_of = |id: &str| {
        g.map
            .group_of(id.parse::<TxnId>().expect("an id"))
            .to_owned()
    };
    let in_g2: Vec<&String> = committed
        .iter()
        .chain(&open)
        .filter(|id| group_of(id) == "g2")
        .collect();
    assert!(
        (4..=22).contains(&in_g2.len()),
        "the keys spread over both groups: {} of 26 in g2",
        in_g2.len()
    );

    // Through either node, page by page: every transaction of both groups
    // once, newest first, each saying its group; and with a filter that
    // leaves pages short (the open ones drop out of the store's pages), the
    // committed ones, each once.
    for node in [&g.g1, &g.g2] {
        let listed = list_all(node, 7, vec![]).await;
        let mut want: Vec<&String> = committed.iter().chain(&open).collect();
        want.sort();
        let mut got: Vec<&String> = listed.iter().map(|t| &t.id).collect();
        got.sort();
        assert_eq!(
            got,
            want,
            "every transaction of both groups through {}",
            node.url()
        );
        for txn in &listed {
            assert_eq!(txn.group, group_of(&txn.id), "{}", txn.id);
        }
        let listed = list_all(node, 3, vec![pb::TransactionState::Committed.into()]).await;
        let mut want: Vec<&String> = committed.iter().collect();
        want.sort();
        let mut got: Vec<&String> = listed.iter().map(|t| &t.id).collect();
        got.sort();
        assert_eq!(got, want, "the committed ones through {}", node.url());
    }

    // Filtered: the open ones of both groups; one group's alone.
    let mut raw = super::client(&g.g1).raw();
    let active = raw
        .list_transactions(pb::ListTransactionsRequest {
            states: vec![pb::TransactionState::Active.into()],
            ..Default::default()
        })
        .await
        .expect("list active")
        .into_inner();
    let mut active_ids: Vec<&String> = active.transactions.iter().map(|t| &t.id).collect();
    active_ids.sort();
    let mut want: Vec<&String> = open.iter().collect();
    want.sort();
    assert_eq!(active_ids, want);
    let only_g2 = raw
        .list_transactions(pb::ListTransactionsRequest {
            group: "g2".into(),
            ..Default::default()
        })
        .await
        .expect("list g2")
        .into_inner();
    let mut g2_ids: Vec<&String> = only_g2.transactions.iter().map(|t| &t.id).collect();
    g2_ids.sort();
    let mut want = in_g2.clone();
    want.sort();
    assert_eq!(g2_ids, want, "group g2's, asked of g1's node");
    let unknown = raw
        .list_transactions(pb::ListTransactionsRequest {
            group: "g9".into(),
            ..Default::default()
        })
        .await
        .expect_err("no group g9");
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(
        unknown.message().contains("its groups: g1, g2"),
        "{}",
        unknown.message()
    );

    // g2's node stops: the listing shows g1's and says g2's are missing,
    // in the API and in `concord txn list`.
    g.g2.shutdown().await.expect("g2 stops");
    let page = raw
        .list_transactions(pb::ListTransactionsRequest::default())
        .await
        .expect("list with g2 down")
        .into_inner();
    assert_eq!(page.skipped_groups.len(), 1, "{:?}", page.skipped_groups);
    assert_eq!(page.skipped_groups[0].group, "g2");
    assert!(page.transactions.iter().all(|t| t.group == "g1"));
    assert_eq!(page.transactions.len(), 26 - in_g2.len());
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .args(["txn", "--coordinator", &g.g1.url(), "list"])
        .output()
        .await
        .expect("run concord txn list");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{stdout}");
    assert!(
        stdout.contains("missing: group g2 did not answer"),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .next()
            .is_some_and(|header| header.contains("GROUP")),
        "{stdout}"
    );
}

#[tokio::test]
async fn one_watch_follows_every_group_across_an_outage_and_resumes_from_its_cursor() {
    let mut g = two_groups().await;
    let client = client(&g.g1);
    let committed_only = || pb::WatchTransactionsRequest {
        states: vec![pb::TransactionState::Committed.into()],
        ..Default::default()
    };
    let mut watch = client
        .raw()
        .watch_transactions(pb::WatchTransactionsRequest {
            mark_start: true,
            ..committed_only()
        })
        .await
        .expect("watch")
        .into_inner();
    // Its start mark already holds where it starts in each group's log.
    let mark = watch
        .message()
        .await
        .expect("the stream")
        .expect("a start mark");
    assert!(mark.transaction_id.is_empty(), "{mark:?}");
    assert!(
        mark.cursor.starts_with('*') && mark.cursor.contains("g1=") && mark.cursor.contains("g2="),
        "{}",
        mark.cursor
    );
    let transfer = |key: Option<String>| {
        let client = client.clone();
        let a = g.a.url.clone();
        async move {
            let (begun, outcome) = client
                .begin_and_commit(BeginOptions {
                    idempotency_key: key,
                    branches: vec![BranchSpec {
                        participant: a,
                        payload: b"commit".to_vec(),
                        name: Some("a".into()),
                    }],
                    ..BeginOptions::default()
                })
                .await
                .expect("a transfer");
            assert_eq!(outcome, Outcome::Committed { read_only: false });
            begun.transaction_id
        }
    };
    let group_of = |id: &str| {
        g.map
            .group_of(id.parse::<TxnId>().expect("an id"))
            .to_owned()
    };
    // Keys of g2's shards, to commit in g2 through g1's node.
    let mut g2_keys = (0..)
        .map(|i| format!("watched-{i}"))
        .filter(|key| g.map.owner_at(g.map.shard_for_key(key), now_ms()) == "g2");

    // Both groups' commits arrive on the one stream, each change's cursor
    // a position in every group's log.
    let mut first = Vec::new();
    for i in 0..6 {
        first.push(transfer(Some(format!("first-{i}"))).await);
    }
    first.push(transfer(g2_keys.next()).await);
    let seen = until_seen(&mut watch, &first).await;
    assert!(first.iter().any(|id| group_of(id) == "g2"));
    assert!(first.iter().any(|id| group_of(id) == "g1"));
    let cursor = seen.last().expect("changes").cursor.clone();
    assert!(
        cursor.starts_with('*') && cursor.contains("g1=") && cursor.contains("g2="),
        "{cursor}"
    );

    // g2's node stops: g1's commits still arrive; once it is back, g2's
    // commits arrive too, every one, from where the watch stood in g2's log.
    g.g2.shutdown().await.expect("g2 stops");
    let mut during = Vec::new();
    for _ in 0..4 {
        during.push(transfer(None).await);
    }
    until_seen(&mut watch, &during).await;
    g.g2 = group_node(&g.map, "g2", g.dir.path()).await;
    let mut after = Vec::new();
    for _ in 0..4 {
        after.push(transfer(g2_keys.next()).await);
    }
    assert!(after.iter().all(|id| group_of(id) == "g2"));
    until_seen(&mut watch, &after).await;
    drop(watch);

    // Resumed from the cursor of before the outage: exactly what came after
    // it, in both groups, nothing of before.
    let mut resumed = client
        .raw()
        .watch_transactions(pb::WatchTransactionsRequest {
            cursor: cursor.clone(),
            ..committed_only()
        })
        .await
        .expect("resume")
        .into_inner();
    let later: Vec<String> = during.iter().chain(&after).cloned().collect();
    let again = until_seen(&mut resumed, &later).await;
    for change in &again {
        assert!(
            later.contains(&change.transaction_id),
            "{} came again",
            change.transaction_id
        );
    }

    // One group's cursor is refused by a watch of every group, saying why;
    // a watch of one group gives that group's own cursors.
    let plain = client
        .raw()
        .watch_transactions(pb::WatchTransactionsRequest {
            cursor: "0-5".into(),
            ..Default::default()
        })
        .await
        .expect_err("a plain cursor");
    assert_eq!(plain.code(), tonic::Code::InvalidArgument);
    assert!(
        plain.message().contains("one group's cursor"),
        "{}",
        plain.message()
    );
    let unknown = client
        .raw()
        .watch_transactions(pb::WatchTransactionsRequest {
            cursor: "*g1=0-5,g9=0-1".into(),
            ..Default::default()
        })
        .await
        .expect_err("a group the map lacks");
    assert_eq!(unknown.code(), tonic::Code::InvalidArgument);
    assert!(
        unknown
            .message()
            .contains("\"g9\", which the shard map does not have"),
        "{}",
        unknown.message()
    );
    let mut only_g2 = client
        .raw()
        .watch_transactions(pb::WatchTransactionsRequest {
            group: "g2".into(),
            from_oldest: true,
            ..committed_only()
        })
        .await
        .expect("watch g2")
        .into_inner();
    let g2_ids: Vec<String> = first
        .iter()
        .chain(&after)
        .filter(|id| group_of(id) == "g2")
        .cloned()
        .collect();
    for change in until_seen(&mut only_g2, &g2_ids).await {
        assert_eq!(group_of(&change.transaction_id), "g2");
        assert!(
            change.cursor.starts_with(|c: char| c.is_ascii_digit()),
            "{}",
            change.cursor
        );
    }
}

/// Reads `stream` until each of `ids` was seen; returns what came,
/// bounding a hang at 30 s (a group that came back is followed again
/// after a backoff).
async fn until_seen(
    stream: &mut tonic::Streaming<pb::TransactionChange>,
    ids: &[String],
) -> Vec<pb::TransactionChange> {
    let mut waiting: std::collections::HashSet<&String> = ids.iter().collect();
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while !waiting.is_empty() {
        let change = tokio::time::timeout_at(deadline, stream.message())
            .await
            .unwrap_or_else(|_| panic!("{} of {} never came", waiting.len(), ids.len()))
            .expect("the stream goes on")
            .expect("a change");
        waiting.remove(&change.transaction_id);
        seen.push(change);
    }
    seen
}

/// Every page of a listing through `node`, `page_size` at a time, checked
/// newest first with no transaction twice, and no group skipped.
async fn list_all(node: &Node, page_size: u32, states: Vec<i32>) -> Vec<pb::Transaction> {
    let mut raw = super::client(node).raw();
    let mut listed: Vec<pb::Transaction> = Vec::new();
    let mut token = String::new();
    for _ in 0..100 {
        let page = raw
            .list_transactions(pb::ListTransactionsRequest {
                page_size,
                page_token: token,
                states: states.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        assert!(page.skipped_groups.is_empty(), "{:?}", page.skipped_groups);
        assert!(page.transactions.len() <= page_size as usize);
        listed.extend(page.transactions);
        if page.next_page_token.is_empty() {
            let ids: Vec<TxnId> = listed
                .iter()
                .map(|t| t.id.parse().expect("an id"))
                .collect();
            assert!(
                ids.windows(2).all(|pair| pair[0] > pair[1]),
                "newest first, each once, through {}: {ids:?}",
                node.url()
            );
            return listed;
        }
        token = page.next_page_token;
    }
    panic!("the listing through {} did not end", node.url());
}

/// Runs `concord shards <args>`; returns stdout, or panics with stderr.
async fn shards(args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .arg("shards")
        .args(args)
        .output()
        .await
        .expect("run concord shards");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "concord shards {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Waits until `id`'s row in the SQLite log at `dir` says `state` (its end
/// record is lazy).
async fn until_logged(dir: &std::path::Path, id: &str, state: &str) {
    eventually(&format!("{id} {state} in {}", dir.display()), || async {
        (coordinator_state(dir, id).await.as_deref() == Some(state)).then_some(())
    })
    .await;
}
