//! The bank example: an account service that takes part in Concord's 2PC.
//!
//! Each bank is its own process with its own database of balances: SQLite
//! ([`open_db`], [`serve`]) or PostgreSQL ([`open_pg_db`], [`serve_pg`]; the
//! `bank-bench` program runs it beside raw XA).
//! A branch's payload is JSON `{"account": "alice", "delta": -30}`:
//! - prepare checks the account and, for a debit, that enough money is
//!   available, and holds it (votes ABORT on insufficient funds; a zero delta
//!   changes nothing and votes READ_ONLY);
//! - commit applies the held change; abort releases it.
//!
//! Exactly-once comes from the SDK's ledger: this code has no idempotency
//! logic of its own.

use std::path::Path;

pub mod cli;
pub mod events;

use concord_participant::{BranchContext, ParticipantError, TwoPhaseParticipant, Vote};
use serde::{Deserialize, Serialize};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{FromRow, SqlitePool};

/// One branch of a transfer: move `delta` (in cents; negative = debit) on
/// `account`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Movement {
    pub account: String,
    pub delta: i64,
}

impl Movement {
    pub fn to_payload(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// An account's money.
#[derive(Debug, Clone, PartialEq, Eq, FromRow)]
pub struct Account {
    pub name: String,
    /// Committed balance, in cents.
    pub balance: i64,
    /// Held by prepared debits, not yet committed or released.
    pub held: i64,
}

// A bank's tables, the same on SQLite and PostgreSQL (BIGINT is a 64-bit
// integer on both).
const ACCOUNTS_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS accounts (
        name    TEXT PRIMARY KEY NOT NULL,
        balance BIGINT NOT NULL CHECK (balance >= 0),
        held    BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0)
    )";
const HOLDS_TABLE: &str = "
    CREATE TABLE IF NOT EXISTS holds (
        txn_id  TEXT NOT NULL,
        branch  TEXT NOT NULL,
        account TEXT NOT NULL,
        delta   BIGINT NOT NULL,
        PRIMARY KEY (txn_id, branch)
    )";

/// Opens (creating if needed) a bank's database, with fsync on commit so a
/// COMMIT vote survives power loss.
pub async fn open_db(path: &Path) -> Result<SqlitePool, sqlx::Error> {
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(std::time::Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await?;
    sqlx::query(ACCOUNTS_TABLE).execute(&pool).await?;
    sqlx::query(HOLDS_TABLE).execute(&pool).await?;
    Ok(pool)
}

/// Opens account `name` with `balance` cents; true when it was opened
/// now. An account that exists is left as it is: a service restarted
/// with the same `--open` flags creates no money and keeps its holds.
pub async fn open_account(
    pool: &SqlitePool,
    name: &str,
    balance: i64,
) -> Result<bool, sqlx::Error> {
    let opened = sqlx::query(
        "INSERT INTO accounts (name, balance, held) VALUES (?1, ?2, 0)
         ON CONFLICT (name) DO NOTHING",
    )
    .bind(name)
    .bind(balance)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(opened == 1)
}

pub async fn accounts(pool: &SqlitePool) -> Result<Vec<Account>, sqlx::Error> {
    sqlx::query_as("SELECT name, balance, held FROM accounts ORDER BY name")
        .fetch_all(pool)
        .await
}

pub async fn account(pool: &SqlitePool, name: &str) -> Result<Option<Account>, sqlx::Error> {
    sqlx::query_as("SELECT name, balance, held FROM accounts WHERE name = ?1")
        .bind(name)
        .fetch_optional(pool)
        .await
}

/// Holds of prepared branches not yet decided.
pub async fn open_holds(pool: &SqlitePool) -> Result<i64, sqlx::Error> {
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM holds")
        .fetch_one(pool)
        .await?;
    Ok(count)
}

/// The account service's 2PC handler, on SQLite (`LocalTx`) or PostgreSQL
/// (`LocalTxOf<Postgres>`): the same statements (`$N` placeholders, which
/// sqlx binds by number on both).
#[derive(Debug, Clone, Default)]
pub struct Bank;

fn movement(payload: &[u8]) -> Result<Movement, ParticipantError> {
    serde_json::from_slice(payload).map_err(|e| {
        ParticipantError::InvalidPayload(format!(
            "expected {{\"account\": ..., \"delta\": ...}}: {e}"
        ))
    })
}

#[derive(FromRow)]
struct Hold {
    account: String,
    delta: i64,
}

/// The handler on one database. A debit's hold is one conditional UPDATE:
/// on PostgreSQL it takes the account's row lock and re-checks the balance
/// under it, so concurrent debits of one account never overdraw it; on
/// SQLite the ledger's transaction holds the database's one write lock.
macro_rules! bank_on {
    ($module:ident, $db:ty) => {
        mod $module {
            use super::*;
            use concord_participant::LocalTxOf;

            type Tx = LocalTxOf<$db>;

            async fn take_hold(
                tx: &mut Tx,
                branch: &BranchContext,
            ) -> Result<Option<Hold>, sqlx::Error> {
                // One statement: each is a round trip to the database.
                sqlx::query_as(
                    "DELETE FROM holds WHERE txn_id = $1 AND branch = $2
                     RETURNING account, delta",
                )
                .bind(&branch.transaction_id)
                .bind(&branch.branch)
                .fetch_optional(&mut **tx)
                .await
            }

            impl TwoPhaseParticipant<$db> for Bank {
                async fn prepare(
                    &self,
                    tx: &mut Tx,
                    branch: &BranchContext,
                    payload: &[u8],
                ) -> Result<Vote, ParticipantError> {
                    let movement = movement(payload)?;
                    if movement.delta < 0 {
                        let needed = movement.delta.saturating_neg();
                        let held = sqlx::query(
                            "UPDATE accounts SET held = held + $2
                             WHERE name = $1 AND balance - held >= $2",
                        )
                        .bind(&movement.account)
                        .bind(needed)
                        .execute(&mut **tx)
                        .await?
                        .rows_affected();
                        if held == 0 {
                            let account: Option<Account> = sqlx::query_as(
                                "SELECT name, balance, held FROM accounts WHERE name = $1",
                            )
                            .bind(&movement.account)
                            .fetch_optional(&mut **tx)
                            .await?;
                            return Ok(Vote::Abort(match account {
                                None => format!("no account {:?} at this bank", movement.account),
                                Some(account) => format!(
                                    "insufficient funds: {} has {} available, needs {needed}",
                                    account.name,
                                    account.balance - account.held
                                ),
                            }));
                        }
                    } else if movement.delta == 0 {
                        let known: Option<(String,)> =
                            sqlx::query_as("SELECT name FROM accounts WHERE name = $1")
                                .bind(&movement.account)
                                .fetch_optional(&mut **tx)
                                .await?;
                        return Ok(match known {
                            Some(_) => Vote::ReadOnly,
                            None => Vote::Abort(format!(
                                "no account {:?} at this bank",
                                movement.account
                            )),
                        });
                    }
                    if movement.delta > 0 {
                        // A credit whose commit would overflow the balance
                        // (with the credits already promised) is refused
                        // now: once voted COMMIT it would fail forever (R3).
                        let room: Option<(i64, i64)> = sqlx::query_as(
                            "SELECT balance, CAST(COALESCE((SELECT SUM(delta) FROM holds
                                 WHERE holds.account = accounts.name AND delta > 0), 0)
                                 AS BIGINT)
                             FROM accounts WHERE name = $1",
                        )
                        .bind(&movement.account)
                        .fetch_optional(&mut **tx)
                        .await?;
                        if let Some((balance, promised)) = room
                            && balance
                                .checked_add(promised)
                                .and_then(|due| due.checked_add(movement.delta))
                                .is_none()
                        {
                            return Ok(Vote::Abort(format!(
                                "a credit of {} would overflow {}'s balance",
                                movement.delta, movement.account
                            )));
                        }
                    }
                    // The hold, for an account that exists: one statement.
                    let held = sqlx::query(
                        "INSERT INTO holds (txn_id, branch, account, delta)
                         SELECT $1, $2, name, $4 FROM accounts WHERE name = $3",
                    )
                    .bind(&branch.transaction_id)
                    .bind(&branch.branch)
                    .bind(&movement.account)
                    .bind(movement.delta)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected();
                    if held == 0 {
                        return Ok(Vote::Abort(format!(
                            "no account {:?} at this bank",
                            movement.account
                        )));
                    }
                    Ok(Vote::Commit)
                }

                async fn commit(
                    &self,
                    tx: &mut Tx,
                    branch: &BranchContext,
                    _payload: &[u8],
                ) -> Result<(), ParticipantError> {
                    // The hold written at prepare is the durable promise; apply it.
                    let Some(hold) = take_hold(tx, branch).await? else {
                        return Err(ParticipantError::Unavailable(format!(
                            "no hold for branch {} of {}",
                            branch.branch, branch.transaction_id
                        )));
                    };
                    let release = if hold.delta < 0 {
                        hold.delta.saturating_neg()
                    } else {
                        0
                    };
                    sqlx::query(
                        "UPDATE accounts SET balance = balance + $2, held = held - $3
                         WHERE name = $1",
                    )
                    .bind(&hold.account)
                    .bind(hold.delta)
                    .bind(release)
                    .execute(&mut **tx)
                    .await?;
                    Ok(())
                }

                async fn abort(
                    &self,
                    tx: &mut Tx,
                    branch: &BranchContext,
                    _payload: &[u8],
                ) -> Result<(), ParticipantError> {
                    if let Some(hold) = take_hold(tx, branch).await?
                        && hold.delta < 0
                    {
                        // Only a debit held money at prepare; release it.
                        sqlx::query("UPDATE accounts SET held = held - $2 WHERE name = $1")
                            .bind(&hold.account)
                            .bind(hold.delta.saturating_neg())
                            .execute(&mut **tx)
                            .await?;
                    }
                    Ok(())
                }
            }
        }
    };
}

bank_on!(on_sqlite, sqlx::Sqlite);
bank_on!(on_postgres, sqlx::Postgres);

/// Opens (creating its tables if needed) a bank's PostgreSQL database: the
/// same tables as [`open_db`]'s. Each bank is its own database.
pub async fn open_pg_db(url: &str) -> Result<sqlx::PgPool, sqlx::Error> {
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(32)
        .connect(url)
        .await?;
    sqlx::query(ACCOUNTS_TABLE).execute(&pool).await?;
    sqlx::query(HOLDS_TABLE).execute(&pool).await?;
    Ok(pool)
}

/// Serves the account service for the PostgreSQL database `pool` on
/// `listener` until `shutdown` resolves.
pub async fn serve_pg(
    pool: sqlx::PgPool,
    callers: concord_participant::Callers,
    resolver: concord_participant::ResolverConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let service = concord_participant::ParticipantService::new(Bank, pool)
        .await?
        .obeying(callers)
        .with_resolver(resolver);
    service.serve(listener, shutdown).await?;
    Ok(())
}

/// A transfer's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub transaction_id: String,
    pub outcome: concord_participant::Outcome,
}

/// Moves `amount` cents from `from` at the bank served on `from_bank` to
/// `to` at `to_bank`, as one 2PC transaction: a debit branch and a credit
/// branch, committed or aborted together.
pub async fn transfer(
    client: &concord_participant::CoordinatorClient,
    from_bank: &str,
    from: &str,
    to_bank: &str,
    to: &str,
    amount: i64,
) -> Result<Transfer, concord_participant::ClientError> {
    let begun = client
        .begin(concord_participant::BeginOptions {
            description: Some(format!("transfer {amount} from {from} to {to}")),
            ..Default::default()
        })
        .await?;
    let id = begun.transaction_id;
    let debit = Movement {
        account: from.to_owned(),
        delta: amount.saturating_neg(),
    };
    let credit = Movement {
        account: to.to_owned(),
        delta: amount,
    };
    client
        .enlist(&id, from_bank, debit.to_payload(), Some("debit"))
        .await?;
    client
        .enlist(&id, to_bank, credit.to_payload(), Some("credit"))
        .await?;
    let outcome = client.commit(&id).await?;
    Ok(Transfer {
        transaction_id: id,
        outcome,
    })
}

/// Serves the account service for the database `pool` on `listener` until
/// `shutdown` resolves, obeying `callers` (DESIGN §12) and asking the
/// coordinator `resolver` names about branches left in doubt.
pub async fn serve(
    pool: SqlitePool,
    callers: concord_participant::Callers,
    resolver: concord_participant::ResolverConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let service = concord_participant::ParticipantService::new(Bank, pool)
        .await?
        .obeying(callers)
        .with_resolver(resolver);
    service.serve(listener, shutdown).await?;
    Ok(())
}
