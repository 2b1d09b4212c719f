//! What the runtime is asked and what it answers: the requests the API
//! builds from validated wire messages, and their results.

use std::time::Duration;

use crate::model::{Destination, RequestDigest, SagaStepDef, TxnId, TxnState, TxnView};
use crate::protocol::two_phase::Outcome;

/// What SubmitSaga asks for; the steps are validated already.
#[derive(Debug, Clone)]
pub struct SubmitSaga {
    pub steps: Vec<SagaStepDef>,
    pub idempotency_key: Option<String>,
    /// With a key: what the request asked for ([`RequestDigest`]).
    pub request_digest: Option<RequestDigest>,
    pub description: Option<String>,
    /// Answer once the saga is terminal.
    pub wait: bool,
}

/// The answer to SubmitSaga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaAccepted {
    pub id: TxnId,
    pub created: bool,
    pub state: TxnState,
    pub reason: Option<String>,
}

/// What PrepareMessage asks for; validated already.
#[derive(Debug, Clone)]
pub struct PrepareMessage {
    /// The producer's Participant endpoint (the check-back's address).
    pub producer: String,
    pub destinations: Vec<Destination>,
    /// How long to wait for SubmitMessage before asking the producer (M6).
    pub check_after: Duration,
    pub ordering_key: Option<String>,
    pub idempotency_key: Option<String>,
    /// With a key: what the request asked for ([`RequestDigest`]).
    pub request_digest: Option<RequestDigest>,
    pub description: Option<String>,
}

/// A message prepared, or found by its idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageAccepted {
    pub id: TxnId,
    pub created: bool,
    pub state: TxnState,
}

/// A new or found transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begun {
    pub id: TxnId,
    pub created: bool,
    pub state: TxnState,
    /// Names of the branches enlisted with Begin.
    pub branches: Vec<String>,
}

/// What Begin asks for.
#[derive(Debug, Clone, Default)]
pub struct BeginTxn {
    pub timeout: Option<Duration>,
    pub idempotency_key: Option<String>,
    /// With a key: what the request asked for ([`RequestDigest`]).
    pub request_digest: Option<RequestDigest>,
    pub description: Option<String>,
    /// Branches enlisted with the Begin, in one durable write.
    pub branches: Vec<EnlistBranch>,
}

/// When a Begin answers: once its record is durable, or at once with the
/// decision waiting for the record instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum BeginWrite {
    Wait,
    BeforeDecision,
}

/// What Enlist asks for.
#[derive(Debug, Clone)]
pub struct EnlistBranch {
    pub participant: String,
    pub payload: Vec<u8>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enlisted {
    pub name: String,
    pub created: bool,
}

/// One page of `ListTransactions`.
#[derive(Debug, Clone)]
pub struct Page {
    pub views: Vec<TxnView>,
    /// Where the next page starts (the last id the store returned), if the
    /// store may have more.
    pub next: Option<TxnId>,
}

/// The answer to Commit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Committed {
    pub outcome: Outcome,
    pub state: TxnState,
}

/// What a transaction is born with and never changes.
#[derive(Debug, Clone)]
pub struct TxnHeader {
    pub id: TxnId,
    pub created_at_ms: u64,
    pub deadline_ms: u64,
    pub idempotency_key: Option<String>,
    pub request_digest: Option<RequestDigest>,
    pub description: Option<String>,
}
