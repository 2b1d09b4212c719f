//! The gRPC metadata Concord's calls and answers carry beside their
//! messages, named once for the coordinator and the SDKs (the Python SDK
//! spells the same strings; the proto comments document each).

/// On an UNAVAILABLE answer: the address of the node that owns the
/// transaction, to send the call to instead (DESIGN §6).
pub const OWNER: &str = "concord-owner";

/// Marks a call one coordinator node forwarded to another: `"1"` within a
/// group, [`ACROSS_GROUPS`] to a node of another group (DESIGN §11).
pub const FORWARDED_BY: &str = "concord-forwarded-by";

/// The [`FORWARDED_BY`] of a call sent to another group: the node it
/// reaches may not own the transaction (a group's nodes share its log and
/// own what they began), so it may forward once more, within its group.
pub const ACROSS_GROUPS: &str = "group";

/// On an ALREADY_EXISTS answer to a reused idempotency key: the id of the
/// transaction the key began (R7).
pub const TRANSACTION_ID: &str = "concord-transaction-id";

/// The trailer of a WatchTransactions stream that ended: the cursor to
/// reconnect with to miss nothing.
pub const RESUME_CURSOR: &str = "concord-resume-cursor";

/// On every call from the coordinator to a participant: its signature
/// (DESIGN §12, [`crate::signature`]).
pub const SIGNATURE: &str = crate::signature::SIGNATURE_HEADER;
