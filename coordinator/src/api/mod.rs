//! The gRPC face of the coordinator: validates every request
//! ([`validate`]), hands it to the runtime, and maps the answer or error to
//! the wire ([`convert`]). One module per family of RPCs — `two_phase`,
//! `saga`, `message`, `operator`, `watch`, `shards` — each
//! handler a function of the [`CoordinatorService`]; `server` assembles
//! the server with gRPC health and reflection ([`serve`]) and `access` the
//! credentials in front of it.
//!
//! A call about a transaction another live node owns is forwarded there,
//! one hop at most, and a keyed request whose key's shard is another
//! group's goes to that group: one path for all (`route`, [`forward`],
//! DESIGN §6 and §11); a listing or a watch of every group is gathered by
//! `everywhere`.

use concord_proto::v1 as pb;
use concord_proto::v1::coordinator_server::Coordinator;
use tonic::{Request, Response, Status};

use crate::runtime::Runtime;

mod access;
pub mod convert;
mod everywhere;
pub mod forward;
mod message;
mod operator;
mod route;
mod saga;
mod server;
mod shards;
mod two_phase;
pub mod validate;
mod watch;

pub use access::{Access, Credentials, ServerTls};
pub use server::{serve, serve_incoming};
pub use validate::Limits;

/// The stream of a WatchTransactions call.
type WatchStream = futures::stream::BoxStream<'static, Result<pb::TransactionChange, Status>>;

/// The `concord.v1.Coordinator` service.
pub struct CoordinatorService {
    runtime: Runtime,
    limits: Limits,
    /// One permit per watch served at once (DESIGN §12, `max_watches`).
    watches: std::sync::Arc<tokio::sync::Semaphore>,
    forward: std::sync::Arc<forward::Forwarder>,
    /// The tokens the operator's calls are checked against (client calls
    /// are checked before they reach the service: `access::Guarded`).
    credentials: std::sync::Arc<Credentials>,
}

impl CoordinatorService {
    /// The service of `runtime`, with its request limits and credentials.
    pub fn new(runtime: Runtime, limits: Limits, credentials: std::sync::Arc<Credentials>) -> Self {
        Self {
            forward: std::sync::Arc::new(forward::Forwarder::new(
                runtime.config().peer_tls.clone(),
            )),
            watches: std::sync::Arc::new(tokio::sync::Semaphore::new(limits.max_watches)),
            runtime,
            limits,
            credentials,
        }
    }

    /// Checks the caller's admin token, when this node requires one.
    fn admin<T>(&self, rpc: &str, request: &Request<T>) -> Result<(), Status> {
        self.admits(rpc, request.metadata())
    }

    /// The tokens this node checks callers against.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// Whether `metadata` carries the admin token this node requires (Ok
    /// when it requires none): the rule of the operator's RPCs, for the
    /// console to tell a browser whether it may steer.
    pub fn admits(&self, rpc: &str, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        self.credentials.operator(rpc, metadata.as_ref())
    }

    /// A transaction as the API shows it, with its group and shard when
    /// the deployment has several groups (DESIGN §11).
    fn placed(&self, view: crate::model::TxnView) -> pb::Transaction {
        let id = view.id;
        let mut txn = convert::transaction(view);
        if let Some(sharding) = self.runtime.sharding() {
            txn.group = sharding.map.group_of(id).to_owned();
            txn.shard = sharding
                .map
                .shard_of(id)
                .map_or(0, |shard| u32::from(shard.0));
        }
        txn
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn begin(
        &self,
        request: Request<pb::BeginRequest>,
    ) -> Result<Response<pb::BeginResponse>, Status> {
        two_phase::begin(self, request).await
    }

    async fn enlist(
        &self,
        request: Request<pb::EnlistRequest>,
    ) -> Result<Response<pb::EnlistResponse>, Status> {
        two_phase::enlist(self, request).await
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        two_phase::commit(self, request).await
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        two_phase::rollback(self, request).await
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        operator::get_transaction(self, request).await
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        operator::list_transactions(self, request).await
    }

    type WatchTransactionsStream = WatchStream;

    async fn watch_transactions(
        &self,
        request: Request<pb::WatchTransactionsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        watch::watch_transactions(self, request).await
    }

    async fn submit_saga(
        &self,
        request: Request<pb::SubmitSagaRequest>,
    ) -> Result<Response<pb::SubmitSagaResponse>, Status> {
        saga::submit_saga(self, request).await
    }

    async fn prepare_message(
        &self,
        request: Request<pb::PrepareMessageRequest>,
    ) -> Result<Response<pb::PrepareMessageResponse>, Status> {
        message::prepare_message(self, request).await
    }

    async fn submit_message(
        &self,
        request: Request<pb::SubmitMessageRequest>,
    ) -> Result<Response<pb::SubmitMessageResponse>, Status> {
        message::submit_message(self, request).await
    }

    async fn retry_transaction(
        &self,
        request: Request<pb::RetryTransactionRequest>,
    ) -> Result<Response<pb::RetryTransactionResponse>, Status> {
        operator::retry_transaction(self, request).await
    }

    async fn resolve_branch(
        &self,
        request: Request<pb::ResolveBranchRequest>,
    ) -> Result<Response<pb::ResolveBranchResponse>, Status> {
        operator::resolve_branch(self, request).await
    }

    async fn get_outcome(
        &self,
        request: Request<pb::GetOutcomeRequest>,
    ) -> Result<Response<pb::GetOutcomeResponse>, Status> {
        two_phase::get_outcome(self, request).await
    }

    async fn get_shard_map(
        &self,
        request: Request<pb::GetShardMapRequest>,
    ) -> Result<Response<pb::GetShardMapResponse>, Status> {
        shards::get_shard_map(self, request).await
    }

    async fn put_shard_map(
        &self,
        request: Request<pb::PutShardMapRequest>,
    ) -> Result<Response<pb::PutShardMapResponse>, Status> {
        shards::put_shard_map(self, request).await
    }

    async fn export_shard_keys(
        &self,
        request: Request<pb::ExportShardKeysRequest>,
    ) -> Result<Response<pb::ExportShardKeysResponse>, Status> {
        shards::export_shard_keys(self, request).await
    }

    async fn adopt_shard_keys(
        &self,
        request: Request<pb::AdoptShardKeysRequest>,
    ) -> Result<Response<pb::AdoptShardKeysResponse>, Status> {
        shards::adopt_shard_keys(self, request).await
    }
}
