//! Micro-benchmarks of the pure state machines: the cost of the protocol
//! itself, without I/O. `cargo bench -p concord-coordinator --bench protocol`.

use std::hint::black_box;

use concord_coordinator::protocol::saga::{Event as SagaEvent, Saga, StepKind, StepShape};
use concord_coordinator::protocol::two_phase::{Event, TwoPhase, Vote};
use criterion::{Criterion, criterion_group, criterion_main};

/// A whole 2PC transaction with `branches` branches, from Begin to the end.
fn two_phase(branches: usize) -> TwoPhase {
    let mut txn = TwoPhase::new();
    for _ in 0..branches {
        let _ = txn.enlist();
    }
    let _ = txn.apply(Event::CommitRequested);
    for branch in 0..branches {
        let _ = txn.apply(Event::Voted {
            branch,
            vote: Vote::Commit,
        });
    }
    let _ = txn.apply(Event::DecisionDurable);
    for branch in 0..branches {
        let _ = txn.apply(Event::Delivered { branch });
    }
    txn
}

/// A plain list saga of `steps` compensatable steps that completes.
fn saga(steps: usize) -> Saga {
    let shapes = (0..steps)
        .map(|i| StepShape {
            kind: StepKind::Compensatable,
            depends_on: i.checked_sub(1).into_iter().collect(),
        })
        .collect();
    let mut saga = Saga::new(shapes);
    let _ = saga.apply(SagaEvent::Start);
    for step in 0..steps {
        let _ = saga.apply(SagaEvent::ActionSucceeded(step));
    }
    saga
}

fn benches(c: &mut Criterion) {
    c.bench_function("two_phase: 2 branches, begin to end", |b| {
        b.iter(|| two_phase(black_box(2)))
    });
    c.bench_function("two_phase: 16 branches, begin to end", |b| {
        b.iter(|| two_phase(black_box(16)))
    });
    c.bench_function("saga: 3 steps, start to completed", |b| {
        b.iter(|| saga(black_box(3)))
    });
    c.bench_function("saga: 32 steps, start to completed", |b| {
        b.iter(|| saga(black_box(32)))
    });
}

criterion_group!(protocol, benches);
criterion_main!(protocol);
