//! The shard map's rules, checked: placement, versions, switches and the
//! map's JSON, by example and by property.

use proptest::prelude::*;

use super::*;

/// A UUIDv7 of `unix_ms` whose random bits hold `sequence`.
fn id(unix_ms: u64, sequence: u64) -> Uuid {
    let mut random = [0u8; 10];
    random[2..].copy_from_slice(&sequence.to_be_bytes());
    uuid::Builder::from_unix_timestamp_millis(unix_ms, &random).into_uuid()
}

fn group(name: &str) -> Group {
    Group {
        name: name.into(),
        nodes: vec![
            format!("http://{name}-0:7400"),
            format!("http://{name}-1:7400"),
        ],
    }
}

const FOUNDED: u64 = 1_800_000_000_000;

fn two_groups() -> ShardMap {
    ShardMap::new(256, group("g1"), FOUNDED)
        .and_then(|map| map.with_group(group("g2")))
        .expect("a valid map")
}

#[test]
fn a_switch_out_of_a_group_must_be_ahead_of_its_clock() {
    let map = ShardMap::split(16, vec![group("g1"), group("g2")], 1_000).expect("a map");
    let now = 50_000;
    let ahead = map.with_move(Shard(3), "g2", now + 5_000).expect("a move");
    assert_eq!(ahead.departs_in_time(&map, "g1", now), Ok(()));
    let past = map.with_move(Shard(3), "g2", now - 1).expect("a move");
    assert!(matches!(
        past.departs_in_time(&map, "g1", now),
        Err(MapError::LateSwitch { shard: 3, .. })
    ));
    // The group taking it, and a group it never was in, may learn late.
    assert_eq!(past.departs_in_time(&map, "g2", now), Ok(()));
    assert_eq!(past.departs_in_time(&map, "g3", now), Ok(()));
    // A switch the held version had already is not judged again.
    assert_eq!(past.departs_in_time(&past, "g1", now + 60_000), Ok(()));
    // The group taking it late must hear it from the group it leaves.
    assert_eq!(
        past.late_arrivals(&map, "g2", now),
        vec![(Shard(3), "g1".to_owned(), now - 1)]
    );
    assert!(ahead.late_arrivals(&map, "g2", now).is_empty());
    assert!(past.late_arrivals(&map, "g1", now).is_empty());
}

#[test]
fn a_cancelled_move_gives_the_shard_back_a_millisecond_after_its_switch() {
    let map = ShardMap::split(16, vec![group("g1"), group("g2")], 1_000).expect("a map");
    let at = 10_000;
    let moving = map.with_move(Shard(3), "g2", at).expect("a move");
    let cancelled = moving
        .with_cancelled_move(Shard(3), at - 5_000)
        .expect("cancelled ahead of its switch");
    assert_eq!(cancelled.extends(&moving), Ok(()));
    assert_eq!(cancelled.owner_at(Shard(3), at - 1), "g1");
    assert_eq!(cancelled.owner_at(Shard(3), at), "g2");
    assert_eq!(cancelled.owner_at(Shard(3), at + 1), "g1");
    assert_eq!(cancelled.owner_at(Shard(3), u64::MAX), "g1");
    // Not once it switched, nor for a shard that is not moving.
    assert_eq!(
        moving.with_cancelled_move(Shard(3), at),
        Err(MapError::NotMoving {
            shard: 3,
            group: "g2".into()
        })
    );
    assert!(matches!(
        map.with_cancelled_move(Shard(4), at),
        Err(MapError::NotMoving { shard: 4, .. })
    ));
}

#[test]
fn an_id_carries_its_shard_and_keeps_its_time_version_and_variant() {
    let map = two_groups();
    let minted = id(FOUNDED + 5, 0x0123_4567_89ab);
    let id = map.stamp(minted, Shard(200));
    assert_eq!(map.shard_of(id), Some(Shard(200)));
    assert_eq!(id.unix_ms(), FOUNDED + 5);
    let uuid = Uuid::parse_str(&id.to_string()).expect("still a canonical UUID");
    assert_eq!(uuid, id);
    assert_eq!(uuid.get_version_num(), 7);
    assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
}

#[test]
fn ids_minted_before_the_founding_belong_to_the_founding_group() {
    let map = two_groups()
        .with_move(Shard(7), "g2", FOUNDED + 1_000)
        .expect("a move");
    let old = id(FOUNDED - 1, 7).with_rand_a(7);
    assert_eq!(map.shard_of(old), None);
    assert_eq!(map.group_of(old), "g1");
}

#[test]
fn a_move_keeps_earlier_ids_where_they_are_and_sends_later_ones_to_the_new_owner() {
    let at = FOUNDED + 60_000;
    let map = two_groups().with_move(Shard(9), "g2", at).expect("a move");
    assert_eq!(map.version, 3);
    let before = map.stamp(id(at - 1, 1), Shard(9));
    let after = map.stamp(id(at, 1), Shard(9));
    let other = map.stamp(id(at, 1), Shard(10));
    assert_eq!(map.group_of(before), "g1");
    assert_eq!(map.group_of(after), "g2");
    assert_eq!(map.group_of(other), "g1");
    assert_eq!(map.nodes_of(after), group("g2").nodes.as_slice());
    assert_eq!(map.shards_of("g2", at), vec![Shard(9)]);
    assert_eq!(map.shards_of("g2", at - 1), Vec::<Shard>::new());
    assert_eq!(map.shards_of("g1", at).len(), 255);
}

#[test]
fn moves_that_would_rewrite_the_past_or_name_nobody_are_refused() {
    let at = FOUNDED + 60_000;
    let map = two_groups().with_move(Shard(9), "g2", at).expect("a move");
    assert_eq!(
        map.with_move(Shard(9), "g1", at),
        Err(MapError::NotAfter {
            shard: 9,
            at_ms: at,
            last_ms: at
        })
    );
    assert_eq!(
        map.with_move(Shard(9), "g2", at + 1),
        Err(MapError::AlreadyOwner {
            shard: 9,
            group: "g2".into()
        })
    );
    assert_eq!(
        map.with_move(Shard(9), "g3", at + 1),
        Err(MapError::UnknownGroup("g3".into()))
    );
    assert_eq!(
        map.with_move(Shard(256), "g2", at + 1),
        Err(MapError::NoSuchShard {
            shard: 256,
            shards: 256
        })
    );
    assert_eq!(
        map.with_group(group("g2")),
        Err(MapError::DuplicateGroup("g2".into()))
    );
    for shards in [0, 3, 100, 8192] {
        assert_eq!(
            ShardMap::new(shards, group("g1"), FOUNDED),
            Err(MapError::BadShardCount(shards))
        );
    }
}

#[test]
fn a_map_read_back_is_checked_before_it_is_believed() {
    let map = two_groups()
        .with_move(Shard(1), "g2", FOUNDED + 10)
        .expect("a move");
    let text = serde_json::to_string(&map).expect("serialises");
    let read: ShardMap = serde_json::from_str(&text).expect("parses");
    assert_eq!(read, map);
    assert_eq!(read.validate(), Ok(()));

    let mut backwards = map.clone();
    backwards.owners[1][1].from_ms = FOUNDED;
    assert!(matches!(
        backwards.validate(),
        Err(MapError::BadHistory { shard: 1, .. })
    ));
    let mut stranger = map.clone();
    stranger.owners[2][0].group = "g9".into();
    assert_eq!(
        stranger.validate(),
        Err(MapError::UnknownGroup("g9".into()))
    );
    let mut short = map.clone();
    short.owners.pop();
    assert!(matches!(
        short.validate(),
        Err(MapError::WrongLength { .. })
    ));
    assert_eq!(map.clone().newest(two_groups()).version, 3);
    assert_eq!(two_groups().newest(map).version, 3);
}

#[test]
fn a_later_version_may_add_but_never_rewrite() {
    let held = two_groups()
        .with_move(Shard(3), "g2", FOUNDED + 10)
        .expect("a move");
    let moved = held
        .with_move(Shard(4), "g2", FOUNDED + 20)
        .expect("a move");
    assert_eq!(moved.extends(&held), Ok(()));
    let mut readdressed = held.clone();
    readdressed.version += 1;
    readdressed.groups[0].nodes = vec!["http://g1-new:7400".into()];
    assert_eq!(readdressed.extends(&held), Ok(()));
    assert!(held.extends(&held).is_err(), "the same version");
    let mut rewritten = moved.clone();
    rewritten.owners[3][1].from_ms = FOUNDED + 11;
    assert!(matches!(
        rewritten.extends(&held),
        Err(MapError::Rewrites { .. })
    ));
    let mut dropped = moved.clone();
    dropped.owners[3].pop();
    assert!(dropped.extends(&held).is_err());
    let mut fewer = moved.clone();
    fewer.groups.retain(|g| g.name != "g2");
    fewer.owners = held.owners.clone();
    assert!(fewer.extends(&held).is_err());
}

#[test]
fn a_key_has_one_shard_on_every_node_and_version() {
    let map = two_groups();
    // Pinned (the first 8 bytes of SHA-256("transfer-42"), big-endian,
    // modulo 256): a change of hash would send retried Begins to
    // another shard than their first try's.
    assert_eq!(map.shard_for_key("transfer-42"), Shard(19));
    let spread: std::collections::HashSet<_> = (0..2_000)
        .map(|i| map.shard_for_key(&format!("key-{i}")))
        .collect();
    assert!(
        spread.len() > 240,
        "keys spread over the shards: {}",
        spread.len()
    );
}

proptest! {
    /// §11's promise: whatever moves follow, every id keeps the group
    /// that owned its shard when it was minted.
    #[test]
    fn later_versions_never_change_an_earlier_ids_group(
        moves in proptest::collection::vec((0u16..16, 0usize..3, 1u64..1_000), 0..40),
        ids in proptest::collection::vec((0u16..16, 0u64..40_000), 1..60),
    ) {
        let names = ["g1", "g2", "g3"];
        let mut map = ShardMap::new(16, group("g1"), FOUNDED)
            .and_then(|m| m.with_group(group("g2")))
            .and_then(|m| m.with_group(group("g3")))
            .expect("a valid map");
        let mut at = FOUNDED;
        let mut versions = vec![map.clone()];
        for (shard, to, gap) in moves {
            at += gap;
            if let Ok(next) = map.with_move(Shard(shard), names[to], at) {
                prop_assert_eq!(next.validate(), Ok(()));
                map = next;
                versions.push(map.clone());
            }
        }
        for (shard, offset) in ids {
            let id = map.stamp(id(FOUNDED + offset, 3), Shard(shard));
            // The group the id was given by the newest version whose
            // switches all lie at or before its millisecond...
            let minted_under = versions
                .iter()
                .rev()
                .find(|v| v.owners.iter().flatten().all(|o| o.from_ms <= id.unix_ms()))
                .expect("version 1 qualifies");
            let first = minted_under.group_of(id).to_owned();
            // ...is its group in every later version.
            for later in versions.iter().filter(|v| v.version >= minted_under.version) {
                prop_assert_eq!(later.group_of(id), first.as_str());
            }
        }
    }
}
