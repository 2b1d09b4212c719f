//! Calls to participants: one reused gRPC channel per endpoint, and the
//! Participant RPCs, each bounded by a deadline (R5) that is both sent to the
//! participant (`grpc-timeout`) and enforced here. Every call goes through
//! [`batch`] when batching is on, and alone otherwise or to a participant
//! that does not implement `Batch`; the branch RPCs share one path
//! ([`rpc::BranchRpc`]) and differ only in how their answer is read. A
//! message's check-back (`CheckMessage`) goes alone.
//!
//! A channel no call has used for [`IDLE_CHANNEL`] is let go (its
//! connection closes), so that the endpoints clients once named do not
//! each hold a connection and its pings forever (DESIGN §12, S4).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use concord_proto::signature::{CallSigner, SignedCall};
use concord_proto::v1::participant_client::ParticipantClient;
use concord_proto::v1::{self as pb, BranchRef};
use dashmap::DashMap;
use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::{Channel, Endpoint};
use tracing::Instrument;

use super::batch;
use super::dial::DialPolicy;
pub use super::rpc::CallError;
use super::rpc::{self, BranchRpc, signed};

use crate::protocol::message::CheckAnswer;
use crate::protocol::two_phase::{OnePhaseResult, Vote};

/// What a participant answered to Abort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbortAnswer {
    Aborted,
    /// It had committed through the one-phase path.
    AlreadyCommitted,
}

/// What a participant answered to a saga step's Execute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecuteAnswer {
    Succeeded,
    /// A definite business failure.
    Failed(String),
}

/// HTTP/2 pings on channels to participants: how often, and how long an
/// answer may take before the connection is dropped and dialled again.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// How a channel to a participant is made from its endpoint. By default,
/// over TCP, to the addresses a [`DialPolicy`] allows; a simulation
/// supplies a dialer over its simulated network. Channels connect lazily
/// and reconnect by themselves.
#[derive(Clone, Default)]
pub struct Dialer {
    custom: Option<Arc<DialFn>>,
    policy: Arc<DialPolicy>,
}

/// TLS for the coordinator's own calls: to https:// participants and to
/// other nodes. The CA that signed their certificates and, for peers that
/// require mutual TLS, this node's identity.
#[derive(Clone)]
pub struct PeerTls {
    /// PEM: the CA that signed the peers' certificates.
    pub ca_pem: Vec<u8>,
    /// PEM certificate chain and key this node presents.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl PeerTls {
    pub fn client_config(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem));
        if let Some((cert, key)) = &self.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }
}

impl std::fmt::Debug for PeerTls {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerTls")
            .field("mutual", &self.identity.is_some())
            .finish_non_exhaustive()
    }
}

type DialFn = dyn Fn(Endpoint) -> Channel + Send + Sync;

impl Dialer {
    /// A dialer that makes channels with `dial`.
    pub fn custom(dial: impl Fn(Endpoint) -> Channel + Send + Sync + 'static) -> Self {
        Self {
            custom: Some(Arc::new(dial)),
            policy: Arc::default(),
        }
    }

    /// Over TCP, only to the addresses `policy` allows (DESIGN §12, S6).
    pub fn tcp(policy: DialPolicy) -> Self {
        Self {
            custom: None,
            policy: Arc::new(policy),
        }
    }

    fn channel(&self, endpoint: Endpoint) -> Channel {
        match &self.custom {
            Some(dial) => dial(endpoint),
            None => super::dial::channel(endpoint, Arc::clone(&self.policy)),
        }
    }
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.custom.is_some() {
            "Dialer(custom)"
        } else {
            "Dialer(tcp)"
        })
    }
}

/// Where [`Participants::route`] put a call: queued for a batch (with the
/// request kept, boxed, while the participant has not yet shown it takes
/// batches), to go alone (boxed), or refused.
enum Routed<Q> {
    Batched(batch::Pending, Option<Box<Alone<Q>>>),
    Alone(Box<Alone<Q>>),
    Refused(CallError),
}

/// A call to send alone: where, and what.
struct Alone<Q> {
    endpoint: String,
    request: Q,
}

/// A participant that took batches before stopped (an older version
/// replaced it): this call's usual retry or abort path applies, and the
/// next call goes alone.
fn stopped_batching() -> CallError {
    CallError::Status {
        code: tonic::Code::Unavailable,
        message: "the participant stopped taking batches".into(),
    }
}

/// How long a participant's channel is kept with no call on it.
pub const IDLE_CHANNEL: Duration = Duration::from_secs(300);

/// A channel to one participant, and when a call last took it.
struct Kept {
    channel: Channel,
    /// Milliseconds since [`Participants::started`].
    used_ms: AtomicU64,
}

/// The channels to participants, shared by every transaction.
pub struct Participants {
    channels: DashMap<String, Kept>,
    /// Channels unused for this long are let go ([`IDLE_CHANNEL`]).
    idle_after: Duration,
    /// What `Kept::used_ms` counts from.
    started: tokio::time::Instant,
    /// When idle channels were last looked for.
    swept_ms: AtomicU64,
    /// Per endpoint, the calls waiting to go out in a `Batch`; empty when
    /// batching is off.
    batches: DashMap<String, Arc<batch::Queue>>,
    /// Where batch senders run, and what ends them: the runtime's own.
    /// None: every call goes alone.
    batching: Option<(TaskTracker, CancellationToken)>,
    dialer: Dialer,
    connect_timeout: Duration,
    /// Sent in every call so a participant knows whom to ask about an
    /// in-doubt branch.
    coordinator_url: String,
    /// TLS for https:// participants.
    tls: Option<PeerTls>,
    /// Signs every call (DESIGN §12), so that a participant can tell its
    /// coordinator's calls from a stranger's. None: calls go unsigned, and
    /// only a participant that accepts anyone obeys them.
    signer: Option<Arc<CallSigner>>,
}

impl Participants {
    pub fn new(
        connect_timeout: Duration,
        coordinator_url: String,
        dialer: Dialer,
        tls: Option<PeerTls>,
    ) -> Self {
        Self {
            channels: DashMap::new(),
            idle_after: IDLE_CHANNEL,
            started: tokio::time::Instant::now(),
            swept_ms: AtomicU64::new(0),
            batches: DashMap::new(),
            batching: None,
            dialer,
            connect_timeout,
            coordinator_url,
            tls,
            signer: None,
        }
    }

    /// Lets go of channels unused for `idle` ([`IDLE_CHANNEL`] unless
    /// told otherwise).
    pub fn with_idle_release(mut self, idle: Duration) -> Self {
        self.idle_after = idle;
        self
    }

    /// Channels held now, to participants called within the idle time.
    pub fn open_channels(&self) -> usize {
        self.channels.len()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Lets go of the channels no call has taken for the idle time, and of
    /// the batch queues of their endpoints that hold nothing. Looked for at
    /// most every quarter of the idle time, by whichever call comes then:
    /// no task of its own, and nothing to do while no call comes.
    fn release_idle(&self, now: u64) {
        let idle = u64::try_from(self.idle_after.as_millis()).unwrap_or(u64::MAX);
        let last = self.swept_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) < (idle / 4).max(1)
            || self
                .swept_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        self.channels
            .retain(|_, kept| now.saturating_sub(kept.used_ms.load(Ordering::Relaxed)) < idle);
        self.batches
            .retain(|endpoint, queue| self.channels.contains_key(endpoint) || queue.busy());
    }

    /// Signs every call with `signer` (DESIGN §12).
    pub fn with_signer(mut self, signer: Option<Arc<CallSigner>>) -> Self {
        self.signer = signer;
        self
    }

    /// The signature of one call, when this node signs.
    fn signature(&self, call: SignedCall<'_>, deadline: Duration) -> Option<String> {
        self.signer
            .as_ref()
            .map(|signer| signer.sign(&call, deadline))
    }

    /// Coalesces calls into `Batch` calls when `on`, with senders on
    /// `tasks` that stop at `shutdown`.
    pub fn with_batching(
        mut self,
        on: bool,
        tasks: TaskTracker,
        shutdown: CancellationToken,
    ) -> Self {
        self.batching = on.then_some((tasks, shutdown));
        self
    }

    /// Makes one call `R` to a branch: in a batch ([`batch`]) when
    /// batching is on and the participant takes batches, alone otherwise.
    /// Not an `async fn`: the call is built and queued here, and the future
    /// returned holds only what waiting for its answer needs. A future of
    /// an `async fn` keeps its arguments and every local that lives across
    /// an await, for as long as the call is out, and an in-flight call's
    /// future is its memory (docs/performance.md, memory). For the same
    /// reason the typed calls below map its answer with a combinator: an
    /// async block awaiting it would hold it twice.
    fn send<R: BranchRpc>(
        &self,
        call: BranchCall,
        deadline: Duration,
    ) -> impl Future<Output = Result<R::Answer, CallError>> + Send + '_ {
        let span = tracing::info_span!(
            crate::telemetry::PARTICIPANT_CALL,
            otel.name = R::NAME,
            op = R::NAME,
            branch = call.branch.as_str(),
            participant = call.participant.as_str()
        );
        let routed = self.route::<R>(call, deadline, &span);
        async move {
            let alone = match routed {
                Routed::Refused(error) => return Err(error),
                Routed::Alone(alone) => alone,
                Routed::Batched(pending, kept) => {
                    match pending.answer().instrument(span.clone()).await? {
                        batch::Batched::Answered(answer) => {
                            return R::unwrap(answer).map_err(|other| {
                                CallError::BadAnswer(format!(
                                    "a batched call was answered {other:?}"
                                ))
                            });
                        }
                        batch::Batched::Unsupported => kept.ok_or_else(stopped_batching)?,
                    }
                }
            };
            let Alone { endpoint, request } = *alone;
            let client = self.client(&endpoint)?;
            // DESIGN §12: a call alone carries its own signature; a batched
            // one is covered by its batch's (`batch::Queue::run`).
            let signature = self.signature(R::signed(&request), deadline);
            let request = signed(request_with(request, deadline, &span), signature);
            // Boxed, the tonic call (R::send) and the whole path of a call
            // sent alone: inline, they would size every call's future,
            // batched or not.
            Box::pin(with_deadline(deadline, R::send(client, request)).instrument(span)).await
        }
    }

    /// Builds call `R` and queues it for a batch, or keeps it to go alone.
    fn route<R: BranchRpc>(
        &self,
        call: BranchCall,
        deadline: Duration,
        span: &tracing::Span,
    ) -> Routed<R::Request> {
        let BranchCall {
            transaction_id,
            branch,
            participant: endpoint,
            payload,
        } = call;
        let request = R::request(
            BranchRef {
                transaction_id,
                branch,
                coordinator: self.coordinator_url.clone(),
            },
            payload,
        );
        let queue = self.batching.as_ref().map(|(tasks, shutdown)| {
            let queue = match self.batches.get(&endpoint) {
                Some(queue) => Arc::clone(&queue),
                None => Arc::clone(&self.batches.entry(endpoint.clone()).or_default()),
            };
            (queue, tasks, shutdown)
        });
        let known = queue.as_ref().and_then(|(queue, ..)| queue.takes_batches());
        let (Some((queue, tasks, shutdown)), Some(proven)) = (queue, known) else {
            return Routed::Alone(Box::new(Alone { endpoint, request }));
        };
        let sender = || {
            Ok(batch::Sender {
                client: self.client(&endpoint)?,
                tasks: tasks.clone(),
                shutdown: shutdown.clone(),
                signer: self.signer.clone(),
            })
        };
        // Until the participant has shown it takes batches, keep the
        // request to send it alone if it does not.
        let (wrapped, kept) = if proven {
            (R::wrap(request), None)
        } else {
            (
                R::wrap(request.clone()),
                Some(Box::new(Alone {
                    endpoint: endpoint.clone(),
                    request,
                })),
            )
        };
        let batched = pb::BatchCall {
            call: Some(wrapped),
            timeout_ms: 0,
            traceparent: crate::telemetry::traceparent(span),
            // Covered by the batch's own signature.
            signature: String::new(),
        };
        match queue.enqueue(batched, deadline, sender) {
            Some(pending) => Routed::Batched(pending, kept),
            None => match kept {
                Some(kept) => Routed::Alone(kept),
                None => Routed::Refused(stopped_batching()),
            },
        }
    }

    fn client(&self, endpoint: &str) -> Result<ParticipantClient<Channel>, CallError> {
        let now = self.now_ms();
        let held = self.channels.get(endpoint).map(|kept| {
            kept.used_ms.store(now, Ordering::Relaxed);
            kept.channel.clone()
        });
        self.release_idle(now);
        if let Some(channel) = held {
            return Ok(ParticipantClient::new(channel));
        }
        let settings =
            Endpoint::from_shared(endpoint.to_owned()).map_err(|e| CallError::Undialable {
                endpoint: endpoint.to_owned(),
                reason: e.to_string(),
            })?;
        // An address the rule refuses is known now: the call is never sent.
        if let Some(why) = settings
            .uri()
            .host()
            .and_then(|host| self.dialer.policy.refuses_host(host))
        {
            return Err(CallError::BadEndpoint {
                endpoint: endpoint.to_owned(),
                reason: why,
            });
        }
        let settings = settings
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true)
            // A connection whose peer vanished (host lost, partition that
            // swallowed its packets) must not hold every later call to that
            // participant hostage: pings find it dead and the channel
            // reconnects. Found by the simulation (docs/reliability.md).
            .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
            .keep_alive_timeout(KEEPALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let settings = match &self.tls {
            Some(tls) if endpoint.starts_with("https://") => settings
                .tls_config(tls.client_config())
                .map_err(|e| CallError::BadEndpoint {
                    endpoint: endpoint.to_owned(),
                    reason: format!("TLS: {e}"),
                })?,
            None if endpoint.starts_with("https://") => {
                return Err(CallError::BadEndpoint {
                    endpoint: endpoint.to_owned(),
                    reason: "an https participant needs the coordinator's --peer-tls-ca".into(),
                });
            }
            _ => settings,
        };
        // A lazily connected channel reconnects by itself after the
        // participant restarts.
        let channel = self.dialer.channel(settings);
        let channel = self
            .channels
            .entry(endpoint.to_owned())
            .or_insert(Kept {
                channel,
                used_ms: AtomicU64::new(now),
            })
            .channel
            .clone();
        Ok(ParticipantClient::new(channel))
    }

    pub fn prepare(
        &self,
        call: BranchCall,
        deadline: Duration,
    ) -> impl Future<Output = Result<Vote, CallError>> + Send + '_ {
        self.send::<rpc::Prepare>(call, deadline).map(|sent| {
            let answer = sent?;
            match pb::Vote::try_from(answer.vote) {
                Ok(pb::Vote::Commit) => Ok(Vote::Commit),
                Ok(pb::Vote::ReadOnly) => Ok(Vote::ReadOnly),
                Ok(pb::Vote::Abort) => Ok(Vote::Abort {
                    reason: if answer.reason.is_empty() {
                        "participant voted ABORT".into()
                    } else {
                        answer.reason
                    },
                }),
                Ok(pb::Vote::Unspecified) | Err(_) => {
                    Err(CallError::BadAnswer(format!("vote {}", answer.vote)))
                }
            }
        })
    }

    pub fn commit_one_phase(
        &self,
        call: BranchCall,
        deadline: Duration,
    ) -> impl Future<Output = Result<OnePhaseResult, CallError>> + Send + '_ {
        self.send::<rpc::CommitOnePhase>(call, deadline)
            .map(|sent| {
                let answer = sent?;
                match pb::Outcome::try_from(answer.outcome) {
                    Ok(pb::Outcome::Committed) => Ok(OnePhaseResult::Committed {
                        read_only: answer.read_only,
                    }),
                    Ok(pb::Outcome::Aborted) => Ok(OnePhaseResult::Aborted {
                        reason: if answer.reason.is_empty() {
                            "participant refused the one-phase commit".into()
                        } else {
                            answer.reason
                        },
                    }),
                    _ => Err(CallError::BadAnswer(format!("outcome {}", answer.outcome))),
                }
            })
    }

    pub fn commit(
        &self,
        call: BranchCall,
        deadline: Duration,
    ) -> impl Future<Output = Result<(), CallError>> + Send + '_ {
        self.send::<rpc::Commit>(call, deadline).map(|sent| {
            sent?;
            Ok(())
        })
    }

    pub fn abort(
        &self,
        call: BranchCall,
        deadline: Duration,
    ) -> impl Future<Output = Result<AbortAnswer, CallError>> + Send + '_ {
        self.send::<rpc::Abort>(call, deadline).map(|sent| {
            let answer = sent?;
            Ok(if answer.already_committed {
                AbortAnswer::AlreadyCommitted
            } else {
                AbortAnswer::Aborted
            })
        })
    }

    /// Runs a saga step's action.
    pub fn execute(
        &self,
        call: BranchCall,
        deadline: Duration,
    ) -> impl Future<Output = Result<ExecuteAnswer, CallError>> + Send + '_ {
        self.send::<rpc::Execute>(call, deadline).map(|sent| {
            let answer = sent?;
            match pb::execute_response::Result::try_from(answer.result) {
                Ok(pb::execute_response::Result::Succeeded) => Ok(ExecuteAnswer::Succeeded),
                Ok(pb::execute_response::Result::Failed) => {
                    Ok(ExecuteAnswer::Failed(if answer.reason.is_empty() {
                        "the participant refused the step".into()
                    } else {
                        answer.reason
                    }))
                }
                _ => Err(CallError::BadAnswer(format!(
                    "execute result {}",
                    answer.result
                ))),
            }
        })
    }

    /// Runs a saga step's compensation.
    pub fn compensate(
        &self,
        call: BranchCall,
        deadline: Duration,
    ) -> impl Future<Output = Result<(), CallError>> + Send + '_ {
        self.send::<rpc::Compensate>(call, deadline).map(|sent| {
            sent?;
            Ok(())
        })
    }

    /// Delivers a transactional message to one destination (M3, M4).
    pub fn deliver(
        &self,
        call: BranchCall,
        deadline: Duration,
    ) -> impl Future<Output = Result<(), CallError>> + Send + '_ {
        self.send::<rpc::Deliver>(call, deadline).map(|sent| {
            sent?;
            Ok(())
        })
    }

    /// Asks a message's producer whether the local transaction that
    /// published it committed (the check-back, M2). Never batched: it is
    /// rare, and addressed to a message, not a branch.
    pub async fn check_message(
        &self,
        producer: &str,
        message_id: String,
        deadline: Duration,
    ) -> Result<CheckAnswer, CallError> {
        let span = tracing::info_span!(
            crate::telemetry::PARTICIPANT_CALL,
            otel.name = "check_message",
            op = "check_message",
            participant = producer
        );
        let mut client = self.client(producer)?;
        let signature = self.signature(
            SignedCall {
                method: "CheckMessage",
                transaction_id: &message_id,
                branch: "",
                payload: b"",
            },
            deadline,
        );
        let request = signed(
            request_with(
                pb::CheckMessageRequest {
                    transaction_id: message_id,
                },
                deadline,
                &span,
            ),
            signature,
        );
        let answer = with_deadline(
            deadline,
            Box::pin(async move { client.check_message(request).await }),
        )
        .instrument(span)
        .await?;
        use pb::check_message_response::Result as Checked;
        match Checked::try_from(answer.result) {
            Ok(Checked::Committed) => Ok(CheckAnswer::Committed),
            Ok(Checked::RolledBack) => Ok(CheckAnswer::RolledBack),
            _ => Err(CallError::BadAnswer(format!(
                "check-back result {}",
                answer.result
            ))),
        }
    }
}

/// Everything a call to one branch needs.
#[derive(Debug, Clone)]
pub struct BranchCall {
    pub transaction_id: String,
    pub branch: String,
    pub participant: String,
    pub payload: Vec<u8>,
}

fn request_with<T>(message: T, deadline: Duration, span: &tracing::Span) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    // R5: the participant sees the deadline too and can stop early.
    request.set_timeout(deadline);
    // The participant's spans join this call's trace (when exported).
    crate::telemetry::inject(&mut request, span);
    request
}

async fn with_deadline<T>(
    deadline: Duration,
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(deadline, call).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(CallError::from_status(status, deadline)),
        Err(_) => Err(CallError::DeadlineExceeded(deadline)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// DESIGN §12 (S4): the endpoints a client once named do not each
    /// keep a channel: past the idle time, the next call lets go of every
    /// channel no call took meanwhile, and keeps the one in use.
    #[tokio::test]
    async fn channels_no_call_took_for_the_idle_time_are_let_go() {
        let idle = Duration::from_millis(100);
        let participants = Participants::new(
            Duration::from_secs(1),
            "http://127.0.0.1:7400".into(),
            Dialer::default(),
            None,
        )
        .with_idle_release(idle);
        for port in 1..=3 {
            participants
                .client(&format!("http://127.0.0.1:{port}"))
                .expect("a channel");
        }
        assert_eq!(participants.open_channels(), 3);
        tokio::time::sleep(idle * 2).await;
        participants
            .client("http://127.0.0.1:4")
            .expect("a channel");
        assert_eq!(participants.open_channels(), 1, "the three idle ones go");
        // One in use stays, however long it has been held.
        for _ in 0..4 {
            tokio::time::sleep(idle / 2).await;
            participants
                .client("http://127.0.0.1:4")
                .expect("a channel");
        }
        assert_eq!(participants.open_channels(), 1);
    }
}
