//! Transactional messages (DESIGN §10) as a pure state machine.
//!
//! One [`Message`] is one message: a producer's local transaction and the
//! deliveries it makes owed. The runtime feeds it [`Event`]s (the producer
//! submitted, the check-back answered, a destination acknowledged) and
//! executes the [`Effect`]s it returns (record the decision, deliver, ask
//! the producer). Ordering by key (M5) spans messages, so it is the
//! runtime's: this machine says when a destination is owed a delivery, the
//! runtime's per-(destination, key) queue says when it may go out.
//!
//! Rules upheld here:
//! - M1: no [`Effect::Deliver`] before [`Event::Submitted`] or a check-back
//!   that found the producer's outbox row ([`CheckAnswer::Committed`]).
//! - M2: a check-back's answer is final: a message dropped because the
//!   producer's local transaction did not commit stays dropped (a late
//!   Submit is [`Rejected::Dropped`]), and one confirmed stays confirmed.
//! - M3: every destination is owed its delivery until it acknowledges; a
//!   failed delivery is owed again ([`Effect::RetryDelivery`]).
//! - M6: a prepared message past its deadline is asked about
//!   ([`Effect::CheckBack`]), again after each failed check-back, never
//!   dropped for silence.
//!
//! Why the decision's record may be lazy (unlike R1's): what decides a
//! message is the producer's outbox row, not the coordinator's record. A
//! crash before the record lands leaves the message PREPARED; its
//! check-back then finds the same row and decides the same (M2), and the
//! destinations' ledgers absorb the deliveries made twice (M4).

use std::fmt;

/// Position of a destination in its message, in request order.
pub type DestinationIdx = usize;

/// Where the message is. Moves only forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Recorded; the producer's local transaction has not been seen to
    /// commit.
    Prepared,
    /// The producer's local transaction committed (it submitted, or a
    /// check-back found its outbox row): delivering.
    Delivering,
    /// Terminal: every destination acknowledged.
    Delivered,
    /// Terminal: the producer's local transaction never committed.
    Dropped,
}

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Delivered | Phase::Dropped)
    }
}

/// How the message was found committed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// The producer called SubmitMessage.
    Submit,
    /// A check-back found the producer's outbox row.
    CheckBack,
    /// An operator established it by hand (`concord txn resolve`), the
    /// producer being unable to answer its check-back.
    Operator,
}

/// What the producer's SDK answered to a check-back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckAnswer {
    /// The outbox row is there: the local transaction committed.
    Committed,
    /// It is not; a tombstone now stands in its place (M2).
    RolledBack,
}

/// Where one destination is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DestinationPhase {
    /// Nothing owed yet (the message is prepared).
    Waiting,
    /// Owed its delivery, not yet acknowledged.
    Owed,
    /// Acknowledged.
    Acknowledged,
}

/// Something that happened to the message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The producer called SubmitMessage.
    Submitted,
    /// The prepared message's deadline passed without a Submit.
    CheckDue,
    /// The producer answered the check-back.
    CheckAnswered(CheckAnswer),
    /// An operator answered for a producer that cannot (its service is
    /// gone for good), having looked for the outbox row by hand; recorded
    /// before it is applied. Decides as a check-back's answer would.
    Resolved(CheckAnswer),
    /// The check-back got no answer (unreachable, deadline, error).
    CheckFailed { reason: String },
    /// A destination acknowledged its delivery.
    Acknowledged { destination: DestinationIdx },
    /// A delivery failed or missed its deadline.
    DeliveryFailed {
        destination: DestinationIdx,
        reason: String,
    },
}

/// What the runtime must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Record that the producer's local transaction committed (lazily: see
    /// the module's note).
    LogDecided { via: Via },
    /// Deliver to this destination (subject to the runtime's ordering).
    Deliver { destination: DestinationIdx },
    /// Deliver again after a backoff.
    RetryDelivery { destination: DestinationIdx },
    /// Ask the producer whether its local transaction committed.
    CheckBack,
    /// Ask again after a backoff.
    RetryCheckBack,
    /// Record the end: every destination acknowledged, or dropped.
    LogEnded { phase: Phase },
}

/// Why an event was refused. Nothing changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Submit after a check-back dropped the message: the producer's local
    /// transaction cannot have committed (M2).
    Dropped,
    /// No such destination.
    NoSuchDestination(DestinationIdx),
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Dropped => f.write_str(
                "the message was dropped: the producer answered its check-back that its local \
                 transaction had not committed, so this submit cannot be for a committed one",
            ),
            Rejected::NoSuchDestination(idx) => write!(f, "no destination {idx}"),
        }
    }
}

/// One message's protocol state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    phase: Phase,
    via: Option<Via>,
    destinations: Vec<DestinationPhase>,
}

impl Message {
    /// A message just prepared, with this many destinations (at least one;
    /// the API refuses none).
    pub fn prepared(destinations: usize) -> Self {
        Self {
            phase: Phase::Prepared,
            via: None,
            destinations: vec![DestinationPhase::Waiting; destinations],
        }
    }

    /// A message recovered from the log: decided (every destination owed
    /// again, since acknowledgements are not logged and the destinations'
    /// ledgers absorb a second delivery) or still prepared (its check-back
    /// is due at its deadline). Returns the effects that resume it.
    pub fn recovered(destinations: usize, decided: Option<Via>) -> (Self, Vec<Effect>) {
        let mut message = Self::prepared(destinations);
        let effects = match decided {
            Some(via) => message.decide(via, false),
            None => Vec::new(),
        };
        (message, effects)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// How it was found committed, once it was.
    pub fn via(&self) -> Option<Via> {
        self.via
    }

    pub fn destination(&self, idx: DestinationIdx) -> Option<DestinationPhase> {
        self.destinations.get(idx).copied()
    }

    /// Applies `event`; returns what the runtime must do. A refused event
    /// changes nothing. Events that come too late to matter (a second
    /// Submit, a check-back answered after a Submit, an acknowledgement
    /// repeated) change nothing and ask for nothing.
    pub fn apply(&mut self, event: Event) -> Result<Vec<Effect>, Rejected> {
        match event {
            Event::Submitted => match self.phase {
                Phase::Prepared => Ok(self.decide(Via::Submit, true)),
                Phase::Dropped => Err(Rejected::Dropped),
                Phase::Delivering | Phase::Delivered => Ok(Vec::new()),
            },
            Event::CheckDue => Ok(match self.phase {
                Phase::Prepared => vec![Effect::CheckBack],
                _ => Vec::new(),
            }),
            Event::CheckAnswered(answer) | Event::Resolved(answer) => {
                Ok(match (self.phase, answer) {
                    (Phase::Prepared, CheckAnswer::Committed) => {
                        let via = if matches!(event, Event::Resolved(_)) {
                            Via::Operator
                        } else {
                            Via::CheckBack
                        };
                        self.decide(via, true)
                    }
                    (Phase::Prepared, CheckAnswer::RolledBack) => {
                        self.phase = Phase::Dropped;
                        vec![Effect::LogEnded {
                            phase: Phase::Dropped,
                        }]
                    }
                    // A Submit got there first: it is the same truth (M2).
                    _ => Vec::new(),
                })
            }
            Event::CheckFailed { .. } => Ok(match self.phase {
                Phase::Prepared => vec![Effect::RetryCheckBack],
                _ => Vec::new(),
            }),
            Event::Acknowledged { destination } => {
                let slot = self
                    .destinations
                    .get_mut(destination)
                    .ok_or(Rejected::NoSuchDestination(destination))?;
                if *slot != DestinationPhase::Owed {
                    return Ok(Vec::new());
                }
                *slot = DestinationPhase::Acknowledged;
                let all = self
                    .destinations
                    .iter()
                    .all(|d| *d == DestinationPhase::Acknowledged);
                Ok(if all {
                    self.phase = Phase::Delivered;
                    vec![Effect::LogEnded {
                        phase: Phase::Delivered,
                    }]
                } else {
                    Vec::new()
                })
            }
            Event::DeliveryFailed { destination, .. } => {
                let slot = self
                    .destinations
                    .get(destination)
                    .ok_or(Rejected::NoSuchDestination(destination))?;
                Ok(if *slot == DestinationPhase::Owed {
                    vec![Effect::RetryDelivery { destination }]
                } else {
                    Vec::new()
                })
            }
        }
    }

    /// The producer's local transaction committed: every destination is
    /// owed its delivery (M1, M3).
    fn decide(&mut self, via: Via, log: bool) -> Vec<Effect> {
        self.phase = Phase::Delivering;
        self.via = Some(via);
        let mut effects = Vec::with_capacity(self.destinations.len() + 1);
        if log {
            effects.push(Effect::LogDecided { via });
        }
        for (destination, slot) in self.destinations.iter_mut().enumerate() {
            *slot = DestinationPhase::Owed;
            effects.push(Effect::Deliver { destination });
        }
        if self.destinations.is_empty() {
            // Nothing to deliver (the API refuses such a message; a log
            // could still hold one): it is delivered as soon as decided.
            self.phase = Phase::Delivered;
            effects.push(Effect::LogEnded {
                phase: Phase::Delivered,
            });
        }
        effects
    }
}

#[cfg(test)]
mod tests;
