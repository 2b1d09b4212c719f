//! Where a transaction belongs when a deployment has several groups of
//! nodes (DESIGN §11), each group its own database: this node answers for
//! its own group's transactions, and for another group's names a node of
//! that group, which the API forwards the call to (one hop, as between the
//! nodes of one group, §6). New ids carry their shard. Without a shard map
//! (`concord serve --shard-map`) every transaction is this node's group's,
//! as before.
//!
//! The map a node follows is the newest of the one it was started with and
//! its database's copy, read again every [`REFRESH_MS`]; `concord shards`
//! writes new versions through any node of each group ([`Runtime::put_shard_map`]).
//! A shard that moves (§11 steps 1–4) makes keyed requests of it wait, on
//! the old owner from its switch time less [`MARGIN_MS`], on the new one
//! until the old owner's keys are handed over
//! ([`Runtime::shard_keys`], [`Runtime::adopt_shard_keys`]); a key handed
//! over sends its retried request to the group that holds its transaction.

use crate::runtime::error::Error;
use crate::runtime::shared::Runtime;

use crate::model::RequestDigest;
use crate::model::TxnId;
use crate::runtime::shared::Shared;
use crate::store::Store;
use crate::store::StoreError;
use std::sync::Arc;
use std::time::Duration;

use std::sync::RwLock;

use crate::shard::{MARGIN_MS, REFRESH_MS, Shard, ShardMap};
use crate::store::shards::HandedKey;

pub(crate) mod placement;

pub(crate) use placement::Placement;
pub use placement::Sharding;

/// At start: writes the map the node was given to its database (kept only
/// if newer than the copy there) and follows the newest. Refused when the
/// database is another group's log.
pub(super) async fn settle(
    store: &dyn Store,
    given: Option<Sharding>,
) -> Result<Option<Placement>, StoreError> {
    let Some(given) = given else {
        return Ok(None);
    };
    store.put_shard_map(&given.group, &given.map).await?;
    let sharding = match store.shard_map().await? {
        Some(stored) => given.with_stored(stored).map_err(StoreError::Corrupt)?,
        None => given,
    };
    tracing::info!(
        group = %sharding.group,
        version = sharding.map.version,
        shards = sharding.map.shards,
        "serving one group of a sharded deployment"
    );
    Ok(Some(Placement(RwLock::new(Arc::new(sharding)))))
}

/// Reads the database's copy of the map every [`REFRESH_MS`] until
/// shutdown, so that a version `concord shards` wrote through another node
/// of the group is followed here within that time.
pub(super) async fn follow(shared: Arc<Shared>) {
    let runtime = Runtime {
        shared: Arc::clone(&shared),
    };
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(REFRESH_MS)) => {}
        }
        if let Err(error) = runtime.reread_shard_map().await {
            tracing::warn!(%error, "cannot read the shard map from the database; following the one held");
        }
    }
}

impl Runtime {
    /// The map this node follows now; None in a deployment of one group.
    pub fn sharding(&self) -> Option<Arc<Sharding>> {
        self.shared.placement.as_ref().map(Placement::now)
    }

    fn placement(&self) -> Result<&Placement, Error> {
        self.shared.placement.as_ref().ok_or_else(|| {
            Error::Sharding(
                "this node runs without a shard map (concord serve --shard-map --group)".into(),
            )
        })
    }

    /// Follows the database's copy of the map if it is newer, or if it
    /// records handovers this node has not seen.
    async fn reread_shard_map(&self) -> Result<(), Error> {
        let placement = self.placement()?;
        let Some(stored) = self.shared.store.shard_map().await? else {
            return Ok(());
        };
        let now = placement.now();
        if stored.map.version <= now.map.version
            && stored.handed_over.len() == now.handed_over.len()
        {
            return Ok(());
        }
        let next = now.with_stored(stored).map_err(Error::Unavailable)?;
        if next.map.version > now.map.version {
            tracing::info!(version = next.map.version, "following a newer shard map");
        }
        placement.set(next);
        Ok(())
    }

    /// Writes `map` to this group's database (kept if newer than its copy)
    /// and follows it at once; the other nodes of the group follow within
    /// [`REFRESH_MS`]. Returns the version the database holds.
    pub async fn put_shard_map(&self, map: ShardMap) -> Result<u64, Error> {
        let placement = self.placement()?;
        // The database's copy is the one to extend: this node may not have
        // followed it yet.
        self.reread_shard_map().await?;
        let now = placement.now();
        // Checked whole before anything is written: a map that drops this
        // group, breaks a rule or rewrites what an earlier version said is
        // refused with the reason. An older or equal version is not
        // written; the database then tells which version it holds.
        Sharding::new(map.clone(), now.group.clone()).map_err(Error::Sharding)?;
        if map.version > now.map.version {
            map.extends(&now.map)
                .map_err(|e| Error::Sharding(e.to_string()))?;
            // A shard taken from this group at a time already (nearly)
            // passed here would take with it the transactions this group
            // began in it meanwhile.
            map.departs_in_time(&now.map, &now.group, self.shared.config.clock.now_ms())
                .map_err(|e| Error::Sharding(e.to_string()))?;
        } else if map.version == now.map.version && map != *now.map {
            return Err(Error::Sharding(format!(
                "group {:?} holds another map of version {}: read the newest (concord shards \
                 show) and write the next version",
                now.group, map.version
            )));
        }
        let held = match self.shared.store.put_shard_map(&now.group, &map).await {
            Err(StoreError::Refused(why)) => return Err(Error::Sharding(why)),
            other => other?,
        };
        self.reread_shard_map().await?;
        Ok(held)
    }

    /// §11 step 3, the old owner's side: up to `limit` idempotency keys of
    /// `shard`, which this group gave up at `from_ms`, after `after` in key
    /// order; with the key to resume after, None once every key was read.
    /// Refused until `from_ms` plus [`MARGIN_MS`] has passed here, so that
    /// no key of the shard can still be logged by this group (the fence
    /// refuses them from `from_ms` less the margin).
    pub async fn shard_keys(
        &self,
        shard: Shard,
        from_ms: u64,
        after: &str,
        limit: u32,
    ) -> Result<(Vec<HandedKey>, Option<String>), Error> {
        let sharding = self.placement()?.now();
        if sharding.switch_at(shard, from_ms) != Some(false) {
            return Err(Error::Sharding(format!(
                "group {:?} does not give shard {} up at {from_ms} ms in map version {}",
                sharding.group, shard.0, sharding.map.version
            )));
        }
        let now = self.shared.config.clock.now_ms();
        let ready = from_ms.saturating_add(MARGIN_MS);
        if now < ready {
            return Err(Error::Unavailable(format!(
                "shard {}'s keys are handed over from {ready} ms on (its switch time plus the \
                 margin), {} ms from now; retry then",
                shard.0,
                ready - now
            )));
        }
        let limit = limit.clamp(1, 10_000);
        let mut keys = Vec::new();
        let mut cursor = after.to_owned();
        loop {
            let page = self.shared.store.shard_keys(&cursor, limit).await?;
            let exhausted = page.len() < limit as usize;
            if let Some(last) = page.last() {
                cursor = last.key.clone();
            }
            keys.extend(
                page.into_iter()
                    .filter(|k| sharding.map.shard_for_key(&k.key) == shard),
            );
            if exhausted {
                return Ok((keys, None));
            }
            if keys.len() >= limit as usize {
                return Ok((keys, Some(cursor)));
            }
        }
    }

    /// §11 step 3, the new owner's side: keeps `keys` of `shard`, which
    /// came to this group at `from_ms`; with `last`, keyed requests of the
    /// shard are taken from then on.
    pub async fn adopt_shard_keys(
        &self,
        shard: Shard,
        from_ms: u64,
        keys: Vec<HandedKey>,
        last: bool,
    ) -> Result<(), Error> {
        let sharding = self.placement()?.now();
        if sharding.switch_at(shard, from_ms) != Some(true) {
            return Err(Error::Sharding(format!(
                "shard {} does not come to group {:?} at {from_ms} ms in map version {}",
                shard.0, sharding.group, sharding.map.version
            )));
        }
        if let Some(stray) = keys
            .iter()
            .find(|k| sharding.map.shard_for_key(&k.key) != shard)
        {
            return Err(Error::Sharding(format!(
                "idempotency key {:?} is not of shard {}",
                stray.key, shard.0
            )));
        }
        self.shared
            .store
            .adopt_shard_keys(shard, from_ms, &keys, last)
            .await?;
        if last {
            self.reread_shard_map().await?;
        }
        Ok(())
    }

    /// Ok when `id` is this node's group's; otherwise where the call goes.
    pub(super) fn in_group(&self, id: TxnId) -> Result<(), Error> {
        let Some(sharding) = self.sharding() else {
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
    /// any shard of this group. UNAVAILABLE while the key's shard moves.
    pub fn key_in_group(&self, key: Option<&str>) -> Result<(), Error> {
        let (Some(sharding), Some(key)) = (self.sharding(), key) else {
            return Ok(());
        };
        let shard = sharding.map.shard_for_key(key);
        let now_ms = self.shared.config.clock.now_ms();
        let owner = sharding.map.owner_at(shard, now_ms);
        if owner != sharding.group {
            return Err(sharding.elsewhere(
                owner,
                usize::from(shard.0),
                format!(
                    "a new transaction with idempotency key {key:?} (shard {})",
                    shard.0
                ),
            ));
        }
        match sharding.keys_wait(shard, now_ms) {
            Some(reason) => Err(Error::Unavailable(reason)),
            None => Ok(()),
        }
    }

    /// Whether the shard of `key` belonged to this group before it moved
    /// away (DESIGN §11): this group's log may hold the key's transaction,
    /// so a request with the key is looked up here before it is sent on.
    pub fn key_was_here(&self, key: &str) -> bool {
        let Some(sharding) = self.sharding() else {
            return false;
        };
        let shard = sharding.map.shard_for_key(key);
        sharding
            .map
            .owners
            .get(usize::from(shard.0))
            .is_some_and(|history| history.iter().any(|o| o.group == sharding.group))
    }

    /// A key this group's log does not hold but which was handed over to it
    /// when its shard moved here: the error that sends the request to the
    /// group holding the key's transaction, which answers it (R7 across a
    /// move). None when the key is new.
    pub(super) async fn handed_over(
        &self,
        key: &str,
        digest: Option<&RequestDigest>,
    ) -> Result<Option<Error>, Error> {
        if self.shared.placement.is_none() {
            return Ok(None);
        }
        let Some(handed) = self.shared.store.handed_over_key(key).await? else {
            return Ok(None);
        };
        if let (Some(first), Some(digest)) = (&handed.request_digest, digest)
            && first != digest
        {
            return Err(Error::KeyReused {
                key: key.to_owned(),
                id: handed.txn_id,
            });
        }
        Ok(Some(match self.in_group(handed.txn_id) {
            Err(elsewhere) => elsewhere,
            Ok(()) => Error::Unavailable(format!(
                "idempotency key {key:?} was handed over to this group for transaction {}, \
                 which its log does not hold",
                handed.txn_id
            )),
        }))
    }

    /// A new transaction's id: with a shard map, stamped with its key's
    /// shard or, without a key, with one of this group's shards.
    pub(super) fn mint(&self, key: Option<&str>) -> Result<TxnId, Error> {
        let minted = self.shared.config.clock.mint();
        let Some(sharding) = self.sharding() else {
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
        // Checked again at the id's own millisecond: on a SQLite log this
        // node is the only fence (a PostgreSQL log also refuses the row).
        if key.is_some()
            && let Some(reason) = sharding.keys_wait(shard, at_ms)
        {
            return Err(Error::Unavailable(reason));
        }
        Ok(map.stamp(minted, shard))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::Group;

    fn sharding(group: &str, switch_ms: u64) -> Sharding {
        let node = |name: &str| Group {
            name: name.into(),
            nodes: vec![format!("http://{name}.invalid:7400")],
        };
        // Shards 0–1 g1's, 2–3 g2's; shard 1 moves to g2 at `switch_ms`.
        let map = ShardMap::split(4, vec![node("g1"), node("g2")], 0)
            .and_then(|map| map.with_move(Shard(1), "g2", switch_ms))
            .expect("a map");
        Sharding::new(map, group.into()).expect("a group")
    }

    /// §11 steps 2 and 3: keyed requests of a moving shard wait on the old
    /// owner from the switch less the margin, and on the new owner until
    /// the keys are handed over; other shards never wait.
    #[test]
    fn keys_of_a_moving_shard_wait_on_both_sides_of_the_switch_until_handed_over() {
        let switch = 100_000;
        let g1 = sharding("g1", switch);
        assert_eq!(g1.keys_wait(Shard(1), switch - MARGIN_MS - 1), None);
        let leaving = g1.keys_wait(Shard(1), switch - MARGIN_MS).expect("waits");
        assert!(leaving.contains("moves to group \"g2\""), "{leaving}");
        assert_eq!(g1.keys_wait(Shard(0), switch), None);
        assert_eq!(g1.switch_at(Shard(1), switch), Some(false));
        assert!(g1.pending_handovers().is_empty());

        let mut g2 = sharding("g2", switch);
        assert_eq!(g2.switch_at(Shard(1), switch), Some(true));
        assert_eq!(g2.switch_at(Shard(2), 0), None, "no switch at the founding");
        assert_eq!(g2.pending_handovers(), [(Shard(1), switch)]);
        let arriving = g2.keys_wait(Shard(1), switch).expect("waits");
        assert!(arriving.contains("still being handed over"), "{arriving}");
        // Shards owned from the founding owe no keys.
        assert_eq!(g2.keys_wait(Shard(2), switch), None);
        g2.handed_over.insert((Shard(1), switch));
        assert_eq!(g2.keys_wait(Shard(1), switch), None);
        assert!(g2.pending_handovers().is_empty());
    }
}
