//! Concord's participant SDK: everything a service needs to take part in
//! Concord transactions, and everything a client needs to run them.
//!
//! # Layout
//!
//! - [`client`]: [`CoordinatorClient`] — begin, enlist, commit, rollback,
//!   outcome, sagas, messages, the watch (`client/options.rs`: what calls
//!   take and answer; `error.rs`: typed errors; `watch.rs`: the watch's
//!   reconnecting stream).
//! - [`transport`]: the channel to a coordinator node, TLS, the token's
//!   header; shared by the client and its router.
//! - [`groups`]: the client's routing in a deployment of several groups of
//!   coordinator nodes: each call to a node of the group that owns it.
//! - [`server`]: implement [`TwoPhaseParticipant`] and/or [`SagaStep`] and
//!   serve them as the `concord.v1.Participant` gRPC service with
//!   [`ParticipantService`] (`server/guarded.rs`: the ledger-guarded paths;
//!   `answers.rs`: each call's wire answer, single or batched; `grpc.rs`:
//!   the tonic service).
//! - [`branch`]: [`BranchContext`], the branch a call is about, shared by
//!   the server, the ledger and the resolver.
//! - [`saga`]: build a saga's step graph and submit it.
//! - [`crash`]: crash points for tests (`failpoints` feature).
//! - [`ledger`]: the exactly-once guard in the participant's own database
//!   (SQLite or PostgreSQL), written in the same local transaction as the
//!   business change.
//! - [`message`]: build a transactional message, prepare it, publish it in
//!   the local transaction that makes the change, submit it (DESIGN §10).
//! - [`outbox`]: a transactional message's producer side underneath: the
//!   outbox row in the producer's local transaction, and the check-back's
//!   answer.
//! - [`resolver`]: asks the coordinator about branches prepared but left
//!   without a decision (after a restart, or a long wait) and applies the
//!   answer; prunes old ledger rows.
//!
//! Any language can be a participant: the proto in `proto/concord/v1` is the
//! contract; this crate is the Rust way to keep it.

pub mod branch;
pub mod client;
pub mod crash;
pub mod groups;
pub mod ledger;
pub mod message;
pub mod outbox;
pub mod resolver;
pub mod saga;
pub mod server;
pub mod transport;

pub use client::{
    BeginOptions, Begun, BranchSpec, ClientError, ClientTls, CommitOptions, CoordinatorClient,
    MessageState, Outcome,
};
pub use concord_proto::signature::TrustedKeys;
pub use ledger::{LedgerDb, LocalTx, LocalTxOf};
pub use resolver::ResolverConfig;
pub use server::{
    BranchContext, Callers, CallersError, DEFAULT_MAX_CALL_BYTES, MAX_BATCH_CALLS,
    MessageDestination, ParticipantError, ParticipantService, SagaStep, ServeError, StepResult,
    TwoPhaseParticipant, Unsupported, Vote,
};
