//! Where a transaction belongs when a deployment has several groups of
//! nodes (DESIGN §11), each group its own database: this node answers for
//! its own group's transactions, and for another group's names a node of
//! that group, which the API forwards the call to (one hop, as between the
//! nodes of one group, §6). New ids carry their shard. Without a shard map
//! (`concord serve --shard-map`) every transaction is this node's group's,
//! as before.
//!
//! As built so far: the map is static, read at start; moving a shard
//! (§11's fencing by each group's database and the keys handed over) is
//! not built yet, so a map must not be changed under running nodes.

use super::*;
use crate::shard::{Shard, ShardMap};

/// This node's place in a deployment of several groups.
#[derive(Clone, Debug)]
pub struct Sharding {
    pub map: Arc<ShardMap>,
    /// The group this node belongs to (a name in the map).
    pub group: String,
    /// The group's shards from each of the map's switch times on, oldest
    /// first: where a keyless Begin goes, worked out once here rather than
    /// from every shard's history on every Begin.
    own: Vec<(u64, Vec<Shard>)>,
}

impl Sharding {
    /// A node of `group` in `map`; refused with the reason when the map
    /// does not hold or does not name the group.
    pub fn new(map: ShardMap, group: String) -> Result<Self, String> {
        map.validate()
            .map_err(|e| format!("the shard map is not valid: {e}"))?;
        if !map.groups.iter().any(|g| g.name == group) {
            let known: Vec<&str> = map.groups.iter().map(|g| g.name.as_str()).collect();
            return Err(format!(
                "group {group:?} is not in the shard map (its groups: {})",
                known.join(", ")
            ));
        }
        // From 0: before the founding every id is the founding group's.
        let mut switches: Vec<u64> = map.owners.iter().flatten().map(|o| o.from_ms).collect();
        switches.push(0);
        switches.sort_unstable();
        switches.dedup();
        let own = switches
            .into_iter()
            .map(|at_ms| (at_ms, map.shards_of(&group, at_ms)))
            .collect();
        Ok(Self {
            map: Arc::new(map),
            group,
            own,
        })
    }

    /// The group's shards at `at_ms`.
    fn own_at(&self, at_ms: u64) -> &[Shard] {
        self.own
            .iter()
            .rev()
            .find(|(from_ms, _)| *from_ms <= at_ms)
            .map_or(&[], |(_, shards)| shards.as_slice())
    }

    /// The error that sends a call about `what` to `group`: its nodes, the
    /// first chosen by `spread` so that calls spread over them, the others
    /// to try in turn when it cannot be reached.
    fn elsewhere(&self, group: &str, spread: usize, what: String) -> Error {
        let mut addresses = self
            .map
            .groups
            .iter()
            .find(|g| g.name == group)
            .map(|g| g.nodes.clone())
            .unwrap_or_default();
        if addresses.is_empty() {
            return Error::Unavailable(format!(
                "{what} belongs to group {group:?}, which has no node address in the shard map"
            ));
        }
        let first = spread % addresses.len();
        addresses.rotate_left(first);
        Error::OtherGroup {
            what,
            group: group.to_owned(),
            addresses,
        }
    }
}

impl Runtime {
    /// Ok when `id` is this node's group's; otherwise where the call goes.
    pub(super) fn in_group(&self, id: TxnId) -> Result<(), Error> {
        let Some(sharding) = &self.shared.config.sharding else {
            return Ok(());
        };
        let group = sharding.map.group_of(id);
        if group == sharding.group {
            return Ok(());
        }
        Err(sharding.elsewhere(group, usize::from(id.rand_a()), format!("transaction {id}")))
    }

    /// Ok when a new transaction with idempotency key `key` is this
    /// group's to begin: a keyed one belongs to the shard of its key (so
    /// that a retry finds it whatever node it reaches), a keyless one to
    /// any shard of this group.
    pub fn key_in_group(&self, key: Option<&str>) -> Result<(), Error> {
        let (Some(sharding), Some(key)) = (&self.shared.config.sharding, key) else {
            return Ok(());
        };
        let shard = sharding.map.shard_for_key(key);
        let owner = sharding
            .map
            .owner_at(shard, self.shared.config.clock.now_ms());
        if owner == sharding.group {
            return Ok(());
        }
        Err(sharding.elsewhere(
            owner,
            usize::from(shard.0),
            format!(
                "a new transaction with idempotency key {key:?} (shard {})",
                shard.0
            ),
        ))
    }

    /// A new transaction's id: with a shard map, stamped with its key's
    /// shard or, without a key, with one of this group's shards.
    pub(super) fn mint(&self, key: Option<&str>) -> Result<TxnId, Error> {
        let minted = self.shared.config.clock.mint();
        let Some(sharding) = &self.shared.config.sharding else {
            return Ok(minted);
        };
        let map = &sharding.map;
        let at_ms = minted.unix_ms();
        let shard = match key {
            Some(key) => map.shard_for_key(key),
            None => {
                let own = sharding.own_at(at_ms);
                // The id's own random bits choose: no other randomness, so
                // a simulated run stays the same run.
                *own.get(usize::from(minted.rand_a()) % own.len().max(1))
                    .ok_or_else(|| {
                        Error::Unavailable(format!(
                            "group {:?} owns no shard now; begin the transaction on a node of \
                             another group",
                            sharding.group
                        ))
                    })?
            }
        };
        let owner = map.owner_at(shard, at_ms);
        if owner != sharding.group {
            return Err(sharding.elsewhere(
                owner,
                usize::from(shard.0),
                format!("a new transaction of shard {}", shard.0),
            ));
        }
        Ok(map.stamp(minted, shard))
    }
}
