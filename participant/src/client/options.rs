//! What a caller gives the client (begin and commit options, branches)
//! and what it is answered (a begin, an outcome, a saga's or a message's
//! state), with their wire forms.

use std::time::Duration;

use concord_proto::v1 as pb;

/// Options of [`crate::CoordinatorClient::begin`].
#[derive(Debug, Clone, Default)]
pub struct BeginOptions {
    /// How long the transaction may stay undecided; None for the
    /// coordinator's default.
    pub timeout: Option<Duration>,
    /// Makes a retried Begin return the same transaction (R7).
    pub idempotency_key: Option<String>,
    pub description: Option<String>,
    /// Branches to enlist with the Begin, in one durable write (saves an
    /// Enlist call and a forced write per branch).
    pub branches: Vec<BranchSpec>,
}

/// A branch to enlist: the participant's URI, its payload, and optionally
/// its name.
#[derive(Debug, Clone, Default)]
pub struct BranchSpec {
    pub participant: String,
    pub payload: Vec<u8>,
    pub name: Option<String>,
}

/// Options of [`crate::CoordinatorClient::commit_with`].
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// Answer only once every participant acknowledged (R4).
    pub wait_for_completion: bool,
    /// Each participant's prepare deadline; None for the coordinator's.
    pub prepare_timeout: Option<Duration>,
}

/// A transaction's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed { read_only: bool },
    Aborted { reason: String },
    Undecided,
}

/// A transaction begun on the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begun {
    pub transaction_id: String,
    /// False when the idempotency key found an earlier transaction.
    pub created: bool,
    /// Names of the branches enlisted with the Begin.
    pub branches: Vec<String>,
}

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaState {
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
}

impl SagaState {
    pub fn from_wire(state: i32) -> Option<Self> {
        match pb::TransactionState::try_from(state).ok()? {
            pb::TransactionState::Running => Some(Self::Running),
            pb::TransactionState::Compensating => Some(Self::Compensating),
            pb::TransactionState::Completed => Some(Self::Completed),
            pb::TransactionState::Compensated => Some(Self::Compensated),
            pb::TransactionState::Failed => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }
}

/// Where a transactional message is (DESIGN §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Recorded; its local transaction not yet seen to commit.
    Prepared,
    /// Its local transaction committed; being delivered.
    Delivering,
    /// Every destination acknowledged.
    Delivered,
    /// Its local transaction never committed; nothing was delivered.
    Dropped,
}

impl MessageState {
    pub fn from_wire(state: i32) -> Option<Self> {
        match pb::TransactionState::try_from(state).ok()? {
            pb::TransactionState::Prepared => Some(Self::Prepared),
            pb::TransactionState::Delivering => Some(Self::Delivering),
            pb::TransactionState::Delivered => Some(Self::Delivered),
            pb::TransactionState::Dropped => Some(Self::Dropped),
            _ => None,
        }
    }
}

/// The answer to a submitted saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaStatus {
    pub transaction_id: String,
    /// False when the idempotency key found an earlier saga.
    pub created: bool,
    pub state: SagaState,
    /// Why it compensated or failed.
    pub reason: String,
}

pub(super) fn begin_request(options: BeginOptions) -> pb::BeginRequest {
    pb::BeginRequest {
        timeout_ms: options
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        idempotency_key: options.idempotency_key.unwrap_or_default(),
        description: options.description.unwrap_or_default(),
        branches: options
            .branches
            .into_iter()
            .map(|b| pb::BranchSpec {
                participant: b.participant,
                payload: b.payload,
                branch: b.name.unwrap_or_default(),
            })
            .collect(),
        commit: false,
        prepare_timeout_ms: 0,
    }
}

pub(super) fn outcome_of(answer: &pb::CommitResponse) -> Outcome {
    match pb::Outcome::try_from(answer.outcome) {
        Ok(pb::Outcome::Committed) => Outcome::Committed {
            read_only: answer.read_only,
        },
        Ok(pb::Outcome::Aborted) => Outcome::Aborted {
            reason: answer.reason.clone(),
        },
        _ => Outcome::Undecided,
    }
}
