//! `transfer`: move money between two banks in one Concord transaction.
//!
//! ```text
//! transfer --from-bank http://127.0.0.1:7501 --from alice \
//!          --to-bank http://127.0.0.1:7502 --to bob --amount 3000
//! ```

use clap::Parser;
use concord_participant::{CoordinatorClient, Outcome};

#[derive(Parser, Debug)]
#[command(
    name = "transfer",
    about = "Transfer money between two banks over Concord 2PC"
)]
struct Args {
    #[arg(
        long,
        env = "CONCORD_COORDINATOR",
        default_value = "http://127.0.0.1:7400"
    )]
    coordinator: String,
    /// The client token the coordinator requires, if it was started with
    /// --client-token.
    #[arg(long, env = "CONCORD_CLIENT_TOKEN", hide_env_values = true)]
    token: Option<String>,
    #[arg(long)]
    from_bank: String,
    #[arg(long)]
    from: String,
    #[arg(long)]
    to_bank: String,
    #[arg(long)]
    to: String,
    /// Cents to move; more than zero.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..))]
    amount: i64,
}

/// Runs the `transfer` command line.
pub fn main() -> anyhow::Result<()> {
    run()
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut client = CoordinatorClient::connect(args.coordinator)?;
    if let Some(token) = &args.token {
        client = client.with_token(token)?;
    }
    let transfer = crate::transfer(
        &client,
        &args.from_bank,
        &args.from,
        &args.to_bank,
        &args.to,
        args.amount,
    )
    .await?;
    match transfer.outcome {
        Outcome::Committed { .. } => println!("{} committed", transfer.transaction_id),
        Outcome::Aborted { reason } => println!("{} aborted: {reason}", transfer.transaction_id),
        Outcome::Undecided => println!("{} undecided", transfer.transaction_id),
    }
    Ok(())
}
