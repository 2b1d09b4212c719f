//! `travel-demo`: the travel example in one command, on loopback.
//!
//! Starts a coordinator and the five travel services (each with its own
//! SQLite file in a temp dir, all serving real gRPC on 127.0.0.1) and books
//! three trips: one where everything books; one where the car is sold out,
//! so the hotel and the flight are compensated in reverse order; and one
//! through a flaky hotel service that its retries get past.
//!
//! With `--coordinator URL` (or `CONCORD_COORDINATOR`) it books them
//! through a coordinator already running, e.g. one serving the web console
//! (`concord serve --console-listen 127.0.0.1:7480`), to watch the trips
//! appear there.

use crate::{Kind, Services, Trip, available, trip_saga};
use anyhow::Context;
use concord_coordinator::node::Node;
use concord_participant::{Callers, CoordinatorClient};
use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// What every service of the demo shares: where its database goes, whom
/// it obeys and asks (its coordinator), and what stops it.
struct Ground<'a> {
    dir: &'a std::path::Path,
    callers: Callers,
    coordinator: String,
    stop: CancellationToken,
    tasks: TaskTracker,
}

async fn start(
    kind: Kind,
    flaky: u32,
    name: &str,
    ground: &Ground<'_>,
) -> anyhow::Result<(String, SqlitePool)> {
    let pool = crate::open_db(&ground.dir.join(format!("{name}.db"))).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let served = pool.clone();
    let stop = ground.stop.clone().cancelled_owned();
    let name = name.to_owned();
    let callers = ground.callers.clone();
    let resolver = concord_participant::ResolverConfig {
        coordinator: Some(ground.coordinator.clone()),
        ..Default::default()
    };
    ground.tasks.spawn(async move {
        if let Err(error) =
            crate::serve(kind, flaky, served, callers, resolver, listener, stop).await
        {
            eprintln!("{name} stopped: {error:#}");
        }
    });
    Ok((url, pool))
}

/// The whole travel example on loopback: a coordinator (or yours, with
/// --coordinator), five services, and three trips booked as sagas.
#[derive(Debug, clap::Parser)]
struct Args {
    /// Book through this coordinator instead of starting one.
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

/// Runs the `travel-demo` command line.
pub fn main() -> anyhow::Result<()> {
    run()
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let args = <Args as clap::Parser>::parse();
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let stop = CancellationToken::new();
    let tasks = TaskTracker::new();
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
    let mut client = CoordinatorClient::connect(coordinator.clone())?;
    if let Some(token) = &args.token {
        client = client.with_token(token)?;
    }

    let ground = Ground {
        dir: dir.path(),
        callers,
        coordinator,
        stop: stop.clone(),
        tasks: tasks.clone(),
    };
    let (flight, flights) = start(Kind::Flight, 0, "flight", &ground).await?;
    let (hotel, hotels) = start(Kind::Hotel, 0, "hotel", &ground).await?;
    let (flaky_hotel, flaky_hotels) = start(Kind::Hotel, 2, "flaky-hotel", &ground).await?;
    let (car, cars) = start(Kind::Car, 0, "car", &ground).await?;
    let (payment, payments) = start(Kind::Payment, 0, "payment", &ground).await?;
    let (email, _) = start(Kind::Email, 0, "email", &ground).await?;
    crate::stock(&flights, "LH123", 10).await?;
    crate::stock(&hotels, "grand-hotel", 5).await?;
    crate::stock(&flaky_hotels, "grand-hotel", 5).await?;
    crate::stock(&cars, "compact-car", 1).await?;
    crate::fund(&payments, "ada", 200_000).await?;
    crate::fund(&payments, "bob", 200_000).await?;
    crate::fund(&payments, "cy", 200_000).await?;

    let services = Services {
        flight,
        hotel,
        car,
        payment,
        email,
    };
    let trip = |traveller: &str| Trip {
        traveller: traveller.into(),
        flight: "LH123".into(),
        hotel: "grand-hotel".into(),
        car: "compact-car".into(),
        card: traveller.into(),
        price: 42_000,
        email: format!("{traveller}@example.com"),
    };
    let runs = [
        (
            "1. everything books (ada takes the last car)",
            services.clone(),
            trip("ada"),
            1,
        ),
        (
            "2. the car is sold out for bob",
            services.clone(),
            trip("bob"),
            0,
        ),
        (
            "3. a car is back in stock; cy books through a flaky hotel service (its first 2 attempts fail)",
            Services {
                hotel: flaky_hotel,
                ..services.clone()
            },
            trip("cy"),
            1,
        ),
    ];
    for (title, services, trip, cars_now) in runs {
        crate::stock(&cars, "compact-car", cars_now).await?;
        println!("\n{title}");
        let status = trip_saga(&services, &trip).run(&client).await?;
        println!(
            "  saga {} -> {:?} {}",
            status.transaction_id, status.state, status.reason
        );
        super::print_steps(&client, &status.transaction_id, 4).await?;
        println!(
            "  seats left {}, rooms left {} (flaky hotel {}), cars left {}, {}'s card {:.2}",
            available(&flights, "LH123").await?.unwrap_or(0),
            available(&hotels, "grand-hotel").await?.unwrap_or(0),
            available(&flaky_hotels, "grand-hotel").await?.unwrap_or(0),
            available(&cars, "compact-car").await?.unwrap_or(0),
            trip.traveller,
            crate::balance(&payments, &trip.card).await?.unwrap_or(0) as f64 / 100.0,
        );
    }

    stop.cancel();
    tasks.close();
    tasks.wait().await;
    if let Some(node) = node {
        node.shutdown().await?;
    }
    Ok(())
}
