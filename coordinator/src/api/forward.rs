//! Forwarding between coordinator nodes that share one store (DESIGN §6),
//! and to the nodes of another group (§11).
//!
//! A client may call any node. A call about a transaction that another live
//! node owns (Enlist, Commit, Rollback, GetOutcome), or that belongs to
//! another group (those, GetTransaction, SubmitMessage, the operators'
//! calls, and a keyed Begin, SubmitSaga or PrepareMessage whose key's shard
//! is that group's), is sent on to that node and its answer returned as is.
//! A forwarded call carries the `concord-forwarded-by` header and is never
//! forwarded again: if ownership moved meanwhile, or a call sent to another
//! group reached a node of it that does not own the transaction, the second
//! node answers UNAVAILABLE with the owner's address in the `concord-owner`
//! header, and the client retries.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use concord_proto::v1::coordinator_client::CoordinatorClient;
use tonic::Request;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};

/// Marks a call one node forwarded to another.
pub const FORWARDED_BY: &str = "concord-forwarded-by";

/// On an UNAVAILABLE answer: where the transaction's owner is.
pub const OWNER: &str = "concord-owner";

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

/// Where a call the runtime answered goes on to (DESIGN §6).
pub enum Route<T> {
    /// Answered here: the runtime's result.
    Here(T),
    /// Another live node owns the transaction: send the call there, once.
    Owner(CoordinatorClient<Channel>),
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
            Err(
                crate::runtime::Error::OwnedElsewhere { address, .. }
                | crate::runtime::Error::OtherGroup { address, .. },
            ) if hop.may_forward() => Ok(Route::Owner(self.client(&address)?)),
            other => other.map(Route::Here).map_err(super::convert::status),
        }
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
        let client = CoordinatorClient::new(endpoint.connect_lazy());
        clients.insert(address.to_owned(), client.clone());
        Ok(client)
    }
}

/// What an incoming call allows: whether it may be forwarded, and the
/// deadline to pass on.
pub struct Hop {
    forwarded: bool,
    deadline: Option<MetadataValue<tonic::metadata::Ascii>>,
    /// The caller's credentials, passed on: the owner checks them too.
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
}

impl Hop {
    pub fn of<T>(request: &Request<T>) -> Self {
        Self {
            forwarded: request.metadata().contains_key(FORWARDED_BY),
            deadline: request.metadata().get("grpc-timeout").cloned(),
            authorization: request.metadata().get("authorization").cloned(),
        }
    }

    /// One hop at most: a call that was forwarded here is answered here.
    pub fn may_forward(&self) -> bool {
        !self.forwarded
    }

    /// The call to send on, with the client's deadline.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert(FORWARDED_BY, MetadataValue::from_static("1"));
        if let Some(authorization) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", authorization.clone());
        }
        match &self.deadline {
            Some(deadline) => {
                request
                    .metadata_mut()
                    .insert("grpc-timeout", deadline.clone());
            }
            None => request.set_timeout(DEFAULT_DEADLINE),
        }
        request
    }
}
