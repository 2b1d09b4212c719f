//! A group's database's share of a deployment of several groups (DESIGN
//! §11), written once for both SQL stores: which group the database is the
//! log of, its copy of the shard map, and the idempotency keys handed over
//! when a shard moved here. On PostgreSQL the map's owners also feed the
//! fence on new transaction rows (migrations/postgres/0010_shards.sql).

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::StoreError;
use super::rows::{parse_id, to_i64, to_u64};
use crate::model::{RequestDigest, TxnId};
use crate::shard::{MARGIN_MS, Shard, ShardMap};

/// What a group's database holds of the deployment.
#[derive(Clone, Debug)]
pub struct StoredShards {
    /// The group whose log this database is.
    pub group: String,
    /// The highest version written here.
    pub map: ShardMap,
    /// The switches whose idempotency keys were all handed over here:
    /// `(shard, from_ms)`.
    pub handed_over: Vec<(Shard, u64)>,
}

/// An idempotency key and the transaction it began, as one group hands it
/// to the next owner of its shard (§11 step 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandedKey {
    pub key: String,
    pub txn_id: TxnId,
    pub request_digest: Option<RequestDigest>,
}

/// A database that holds the tables, and how it takes its write lock.
pub(super) trait ShardTables: Database {
    /// The first statement of a transaction that writes these tables:
    /// serialises writers of the map (PostgreSQL), and takes SQLite's write
    /// lock at once, so that the reads after it cannot be outdated by
    /// another writer before the transaction writes.
    const LOCK: &'static str;
    /// Installs the fence on new transaction rows (§11 step 2) when the
    /// database becomes a group's log; None where the one node fences.
    const FENCE: Option<&'static str>;
}

impl ShardTables for sqlx::Sqlite {
    const LOCK: &'static str = "UPDATE shard_maps SET version = version WHERE 0";
    // One node per SQLite log: it checks the rules itself when it mints
    // an id (runtime/groups.rs).
    const FENCE: Option<&'static str> = None;
}

impl ShardTables for sqlx::Postgres {
    const LOCK: &'static str = "LOCK TABLE shard_maps IN EXCLUSIVE MODE";
    const FENCE: Option<&'static str> = Some(
        "CREATE OR REPLACE TRIGGER transactions_shard_fence BEFORE INSERT ON transactions
         FOR EACH ROW EXECUTE FUNCTION concord_shard_fence()",
    );
}

const GROUP: &str = "SELECT name FROM shard_group";
const NEWEST_MAP: &str = "SELECT body FROM shard_maps ORDER BY version DESC LIMIT 1";
const HANDOVERS: &str = "SELECT shard, from_ms FROM shard_handovers ORDER BY shard, from_ms";

/// Every key after `$1`, by key, at most `$2`: those this group's own
/// transactions took and those handed over to it before.
const KEYS: &str = "SELECT idempotency_key, id, request_digest FROM transactions
     WHERE idempotency_key > $1
     UNION ALL
     SELECT idempotency_key, txn_id, request_digest FROM handed_over_keys
     WHERE idempotency_key > $1
     ORDER BY 1 LIMIT $2";

/// The tables, on one store's pool.
pub(super) struct Shards<'p, DB: Database>(pub &'p Pool<DB>);

impl<DB: ShardTables> Shards<'_, DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> (i64,): FromRow<'r, DB::Row>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'r> (String, String, Option<String>): FromRow<'r, DB::Row>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
{
    /// What the database holds; None before a node of a sharded group
    /// first wrote a map here.
    pub async fn load(&self) -> Result<Option<StoredShards>, StoreError> {
        let group: Option<(String,)> = sqlx::query_as(GROUP).fetch_optional(self.0).await?;
        let body: Option<(String,)> = sqlx::query_as(NEWEST_MAP).fetch_optional(self.0).await?;
        let (Some((group,)), Some((body,))) = (group, body) else {
            return Ok(None);
        };
        let map = parse_map(&body)?;
        let rows: Vec<(i64, i64)> = sqlx::query_as(HANDOVERS).fetch_all(self.0).await?;
        let handed_over = rows
            .into_iter()
            .map(|(shard, from_ms)| {
                let shard = u16::try_from(shard)
                    .map_err(|_| StoreError::Corrupt(format!("shard number {shard}")))?;
                Ok((Shard(shard), to_u64(from_ms)))
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some(StoredShards {
            group,
            map,
            handed_over,
        }))
    }

    /// Writes `map` as `group`'s, when it is newer than the copy here;
    /// returns the version the database holds after. A database that is
    /// another group's log refuses (a node started with the wrong
    /// `--group` or database).
    pub async fn put(&self, group: &str, map: &ShardMap) -> Result<u64, StoreError> {
        let body = serde_json::to_string(map)
            .map_err(|e| StoreError::Corrupt(format!("cannot encode the shard map: {e}")))?;
        let mut tx = self.0.begin().await?;
        sqlx::query(DB::LOCK).execute(&mut *tx).await?;
        let known: Option<(String,)> = sqlx::query_as(GROUP).fetch_optional(&mut *tx).await?;
        match known {
            Some((known,)) if known != group => {
                return Err(StoreError::Unsafe(format!(
                    "this database is the log of group {known:?}, not of {group:?}: check the \
                     node's --group and --database-url"
                )));
            }
            Some(_) => {}
            None => {
                sqlx::query(
                    "INSERT INTO shard_group (name, shards, founded_ms, founding_group, margin_ms)
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(group.to_owned())
                .bind(i64::from(map.shards))
                .bind(to_i64(map.founded_ms))
                .bind(map.founding_group.clone())
                .bind(to_i64(MARGIN_MS))
                .execute(&mut *tx)
                .await?;
                if let Some(fence) = DB::FENCE {
                    sqlx::query(fence).execute(&mut *tx).await?;
                }
            }
        }
        let (newest,): (i64,) = sqlx::query_as("SELECT COALESCE(MAX(version), 0) FROM shard_maps")
            .fetch_one(&mut *tx)
            .await?;
        let newest = to_u64(newest);
        if newest == map.version {
            // Two writers may each have made a version from the same one
            // (two operators at once): the first written stands.
            let (held,): (String,) =
                sqlx::query_as("SELECT body FROM shard_maps WHERE version = $1")
                    .bind(to_i64(newest))
                    .fetch_one(&mut *tx)
                    .await?;
            if parse_map(&held)? != *map {
                return Err(StoreError::Refused(format!(
                    "another map holds version {newest} here: read the newest and write the \
                     next version"
                )));
            }
        }
        if newest >= map.version {
            tx.commit().await?;
            return Ok(newest);
        }
        sqlx::query("INSERT INTO shard_maps (version, body) VALUES ($1, $2)")
            .bind(to_i64(map.version))
            .bind(body)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM shard_owners")
            .execute(&mut *tx)
            .await?;
        for (shard, history) in (0i64..).zip(&map.owners) {
            for owner in history {
                sqlx::query(
                    "INSERT INTO shard_owners (shard, from_ms, group_name) VALUES ($1, $2, $3)",
                )
                .bind(shard)
                .bind(to_i64(owner.from_ms))
                .bind(owner.group.clone())
                .execute(&mut *tx)
                .await?;
            }
        }
        tx.commit().await?;
        Ok(map.version)
    }

    /// Up to `limit` keys after `after`, in key order.
    pub async fn keys(&self, after: &str, limit: u32) -> Result<Vec<HandedKey>, StoreError> {
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(KEYS)
            .bind(after.to_owned())
            .bind(i64::from(limit))
            .fetch_all(self.0)
            .await?;
        rows.into_iter().map(handed_key).collect()
    }

    /// Keeps `keys`, handed over for the switch of `shard` at `from_ms`;
    /// with `last`, records that every key of that switch is here.
    pub async fn adopt(
        &self,
        shard: Shard,
        from_ms: u64,
        keys: &[HandedKey],
        last: bool,
    ) -> Result<(), StoreError> {
        let mut tx = self.0.begin().await?;
        sqlx::query(DB::LOCK).execute(&mut *tx).await?;
        for key in keys {
            sqlx::query(
                "INSERT INTO handed_over_keys (idempotency_key, txn_id, request_digest)
                 VALUES ($1, $2, $3) ON CONFLICT (idempotency_key) DO NOTHING",
            )
            .bind(key.key.clone())
            .bind(key.txn_id.to_string())
            .bind(key.request_digest.clone())
            .execute(&mut *tx)
            .await?;
        }
        if last {
            sqlx::query(
                "INSERT INTO shard_handovers (shard, from_ms) VALUES ($1, $2)
                 ON CONFLICT (shard, from_ms) DO NOTHING",
            )
            .bind(i64::from(shard.0))
            .bind(to_i64(from_ms))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The key handed over here, if `key` is one.
    pub async fn handed_over_key(&self, key: &str) -> Result<Option<HandedKey>, StoreError> {
        let row: Option<(String, String, Option<String>)> = sqlx::query_as(
            "SELECT idempotency_key, txn_id, request_digest FROM handed_over_keys
             WHERE idempotency_key = $1",
        )
        .bind(key.to_owned())
        .fetch_optional(self.0)
        .await?;
        row.map(handed_key).transpose()
    }
}

fn handed_key(
    (key, id, request_digest): (String, String, Option<String>),
) -> Result<HandedKey, StoreError> {
    Ok(HandedKey {
        key,
        txn_id: parse_id(&id)?,
        request_digest,
    })
}

fn parse_map(body: &str) -> Result<ShardMap, StoreError> {
    let map: ShardMap = serde_json::from_str(body)
        .map_err(|e| StoreError::Corrupt(format!("the stored shard map: {e}")))?;
    map.validate()
        .map_err(|e| StoreError::Corrupt(format!("the stored shard map: {e}")))?;
    Ok(map)
}

/// The [`Store`](super::Store) methods that are these tables, for a store
/// whose pool is `self.pool`: the same in both SQL stores' impls.
macro_rules! store_shards {
    () => {
        fn shard_map(
            &self,
        ) -> BoxFuture<'_, Result<Option<super::shards::StoredShards>, StoreError>> {
            async move { super::shards::Shards(&self.pool).load().await }.boxed()
        }

        fn put_shard_map<'a>(
            &'a self,
            group: &'a str,
            map: &'a crate::shard::ShardMap,
        ) -> BoxFuture<'a, Result<u64, StoreError>> {
            async move { super::shards::Shards(&self.pool).put(group, map).await }.boxed()
        }

        fn shard_keys<'a>(
            &'a self,
            after: &'a str,
            limit: u32,
        ) -> BoxFuture<'a, Result<Vec<super::shards::HandedKey>, StoreError>> {
            async move { super::shards::Shards(&self.pool).keys(after, limit).await }.boxed()
        }

        fn adopt_shard_keys<'a>(
            &'a self,
            shard: crate::shard::Shard,
            from_ms: u64,
            keys: &'a [super::shards::HandedKey],
            last: bool,
        ) -> BoxFuture<'a, Result<(), StoreError>> {
            async move {
                super::shards::Shards(&self.pool)
                    .adopt(shard, from_ms, keys, last)
                    .await
            }
            .boxed()
        }

        fn handed_over_key<'a>(
            &'a self,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<super::shards::HandedKey>, StoreError>> {
            async move { super::shards::Shards(&self.pool).handed_over_key(key).await }.boxed()
        }
    };
}
pub(super) use store_shards;
