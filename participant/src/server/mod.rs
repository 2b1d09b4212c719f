//! The server adapter: turns an implementation of [`TwoPhaseParticipant`]
//! and/or [`SagaStep`] into the `concord.v1.Participant` gRPC service, with
//! the ledger (`crate::ledger`) guarding every call so that the handler runs
//! at most once per (transaction, branch, operation), whatever the network
//! does. A service that implements only one of the two answers the other's
//! calls with UNIMPLEMENTED ([`Unsupported`]).
//!
//! Here: the handler traits and the service's set-up and upkeep (serving,
//! the in-doubt resolver). `guarded`: the ledger-guarded path of each
//! operation. `answers`: each call's wire answer, shared by single calls and
//! `Batch` entries. `grpc`: the tonic `Participant` service.

use std::sync::Arc;

use tracing::Instrument;

use concord_proto::v1 as pb;
use concord_proto::v1::participant_server::{Participant, ParticipantServer};
use sqlx::{Database, Pool, Sqlite};
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::ledger::{Entry, LedgerDb, LocalTxOf, Op};
use crate::resolver::{Resolution, Resolver, ResolverConfig};

mod answers;
mod grpc;
mod guarded;
mod trust;

use trust::Trust;
pub use trust::{Callers, CallersError};

pub use crate::branch::BranchContext;
pub use answers::MAX_BATCH_CALLS;

/// A participant's answer to Prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// Prepared: what commit needs is written in the local transaction.
    Commit,
    /// A definite "no", with the reason shown to the client. The local
    /// transaction is rolled back.
    Abort(String),
    /// Nothing to commit (the branch only read).
    ReadOnly,
}

/// Why a handler failed. A failed Prepare counts as an ABORT vote; a failed
/// Commit or Abort is retried by the coordinator until it succeeds (R3), so
/// report passing trouble as [`ParticipantError::Unavailable`].
#[derive(Debug, thiserror::Error)]
pub enum ParticipantError {
    /// The payload does not make sense to this participant.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
    /// A passing failure; the coordinator retries phase 2.
    #[error("unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// This participant does not take part in that protocol.
    #[error("this participant does not support {0}")]
    Unsupported(&'static str),
}

impl From<ParticipantError> for Status {
    fn from(error: ParticipantError) -> Self {
        match error {
            ParticipantError::InvalidPayload(message) => Status::invalid_argument(message),
            ParticipantError::Unavailable(message) => Status::unavailable(message),
            ParticipantError::Database(error) => Status::unavailable(format!("database: {error}")),
            ParticipantError::Unsupported(what) => {
                Status::unimplemented(format!("this participant does not support {what}"))
            }
        }
    }
}

/// What a service implements to take part in two-phase commit. Each method
/// gets the local database transaction the ledger row will be written in:
/// make the business change through it and do not commit it yourself.
///
/// - `prepare`: check and reserve; vote. A COMMIT vote is a promise to be
///   able to commit later.
/// - `commit`: apply what prepare reserved. Called at most once per branch.
/// - `abort`: release what prepare reserved. Called only for a branch that
///   voted COMMIT (an abort before prepare never reaches the handler).
pub trait TwoPhaseParticipant<DB: LedgerDb = Sqlite>: Send + Sync + 'static {
    fn prepare(
        &self,
        tx: &mut LocalTxOf<DB>,
        branch: &BranchContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<Vote, ParticipantError>> + Send;

    fn commit(
        &self,
        tx: &mut LocalTxOf<DB>,
        branch: &BranchContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;

    fn abort(
        &self,
        tx: &mut LocalTxOf<DB>,
        branch: &BranchContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
}

/// What a saga step's action answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepResult {
    /// Done: the change is written in the local transaction.
    Done,
    /// A definite business "no" (sold out, card declined), with the reason.
    /// The local transaction is rolled back; the saga compensates.
    Refused(String),
}

/// What a service implements to be a saga step. Like
/// [`TwoPhaseParticipant`], each method gets the local database transaction
/// the ledger row is written in.
///
/// - `action`: do the step. Called at most once per (saga, step); never
///   after the step's compensation.
/// - `compensate`: undo what `action` did. Called only if the action ran
///   and was not refused; it must not fail for business reasons (return
///   [`ParticipantError::Unavailable`] for passing trouble: it is retried).
pub trait SagaStep<DB: LedgerDb = Sqlite>: Send + Sync + 'static {
    fn action(
        &self,
        tx: &mut LocalTxOf<DB>,
        step: &BranchContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<StepResult, ParticipantError>> + Send;

    fn compensate(
        &self,
        tx: &mut LocalTxOf<DB>,
        step: &BranchContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
}

/// What a service implements to receive transactional messages (DESIGN
/// §10) as a destination: `deliver` applies one message's payload through
/// the local transaction the ledger row is written in. Called at most once
/// per (message, destination); return [`ParticipantError::Unavailable`]
/// for passing trouble (the coordinator delivers again until it succeeds).
pub trait MessageDestination<DB: LedgerDb = Sqlite>: Send + Sync + 'static {
    fn deliver(
        &self,
        tx: &mut LocalTxOf<DB>,
        message: &BranchContext,
        payload: &[u8],
    ) -> impl Future<Output = Result<(), ParticipantError>> + Send;
}

/// A [`MessageDestination`] behind a pointer: the service holds at most one,
/// of any type, so that adding messages changes none of its type
/// parameters.
pub(crate) trait DeliverDyn<DB: LedgerDb>: Send + Sync {
    fn deliver<'a>(
        &'a self,
        tx: &'a mut LocalTxOf<DB>,
        message: &'a BranchContext,
        payload: &'a [u8],
    ) -> futures::future::BoxFuture<'a, Result<(), ParticipantError>>;
}

impl<DB: LedgerDb, M: MessageDestination<DB>> DeliverDyn<DB> for M {
    fn deliver<'a>(
        &'a self,
        tx: &'a mut LocalTxOf<DB>,
        message: &'a BranchContext,
        payload: &'a [u8],
    ) -> futures::future::BoxFuture<'a, Result<(), ParticipantError>> {
        Box::pin(MessageDestination::deliver(self, tx, message, payload))
    }
}

/// Why [`ParticipantService::serve`] stopped or did not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// Told neither whose calls to obey nor to obey anyone.
    #[error("{}", trust::NOT_CONFIGURED)]
    NoCoordinatorKey,
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// Stands in for the protocol a participant does not implement.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unsupported;

impl<DB: LedgerDb> TwoPhaseParticipant<DB> for Unsupported {
    async fn prepare(
        &self,
        _: &mut LocalTxOf<DB>,
        _: &BranchContext,
        _: &[u8],
    ) -> Result<Vote, ParticipantError> {
        Err(ParticipantError::Unsupported("two-phase commit"))
    }
    async fn commit(
        &self,
        _: &mut LocalTxOf<DB>,
        _: &BranchContext,
        _: &[u8],
    ) -> Result<(), ParticipantError> {
        Err(ParticipantError::Unsupported("two-phase commit"))
    }
    async fn abort(
        &self,
        _: &mut LocalTxOf<DB>,
        _: &BranchContext,
        _: &[u8],
    ) -> Result<(), ParticipantError> {
        Err(ParticipantError::Unsupported("two-phase commit"))
    }
}

impl<DB: LedgerDb> SagaStep<DB> for Unsupported {
    async fn action(
        &self,
        _: &mut LocalTxOf<DB>,
        _: &BranchContext,
        _: &[u8],
    ) -> Result<StepResult, ParticipantError> {
        Err(ParticipantError::Unsupported("sagas"))
    }
    async fn compensate(
        &self,
        _: &mut LocalTxOf<DB>,
        _: &BranchContext,
        _: &[u8],
    ) -> Result<(), ParticipantError> {
        Err(ParticipantError::Unsupported("sagas"))
    }
}

/// The `concord.v1.Participant` service around a [`TwoPhaseParticipant`]
/// (`P`) and a [`SagaStep`] (`S`), with the ledger in database `DB`
/// (SQLite or PostgreSQL).
pub struct ParticipantService<P, S = Unsupported, DB: Database = Sqlite> {
    handler: Arc<P>,
    steps: Arc<S>,
    /// Receives transactional messages, when this service is a destination.
    destination: Option<Arc<dyn DeliverDyn<DB>>>,
    pool: Pool<DB>,
    resolver: ResolverConfig,
    /// Whose calls it obeys (DESIGN §12).
    trust: Trust,
    /// The largest call it decodes, in bytes ([`DEFAULT_MAX_CALL_BYTES`]).
    max_call_bytes: usize,
}

/// The largest call a participant decodes unless told otherwise: gRPC's
/// usual 4 MiB. The coordinator keeps its batches under it; a single call
/// larger than this (a payload near a `--max-payload-bytes` set above 4
/// MiB) needs [`ParticipantService::with_max_call_bytes`].
pub const DEFAULT_MAX_CALL_BYTES: usize = 4 * 1024 * 1024;

/// Shares the handlers and the pool: a `Batch`'s answers are a stream that
/// outlives the call that returned it, so each of its calls holds a clone.
impl<P, S, DB: Database> Clone for ParticipantService<P, S, DB> {
    fn clone(&self) -> Self {
        Self {
            handler: Arc::clone(&self.handler),
            steps: Arc::clone(&self.steps),
            destination: self.destination.clone(),
            pool: self.pool.clone(),
            resolver: self.resolver.clone(),
            trust: self.trust.clone(),
            max_call_bytes: self.max_call_bytes,
        }
    }
}

impl<DB: LedgerDb, P: TwoPhaseParticipant<DB>> ParticipantService<P, Unsupported, DB> {
    /// A 2PC participant: installs the ledger table in `pool`'s database (if
    /// missing) and wraps `handler`.
    pub async fn new(handler: P, pool: Pool<DB>) -> Result<Self, sqlx::Error> {
        DB::install(&pool).await?;
        Ok(Self {
            handler: Arc::new(handler),
            steps: Arc::new(Unsupported),
            destination: None,
            pool,
            resolver: ResolverConfig::default(),
            trust: Trust::Unset,
            max_call_bytes: DEFAULT_MAX_CALL_BYTES,
        })
    }
}

impl<DB: LedgerDb, S: SagaStep<DB>> ParticipantService<Unsupported, S, DB> {
    /// A saga participant: installs the ledger table in `pool`'s database
    /// (if missing) and wraps `steps`.
    pub async fn saga(steps: S, pool: Pool<DB>) -> Result<Self, sqlx::Error> {
        DB::install(&pool).await?;
        Ok(Self {
            handler: Arc::new(Unsupported),
            steps: Arc::new(steps),
            destination: None,
            pool,
            resolver: ResolverConfig::default(),
            trust: Trust::Unset,
            max_call_bytes: DEFAULT_MAX_CALL_BYTES,
        })
    }
}

impl<DB: LedgerDb, P: TwoPhaseParticipant<DB>, S: SagaStep<DB>> ParticipantService<P, S, DB> {
    /// Also serves saga steps with `steps`.
    pub fn with_saga<S2: SagaStep<DB>>(self, steps: S2) -> ParticipantService<P, S2, DB> {
        ParticipantService {
            handler: self.handler,
            steps: Arc::new(steps),
            destination: self.destination,
            pool: self.pool,
            resolver: self.resolver,
            trust: self.trust,
            max_call_bytes: self.max_call_bytes,
        }
    }

    /// Also receives transactional messages with `destination` (DESIGN
    /// §10); without it, `Deliver` is UNIMPLEMENTED. `CheckMessage` (a
    /// producer's check-back) is always answered, from the outbox rows
    /// [`crate::outbox::publish`] wrote in this service's database.
    pub fn with_messages(mut self, destination: impl MessageDestination<DB>) -> Self {
        self.destination = Some(Arc::new(destination));
        self
    }

    /// Obeys `callers` (DESIGN §12): what [`Callers::from_flags`] read from
    /// a command line.
    pub fn obeying(mut self, callers: Callers) -> Self {
        self.trust = callers.into();
        self
    }

    /// Obeys only calls signed by one of `keys`: the public keys of the
    /// coordinators of its deployment (`concord keys public`; a file may
    /// hold several, for rotation). DESIGN §12.
    pub fn with_coordinator_keys(mut self, keys: concord_proto::signature::TrustedKeys) -> Self {
        self.trust = Trust::Keys(keys, Default::default());
        self
    }

    /// Obeys any call that reaches its port, signed or not: for a
    /// participant only its coordinator can reach (a private network, or
    /// mutual TLS). Logged as a warning at every start.
    pub fn accept_unsigned_calls(mut self) -> Self {
        self.trust = Trust::Anyone;
        self
    }

    /// Decodes calls of up to `bytes` (default [`DEFAULT_MAX_CALL_BYTES`]):
    /// set it to the coordinator's `--max-payload-bytes` and 64 KiB more
    /// when that is above 4 MiB, or such a call is refused before it is
    /// looked at (OUT_OF_RANGE), a prepare counting as an ABORT vote.
    /// A larger limit lets anyone who reaches the port make the service
    /// read that much before the call's signature is checked.
    pub fn with_max_call_bytes(mut self, bytes: usize) -> Self {
        self.max_call_bytes = bytes;
        self
    }

    /// Sets how in-doubt branches are resolved and the ledger is pruned.
    pub fn with_resolver(mut self, config: ResolverConfig) -> Self {
        self.resolver = config;
        self
    }

    /// The tonic service, ready for `Server::builder().add_service(...)`.
    /// Run [`ParticipantService::maintain`] beside it (as
    /// [`ParticipantService::serve`] does) to resolve in-doubt branches.
    pub fn into_server(self) -> ParticipantServer<Self> {
        let limit = self.max_call_bytes;
        ParticipantServer::new(self).max_decoding_message_size(limit)
    }

    /// Serves on `listener`, and resolves in-doubt branches and prunes the
    /// ledger beside it, until `shutdown` resolves. Refuses to start
    /// ([`ServeError::NoCoordinatorKey`]) unless told whose calls to obey.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        self.serve_tls(listener, None, shutdown).await
    }

    /// [`ParticipantService::serve`] over TLS when `tls` is given (with a
    /// client CA, only a coordinator presenting a certificate it signed may
    /// call: mutual TLS). The coordinator then reaches this participant at
    /// an `https://` URL.
    pub async fn serve_tls(
        self,
        listener: TcpListener,
        tls: Option<tonic::transport::ServerTlsConfig>,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<(), ServeError> {
        match &self.trust {
            Trust::Unset => return Err(ServeError::NoCoordinatorKey),
            Trust::Anyone => tracing::warn!(
                addr = ?listener.local_addr().ok(),
                "this participant obeys unsigned calls: anyone who reaches its port can \
                 prepare, commit or abort its branches (accept_unsigned_calls)"
            ),
            Trust::Keys(keys, _) => {
                tracing::info!(keys = ?keys, "obeying calls signed by these coordinator keys")
            }
        }
        let service = Arc::new(self);
        let stop = tokio_util::sync::CancellationToken::new();
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls)?;
        }
        // TCP_NODELAY on each accepted connection (the builder's flag only
        // covers listeners tonic binds itself): no 40 ms Nagle stalls.
        let server = builder
            .add_service(
                ParticipantServer::from_arc(Arc::clone(&service))
                    .max_decoding_message_size(service.max_call_bytes),
            )
            .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), {
                let stop = stop.clone();
                async move {
                    shutdown.await;
                    stop.cancel();
                }
            });
        let (served, ()) = tokio::join!(server, service.maintain(stop.clone().cancelled_owned()));
        Ok(served?)
    }

    /// The resolver's loop: every check interval, asks about in-doubt
    /// branches and applies the answers; now and then prunes the ledger.
    /// Ends when `shutdown` resolves.
    pub async fn maintain(&self, shutdown: impl Future<Output = ()> + Send) {
        let mut resolver = Resolver::new(self.resolver.clone());
        let mut ticks = tokio::time::interval(resolver.config().check_interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => return,
                _ = ticks.tick() => {}
            }
            self.resolve_due(&mut resolver).await;
            resolver.maybe_prune(&self.pool).await;
        }
    }

    async fn resolve_due(&self, resolver: &mut Resolver) {
        let due = match resolver.due(&self.pool).await {
            Ok(due) => due,
            Err(error) => {
                tracing::warn!(%error, "looking for in-doubt branches failed");
                return;
            }
        };
        for in_doubt in due {
            let Some(resolution) = resolver.ask(&in_doubt).await else {
                continue;
            };
            let branch = BranchContext {
                transaction_id: in_doubt.txn_id.clone(),
                branch: in_doubt.branch.clone(),
                coordinator: in_doubt.coordinator.clone().unwrap_or_default(),
                one_phase: false,
                traceparent: None,
            };
            let payload = in_doubt.payload.clone().unwrap_or_default();
            // The same ledger-guarded paths as a delivered decision: if the
            // coordinator's delivery arrives too, it is a duplicate.
            let applied = match resolution {
                Resolution::Commit => self.commit(&branch, &payload).await,
                Resolution::Abort => self.abort(&branch, &payload).await.map(|_| ()),
            };
            match applied {
                Ok(()) => tracing::info!(txn = %branch.transaction_id, branch = %branch.branch,
                    "resolved an in-doubt branch"),
                Err(status) => tracing::warn!(txn = %branch.transaction_id, %status,
                    "applying the resolved outcome failed; will ask again"),
            }
        }
    }
}

fn recorded_vote(entry: &Entry) -> Vote {
    match entry.result.as_str() {
        "commit" => Vote::Commit,
        "read_only" => Vote::ReadOnly,
        _ => Vote::Abort(entry.reason.clone().unwrap_or_else(|| "voted ABORT".into())),
    }
}

fn db(error: sqlx::Error) -> Status {
    Status::unavailable(format!("participant database: {error}"))
}

/// The span of one call about a branch: the transaction id under the same
/// field name as the coordinator's spans (`txn`), so that one grep (or one
/// log query) follows a transaction through both.
fn span(branch: &BranchContext, op: &'static str) -> tracing::Span {
    let span = tracing::info_span!("branch", txn = %branch.transaction_id, branch = %branch.branch, op,
            traceparent = tracing::field::Empty);
    if let Some(traceparent) = &branch.traceparent {
        span.record("traceparent", traceparent.as_str());
    }
    span
}

/// The W3C trace context a coordinator that exports traces sends along.
fn traceparent<T>(request: &Request<T>) -> Option<String> {
    let value = request.metadata().get("traceparent")?.to_str().ok()?;
    trace_context(value.to_owned())
}

/// A `traceparent` value worth keeping: version-traceid-spanid-flags is 55
/// visible ASCII characters in version 00; anything empty or far off that
/// is not a trace context.
fn trace_context(value: String) -> Option<String> {
    (!value.is_empty() && value.len() <= 128).then_some(value)
}

/// Checks the branch reference every call carries.
fn context(
    branch: Option<pb::BranchRef>,
    traceparent: Option<String>,
) -> Result<BranchContext, Status> {
    let branch = branch.ok_or_else(|| Status::invalid_argument("branch is missing"))?;
    if branch.transaction_id.is_empty() || branch.transaction_id.len() > 64 {
        return Err(Status::invalid_argument(
            "branch.transaction_id must be 1 to 64 bytes",
        ));
    }
    if branch.branch.is_empty() || branch.branch.len() > 128 {
        return Err(Status::invalid_argument(
            "branch.branch must be 1 to 128 bytes",
        ));
    }
    Ok(BranchContext {
        transaction_id: branch.transaction_id,
        branch: branch.branch,
        coordinator: branch.coordinator,
        one_phase: false,
        traceparent,
    })
}
