//! The runtime: executes the protocols' effects against the world.
//!
//! ```text
//!   api ──request──▶ Runtime (entry points: two_phase, saga, message,
//!                     │         operator, views, keys)
//!                     ▼
//!             one transaction's state machine (crate::protocol)
//!                     │ effects
//!                     ▼
//!             its one driver task (two_phase::driver, saga, message)
//!          ┌──────────┼─────────────────┬───────────────┐
//!          ▼          ▼                 ▼               ▼
//!     log (forced   participants ──▶  batch ──▶ rpc   wait (backoff,
//!     writes, R1)   (calls, deadlines, signatures)    cut short by retry)
//!          │                 │ answers
//!          ▼                 ▼
//!        store         events back into the machine ──▶ more effects
//! ```
//!
//! [`Runtime`] is what the API calls. Each protocol owns its live table,
//! its driver and its entry points: [`two_phase`] (2PC), [`saga`],
//! [`message`] (transactional messages), each with its data in memory in a
//! `live` module that knows nothing of the shared state. Below them, the
//! machinery they share: [`shared`] (the state every part holds, and the
//! runtime's shutdown; `start`, on top, spawns its tasks), [`log`] (the
//! group-commit writer), [`durable`] (a write retried until it is, R1),
//! [`participants`], [`batch`] and [`rpc`] (calls to participants),
//! [`dial`] (where calls may go), [`mailbox`] (effects handed to a
//! transaction's one driver), [`wait`], [`clock`], [`crash`], [`lease`] (a
//! shared store's leases and takeover, DESIGN §6), [`groups`] (the shard
//! map followed, DESIGN §11), [`watch`] (WatchTransactions' feed), `keys`
//! (idempotency keys and admission, R7), `views` (what callers read),
//! `operator` (retry and resolve by hand), `recovery` (finishing what the
//! log holds at start), `sweep` (timeouts, gauges, doubtful writes,
//! retention), `error` and `requests` (re-exported here). No module imports
//! this one, and none imports another in a circle.
//!
//! Every task it spawns is on one `TaskTracker` and stops on one
//! `CancellationToken`: [`Runtime::shutdown`] ends them all.

// What the API works with from the layers below, so that `api` depends on
// the runtime alone (DESIGN §1: api -> runtime -> protocol, runtime ->
// store): a transaction's decision and outcome, a saga's shape rules, and
// a listing's query.
pub use crate::protocol::saga::{ShapeError, StepShape, check_shapes};
pub use crate::protocol::two_phase::{Decision, Outcome};
pub use crate::store::ListQuery;

pub mod batch;
pub mod clock;
pub mod crash;
pub mod dial;
pub mod durable;
pub mod groups;
pub mod lease;
pub mod log;
pub mod mailbox;
pub mod message;
pub mod participants;
pub mod rpc;
pub mod saga;
pub mod shared;
mod start;
pub mod two_phase;
pub mod wait;
pub mod watch;

mod error;
mod keys;
mod operator;
mod recovery;
mod requests;
mod sweep;
mod views;

pub use error::Error;
pub use groups::Sharding;
pub use requests::{
    BeginTxn, Begun, Committed, EnlistBranch, Enlisted, MessageAccepted, Page, PrepareMessage,
    SagaAccepted, SubmitSaga,
};
pub use shared::{Runtime, RuntimeConfig};
