//! The two-phase commit machine, one transition at a time: R1-R6 at the
//! level of events and effects.

use super::*;

fn active(branches: usize) -> TwoPhase {
    let mut txn = TwoPhase::new();
    for _ in 0..branches {
        txn.enlist().expect("active transaction accepts branches");
    }
    txn
}

fn apply(txn: &mut TwoPhase, event: Event) -> Vec<Effect> {
    txn.apply(event).expect("event allowed")
}

fn vote(branch: BranchIdx, vote: Vote) -> Event {
    Event::Voted { branch, vote }
}

fn abort_vote(reason: &str) -> Vote {
    Vote::Abort {
        reason: reason.into(),
    }
}

fn committed() -> Outcome {
    Outcome::Committed { read_only: false }
}

#[test]
fn commit_sends_prepare_to_every_branch() {
    let mut txn = active(3);
    let effects = apply(&mut txn, Event::CommitRequested);
    assert_eq!(
        effects,
        vec![
            Effect::SendPrepare(0),
            Effect::SendPrepare(1),
            Effect::SendPrepare(2)
        ]
    );
    assert_eq!(txn.phase(), Phase::Preparing);
}

#[test]
fn all_yes_votes_force_the_decision_before_anyone_hears_it() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    assert!(apply(&mut txn, vote(0, Vote::Commit)).is_empty());
    let effects = apply(&mut txn, vote(1, Vote::Commit));
    // R1: the only effect is the forced write; no Announce, no SendCommit.
    assert_eq!(effects, vec![Effect::LogDecision]);
    assert_eq!(txn.phase(), Phase::Deciding);
    assert_eq!(txn.announced(), None);
}

#[test]
fn durable_decision_announces_then_delivers_commit() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    apply(&mut txn, vote(0, Vote::Commit));
    apply(&mut txn, vote(1, Vote::Commit));
    let effects = apply(&mut txn, Event::DecisionDurable);
    assert_eq!(
        effects,
        vec![
            Effect::Announce(committed()),
            Effect::SendCommit(0),
            Effect::SendCommit(1)
        ]
    );
    assert_eq!(txn.phase(), Phase::Committing);
}

#[test]
fn acknowledgements_end_the_transaction() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    apply(&mut txn, vote(0, Vote::Commit));
    apply(&mut txn, vote(1, Vote::Commit));
    apply(&mut txn, Event::DecisionDurable);
    assert!(apply(&mut txn, Event::Delivered { branch: 1 }).is_empty());
    // A duplicate acknowledgement changes nothing.
    assert!(apply(&mut txn, Event::Delivered { branch: 1 }).is_empty());
    let effects = apply(&mut txn, Event::Delivered { branch: 0 });
    assert_eq!(effects, vec![Effect::LogEnd(committed())]);
    assert_eq!(txn.phase(), Phase::Committed);
    assert_eq!(
        txn.branches(),
        &[BranchPhase::Committed, BranchPhase::Committed]
    );
}

#[test]
fn an_abort_vote_aborts_at_once_and_tells_the_others() {
    let mut txn = active(3);
    apply(&mut txn, Event::CommitRequested);
    apply(&mut txn, vote(0, Vote::Commit));
    let effects = apply(&mut txn, vote(1, abort_vote("insufficient funds")));
    assert_eq!(
        effects,
        vec![
            Effect::LogAbort {
                reason: "insufficient funds".into()
            },
            Effect::Announce(Outcome::Aborted {
                reason: "insufficient funds".into()
            }),
            // Not to branch 1: it refused and undid its own part.
            Effect::SendAbort(0),
            Effect::SendAbort(2),
        ]
    );
    assert_eq!(txn.phase(), Phase::Aborting);
    // Branch 2's late YES vote changes nothing: its Abort is on the way.
    assert!(apply(&mut txn, vote(2, Vote::Commit)).is_empty());
    apply(&mut txn, Event::Delivered { branch: 0 });
    let effects = apply(&mut txn, Event::Delivered { branch: 2 });
    assert_eq!(
        effects,
        vec![Effect::LogEnd(Outcome::Aborted {
            reason: "insufficient funds".into()
        })]
    );
    assert_eq!(txn.phase(), Phase::Aborted);
}

#[test]
fn a_failed_prepare_is_an_abort_vote() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    apply(&mut txn, vote(0, Vote::Commit));
    let effects = apply(
        &mut txn,
        Event::PrepareFailed {
            branch: 1,
            reason: "prepare deadline of 100 ms passed".into(),
        },
    );
    assert_eq!(txn.phase(), Phase::Aborting);
    assert!(effects.contains(&Effect::SendAbort(0)));
    // The silent branch may have prepared after all: it is told too.
    assert!(effects.contains(&Effect::SendAbort(1)));
    assert!(!effects.contains(&Effect::LogDecision));
}

#[test]
fn read_only_voters_hear_nothing_more() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    apply(&mut txn, vote(0, Vote::ReadOnly));
    assert_eq!(
        apply(&mut txn, vote(1, Vote::Commit)),
        vec![Effect::LogDecision]
    );
    let effects = apply(&mut txn, Event::DecisionDurable);
    assert_eq!(
        effects,
        vec![Effect::Announce(committed()), Effect::SendCommit(1)]
    );
    let effects = apply(&mut txn, Event::Delivered { branch: 1 });
    assert_eq!(effects, vec![Effect::LogEnd(committed())]);
}

#[test]
fn all_read_only_logs_no_decision() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    apply(&mut txn, vote(0, Vote::ReadOnly));
    let effects = apply(&mut txn, vote(1, Vote::ReadOnly));
    let outcome = Outcome::Committed { read_only: true };
    assert_eq!(
        effects,
        vec![Effect::Announce(outcome.clone()), Effect::LogEnd(outcome)]
    );
    assert!(txn.read_only());
    assert_eq!(txn.phase(), Phase::Committed);
}

#[test]
fn read_only_voters_get_no_abort() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    apply(&mut txn, vote(0, Vote::ReadOnly));
    let effects = apply(&mut txn, vote(1, abort_vote("no")));
    assert!(!effects.iter().any(|e| matches!(e, Effect::SendAbort(_))));
    assert_eq!(txn.phase(), Phase::Aborted);
}

#[test]
fn no_branches_commits_as_read_only() {
    let mut txn = active(0);
    let effects = apply(&mut txn, Event::CommitRequested);
    let outcome = Outcome::Committed { read_only: true };
    assert_eq!(
        effects,
        vec![Effect::Announce(outcome.clone()), Effect::LogEnd(outcome)]
    );
}

#[test]
fn a_single_branch_gets_one_phase_commit() {
    let mut txn = active(1);
    assert_eq!(
        apply(&mut txn, Event::CommitRequested),
        vec![Effect::SendOnePhase(0)]
    );
    let effects = apply(
        &mut txn,
        Event::OnePhaseAnswered(OnePhaseResult::Committed { read_only: false }),
    );
    // R6: no forced decision; the participant's local commit is the decision.
    assert_eq!(
        effects,
        vec![Effect::Announce(committed()), Effect::LogEnd(committed())]
    );
    assert_eq!(txn.phase(), Phase::Committed);
}

#[test]
fn one_phase_refusal_aborts_without_an_abort_delivery() {
    let mut txn = active(1);
    apply(&mut txn, Event::CommitRequested);
    let effects = apply(
        &mut txn,
        Event::OnePhaseAnswered(OnePhaseResult::Aborted {
            reason: "sold out".into(),
        }),
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::SendAbort(_))));
    assert!(effects.contains(&Effect::Announce(Outcome::Aborted {
        reason: "sold out".into()
    })));
    assert_eq!(txn.phase(), Phase::Aborted);
}

#[test]
fn a_lost_one_phase_answer_is_settled_by_the_abort_answer() {
    // The participant committed, but its answer was lost.
    let mut txn = active(1);
    apply(&mut txn, Event::CommitRequested);
    let effects = apply(
        &mut txn,
        Event::OnePhaseFailed {
            reason: "deadline passed".into(),
        },
    );
    // Nothing is announced while the outcome is the participant's secret.
    assert!(!effects.iter().any(|e| matches!(e, Effect::Announce(_))));
    assert!(effects.contains(&Effect::SendAbort(0)));
    let effects = apply(&mut txn, Event::FoundCommitted { branch: 0 });
    assert_eq!(
        effects,
        vec![Effect::Announce(committed()), Effect::LogEnd(committed())]
    );
    assert_eq!(txn.phase(), Phase::Committed);
}

#[test]
fn a_one_phase_commit_that_lost_the_race_is_aborted() {
    let mut txn = active(1);
    apply(&mut txn, Event::CommitRequested);
    apply(
        &mut txn,
        Event::RollbackRequested {
            reason: "client gave up".into(),
        },
    )
    .into_iter()
    .for_each(drop);
    let effects = apply(&mut txn, Event::Delivered { branch: 0 });
    let outcome = Outcome::Aborted {
        reason: "client gave up".into(),
    };
    assert_eq!(
        effects,
        vec![Effect::Announce(outcome.clone()), Effect::LogEnd(outcome)]
    );
    // The one-phase answer arriving after the abort settled changes nothing.
    assert!(
        apply(
            &mut txn,
            Event::OnePhaseAnswered(OnePhaseResult::Aborted {
                reason: "refused: already aborted".into()
            })
        )
        .is_empty()
    );
    assert_eq!(txn.phase(), Phase::Aborted);
}

#[test]
fn rollback_before_any_prepare_ends_at_once_and_tells_no_branch() {
    let mut txn = active(2);
    let reason = "user cancelled".to_string();
    let effects = apply(
        &mut txn,
        Event::RollbackRequested {
            reason: reason.clone(),
        },
    );
    // R2: no branch was sent anything, so none holds a part to undo,
    // and an address that cannot answer cannot hold the end up.
    let aborted = Outcome::Aborted { reason };
    assert_eq!(
        effects,
        vec![
            Effect::LogAbort {
                reason: "user cancelled".into()
            },
            Effect::Announce(aborted.clone()),
            Effect::LogEnd(aborted),
        ]
    );
    assert_eq!(txn.phase(), Phase::Aborted);
    assert_eq!(txn.branches(), [BranchPhase::Aborted, BranchPhase::Aborted]);
    // Rolling back again is harmless.
    assert!(
        apply(
            &mut txn,
            Event::RollbackRequested {
                reason: "again".into()
            }
        )
        .is_empty()
    );
}

#[test]
fn rollback_after_the_decision_is_refused() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    apply(&mut txn, vote(0, Vote::Commit));
    apply(&mut txn, vote(1, Vote::Commit));
    let rollback = Event::RollbackRequested {
        reason: "late".into(),
    };
    assert_eq!(txn.apply(rollback.clone()), Err(Rejected::AlreadyCommitted));
    apply(&mut txn, Event::DecisionDurable);
    assert_eq!(txn.apply(rollback), Err(Rejected::AlreadyCommitted));
    assert_eq!(txn.phase(), Phase::Committing);
}

#[test]
fn enlisting_needs_an_active_transaction() {
    let mut txn = active(1);
    apply(&mut txn, Event::CommitRequested);
    assert_eq!(txn.enlist(), Err(Rejected::NotActive(Phase::Preparing)));
}

#[test]
fn expiry_aborts_only_an_undecided_transaction() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    apply(&mut txn, vote(0, Vote::Commit));
    apply(&mut txn, vote(1, Vote::Commit));
    // Deciding: the decision is being written and is final.
    assert!(apply(&mut txn, Event::Expired).is_empty());
    assert_eq!(txn.phase(), Phase::Deciding);

    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    let effects = apply(&mut txn, Event::Expired);
    assert_eq!(txn.phase(), Phase::Aborting);
    assert!(effects.contains(&Effect::SendAbort(0)));
    assert!(effects.contains(&Effect::SendAbort(1)));
}

#[test]
fn a_prepare_that_never_left_is_an_abort_vote_owed_nothing() {
    let mut txn = active(3);
    apply(&mut txn, Event::CommitRequested);
    apply(&mut txn, vote(0, Vote::Commit));
    let effects = apply(
        &mut txn,
        Event::PrepareNotSent {
            branch: 1,
            reason: "connection refused".into(),
        },
    );
    // The prepared branch and the one still preparing (its Prepare may
    // have arrived) hear the Abort; the one never reached does not.
    assert!(effects.contains(&Effect::SendAbort(0)));
    assert!(!effects.contains(&Effect::SendAbort(1)));
    assert!(effects.contains(&Effect::SendAbort(2)));
    assert_eq!(txn.branches()[1], BranchPhase::Aborted);
    apply(&mut txn, Event::Delivered { branch: 0 });
    let effects = apply(&mut txn, Event::Delivered { branch: 2 });
    assert_eq!(txn.phase(), Phase::Aborted);
    assert!(matches!(
        effects.last(),
        Some(Effect::LogEnd(Outcome::Aborted { .. }))
    ));
}

#[test]
fn a_prepare_found_never_sent_after_the_abort_went_out_settles_its_branch() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    // Branch 0 refuses first; branch 1's Prepare is still connecting,
    // so it is sent an Abort it may be owed.
    let effects = apply(&mut txn, vote(0, abort_vote("no funds")));
    assert!(effects.contains(&Effect::SendAbort(1)));
    // Its connection then fails: it was never sent anything, and the
    // Abort to an address that may never answer is not waited for.
    let effects = apply(
        &mut txn,
        Event::PrepareNotSent {
            branch: 1,
            reason: "connection refused".into(),
        },
    );
    assert_eq!(txn.phase(), Phase::Aborted);
    assert!(matches!(
        effects.last(),
        Some(Effect::LogEnd(Outcome::Aborted { .. }))
    ));
}

#[test]
fn a_one_phase_commit_that_never_left_aborts_at_once() {
    let mut txn = active(1);
    apply(&mut txn, Event::CommitRequested);
    let effects = apply(
        &mut txn,
        Event::OnePhaseNotSent {
            reason: "connection refused".into(),
        },
    );
    // No commit can have happened: announced now, no Abort owed.
    assert!(effects.contains(&Effect::Announce(Outcome::Aborted {
        reason: "connection refused".into()
    })));
    assert!(!effects.iter().any(|e| matches!(e, Effect::SendAbort(_))));
    assert_eq!(txn.phase(), Phase::Aborted);
    // A one-phase commit that may have arrived is still in doubt.
    let mut txn = active(1);
    apply(&mut txn, Event::CommitRequested);
    let effects = apply(
        &mut txn,
        Event::OnePhaseFailed {
            reason: "deadline".into(),
        },
    );
    assert!(!effects.iter().any(|e| matches!(e, Effect::Announce(_))));
    assert_eq!(effects.last(), Some(&Effect::SendAbort(0)));
}

#[test]
fn recovery_without_a_decision_tells_every_branch() {
    // No record says which Prepares went out before the crash.
    let (txn, effects) = TwoPhase::recover(2, None, None);
    assert!(effects.contains(&Effect::SendAbort(0)));
    assert!(effects.contains(&Effect::SendAbort(1)));
    assert_eq!(txn.phase(), Phase::Aborting);
}

#[test]
fn a_repeated_commit_request_adds_nothing() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    assert!(apply(&mut txn, Event::CommitRequested).is_empty());
}

#[test]
fn recovery_with_a_durable_commit_redelivers_commit() {
    let (txn, effects) = TwoPhase::recover(2, Some(Decision::Commit), None);
    assert_eq!(
        effects,
        vec![
            Effect::Announce(committed()),
            Effect::SendCommit(0),
            Effect::SendCommit(1)
        ]
    );
    assert_eq!(txn.phase(), Phase::Committing);
}

#[test]
fn recovery_without_a_decision_aborts_every_branch() {
    let (txn, effects) = TwoPhase::recover(2, None, None);
    assert!(effects.contains(&Effect::SendAbort(0)));
    assert!(effects.contains(&Effect::SendAbort(1)));
    assert!(!effects.iter().any(|e| matches!(e, Effect::SendCommit(_))));
    assert_eq!(txn.phase(), Phase::Aborting);
}

#[test]
fn recovery_of_a_lone_branch_asks_before_announcing() {
    let (mut txn, effects) = TwoPhase::recover(1, None, None);
    assert!(!effects.iter().any(|e| matches!(e, Effect::Announce(_))));
    let effects = apply(&mut txn, Event::FoundCommitted { branch: 0 });
    assert!(effects.contains(&Effect::Announce(committed())));
}

#[test]
fn events_for_unknown_branches_are_ignored() {
    let mut txn = active(2);
    apply(&mut txn, Event::CommitRequested);
    assert!(apply(&mut txn, vote(7, Vote::Commit)).is_empty());
    assert!(apply(&mut txn, Event::Delivered { branch: 9 }).is_empty());
    assert_eq!(txn.phase(), Phase::Preparing);
}
