//! A client for the coordinator: begin, enlist, commit, rollback, and ask a
//! transaction's outcome; sagas, messages and the watch. Every call carries
//! a deadline; errors are typed by what the caller can do about them
//! ([`ClientError`], in `error`). What calls take and answer is in
//! `options`, the watch's reconnecting stream in `watch`, the channel and
//! TLS in [`crate::transport`], routing by shard map in [`crate::groups`].

use std::time::Duration;

use std::sync::Arc;

use concord_proto::v1 as pb;
use concord_proto::v1::coordinator_client::CoordinatorClient as RawClient;
use tonic::transport::Channel;

use concord_proto::connect_failed;

use crate::groups::{Router, To};
pub use crate::transport::ClientTls;
use crate::transport::{Bearer, channel};

/// Deadline of each call unless [`CoordinatorClient::with_timeout`] says
/// otherwise. Commit waits for every participant's vote, so it is generous.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) mod error;
mod options;
mod watch;

pub use error::ClientError;
pub use options::{
    BeginOptions, Begun, BranchSpec, CommitOptions, MessageState, Outcome, SagaState, SagaStatus,
};

use options::{begin_request, outcome_of};
use watch::{Watching, resumable};

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

impl std::fmt::Debug for CoordinatorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorClient")
            .field("timeout", &self.timeout)
            .field("routed", &self.router.is_some())
            .finish_non_exhaustive()
    }
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
