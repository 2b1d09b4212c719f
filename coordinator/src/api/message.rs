//! Transactional messages' RPCs (DESIGN §10): PrepareMessage, durable
//! before the answer, and SubmitMessage once the producer's local
//! transaction committed.

use concord_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::forward::{self, Route};
use super::route::{Answer, not_forwardable, send_on};
use super::{CoordinatorService, convert, validate};
use crate::model::TxnState;

/// PrepareMessage: the message and its destinations, durable before the
/// answer (M1).
pub(super) async fn prepare_message(
    service: &CoordinatorService,
    request: Request<pb::PrepareMessageRequest>,
) -> Result<Response<pb::PrepareMessageResponse>, Status> {
    let hop = forward::Hop::of(&request);
    let mut request = request.into_inner();
    if let Some(owner) = service.group_of_key(&hop, &request.idempotency_key)? {
        return send_on(owner, &hop, &request, |mut node, call| async move {
            node.prepare_message(call).await
        })
        .await;
    }
    let original = service.keyed_in_groups(&request.idempotency_key, &request);
    let request_digest = convert::message_digest(&mut request);
    let mut prepare = validate::prepare_message(
        &service.limits,
        service.runtime.config().max_branches,
        request,
    )?;
    prepare.request_digest = request_digest;
    let accepted = match (
        service.handed_over(&hop, service.runtime.prepare_message(prepare).await)?,
        original,
    ) {
        (Route::Here(accepted), _) => accepted,
        (Route::Owner(owner), Some(original)) => {
            return send_on(owner, &hop, &original, |mut node, call| async move {
                node.prepare_message(call).await
            })
            .await;
        }
        (Route::Owner(_), None) => return Err(not_forwardable()),
    };
    Ok(Response::new(pb::PrepareMessageResponse {
        transaction_id: accepted.id.to_string(),
        created: accepted.created,
        state: convert::state(accepted.state).into(),
    }))
}

/// SubmitMessage: the producer's local transaction committed; delivery is
/// owed (M3).
pub(super) async fn submit_message(
    service: &CoordinatorService,
    request: Request<pb::SubmitMessageRequest>,
) -> Result<Response<pb::SubmitMessageResponse>, Status> {
    let hop = forward::Hop::of(&request);
    let request = request.into_inner();
    let id = validate::txn_id("transaction_id", &request.transaction_id)?;
    let result = service.runtime.submit_message(id, request.wait).await;
    let state: TxnState = match service
        .here_or_owner(&hop, result, &request, |mut node, call| async move {
            node.submit_message(call).await
        })
        .await?
    {
        Answer::Here(value) => value,
        Answer::Forwarded(answer) => return Ok(answer),
    };
    Ok(Response::new(pb::SubmitMessageResponse {
        state: convert::state(state).into(),
    }))
}
