//! `bank-bench`: Concord's 2PC beside raw XA, on the same PostgreSQL
//! accounts with the same clients (issue 20).
//!
//! Creates two banks' databases (`bank_a`, `bank_b`) on the PostgreSQL
//! server given, each with `--accounts` accounts, then runs, for
//! `--duration` each, `--clients` clients moving one cent from an account
//! of bank A to one of bank B:
//!
//! 1. through Concord: a coordinator in this process (SQLite log in a temp
//!    dir, fsync on) and the bank example's account service on each
//!    database (balances with row locks, the SDK's ledger in the same local
//!    transaction), one `Begin` with `commit` per transfer;
//! 2. as raw XA: each client holds a connection to each database and runs
//!    `BEGIN; UPDATE ...; PREPARE TRANSACTION` on both at once, then
//!    `COMMIT PREPARED` on both: no coordinator, no log of its own.
//!
//! Then it shows what XA leaves when its client dies between the two
//! phases (the prepared transactions in `pg_prepared_xacts`, holding their
//! rows' locks until someone resolves them by hand), and checks that no
//! money was made or lost. `scripts/bench-xa.sh` starts a PostgreSQL for
//! it and runs it in one command.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use concord_coordinator::node::Node;
use concord_example_bank::{Movement, open_pg_db, serve_pg};
use concord_participant::{BeginOptions, BranchSpec, CoordinatorClient, Outcome};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

/// `bank-bench --postgres URL [--clients 64] [--duration 10s] [--accounts 1000]`.
#[derive(Debug, clap::Parser)]
struct Args {
    /// The PostgreSQL server, as a URL to its `postgres` database (e.g.
    /// `postgres://concord@127.0.0.1:5432/postgres`). Its
    /// `max_prepared_transactions` must be at least twice `--clients`.
    #[arg(long, env = "BANK_BENCH_POSTGRES")]
    postgres: String,
    /// Concurrent clients, each making one transfer at a time.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=1_000))]
    clients: u64,
    /// How long each of the two runs lasts, e.g. 10s.
    #[arg(long, default_value = "10s", value_parser = concord_coordinator::cli::bench::parse_duration)]
    duration: Duration,
    /// Accounts per bank; transfers pick them at random.
    #[arg(long, default_value_t = 1_000, value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    accounts: u64,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    json: bool,
}

/// Money each account opens with, in cents.
const OPENING: i64 = 1_000_000;

/// What one run measured.
#[derive(Debug, Default)]
struct Run {
    micros: Vec<u64>,
    errors: u64,
    seconds: f64,
}

impl Run {
    fn per_second(&self) -> f64 {
        self.micros.len() as f64 / self.seconds.max(1e-9)
    }

    fn percentile_ms(&self, q: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        let at = ((self.micros.len() - 1) as f64 * q).round() as usize;
        self.micros[at] as f64 / 1_000.0
    }

    fn merge(runs: Vec<Run>, seconds: f64) -> Run {
        let mut merged = Run {
            seconds,
            ..Run::default()
        };
        for run in runs {
            merged.micros.extend(run.micros);
            merged.errors += run.errors;
        }
        merged.micros.sort_unstable();
        merged
    }
}

/// The accounts of one transfer: a pseudo-random one at each bank.
fn accounts(rng: &mut fastrand::Rng, count: u64) -> (String, String) {
    (
        format!("a{}", rng.u64(0..count)),
        format!("a{}", rng.u64(0..count)),
    )
}

fn main() -> std::process::ExitCode {
    // An error in one line, never a stack trace (`cli::exit`).
    concord_coordinator::cli::exit(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let (base, _) = args
        .postgres
        .rsplit_once('/')
        .context("--postgres is a URL ending in a database name, e.g. .../postgres")?;
    let admin = sqlx::PgPool::connect(&args.postgres)
        .await
        .with_context(|| format!("connecting to {}", args.postgres))?;
    let mut urls = Vec::new();
    for name in ["bank_a", "bank_b"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&admin)
        .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&admin)
            .await?;
        urls.push(format!("{base}/{name}"));
    }
    let mut pools = Vec::new();
    for url in &urls {
        let pool = open_pg_db(url).await?;
        sqlx::query(
            "INSERT INTO accounts (name, balance)
             SELECT 'a' || g, $1 FROM generate_series(0, $2 - 1) AS g",
        )
        .bind(OPENING)
        .bind(i64::try_from(args.accounts)?)
        .execute(&pool)
        .await?;
        pools.push(pool);
    }
    let total = |pools: Vec<sqlx::PgPool>| async move {
        let mut sum = 0i64;
        for pool in &pools {
            let (money,): (i64,) =
                sqlx::query_as("SELECT COALESCE(SUM(balance), 0)::BIGINT FROM accounts")
                    .fetch_one(pool)
                    .await?;
            sum += money;
        }
        Ok::<i64, sqlx::Error>(sum)
    };
    let opening = total(pools.clone()).await?;

    // 1. Concord: a coordinator and an account service per database.
    let dir = tempfile::tempdir()?;
    // Signed calls, as in production (DESIGN §12): their cost is measured.
    let (node, trusted) = Node::start_local(&dir.path().join("coordinator"))
        .await
        .context("starting the coordinator")?;
    let callers = concord_participant::Callers::SignedBy(trusted);
    let stop = CancellationToken::new();
    let node_url = node.url();
    let resolver = || concord_participant::ResolverConfig {
        coordinator: Some(node_url.clone()),
        ..Default::default()
    };
    let mut banks = Vec::new();
    let mut services = Vec::new();
    for pool in &pools {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        banks.push(format!("http://{}", listener.local_addr()?));
        let (pool, stop, callers) = (pool.clone(), stop.clone(), callers.clone());
        let resolver = resolver();
        services.push(tokio::spawn(async move {
            if let Err(error) =
                serve_pg(pool, callers, resolver, listener, stop.cancelled_owned()).await
            {
                eprintln!("account service stopped: {error:#}");
            }
        }));
    }
    let banks = Arc::new(banks);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let coordinator = CoordinatorClient::connect(node.url())?;
        let banks = Arc::clone(&banks);
        let (duration, count) = (args.duration, args.accounts);
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(client);
            let mut run = Run::default();
            while started.elapsed() < duration {
                let (from, to) = accounts(&mut rng, count);
                let branch = |bank: &str, account: String, delta: i64, name: &str| BranchSpec {
                    participant: bank.to_owned(),
                    payload: Movement { account, delta }.to_payload(),
                    name: Some(name.to_owned()),
                };
                let begin = BeginOptions {
                    branches: vec![
                        branch(&banks[0], from, -1, "debit"),
                        branch(&banks[1], to, 1, "credit"),
                    ],
                    ..BeginOptions::default()
                };
                let at = Instant::now();
                match coordinator.begin_and_commit(begin).await {
                    Ok((_, Outcome::Committed { .. })) => {
                        run.micros.push(at.elapsed().as_micros() as u64)
                    }
                    _ => run.errors += 1,
                }
            }
            run
        }));
    }
    let mut runs = Vec::new();
    for task in tasks {
        runs.push(task.await?);
    }
    let concord = Run::merge(runs, started.elapsed().as_secs_f64());
    // Phase 2 runs after the answer (R4): let it finish before XA starts.
    for _ in 0..500 {
        let mut held = 0i64;
        for pool in &pools {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM holds")
                .fetch_one(pool)
                .await?;
            held += n;
        }
        if held == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    for service in services {
        let _ = service.await;
    }
    node.shutdown().await?;

    // 2. Raw XA: the same transfers, no coordinator.
    let urls = Arc::new(urls);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..args.clients {
        let urls = Arc::clone(&urls);
        let (duration, count) = (args.duration, args.accounts);
        let mut a = PgConnection::connect(&urls[0]).await?;
        let mut b = PgConnection::connect(&urls[1]).await?;
        tasks.push(tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(client);
            let mut run = Run::default();
            let mut n = 0u64;
            while started.elapsed() < duration {
                let (from, to) = accounts(&mut rng, count);
                n += 1;
                let gid = format!("bench-{client}-{n}");
                let at = Instant::now();
                match xa_transfer(&mut a, &mut b, &gid, &from, &to).await {
                    Ok(true) => run.micros.push(at.elapsed().as_micros() as u64),
                    _ => run.errors += 1,
                }
            }
            run
        }));
    }
    let mut runs = Vec::new();
    for task in tasks {
        runs.push(task.await?);
    }
    let xa = Run::merge(runs, started.elapsed().as_secs_f64());

    // 3. What a killed XA client leaves: prepared on both, never finished.
    let abandoned = format!("abandoned-{}", std::process::id());
    {
        let mut a = PgConnection::connect(&urls[0]).await?;
        let mut b = PgConnection::connect(&urls[1]).await?;
        xa_prepare(&mut a, &format!("{abandoned}-a"), "a0", -1).await?;
        xa_prepare(&mut b, &format!("{abandoned}-b"), "a0", 1).await?;
        // The client dies here: its connections close, its prepared
        // transactions stay.
    }
    let left: Vec<(String, String)> = sqlx::query_as(
        "SELECT gid, database::TEXT FROM pg_prepared_xacts WHERE gid LIKE $1 ORDER BY gid",
    )
    .bind(format!("{abandoned}%"))
    .fetch_all(&admin)
    .await?;
    // Cleaned up by hand, as an operator of XA would have to.
    for (gid, database) in &left {
        let url = format!("{base}/{database}");
        let mut connection = PgConnection::connect(&url).await?;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("ROLLBACK PREPARED '{gid}'")))
            .execute(&mut connection)
            .await?;
    }
    let closing = total(pools.clone()).await?;

    let ratio = concord.per_second() / xa.per_second().max(1e-9);
    if args.json {
        println!(
            "{{\"clients\":{},\"accounts\":{},\"seconds\":{:.1},\"concord_tps\":{:.1},\"concord_p50_ms\":{:.3},\"concord_p99_ms\":{:.3},\"concord_errors\":{},\"xa_tps\":{:.1},\"xa_p50_ms\":{:.3},\"xa_p99_ms\":{:.3},\"xa_errors\":{},\"ratio\":{ratio:.3},\"xa_left_prepared\":{},\"money_conserved\":{}}}",
            args.clients,
            args.accounts,
            args.duration.as_secs_f64(),
            concord.per_second(),
            concord.percentile_ms(0.5),
            concord.percentile_ms(0.99),
            concord.errors,
            xa.per_second(),
            xa.percentile_ms(0.5),
            xa.percentile_ms(0.99),
            xa.errors,
            left.len(),
            opening == closing,
        );
    } else {
        println!(
            "bank-bench: 2 banks on PostgreSQL ({} accounts each), {} clients, {:.0} s per run",
            args.accounts,
            args.clients,
            args.duration.as_secs_f64()
        );
        for (name, run) in [("concord 2PC", &concord), ("raw XA", &xa)] {
            println!(
                "{name:<12} {:>8.0} transfers/s  p50 {:>6.2} ms  p99 {:>6.2} ms  ({} errors)",
                run.per_second(),
                run.percentile_ms(0.5),
                run.percentile_ms(0.99),
                run.errors
            );
        }
        println!("ratio        Concord / XA = {ratio:.2}");
        println!(
            "money        {} cents before, {} after: {}",
            opening,
            closing,
            if opening == closing {
                "conserved"
            } else {
                "NOT CONSERVED"
            }
        );
        println!(
            "a killed XA client leaves {} prepared transaction(s), holding their rows' locks \
             until someone resolves them by hand:",
            left.len()
        );
        for (gid, database) in &left {
            println!("  {gid}  in {database}");
        }
        println!(
            "(rolled back here by hand; Concord's coordinator finishes its own after a crash, \
             R2/R3)"
        );
    }
    anyhow::ensure!(opening == closing, "money was not conserved");
    Ok(())
}

/// One XA transfer: phase 1 on both databases at once, then phase 2 on
/// both. True if it committed; false if a debit found too little money
/// (the prepared side is rolled back).
async fn xa_transfer(
    a: &mut PgConnection,
    b: &mut PgConnection,
    gid: &str,
    from: &str,
    to: &str,
) -> Result<bool, sqlx::Error> {
    let (gid_a, gid_b) = (format!("{gid}-a"), format!("{gid}-b"));
    let (debited, credited) = tokio::join!(
        xa_prepare(a, &gid_a, from, -1),
        xa_prepare(b, &gid_b, to, 1)
    );
    let (debited, credited) = (debited?, credited?);
    let finish = if debited && credited {
        "COMMIT PREPARED"
    } else {
        "ROLLBACK PREPARED"
    };
    let end = |prepared: bool, gid: &str| {
        prepared.then(|| sqlx::AssertSqlSafe(format!("{finish} '{gid}'")))
    };
    let (end_a, end_b) = (end(debited, &gid_a), end(credited, &gid_b));
    let (done_a, done_b) = tokio::join!(
        async {
            match end_a {
                Some(sql) => sqlx::raw_sql(sql).execute(&mut *a).await.map(|_| ()),
                None => Ok(()),
            }
        },
        async {
            match end_b {
                Some(sql) => sqlx::raw_sql(sql).execute(&mut *b).await.map(|_| ()),
                None => Ok(()),
            }
        }
    );
    done_a?;
    done_b?;
    Ok(debited && credited)
}

/// XA phase 1 on one database: the balance change under the row's lock,
/// then `PREPARE TRANSACTION` (durable, as a vote). False, with nothing
/// prepared, when a debit finds too little money.
async fn xa_prepare(
    connection: &mut PgConnection,
    gid: &str,
    account: &str,
    delta: i64,
) -> Result<bool, sqlx::Error> {
    sqlx::raw_sql("BEGIN").execute(&mut *connection).await?;
    let changed = sqlx::query(
        "UPDATE accounts SET balance = balance + $2 WHERE name = $1 AND balance + $2 >= 0",
    )
    .bind(account)
    .bind(delta)
    .execute(&mut *connection)
    .await?
    .rows_affected();
    if changed == 0 {
        sqlx::raw_sql("ROLLBACK").execute(&mut *connection).await?;
        return Ok(false);
    }
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("PREPARE TRANSACTION '{gid}'")))
        .execute(&mut *connection)
        .await?;
    Ok(true)
}
