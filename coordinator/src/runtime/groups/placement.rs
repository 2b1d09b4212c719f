//! This node's place in a deployment of several groups (DESIGN §11): its
//! group and the shard map it follows ([`Sharding`]: which group and node
//! an id or a key belongs to, which shards are moving), and the map held
//! now ([`Placement`]), replaced whole when a newer one is read.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use crate::runtime::error::Error;
use crate::shard::{MARGIN_MS, Shard, ShardMap};
use crate::store::shards::StoredShards;

/// This node's place in a deployment of several groups: the map it follows.
#[derive(Clone, Debug)]
pub struct Sharding {
    pub map: Arc<ShardMap>,
    /// The group this node belongs to (a name in the map).
    pub group: String,
    /// The group's shards from each of the map's switch times on, oldest
    /// first: where a keyless Begin goes, worked out once here rather than
    /// from every shard's history on every Begin.
    pub(in crate::runtime) own: Vec<(u64, Vec<Shard>)>,
    /// The switches into this group whose keys were all handed over here
    /// (`(shard, from_ms)`, from the database).
    pub(in crate::runtime) handed_over: HashSet<(Shard, u64)>,
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
            handed_over: HashSet::new(),
        })
    }

    /// The newest of this map and the database's copy, with the database's
    /// handovers.
    pub(in crate::runtime) fn with_stored(&self, stored: StoredShards) -> Result<Self, String> {
        let map = (*self.map).clone().newest(stored.map);
        let mut next = if map.version == self.map.version {
            self.clone()
        } else {
            Self::new(map, self.group.clone())?
        };
        next.handed_over = stored.handed_over.into_iter().collect();
        Ok(next)
    }

    /// The group's shards at `at_ms`.
    pub(in crate::runtime) fn own_at(&self, at_ms: u64) -> &[Shard] {
        self.own
            .iter()
            .rev()
            .find(|(from_ms, _)| *from_ms <= at_ms)
            .map_or(&[], |(_, shards)| shards.as_slice())
    }

    /// Why keyed requests of `shard`, this group's at `now_ms`, must wait
    /// (None: they need not). §11 step 3: the shard came here and the
    /// previous owner's keys are not all here yet, so a retried Begin could
    /// not find its first transaction. Step 2: the shard leaves this group
    /// within the margin, and its keys are about to be copied to the next
    /// owner, so a key taken here now could be missed there.
    pub(in crate::runtime) fn keys_wait(&self, shard: Shard, now_ms: u64) -> Option<String> {
        let history = self.map.owners.get(usize::from(shard.0))?;
        let current = history.iter().rposition(|o| o.from_ms <= now_ms)?;
        let owner = &history[current];
        if current > 0 && !self.handed_over.contains(&(shard, owner.from_ms)) {
            return Some(format!(
                "shard {} came to group {:?} at {} ms and the idempotency keys of group {:?} \
                 are still being handed over; retry",
                shard.0,
                owner.group,
                owner.from_ms,
                history[current - 1].group
            ));
        }
        let next = history.get(current + 1)?;
        (now_ms.saturating_add(MARGIN_MS) >= next.from_ms).then(|| {
            format!(
                "shard {} moves to group {:?} at {} ms: its new idempotency keys go there; retry",
                shard.0, next.group, next.from_ms
            )
        })
    }

    /// The switches into this group whose keys are not all here yet.
    pub fn pending_handovers(&self) -> Vec<(Shard, u64)> {
        (0u16..)
            .zip(self.map.owners.iter())
            .flat_map(|(shard, history)| {
                history
                    .iter()
                    .skip(1)
                    .filter(|o| o.group == self.group)
                    .map(move |o| (Shard(shard), o.from_ms))
            })
            .filter(|switch| !self.handed_over.contains(switch))
            .collect()
    }

    /// Whether `shard` changed hands at `from_ms`, from this group to
    /// another (`Some(false)`) or to this group from another
    /// (`Some(true)`); None if it did neither.
    pub(in crate::runtime) fn switch_at(&self, shard: Shard, from_ms: u64) -> Option<bool> {
        let history = self.map.owners.get(usize::from(shard.0))?;
        let at = history.iter().position(|o| o.from_ms == from_ms)?;
        let before = history.get(at.checked_sub(1)?)?;
        let after = &history[at];
        if before.group == self.group {
            Some(false)
        } else if after.group == self.group {
            Some(true)
        } else {
            None
        }
    }

    /// The error that sends a call about `what` to `group`: its nodes, the
    /// first chosen by `spread` so that calls spread over them, the others
    /// to try in turn when it cannot be reached.
    pub(in crate::runtime) fn elsewhere(&self, group: &str, spread: usize, what: String) -> Error {
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

/// The map a node follows now, replaced whole when a newer one is read.
pub(crate) struct Placement(pub(in crate::runtime) RwLock<Arc<Sharding>>);

impl Placement {
    pub(in crate::runtime) fn now(&self) -> Arc<Sharding> {
        Arc::clone(
            &self
                .0
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
        )
    }

    pub(in crate::runtime) fn set(&self, sharding: Sharding) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(sharding);
    }
}
