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
mod tests;
