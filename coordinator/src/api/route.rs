//! Where a call is answered (DESIGN §6, §11): here, with the runtime's
//! result, or by the node that owns the transaction — within the group
//! (another node's transaction on a shared log) or in another group (a
//! keyed request whose key's shard is theirs). One path for every RPC:
//! [`CoordinatorService::here_or_owner`] and [`send_on`].

use concord_proto::v1::coordinator_client::CoordinatorClient;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::forward::{self, Owners, Route};
use super::{CoordinatorService, convert, validate};

/// A call's answer: this node's value to answer with, or the owner's whole
/// answer to pass back.
pub(super) enum Answer<T, R> {
    Here(T),
    Forwarded(Response<R>),
}

/// Sends `request` on to `owner` (one of its nodes, the next while one
/// cannot be reached), marked as forwarded by `hop`; its answer is the
/// call's.
pub(super) async fn send_on<Q, R, F, Fut>(
    owner: Owners,
    hop: &forward::Hop,
    request: &Q,
    send: F,
) -> Result<Response<R>, Status>
where
    Q: Clone,
    F: Fn(CoordinatorClient<Channel>, Request<Q>) -> Fut,
    Fut: Future<Output = Result<Response<R>, Status>>,
{
    // Boxed: a tonic call's future is several KiB, and inline it would
    // make every request's future that large, forwarded or not.
    Box::pin(owner.call(|node| send(node, hop.request(request.clone())))).await
}

/// A request the runtime sent elsewhere though it was not kept to be sent
/// (only keyed requests in a deployment of several groups are).
pub(super) fn not_forwardable() -> Status {
    Status::internal("the request belongs to another group but was not kept to be forwarded")
}

impl CoordinatorService {
    /// The runtime's `result` for a call about one transaction, answered
    /// here, or — when another node owns the transaction — `request` sent
    /// there with `send` and its answer passed back.
    pub(super) async fn here_or_owner<T, Q, R, F, Fut>(
        &self,
        hop: &forward::Hop,
        result: Result<T, crate::runtime::Error>,
        request: &Q,
        send: F,
    ) -> Result<Answer<T, R>, Status>
    where
        Q: Clone,
        F: Fn(CoordinatorClient<Channel>, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<R>, Status>>,
    {
        match self.forward.route(hop, result)? {
            Route::Here(value) => Ok(Answer::Here(value)),
            Route::Owner(owner) => send_on(owner, hop, request, send)
                .await
                .map(Answer::Forwarded),
        }
    }

    /// A copy of a keyed request in a deployment of several groups, kept
    /// before the request is taken apart: if its key turns out to have been
    /// handed over from another group (DESIGN §11 step 3), the request goes
    /// there whole. None otherwise, at no cost.
    pub(super) fn keyed_in_groups<T: Clone>(&self, key: &str, request: &T) -> Option<T> {
        (!key.is_empty() && self.runtime.sharding().is_some()).then(|| request.clone())
    }

    /// A new transaction's answer, or, when its key was handed over to
    /// this group by the one holding the key's transaction (DESIGN §11
    /// step 3), that group's nodes to send the request to. Every other
    /// error is answered as it always was.
    pub(super) fn handed_over<T>(
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
    pub(super) fn group_of_key(
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
