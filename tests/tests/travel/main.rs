//! The travel example end to end: a coordinator and the five travel
//! services on loopback, each with its own SQLite file; inventories, cards,
//! bookings and the outbox checked in the services' own databases.

#[path = "../support/mod.rs"]
mod support;

use concord_example_travel::{
    Kind, Services, Trip, available, balance, bookings, emails, fund, open_db, stock, trip_saga,
};
use concord_participant::saga::SagaState;
use sqlx::SqlitePool;
use support::{quick_config, start_coordinator};
use tokio_util::sync::CancellationToken;

async fn service(
    kind: Kind,
    flaky: u32,
    dir: &std::path::Path,
    name: &str,
    stop: &CancellationToken,
) -> (String, SqlitePool) {
    let pool = open_db(&dir.join(format!("{name}.db"))).await.expect("db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let served = pool.clone();
    let stop = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        concord_example_travel::serve(
            kind,
            flaky,
            served,
            support::keys::callers(),
            Default::default(),
            listener,
            stop,
        )
        .await
        .expect("serves");
    });
    (url, pool)
}

fn trip(traveller: &str) -> Trip {
    Trip {
        traveller: traveller.into(),
        flight: "LH123".into(),
        hotel: "grand".into(),
        car: "compact".into(),
        card: traveller.into(),
        price: 42_000,
        email: format!("{traveller}@example.com"),
    }
}

#[tokio::test]
async fn trips_book_compensate_and_survive_a_flaky_service() {
    let dir = tempfile::tempdir().expect("temp dir");
    let d = dir.path();
    let stop = CancellationToken::new();
    let node = start_coordinator(&d.join("coordinator"), quick_config()).await;
    let client = support::client(&node);
    let (flight, flights) = service(Kind::Flight, 0, d, "flight", &stop).await;
    let (hotel, hotels) = service(Kind::Hotel, 0, d, "hotel", &stop).await;
    let (flaky_hotel, flaky_hotels) = service(Kind::Hotel, 2, d, "flaky-hotel", &stop).await;
    let (car, cars) = service(Kind::Car, 0, d, "car", &stop).await;
    let (payment, payments) = service(Kind::Payment, 0, d, "payment", &stop).await;
    let (email, outbox) = service(Kind::Email, 0, d, "email", &stop).await;
    stock(&flights, "LH123", 10).await.expect("stock");
    stock(&hotels, "grand", 5).await.expect("stock");
    stock(&flaky_hotels, "grand", 5).await.expect("stock");
    stock(&cars, "compact", 1).await.expect("stock");
    for card in ["ada", "bob", "cy"] {
        fund(&payments, card, 100_000).await.expect("fund");
    }
    let services = Services {
        flight,
        hotel,
        car,
        payment,
        email,
    };

    // Everything books: one unit of each item taken, card charged, mail sent.
    let ada = trip_saga(&services, &trip("ada"))
        .run(&client)
        .await
        .expect("saga");
    assert_eq!(ada.state, SagaState::Completed, "{}", ada.reason);
    assert_eq!(available(&flights, "LH123").await.expect("read"), Some(9));
    assert_eq!(available(&hotels, "grand").await.expect("read"), Some(4));
    assert_eq!(available(&cars, "compact").await.expect("read"), Some(0));
    assert_eq!(balance(&payments, "ada").await.expect("read"), Some(58_000));
    assert_eq!(emails(&outbox, &ada.transaction_id).await.expect("read"), 1);

    // The car is sold out: hotel and flight are given back, nothing charged.
    let bob = trip_saga(&services, &trip("bob"))
        .run(&client)
        .await
        .expect("saga");
    assert_eq!(bob.state, SagaState::Compensated);
    assert!(bob.reason.contains("sold out"), "{}", bob.reason);
    assert_eq!(available(&flights, "LH123").await.expect("read"), Some(9));
    assert_eq!(available(&hotels, "grand").await.expect("read"), Some(4));
    assert_eq!(
        bookings(&flights, &bob.transaction_id).await.expect("read"),
        ["cancelled"]
    );
    assert_eq!(
        balance(&payments, "bob").await.expect("read"),
        Some(100_000)
    );
    assert_eq!(emails(&outbox, &bob.transaction_id).await.expect("read"), 0);

    // A flaky hotel: its first two attempts fail, the third books.
    stock(&cars, "compact", 1).await.expect("restock");
    let flaky = Services {
        hotel: flaky_hotel,
        ..services.clone()
    };
    let cy = trip_saga(&flaky, &trip("cy"))
        .run(&client)
        .await
        .expect("saga");
    assert_eq!(cy.state, SagaState::Completed, "{}", cy.reason);
    let txn = client.transaction(&cy.transaction_id).await.expect("get");
    let hotel_step = txn
        .steps
        .iter()
        .find(|s| s.name == "hotel")
        .expect("hotel step");
    assert_eq!(hotel_step.attempts, 3);
    assert_eq!(
        available(&flaky_hotels, "grand").await.expect("read"),
        Some(4)
    );
    assert_eq!(
        bookings(&flaky_hotels, &cy.transaction_id)
            .await
            .expect("read"),
        ["booked"]
    );

    // A trip with a negative price would pay the traveller: the payment
    // refuses it, and the saga gives everything back (issue 31).
    stock(&cars, "compact", 1).await.expect("restock");
    let before = balance(&payments, "ada").await.expect("read");
    let refund = trip_saga(
        &services,
        &Trip {
            price: -1_000_000,
            ..trip("ada")
        },
    )
    .run(&client)
    .await
    .expect("saga");
    assert_eq!(refund.state, SagaState::Compensated, "{}", refund.reason);
    assert!(
        refund.reason.contains("must be positive"),
        "{}",
        refund.reason
    );
    assert_eq!(balance(&payments, "ada").await.expect("read"), before);
    stop.cancel();
}
