//! The travel example: booking a trip as a saga.
//!
//! Five services, each its own process with its own SQLite database, all
//! served by one binary (`travel-service --kind ...`):
//! - `flight`, `hotel`, `car`: inventories. Booking takes one unit of an
//!   item (refused when sold out); compensation gives it back.
//! - `payment`: charges a card (refused when the balance is too low). The
//!   saga's pivot: once paid, the trip goes through.
//! - `email`: sends the confirmation. Retriable: retried until it succeeds.
//!
//! The saga (`trip`): flight first, then hotel and car in parallel, then
//! payment, then email. Exactly-once comes from the SDK's ledger: this code
//! has no idempotency logic of its own. Any service can be started flaky
//! (`--flaky N`: the first N attempts of each call fail transiently) to show
//! retries at work.

use std::collections::HashMap;

pub mod cli;
use std::path::Path;
use std::sync::Mutex;

use concord_participant::saga::{RetryPolicy, Saga, Step};
use concord_participant::{BranchContext, LocalTx, ParticipantError, SagaStep, StepResult};
use serde::{Deserialize, Serialize};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};

/// Which service a process is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Kind {
    Flight,
    Hotel,
    Car,
    Payment,
    Email,
}

/// An inventory booking: one unit of `item`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Booking {
    pub item: String,
    pub traveller: String,
}

/// A charge of `amount` cents on `card`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Charge {
    pub card: String,
    pub amount: i64,
}

/// A confirmation to `to`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Confirmation {
    pub to: String,
    pub text: String,
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_default()
}

fn parse<T: for<'de> Deserialize<'de>>(payload: &[u8]) -> Result<T, ParticipantError> {
    serde_json::from_slice(payload).map_err(|e| ParticipantError::InvalidPayload(e.to_string()))
}

/// Opens a service's database (created if missing), fsync on commit.
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
    for ddl in [
        "CREATE TABLE IF NOT EXISTS inventory (item TEXT PRIMARY KEY NOT NULL,
            available INTEGER NOT NULL CHECK (available >= 0))",
        "CREATE TABLE IF NOT EXISTS bookings (txn_id TEXT NOT NULL, step TEXT NOT NULL,
            item TEXT NOT NULL, traveller TEXT NOT NULL, status TEXT NOT NULL,
            PRIMARY KEY (txn_id, step))",
        "CREATE TABLE IF NOT EXISTS cards (card TEXT PRIMARY KEY NOT NULL,
            balance INTEGER NOT NULL CHECK (balance >= 0))",
        "CREATE TABLE IF NOT EXISTS charges (txn_id TEXT NOT NULL, step TEXT NOT NULL,
            card TEXT NOT NULL, amount INTEGER NOT NULL, PRIMARY KEY (txn_id, step))",
        "CREATE TABLE IF NOT EXISTS outbox (txn_id TEXT NOT NULL, step TEXT NOT NULL,
            recipient TEXT NOT NULL, text TEXT NOT NULL, PRIMARY KEY (txn_id, step))",
    ] {
        sqlx::query(ddl).execute(&pool).await?;
    }
    Ok(pool)
}

/// Sets the stock of an item (inventory services).
pub async fn stock(pool: &SqlitePool, item: &str, available: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO inventory (item, available) VALUES (?1, ?2)
         ON CONFLICT (item) DO UPDATE SET available = excluded.available",
    )
    .bind(item)
    .bind(available)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stocks `item` with `available` units unless it is stocked already; true
/// when it was stocked now. A service restarted with the same `--stock`
/// flags keeps what it has sold (the demo resets with [`stock`]).
pub async fn stock_once(
    pool: &SqlitePool,
    item: &str,
    available: i64,
) -> Result<bool, sqlx::Error> {
    let stocked = sqlx::query(
        "INSERT INTO inventory (item, available) VALUES (?1, ?2) ON CONFLICT (item) DO NOTHING",
    )
    .bind(item)
    .bind(available)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(stocked == 1)
}

/// Opens card `card` with `balance` cents unless it is open already; true
/// when it was opened now (a restart with the same `--card` flags creates
/// no money).
pub async fn fund_once(pool: &SqlitePool, card: &str, balance: i64) -> Result<bool, sqlx::Error> {
    let funded = sqlx::query(
        "INSERT INTO cards (card, balance) VALUES (?1, ?2) ON CONFLICT (card) DO NOTHING",
    )
    .bind(card)
    .bind(balance)
    .execute(pool)
    .await?
    .rows_affected();
    Ok(funded == 1)
}

/// Sets a card's balance (payment service).
pub async fn fund(pool: &SqlitePool, card: &str, balance: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO cards (card, balance) VALUES (?1, ?2)
         ON CONFLICT (card) DO UPDATE SET balance = excluded.balance",
    )
    .bind(card)
    .bind(balance)
    .execute(pool)
    .await?;
    Ok(())
}

pub async fn available(pool: &SqlitePool, item: &str) -> Result<Option<i64>, sqlx::Error> {
    Ok(
        sqlx::query_as::<_, (i64,)>("SELECT available FROM inventory WHERE item = ?1")
            .bind(item)
            .fetch_optional(pool)
            .await?
            .map(|(n,)| n),
    )
}

pub async fn balance(pool: &SqlitePool, card: &str) -> Result<Option<i64>, sqlx::Error> {
    Ok(
        sqlx::query_as::<_, (i64,)>("SELECT balance FROM cards WHERE card = ?1")
            .bind(card)
            .fetch_optional(pool)
            .await?
            .map(|(n,)| n),
    )
}

/// Booking statuses of one trip at an inventory service.
pub async fn bookings(pool: &SqlitePool, txn_id: &str) -> Result<Vec<String>, sqlx::Error> {
    let rows: Vec<(String,)> = sqlx::query_as("SELECT status FROM bookings WHERE txn_id = ?1")
        .bind(txn_id)
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(s,)| s).collect())
}

pub async fn emails(pool: &SqlitePool, txn_id: &str) -> Result<usize, sqlx::Error> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM outbox WHERE txn_id = ?1")
        .bind(txn_id)
        .fetch_one(pool)
        .await?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// One travel service's saga steps.
pub struct TravelService {
    kind: Kind,
    /// The first `flaky` attempts of each call fail transiently.
    flaky: u32,
    attempts: Mutex<HashMap<(String, String, bool), u32>>,
}

impl TravelService {
    pub fn new(kind: Kind, flaky: u32) -> Self {
        Self {
            kind,
            flaky,
            attempts: Mutex::new(HashMap::new()),
        }
    }

    fn flake(&self, step: &BranchContext, compensation: bool) -> Result<(), ParticipantError> {
        let mut attempts = self.attempts.lock().unwrap_or_else(|p| p.into_inner());
        let seen = attempts
            .entry((
                step.transaction_id.clone(),
                step.branch.clone(),
                compensation,
            ))
            .or_insert(0);
        *seen += 1;
        if *seen <= self.flaky {
            return Err(ParticipantError::Unavailable(format!(
                "{:?} service is flaky (attempt {} of {} fails)",
                self.kind, seen, self.flaky
            )));
        }
        Ok(())
    }
}

impl SagaStep for TravelService {
    async fn action(
        &self,
        tx: &mut LocalTx,
        step: &BranchContext,
        payload: &[u8],
    ) -> Result<StepResult, ParticipantError> {
        self.flake(step, false)?;
        match self.kind {
            Kind::Flight | Kind::Hotel | Kind::Car => {
                let booking: Booking = parse(payload)?;
                let taken = sqlx::query(
                    "UPDATE inventory SET available = available - 1 WHERE item = ?1 AND available > 0",
                )
                .bind(&booking.item)
                .execute(&mut **tx)
                .await?;
                if taken.rows_affected() == 0 {
                    return Ok(StepResult::Refused(format!("{} is sold out", booking.item)));
                }
                sqlx::query(
                    "INSERT INTO bookings (txn_id, step, item, traveller, status)
                     VALUES (?1, ?2, ?3, ?4, 'booked')",
                )
                .bind(&step.transaction_id)
                .bind(&step.branch)
                .bind(&booking.item)
                .bind(&booking.traveller)
                .execute(&mut **tx)
                .await?;
            }
            Kind::Payment => {
                let charge: Charge = parse(payload)?;
                // A negative charge would pay the traveller.
                if charge.amount <= 0 {
                    return Ok(StepResult::Refused(format!(
                        "a charge of {} cents: the amount must be positive",
                        charge.amount
                    )));
                }
                let paid = sqlx::query(
                    "UPDATE cards SET balance = balance - ?2 WHERE card = ?1 AND balance >= ?2",
                )
                .bind(&charge.card)
                .bind(charge.amount)
                .execute(&mut **tx)
                .await?;
                if paid.rows_affected() == 0 {
                    return Ok(StepResult::Refused(format!(
                        "card {} declined",
                        charge.card
                    )));
                }
                sqlx::query(
                    "INSERT INTO charges (txn_id, step, card, amount) VALUES (?1, ?2, ?3, ?4)",
                )
                .bind(&step.transaction_id)
                .bind(&step.branch)
                .bind(&charge.card)
                .bind(charge.amount)
                .execute(&mut **tx)
                .await?;
            }
            Kind::Email => {
                let mail: Confirmation = parse(payload)?;
                sqlx::query(
                    "INSERT INTO outbox (txn_id, step, recipient, text) VALUES (?1, ?2, ?3, ?4)",
                )
                .bind(&step.transaction_id)
                .bind(&step.branch)
                .bind(&mail.to)
                .bind(&mail.text)
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(StepResult::Done)
    }

    async fn compensate(
        &self,
        tx: &mut LocalTx,
        step: &BranchContext,
        _payload: &[u8],
    ) -> Result<(), ParticipantError> {
        self.flake(step, true)?;
        match self.kind {
            Kind::Flight | Kind::Hotel | Kind::Car => {
                let item: Option<(String,)> = sqlx::query_as(
                    "UPDATE bookings SET status = 'cancelled'
                     WHERE txn_id = ?1 AND step = ?2 AND status = 'booked' RETURNING item",
                )
                .bind(&step.transaction_id)
                .bind(&step.branch)
                .fetch_optional(&mut **tx)
                .await?;
                if let Some((item,)) = item {
                    sqlx::query("UPDATE inventory SET available = available + 1 WHERE item = ?1")
                        .bind(item)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            // Payment is the pivot and email is retriable: the coordinator
            // never compensates them. A refund keeps this honest anyway.
            Kind::Payment => {
                let charge: Option<(String, i64)> = sqlx::query_as(
                    "DELETE FROM charges WHERE txn_id = ?1 AND step = ?2 RETURNING card, amount",
                )
                .bind(&step.transaction_id)
                .bind(&step.branch)
                .fetch_optional(&mut **tx)
                .await?;
                if let Some((card, amount)) = charge {
                    sqlx::query("UPDATE cards SET balance = balance + ?2 WHERE card = ?1")
                        .bind(card)
                        .bind(amount)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            Kind::Email => {}
        }
        Ok(())
    }
}

/// Where the five services listen.
#[derive(Debug, Clone)]
pub struct Services {
    pub flight: String,
    pub hotel: String,
    pub car: String,
    pub payment: String,
    pub email: String,
}

/// What the traveller wants.
#[derive(Debug, Clone)]
pub struct Trip {
    pub traveller: String,
    pub flight: String,
    pub hotel: String,
    pub car: String,
    pub card: String,
    pub price: i64,
    pub email: String,
}

/// The trip as a saga: flight, then hotel and car in parallel, then payment
/// (the pivot), then the confirmation email (retriable).
pub fn trip_saga(services: &Services, trip: &Trip) -> Saga {
    let booking = |item: &str| {
        json(&Booking {
            item: item.to_owned(),
            traveller: trip.traveller.clone(),
        })
    };
    let retry = RetryPolicy::attempts(4, std::time::Duration::from_millis(50));
    Saga::new()
        .description(format!("trip for {}", trip.traveller))
        .step(
            Step::new("flight", &services.flight)
                .action(booking(&trip.flight))
                .compensation(booking(&trip.flight))
                .retry(retry.clone()),
        )
        .step(
            Step::new("hotel", &services.hotel)
                .action(booking(&trip.hotel))
                .compensation(booking(&trip.hotel))
                .after(["flight"])
                .retry(retry.clone()),
        )
        .step(
            Step::new("car", &services.car)
                .action(booking(&trip.car))
                .compensation(booking(&trip.car))
                .after(["flight"])
                .retry(retry.clone()),
        )
        .step(
            Step::new("payment", &services.payment)
                .action(json(&Charge {
                    card: trip.card.clone(),
                    amount: trip.price,
                }))
                .pivot()
                .after(["hotel", "car"])
                .retry(retry.clone()),
        )
        .step(
            Step::new("email", &services.email)
                .action(json(&Confirmation {
                    to: trip.email.clone(),
                    text: format!(
                        "{}: flight {}, hotel {}, car {} are booked",
                        trip.traveller, trip.flight, trip.hotel, trip.car
                    ),
                }))
                .retriable()
                .retry(retry),
        )
}

/// Serves one travel service for `pool` on `listener` until `shutdown`,
/// obeying `callers` (DESIGN §12) and asking the coordinator `resolver`
/// names about steps left in doubt.
pub async fn serve(
    kind: Kind,
    flaky: u32,
    pool: SqlitePool,
    callers: concord_participant::Callers,
    resolver: concord_participant::ResolverConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let service =
        concord_participant::ParticipantService::saga(TravelService::new(kind, flaky), pool)
            .await?
            .obeying(callers)
            .with_resolver(resolver);
    service.serve(listener, shutdown).await?;
    Ok(())
}
