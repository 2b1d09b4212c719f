//! The Concord coordinator: runs two-phase commit across participant
//! services over gRPC and records every decision durably, so that after any
//! crash it finishes what it started (see `docs/design.md`).
//!
//! # Layout
//!
//! - [`protocol`]: the protocols as pure state machines (events in, effects
//!   out; no I/O, no clock). Start reading here.
//! - [`runtime`]: executes the effects — participant calls with deadlines,
//!   the group-commit log writer, phase-2 retries with backoff, recovery,
//!   the timeout sweeper.
//! - [`store`]: the durable log behind a `Store` trait; SQLite by default,
//!   PostgreSQL by URL, in-memory for deterministic simulation.
//! - [`api`]: the `concord.v1.Coordinator` gRPC service: validation, then
//!   the runtime; health and reflection.
//! - [`console`]: the web console, a client of the node's own service
//!   (`concord serve --console-listen`).
//! - [`node`]: one running node (store + runtime + server), as started by
//!   `concord serve`, the tests and the demo.
//! - [`model`]: the domain's nouns shared by the layers above.
//! - [`shard`]: shards and the shard map of a deployment of several groups
//!   (DESIGN §11), pure; the runtime routes by it (`runtime::groups`).
//! - [`cli`]: the `concord` command line, with `concord txn` (the
//!   operator's tools over the gRPC API) and `concord bench` (the load
//!   generator that measures against the machine's floor) under it.
//! - [`metrics`]: the Prometheus metrics the runtime reports.
//! - [`telemetry`]: logs, and OTLP trace export with the `otlp` feature.
//!
//! Dependencies point one way: `api -> runtime -> protocol`, `runtime -> store`
//! (the API takes the few protocol and store types it needs from the
//! runtime's re-exports); [`model`] is shared by all, and [`node`] and
//! [`cli`] assemble a store, a runtime and the API; [`console`] sits beside
//! the API and calls it.

pub mod api;
pub mod cli;
pub mod console;
pub mod metrics;
pub mod model;
pub mod node;
pub mod protocol;
pub mod runtime;
pub mod shard;
pub mod store;
pub mod telemetry;
