//! A watch between changes: the stream open now, the cursor to resume
//! from, and the backoff between reconnections ([`super::CoordinatorClient::watch`]).

use std::time::Duration;

use concord_proto::v1 as pb;
use concord_proto::v1::coordinator_client::CoordinatorClient as RawClient;
use tonic::transport::Channel;

use crate::transport::Bearer;

/// A [`CoordinatorClient::watch`] between changes.
pub(super) struct Watching<B> {
    /// Whether the caller asked to see where the stream starts (the watch
    /// always asks, to resume from there).
    pub(super) show_mark: bool,
    pub(super) raw: RawClient<Channel>,
    pub(super) timeout: Duration,
    pub(super) token: Option<Bearer>,
    /// With the cursor of the last change handed out, once there is one.
    pub(super) request: pb::WatchTransactionsRequest,
    pub(super) open: Option<tonic::Streaming<pb::TransactionChange>>,
    pub(super) backoff: B,
    pub(super) ended: bool,
}

impl<B: Iterator<Item = Duration>> Watching<B> {
    pub(super) async fn connect(
        &mut self,
    ) -> Result<tonic::Streaming<pb::TransactionChange>, tonic::Status> {
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
    pub(super) async fn pause(&mut self, status: &tonic::Status) {
        if let Some(cursor) = status
            .metadata()
            .get(concord_proto::metadata::RESUME_CURSOR)
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
pub(super) fn resumable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable
            | tonic::Code::ResourceExhausted
            | tonic::Code::Cancelled
            | tonic::Code::DeadlineExceeded
            | tonic::Code::Unknown
    )
}
