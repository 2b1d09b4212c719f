//! `book-trip`: books a flight, a hotel and a car, pays, and sends the
//! confirmation, as one Concord saga; prints how each step ended.

use crate::{Services, Trip, trip_saga};
use clap::Parser;
use concord_participant::CoordinatorClient;

#[derive(Parser, Debug)]
#[command(name = "book-trip", about = "Book a trip as a Concord saga")]
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
    #[arg(long, default_value = "http://127.0.0.1:7601")]
    flight_url: String,
    #[arg(long, default_value = "http://127.0.0.1:7602")]
    hotel_url: String,
    #[arg(long, default_value = "http://127.0.0.1:7603")]
    car_url: String,
    #[arg(long, default_value = "http://127.0.0.1:7604")]
    payment_url: String,
    #[arg(long, default_value = "http://127.0.0.1:7605")]
    email_url: String,
    #[arg(long, default_value = "ada")]
    traveller: String,
    #[arg(long, default_value = "LH123")]
    flight: String,
    #[arg(long, default_value = "grand-hotel")]
    hotel: String,
    #[arg(long, default_value = "compact-car")]
    car: String,
    #[arg(long, default_value = "ada")]
    card: String,
    /// Price in cents.
    #[arg(long, default_value_t = 42_000)]
    price: i64,
    /// Where the confirmation goes; default: TRAVELLER@example.com.
    #[arg(long)]
    email: Option<String>,
}

/// Runs the `book-trip` command line.
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
    let services = Services {
        flight: args.flight_url,
        hotel: args.hotel_url,
        car: args.car_url,
        payment: args.payment_url,
        email: args.email_url,
    };
    let email = (args.email.clone()).unwrap_or_else(|| format!("{}@example.com", args.traveller));
    let trip = Trip {
        traveller: args.traveller,
        flight: args.flight,
        hotel: args.hotel,
        car: args.car,
        card: args.card,
        price: args.price,
        email,
    };
    let status = trip_saga(&services, &trip).run(&client).await?;
    println!(
        "{} {:?} {}",
        status.transaction_id, status.state, status.reason
    );
    super::print_steps(&client, &status.transaction_id, 2).await?;
    Ok(())
}
