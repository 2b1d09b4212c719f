//! One call to one branch, whichever of the seven branch RPCs it is: the
//! [`BranchRpc`] trait says how its request is built, sent alone, wrapped
//! into a `Batch` entry and taken out of a batch's answer, so
//! [`Participants`](super::participants::Participants) and
//! [`batch`](super::batch) have one path for all six. Also what a failed
//! call counts as ([`CallError`]) and how a call carries its signature
//! (`signed`), which both of them need.

use std::time::Duration;

use concord_proto::signature::SignedCall;
use concord_proto::v1::batch_answer::Answer;
use concord_proto::v1::batch_call::Call;
use concord_proto::v1::participant_client::ParticipantClient;
use concord_proto::v1::{self as pb, BranchRef};
use tonic::transport::Channel;

/// `request` with its signature in the metadata (DESIGN §12).
pub(super) fn signed<T>(
    mut request: tonic::Request<T>,
    signature: Option<String>,
) -> tonic::Request<T> {
    if let Some(signature) = signature {
        let value = signature
            .parse()
            .expect("a signature is ASCII: hex, digits and base64url");
        request
            .metadata_mut()
            .insert(concord_proto::metadata::SIGNATURE, value);
    }
    request
}

/// Why a call to a participant did not get an answer we can use.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    /// The address itself cannot be dialled by any configuration: nothing
    /// was ever sent to it, and nothing ever will be.
    #[error("participant endpoint {endpoint:?} is not a valid URI: {reason}")]
    Undialable { endpoint: String, reason: String },
    /// This node cannot dial the address as configured (TLS settings).
    #[error("participant endpoint {endpoint:?} cannot be dialled: {reason}")]
    BadEndpoint { endpoint: String, reason: String },
    /// No connection could be made, so the request certainly never left.
    #[error("not sent: {0}")]
    NotSent(String),
    #[error("no answer within the {} ms deadline", .0.as_millis())]
    DeadlineExceeded(Duration),
    #[error("{code:?}: {message}")]
    Status { code: tonic::Code, message: String },
    #[error("participant answered an unknown value: {0}")]
    BadAnswer(String),
}

impl CallError {
    /// True when the call certainly never reached the participant, so it
    /// cannot have acted on it.
    pub fn never_sent(&self) -> bool {
        matches!(
            self,
            Self::Undialable { .. } | Self::BadEndpoint { .. } | Self::NotSent(_)
        )
    }

    /// The error a call that ended with `status` counts as.
    pub fn from_status(status: tonic::Status, deadline: Duration) -> Self {
        match status.code() {
            // A tonic server that enforces the grpc-timeout we sent answers
            // CANCELLED "Timeout expired": the same missed deadline.
            tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
                Self::DeadlineExceeded(deadline)
            }
            tonic::Code::Unavailable if connect_failed(&status) => {
                Self::NotSent(status.message().to_owned())
            }
            code => Self::Status {
                code,
                message: status.message().to_owned(),
            },
        }
    }
}

pub(crate) use concord_proto::connect_failed;

/// The future of one RPC sent alone.
pub type Sent<A> = std::pin::Pin<
    Box<dyn Future<Output = Result<tonic::Response<A>, tonic::Status>> + Send + 'static>,
>;

/// One Participant RPC addressed to a branch.
pub trait BranchRpc {
    /// The operation's name in spans and metrics.
    const NAME: &'static str;
    /// The RPC's name in the proto, which its signature names (DESIGN §12).
    const METHOD: &'static str;
    type Request: Clone + Send + 'static;
    type Answer: Send + 'static;

    /// The request for `branch`, carrying `payload`.
    fn request(branch: BranchRef, payload: Vec<u8>) -> Self::Request;
    /// What the request's signature covers (DESIGN §12).
    fn signed(request: &Self::Request) -> SignedCall<'_>;
    /// Sends the request alone, outside any batch.
    fn send(
        client: ParticipantClient<Channel>,
        request: tonic::Request<Self::Request>,
    ) -> Sent<Self::Answer>;
    /// The request as an entry of a `Batch` call.
    fn wrap(request: Self::Request) -> Call;
    /// This RPC's answer out of a batch entry's, or the entry's answer back
    /// when it is another RPC's (a participant's error).
    fn unwrap(answer: Answer) -> Result<Self::Answer, Answer>;
}

/// Declares a zero-sized type per RPC and its [`BranchRpc`] impl; they
/// differ only in the names.
macro_rules! branch_rpcs {
    ($($(#[$doc:meta])* $op:ident: $name:literal, $method:ident, $request:ident -> $answer:ident;)*) => {$(
        $(#[$doc])*
        pub struct $op;

        impl BranchRpc for $op {
            const NAME: &'static str = $name;
            const METHOD: &'static str = stringify!($op);
            type Request = pb::$request;
            type Answer = pb::$answer;

            fn request(branch: BranchRef, payload: Vec<u8>) -> Self::Request {
                pb::$request { branch: Some(branch), payload }
            }

            fn signed(request: &Self::Request) -> SignedCall<'_> {
                SignedCall {
                    method: Self::METHOD,
                    transaction_id: request.branch.as_ref().map_or("", |b| b.transaction_id.as_str()),
                    branch: request.branch.as_ref().map_or("", |b| b.branch.as_str()),
                    payload: &request.payload,
                }
            }

            fn send(
                mut client: ParticipantClient<Channel>,
                request: tonic::Request<Self::Request>,
            ) -> Sent<Self::Answer> {
                Box::pin(async move { client.$method(request).await })
            }

            fn wrap(request: Self::Request) -> Call {
                Call::$op(request)
            }

            fn unwrap(answer: Answer) -> Result<Self::Answer, Answer> {
                match answer {
                    Answer::$op(answer) => Ok(answer),
                    other => Err(other),
                }
            }
        }
    )*};
}

branch_rpcs! {
    /// Phase 1: the branch votes.
    Prepare: "prepare", prepare, PrepareRequest -> PrepareResponse;
    /// R6: the only branch commits in one step.
    CommitOnePhase: "commit_one_phase", commit_one_phase, CommitOnePhaseRequest -> CommitOnePhaseResponse;
    /// Phase 2, decision COMMITTED.
    Commit: "commit", commit, CommitBranchRequest -> CommitBranchResponse;
    /// Phase 2, decision ABORTED, or presumed abort.
    Abort: "abort", abort, AbortBranchRequest -> AbortBranchResponse;
    /// A saga step's action.
    Execute: "execute", execute, ExecuteRequest -> ExecuteResponse;
    /// A saga step's compensation.
    Compensate: "compensate", compensate, CompensateRequest -> CompensateResponse;
    /// A transactional message's delivery to one destination (DESIGN §10).
    Deliver: "deliver", deliver, DeliverRequest -> DeliverResponse;
}
