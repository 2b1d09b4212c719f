//! The kill matrix (DESIGN §7): every crash point, in every workload that
//! reaches it, killing the process that hosts it — generated from one
//! table, not written case by case. After each crash the victim restarts on
//! the same address and data, and the outcome is checked in every
//! participant's database: agreement and money conserved (I1, I6), what the
//! client was told stands (I2), nothing left prepared or held (I3), sagas
//! done or fully compensated (I4), each effect once (I5).

use concord_participant::saga::SagaState;

use super::process::{Banks, Travel};

/// What runs while the crash point is armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Workload {
    /// A transfer that commits.
    TwoPhaseCommit,
    /// A transfer that aborts (insufficient funds at bank a, bank b votes YES).
    TwoPhaseAbort,
    /// A single-branch deposit: committed in one phase (R6).
    OnePhase,
    /// A transfer begun and committed in one call (`BeginRequest.commit`).
    BeginAndCommit,
    /// A trip that books.
    SagaCompletes,
    /// A trip whose car is sold out: compensated.
    SagaCompensates,
}

/// Which process hosts the crash point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Host {
    Coordinator,
    /// Bank b in 2PC workloads, the hotel service in saga workloads.
    Participant,
}

use Host::*;
use Workload::*;

/// Every crash point, its host, and the workloads that reach it.
const MATRIX: &[(&str, Host, &[Workload])] = &[
    (
        "2pc-before-prepare",
        Coordinator,
        &[TwoPhaseCommit, TwoPhaseAbort, BeginAndCommit],
    ),
    ("2pc-before-one-phase", Coordinator, &[OnePhase]),
    (
        "2pc-before-decision",
        Coordinator,
        &[TwoPhaseCommit, BeginAndCommit],
    ),
    (
        "2pc-after-decision",
        Coordinator,
        &[TwoPhaseCommit, BeginAndCommit],
    ),
    (
        "2pc-mid-phase-two",
        Coordinator,
        &[TwoPhaseCommit, BeginAndCommit],
    ),
    (
        "2pc-before-end",
        Coordinator,
        &[TwoPhaseCommit, TwoPhaseAbort, OnePhase, BeginAndCommit],
    ),
    ("2pc-after-abort-decision", Coordinator, &[TwoPhaseAbort]),
    (
        "saga-before-step-record",
        Coordinator,
        &[SagaCompletes, SagaCompensates],
    ),
    (
        "saga-after-step-record",
        Coordinator,
        &[SagaCompletes, SagaCompensates],
    ),
    (
        "saga-before-compensation-record",
        Coordinator,
        &[SagaCompensates],
    ),
    (
        "saga-after-compensation-record",
        Coordinator,
        &[SagaCompensates],
    ),
    (
        "participant-after-prepare",
        Participant,
        &[TwoPhaseCommit, TwoPhaseAbort, BeginAndCommit],
    ),
    (
        "participant-before-commit",
        Participant,
        &[TwoPhaseCommit, BeginAndCommit],
    ),
    (
        "participant-after-commit",
        Participant,
        &[TwoPhaseCommit, BeginAndCommit],
    ),
    ("participant-after-one-phase", Participant, &[OnePhase]),
    (
        "participant-after-action",
        Participant,
        &[SagaCompletes, SagaCompensates],
    ),
    (
        "participant-after-compensate",
        Participant,
        &[SagaCompensates],
    ),
];

/// Runs one case; returns how the transaction ended, for the summary.
async fn run(point: &str, host: Host, workload: Workload) -> String {
    // A crash before any vote could be counted leaves an abort; after the
    // decision (or the one-phase commit), a commit.
    let aborts = matches!(
        point,
        "participant-after-prepare"
            | "2pc-before-prepare"
            | "2pc-before-decision"
            | "2pc-before-one-phase"
    );
    match workload {
        OnePhase | BeginAndCommit => {
            let world = Banks::new();
            let arm = |victim: Host| (host == victim).then_some(point);
            let _a = world.bank("a", None, true).await;
            let b = world.bank("b", arm(Participant), true).await;
            let coordinator = world.coordinator(arm(Coordinator)).await;
            let (id, told) = if workload == OnePhase {
                let (id, told) = world.deposit_in_one_phase().await;
                (Some(id), told)
            } else {
                world.transfer_in_begin(3_000).await
            };
            let (_b, _coordinator) = match host {
                Coordinator => {
                    coordinator.crashed().await;
                    (b, world.coordinator(None).await)
                }
                Participant => {
                    b.crashed().await;
                    (world.bank("b", None, false).await, coordinator)
                }
            };
            let id = match id {
                Some(id) => Some(id),
                None => world.only_transaction().await,
            };
            let Some(id) = id else {
                // The one-call Begin's records ride with its decision: a
                // crash before either leaves nothing, and no money moved.
                assert!(aborts, "{point}: a decided transfer left no record");
                world.untouched().await;
                return "never recorded".to_owned();
            };
            let on_commit = if workload == OnePhase {
                (10_000, 8_000)
            } else {
                (7_000, 8_000)
            };
            let committed = world.settles_to(&id, told, Some(!aborts), on_commit).await;
            if committed { "committed" } else { "aborted" }.to_owned()
        }
        TwoPhaseCommit | TwoPhaseAbort => {
            let world = Banks::new();
            let arm = |victim: Host| (host == victim).then_some(point);
            let _a = world.bank("a", None, true).await;
            let b = world.bank("b", arm(Participant), true).await;
            let coordinator = world.coordinator(arm(Coordinator)).await;
            let amount = if workload == TwoPhaseCommit {
                3_000
            } else {
                50_000
            };
            let (id, told) = world.transfer_of(amount).await;
            // The victim dies at its point, and comes back.
            let (_b, _coordinator) = match host {
                Coordinator => {
                    coordinator.crashed().await;
                    (b, world.coordinator(None).await)
                }
                Participant => {
                    b.crashed().await;
                    (world.bank("b", None, false).await, coordinator)
                }
            };
            // An abort must stay an abort; a commit may turn into an abort
            // only when a crash ate a YES vote before the decision.
            let must = Some(workload == TwoPhaseCommit && !aborts);
            let committed = world.settles_as_decided(&id, told, must).await;
            if committed { "committed" } else { "aborted" }.to_owned()
        }
        SagaCompletes | SagaCompensates => {
            let world = Travel::new();
            let cars = if workload == SagaCompletes { 1 } else { 0 };
            let arm = (host == Participant).then_some(("hotel", point));
            let mut services = world.services_armed(cars, arm).await;
            let coordinator = world
                .coordinator((host == Coordinator).then_some(point))
                .await;
            let _ = world.saga().submit(&world.client()).await;
            let _coordinator = match host {
                Coordinator => {
                    coordinator.crashed().await;
                    world.coordinator(None).await
                }
                Participant => {
                    let hotel = services.remove(1);
                    hotel.crashed().await;
                    services.push(world.service("hotel", cars, None, false).await);
                    coordinator
                }
            };
            let id = world
                .saga()
                .submit(&world.client())
                .await
                .expect("the saga is found by its key")
                .transaction_id;
            let state = world.ends(&id).await;
            // A sold-out car always compensates; a trip that can book may
            // still compensate if a participant's crash outlasted the step's
            // retries — either way each effect must be whole (I4).
            if workload == SagaCompensates {
                assert_eq!(state, SagaState::Compensated);
            }
            world.consistent(&id, state, cars).await;
            format!("{state:?}").to_lowercase()
        }
    }
}

#[tokio::test]
async fn every_crash_point_in_every_workload_recovers_with_invariants_intact() {
    let mut ran = Vec::new();
    for (point, host, workloads) in MATRIX {
        for workload in *workloads {
            let ended = run(point, *host, *workload).await;
            ran.push(format!("{point:<32} {host:?}/{workload:?} -> {ended}"));
        }
    }
    // The summary shows in the test log (and docs/reliability.md quotes it).
    println!(
        "kill matrix: {} cases, {} crashes injected, 0 invariant violations",
        ran.len(),
        ran.len()
    );
    for line in &ran {
        println!("  {line}");
    }
    assert_eq!(
        ran.len(),
        MATRIX.iter().map(|(_, _, w)| w.len()).sum::<usize>()
    );
}
