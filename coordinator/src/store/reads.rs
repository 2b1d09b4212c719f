//! The reads both SQL stores make of the log for callers (one transaction,
//! by id or by idempotency key, a page of the listing, and the change feed
//! WatchTransactions follows), written once. sqlx binds `$N` by its number
//! on SQLite as on PostgreSQL, so most statements are the same text;
//! [`SqlLog`] holds those that differ.

use sqlx::{Database, Encode, Executor, FromRow, IntoArguments, Pool, Type};

use super::rows::{
    ActionRow, BranchRow, ChangeRow, StepRow, TxnRow, actions, assemble, parse_id, to_i64, to_u64,
};
use super::{ListQuery, StoreError};
use crate::model::{Change, Cursor, TxnId, TxnKind, TxnView};

/// A database whose log the reads below run on.
pub(super) trait SqlLog: Database {
    /// One transaction's operator actions, oldest first, those of the same
    /// millisecond in the order they were written.
    const ACTIONS: &'static str;
    /// The changes after the cursor ($1 epoch, $2 seq), oldest first, at
    /// most $3: only those no later write can come before.
    const CHANGES: &'static str;
    /// The newest such change's cursor.
    const NEWEST_CHANGE: &'static str;
}

impl SqlLog for sqlx::Sqlite {
    const ACTIONS: &'static str =
        "SELECT * FROM operator_actions WHERE txn_id = $1 ORDER BY at_ms, rowid";
    // One writing thread: `seq` follows commit order, and a reader sees only
    // committed rows. The epoch is always 0 here.
    const CHANGES: &'static str =
        "SELECT 0 AS epoch, seq, txn_id, kind, from_state, to_state, subject, detail,
                needs_attention, at_ms
         FROM txn_changes WHERE (0, seq) > ($1, $2) ORDER BY seq LIMIT $3";
    const NEWEST_CHANGE: &'static str =
        "SELECT 0 AS epoch, seq FROM txn_changes ORDER BY seq DESC LIMIT 1";
}

impl SqlLog for sqlx::Postgres {
    const ACTIONS: &'static str =
        "SELECT * FROM operator_actions WHERE txn_id = $1 ORDER BY at_ms, seq";
    // Only rows of writers older than every one still running
    // (migrations/postgres/0008_changes.sql): any row written after has a
    // larger xid, so the cursor never skips one.
    const CHANGES: &'static str =
        "SELECT xid::text::bigint AS epoch, seq, txn_id, kind, from_state, to_state,
                subject, detail, needs_attention, at_ms
         FROM txn_changes
         WHERE (xid, seq) > ($1::bigint::text::xid8, $2)
           AND xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY xid, seq
         LIMIT $3";
    const NEWEST_CHANGE: &'static str = "SELECT xid::text::bigint AS epoch, seq FROM txn_changes
         WHERE xid < pg_snapshot_xmin(pg_current_snapshot())
         ORDER BY xid DESC, seq DESC LIMIT 1";
}

const TRANSACTION: &str = "SELECT t.*, ((SELECT COUNT(*) FROM branches b WHERE b.txn_id = t.id)
                + (SELECT COUNT(*) FROM saga_steps s WHERE s.txn_id = t.id)) AS branch_count
     FROM transactions t WHERE t.id = $1";

const BRANCHES: &str = "SELECT idx, name, participant, payload, state, vote, attempts, last_error
     FROM branches WHERE txn_id = $1 ORDER BY idx";

const STEPS: &str = "SELECT * FROM saga_steps WHERE txn_id = $1 ORDER BY idx";

/// The `$2`th id below `$1` (0-based), newest first: by the primary key.
const ID_FLOOR: &str =
    "SELECT id FROM transactions WHERE ($1 = '' OR id < $1) ORDER BY id DESC LIMIT 1 OFFSET $2";

const ID_BY_KEY: &str = "SELECT id FROM transactions WHERE idempotency_key = $1";

/// Newest first, before the cursor. The state filter travels as one
/// ",a,b," string so the statement stays static (no state name holds a
/// LIKE wildcard); `needs_attention` is a boolean in PostgreSQL and 0/1 in
/// SQLite, and `NOT $3 OR t.needs_attention` reads right in both. `$5` is
/// a text search's LIKE pattern ([`like_pattern`]), matched against the
/// lowercased description, producer and every branch's (or destination's)
/// and step's endpoint; `''` for none.
const PAGE: &str = "SELECT t.*, ((SELECT COUNT(*) FROM branches b WHERE b.txn_id = t.id)
                + (SELECT COUNT(*) FROM saga_steps s WHERE s.txn_id = t.id)) AS branch_count
     FROM transactions t
     WHERE ($1 = '' OR $1 LIKE '%,' || t.state || ',%')
       AND ($2 = '' OR t.id < $2)
       AND (NOT $3 OR t.needs_attention)
       AND ($6 = '' OR t.id >= $6)
       AND ($5 = ''
            OR LOWER(COALESCE(t.description, '')) LIKE $5 ESCAPE '!'
            OR LOWER(COALESCE(t.producer, '')) LIKE $5 ESCAPE '!'
            OR EXISTS (SELECT 1 FROM branches b
                       WHERE b.txn_id = t.id AND LOWER(b.participant) LIKE $5 ESCAPE '!')
            OR EXISTS (SELECT 1 FROM saga_steps s
                       WHERE s.txn_id = t.id AND LOWER(s.participant) LIKE $5 ESCAPE '!'))
     ORDER BY t.id DESC
     LIMIT $4";

/// The LIKE pattern of a text search: `text` lowercased (ASCII; PostgreSQL's
/// LOWER also folds other letters, so there a non-ASCII capital in the text
/// finds nothing), its wildcards and the escape character escaped, between
/// `%`s. The escape character is `!`, not a backslash, which PostgreSQL
/// reads differently when `standard_conforming_strings` is off.
fn like_pattern(text: &str) -> String {
    let mut pattern = String::from("%");
    for c in text.to_ascii_lowercase().chars() {
        if matches!(c, '%' | '_' | '!') {
            pattern.push('!');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// The reads, on one store's pool.
pub(super) struct Reads<'p, DB: Database>(pub &'p Pool<DB>);

impl<DB: SqlLog> Reads<'_, DB>
where
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Arguments: IntoArguments<DB>,
    for<'r> TxnRow: FromRow<'r, DB::Row>,
    for<'r> BranchRow: FromRow<'r, DB::Row>,
    for<'r> StepRow: FromRow<'r, DB::Row>,
    for<'r> ActionRow: FromRow<'r, DB::Row>,
    for<'r> (String,): FromRow<'r, DB::Row>,
    for<'r> ChangeRow: FromRow<'r, DB::Row>,
    for<'r> (i64, i64): FromRow<'r, DB::Row>,
    for<'q> String: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Type<DB>,
    for<'q> bool: Encode<'q, DB> + Type<DB>,
{
    /// One transaction as it was last recorded, with its branches or steps
    /// and the operators' actions on it.
    pub async fn transaction(&self, id: &TxnId) -> Result<Option<TxnView>, StoreError> {
        let id = id.to_string();
        let row: Option<TxnRow> = sqlx::query_as(TRANSACTION)
            .bind(id.clone())
            .fetch_optional(self.0)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let branches: Vec<BranchRow> = sqlx::query_as(BRANCHES)
            .bind(id.clone())
            .fetch_all(self.0)
            .await?;
        let steps: Vec<StepRow> = if row.kind == TxnKind::Saga.as_str() {
            sqlx::query_as(STEPS)
                .bind(id.clone())
                .fetch_all(self.0)
                .await?
        } else {
            Vec::new()
        };
        let mut view = assemble(row, branches, steps)?.view;
        let rows: Vec<ActionRow> = sqlx::query_as(DB::ACTIONS)
            .bind(id)
            .fetch_all(self.0)
            .await?;
        view.operator_actions = actions(rows)?;
        Ok(Some(view))
    }

    /// The transaction begun with idempotency key `key`.
    pub async fn by_key(&self, key: &str) -> Result<Option<TxnView>, StoreError> {
        let id: Option<(String,)> = sqlx::query_as(ID_BY_KEY)
            .bind(key.to_owned())
            .fetch_optional(self.0)
            .await?;
        match id {
            Some((id,)) => self.transaction(&parse_id(&id)?).await,
            None => Ok(None),
        }
    }

    /// One page of the listing (see [`ListQuery`]).
    pub async fn page(&self, query: &ListQuery) -> Result<Vec<TxnView>, StoreError> {
        let states = if query.states.is_empty() {
            String::new()
        } else {
            let names: Vec<&str> = query.states.iter().map(|s| s.as_str()).collect();
            format!(",{},", names.join(","))
        };
        let before = query.before.map(|id| id.to_string()).unwrap_or_default();
        let rows: Vec<TxnRow> = sqlx::query_as(PAGE)
            .bind(states)
            .bind(before)
            .bind(query.needs_attention)
            .bind(i64::from(query.limit))
            .bind(query.text.as_deref().map(like_pattern).unwrap_or_default())
            .bind(query.since.map(|id| id.to_string()).unwrap_or_default())
            .fetch_all(self.0)
            .await?;
        rows.into_iter().map(TxnRow::into_view).collect()
    }

    /// The change feed after `after` (see [`Store::changes`](super::Store::changes)).
    pub async fn changes(
        &self,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<Change>, StoreError> {
        let after = after.unwrap_or_default();
        let rows: Vec<ChangeRow> = sqlx::query_as(DB::CHANGES)
            .bind(to_i64(after.epoch))
            .bind(to_i64(after.seq))
            .bind(i64::from(limit))
            .fetch_all(self.0)
            .await?;
        rows.into_iter().map(ChangeRow::into_change).collect()
    }

    /// See [`Store::id_floor`](super::Store::id_floor).
    pub async fn id_floor(
        &self,
        before: Option<TxnId>,
        n: u32,
    ) -> Result<Option<TxnId>, StoreError> {
        let Some(offset) = n.checked_sub(1) else {
            return Ok(None);
        };
        let id: Option<(String,)> = sqlx::query_as(ID_FLOOR)
            .bind(before.map(|id| id.to_string()).unwrap_or_default())
            .bind(i64::from(offset))
            .fetch_optional(self.0)
            .await?;
        id.map(|(id,)| parse_id(&id)).transpose()
    }

    pub async fn newest_change(&self) -> Result<Option<Cursor>, StoreError> {
        let newest: Option<(i64, i64)> = sqlx::query_as(DB::NEWEST_CHANGE)
            .fetch_optional(self.0)
            .await?;
        Ok(newest.map(|(epoch, seq)| Cursor {
            epoch: to_u64(epoch),
            seq: to_u64(seq),
        }))
    }
}

/// The [`Store`](super::Store) methods that are these reads, for a store
/// whose pool is `self.pool`: the same in both SQL stores' impls.
macro_rules! store_reads {
    () => {
        fn transaction<'a>(
            &'a self,
            id: &'a TxnId,
        ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
            async move { Reads(&self.pool).transaction(id).await }.boxed()
        }

        fn by_idempotency_key<'a>(
            &'a self,
            key: &'a str,
        ) -> BoxFuture<'a, Result<Option<TxnView>, StoreError>> {
            async move { Reads(&self.pool).by_key(key).await }.boxed()
        }

        fn list<'a>(
            &'a self,
            query: &'a ListQuery,
        ) -> BoxFuture<'a, Result<Vec<TxnView>, StoreError>> {
            async move { Reads(&self.pool).page(query).await }.boxed()
        }

        fn changes<'a>(
            &'a self,
            after: Option<Cursor>,
            limit: u32,
        ) -> BoxFuture<'a, Result<Vec<Change>, StoreError>> {
            async move { Reads(&self.pool).changes(after, limit).await }.boxed()
        }

        fn newest_change(&self) -> BoxFuture<'_, Result<Option<Cursor>, StoreError>> {
            async move { Reads(&self.pool).newest_change().await }.boxed()
        }

        fn id_floor(
            &self,
            before: Option<TxnId>,
            n: u32,
        ) -> BoxFuture<'_, Result<Option<TxnId>, StoreError>> {
            async move { Reads(&self.pool).id_floor(before, n).await }.boxed()
        }
    };
}
pub(super) use store_reads;
