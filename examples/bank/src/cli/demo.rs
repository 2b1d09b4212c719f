//! `bank-demo`: the whole bank example in one command, on loopback.
//!
//! Starts a coordinator (SQLite log in a temp dir), two banks and two event
//! services (audit, notifications; each with its own SQLite file), all
//! serving real gRPC on 127.0.0.1, then makes a transfer that commits and
//! one that aborts for lack of funds, printing the balances before and
//! after each; then two payments within bank-a whose "transfer completed"
//! events go to the event services as transactional messages, printing
//! what each service received.
//!
//! With `--coordinator URL` (or `CONCORD_COORDINATOR`) it runs them through
//! a coordinator already running, e.g. one serving the web console
//! (`concord serve --console-listen 127.0.0.1:7480`), to watch them appear
//! there.

use crate::events;
use anyhow::Context;
use concord_coordinator::node::Node;
use concord_participant::{Callers, CoordinatorClient, Outcome};
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

struct BankProcess {
    name: &'static str,
    url: String,
    pool: SqlitePool,
}

async fn start_bank(
    name: &'static str,
    dir: &std::path::Path,
    accounts: &[(&str, i64)],
    callers: &Callers,
    coordinator: &str,
    stop: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> anyhow::Result<BankProcess> {
    let pool = crate::open_db(&dir.join(format!("{name}.db"))).await?;
    for (account, cents) in accounts {
        crate::open_account(&pool, account, *cents).await?;
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = stop.clone();
    let served = pool.clone();
    let callers = callers.clone();
    let resolver = concord_participant::ResolverConfig {
        coordinator: Some(coordinator.to_owned()),
        ..Default::default()
    };
    tasks.spawn(async move {
        if let Err(error) =
            crate::serve(served, callers, resolver, listener, stop.cancelled_owned()).await
        {
            eprintln!("{name} stopped: {error:#}");
        }
    });
    Ok(BankProcess { name, url, pool })
}

/// An event service (audit, notifications) of the demo.
struct EventService {
    name: &'static str,
    url: String,
    pool: SqlitePool,
}

async fn start_events(
    name: &'static str,
    dir: &std::path::Path,
    callers: &Callers,
    stop: &CancellationToken,
    tasks: &tokio_util::task::TaskTracker,
) -> anyhow::Result<EventService> {
    let pool = events::open_events_db(&dir.join(format!("{name}.db"))).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = stop.clone();
    let served = pool.clone();
    let callers = callers.clone();
    tasks.spawn(async move {
        if let Err(error) =
            events::serve_events(served, callers, listener, stop.cancelled_owned()).await
        {
            eprintln!("{name} stopped: {error:#}");
        }
    });
    Ok(EventService { name, url, pool })
}

fn state_name(state: i32) -> String {
    concord_proto::v1::TransactionState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TRANSACTION_STATE_")
                .to_owned()
        })
        .unwrap_or_else(|_| state.to_string())
}

async fn print_balances(banks: &[&BankProcess]) -> anyhow::Result<()> {
    for bank in banks {
        for account in crate::accounts(&bank.pool).await? {
            println!(
                "  {:<7} {:<6} {:>8.2}",
                bank.name,
                account.name,
                account.balance as f64 / 100.0
            );
        }
    }
    Ok(())
}

/// The whole bank example on loopback: a coordinator (or yours, with
/// --coordinator), two banks, two transfers over 2PC, and two payments
/// whose events are transactional messages.
#[derive(Debug, clap::Parser)]
struct Args {
    /// Run through this coordinator instead of starting one.
    #[arg(long, env = "CONCORD_COORDINATOR", requires = "coordinator_key")]
    coordinator: Option<String>,
    /// With --coordinator: that coordinator's public key (its data
    /// directory's `signing.key.pub`), so that the services this demo starts
    /// obey its calls and no one else's.
    #[arg(long, env = "CONCORD_COORDINATOR_KEY")]
    coordinator_key: Option<std::path::PathBuf>,
    /// With --coordinator: the client token it requires, if it was started
    /// with --client-token.
    #[arg(long, env = "CONCORD_CLIENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Runs the `bank-demo` command line.
pub fn main() -> anyhow::Result<()> {
    run()
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let stop = CancellationToken::new();
    let tasks = tokio_util::task::TaskTracker::new();

    // DESIGN §12: the services obey only the coordinator's signed calls.
    let (node, coordinator, callers) = match args.coordinator {
        Some(url) => {
            let callers = Callers::from_flags(args.coordinator_key.as_deref(), false)?;
            (None, url, callers)
        }
        None => {
            let (node, trusted) = Node::start_local(&dir.path().join("coordinator"))
                .await
                .context("starting the coordinator")?;
            let url = node.url();
            (Some(node), url, Callers::SignedBy(trusted))
        }
    };
    let bank_a = start_bank(
        "bank-a",
        dir.path(),
        &[("alice", 10_000), ("carol", 0)],
        &callers,
        &coordinator,
        &stop,
        &tasks,
    )
    .await?;
    let bank_b = start_bank(
        "bank-b",
        dir.path(),
        &[("bob", 5_000)],
        &callers,
        &coordinator,
        &stop,
        &tasks,
    )
    .await?;
    let audit = start_events("audit", dir.path(), &callers, &stop, &tasks).await?;
    let notify = start_events("notify", dir.path(), &callers, &stop, &tasks).await?;
    println!(
        "coordinator {coordinator}  bank-a {}  bank-b {}  audit {}  notify {}",
        bank_a.url, bank_b.url, audit.url, notify.url
    );
    let mut client = CoordinatorClient::connect(coordinator)?;
    if let Some(token) = &args.token {
        client = client.with_token(token)?;
    }

    println!("\nbalances before:");
    print_balances(&[&bank_a, &bank_b]).await?;

    for (amount, label) in [(3_000, "30.00"), (50_000, "500.00")] {
        println!("\ntransfer {label} from alice (bank-a) to bob (bank-b):");
        let transfer =
            crate::transfer(&client, &bank_a.url, "alice", &bank_b.url, "bob", amount).await?;
        match &transfer.outcome {
            Outcome::Committed { .. } => println!("  {} COMMITTED", transfer.transaction_id),
            Outcome::Aborted { reason } => {
                println!("  {} ABORTED: {reason}", transfer.transaction_id)
            }
            Outcome::Undecided => println!("  {} undecided", transfer.transaction_id),
        }
        // Phase 2 runs after the answer (R4); wait for it before reading.
        let mut state = client.transaction(&transfer.transaction_id).await?.state;
        for _ in 0..100 {
            use concord_proto::v1::TransactionState as S;
            if state == S::Committed as i32 || state == S::Aborted as i32 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            state = client.transaction(&transfer.transaction_id).await?.state;
        }
        println!("balances after:");
        print_balances(&[&bank_a, &bank_b]).await?;
    }

    let services = [
        (audit.name, audit.url.as_str()),
        (notify.name, notify.url.as_str()),
    ];
    for (amount, label) in [(2_000, "20.00"), (90_000, "900.00")] {
        println!(
            "
pay {label} from alice to carol within bank-a, telling audit and notify:"
        );
        let paid = events::pay(
            &client,
            &bank_a.url,
            &bank_a.pool,
            ("alice", "carol", amount),
            &services,
        )
        .await?;
        match paid {
            events::Payment::Paid { message_id } => {
                // Delivery runs after the submit's answer; wait for it.
                let mut state = 0;
                for _ in 0..100 {
                    state = client.transaction(&message_id).await?.state;
                    if state == concord_proto::v1::TransactionState::Delivered as i32 {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                println!("  committed; message {message_id} is {}", state_name(state));
            }
            events::Payment::Refused { message_id } => {
                // The check-back settles it; wait, so that a coordinator
                // that outlives this demo is left nothing to ask a bank
                // that is gone.
                let mut state = 0;
                for _ in 0..250 {
                    state = client.transaction(&message_id).await?.state;
                    if state == concord_proto::v1::TransactionState::Dropped as i32 {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                println!(
                    "  refused (not enough money): rolled back, so message {message_id} is never \
                     delivered: the coordinator's check-back found no outbox row; it is {}",
                    state_name(state)
                );
            }
        }
        print_balances(&[&bank_a]).await?;
        println!("events received so far:");
        for service in [&audit, &notify] {
            for event in events::events(&service.pool).await? {
                println!("  {:<7} {}", service.name, event.body);
            }
        }
    }

    stop.cancel();
    tasks.close();
    tasks.wait().await;
    if let Some(node) = node {
        node.shutdown().await?;
    }
    Ok(())
}
