//! The gRPC face of the coordinator: validates every request
//! ([`validate`]), hands it to the runtime, and maps the answer or error to
//! the wire ([`convert`]). `server` assembles the server with gRPC health
//! and reflection ([`serve`]).
//!
//! On a store several nodes share, a call about a transaction another live
//! node owns is forwarded there, one hop at most ([`forward`], DESIGN §6).

use concord_proto::v1 as pb;
use concord_proto::v1::coordinator_server::{Coordinator, CoordinatorServer};
use futures::StreamExt;
use tonic::{Request, Response, Status};

use crate::model::{OperatorAction, Resolution, TxnId, TxnState};
use crate::runtime::watch::{WatchFilter, WatchStart};
use crate::runtime::{
    BeginTxn, Committed, Decision, EnlistBranch, ListQuery, Outcome, Runtime, SubmitSaga,
};
use forward::Route;

mod access;
pub mod convert;
mod everywhere;
use everywhere::watch;
pub mod forward;
mod server;
pub mod validate;

pub use access::{Access, Credentials, ServerTls};
pub use server::{serve, serve_incoming};
pub use validate::Limits;

/// The `concord.v1.Coordinator` service.
/// The stream of a WatchTransactions call.
type WatchStream = futures::stream::BoxStream<'static, Result<pb::TransactionChange, Status>>;

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
    /// WatchTransactions past its admission ([`Coordinator::watch_transactions`]).
    async fn watch_unbounded(
        &self,
        request: Request<pb::WatchTransactionsRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let hop = forward::Hop::of(&request);
        let request = request.into_inner();
        let filter = WatchFilter {
            states: validate::states(&request.states)?,
            kind: validate::kind(request.kind)?,
            needs_attention: request.needs_attention,
            id_prefix: validate::id_prefix(&request.id_prefix)?,
        };
        let sharding = self.runtime.sharding();
        let group = validate::group(sharding.as_deref(), &request.group)?;
        if let (Some(sharding), Some(group)) = (&sharding, group)
            && group != sharding.group
        {
            if !hop.may_forward_to_group() {
                return Err(Status::unavailable(format!(
                    "a watch of group {group:?} reached group {:?}: the nodes' shard \
                     maps disagree for now; retry",
                    sharding.group
                )));
            }
            // One group's watch, asked of another: its stream, as it is.
            let stream = Box::pin(
                self.forward
                    .group(sharding.map.nodes_of_group(group))?
                    .call(|mut node| {
                        let call = hop.to_group_stream(request.clone());
                        async move { node.watch_transactions(call).await }
                    }),
            )
            .await?;
            return Ok(Response::new(Box::pin(stream.into_inner())));
        }
        let fresh = if request.from_oldest {
            WatchStart::Oldest
        } else {
            WatchStart::Next
        };
        let every_group = sharding
            .as_ref()
            .filter(|_| group.is_none() && hop.may_forward_to_group());
        let Some(sharding) = every_group else {
            // This node's group only (or no groups at all).
            let start = match request.cursor.as_str() {
                "" => fresh,
                cursor => WatchStart::After(validate::watch_cursor(cursor)?),
            };
            let start = self
                .runtime
                .watch_start(start)
                .await
                .map_err(store_status)?;
            let changes = self
                .runtime
                .watch(filter, start)
                .await
                .map_err(store_status)?;
            let stream = futures::stream::unfold(changes, |mut changes| async move {
                let item = changes.recv().await?;
                Some((
                    item.map(convert::change).map_err(convert::watch_end),
                    changes,
                ))
            });
            let mark = request.mark_start.then(|| {
                Ok(pb::TransactionChange {
                    cursor: match start {
                        WatchStart::After(cursor) => cursor.to_string(),
                        WatchStart::Oldest | WatchStart::Next => String::new(),
                    },
                    ..Default::default()
                })
            });
            return Ok(Response::new(Box::pin(
                futures::stream::iter(mark).chain(stream),
            )));
        };
        // DESIGN §11: every group's changes, merged here.
        let resumed = match request.cursor.as_str() {
            "" => None,
            cursor => Some(validate::watch_positions(&sharding.map, cursor)?),
        };
        let own = &sharding.group;
        let start = watch::start_of(own, resumed.as_ref(), fresh);
        let start = self
            .runtime
            .watch_start(start)
            .await
            .map_err(store_status)?;
        let mut positions = resumed.clone().unwrap_or_default();
        positions.set(
            own,
            match start {
                WatchStart::After(cursor) => Some(cursor),
                WatchStart::Oldest | WatchStart::Next => None,
            },
        );
        let changes = self
            .runtime
            .watch(filter, start)
            .await
            .map_err(store_status)?;
        let metadata = watch::metadata(&hop);
        let filters = pb::WatchTransactionsRequest {
            cursor: String::new(),
            from_oldest: false,
            group: String::new(),
            mark_start: false,
            ..request.clone()
        };
        let others = (sharding.map.groups.iter())
            .filter(|g| g.name != *own)
            .map(|g| async {
                let start = watch::start_of(&g.name, resumed.as_ref(), fresh);
                let stream = watch::other_group(
                    watch::OtherGroup {
                        forward: std::sync::Arc::clone(&self.forward),
                        name: g.name.clone(),
                        nodes: g.nodes.clone(),
                        request: filters.clone(),
                        metadata: metadata.clone(),
                    },
                    start,
                );
                (g.name.clone(), watch::started(stream).await)
            });
        let mut groups = vec![watch::own_group(own.clone(), changes)];
        for (group, (stream, start)) in futures::future::join_all(others).await {
            // Where each group's stream starts is in the watch's cursors
            // from the first (the start mark's included), so that a client
            // resuming before any change of that group misses none of it.
            if let Some(start) = start
                && positions.get(&group).is_none()
            {
                positions.set(&group, start);
            }
            groups.push(stream);
        }
        let mark = request.mark_start.then(|| {
            Ok(pb::TransactionChange {
                cursor: positions.encode(),
                ..Default::default()
            })
        });
        Ok(Response::new(Box::pin(
            futures::stream::iter(mark).chain(watch::merge(groups, positions)),
        )))
    }

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

    /// Whether `metadata` carries the admin token this node requires (Ok
    /// when it requires none): the rule of the operator's RPCs, for the
    /// console to tell a browser whether it may steer.
    /// The tokens this node checks callers against.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    pub fn admits(&self, rpc: &str, metadata: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        self.credentials.operator(rpc, metadata.as_ref())
    }
}

impl CoordinatorService {
    /// DESIGN §11: a version that gives this group a shard from a time
    /// already (nearly) passed is taken only when the group the shard
    /// leaves holds that switch too (`concord shards` writes the leaving
    /// group first), asked now; otherwise both groups would begin
    /// transactions of the shard, each placing the other's in itself.
    async fn confirm_late_arrivals(
        &self,
        hop: &forward::Hop,
        map: &crate::shard::ShardMap,
    ) -> Result<(), Status> {
        let Some(sharding) = self.runtime.sharding() else {
            return Ok(());
        };
        let now = self.runtime.config().clock.now_ms();
        let mut held_by: std::collections::HashMap<String, crate::shard::ShardMap> =
            std::collections::HashMap::new();
        for (shard, from, at_ms) in map.late_arrivals(&sharding.map, &sharding.group, now) {
            if !held_by.contains_key(&from) {
                let answer = self
                    .forward
                    .group(map.nodes_of_group(&from))?
                    .call(|mut node| {
                        let call = hop.to_group(pb::GetShardMapRequest {}, CONFIRM_DEADLINE);
                        async move { node.get_shard_map(call).await }
                    })
                    .await
                    .map_err(|status| {
                        Status::unavailable(format!(
                            "shard {} comes to group {:?} at {at_ms} ms, already past here, and \
                             group {from:?}, which it leaves, could not be asked whether it \
                             holds that switch ({}); retry once it answers",
                            shard.0,
                            sharding.group,
                            status.message()
                        ))
                    })?
                    .into_inner();
                let theirs = answer
                    .map
                    .ok_or_else(|| Status::internal(format!("group {from:?} sent no map")))
                    .and_then(|wire| {
                        crate::shard::ShardMap::from_wire(wire).map_err(|e| {
                            Status::internal(format!(
                                "group {from:?} sent a map that is not one: {e}"
                            ))
                        })
                    })?;
                held_by.insert(from.clone(), theirs);
            }
            let holds = held_by.get(&from).is_some_and(|theirs| {
                theirs
                    .owners
                    .get(usize::from(shard.0))
                    .is_some_and(|history| {
                        history
                            .iter()
                            .any(|o| o.group == sharding.group && o.from_ms == at_ms)
                    })
            });
            if !holds {
                return Err(Status::failed_precondition(format!(
                    "shard {} would come to group {:?} at {at_ms} ms, already past here, but \
                     group {from:?}, which it leaves, does not hold that switch: write the \
                     version to group {from:?} first (concord shards does), or both groups \
                     would begin transactions of the shard",
                    shard.0, sharding.group
                )));
            }
        }
        Ok(())
    }
}

/// How long PutShardMap waits for another group's map when it must confirm
/// a switch with it.
const CONFIRM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

/// A watch that could not start: the log could not be read.
fn store_status(error: crate::store::StoreError) -> Status {
    convert::status(error.into())
}

impl CoordinatorService {
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

    /// A copy of a keyed request in a deployment of several groups, kept
    /// before the request is taken apart: if its key turns out to have been
    /// handed over from another group (DESIGN §11 step 3), the request goes
    /// there whole. None otherwise, at no cost.
    fn keyed_in_groups<T: Clone>(&self, key: &str, request: &T) -> Option<T> {
        (!key.is_empty() && self.runtime.sharding().is_some()).then(|| request.clone())
    }

    /// A new transaction's answer, or, when its key was handed over to
    /// this group by the one holding the key's transaction (DESIGN §11
    /// step 3), that group's nodes to send the request to. Every other
    /// error is answered as it always was.
    fn handed_over<T>(
        &self,
        hop: &forward::Hop,
        result: Result<T, crate::runtime::Error>,
    ) -> Result<Route<T>, Status> {
        match result {
            Err(error @ crate::runtime::Error::OtherGroup { .. }) => {
                self.forward.route(hop, Err(error))
            }
            other => other.map(Route::Here).map_err(convert::status),
        }
    }

    /// DESIGN §11: a new transaction with idempotency key `key` belongs to
    /// the group that owns the key's shard. A client for a node of that
    /// group when it is not this node's (the call is forwarded there, once);
    /// None to begin it here. A bad key is refused here, forwarded nowhere.
    fn group_of_key(
        &self,
        hop: &forward::Hop,
        key: &str,
    ) -> Result<Option<forward::Owners>, Status> {
        let key = validate::idempotency_key(key)?;
        let placed = self.runtime.key_in_group(key.as_deref());
        if matches!(placed, Err(crate::runtime::Error::OtherGroup { .. }))
            && (!hop.may_forward_to_group()
                || key
                    .as_deref()
                    .is_some_and(|key| self.runtime.key_was_here(key)))
        {
            // The key's shard moved away from this group, whose log may
            // hold the key's transaction: looked up here first, and the
            // request sent on only if it does not (the runtime begins
            // nothing new for the key). Or the request was sent here by
            // the group the shard moved to, which found the key handed
            // over from this group: answered here, from the key.
            return Ok(None);
        }
        match self.forward.route(hop, placed)? {
            Route::Owner(owner) => Ok(Some(owner)),
            Route::Here(()) => Ok(None),
        }
    }
}

#[tonic::async_trait]
impl Coordinator for CoordinatorService {
    async fn begin(
        &self,
        request: Request<pb::BeginRequest>,
    ) -> Result<Response<pb::BeginResponse>, Status> {
        let hop = forward::Hop::of(&request);
        let mut request = request.into_inner();
        if let Some(owner) = self.group_of_key(&hop, &request.idempotency_key)? {
            return Box::pin(owner.call(|mut node| {
                let forwarded = hop.request(request.clone());
                async move { node.begin(forwarded).await }
            }))
            .await;
        }
        let original = self.keyed_in_groups(&request.idempotency_key, &request);
        let request_digest = convert::begin_digest(&mut request);
        let begin = BeginTxn {
            timeout: validate::optional_ms(
                "timeout_ms",
                request.timeout_ms,
                validate::MIN_TXN_TIMEOUT_MS,
                validate::MAX_TXN_TIMEOUT_MS,
            )?,
            idempotency_key: validate::idempotency_key(&request.idempotency_key)?,
            request_digest,
            description: validate::text("description", &request.description)?,
            branches: validate::begin_branches(
                &self.limits,
                self.runtime.config().max_branches,
                request.branches,
            )?,
        };
        let prepare_timeout = validate::optional_ms(
            "prepare_timeout_ms",
            request.prepare_timeout_ms,
            1,
            validate::MAX_PREPARE_TIMEOUT_MS,
        )?;
        if request.commit && begin.branches.is_empty() {
            return Err(Status::invalid_argument(
                "commit: a transaction committed in its Begin needs at least one branch in \
                 `branches`",
            ));
        }
        let begun = if request.commit {
            self.runtime.begin_to_commit(begin).await
        } else {
            self.runtime.begin(begin).await
        };
        let begun = match (self.handed_over(&hop, begun)?, original) {
            (Route::Here(begun), _) => begun,
            (Route::Owner(owner), Some(original)) => {
                return Box::pin(owner.call(|mut node| {
                    let forwarded = hop.request(original.clone());
                    async move { node.begin(forwarded).await }
                }))
                .await;
            }
            (Route::Owner(_), None) => return Err(not_forwardable()),
        };
        let mut state = convert::state(begun.state);
        let commit = if request.commit {
            let committed = self
                .runtime
                .commit(begun.id, false, prepare_timeout)
                .await
                .map_err(convert::status)?;
            let answer = commit_response(&committed);
            state = answer.state();
            Some(answer)
        } else {
            None
        };
        Ok(Response::new(pb::BeginResponse {
            transaction_id: begun.id.to_string(),
            created: begun.created,
            state: state.into(),
            branches: begun.branches,
            commit,
        }))
    }

    async fn enlist(
        &self,
        request: Request<pb::EnlistRequest>,
    ) -> Result<Response<pb::EnlistResponse>, Status> {
        let hop = forward::Hop::of(&request);
        let request = request.into_inner();
        let id = validate::txn_id("transaction_id", &request.transaction_id)?;
        let participant = validate::endpoint("participant", &request.participant)?;
        validate::payload(&self.limits, &request.payload)?;
        let name = validate::branch_name(&request.branch)?;
        let result = self
            .runtime
            .enlist(
                id,
                EnlistBranch {
                    participant,
                    payload: request.payload.clone(),
                    name,
                },
            )
            .await;
        let enlisted = match self.forward.route(&hop, result)? {
            // Boxed, here and in each forwarding below: a tonic call's
            // future is several KiB, and inline it would make every
            // request's future that large, forwarded or not.
            Route::Owner(owner) => {
                return Box::pin(owner.call(|mut node| {
                    let forwarded = hop.request(request.clone());
                    async move { node.enlist(forwarded).await }
                }))
                .await;
            }
            Route::Here(value) => value,
        };
        Ok(Response::new(pb::EnlistResponse {
            branch: enlisted.name,
            created: enlisted.created,
        }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitRequest>,
    ) -> Result<Response<pb::CommitResponse>, Status> {
        let hop = forward::Hop::of(&request);
        let request = request.into_inner();
        let id = validate::txn_id("transaction_id", &request.transaction_id)?;
        let prepare_timeout = validate::optional_ms(
            "prepare_timeout_ms",
            request.prepare_timeout_ms,
            1,
            validate::MAX_PREPARE_TIMEOUT_MS,
        )?;
        let result = self
            .runtime
            .commit(id, request.wait_for_completion, prepare_timeout)
            .await;
        let committed = match self.forward.route(&hop, result)? {
            Route::Owner(owner) => {
                return Box::pin(owner.call(|mut node| {
                    let forwarded = hop.request(request.clone());
                    async move { node.commit(forwarded).await }
                }))
                .await;
            }
            Route::Here(value) => value,
        };
        Ok(Response::new(commit_response(&committed)))
    }

    async fn rollback(
        &self,
        request: Request<pb::RollbackRequest>,
    ) -> Result<Response<pb::RollbackResponse>, Status> {
        let hop = forward::Hop::of(&request);
        let request = request.into_inner();
        let id = validate::txn_id("transaction_id", &request.transaction_id)?;
        let reason = validate::text("reason", &request.reason)?
            .unwrap_or_else(|| "rolled back by the client".into());
        let state = match self
            .forward
            .route(&hop, self.runtime.rollback(id, reason).await)?
        {
            Route::Owner(owner) => {
                return Box::pin(owner.call(|mut node| {
                    let forwarded = hop.request(request.clone());
                    async move { node.rollback(forwarded).await }
                }))
                .await;
            }
            Route::Here(value) => value,
        };
        Ok(Response::new(pb::RollbackResponse {
            state: convert::state(state).into(),
        }))
    }

    async fn get_transaction(
        &self,
        request: Request<pb::GetTransactionRequest>,
    ) -> Result<Response<pb::Transaction>, Status> {
        let hop = forward::Hop::of(&request);
        let request = request.into_inner();
        let id = validate::txn_id("transaction_id", &request.transaction_id)?;
        // Within a group every node reads the same log; another group's
        // transaction is in its own (DESIGN §11): ask one of its nodes.
        let view = match self
            .forward
            .route(&hop, self.runtime.transaction(id).await)?
        {
            Route::Owner(owner) => {
                return Box::pin(owner.call(|mut node| {
                    let forwarded = hop.request(request.clone());
                    async move { node.get_transaction(forwarded).await }
                }))
                .await;
            }
            Route::Here(view) => view,
        };
        let mut txn = self.placed(view);
        if !request.include_payloads {
            for branch in &mut txn.branches {
                branch.payload.clear();
            }
            for step in &mut txn.steps {
                step.action.clear();
                step.compensation.clear();
            }
        }
        Ok(Response::new(txn))
    }

    async fn list_transactions(
        &self,
        request: Request<pb::ListTransactionsRequest>,
    ) -> Result<Response<pb::ListTransactionsResponse>, Status> {
        let hop = forward::Hop::of(&request);
        let request = request.into_inner();
        let states = validate::states(&request.states)?;
        let limit = validate::page_size(request.page_size)?;
        let kind = validate::kind(request.kind)?;
        let text = validate::search_text(&request.text)?;
        let mut before = validate::page_token(&request.page_token)?;
        if let Some(age) = validate::min_age_ms(request.min_age_ms)? {
            // Ids are UUIDv7, ordered by the time they were minted: "begun
            // at least `age` ago" is "id below the first id of that moment".
            let now = self.runtime.config().clock.now_ms();
            let bound = TxnId::from_parts(now.saturating_sub(age), 0);
            before = Some(before.map_or(bound, |cursor| cursor.min(bound)));
        }
        let sharding = self.runtime.sharding();
        let group = validate::group(sharding.as_deref(), &request.group)?;
        // DESIGN §11: the other groups to ask for their page, when the
        // listing is of every group and a client asked for it.
        let mut others = Vec::new();
        if let Some(sharding) = &sharding {
            match group {
                None if hop.may_forward_to_group() => {
                    others = (sharding.map.groups.iter())
                        .map(|g| g.name.clone())
                        .filter(|name| *name != sharding.group)
                        .collect();
                }
                Some(group) if group != sharding.group => {
                    if !hop.may_forward_to_group() {
                        return Err(Status::unavailable(format!(
                            "a listing of group {group:?} reached group {:?}: the \
                             nodes' shard maps disagree for now; retry",
                            sharding.group
                        )));
                    }
                    // One group's listing, asked of another: its answer.
                    return Box::pin(
                        self.forward
                            .group(sharding.map.nodes_of_group(group))?
                            .call(|mut node| {
                                let call =
                                    hop.to_group(request.clone(), everywhere::GROUP_DEADLINE);
                                async move { node.list_transactions(call).await }
                            }),
                    )
                    .await;
                }
                _ => {}
            }
        }
        let query = ListQuery {
            states,
            needs_attention: request.needs_attention,
            before,
            limit,
            text,
        };
        // The other groups are asked for the page this node lists, its
        // cursor and age already made one id bound.
        let asked = pb::ListTransactionsRequest {
            page_token: before.map(|id| id.to_string()).unwrap_or_default(),
            min_age_ms: 0,
            page_size: limit,
            ..request
        };
        let (local, remote) = tokio::join!(
            self.runtime.list(&query),
            everywhere::ask_groups(
                &self.forward,
                &hop,
                sharding.as_ref().map(|s| &*s.map),
                &others,
                &asked
            )
        );
        let page = local.map_err(convert::status)?;
        let here = everywhere::GroupPage {
            transactions: page
                .views
                .into_iter()
                .filter(|view| kind.is_none_or(|kind| view.kind == kind))
                .map(|view| (view.id, self.placed(view)))
                .collect(),
            next: page.next,
        };
        let mut pages = vec![here];
        let mut skipped_groups = Vec::new();
        for (group, answer) in remote {
            match answer {
                Ok(page) => pages.push(page),
                Err(status) => {
                    tracing::warn!(%group, code = ?status.code(), reason = status.message(),
                        "listing every group: this group's page is missing");
                    skipped_groups.push(pb::SkippedGroup {
                        group,
                        reason: format!("{:?}: {}", status.code(), status.message()),
                    });
                }
            }
        }
        let (transactions, next) = everywhere::merge(pages, limit as usize);
        Ok(Response::new(pb::ListTransactionsResponse {
            transactions,
            next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
            skipped_groups,
        }))
    }

    type WatchTransactionsStream = WatchStream;

    async fn watch_transactions(
        &self,
        request: Request<pb::WatchTransactionsRequest>,
    ) -> Result<Response<Self::WatchTransactionsStream>, Status> {
        // DESIGN §12: each watch holds a stream, its buffer and a tail of
        // the log on this node for as long as its client stays; a node
        // serves at most `max_watches` at once (the console's own service
        // has a count of its own).
        let permit = std::sync::Arc::clone(&self.watches)
            .try_acquire_owned()
            .map_err(|_| {
                Status::resource_exhausted(format!(
                    "this node serves {} watches, its limit (--max-watches); retry after a \
                     backoff, or watch another node",
                    self.limits.max_watches
                ))
            })?;
        let response = self.watch_unbounded(request).await?;
        Ok(response.map(|stream| {
            // The permit goes when the stream does.
            let held: Self::WatchTransactionsStream = Box::pin(stream.map(move |change| {
                let _held = &permit;
                change
            }));
            held
        }))
    }

    async fn submit_saga(
        &self,
        request: Request<pb::SubmitSagaRequest>,
    ) -> Result<Response<pb::SubmitSagaResponse>, Status> {
        let hop = forward::Hop::of(&request);
        let mut request = request.into_inner();
        if let Some(owner) = self.group_of_key(&hop, &request.idempotency_key)? {
            return Box::pin(owner.call(|mut node| {
                let forwarded = hop.request(request.clone());
                async move { node.submit_saga(forwarded).await }
            }))
            .await;
        }
        let original = self.keyed_in_groups(&request.idempotency_key, &request);
        let request_digest = convert::saga_digest(&mut request);
        let submit = SubmitSaga {
            idempotency_key: validate::idempotency_key(&request.idempotency_key)?,
            request_digest,
            description: validate::text("description", &request.description)?,
            wait: request.wait,
            steps: validate::saga_steps(&self.limits, request.steps)?,
        };
        let accepted = match (
            self.handed_over(&hop, self.runtime.submit_saga(submit).await)?,
            original,
        ) {
            (Route::Here(accepted), _) => accepted,
            (Route::Owner(owner), Some(original)) => {
                return Box::pin(owner.call(|mut node| {
                    let forwarded = hop.request(original.clone());
                    async move { node.submit_saga(forwarded).await }
                }))
                .await;
            }
            (Route::Owner(_), None) => return Err(not_forwardable()),
        };
        Ok(Response::new(pb::SubmitSagaResponse {
            transaction_id: accepted.id.to_string(),
            created: accepted.created,
            state: convert::state(accepted.state).into(),
            reason: accepted.reason.unwrap_or_default(),
        }))
    }

    async fn prepare_message(
        &self,
        request: Request<pb::PrepareMessageRequest>,
    ) -> Result<Response<pb::PrepareMessageResponse>, Status> {
        let hop = forward::Hop::of(&request);
        let mut request = request.into_inner();
        if let Some(owner) = self.group_of_key(&hop, &request.idempotency_key)? {
            return Box::pin(owner.call(|mut node| {
                let forwarded = hop.request(request.clone());
                async move { node.prepare_message(forwarded).await }
            }))
            .await;
        }
        let original = self.keyed_in_groups(&request.idempotency_key, &request);
        let request_digest = convert::message_digest(&mut request);
        let mut prepare =
            validate::prepare_message(&self.limits, self.runtime.config().max_branches, request)?;
        prepare.request_digest = request_digest;
        let accepted = match (
            self.handed_over(&hop, self.runtime.prepare_message(prepare).await)?,
            original,
        ) {
            (Route::Here(accepted), _) => accepted,
            (Route::Owner(owner), Some(original)) => {
                return Box::pin(owner.call(|mut node| {
                    let forwarded = hop.request(original.clone());
                    async move { node.prepare_message(forwarded).await }
                }))
                .await;
            }
            (Route::Owner(_), None) => return Err(not_forwardable()),
        };
        Ok(Response::new(pb::PrepareMessageResponse {
            transaction_id: accepted.id.to_string(),
            created: accepted.created,
            state: convert::state(accepted.state).into(),
        }))
    }

    async fn submit_message(
        &self,
        request: Request<pb::SubmitMessageRequest>,
    ) -> Result<Response<pb::SubmitMessageResponse>, Status> {
        let hop = forward::Hop::of(&request);
        let request = request.into_inner();
        let id = validate::txn_id("transaction_id", &request.transaction_id)?;
        let result = self.runtime.submit_message(id, request.wait).await;
        let state: TxnState = match self.forward.route(&hop, result)? {
            Route::Owner(owner) => {
                return Box::pin(owner.call(|mut node| {
                    let forwarded = hop.request(request.clone());
                    async move { node.submit_message(forwarded).await }
                }))
                .await;
            }
            Route::Here(value) => value,
        };
        Ok(Response::new(pb::SubmitMessageResponse {
            state: convert::state(state).into(),
        }))
    }

    async fn retry_transaction(
        &self,
        request: Request<pb::RetryTransactionRequest>,
    ) -> Result<Response<pb::RetryTransactionResponse>, Status> {
        self.admin("RetryTransaction", &request)?;
        let hop = forward::Hop::of(&request);
        let request = request.into_inner();
        let id = validate::txn_id("transaction_id", &request.transaction_id)?;
        let (retried, state) = match self.forward.route(&hop, self.runtime.retry(id).await)? {
            Route::Owner(owner) => {
                return Box::pin(owner.call(|mut node| {
                    let forwarded = hop.request(request.clone());
                    async move { node.retry_transaction(forwarded).await }
                }))
                .await;
            }
            Route::Here(value) => value,
        };
        Ok(Response::new(pb::RetryTransactionResponse {
            retried,
            state: convert::state(state).into(),
        }))
    }

    async fn resolve_branch(
        &self,
        request: Request<pb::ResolveBranchRequest>,
    ) -> Result<Response<pb::ResolveBranchResponse>, Status> {
        self.admin("ResolveBranch", &request)?;
        let hop = forward::Hop::of(&request);
        let request = request.into_inner();
        let id = validate::txn_id("transaction_id", &request.transaction_id)?;
        let action = OperatorAction {
            branch: validate::branch_name(&request.branch)?.ok_or_else(|| {
                Status::invalid_argument("branch is empty: name the branch or step to resolve")
            })?,
            outcome: match pb::Resolution::try_from(request.outcome) {
                Ok(pb::Resolution::Committed) => Resolution::Committed,
                Ok(pb::Resolution::Aborted) => Resolution::Aborted,
                Ok(pb::Resolution::Compensated) => Resolution::Compensated,
                _ => {
                    return Err(Status::invalid_argument(format!(
                        "outcome is {}: give COMMITTED, ABORTED or COMPENSATED",
                        request.outcome
                    )));
                }
            },
            reason: validate::required_text("reason", &request.reason, 1024)?,
            operator: validate::required_text("operator", &request.operator, 256)?,
            at_ms: self.runtime.config().clock.now_ms(),
        };
        let state = match self
            .forward
            .route(&hop, self.runtime.resolve(id, action).await)?
        {
            Route::Owner(owner) => {
                return Box::pin(owner.call(|mut node| {
                    let forwarded = hop.request(request.clone());
                    async move { node.resolve_branch(forwarded).await }
                }))
                .await;
            }
            Route::Here(value) => value,
        };
        Ok(Response::new(pb::ResolveBranchResponse {
            state: convert::state(state).into(),
        }))
    }

    async fn get_outcome(
        &self,
        request: Request<pb::GetOutcomeRequest>,
    ) -> Result<Response<pb::GetOutcomeResponse>, Status> {
        let hop = forward::Hop::of(&request);
        let request = request.into_inner();
        let id = validate::txn_id("transaction_id", &request.transaction_id)?;
        let decision = match self.forward.route(&hop, self.runtime.outcome(id).await)? {
            Route::Owner(owner) => {
                return Box::pin(owner.call(|mut node| {
                    let forwarded = hop.request(request.clone());
                    async move { node.get_outcome(forwarded).await }
                }))
                .await;
            }
            Route::Here(value) => value,
        };
        let outcome = match decision {
            None => pb::Outcome::Undecided,
            Some(Decision::Commit) => pb::Outcome::Committed,
            Some(Decision::Abort) => pb::Outcome::Aborted,
        };
        Ok(Response::new(pb::GetOutcomeResponse {
            outcome: outcome.into(),
        }))
    }

    async fn get_shard_map(
        &self,
        _request: Request<pb::GetShardMapRequest>,
    ) -> Result<Response<pb::GetShardMapResponse>, Status> {
        let sharding = self.runtime.sharding().ok_or_else(|| {
            Status::failed_precondition(
                "this node runs without a shard map: its deployment has one group",
            )
        })?;
        Ok(Response::new(pb::GetShardMapResponse {
            map: Some(convert::shard_map(&sharding.map)),
            group: sharding.group.clone(),
            now_ms: self.runtime.config().clock.now_ms(),
            pending: sharding
                .pending_handovers()
                .into_iter()
                .map(|(shard, from_ms)| pb::ShardSwitch {
                    shard: u32::from(shard.0),
                    from_ms,
                })
                .collect(),
        }))
    }

    async fn put_shard_map(
        &self,
        request: Request<pb::PutShardMapRequest>,
    ) -> Result<Response<pb::PutShardMapResponse>, Status> {
        self.admin("PutShardMap", &request)?;
        let hop = forward::Hop::of(&request);
        let map = validate::shard_map(request.into_inner().map)?;
        self.confirm_late_arrivals(&hop, &map).await?;
        let version = self
            .runtime
            .put_shard_map(map)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::PutShardMapResponse { version }))
    }

    async fn export_shard_keys(
        &self,
        request: Request<pb::ExportShardKeysRequest>,
    ) -> Result<Response<pb::ExportShardKeysResponse>, Status> {
        self.admin("ExportShardKeys", &request)?;
        let request = request.into_inner();
        let shard = validate::shard(request.shard)?;
        let limit = if request.limit == 0 {
            1_000
        } else {
            request.limit.min(10_000)
        };
        let (keys, next) = self
            .runtime
            .shard_keys(shard, request.from_ms, &request.after, limit)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::ExportShardKeysResponse {
            keys: keys.into_iter().map(convert::handed_key).collect(),
            next_after: next.unwrap_or_default(),
        }))
    }

    async fn adopt_shard_keys(
        &self,
        request: Request<pb::AdoptShardKeysRequest>,
    ) -> Result<Response<pb::AdoptShardKeysResponse>, Status> {
        self.admin("AdoptShardKeys", &request)?;
        let request = request.into_inner();
        let shard = validate::shard(request.shard)?;
        let keys = validate::handed_keys(request.keys)?;
        self.runtime
            .adopt_shard_keys(shard, request.from_ms, keys, request.last)
            .await
            .map_err(convert::status)?;
        Ok(Response::new(pb::AdoptShardKeysResponse {}))
    }
}

/// A request the runtime sent elsewhere though it was not kept to be sent
/// (only keyed requests in a deployment of several groups are).
fn not_forwardable() -> Status {
    Status::internal("the request belongs to another group but was not kept to be forwarded")
}

/// Headroom over the payload limit for the rest of a request, so that an
/// oversized payload still decodes and gets the precise "payload is N bytes"
/// answer rather than a generic one.
const MESSAGE_OVERHEAD_BYTES: usize = 1024 * 1024;

/// Commit's answer, for Commit and for a Begin that commits.
fn commit_response(committed: &Committed) -> pb::CommitResponse {
    let (reason, read_only) = match &committed.outcome {
        Outcome::Committed { read_only } => (String::new(), *read_only),
        Outcome::Aborted { reason } => (reason.clone(), false),
    };
    pb::CommitResponse {
        outcome: convert::outcome(&committed.outcome).into(),
        reason,
        read_only,
        state: convert::state(committed.state).into(),
    }
}
