//! Shards and the shard map (DESIGN §11): which group of coordinator nodes
//! — one PostgreSQL and the nodes sharing it — owns a transaction.
//!
//! Pure, like [`crate::protocol`]: no I/O, no clock. A transaction's shard
//! is written into its id (UUIDv7's 12 `rand_a` bits), and the map keeps,
//! per shard, the history of its owners by millisecond. A transaction
//! belongs, forever, to the group that owned its shard at the millisecond
//! in its id: routing needs nothing but the id and the map, and moving a
//! shard never moves a transaction (those minted before the switch finish
//! where they are). Ids minted before the map was founded (a deployment
//! that grew from one group) belong to the founding group, whatever their
//! random bits say.
//!
//! Its own crate so that the coordinator (routing, the store's copy of the
//! map, `concord shards`) and the client SDK (sending each call to the
//! right group) share one reading of the map: a client that computed a
//! key's shard differently would send retried Begins astray.

use concord_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// An id a shard can be written into: a UUIDv7 (the coordinator's `TxnId`
/// wraps one).
pub trait ShardedId: Copy {
    /// The millisecond the id was minted at (UUIDv7's timestamp).
    fn unix_ms(&self) -> u64;
    /// The 12 bits after the version (UUIDv7's `rand_a`): random in an id
    /// minted alone, a shard number in a sharded deployment.
    fn rand_a(&self) -> u16;
    /// This id with `bits` (their low 12) as its `rand_a`; the time, the
    /// version, the variant and the other random bits unchanged.
    fn with_rand_a(self, bits: u16) -> Self;
}

impl ShardedId for Uuid {
    fn unix_ms(&self) -> u64 {
        let b = self.as_bytes();
        u64::from_be_bytes([0, 0, b[0], b[1], b[2], b[3], b[4], b[5]])
    }

    fn rand_a(&self) -> u16 {
        let b = self.as_bytes();
        (u16::from(b[6] & 0x0f) << 8) | u16::from(b[7])
    }

    fn with_rand_a(self, bits: u16) -> Self {
        let mut b = *self.as_bytes();
        b[6] = (b[6] & 0xf0) | ((bits >> 8) as u8 & 0x0f);
        b[7] = (bits & 0xff) as u8;
        Uuid::from_bytes(b)
    }
}

/// Most shards a map may have: the ids' `rand_a` holds 12 bits.
pub const MAX_SHARDS: u16 = 4096;

/// Shards of a new map unless told otherwise.
pub const DEFAULT_SHARDS: u16 = 256;

/// How often a node reads its database's copy of the map (§11).
pub const REFRESH_MS: u64 = 1_000;

/// How long before a shard's switch time its old owner stops taking new
/// idempotency keys of it (§11 step 2), so that none is logged there after
/// the keys are copied to the new owner; also how long after the switch
/// the copy waits, for a clock behind by as much.
pub const MARGIN_MS: u64 = 1_000;

/// The least time from now a switch may be set at: every node has read
/// the new version (twice the refresh interval) before its old owner stops
/// taking keys (the margin).
pub const MIN_SWITCH_DELAY_MS: u64 = 2 * REFRESH_MS + 2 * MARGIN_MS;

/// A shard's number, below the map's shard count.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Shard(pub u16);

/// A group: a name, and the addresses of its nodes (for routing).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Group {
    pub name: String,
    pub nodes: Vec<String>,
}

/// A shard's owner from a millisecond on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub group: String,
    pub from_ms: u64,
}

/// The shard map: versioned, the highest version wins (DESIGN §11).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub version: u64,
    /// A power of two, at most [`MAX_SHARDS`]; fixed for the map's life.
    pub shards: u16,
    /// Ids minted before this millisecond belong to the founding group.
    pub founded_ms: u64,
    pub founding_group: String,
    pub groups: Vec<Group>,
    /// Per shard, its owners by `from_ms`, strictly rising, the first from
    /// `founded_ms`.
    pub owners: Vec<Vec<Owner>>,
}

/// Why a map, or a change to it, is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("{0} shards: the count must be a power of two from 1 to {MAX_SHARDS}")]
    BadShardCount(u16),
    #[error("no group named {0:?}")]
    UnknownGroup(String),
    #[error("a group named {0:?} exists already")]
    DuplicateGroup(String),
    #[error("a group needs a name and at least one node address")]
    EmptyGroup,
    #[error("shard {shard} does not exist (the map has {shards})")]
    NoSuchShard { shard: u16, shards: u16 },
    #[error("shard {shard} already belongs to group {group:?}")]
    AlreadyOwner { shard: u16, group: String },
    #[error(
        "shard {shard} cannot change hands at {at_ms}: its last change is at {last_ms}, and \
         a switch time must be later"
    )]
    NotAfter {
        shard: u16,
        at_ms: u64,
        last_ms: u64,
    },
    #[error("shard {shard} is not moving: its last change, to group {group:?}, is in the past")]
    NotMoving { shard: u16, group: String },
    #[error(
        "shard {shard} would leave group {group:?} at {at_ms} ms, and it is {now_ms} ms there: \
         the group may have begun transactions of the shard since, which the map would then \
         give to another group; a switch must be at least {MARGIN_MS} ms ahead on the clock \
         of the group the shard leaves (concord shards move sets it so)"
    )]
    LateSwitch {
        shard: u16,
        group: String,
        at_ms: u64,
        now_ms: u64,
    },
    #[error("shard {shard}'s owners are not in order from the founding: {why}")]
    BadHistory { shard: u16, why: String },
    #[error(
        "version {version} does not extend version {held}: {why} (a later version may only add \
         groups, change groups' node addresses and add switches after the last)"
    )]
    Rewrites {
        version: u64,
        held: u64,
        why: String,
    },
    #[error("the map has {owners} shard histories for {shards} shards")]
    WrongLength { owners: usize, shards: u16 },
}

impl ShardMap {
    /// Version 1: every shard owned by `founding` from `founded_ms` on.
    pub fn new(shards: u16, founding: Group, founded_ms: u64) -> Result<Self, MapError> {
        check_group(&founding)?;
        let map = Self {
            version: 1,
            shards,
            founded_ms,
            founding_group: founding.name.clone(),
            owners: vec![
                vec![Owner {
                    group: founding.name.clone(),
                    from_ms: founded_ms,
                }];
                usize::from(shards)
            ],
            groups: vec![founding],
        };
        map.validate()?;
        Ok(map)
    }

    /// Version 1 of a deployment founded with several groups: the shards
    /// split among `groups` in order, in runs as even as the count allows
    /// (the first group's from shard 0). The first group is the founding
    /// group. No shard has changed hands, so no keys are owed anywhere.
    pub fn split(shards: u16, groups: Vec<Group>, founded_ms: u64) -> Result<Self, MapError> {
        let mut groups = groups.into_iter();
        let founding = groups.next().ok_or(MapError::EmptyGroup)?;
        let mut map = Self::new(shards, founding, founded_ms)?;
        for group in groups {
            check_group(&group)?;
            if map.group(&group.name).is_ok() {
                return Err(MapError::DuplicateGroup(group.name));
            }
            map.groups.push(group);
        }
        let count = map.groups.len();
        for (shard, history) in map.owners.iter_mut().enumerate() {
            history[0].group = map.groups[shard * count / usize::from(shards)].name.clone();
        }
        map.validate()?;
        Ok(map)
    }

    /// Checks what a map read from a file or a database must hold.
    pub fn validate(&self) -> Result<(), MapError> {
        if !self.shards.is_power_of_two() || self.shards > MAX_SHARDS {
            return Err(MapError::BadShardCount(self.shards));
        }
        if self.owners.len() != usize::from(self.shards) {
            return Err(MapError::WrongLength {
                owners: self.owners.len(),
                shards: self.shards,
            });
        }
        for (i, group) in self.groups.iter().enumerate() {
            check_group(group)?;
            if self.groups[..i].iter().any(|g| g.name == group.name) {
                return Err(MapError::DuplicateGroup(group.name.clone()));
            }
        }
        self.group(&self.founding_group)?;
        for (shard, history) in (0u16..).zip(&self.owners) {
            let bad = |why: &str| MapError::BadHistory {
                shard,
                why: why.to_owned(),
            };
            let first = history.first().ok_or_else(|| bad("no owner"))?;
            if first.from_ms != self.founded_ms {
                return Err(bad("the first owner does not start at the founding"));
            }
            for pair in history.windows(2) {
                if pair[1].from_ms <= pair[0].from_ms {
                    return Err(bad("switch times do not rise"));
                }
                if pair[1].group == pair[0].group {
                    return Err(bad("an owner follows itself"));
                }
            }
            for owner in history {
                self.group(&owner.group)?;
            }
        }
        Ok(())
    }

    fn group(&self, name: &str) -> Result<&Group, MapError> {
        self.groups
            .iter()
            .find(|g| g.name == name)
            .ok_or_else(|| MapError::UnknownGroup(name.to_owned()))
    }

    /// The shard written in `id`; None for an id minted before the map was
    /// founded (its `rand_a` is random, not a shard).
    pub fn shard_of(&self, id: impl ShardedId) -> Option<Shard> {
        (id.unix_ms() >= self.founded_ms).then(|| Shard(id.rand_a() % self.shards))
    }

    /// The group `id` belongs to, forever: the owner of its shard at the
    /// millisecond it was minted.
    pub fn group_of(&self, id: impl ShardedId) -> &str {
        match self.shard_of(id) {
            Some(shard) => self.owner_at(shard, id.unix_ms()),
            None => &self.founding_group,
        }
    }

    /// Who owns `shard` at `ms` (the founding group before the founding).
    pub fn owner_at(&self, shard: Shard, ms: u64) -> &str {
        self.owners
            .get(usize::from(shard.0))
            .and_then(|history| history.iter().rev().find(|o| o.from_ms <= ms))
            .map_or(&self.founding_group, |owner| &owner.group)
    }

    /// The node addresses of the group `id` belongs to.
    pub fn nodes_of(&self, id: impl ShardedId) -> &[String] {
        self.nodes_of_group(self.group_of(id))
    }

    /// The node addresses of the group named `group` (none when the map
    /// has no such group).
    pub fn nodes_of_group(&self, group: &str) -> &[String] {
        self.group(group)
            .map_or(&[], |group| group.nodes.as_slice())
    }

    /// The shard of a Begin with an idempotency key: the same for every
    /// retry, on every node and every version of Concord (SHA-256, not a
    /// process-seeded hash), so a retried Begin finds its transaction.
    pub fn shard_for_key(&self, key: &str) -> Shard {
        let digest = Sha256::digest(key.as_bytes());
        let mut head = [0u8; 8];
        head.copy_from_slice(&digest[..8]);
        Shard((u64::from_be_bytes(head) % u64::from(self.shards)) as u16)
    }

    /// The shards `group` owns at `ms`: where its nodes put a Begin without
    /// a key, so that it never leaves the node it reached.
    pub fn shards_of(&self, group: &str, ms: u64) -> Vec<Shard> {
        (0..self.shards)
            .map(Shard)
            .filter(|shard| self.owner_at(*shard, ms) == group)
            .collect()
    }

    /// `minted` (a fresh id) stamped with `shard`.
    pub fn stamp<I: ShardedId>(&self, minted: I, shard: Shard) -> I {
        minted.with_rand_a(shard.0 % self.shards)
    }

    /// The next version, with `group` added (owning nothing yet).
    pub fn with_group(&self, group: Group) -> Result<Self, MapError> {
        check_group(&group)?;
        if self.group(&group.name).is_ok() {
            return Err(MapError::DuplicateGroup(group.name));
        }
        let mut next = self.clone();
        next.version += 1;
        next.groups.push(group);
        Ok(next)
    }

    /// `shard`'s owners by switch time, the last the current or coming one.
    pub fn history(&self, shard: Shard) -> Result<&[Owner], MapError> {
        self.owners
            .get(usize::from(shard.0))
            .map(Vec::as_slice)
            .ok_or(MapError::NoSuchShard {
                shard: shard.0,
                shards: self.shards,
            })
    }

    /// The next version, in which `shard` belongs to `to` from `at_ms` on:
    /// every id of the shard minted before `at_ms` keeps its group (a move
    /// moves no transaction), and `at_ms` must come after the shard's last
    /// change.
    pub fn with_move(&self, shard: Shard, to: &str, at_ms: u64) -> Result<Self, MapError> {
        self.group(to)?;
        let history = self.history(shard)?;
        let last = history.last().ok_or_else(|| MapError::BadHistory {
            shard: shard.0,
            why: "no owner".into(),
        })?;
        if last.group == to {
            return Err(MapError::AlreadyOwner {
                shard: shard.0,
                group: to.to_owned(),
            });
        }
        if at_ms <= last.from_ms {
            return Err(MapError::NotAfter {
                shard: shard.0,
                at_ms,
                last_ms: last.from_ms,
            });
        }
        let mut next = self.clone();
        next.version += 1;
        next.owners[usize::from(shard.0)].push(Owner {
            group: to.to_owned(),
            from_ms: at_ms,
        });
        Ok(next)
    }

    /// The next version, in which the move of `shard` still ahead at
    /// `now_ms` is called off: the shard goes back to the group it leaves
    /// one millisecond after the switch. A version may only add to the
    /// past ([`ShardMap::extends`]), and a switch another group may already
    /// have acted on cannot be taken back safely, so the move is answered
    /// by a move: the group it was going to owns the shard for that one
    /// millisecond, in which it begins nothing keyed (the keys are not
    /// handed over yet) and at most a keyless transaction or two, which
    /// stay its own.
    pub fn with_cancelled_move(&self, shard: Shard, now_ms: u64) -> Result<Self, MapError> {
        let (last, before) = match self.history(shard)? {
            [.., before, last] if last.from_ms > now_ms => (last, before),
            [.., last] => {
                return Err(MapError::NotMoving {
                    shard: shard.0,
                    group: last.group.clone(),
                });
            }
            [] => {
                return Err(MapError::BadHistory {
                    shard: shard.0,
                    why: "no owner".into(),
                });
            }
        };
        self.with_move(shard, &before.group, last.from_ms + 1)
    }

    /// Ok when this map, a later version, keeps everything `held` says
    /// about the past: the same shards and founding, every group still
    /// there (its node addresses may change), and each shard's owners as
    /// they were, switches only added after them. So no id changes group
    /// (DESIGN §11) whoever writes the next version.
    pub fn extends(&self, held: &ShardMap) -> Result<(), MapError> {
        let rewrites = |why: String| MapError::Rewrites {
            version: self.version,
            held: held.version,
            why,
        };
        if self.version <= held.version {
            return Err(rewrites("it is not a later version".into()));
        }
        if (self.shards, self.founded_ms, &self.founding_group)
            != (held.shards, held.founded_ms, &held.founding_group)
        {
            return Err(rewrites(
                "the shard count, the founding time or the founding group differ".into(),
            ));
        }
        if let Some(gone) = held.groups.iter().find(|g| self.group(&g.name).is_err()) {
            return Err(rewrites(format!("group {:?} is missing", gone.name)));
        }
        for (shard, (new, old)) in self.owners.iter().zip(&held.owners).enumerate() {
            if new.len() < old.len() || new[..old.len()] != old[..] {
                return Err(rewrites(format!("shard {shard}'s owners were changed")));
            }
        }
        Ok(())
    }

    /// Ok unless this map, a later version than `held`, adds a switch that
    /// takes a shard away from `group` less than [`MARGIN_MS`] after
    /// `now_ms` (the group's clock): until `group` reads it, the group
    /// keeps beginning transactions of the shard, and those begun after
    /// the switch time would be placed in the group the shard goes to,
    /// whose log does not hold them (DESIGN §11). A switch into `group`,
    /// or between two other groups, may be in the past: the group begins
    /// nothing of a shard it does not own.
    pub fn departs_in_time(
        &self,
        held: &ShardMap,
        group: &str,
        now_ms: u64,
    ) -> Result<(), MapError> {
        for (shard, (new, old)) in (0u16..).zip(self.owners.iter().zip(&held.owners)) {
            for (i, switch) in new.iter().enumerate().skip(old.len().max(1)) {
                let leaves = new[i - 1].group == group && switch.group != group;
                if leaves && switch.from_ms < now_ms.saturating_add(MARGIN_MS) {
                    return Err(MapError::LateSwitch {
                        shard,
                        group: group.to_owned(),
                        at_ms: switch.from_ms,
                        now_ms,
                    });
                }
            }
        }
        Ok(())
    }

    /// The switches this map, a later version than `held`, adds into
    /// `group` at a time less than [`MARGIN_MS`] after `now_ms`: `(shard,
    /// the group it comes from, the switch time)`. The group may take them
    /// only once the group the shard leaves holds them, or both would
    /// begin transactions of the shard (DESIGN §11).
    pub fn late_arrivals(
        &self,
        held: &ShardMap,
        group: &str,
        now_ms: u64,
    ) -> Vec<(Shard, String, u64)> {
        let mut late = Vec::new();
        for (shard, (new, old)) in (0u16..).zip(self.owners.iter().zip(&held.owners)) {
            for (i, switch) in new.iter().enumerate().skip(old.len().max(1)) {
                let from = &new[i - 1].group;
                if switch.group == group
                    && from != group
                    && switch.from_ms < now_ms.saturating_add(MARGIN_MS)
                {
                    late.push((Shard(shard), from.clone(), switch.from_ms));
                }
            }
        }
        late
    }

    /// Of two copies of the map, the one to believe: the higher version.
    pub fn newest(self, other: Self) -> Self {
        if other.version > self.version {
            other
        } else {
            self
        }
    }
}

impl ShardMap {
    /// The map as the API carries it (`GetShardMap`, `PutShardMap`).
    pub fn to_wire(&self) -> pb::ShardMap {
        pb::ShardMap {
            version: self.version,
            shards: u32::from(self.shards),
            founded_ms: self.founded_ms,
            founding_group: self.founding_group.clone(),
            groups: self
                .groups
                .iter()
                .map(|g| pb::ShardGroup {
                    name: g.name.clone(),
                    nodes: g.nodes.clone(),
                })
                .collect(),
            owners: self
                .owners
                .iter()
                .map(|history| pb::ShardHistory {
                    owners: history
                        .iter()
                        .map(|o| pb::ShardOwner {
                            group: o.group.clone(),
                            from_ms: o.from_ms,
                        })
                        .collect(),
                })
                .collect(),
        }
    }

    /// A map from the API, checked whole ([`ShardMap::validate`]).
    pub fn from_wire(map: pb::ShardMap) -> Result<Self, MapError> {
        let shards = u16::try_from(map.shards).map_err(|_| MapError::BadShardCount(u16::MAX))?;
        let map = Self {
            version: map.version,
            shards,
            founded_ms: map.founded_ms,
            founding_group: map.founding_group,
            groups: map
                .groups
                .into_iter()
                .map(|g| Group {
                    name: g.name,
                    nodes: g.nodes,
                })
                .collect(),
            owners: map
                .owners
                .into_iter()
                .map(|h| {
                    h.owners
                        .into_iter()
                        .map(|o| Owner {
                            group: o.group,
                            from_ms: o.from_ms,
                        })
                        .collect()
                })
                .collect(),
        };
        map.validate()?;
        Ok(map)
    }
}

fn check_group(group: &Group) -> Result<(), MapError> {
    if group.name.trim().is_empty() || group.nodes.is_empty() {
        return Err(MapError::EmptyGroup);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
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
}
