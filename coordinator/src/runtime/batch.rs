//! Coalesced calls: the calls (Prepare, Commit, Abort, CommitOnePhase,
//! Execute, Compensate) that pile up for one participant while earlier
//! calls to it are in flight travel together in one `Participant.Batch`
//! call (participant.proto).
//!
//! The same idea as the log's group commit, applied to the network: no
//! fixed delay, so at low load every call goes out at once and alone; under
//! load one round trip and one HTTP/2 stream carry many transactions'
//! calls, and the calls are most of what a 2PC transaction costs on a loaded
//! machine (docs/performance.md). Each call keeps its own deadline, counted
//! from when it was queued (R5), its own answer and its own failure. The
//! participant streams each answer back as soon as that call is done, so a
//! slow branch holds up no other call of its batch; and up to
//! [`MAX_IN_FLIGHT`] batches per participant are out at once, so a stuck
//! batch holds up no later one. A participant that does not implement
//! `Batch` (UNIMPLEMENTED) is sent single calls, and offered a batch again
//! a minute later.
//!
//! Per participant endpoint a [`Queue`] holds the waiting calls; one sender
//! task drains it, spawned on the runtime's task tracker when a call
//! arrives at an idle queue, and ended when nothing waits or is in flight
//! (no idle task per endpoint) or when the runtime shuts down.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_proto::signature::{BATCH_METHOD, CallSigner, SignedCall, batch_payload_of};
use concord_proto::v1::{self as pb, participant_client::ParticipantClient};
use futures::StreamExt;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::transport::Channel;
use tracing::Instrument;

use super::rpc::CallError;
use crate::metrics;

/// Most calls in one batch: the participant's limit (participant.proto).
pub const MAX_BATCH_CALLS: usize = 1024;

/// Bytes of calls in one batch at most, encoded: under the 4 MiB a gRPC
/// server decodes by default (tonic's, grpcio's, so both SDKs'), with room
/// for the envelope. A batch past what its participant decodes fails
/// whole, and every call in it would be retried into the same batch again
/// (DESIGN §12). The first call of a batch goes whatever its size: a call
/// the participant cannot take alone fails alone.
pub const MAX_BATCH_BYTES: usize = 3 * 1024 * 1024;

/// Batches out at once to one participant. More than one, so that a batch
/// stuck on a slow call does not hold up the calls queued after it; few, so
/// that under load calls wait for a free slot and share it.
pub const MAX_IN_FLIGHT: usize = 8;

/// How long a participant that does not implement `Batch` is sent single
/// calls before it is offered a batch again.
const ASK_AGAIN_AFTER: Duration = Duration::from_secs(60);

/// What became of a call handed to [`Queue::enqueue`].
#[derive(Debug)]
pub enum Batched {
    /// The participant's answer to this call.
    Answered(pb::batch_answer::Answer),
    /// The participant does not implement `Batch`: send the call alone.
    Unsupported,
}

type Answer = oneshot::Sender<Result<Batched, CallError>>;

/// One endpoint's waiting calls.
#[derive(Default)]
pub struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the sender when a call arrives.
    arrived: Notify,
}

#[derive(Default)]
struct QueueState {
    waiting: Vec<Waiting>,
    /// A sender task is draining the queue.
    sending: bool,
    /// When the participant last answered UNIMPLEMENTED to a batch.
    unsupported_since: Option<Instant>,
    /// The participant has answered a batch since.
    takes_batches: bool,
}

impl QueueState {
    /// Whether calls go alone: for a while after the participant said it
    /// does not implement `Batch`; then it is asked again (it may have been
    /// upgraded).
    fn unsupported(&mut self) -> bool {
        match self.unsupported_since {
            Some(since) if since.elapsed() < ASK_AGAIN_AFTER => true,
            Some(_) => {
                self.unsupported_since = None;
                false
            }
            None => false,
        }
    }
}

struct Waiting {
    call: pb::BatchCall,
    /// When the call's deadline passes (R5: time in the queue counts).
    deadline: Instant,
    answer: Answer,
}

/// A queued call's answer to come ([`Queue::enqueue`]).
pub struct Pending {
    answered: oneshot::Receiver<Result<Batched, CallError>>,
    deadline: Duration,
}

impl Pending {
    /// Waits for the answer, at most the call's deadline (R5).
    pub async fn answer(self) -> Result<Batched, CallError> {
        match tokio::time::timeout(self.deadline, self.answered).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(CallError::Status {
                code: tonic::Code::Unavailable,
                message: "the coordinator is shutting down".into(),
            }),
            Err(_) => Err(CallError::DeadlineExceeded(self.deadline)),
        }
    }
}

/// What a sender task needs besides its queue.
pub struct Sender {
    pub client: ParticipantClient<Channel>,
    pub tasks: TaskTracker,
    pub shutdown: CancellationToken,
    /// Signs each batch as a whole (DESIGN §12): one signature for all of
    /// its calls.
    pub signer: Option<Arc<CallSigner>>,
}

impl Queue {
    /// What is known of the participant: None while it is taken not to
    /// implement `Batch` (send alone); Some(true) once it has answered a
    /// batch, Some(false) before.
    pub fn takes_batches(&self) -> Option<bool> {
        let mut state = self.lock();
        (!state.unsupported()).then_some(state.takes_batches)
    }

    /// Whether calls wait here or a sender drains it: a queue that is not
    /// busy may be dropped (its endpoint's channel was let go).
    pub fn busy(&self) -> bool {
        let state = self.lock();
        state.sending || !state.waiting.is_empty()
    }

    /// Queues `call`, to be answered within `deadline`, starting a sender
    /// (made by `sender`) if none drains the queue. Returns what to wait on
    /// for its answer; None when the participant is taken not to implement
    /// `Batch` (send the call alone). Not itself a future, so that what
    /// waits for the answer holds only [`Pending`], not the call: an
    /// in-flight call's future is its memory (docs/performance.md).
    pub fn enqueue(
        self: &Arc<Self>,
        call: pb::BatchCall,
        deadline: Duration,
        sender: impl FnOnce() -> Result<Sender, CallError>,
    ) -> Option<Pending> {
        let (answer, answered) = oneshot::channel();
        let start = {
            let mut state = self.lock();
            if state.unsupported() {
                return None;
            }
            state.waiting.push(Waiting {
                call,
                deadline: Instant::now() + deadline,
                answer,
            });
            !std::mem::replace(&mut state.sending, true)
        };
        if start {
            match sender() {
                Ok(sender) => {
                    let tasks = sender.tasks.clone();
                    tasks.spawn(Arc::clone(self).send(sender));
                }
                Err(error) => {
                    // No channel to send on: every waiting call fails alike.
                    let waiting = {
                        let mut state = self.lock();
                        state.sending = false;
                        std::mem::take(&mut state.waiting)
                    };
                    for waiting in waiting {
                        let _ = waiting.answer.send(Err(error.clone()));
                    }
                }
            }
        } else {
            self.arrived.notify_one();
        }
        Some(Pending { answered, deadline })
    }

    /// The sender task: sends what waits whenever fewer than
    /// [`MAX_IN_FLIGHT`] batches are out, until nothing waits or is out.
    async fn send(self: Arc<Self>, sender: Sender) {
        let mut in_flight: FuturesUnordered<BoxFuture<'static, ()>> = FuturesUnordered::new();
        loop {
            while in_flight.len() < MAX_IN_FLIGHT {
                let Some(batch) = self.take() else { break };
                in_flight.push(Box::pin(Arc::clone(&self).run(
                    sender.client.clone(),
                    sender.signer.clone(),
                    batch,
                )));
            }
            if in_flight.is_empty() {
                let mut state = self.lock();
                if state.waiting.is_empty() || state.unsupported() {
                    state.sending = false;
                    for waiting in state.waiting.drain(..) {
                        let _ = waiting.answer.send(Ok(Batched::Unsupported));
                    }
                    return;
                }
                continue;
            }
            tokio::select! {
                biased;
                // Callers are told by their dropped answers.
                () = sender.shutdown.cancelled() => return,
                Some(()) = in_flight.next() => {}
                () = self.arrived.notified(), if in_flight.len() < MAX_IN_FLIGHT => {}
            }
        }
    }

    /// The next batch: what waits, up to [`MAX_BATCH_CALLS`] calls and
    /// [`MAX_BATCH_BYTES`], less the calls whose caller gave up (its
    /// deadline passed, or its driver stopped).
    fn take(&self) -> Option<Vec<Waiting>> {
        let mut state = self.lock();
        if state.unsupported() {
            return None;
        }
        let now = Instant::now();
        state
            .waiting
            .retain(|waiting| !waiting.answer.is_closed() && waiting.deadline > now);
        if state.waiting.is_empty() {
            return None;
        }
        let mut bytes = 0;
        let take = state
            .waiting
            .iter()
            .take(MAX_BATCH_CALLS)
            .take_while(|waiting| {
                bytes += prost::Message::encoded_len(&waiting.call);
                bytes <= MAX_BATCH_BYTES
            })
            .count()
            .max(1);
        Some(state.waiting.drain(..take).collect())
    }

    /// Sends one batch and hands each answer to its caller as it arrives.
    async fn run(
        self: Arc<Self>,
        mut client: ParticipantClient<Channel>,
        signer: Option<Arc<CallSigner>>,
        batch: Vec<Waiting>,
    ) {
        let now = Instant::now();
        let mut answers: Vec<Option<(Answer, Duration)>> = Vec::with_capacity(batch.len());
        let mut calls = Vec::with_capacity(batch.len());
        for waiting in batch {
            let left = waiting.deadline.saturating_duration_since(now);
            let mut call = waiting.call;
            // R5: the participant sees what is left of each call's deadline.
            call.timeout_ms = u32::try_from(left.as_millis().max(1)).unwrap_or(u32::MAX);
            calls.push(call);
            answers.push(Some((waiting.answer, left)));
        }
        let longest = answers
            .iter()
            .flatten()
            .map(|(_, left)| *left)
            .max()
            .unwrap_or_default();
        metrics::call_batch(calls.len());
        let span = tracing::debug_span!("participant_batch", calls = calls.len());
        // DESIGN §12: one signature over every call, in order.
        let signature = signer.map(|signer| {
            signer.sign(
                &SignedCall {
                    method: BATCH_METHOD,
                    transaction_id: "",
                    branch: "",
                    payload: &batch_payload_of(&calls),
                },
                longest,
            )
        });
        let mut request = tonic::Request::new(pb::BatchRequest { calls });
        request.set_timeout(longest);
        let request = super::rpc::signed(request, signature);
        let streamed = async {
            let mut stream = client
                .batch(request)
                .await
                .map_err(|status| CallError::from_status(status, longest))?
                .into_inner();
            self.lock().takes_batches = true;
            while let Some(reply) = stream
                .message()
                .await
                .map_err(|status| CallError::from_status(status, longest))?
            {
                let slot = usize::try_from(reply.index)
                    .ok()
                    .and_then(|index| answers.get_mut(index))
                    .and_then(Option::take);
                match slot {
                    Some((answer, left)) => {
                        let _ = answer.send(entry_result(reply, left));
                    }
                    None => {
                        return Err(CallError::BadAnswer(format!(
                            "a batch answer for call {} that is not waiting",
                            reply.index
                        )));
                    }
                }
            }
            Ok(())
        };
        let ended = match tokio::time::timeout(longest, streamed.instrument(span)).await {
            Ok(ended) => ended,
            Err(_) => Err(CallError::DeadlineExceeded(longest)),
        };
        let error = match ended {
            Ok(()) => CallError::BadAnswer("the batch ended without answering this call".into()),
            Err(CallError::Status {
                code: tonic::Code::Unimplemented,
                ..
            }) => {
                tracing::info!("participant does not implement Batch; sending it single calls");
                let mut state = self.lock();
                state.unsupported_since = Some(Instant::now());
                state.takes_batches = false;
                drop(state);
                for (answer, _) in answers.into_iter().flatten() {
                    let _ = answer.send(Ok(Batched::Unsupported));
                }
                return;
            }
            Err(error) => error,
        };
        for (answer, _) in answers.into_iter().flatten() {
            let _ = answer.send(Err(error.clone()));
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, QueueState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One call's answer as the call on its own would have ended.
fn entry_result(reply: pb::BatchAnswer, deadline: Duration) -> Result<Batched, CallError> {
    if reply.code != tonic::Code::Ok as i32 {
        let status = tonic::Status::new(tonic::Code::from_i32(reply.code), reply.message);
        return Err(CallError::from_status(status, deadline));
    }
    reply
        .answer
        .map(Batched::Answered)
        .ok_or_else(|| CallError::BadAnswer("a batch answer without its answer".into()))
}
