//! Sending each call to a node of the group that owns it, in a deployment
//! of several groups of coordinator nodes (docs/design.md §11), so that no
//! node has to forward it: [`CoordinatorClient::connect_groups`].
//!
//! The client reads the shard map from any of the addresses it was given
//! (`GetShardMap`) and again once it is [`REFRESH`] old. A call about a
//! transaction goes to the group that owns the transaction's shard at the
//! millisecond in its id; a keyed Begin, SubmitSaga or PrepareMessage to
//! the owner of its key's shard now; a keyless one to any node (it stays in
//! the group it reaches). A map read before a shard moved only costs a
//! forwarded call until the next read: nodes forward what reaches the wrong
//! group. A deployment of one group (no map) has its calls spread over the
//! addresses given.
//!
//! [`CoordinatorClient::connect_groups`]: crate::CoordinatorClient::connect_groups

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use concord_proto::v1 as pb;
use concord_proto::v1::coordinator_client::CoordinatorClient as RawClient;

use concord_shard::{ShardMap, ShardedId};
use tonic::transport::Channel;

use crate::transport::{Bearer, ClientTls, channel};

/// How long a map read is followed before it is read again.
pub const REFRESH: Duration = Duration::from_secs(5);

/// Deadline of reading the map.
const READ_TIMEOUT: Duration = Duration::from_secs(2);

/// What a call is about, for [`Router::nodes_for`].
#[derive(Clone, Copy, Debug)]
pub(crate) enum To<'a> {
    /// A transaction, by id.
    Txn(&'a str),
    /// A new transaction, with its idempotency key if any.
    New(Option<&'a str>),
}

/// What is known of the deployment.
enum Known {
    /// Several groups: the map.
    Sharded(Arc<ShardMap>),
    /// One group: the nodes answered that they run without a map.
    OneGroup,
}

/// The map and the channels to every node named.
pub(crate) struct Router {
    seeds: Vec<String>,
    tls: Option<ClientTls>,
    channels: Mutex<HashMap<String, RawClient<Channel>>>,
    known: Mutex<Option<(Known, Instant)>>,
    /// Serialises reads of the map, so that calls arriving together when
    /// it is stale read it once.
    reading: tokio::sync::Mutex<()>,
    /// Spreads calls that may go to any node.
    turn: AtomicUsize,
}

impl Router {
    pub(crate) fn new(seeds: Vec<String>, tls: Option<ClientTls>) -> Self {
        Self {
            seeds,
            tls,
            channels: Mutex::new(HashMap::new()),
            known: Mutex::new(None),
            reading: tokio::sync::Mutex::new(()),
            turn: AtomicUsize::new(0),
        }
    }

    /// The nodes to send a call about `to` to, in the order to try them: a
    /// node that refuses the connection never saw the call, so the next
    /// may take it.
    pub(crate) async fn nodes_for(
        &self,
        to: To<'_>,
        token: Option<&Bearer>,
    ) -> Vec<RawClient<Channel>> {
        let addresses = match self.known(token).await {
            Some(map) => self.owners(&map, to),
            None => self.rotated(&self.seeds),
        };
        addresses
            .iter()
            .filter_map(|address| self.client(address))
            .collect()
    }

    /// The addresses of the group that owns `to`, the first spread as the
    /// coordinator's forwarding spreads them.
    fn owners(&self, map: &ShardMap, to: To<'_>) -> Vec<String> {
        let (group, spread) = match to {
            To::Txn(id) => match uuid::Uuid::parse_str(id) {
                Ok(id) => (map.group_of(id), usize::from(id.rand_a())),
                // The coordinator answers what is wrong with it.
                Err(_) => return self.rotated(&self.seeds),
            },
            To::New(Some(key)) => {
                let shard = map.shard_for_key(key);
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                (map.owner_at(shard, now), usize::from(shard.0))
            }
            To::New(None) => {
                let every: Vec<String> = map
                    .groups
                    .iter()
                    .flat_map(|g| g.nodes.iter().cloned())
                    .collect();
                return self.rotated(&every);
            }
        };
        let mut nodes = map
            .groups
            .iter()
            .find(|g| g.name == group)
            .map(|g| g.nodes.clone())
            .unwrap_or_default();
        if nodes.is_empty() {
            return self.rotated(&self.seeds);
        }
        let first = spread % nodes.len();
        nodes.rotate_left(first);
        nodes
    }

    fn rotated(&self, addresses: &[String]) -> Vec<String> {
        let mut addresses = addresses.to_vec();
        if !addresses.is_empty() {
            let first = self.turn.fetch_add(1, Ordering::Relaxed) % addresses.len();
            addresses.rotate_left(first);
        }
        addresses
    }

    /// The map if the deployment has one, read again once [`REFRESH`] old
    /// from the addresses given and the nodes the map names; None for one
    /// group. When no node answers, the map held is kept (another read is
    /// tried [`REFRESH`] later); with none held, calls go to the addresses
    /// given, which forward them.
    async fn known(&self, token: Option<&Bearer>) -> Option<Arc<ShardMap>> {
        if let Some(known) = self.fresh() {
            return known;
        }
        let _reading = self.reading.lock().await;
        if let Some(known) = self.fresh() {
            return known;
        }
        let held = self.held();
        let mut sources = self.rotated(&self.seeds);
        if let Some(map) = &held {
            sources.extend(map.groups.iter().flat_map(|g| g.nodes.iter().cloned()));
        }
        let read = self.read(&sources, token).await;
        let known = match (read, held) {
            // A node that has not followed a newer version yet answers an
            // older one: the higher version wins (§11).
            (Some(Known::Sharded(read)), Some(held)) if held.version > read.version => {
                Known::Sharded(held)
            }
            (Some(known), _) => known,
            (None, Some(held)) => Known::Sharded(held),
            (None, None) => return None,
        };
        let map = match &known {
            Known::Sharded(map) => Some(Arc::clone(map)),
            Known::OneGroup => None,
        };
        *self.known.lock().unwrap_or_else(|p| p.into_inner()) = Some((known, Instant::now()));
        map
    }

    /// The map from the first of `sources` that gives one, or says it has
    /// none.
    async fn read(&self, sources: &[String], token: Option<&Bearer>) -> Option<Known> {
        for source in sources {
            let Some(mut client) = self.client(source) else {
                continue;
            };
            let mut request = tonic::Request::new(pb::GetShardMapRequest {});
            request.set_timeout(READ_TIMEOUT);
            if let Some(token) = token {
                request
                    .metadata_mut()
                    .insert("authorization", token.clone());
            }
            match tokio::time::timeout(READ_TIMEOUT, client.get_shard_map(request)).await {
                Ok(Ok(answer)) => {
                    if let Some(Ok(map)) = answer.into_inner().map.map(ShardMap::from_wire) {
                        return Some(Known::Sharded(Arc::new(map)));
                    }
                }
                Ok(Err(status)) if status.code() == tonic::Code::FailedPrecondition => {
                    return Some(Known::OneGroup);
                }
                _ => {}
            }
        }
        None
    }

    /// The map held, however old.
    fn held(&self) -> Option<Arc<ShardMap>> {
        match self
            .known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            Some((Known::Sharded(map), _)) => Some(Arc::clone(map)),
            _ => None,
        }
    }

    /// What was read less than [`REFRESH`] ago: `Some(None)` for one group.
    fn fresh(&self) -> Option<Option<Arc<ShardMap>>> {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        match known.as_ref() {
            Some((known, at)) if at.elapsed() < REFRESH => Some(match known {
                Known::Sharded(map) => Some(Arc::clone(map)),
                Known::OneGroup => None,
            }),
            _ => None,
        }
    }

    /// A client for `address`, made once and reused; None for an address
    /// that is not a URL (a map naming one is the operator's to fix).
    fn client(&self, address: &str) -> Option<RawClient<Channel>> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = channels.get(address) {
            return Some(client.clone());
        }
        let client = RawClient::new(channel(address, self.tls.as_ref()).ok()?);
        channels.insert(address.to_owned(), client.clone());
        Some(client)
    }
}
