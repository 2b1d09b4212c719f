//! The `travel-service` command line: one of the travel example's
//! services, with its own SQLite database, serving the Concord Participant
//! gRPC service. It lives in the library so that crash tests can build the
//! same program with the SDK's fail points on.
//!
//! ```text
//! travel-service --kind flight --listen 127.0.0.1:7601 --db flight.db --stock LH123=10 \
//!     --coordinator-key concord-data/signing.key.pub
//! travel-service --kind payment --listen 127.0.0.1:7604 --db payment.db --card ada=100000 \
//!     --coordinator-key concord-data/signing.key.pub
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::Kind;
use anyhow::Context;
use clap::Parser;

#[derive(Parser, Debug)]
#[command(
    name = "travel-service",
    about = "A travel service taking part in Concord sagas"
)]
struct Args {
    #[arg(long, value_enum)]
    kind: Kind,
    #[arg(long, default_value = "127.0.0.1:7601")]
    listen: SocketAddr,
    /// The service's SQLite database (created if missing).
    #[arg(long)]
    db: PathBuf,
    /// Inventory: ITEM=UNITS, repeatable. An item stocked already keeps
    /// what is left (a restart sells nothing twice).
    #[arg(long = "stock", value_parser = pair)]
    stock: Vec<(String, i64)>,
    /// Payment: CARD=CENTS, repeatable. A card open already keeps its
    /// balance (a restart creates no money).
    #[arg(long = "card", value_parser = pair)]
    cards: Vec<(String, i64)>,
    /// Fail the first N attempts of every call transiently (shows retries).
    #[arg(long, default_value_t = 0)]
    flaky: u32,
    /// The coordinator's public key (PEM, from `concord keys public`):
    /// only calls it signed are obeyed. A file of several keys trusts
    /// each (rotation).
    #[arg(long, env = "CONCORD_COORDINATOR_KEY")]
    coordinator_key: Option<PathBuf>,
    /// Obey any call that reaches the port, signed or not: only where
    /// nothing but the coordinator can reach it. Warned at each start.
    #[arg(long)]
    accept_unsigned_calls: bool,
    /// The coordinator to ask about branches left in doubt (after a
    /// restart): any node of the deployment. Only this one is asked.
    #[arg(long, env = "CONCORD_COORDINATOR")]
    coordinator: Option<String>,
}

fn pair(value: &str) -> Result<(String, i64), String> {
    let (name, n) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not NAME=NUMBER"))?;
    let n: i64 = n.parse().map_err(|e| format!("{n:?}: {e}"))?;
    if name.is_empty() || n < 0 {
        return Err(format!("{value:?}: need a name and a number >= 0"));
    }
    Ok((name.to_owned(), n))
}

/// Runs the `travel-service` command line.
pub fn main() -> anyhow::Result<()> {
    let _failpoints = concord_participant::crash::arm_from_env();
    concord_coordinator::cli::run_service(run())
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    // Before anything is opened: whom to obey (DESIGN §12).
    let callers = concord_participant::Callers::from_flags(
        args.coordinator_key.as_deref(),
        args.accept_unsigned_calls,
    )?;
    let pool = crate::open_db(&args.db)
        .await
        .with_context(|| format!("opening {}", args.db.display()))?;
    for (item, units) in &args.stock {
        if !crate::stock_once(&pool, item, *units).await? {
            tracing::info!(%item, "already stocked: what is left is kept");
        }
    }
    for (card, cents) in &args.cards {
        if !crate::fund_once(&pool, card, *cents).await? {
            tracing::info!(%card, "already open: its balance is kept");
        }
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    tracing::info!(kind = ?args.kind, listen = %args.listen, "travel service serving");
    let resolver = concord_participant::ResolverConfig {
        coordinator: args.coordinator.clone(),
        ..Default::default()
    };
    crate::serve(
        args.kind,
        args.flaky,
        pool,
        callers,
        resolver,
        listener,
        async {
            let _ = tokio::signal::ctrl_c().await;
        },
    )
    .await
}
