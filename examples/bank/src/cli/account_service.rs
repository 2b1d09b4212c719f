//! The `account-service` command line: one bank, its own SQLite database of
//! balances, serving the Concord Participant gRPC service.
//!
//! ```text
//! account-service serve --listen 127.0.0.1:7501 --db bank-a.db --open alice=10000 \
//!     --coordinator-key concord-data/signing.key.pub
//! account-service balances --db bank-a.db
//! ```
//!
//! It lives in the library so that crash tests can build the same program
//! with the SDK's fail points on.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "account-service",
    about = "A bank taking part in Concord transactions"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the Participant gRPC service.
    Serve {
        #[arg(long, env = "BANK_LISTEN", default_value = "127.0.0.1:7501")]
        listen: SocketAddr,
        /// The bank's SQLite database (created if missing).
        #[arg(long, env = "BANK_DB")]
        db: PathBuf,
        /// Open accounts before serving: NAME=CENTS, repeatable. An account
        /// that exists keeps its balance (a restart creates no money).
        #[arg(long = "open", value_parser = parse_opening)]
        open: Vec<(String, i64)>,
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
    },
    /// Print every account's balance and held amount.
    Balances {
        #[arg(long, env = "BANK_DB")]
        db: PathBuf,
    },
}

fn parse_opening(value: &str) -> Result<(String, i64), String> {
    let (name, cents) = value
        .split_once('=')
        .ok_or_else(|| format!("{value:?} is not NAME=CENTS"))?;
    let cents: i64 = cents
        .parse()
        .map_err(|e| format!("{cents:?} is not a number of cents: {e}"))?;
    if name.is_empty() || cents < 0 {
        return Err(format!("{value:?}: need a name and a balance >= 0"));
    }
    Ok((name.to_owned(), cents))
}

/// Runs the `account-service` command line.
pub fn main() -> anyhow::Result<()> {
    let _failpoints = concord_participant::crash::arm_from_env();
    concord_coordinator::cli::run_service(run())
}

async fn run() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Serve {
            listen,
            db,
            open,
            coordinator_key,
            accept_unsigned_calls,
            coordinator,
        } => {
            // Before anything is opened: whom to obey (DESIGN §12).
            let callers = concord_participant::Callers::from_flags(
                coordinator_key.as_deref(),
                accept_unsigned_calls,
            )?;
            let pool = crate::open_db(&db)
                .await
                .with_context(|| format!("opening {}", db.display()))?;
            for (name, cents) in open {
                if !crate::open_account(&pool, &name, cents).await? {
                    tracing::info!(account = %name, "already open: its balance is kept");
                }
            }
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening on {listen}"))?;
            tracing::info!(%listen, db = %db.display(), "account service serving");
            let resolver = concord_participant::ResolverConfig {
                coordinator,
                ..Default::default()
            };
            crate::serve(pool, callers, resolver, listener, async {
                let _ = tokio::signal::ctrl_c().await;
            })
            .await
        }
        Command::Balances { db } => {
            let pool = crate::open_db(&db).await?;
            for account in crate::accounts(&pool).await? {
                println!(
                    "{:<12} balance {:>10}  held {:>8}",
                    account.name, account.balance, account.held
                );
            }
            Ok(())
        }
    }
}
