//! Who may call the Coordinator service (DESIGN §12, S3): the admin
//! token of the operator's calls, the client tokens of every other call,
//! and the TLS identity the node serves with.
//!
//! A client call makes this node dial a participant and sign what it sends
//! there: whoever may Begin and Commit can move what the participants
//! guard, signatures or not. So when client tokens are configured every
//! call needs one (or the admin token), checked by [`Guarded`] before the
//! request is decoded; the one exception is GetOutcome, a participant's
//! question about a branch it already holds, which answers one word and
//! changes nothing (a participant's resolver then needs no token).

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::Status;
use tonic::codegen::{Service, http};
use tonic::server::NamedService;

/// Who may call, and how: the tokens and TLS.
#[derive(Clone, Default)]
pub struct Access {
    /// When set, the operator's calls (RetryTransaction, ResolveBranch, the
    /// shard map's writes) require it (`authorization: Bearer <token>`).
    /// It is a client token too.
    pub admin_token: Option<String>,
    /// When not empty, every other call needs one of these (or the admin
    /// token); several, so that one can be replaced without a moment in
    /// which a client's token is refused.
    pub client_tokens: Vec<String>,
    /// When set, the node serves gRPC over TLS only.
    pub tls: Option<ServerTls>,
    /// Host names the console answers to besides loopback's when it
    /// listens on loopback: a reverse proxy's (`--console-host`).
    pub console_hosts: Vec<String>,
}

impl std::fmt::Debug for Access {
    // Never print a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Access")
            .field("admin_token", &self.admin_token.as_ref().map(|_| "[set]"))
            .field("client_tokens", &self.client_tokens.len())
            .field("tls", &self.tls)
            .field("console_hosts", &self.console_hosts)
            .finish()
    }
}

/// The node's TLS identity and, for mutual TLS, the clients' CA.
#[derive(Clone)]
pub struct ServerTls {
    /// PEM: the node's certificate chain.
    pub cert_pem: Vec<u8>,
    /// PEM: its private key.
    pub key_pem: Vec<u8>,
    /// PEM: when set, every client must present a certificate this CA
    /// signed (mutual TLS).
    pub client_ca_pem: Option<Vec<u8>>,
}

impl std::fmt::Debug for ServerTls {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("mutual", &self.client_ca_pem.is_some())
            .finish_non_exhaustive()
    }
}

/// The tokens a node checks callers against, kept as SHA-256 digests: a
/// call's token is hashed once and compared with each without stopping at
/// the first difference, so the time taken says nothing about how much of
/// a guess was right, nor how long a token is. The first client token is
/// kept as written, for the node's own calls ([`Credentials::own_bearer`]).
#[derive(Default)]
pub struct Credentials {
    admin: Option<Digest>,
    clients: Vec<Digest>,
    own: Option<String>,
}

type Digest = [u8; 32];

fn digest(token: &str) -> Digest {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).into()
}

/// Whether two digests are equal, looking at every byte.
fn same(a: &Digest, b: &Digest) -> bool {
    a.iter().zip(b).fold(0u8, |differ, (x, y)| differ | (x ^ y)) == 0
}

impl std::fmt::Debug for Credentials {
    // Never print a token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("admin", &self.admin.is_some())
            .field("clients", &self.clients.len())
            .finish()
    }
}

/// What a request carries: the token of `authorization: Bearer <token>`.
fn bearer(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "))
}

impl Credentials {
    pub fn of(access: &Access) -> Self {
        let clients: Vec<&String> = access
            .client_tokens
            .iter()
            .filter(|t| !t.is_empty())
            .collect();
        Self {
            admin: access
                .admin_token
                .as_deref()
                .filter(|t| !t.is_empty())
                .map(digest),
            clients: clients.iter().map(|t| digest(t)).collect(),
            own: clients.first().map(|t| (*t).clone()),
        }
    }

    /// Whether the node has an admin token (without one, its operator's
    /// calls are open to whoever may call it, and its console is
    /// read-only).
    pub fn admin_required(&self) -> bool {
        self.admin.is_some()
    }

    /// Whether client calls need a token.
    pub fn client_required(&self) -> bool {
        !self.clients.is_empty()
    }

    /// What this node shows on the calls it makes on no caller's behalf
    /// (its console's chart watching the other groups): a client token,
    /// since the nodes of a deployment share them. Never the admin token:
    /// a read needs no more, and a peer's address could be wrong.
    pub fn own_bearer(&self) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
        let token = self.own.as_ref()?;
        format!("Bearer {token}").parse().ok()
    }

    /// Ok when `headers` carry the admin token, or when the node has none.
    pub fn operator(&self, rpc: &str, headers: &http::HeaderMap) -> Result<(), Status> {
        let Some(expected) = &self.admin else {
            return Ok(());
        };
        match bearer(headers) {
            None => Err(Status::unauthenticated(format!(
                "{rpc} is an operator's call and this coordinator requires an admin token: \
                 send `authorization: Bearer <token>` (concord txn --token, or \
                 CONCORD_ADMIN_TOKEN)"
            ))),
            Some(given) if same(&digest(given), expected) => Ok(()),
            Some(_) => Err(Status::unauthenticated(format!(
                "{rpc}: the admin token does not match this coordinator's"
            ))),
        }
    }

    /// Ok when `headers` carry a client token or the admin token, or when
    /// the node requires no client token.
    pub fn client(&self, headers: &http::HeaderMap) -> Result<(), Status> {
        if self.clients.is_empty() {
            return Ok(());
        }
        let Some(given) = bearer(headers) else {
            return Err(Status::unauthenticated(
                "this coordinator requires a client token: send `authorization: Bearer \
                 <token>` (the SDKs' token option; concord txn --token)",
            ));
        };
        // Every token is compared, so that the time taken does not say
        // which one came close.
        let given = digest(given);
        let matched = self
            .clients
            .iter()
            .chain(self.admin.iter())
            .fold(false, |matched, token| same(&given, token) | matched);
        if matched {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "the token sent is none of this coordinator's client tokens",
            ))
        }
    }
}

/// The calls that need no client token: a participant's question about a
/// branch it holds (see the module's documentation).
const OPEN_PATHS: &[&str] = &["/concord.v1.Coordinator/GetOutcome"];

/// A gRPC service behind what a call must pass before its request is
/// read: the client-token check (UNAUTHENTICATED without a token it
/// accepts) and a place among the calls in flight (UNAVAILABLE with retry
/// advice when every place is taken, DESIGN §12 S4: however many
/// connections clients open, the node holds at most so many handlers).
/// Health and reflection are outside it: a node at its limit still says
/// how it is.
#[derive(Clone)]
pub struct Guarded<S> {
    inner: S,
    credentials: Arc<Credentials>,
    calls: Arc<tokio::sync::Semaphore>,
    max_calls: usize,
    /// The flag that sets `max_calls`, named when a call is refused.
    limit: &'static str,
    /// The places of the calls that need no token (GetOutcome), apart:
    /// whoever may make them without a token must not take every place,
    /// nor hold one by sending a request's body slowly.
    open_calls: Arc<tokio::sync::Semaphore>,
}

/// Calls that need no token served at once ([`OPEN_PATHS`]), and how long
/// each may take, its request's arrival included: a participant's
/// question is answered from memory or one read of the log.
const OPEN_CALLS: usize = 1_024;
const OPEN_CALL_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);

impl<S> Guarded<S> {
    /// `inner`, serving at most `max_calls` calls at once (`limit` says
    /// what sets it).
    pub fn new(
        inner: S,
        credentials: Arc<Credentials>,
        max_calls: usize,
        limit: &'static str,
    ) -> Self {
        Self {
            inner,
            credentials,
            calls: Arc::new(tokio::sync::Semaphore::new(max_calls)),
            max_calls,
            limit,
            open_calls: Arc::new(tokio::sync::Semaphore::new(OPEN_CALLS)),
        }
    }
}

/// How long a client refused for want of a place is advised to wait.
const CALLS_PUSHBACK_MS: u64 = 100;

impl<S: NamedService> NamedService for Guarded<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for Guarded<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let open = OPEN_PATHS.contains(&request.uri().path());
        if !open && let Err(status) = self.credentials.client(request.headers()) {
            return Box::pin(std::future::ready(Ok(status.into_http())));
        }
        if open {
            let Ok(place) = Arc::clone(&self.open_calls).try_acquire_owned() else {
                let status = Status::unavailable(format!(
                    "this node is answering {OPEN_CALLS} GetOutcome calls; retry after a backoff"
                ));
                return Box::pin(std::future::ready(Ok(status.into_http())));
            };
            let answer = self.inner.call(request);
            return Box::pin(async move {
                let answered = tokio::time::timeout(OPEN_CALL_DEADLINE, answer).await;
                drop(place);
                answered.unwrap_or_else(|_| {
                    Ok(Status::deadline_exceeded(format!(
                        "not answered within {} s",
                        OPEN_CALL_DEADLINE.as_secs()
                    ))
                    .into_http())
                })
            });
        }
        let Ok(place) = Arc::clone(&self.calls).try_acquire_owned() else {
            let mut status = Status::unavailable(format!(
                "this node is serving {} calls, its limit ({}): retry after a backoff",
                self.max_calls, self.limit
            ));
            status.metadata_mut().insert(
                "grpc-retry-pushback-ms",
                tonic::metadata::MetadataValue::from(CALLS_PUSHBACK_MS),
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let answered = answer.await;
            // Held until the answer starts (a watch's stream goes on without it).
            drop(place);
            answered
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(token: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(token) = token {
            headers.insert(
                http::header::AUTHORIZATION,
                format!("Bearer {token}").parse().unwrap(),
            );
        }
        headers
    }

    #[test]
    fn client_calls_take_a_client_token_or_the_admin_token() {
        let credentials = Credentials::of(&Access {
            admin_token: Some("admin".into()),
            client_tokens: vec!["old".into(), "new".into()],
            ..Default::default()
        });
        assert!(credentials.client(&with(Some("old"))).is_ok());
        assert!(credentials.client(&with(Some("new"))).is_ok());
        assert!(credentials.client(&with(Some("admin"))).is_ok());
        for refused in [None, Some("ne"), Some("newer"), Some("")] {
            let status = credentials.client(&with(refused)).unwrap_err();
            assert_eq!(status.code(), tonic::Code::Unauthenticated, "{refused:?}");
        }
        // A client token is not the admin token.
        assert!(credentials.operator("Retry", &with(Some("new"))).is_err());
        assert!(credentials.operator("Retry", &with(Some("admin"))).is_ok());
    }

    #[test]
    fn without_client_tokens_client_calls_are_open() {
        let credentials = Credentials::of(&Access {
            admin_token: Some("admin".into()),
            client_tokens: vec![String::new()],
            ..Default::default()
        });
        assert!(!credentials.client_required());
        assert!(credentials.client(&with(None)).is_ok());
    }
}
