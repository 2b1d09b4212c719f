//! The routing rules shared with the Python SDK (`sdk/shard-cases.json`):
//! a key's shard and an id's shard and group, as this crate computes them.
//! The Python SDK's `concord_participant.shard` runs the same file
//! (`sdk/python/tests/test_shard_cases.py`), so a client in either language
//! sends a call where the coordinator places its transaction.

use concord_shard::{Group, ShardMap};
use serde::Deserialize;
use uuid::Uuid;

#[derive(Deserialize)]
struct Cases {
    map: ShardMap,
    keys: Vec<KeyCase>,
    ids: Vec<IdCase>,
}

#[derive(Deserialize)]
struct KeyCase {
    key: String,
    shard_of_16: u16,
    shard_of_256: u16,
    shard_of_4096: u16,
}

#[derive(Deserialize)]
struct IdCase {
    id: String,
    why: String,
    shard: Option<u16>,
    group: String,
}

#[test]
fn the_routing_rules_shared_with_the_python_sdk_hold() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sdk/shard-cases.json");
    let cases: Cases = serde_json::from_str(&std::fs::read_to_string(&path).expect("the cases"))
        .expect("the cases' JSON");
    cases.map.validate().expect("a valid map");
    let founding = Group {
        name: "g1".into(),
        nodes: vec!["http://g1:7400".into()],
    };
    for case in &cases.keys {
        for (shards, want) in [
            (16, case.shard_of_16),
            (256, case.shard_of_256),
            (4096, case.shard_of_4096),
        ] {
            let map = ShardMap::new(shards, founding.clone(), 0).expect("a map");
            assert_eq!(
                map.shard_for_key(&case.key).0,
                want,
                "{:?} of {shards}",
                case.key
            );
        }
    }
    assert!(cases.ids.len() >= 5);
    for case in &cases.ids {
        let id = Uuid::parse_str(&case.id).expect("an id");
        assert_eq!(
            cases.map.shard_of(id).map(|s| s.0),
            case.shard,
            "{}",
            case.why
        );
        assert_eq!(cases.map.group_of(id), case.group, "{}", case.why);
    }
}
