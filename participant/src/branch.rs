//! The branch a call is about, as handlers, the ledger and the in-doubt
//! resolver all see it: a module of its own so that none of them depends
//! on another for it.

/// Which branch a call is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BranchContext {
    pub transaction_id: String,
    pub branch: String,
    /// Where to ask about this transaction's outcome; may be empty.
    pub coordinator: String,
    /// True inside a one-phase commit (R6): prepare and commit run in the
    /// same local transaction and the participant's commit is the decision.
    pub one_phase: bool,
    /// The W3C trace context of the coordinator's call (`traceparent`), when
    /// the coordinator exports traces: continue it to put this branch's work
    /// in the transaction's trace. Also recorded on the SDK's span.
    pub traceparent: Option<String>,
}
