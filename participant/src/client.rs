//! A client for the coordinator: begin, enlist, commit, rollback, and ask a
//! transaction's outcome. Every call carries a deadline; errors are typed by
//! what the caller can do about them ([`ClientError`]).

use std::time::Duration;

use std::sync::Arc;

use concord_proto::v1 as pb;
use concord_proto::v1::coordinator_client::CoordinatorClient as RawClient;
use tonic::transport::{Channel, Endpoint};

use concord_proto::connect_failed;

use crate::groups::{Router, To};

/// Deadline of each call unless [`CoordinatorClient::with_timeout`] says
/// otherwise. Commit waits for every participant's vote, so it is generous.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a call to the coordinator failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The coordinator URL could not be used.
    #[error("invalid coordinator URL {url:?}: {reason}")]
    BadUrl { url: String, reason: String },
    /// The TLS settings could not be used.
    #[error("TLS settings for {url:?} cannot be used: {reason}")]
    BadTls { url: String, reason: String },
    /// The client token cannot be sent in a header.
    #[error("the client token cannot be sent: {0}")]
    BadToken(String),
    /// The request was refused as malformed; fix it, do not retry.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No such transaction.
    #[error("not found: {0}")]
    NotFound(String),
    /// The transaction's state does not allow this (enlisting into a
    /// committed transaction, rolling back a committed one).
    #[error("failed precondition: {0}")]
    FailedPrecondition(String),
    /// A branch of that name exists with other content.
    #[error("already exists: {0}")]
    AlreadyExists(String),
    /// A limit was reached (branches per transaction).
    #[error("resource exhausted: {0}")]
    ResourceExhausted(String),
    /// The coordinator could not be reached or could not record; retrying
    /// (with the same idempotency key) is safe.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The coordinator requires a token this client did not send, or sent
    /// wrong ([`CoordinatorClient::with_token`]); retrying will not help.
    #[error("unauthenticated: {0}")]
    Unauthenticated(String),
    /// No answer in time; the outcome may still be decided — ask
    /// [`CoordinatorClient::transaction`].
    #[error("deadline exceeded: {0}")]
    DeadlineExceeded(String),
    #[error("{code:?}: {message}")]
    Other { code: tonic::Code, message: String },
}

impl From<tonic::Status> for ClientError {
    fn from(status: tonic::Status) -> Self {
        let message = status.message().to_owned();
        match status.code() {
            tonic::Code::InvalidArgument => Self::InvalidArgument(message),
            tonic::Code::NotFound => Self::NotFound(message),
            tonic::Code::FailedPrecondition => Self::FailedPrecondition(message),
            tonic::Code::AlreadyExists => Self::AlreadyExists(message),
            tonic::Code::ResourceExhausted => Self::ResourceExhausted(message),
            tonic::Code::Unavailable => Self::Unavailable(message),
            tonic::Code::Unauthenticated => Self::Unauthenticated(message),
            // tonic reports a broken connection as UNKNOWN "transport
            // error": the coordinator may be fine, the call can be retried.
            tonic::Code::Unknown if message.contains("transport error") => {
                Self::Unavailable(message)
            }
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Self::DeadlineExceeded(message)
            }
            code => Self::Other { code, message },
        }
    }
}

/// Options of [`CoordinatorClient::begin`].
#[derive(Debug, Clone, Default)]
pub struct BeginOptions {
    /// How long the transaction may stay undecided; None for the
    /// coordinator's default.
    pub timeout: Option<Duration>,
    /// Makes a retried Begin return the same transaction (R7).
    pub idempotency_key: Option<String>,
    pub description: Option<String>,
    /// Branches to enlist with the Begin, in one durable write (saves an
    /// Enlist call and a forced write per branch).
    pub branches: Vec<BranchSpec>,
}

/// A branch to enlist: the participant's URI, its payload, and optionally
/// its name.
#[derive(Debug, Clone, Default)]
pub struct BranchSpec {
    pub participant: String,
    pub payload: Vec<u8>,
    pub name: Option<String>,
}

/// Options of [`CoordinatorClient::commit_with`].
#[derive(Debug, Clone, Default)]
pub struct CommitOptions {
    /// Answer only once every participant acknowledged (R4).
    pub wait_for_completion: bool,
    /// Each participant's prepare deadline; None for the coordinator's.
    pub prepare_timeout: Option<Duration>,
}

/// A transaction's decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Committed { read_only: bool },
    Aborted { reason: String },
    Undecided,
}

/// A transaction begun on the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Begun {
    pub transaction_id: String,
    /// False when the idempotency key found an earlier transaction.
    pub created: bool,
    /// Names of the branches enlisted with the Begin.
    pub branches: Vec<String>,
}

/// TLS towards the coordinator.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// PEM: the CA that signed the coordinator's certificate.
    pub ca_pem: Vec<u8>,
    /// PEM certificate chain and private key of this client, for a
    /// coordinator that requires mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the coordinator's certificate is checked against, when it
    /// is not the URL's host (e.g. `localhost` for `https://127.0.0.1:7400`).
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("mutual", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// A cheap-to-clone client for one coordinator, or for a deployment of
/// several groups ([`CoordinatorClient::connect_groups`]).
#[derive(Clone)]
pub struct CoordinatorClient {
    /// The node given (the first, with several): every call goes there
    /// without a router; the watch and [`CoordinatorClient::raw`] use it.
    raw: RawClient<Channel>,
    timeout: Duration,
    router: Option<Arc<Router>>,
    /// `Bearer <token>`, sent with every call when the coordinator
    /// requires a client token ([`CoordinatorClient::with_token`]).
    token: Option<Bearer>,
}

/// The value of an `authorization` header.
pub(crate) type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

impl std::fmt::Debug for CoordinatorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorClient")
            .field("timeout", &self.timeout)
            .field("routed", &self.router.is_some())
            .finish_non_exhaustive()
    }
}

/// A channel to the coordinator node at `url`, lazy: it connects on first
/// use and reconnects by itself.
pub(crate) fn channel(url: &str, tls: Option<&ClientTls>) -> Result<Channel, ClientError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| ClientError::BadUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    if let Some(tls) = tls {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| ClientError::BadTls {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A connection to a coordinator that vanished (host lost, a
        // partition that swallowed its packets) is found dead by pings
        // and dialled again, instead of failing every later call.
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy())
}

impl CoordinatorClient {
    /// A client for the coordinator at `url` (e.g. `http://127.0.0.1:7400`).
    /// Connects on first use and reconnects by itself.
    pub fn connect(url: impl Into<String>) -> Result<Self, ClientError> {
        Self::dial(url.into(), None)
    }

    /// A client for a coordinator that serves TLS (`https://...`), checking
    /// its certificate against `tls.ca_pem` and, for mutual TLS, presenting
    /// `tls.identity`.
    pub fn connect_tls(url: impl Into<String>, tls: &ClientTls) -> Result<Self, ClientError> {
        Self::dial(url.into(), Some(tls))
    }

    fn dial(url: String, tls: Option<&ClientTls>) -> Result<Self, ClientError> {
        Ok(Self {
            raw: RawClient::new(channel(&url, tls)?),
            timeout: DEFAULT_CALL_TIMEOUT,
            router: None,
            token: None,
        })
    }

    /// A client for a deployment of several groups of coordinator nodes
    /// (docs/design.md §11), given the addresses of some of its nodes
    /// (any groups). It reads the shard map from them and sends each call
    /// to a node of the group that owns it, trying the group's next node
    /// when one refuses the connection ([`crate::groups`]). Against one
    /// group, calls spread over the addresses given. Connects on first use.
    pub fn connect_groups<I, S>(urls: I) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::dial_groups(urls.into_iter().map(Into::into).collect(), None)
    }

    /// [`CoordinatorClient::connect_groups`] over TLS.
    pub fn connect_groups_tls<I, S>(urls: I, tls: &ClientTls) -> Result<Self, ClientError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self::dial_groups(urls.into_iter().map(Into::into).collect(), Some(tls))
    }

    fn dial_groups(urls: Vec<String>, tls: Option<&ClientTls>) -> Result<Self, ClientError> {
        let first = urls.first().ok_or_else(|| ClientError::BadUrl {
            url: String::new(),
            reason: "no coordinator address given".into(),
        })?;
        // Every address is checked now, not when a call first needs it.
        for url in &urls {
            channel(url, tls)?;
        }
        let mut client = Self::dial(first.clone(), tls)?;
        client.router = Some(Arc::new(Router::new(urls, tls.cloned())));
        Ok(client)
    }

    /// Sets the deadline of every call.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `token` with every call (`authorization: Bearer <token>`): a
    /// coordinator started with `--client-token` refuses calls without
    /// one (docs/security.md).
    pub fn with_token(mut self, token: &str) -> Result<Self, ClientError> {
        let bearer = format!("Bearer {token}").parse().map_err(|_| {
            ClientError::BadToken("a token is printable ASCII, without spaces at its ends".into())
        })?;
        self.token = Some(bearer);
        Ok(self)
    }

    /// The generated client, for calls this wrapper does not cover (they
    /// carry no token: add the `authorization` header yourself).
    pub fn raw(&self) -> RawClient<Channel> {
        self.raw.clone()
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        request
    }

    async fn call<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ClientError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status.into()),
            Err(_) => Err(ClientError::DeadlineExceeded(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
        }
    }

    /// Sends `request` about `to` with `rpc`: to the node given, or, with
    /// several groups, to a node of the group that owns it, then to the
    /// group's next nodes while each refuses the connection (such a call
    /// never left this process).
    async fn send<R: Clone, T, F, Fut>(
        &self,
        to: To<'_>,
        request: R,
        rpc: F,
    ) -> Result<T, ClientError>
    where
        F: Fn(RawClient<Channel>, tonic::Request<R>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let Some(router) = &self.router else {
            return self
                .call(rpc(self.raw.clone(), self.request(request)))
                .await;
        };
        let mut nodes = router.nodes_for(to, self.token.as_ref()).await;
        let last = nodes.pop().unwrap_or_else(|| self.raw.clone());
        for node in nodes {
            match tokio::time::timeout(self.timeout, rpc(node, self.request(request.clone()))).await
            {
                Ok(Err(status)) if connect_failed(&status) => continue,
                Ok(answer) => return answer.map(tonic::Response::into_inner).map_err(Into::into),
                Err(_) => {
                    return Err(ClientError::DeadlineExceeded(format!(
                        "no answer within {} ms",
                        self.timeout.as_millis()
                    )));
                }
            }
        }
        self.call(rpc(last, self.request(request))).await
    }

    /// A Begin, to the group of its key's shard (any node without a key).
    async fn send_begin(
        &self,
        request: pb::BeginRequest,
    ) -> Result<pb::BeginResponse, ClientError> {
        let key = (!request.idempotency_key.is_empty()).then(|| request.idempotency_key.clone());
        self.send(
            To::New(key.as_deref()),
            request,
            |mut raw, request| async move { raw.begin(request).await },
        )
        .await
    }

    pub async fn begin(&self, options: BeginOptions) -> Result<Begun, ClientError> {
        let answer = self.send_begin(begin_request(options)).await?;
        Ok(Begun {
            transaction_id: answer.transaction_id,
            created: answer.created,
            branches: answer.branches,
        })
    }

    /// Begins with `options.branches` and commits in the same call: one
    /// round trip instead of two. Answers once the decision is durable. With
    /// an idempotency key, a retry commits (or reports) the same transaction.
    pub async fn begin_and_commit(
        &self,
        options: BeginOptions,
    ) -> Result<(Begun, Outcome), ClientError> {
        let answer = self
            .send_begin(pb::BeginRequest {
                commit: true,
                ..begin_request(options)
            })
            .await?;
        let outcome = answer
            .commit
            .as_ref()
            .map_or(Outcome::Undecided, outcome_of);
        Ok((
            Begun {
                transaction_id: answer.transaction_id,
                created: answer.created,
                branches: answer.branches,
            },
            outcome,
        ))
    }

    /// Enlists the participant at `participant` with `payload`; returns the
    /// branch name. Give `branch` to make a retried enlist safe.
    pub async fn enlist(
        &self,
        transaction_id: &str,
        participant: &str,
        payload: impl Into<Vec<u8>>,
        branch: Option<&str>,
    ) -> Result<String, ClientError> {
        let request = pb::EnlistRequest {
            transaction_id: transaction_id.to_owned(),
            participant: participant.to_owned(),
            payload: payload.into(),
            branch: branch.unwrap_or_default().to_owned(),
        };
        Ok(self
            .send(
                To::Txn(transaction_id),
                request,
                |mut raw, request| async move { raw.enlist(request).await },
            )
            .await?
            .branch)
    }

    /// Commits; answers once the decision is durable.
    pub async fn commit(&self, transaction_id: &str) -> Result<Outcome, ClientError> {
        self.commit_with(transaction_id, CommitOptions::default())
            .await
    }

    pub async fn commit_with(
        &self,
        transaction_id: &str,
        options: CommitOptions,
    ) -> Result<Outcome, ClientError> {
        let request = pb::CommitRequest {
            transaction_id: transaction_id.to_owned(),
            wait_for_completion: options.wait_for_completion,
            prepare_timeout_ms: options
                .prepare_timeout
                .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0),
        };
        let answer = self
            .send(
                To::Txn(transaction_id),
                request,
                |mut raw, request| async move { raw.commit(request).await },
            )
            .await?;
        Ok(outcome_of(&answer))
    }

    pub async fn rollback(&self, transaction_id: &str, reason: &str) -> Result<(), ClientError> {
        let request = pb::RollbackRequest {
            transaction_id: transaction_id.to_owned(),
            reason: reason.to_owned(),
        };
        self.send(
            To::Txn(transaction_id),
            request,
            |mut raw, request| async move { raw.rollback(request).await },
        )
        .await?;
        Ok(())
    }

    pub async fn transaction(&self, transaction_id: &str) -> Result<pb::Transaction, ClientError> {
        let request = pb::GetTransactionRequest {
            transaction_id: transaction_id.to_owned(),
            // Payloads are for operators (`concord txn show --payloads`).
            include_payloads: false,
        };
        self.send(
            To::Txn(transaction_id),
            request,
            |mut raw, request| async move { raw.get_transaction(request).await },
        )
        .await
    }

    /// Submits a saga (see [`crate::saga::Saga`], which builds the request).
    pub async fn submit_saga(
        &self,
        request: pb::SubmitSagaRequest,
    ) -> Result<SagaStatus, ClientError> {
        let key = (!request.idempotency_key.is_empty()).then(|| request.idempotency_key.clone());
        let answer = self
            .send(
                To::New(key.as_deref()),
                request,
                |mut raw, request| async move { raw.submit_saga(request).await },
            )
            .await?;
        let state = SagaState::from_wire(answer.state).ok_or_else(|| ClientError::Other {
            code: tonic::Code::Internal,
            message: format!("transaction {} is not a saga", answer.transaction_id),
        })?;
        Ok(SagaStatus {
            transaction_id: answer.transaction_id,
            created: answer.created,
            state,
            reason: answer.reason,
        })
    }

    /// Follows transactions as the coordinator's log records their changes
    /// (`WatchTransactions`; `request` holds the filters and where to
    /// start). The stream resumes by itself: when a connection drops, the
    /// node stops, or the watch falls behind (UNAVAILABLE or
    /// RESOURCE_EXHAUSTED), it reconnects after a backoff (exponential,
    /// jittered, capped at 5 s) with the cursor of the last change it gave
    /// you, so that it misses nothing the log keeps and repeats nothing.
    /// The first connection is made before this returns: a watch of what
    /// comes next sees every change recorded after, and a bad filter is
    /// this call's error. The watch asks the coordinator where it starts
    /// (`mark_start`), so that one that loses its connection before its
    /// first change resumes from there too; that mark is handed out only
    /// if `request` asked for it. An error that cannot be resumed is yielded once and ends the
    /// stream. The connect of each attempt has this client's deadline; the
    /// stream itself has none.
    pub async fn watch(
        &self,
        mut request: pb::WatchTransactionsRequest,
    ) -> Result<
        futures::stream::BoxStream<'static, Result<pb::TransactionChange, ClientError>>,
        ClientError,
    > {
        use backon::BackoffBuilder;
        use futures::StreamExt;
        let backoff = || {
            backon::ExponentialBuilder::default()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(Duration::from_secs(5))
                .with_jitter()
                .without_max_times()
                .build()
        };
        let show_mark = request.mark_start;
        request.mark_start = true;
        let mut watch = Watching {
            show_mark,
            raw: self.raw.clone(),
            timeout: self.timeout,
            token: self.token.clone(),
            request,
            open: None,
            backoff: backoff(),
            ended: false,
        };
        // The first connection is made here, so that a watch of what comes
        // next starts now and a bad filter is this call's error.
        watch.open = Some(watch.connect().await?);
        Ok(futures::stream::unfold(watch, move |mut watch| async move {
            if watch.ended {
                return None;
            }
            loop {
                let open = match watch.open.as_mut() {
                    Some(open) => open,
                    None => match watch.connect().await {
                        Ok(open) => watch.open.insert(open),
                        Err(status) if resumable(&status) => {
                            watch.pause(&status).await;
                            continue;
                        }
                        Err(status) => {
                            watch.ended = true;
                            return Some((Err(status.into()), watch));
                        }
                    },
                };
                match open.message().await {
                    // Where the stream starts: resumed from there if it
                    // breaks before its first change.
                    Ok(Some(mark)) if mark.transaction_id.is_empty() => {
                        if mark.cursor.is_empty() {
                            watch.request.from_oldest = true;
                        }
                        watch.request.cursor.clone_from(&mark.cursor);
                        if watch.show_mark {
                            return Some((Ok(mark), watch));
                        }
                    }
                    Ok(Some(change)) => {
                        watch.backoff = backoff();
                        watch.request.cursor = change.cursor.clone();
                        return Some((Ok(change), watch));
                    }
                    // The server ended the stream without a status: a
                    // proxy's doing; resume, after the same backoff.
                    Ok(None) => {
                        watch.open = None;
                        let ended = tonic::Status::unavailable("the stream ended");
                        watch.pause(&ended).await;
                    }
                    Err(status) if resumable(&status) => {
                        watch.open = None;
                        watch.pause(&status).await;
                    }
                    Err(status) => {
                        watch.ended = true;
                        return Some((Err(status.into()), watch));
                    }
                }
            }
        })
        .boxed())
    }

    /// Prepares a transactional message (see [`crate::message::Message`],
    /// which builds the request).
    pub async fn prepare_message(
        &self,
        request: pb::PrepareMessageRequest,
    ) -> Result<pb::PrepareMessageResponse, ClientError> {
        let key = (!request.idempotency_key.is_empty()).then(|| request.idempotency_key.clone());
        self.send(
            To::New(key.as_deref()),
            request,
            |mut raw, request| async move { raw.prepare_message(request).await },
        )
        .await
    }

    /// Submits a prepared message whose outbox row committed: it is
    /// delivered. With `wait`, answers once every destination
    /// acknowledged. A dropped message is [`ClientError::FailedPrecondition`].
    pub async fn submit_message(
        &self,
        transaction_id: &str,
        wait: bool,
    ) -> Result<MessageState, ClientError> {
        let request = pb::SubmitMessageRequest {
            transaction_id: transaction_id.to_owned(),
            wait,
        };
        let answer = self
            .send(
                To::Txn(transaction_id),
                request,
                |mut raw, request| async move { raw.submit_message(request).await },
            )
            .await?;
        MessageState::from_wire(answer.state).ok_or_else(|| ClientError::Other {
            code: tonic::Code::Internal,
            message: format!("message {transaction_id} answered state {}", answer.state),
        })
    }

    /// The decision as a participant sees it: presumed abort for unknown ids.
    pub async fn outcome(&self, transaction_id: &str) -> Result<Outcome, ClientError> {
        let request = pb::GetOutcomeRequest {
            transaction_id: transaction_id.to_owned(),
        };
        let answer = self
            .send(
                To::Txn(transaction_id),
                request,
                |mut raw, request| async move { raw.get_outcome(request).await },
            )
            .await?;
        Ok(match pb::Outcome::try_from(answer.outcome) {
            Ok(pb::Outcome::Committed) => Outcome::Committed { read_only: false },
            Ok(pb::Outcome::Aborted) => Outcome::Aborted {
                reason: String::new(),
            },
            _ => Outcome::Undecided,
        })
    }
}

fn begin_request(options: BeginOptions) -> pb::BeginRequest {
    pb::BeginRequest {
        timeout_ms: options
            .timeout
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
            .unwrap_or(0),
        idempotency_key: options.idempotency_key.unwrap_or_default(),
        description: options.description.unwrap_or_default(),
        branches: options
            .branches
            .into_iter()
            .map(|b| pb::BranchSpec {
                participant: b.participant,
                payload: b.payload,
                branch: b.name.unwrap_or_default(),
            })
            .collect(),
        commit: false,
        prepare_timeout_ms: 0,
    }
}

fn outcome_of(answer: &pb::CommitResponse) -> Outcome {
    match pb::Outcome::try_from(answer.outcome) {
        Ok(pb::Outcome::Committed) => Outcome::Committed {
            read_only: answer.read_only,
        },
        Ok(pb::Outcome::Aborted) => Outcome::Aborted {
            reason: answer.reason.clone(),
        },
        _ => Outcome::Undecided,
    }
}

/// Where a saga is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SagaState {
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
}

impl SagaState {
    pub fn from_wire(state: i32) -> Option<Self> {
        match pb::TransactionState::try_from(state).ok()? {
            pb::TransactionState::Running => Some(Self::Running),
            pb::TransactionState::Compensating => Some(Self::Compensating),
            pb::TransactionState::Completed => Some(Self::Completed),
            pb::TransactionState::Compensated => Some(Self::Compensated),
            pb::TransactionState::Failed => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Compensated | Self::Failed)
    }
}

/// Where a transactional message is (DESIGN §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageState {
    /// Recorded; its local transaction not yet seen to commit.
    Prepared,
    /// Its local transaction committed; being delivered.
    Delivering,
    /// Every destination acknowledged.
    Delivered,
    /// Its local transaction never committed; nothing was delivered.
    Dropped,
}

impl MessageState {
    pub fn from_wire(state: i32) -> Option<Self> {
        match pb::TransactionState::try_from(state).ok()? {
            pb::TransactionState::Prepared => Some(Self::Prepared),
            pb::TransactionState::Delivering => Some(Self::Delivering),
            pb::TransactionState::Delivered => Some(Self::Delivered),
            pb::TransactionState::Dropped => Some(Self::Dropped),
            _ => None,
        }
    }
}

/// The answer to a submitted saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaStatus {
    pub transaction_id: String,
    /// False when the idempotency key found an earlier saga.
    pub created: bool,
    pub state: SagaState,
    /// Why it compensated or failed.
    pub reason: String,
}

/// A [`CoordinatorClient::watch`] between changes.
struct Watching<B> {
    /// Whether the caller asked to see where the stream starts (the watch
    /// always asks, to resume from there).
    show_mark: bool,
    raw: RawClient<Channel>,
    timeout: Duration,
    token: Option<Bearer>,
    /// With the cursor of the last change handed out, once there is one.
    request: pb::WatchTransactionsRequest,
    open: Option<tonic::Streaming<pb::TransactionChange>>,
    backoff: B,
    ended: bool,
}

impl<B: Iterator<Item = Duration>> Watching<B> {
    async fn connect(&mut self) -> Result<tonic::Streaming<pb::TransactionChange>, tonic::Status> {
        // No grpc-timeout: the stream lasts as long as the watch does; only
        // waiting for its first answer is bounded.
        let mut request = tonic::Request::new(self.request.clone());
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        match tokio::time::timeout(self.timeout, self.raw.watch_transactions(request)).await {
            Ok(answer) => answer.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::unavailable("no answer within the deadline")),
        }
    }

    /// Waits out the backoff before reconnecting; a watch the server ended
    /// names the cursor to resume from (it may be past the last change
    /// handed out: changes the filters left out).
    async fn pause(&mut self, status: &tonic::Status) {
        if let Some(cursor) = status
            .metadata()
            .get("concord-resume-cursor")
            .and_then(|value| value.to_str().ok())
        {
            self.request.cursor = cursor.to_owned();
        }
        let delay = self.backoff.next().unwrap_or(Duration::from_secs(5));
        tracing::debug!(code = ?status.code(), message = status.message(), ?delay, "watch resuming");
        tokio::time::sleep(delay).await;
    }
}

/// Whether a watch that ended with `status` resumes: the node or the
/// connection went away, or the watch fell behind.
fn resumable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::ResourceExhausted
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
    )
}
