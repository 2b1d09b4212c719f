//! Micro-benchmark of the durable log's batched write: one SQLite
//! transaction (one fsync) holding a batch of records, as the group-commit
//! writer issues it. `cargo bench -p concord-coordinator --bench log`.

use std::hint::black_box;

use concord_coordinator::model::TxnId;
use concord_coordinator::store::sqlite::SqliteStore;
use concord_coordinator::store::{Record, Store};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

/// A batch as 2PC produces it: for each transaction, its Begin with two
/// branches.
fn batch(transactions: usize) -> Vec<Record> {
    let mut records = Vec::with_capacity(transactions * 3);
    for _ in 0..transactions {
        let id = TxnId::mint();
        records.push(Record::Begun {
            id,
            created_at_ms: 1,
            deadline_ms: 30_001,
            idempotency_key: None,
            request_digest: None,
            description: None,
        });
        for idx in 0..2 {
            records.push(Record::Enlisted {
                id,
                idx,
                name: format!("b{idx}"),
                participant: "http://127.0.0.1:7501".into(),
                payload: vec![0; 64],
            });
        }
    }
    records
}

fn benches(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let store = std::sync::Arc::new(
        runtime
            .block_on(SqliteStore::open_dir(dir.path()))
            .expect("store"),
    );
    let mut group = c.benchmark_group("sqlite append (fsync on)");
    group.sample_size(20);
    for transactions in [1usize, 16, 256] {
        group.bench_with_input(
            BenchmarkId::new("transactions per batch", transactions),
            &transactions,
            |b, n| {
                b.to_async(&runtime).iter(|| {
                    let records = batch(*n);
                    let store = std::sync::Arc::clone(&store);
                    async move { store.append(black_box(&records)).await.expect("append") }
                })
            },
        );
    }
    group.finish();
}

criterion_group!(log, benches);
criterion_main!(log);
