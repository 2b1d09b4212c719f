//! Why a request to the runtime could not be carried out: one variant per
//! situation, each mapped to one gRPC status by `api::convert::status`.

use crate::model::{TxnId, TxnState};
use crate::protocol::two_phase::Rejected;
use crate::store::StoreError;

/// Why a request could not be carried out. Each maps to one gRPC status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("transaction {0} not found")]
    NotFound(TxnId),
    #[error("{0}")]
    Rejected(#[from] Rejected),
    #[error("transaction {id} is {}, not active", .state.as_str())]
    Finished { id: TxnId, state: TxnState },
    #[error("branch {name:?} is already enlisted with a different participant or payload")]
    BranchConflict { name: String },
    #[error("the transaction already has {limit} branches, the limit (--max-branches)")]
    TooManyBranches { limit: usize },
    /// DESIGN §12: the node holds as many live transactions as it may.
    #[error(
        "this node has {limit} transactions in flight, its limit (--max-in-flight); retry after \
         a backoff, or on another node"
    )]
    TooManyInFlight { limit: usize },
    #[error("{0}")]
    Unavailable(String),
    #[error(
        "the coordinator is shutting down; the transaction's outcome will be in GetTransaction"
    )]
    ShuttingDown,
    #[error(
        "the coordinator is draining for shutdown and takes no new transactions; begin it on \
         another node or after the restart"
    )]
    Draining,
    #[error("store read failed: {0}")]
    Store(#[from] StoreError),
    /// R7: an idempotency key names one request. This one differs from the
    /// one that began `id` with it (other branches, steps, timeout or
    /// description), so it is neither a retry nor a new transaction.
    #[error(
        "idempotency key {key:?} was used with a different request: it began transaction {id}; \
         retry with the same request, or use a new key for a new transaction"
    )]
    KeyReused { key: String, id: TxnId },
    #[error("transaction {0} is a saga or a message; it runs by itself and takes no 2PC calls")]
    NotTwoPhase(TxnId),
    #[error("transaction {0} is not a message; SubmitMessage takes the id PrepareMessage answered")]
    NotAMessage(TxnId),
    /// M2: the check-back found the producer's local transaction
    /// uncommitted and dropped the message; a tombstone in the producer's
    /// outbox keeps that local transaction from ever committing.
    #[error(
        "message {0} was dropped: its check-back found no outbox row for it, so the local          transaction that was to publish it did not commit (and now cannot: a tombstone stands          in its place). Prepare a new message for a new local transaction"
    )]
    MessageDropped(TxnId),
    #[error("transaction {id} has no branch or step named {name:?}")]
    NoSuchBranch { id: TxnId, name: String },
    /// `concord txn resolve` asked for something that would break the
    /// transaction's rules; the message says which.
    #[error("{0}")]
    CannotResolve(String),
    /// DESIGN §6: another live node owns the transaction; the API forwards
    /// the call there.
    #[error("transaction {id} is owned by the coordinator node at {address}; send the call there")]
    OwnedElsewhere { id: TxnId, address: String },
    /// DESIGN §11: the transaction (or a new one with this key) belongs to
    /// another group of nodes; the API forwards the call to `address`, a
    /// node of that group.
    #[error(
        "{what} belongs to group {group:?}; send the call to one of its nodes: {}",
        .addresses.join(", ")
    )]
    OtherGroup {
        what: String,
        group: String,
        /// Its nodes, the one to try first first.
        addresses: Vec<String>,
    },
    /// DESIGN §11: a change to the shard map, or a handover of a shard's
    /// keys, that the map this node follows does not allow.
    #[error("{0}")]
    Sharding(String),
    /// DESIGN §6: this node was cut off past its lease and another node took
    /// the transaction over; its write here was refused (fencing).
    #[error(
        "transaction {0} was taken over by another coordinator node while this one was \
         unreachable past its lease; ask any node for its outcome (GetTransaction)"
    )]
    TakenOver(TxnId),
}
