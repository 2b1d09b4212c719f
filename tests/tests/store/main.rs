//! The coordinator's store contract (`concord_coordinator::store::contract`)
//! against the PostgreSQL store, on a real server started by the harness
//! (`support::postgres`). SQLite and the in-memory store run the same
//! cases as unit tests of the coordinator crate.

#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;

use concord_coordinator::store::Store;
use concord_coordinator::store::contract::{ALL, Open};
use concord_coordinator::store::postgres::PostgresStore;
use futures::FutureExt;
use support::postgres::Postgres;

/// Opens the store on `url`; calling it again reconnects to the same data.
fn opener(url: String) -> Open {
    Box::new(move || {
        let url = url.clone();
        async move {
            let store = PostgresStore::open_url(&url).await.expect("open store");
            Arc::new(store) as Arc<dyn Store>
        }
        .boxed()
    })
}

#[tokio::test]
async fn the_postgres_store_keeps_the_store_contract() {
    let server = Postgres::start().await;
    for (idx, (name, case)) in ALL.iter().enumerate() {
        // A fresh database per case, like a fresh file for SQLite.
        let url = server.database(&format!("contract_{idx}")).await;
        eprintln!("store contract on PostgreSQL: {name}");
        case(opener(url)).await;
    }
}

#[tokio::test]
async fn a_second_node_on_the_same_database_is_refused() {
    use concord_coordinator::store::StoreError;
    let server = Postgres::start().await;
    let url = server.database("owned").await;
    let first = PostgresStore::open_url(&url).await.expect("first node");
    // Until leases and fencing exist, two nodes would drive the same
    // transactions: the second one must not start.
    let second = PostgresStore::open_url(&url).await;
    assert!(matches!(second, Err(StoreError::InUse(_))), "{second:?}");
    // The lock goes with the first node: a successor starts.
    drop(first);
    PostgresStore::open_url(&url)
        .await
        .expect("the successor starts once the first node is gone");
}
