//! Forwarding between coordinator nodes that share one store (DESIGN §6),
//! and to the nodes of another group (§11), and the calls a node makes to
//! other groups on a client's behalf ([`Hop::to_group`]).
//!
//! A client may call any node. A call about a transaction that another live
//! node owns (Enlist, Commit, Rollback, GetOutcome), or that belongs to
//! another group (those, GetTransaction, SubmitMessage, the operators'
//! calls, and a keyed Begin, SubmitSaga or PrepareMessage whose key's shard
//! is that group's), is sent on to that node and its answer returned as is.
//! A forwarded call carries the `concord-forwarded-by` header and is not
//! forwarded again, except once within its group after it crossed to
//! another group (the node it reached there may not own the transaction):
//! if ownership moved meanwhile, the last node answers UNAVAILABLE with the
//! owner's address in the `concord-owner` header, and the client retries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use concord_proto::v1::coordinator_client::CoordinatorClient;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

use concord_proto::metadata::{ACROSS_GROUPS, FORWARDED_BY};

/// Deadline of a forwarded call whose client set none: long enough for a
/// Commit's prepare round (its own deadline is at most 10 minutes, but a
/// client without a deadline is rare and is better told to retry).
const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// Channels to the other nodes, one per address, reused.
#[derive(Default)]
pub struct Forwarder {
    clients: Mutex<HashMap<String, CoordinatorClient<Channel>>>,
    /// TLS towards https:// nodes (the runtime's peer TLS).
    tls: Option<crate::runtime::participants::PeerTls>,
}

/// Where a call the runtime answered goes on to (DESIGN §6, §11).
pub enum Route<T> {
    /// Answered here: the runtime's result.
    Here(T),
    /// Another live node owns the transaction, or another group does: send
    /// the call there, once.
    Owner(Owners),
}

/// The node a call goes on to, and for another group its other nodes, to
/// try in turn while the one before cannot be reached.
pub struct Owners(Vec<CoordinatorClient<Channel>>);

impl Owners {
    /// Sends the call `send` makes to each node in turn until one is
    /// reached: a node that refused the connection never saw the call, so
    /// the next may take it (`runtime::rpc::connect_failed`). Any answer,
    /// an error from a node included, is the answer.
    pub async fn call<R, F, Fut>(self, mut send: F) -> Result<R, tonic::Status>
    where
        F: FnMut(CoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<R, tonic::Status>>,
    {
        let mut unreachable = None;
        for node in self.0 {
            match send(node).await {
                Err(status)
                    if status.code() == tonic::Code::Unavailable
                        && crate::runtime::rpc::connect_failed(&status) =>
                {
                    unreachable = Some(status);
                }
                answer => return answer,
            }
        }
        Err(unreachable.unwrap_or_else(|| {
            tonic::Status::unavailable("no coordinator node to send the call to")
        }))
    }
}

impl Forwarder {
    /// The one rule of every call about a transaction: answered here,
    /// unless another live node owns it and the call was not forwarded
    /// already (then it goes there; a second hop would chase a moving
    /// owner, so the client is told UNAVAILABLE with the owner instead).
    pub fn route<T>(
        &self,
        hop: &Hop,
        result: Result<T, crate::runtime::Error>,
    ) -> Result<Route<T>, tonic::Status> {
        match result {
            Err(crate::runtime::Error::OwnedElsewhere { address, .. })
                if hop.may_forward_within_group() =>
            {
                hop.across_groups.store(false, Ordering::Relaxed);
                Ok(Route::Owner(Owners(vec![self.client(&address)?])))
            }
            Err(crate::runtime::Error::OtherGroup { addresses, .. })
                if hop.may_forward_to_group() =>
            {
                hop.across_groups.store(true, Ordering::Relaxed);
                Ok(Route::Owner(self.group(&addresses)?))
            }
            other => other.map(Route::Here).map_err(super::convert::status),
        }
    }

    /// The nodes of another group, to try in turn (for a call routed
    /// there, and for the calls this node makes to every group itself:
    /// listings and watches of every group, `super::everywhere`).
    pub fn group(&self, nodes: &[String]) -> Result<Owners, tonic::Status> {
        nodes
            .iter()
            .map(|address| self.client(address))
            .collect::<Result<_, _>>()
            .map(Owners)
    }

    pub fn new(tls: Option<crate::runtime::participants::PeerTls>) -> Self {
        Self {
            clients: Mutex::new(HashMap::new()),
            tls,
        }
    }

    /// A client for the node at `address`. Connecting is lazy: a node that
    /// is down fails the call, not this.
    pub fn client(&self, address: &str) -> Result<CoordinatorClient<Channel>, tonic::Status> {
        let mut clients = self
            .clients
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|error| {
                tonic::Status::internal(format!(
                    "the owner node advertises {address:?}, which is not a URL ({error}); \
                     fix its --advertise-url"
                ))
            })?
            .connect_timeout(CONNECT_TIMEOUT)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT);
        let endpoint = match &self.tls {
            Some(tls) if address.starts_with("https://") => endpoint
                .tls_config(tls.client_config())
                .map_err(|e| tonic::Status::internal(format!("TLS towards {address}: {e}")))?,
            _ => endpoint,
        };
        // Peer nodes are named by the shard map and the leases, not by
        // clients, but a call to one carries its caller's token: never to
        // an address no node is at (`runtime::dial`, DESIGN §12 S6).
        let client = CoordinatorClient::new(crate::runtime::dial::channel(
            endpoint,
            std::sync::Arc::default(),
        ));
        clients.insert(address.to_owned(), client.clone());
        Ok(client)
    }
}

/// What an incoming call allows: whether it may be forwarded, and the
/// deadline to pass on.
pub struct Hop {
    /// How it reached this node: from a client, from a node of this group,
    /// or from a node of another group.
    came: Came,
    /// Where [`Forwarder::route`] sent it on: to another group (true) or
    /// within this one; the header [`Hop::request`] writes.
    across_groups: AtomicBool,
    deadline: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// The caller's credentials, passed on: the owner checks them too.
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Came {
    FromClient,
    WithinGroup,
    AcrossGroups,
}

impl Hop {
    pub fn of<T>(request: &Request<T>) -> Self {
        Self {
            came: match request.metadata().get(FORWARDED_BY) {
                None => Came::FromClient,
                Some(value) if value == ACROSS_GROUPS => Came::AcrossGroups,
                Some(_) => Came::WithinGroup,
            },
            across_groups: AtomicBool::new(false),
            deadline: request.metadata().get("grpc-timeout").cloned(),
            authorization: request.metadata().get("authorization").cloned(),
        }
    }

    /// One hop at most within a group: a call forwarded here by a node of
    /// this group is answered here. A call from another group may still go
    /// to the node of this group that owns its transaction.
    pub fn may_forward_within_group(&self) -> bool {
        self.came != Came::WithinGroup
    }

    /// Only a client's own call goes to another group: a node that got a
    /// call from another node and finds it another group's answers
    /// UNAVAILABLE (their maps disagree) rather than send it further.
    pub fn may_forward_to_group(&self) -> bool {
        self.came == Came::FromClient
    }

    /// A call this node makes to another group on the client's behalf
    /// (answered there, never sent further), with the client's deadline,
    /// or `deadline` when it set none.
    pub fn to_group<T>(&self, message: T, deadline: Duration) -> Request<T> {
        self.build(message, ACROSS_GROUPS, Some(deadline))
    }

    /// A stream this node opens to another group on the client's behalf:
    /// as [`Hop::to_group`], with no deadline unless the client set one.
    pub fn to_group_stream<T>(&self, message: T) -> Request<T> {
        self.build(message, ACROSS_GROUPS, None)
    }

    /// The call to send on, with the client's deadline.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let forwarded_by = if self.across_groups.load(Ordering::Relaxed) {
            ACROSS_GROUPS
        } else {
            "1"
        };
        self.build(message, forwarded_by, Some(DEFAULT_DEADLINE))
    }

    fn build<T>(
        &self,
        message: T,
        forwarded_by: &'static str,
        deadline: Option<Duration>,
    ) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(FORWARDED_BY, MetadataValue::from_static(forwarded_by));
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        match &self.deadline {
            Some(given) => {
                request.metadata_mut().insert("grpc-timeout", given.clone());
            }
            None => {
                if let Some(deadline) = deadline {
                    request.set_timeout(deadline);
                }
            }
        }
        request
    }
}
