//! Transition-by-transition tests of the saga machine, then a property test
//! of invariant I4 over random step graphs, outcomes, interleavings and
//! crash points.

use proptest::prelude::*;

use super::*;

fn shape(kind: StepKind, depends_on: &[StepIdx]) -> StepShape {
    StepShape {
        kind,
        depends_on: depends_on.to_vec(),
    }
}

fn comp(depends_on: &[StepIdx]) -> StepShape {
    shape(StepKind::Compensatable, depends_on)
}

fn exec(step: StepIdx) -> Effect {
    Effect::Execute {
        step,
        report_budget: true,
    }
}

fn compensate(step: StepIdx) -> Effect {
    Effect::Compensate {
        step,
        report_budget: true,
    }
}

fn record(step: StepIdx, status: StepStatus) -> Effect {
    Effect::Record { step, status }
}

fn failed(step: StepIdx) -> Event {
    Event::ActionFailed {
        step,
        reason: "sold out".into(),
    }
}

/// flight -> (hotel, car) -> payment (pivot) -> email (retriable)
fn trip() -> Saga {
    Saga::new(vec![
        comp(&[]),
        comp(&[0]),
        comp(&[0]),
        shape(StepKind::Pivot, &[1, 2]),
        shape(StepKind::Retriable, &[3]),
    ])
}

#[test]
fn start_runs_the_steps_without_dependencies() {
    let mut saga = trip();
    assert_eq!(saga.apply(Event::Start), vec![exec(0)]);
    assert_eq!(saga.statuses()[0], StepStatus::Running);
    // A second Start changes nothing.
    assert!(saga.apply(Event::Start).is_empty());
}

#[test]
fn a_success_is_recorded_before_its_dependents_start_in_parallel() {
    let mut saga = trip();
    saga.apply(Event::Start);
    let effects = saga.apply(Event::ActionSucceeded(0));
    assert_eq!(
        effects,
        vec![record(0, StepStatus::Succeeded), exec(1), exec(2)]
    );
}

#[test]
fn a_step_waits_for_all_its_dependencies() {
    let mut saga = trip();
    saga.apply(Event::Start);
    saga.apply(Event::ActionSucceeded(0));
    assert_eq!(
        saga.apply(Event::ActionSucceeded(1)),
        vec![record(1, StepStatus::Succeeded)]
    );
    assert_eq!(
        saga.apply(Event::ActionSucceeded(2)),
        vec![record(2, StepStatus::Succeeded), exec(3)]
    );
}

#[test]
fn all_steps_succeeding_completes_the_saga() {
    let mut saga = trip();
    saga.apply(Event::Start);
    for step in 0..4 {
        saga.apply(Event::ActionSucceeded(step));
    }
    let effects = saga.apply(Event::ActionSucceeded(4));
    assert_eq!(
        effects,
        vec![
            record(4, StepStatus::Succeeded),
            Effect::End {
                phase: SagaPhase::Completed,
                reason: None
            }
        ]
    );
    assert_eq!(saga.phase(), SagaPhase::Completed);
}

#[test]
fn a_business_failure_compensates_in_reverse_dependency_order() {
    let mut saga = trip();
    saga.apply(Event::Start);
    saga.apply(Event::ActionSucceeded(0));
    saga.apply(Event::ActionSucceeded(1));
    // The car is sold out: hotel first, then flight.
    let effects = saga.apply(failed(2));
    assert_eq!(effects, vec![record(2, StepStatus::Failed), compensate(1)]);
    assert_eq!(saga.phase(), SagaPhase::Compensating);
    assert_eq!(saga.statuses()[3], StepStatus::Skipped);
    assert_eq!(saga.statuses()[4], StepStatus::Skipped);
    let effects = saga.apply(Event::Compensated(1));
    assert_eq!(
        effects,
        vec![record(1, StepStatus::Compensated), compensate(0)]
    );
    let effects = saga.apply(Event::Compensated(0));
    assert_eq!(
        effects,
        vec![
            record(0, StepStatus::Compensated),
            Effect::End {
                phase: SagaPhase::Compensated,
                reason: Some("sold out".into())
            }
        ]
    );
}

#[test]
fn a_step_still_running_when_the_saga_turns_back_is_awaited_then_compensated() {
    let mut saga = trip();
    saga.apply(Event::Start);
    saga.apply(Event::ActionSucceeded(0));
    // Hotel fails while the car is still being booked.
    let effects = saga.apply(failed(1));
    assert_eq!(effects, vec![record(1, StepStatus::Failed)]);
    assert!(!saga.keeps_retrying(2), "no more retries once compensating");
    // The car's booking went through after all: undo it, then the flight.
    let effects = saga.apply(Event::ActionSucceeded(2));
    assert_eq!(
        effects,
        vec![record(2, StepStatus::Succeeded), compensate(2)]
    );
    let effects = saga.apply(Event::Compensated(2));
    assert_eq!(
        effects,
        vec![record(2, StepStatus::Compensated), compensate(0)]
    );
}

#[test]
fn an_exhausted_step_may_have_run_and_is_compensated_too() {
    let mut saga = Saga::new(vec![comp(&[]), comp(&[0])]);
    saga.apply(Event::Start);
    saga.apply(Event::ActionSucceeded(0));
    let effects = saga.apply(Event::ActionExhausted {
        step: 1,
        reason: "5 attempts timed out".into(),
    });
    assert_eq!(effects, vec![record(1, StepStatus::Unknown), compensate(1)]);
    assert_eq!(saga.reason(), Some("5 attempts timed out"));
}

#[test]
fn a_failed_pivot_compensates_everything_before_it() {
    let mut saga = trip();
    saga.apply(Event::Start);
    for step in 0..3 {
        saga.apply(Event::ActionSucceeded(step));
    }
    let effects = saga.apply(failed(3));
    assert_eq!(
        effects,
        vec![record(3, StepStatus::Failed), compensate(1), compensate(2)]
    );
}

#[test]
fn after_the_pivot_the_saga_only_moves_forward() {
    let mut saga = trip();
    saga.apply(Event::Start);
    for step in 0..4 {
        saga.apply(Event::ActionSucceeded(step));
    }
    // A retriable step past its budget keeps going, flagged.
    let effects = saga.apply(Event::ActionOverBudget(4));
    assert_eq!(
        effects,
        vec![
            Effect::FlagAttention,
            Effect::Execute {
                step: 4,
                report_budget: false
            }
        ]
    );
    assert!(saga.needs_attention());
    assert!(saga.keeps_retrying(4));
    // A definite failure after the pivot cannot compensate: FAILED.
    let effects = saga.apply(Event::ActionFailed {
        step: 4,
        reason: "mailbox does not exist".into(),
    });
    assert_eq!(
        effects,
        vec![
            record(4, StepStatus::Failed),
            Effect::End {
                phase: SagaPhase::Failed,
                reason: Some("mailbox does not exist".into())
            }
        ]
    );
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::Compensate { .. }))
    );
}

#[test]
fn a_compensation_past_its_budget_flags_attention_and_keeps_going() {
    let mut saga = Saga::new(vec![comp(&[]), comp(&[0])]);
    saga.apply(Event::Start);
    saga.apply(Event::ActionSucceeded(0));
    saga.apply(failed(1));
    let effects = saga.apply(Event::CompensationOverBudget(0));
    assert_eq!(
        effects,
        vec![
            Effect::FlagAttention,
            Effect::Compensate {
                step: 0,
                report_budget: false
            }
        ]
    );
    // Flagged once.
    assert_eq!(
        saga.apply(Event::CompensationOverBudget(0)),
        vec![Effect::Compensate {
            step: 0,
            report_budget: false
        }]
    );
    assert_eq!(saga.phase(), SagaPhase::Compensating);
    assert!(saga.needs_attention());
    // Once the compensation goes through, the saga ends COMPENSATED and no
    // longer needs anyone (as its end record says in the store).
    saga.apply(Event::Compensated(0));
    assert_eq!(saga.phase(), SagaPhase::Compensated);
    assert!(!saga.needs_attention());
}

#[test]
fn stale_and_duplicate_events_change_nothing() {
    let mut saga = trip();
    saga.apply(Event::Start);
    assert!(
        saga.apply(Event::ActionSucceeded(3)).is_empty(),
        "not running"
    );
    assert!(
        saga.apply(Event::Compensated(0)).is_empty(),
        "not compensating"
    );
    assert!(
        saga.apply(Event::ActionSucceeded(99)).is_empty(),
        "no such step"
    );
    saga.apply(Event::ActionSucceeded(0));
    assert!(
        saga.apply(Event::ActionSucceeded(0)).is_empty(),
        "duplicate"
    );
}

#[test]
fn recovery_going_forward_reruns_unrecorded_ready_steps() {
    let recorded = [
        Some(StepStatus::Succeeded),
        None,
        Some(StepStatus::Succeeded),
        None,
        None,
    ];
    let (saga, effects) = Saga::recover(trip().shapes().to_vec(), &recorded, None);
    assert_eq!(effects, vec![exec(1)]);
    assert_eq!(saga.phase(), SagaPhase::Running);
}

#[test]
fn recovery_going_backward_compensates_what_may_have_run() {
    // The car failed; the hotel had no record but was ready, so it may have
    // run: it is compensated (a no-op if it never ran), then the flight.
    let recorded = [
        Some(StepStatus::Succeeded),
        None,
        Some(StepStatus::Failed),
        None,
        None,
    ];
    let (mut saga, effects) =
        Saga::recover(trip().shapes().to_vec(), &recorded, Some("sold out".into()));
    assert_eq!(effects, vec![compensate(1)]);
    assert_eq!(saga.statuses()[3], StepStatus::Skipped);
    assert_eq!(
        saga.apply(Event::Compensated(1)),
        vec![record(1, StepStatus::Compensated), compensate(0)]
    );
}

#[test]
fn recovery_of_a_finished_compensation_ends_it() {
    let recorded = [Some(StepStatus::Compensated), Some(StepStatus::Failed)];
    let (saga, effects) = Saga::recover(vec![comp(&[]), comp(&[0])], &recorded, Some("no".into()));
    assert_eq!(
        effects,
        vec![Effect::End {
            phase: SagaPhase::Compensated,
            reason: Some("no".into())
        }]
    );
    assert_eq!(saga.phase(), SagaPhase::Compensated);
}

#[test]
fn shapes_are_checked() {
    assert_eq!(check_shapes(trip().shapes()), Ok(()));
    assert_eq!(
        check_shapes(&[comp(&[0])]),
        Err(ShapeError::SelfDependency(0))
    );
    assert_eq!(
        check_shapes(&[comp(&[3])]),
        Err(ShapeError::UnknownDependency { step: 0, dep: 3 })
    );
    assert!(matches!(
        check_shapes(&[comp(&[1]), comp(&[0])]),
        Err(ShapeError::Cycle(_))
    ));
    assert_eq!(
        check_shapes(&[shape(StepKind::Pivot, &[]), shape(StepKind::Pivot, &[0])]),
        Err(ShapeError::TwoPivots(0, 1))
    );
    assert_eq!(
        check_shapes(&[comp(&[]), shape(StepKind::Pivot, &[])]),
        Err(ShapeError::PivotBeforeCompensatable { pivot: 1, step: 0 })
    );
    assert_eq!(
        check_shapes(&[comp(&[]), shape(StepKind::Retriable, &[])]),
        Err(ShapeError::RetriableTooEarly {
            retriable: 1,
            step: 0
        })
    );
    assert_eq!(
        check_shapes(&[comp(&[]), shape(StepKind::Retriable, &[0])]),
        Ok(())
    );
}

// ---------------------------------------------------------------------------
// Property: invariant I4 over random sagas.

#[derive(Clone, Copy, Debug)]
enum Script {
    Succeed,
    Fail,
    /// Retries run out (compensatable) / past budget then succeed (others).
    Exhaust,
    OverBudgetThenSucceed,
    OverBudgetThenFail,
}

#[derive(Clone, Debug)]
struct Case {
    shapes: Vec<StepShape>,
    actions: Vec<Script>,
    compensation_over_budget: Vec<bool>,
    /// Which in-flight call finishes next, as indices taken modulo the
    /// number in flight.
    picks: Vec<usize>,
    /// After how many finished calls the coordinator crashes and recovers.
    crash_after: Option<usize>,
}

fn case() -> impl Strategy<Value = Case> {
    (1usize..=7, 0usize..=7, any::<bool>()).prop_flat_map(|(n, comps, with_pivot)| {
        let comps = comps.min(n);
        let with_pivot = with_pivot && comps < n;
        let dep_bits = proptest::collection::vec(any::<u8>(), n);
        let scripts = proptest::collection::vec(0u8..5, n);
        let over = proptest::collection::vec(any::<bool>(), n);
        let picks = proptest::collection::vec(any::<usize>(), 64);
        let crash = proptest::option::of(0usize..20);
        (dep_bits, scripts, over, picks, crash).prop_map(
            move |(dep_bits, scripts, over, picks, crash_after)| {
                let mut shapes = Vec::with_capacity(n);
                for (i, bits) in dep_bits.iter().enumerate() {
                    let earlier_random = |range: std::ops::Range<usize>| -> Vec<usize> {
                        range.filter(|j| bits & (1 << (j % 8)) != 0).collect()
                    };
                    let shape = if i < comps {
                        comp(&earlier_random(0..i))
                    } else if i == comps && with_pivot {
                        shape(StepKind::Pivot, &(0..comps).collect::<Vec<_>>())
                    } else {
                        let mut deps: Vec<usize> = (0..comps + usize::from(with_pivot)).collect();
                        deps.extend(earlier_random(comps + usize::from(with_pivot)..i));
                        shape(StepKind::Retriable, &deps)
                    };
                    shapes.push(shape);
                }
                let actions = scripts
                    .iter()
                    .map(|s| match s {
                        0 | 1 => Script::Succeed,
                        2 => Script::Fail,
                        3 => Script::Exhaust,
                        _ => {
                            if dep_bits[0] % 2 == 0 {
                                Script::OverBudgetThenSucceed
                            } else {
                                Script::OverBudgetThenFail
                            }
                        }
                    })
                    .collect();
                Case {
                    shapes,
                    actions,
                    compensation_over_budget: over,
                    picks,
                    crash_after,
                }
            },
        )
    })
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Call {
    Action { step: StepIdx, report_budget: bool },
    Compensation { step: StepIdx, report_budget: bool },
}

/// What the simulated world saw, in order.
#[derive(Default)]
struct Trace {
    /// Every action call ever started (across the crash).
    executed: Vec<bool>,
    /// Position in the trace where each compensation started / finished.
    comp_started: Vec<Option<usize>>,
    comp_finished: Vec<Option<usize>>,
    recorded: Vec<Option<StepStatus>>,
    clock: usize,
    pivot_succeeded: bool,
}

fn run_effects(
    effects: Vec<Effect>,
    case: &Case,
    calls: &mut Vec<Call>,
    trace: &mut Trace,
) -> Option<SagaPhase> {
    let mut ended = None;
    for effect in effects {
        trace.clock += 1;
        match effect {
            Effect::Execute {
                step,
                report_budget,
            } => {
                // Dependencies are recorded as succeeded before a step starts.
                for dep in &case.shapes[step].depends_on {
                    assert_eq!(
                        trace.recorded[*dep],
                        Some(StepStatus::Succeeded),
                        "step {step} started before dependency {dep} was recorded"
                    );
                }
                trace.executed[step] = true;
                calls.push(Call::Action {
                    step,
                    report_budget,
                });
            }
            Effect::Compensate {
                step,
                report_budget,
            } => {
                assert_eq!(
                    case.shapes[step].kind,
                    StepKind::Compensatable,
                    "only compensatable steps are compensated"
                );
                assert!(!trace.pivot_succeeded, "no compensation after the pivot");
                // Reverse order: every dependent is settled.
                for (other, shape) in case.shapes.iter().enumerate() {
                    if shape.depends_on.contains(&step) {
                        assert!(
                            !calls
                                .iter()
                                .any(|c| matches!(c, Call::Action { step: s, .. } if *s == other)),
                            "compensating {step} while dependent {other} runs"
                        );
                        if trace.comp_started[other].is_some() {
                            assert!(
                                trace.comp_finished[other].is_some(),
                                "compensating {step} before dependent {other} finished compensating"
                            );
                        }
                    }
                }
                trace.comp_started[step].get_or_insert(trace.clock);
                calls.push(Call::Compensation {
                    step,
                    report_budget,
                });
            }
            Effect::Record { step, status } => {
                trace.recorded[step] = Some(status);
                if status == StepStatus::Compensated {
                    trace.comp_finished[step] = Some(trace.clock);
                }
                if status == StepStatus::Succeeded && case.shapes[step].kind == StepKind::Pivot {
                    trace.pivot_succeeded = true;
                }
            }
            Effect::FlagAttention => {}
            Effect::End { phase, .. } => ended = Some(phase),
        }
    }
    ended
}

fn answer(call: Call, case: &Case, saga: &Saga) -> Event {
    match call {
        Call::Action {
            step,
            report_budget,
        } => {
            let kind = case.shapes[step].kind;
            match (case.actions[step], kind) {
                (Script::Succeed, _) => Event::ActionSucceeded(step),
                (Script::Fail, _) => Event::ActionFailed {
                    step,
                    reason: format!("step {step} refused"),
                },
                (Script::Exhaust, StepKind::Compensatable) => Event::ActionExhausted {
                    step,
                    reason: format!("step {step} timed out"),
                },
                // The runtime stops retrying a compensatable step once the
                // saga turns back; one that retries forever goes over budget.
                (_, StepKind::Compensatable) if !saga.keeps_retrying(step) => {
                    Event::ActionExhausted {
                        step,
                        reason: "stopped retrying".into(),
                    }
                }
                (_, _) if report_budget => Event::ActionOverBudget(step),
                (Script::OverBudgetThenFail, _) => Event::ActionFailed {
                    step,
                    reason: "refused after retries".into(),
                },
                _ => Event::ActionSucceeded(step),
            }
        }
        Call::Compensation {
            step,
            report_budget,
        } => {
            if report_budget && case.compensation_over_budget[step] {
                Event::CompensationOverBudget(step)
            } else {
                Event::Compensated(step)
            }
        }
    }
}

fn simulate(case: &Case) {
    let n = case.shapes.len();
    prop_assume_valid(case);
    let mut trace = Trace {
        executed: vec![false; n],
        comp_started: vec![None; n],
        comp_finished: vec![None; n],
        recorded: vec![None; n],
        ..Trace::default()
    };
    let mut saga = Saga::new(case.shapes.clone());
    let mut calls = Vec::new();
    let mut ended = run_effects(saga.apply(Event::Start), case, &mut calls, &mut trace);
    let mut finished = 0;
    let mut picks = case.picks.iter().cycle();
    while ended.is_none() {
        if Some(finished) == case.crash_after {
            // Crash: calls in flight are lost; only records survive.
            calls.clear();
            trace.comp_started = vec![None; n];
            trace.comp_finished = vec![None; n];
            let (recovered, effects) = Saga::recover(case.shapes.clone(), &trace.recorded, None);
            saga = recovered;
            ended = run_effects(effects, case, &mut calls, &mut trace);
            finished += 1;
            continue;
        }
        assert!(!calls.is_empty(), "stuck: no call in flight and no end");
        assert!(finished < 500, "did not terminate");
        let pick = picks.next().copied().unwrap_or(0) % calls.len();
        let call = calls.remove(pick);
        let event = answer(call, case, &saga);
        finished += 1;
        ended = run_effects(saga.apply(event), case, &mut calls, &mut trace);
    }
    let phase = ended.expect("ended");
    assert_eq!(saga.phase(), phase);
    let statuses = saga.statuses();
    match phase {
        SagaPhase::Completed => {
            assert!(statuses.iter().all(|s| *s == StepStatus::Succeeded));
            assert!(trace.comp_started.iter().all(Option::is_none));
        }
        SagaPhase::Compensated => {
            assert!(!trace.pivot_succeeded, "compensated after the pivot");
            for (step, status) in statuses.iter().enumerate() {
                // I4: every step that ran or may have run is compensated,
                // unless it definitely did nothing.
                if trace.executed[step] {
                    assert!(
                        matches!(status, StepStatus::Compensated | StepStatus::Failed),
                        "step {step} ran but ended {status:?}"
                    );
                }
            }
        }
        SagaPhase::Failed => {
            assert!(case.shapes.iter().zip(statuses).any(|(shape, status)| {
                shape.kind == StepKind::Retriable && *status == StepStatus::Failed
            }));
            assert!(trace.comp_started.iter().all(Option::is_none));
        }
        SagaPhase::Running | SagaPhase::Compensating => unreachable!("not terminal"),
    }
}

fn prop_assume_valid(case: &Case) {
    assert_eq!(
        check_shapes(&case.shapes),
        Ok(()),
        "generator made an invalid saga"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4096))]

    #[test]
    fn every_saga_ends_all_done_or_compensated_in_reverse(case in case()) {
        simulate(&case);
    }
}
