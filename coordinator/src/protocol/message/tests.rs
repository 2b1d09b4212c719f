//! The message machine's rules (DESIGN §10, M1–M3 and M6), one transition
//! at a time, then over random event sequences.

use proptest::prelude::*;

use super::*;

fn delivers(effects: &[Effect]) -> Vec<DestinationIdx> {
    effects
        .iter()
        .filter_map(|effect| match effect {
            Effect::Deliver { destination } => Some(*destination),
            _ => None,
        })
        .collect()
}

#[test]
fn a_submitted_message_is_recorded_and_owed_to_every_destination_until_each_acknowledges() {
    let mut message = Message::prepared(2);
    let effects = message.apply(Event::Submitted).expect("submit");
    assert_eq!(effects[0], Effect::LogDecided { via: Via::Submit });
    assert_eq!(delivers(&effects), [0, 1]);
    assert_eq!(message.phase(), Phase::Delivering);
    // M3: a failed delivery is owed again; an acknowledgement settles it.
    assert_eq!(
        message.apply(Event::DeliveryFailed {
            destination: 1,
            reason: "down".into()
        }),
        Ok(vec![Effect::RetryDelivery { destination: 1 }])
    );
    assert_eq!(
        message.apply(Event::Acknowledged { destination: 0 }),
        Ok(vec![])
    );
    assert_eq!(
        message.apply(Event::Acknowledged { destination: 1 }),
        Ok(vec![Effect::LogEnded {
            phase: Phase::Delivered
        }])
    );
    assert_eq!(message.phase(), Phase::Delivered);
    // Late news changes nothing.
    assert_eq!(
        message.apply(Event::Acknowledged { destination: 1 }),
        Ok(vec![])
    );
    assert_eq!(message.apply(Event::Submitted), Ok(vec![]));
}

#[test]
fn a_prepared_message_is_never_delivered_for_time_alone_only_asked_about() {
    let mut message = Message::prepared(1);
    // M1, M6: the deadline brings a check-back, not a delivery.
    assert_eq!(message.apply(Event::CheckDue), Ok(vec![Effect::CheckBack]));
    assert_eq!(
        message.apply(Event::CheckFailed {
            reason: "producer down".into()
        }),
        Ok(vec![Effect::RetryCheckBack])
    );
    assert_eq!(message.phase(), Phase::Prepared);
    assert_eq!(message.destination(0), Some(DestinationPhase::Waiting));
    // The producer's outbox row is there: deliver.
    let effects = message
        .apply(Event::CheckAnswered(CheckAnswer::Committed))
        .expect("answer");
    assert_eq!(
        effects[0],
        Effect::LogDecided {
            via: Via::CheckBack
        }
    );
    assert_eq!(delivers(&effects), [0]);
    assert_eq!(message.via(), Some(Via::CheckBack));
}

#[test]
fn a_check_back_that_finds_no_outbox_row_drops_the_message_for_good() {
    let mut message = Message::prepared(2);
    message.apply(Event::CheckDue).expect("due");
    assert_eq!(
        message.apply(Event::CheckAnswered(CheckAnswer::RolledBack)),
        Ok(vec![Effect::LogEnded {
            phase: Phase::Dropped
        }])
    );
    // M2: a late Submit cannot be for a committed local transaction.
    let before = message.clone();
    assert_eq!(message.apply(Event::Submitted), Err(Rejected::Dropped));
    assert_eq!(message, before);
    assert_eq!(
        message.apply(Event::CheckAnswered(CheckAnswer::Committed)),
        Ok(vec![])
    );
    assert_eq!(message.phase(), Phase::Dropped);
}

#[test]
fn an_operator_answers_for_a_producer_that_cannot_and_decides_as_a_check_back_would() {
    let mut delivered = Message::prepared(2);
    delivered.apply(Event::CheckDue).expect("due");
    let effects = delivered
        .apply(Event::Resolved(CheckAnswer::Committed))
        .expect("resolved");
    assert_eq!(effects[0], Effect::LogDecided { via: Via::Operator });
    assert_eq!(delivers(&effects), [0, 1]);
    assert_eq!(delivered.via(), Some(Via::Operator));

    let mut dropped = Message::prepared(2);
    assert_eq!(
        dropped.apply(Event::Resolved(CheckAnswer::RolledBack)),
        Ok(vec![Effect::LogEnded {
            phase: Phase::Dropped
        }])
    );
    // Final, as a check-back's answer is (M2).
    assert_eq!(dropped.apply(Event::Submitted), Err(Rejected::Dropped));
    assert_eq!(
        dropped.apply(Event::Resolved(CheckAnswer::Committed)),
        Ok(Vec::new())
    );
}

#[test]
fn a_check_back_answered_after_a_submit_changes_nothing() {
    let mut message = Message::prepared(1);
    message.apply(Event::Submitted).expect("submit");
    assert_eq!(
        message.apply(Event::CheckAnswered(CheckAnswer::Committed)),
        Ok(vec![])
    );
    assert_eq!(message.apply(Event::CheckDue), Ok(vec![]));
    assert_eq!(message.via(), Some(Via::Submit));
}

#[test]
fn a_recovered_decided_message_is_owed_again_to_every_destination_without_a_new_record() {
    let (message, effects) = Message::recovered(3, Some(Via::CheckBack));
    assert_eq!(delivers(&effects), [0, 1, 2]);
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::LogDecided { .. }))
    );
    assert_eq!(message.phase(), Phase::Delivering);
    let (prepared, nothing) = Message::recovered(3, None);
    assert!(nothing.is_empty());
    assert_eq!(prepared.phase(), Phase::Prepared);
}

#[test]
fn an_unknown_destination_is_refused_and_changes_nothing() {
    let mut message = Message::prepared(1);
    message.apply(Event::Submitted).expect("submit");
    let before = message.clone();
    assert_eq!(
        message.apply(Event::Acknowledged { destination: 5 }),
        Err(Rejected::NoSuchDestination(5))
    );
    assert_eq!(message, before);
}

fn event(destinations: usize) -> impl Strategy<Value = Event> {
    prop_oneof![
        Just(Event::Submitted),
        Just(Event::CheckDue),
        Just(Event::CheckAnswered(CheckAnswer::Committed)),
        Just(Event::CheckAnswered(CheckAnswer::RolledBack)),
        Just(Event::Resolved(CheckAnswer::Committed)),
        Just(Event::Resolved(CheckAnswer::RolledBack)),
        Just(Event::CheckFailed { reason: "x".into() }),
        (0..destinations).prop_map(|destination| Event::Acknowledged { destination }),
        (0..destinations).prop_map(|destination| Event::DeliveryFailed {
            destination,
            reason: "x".into()
        }),
    ]
}

proptest! {
    /// Over any order of events: nothing is delivered before the producer's
    /// commit was seen (M1); a dropped message never delivers and a
    /// decided one never drops (M2); it ends delivered only once every
    /// destination acknowledged, and then asks for nothing more.
    #[test]
    fn any_event_order_keeps_m1_and_m2(
        destinations in 1usize..4,
        events in prop::collection::vec(event(3), 0..40),
    ) {
        let mut message = Message::prepared(destinations);
        let mut decided = false;
        let mut dropped = false;
        let mut acknowledged = vec![false; destinations];
        for event in events {
            let was = message.phase();
            let effects = match message.apply(event.clone()) {
                Ok(effects) => effects,
                Err(_) => {
                    let late_submit = matches!(event, Event::Submitted) && dropped;
                    let unknown = match event {
                        Event::Acknowledged { destination }
                        | Event::DeliveryFailed { destination, .. } => destination >= destinations,
                        _ => false,
                    };
                    prop_assert!(late_submit || unknown, "refused {:?}", event);
                    continue;
                }
            };
            for effect in &effects {
                match effect {
                    Effect::Deliver { .. } | Effect::RetryDelivery { .. } => {
                        let committing = matches!(
                            event,
                            Event::Submitted
                                | Event::CheckAnswered(CheckAnswer::Committed)
                                | Event::Resolved(CheckAnswer::Committed)
                        );
                        prop_assert!(decided || committing, "delivered before a commit was seen");
                        prop_assert!(!dropped, "delivered after it was dropped");
                    }
                    Effect::LogEnded { phase: Phase::Dropped } => {
                        prop_assert!(!decided);
                        dropped = true;
                    }
                    Effect::LogEnded { phase: Phase::Delivered } => {
                        let now = match event {
                            Event::Acknowledged { destination } => Some(destination),
                            _ => None,
                        };
                        let all = acknowledged
                            .iter()
                            .enumerate()
                            .all(|(idx, done)| *done || now == Some(idx));
                        prop_assert!(all, "delivered before every acknowledgement");
                    }
                    _ => {}
                }
            }
            if message.phase() == Phase::Delivering && was == Phase::Prepared {
                decided = true;
            }
            if let Event::Acknowledged { destination } = event
                && destination < destinations
                && decided
            {
                acknowledged[destination] = true;
            }
            if was.is_terminal() {
                prop_assert!(effects.is_empty());
                prop_assert_eq!(message.phase(), was);
            }
        }
    }
}
