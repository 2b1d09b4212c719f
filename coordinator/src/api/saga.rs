//! The saga's RPC (DESIGN §9): SubmitSaga, the whole step graph in one
//! call, durable before the answer.

use concord_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::forward::{self, Route};
use super::route::{not_forwardable, send_on};
use super::{CoordinatorService, convert, validate};
use crate::runtime::SubmitSaga;

/// SubmitSaga: the definition durable before the answer; with `wait`, the
/// answer once the saga ended.
pub(super) async fn submit_saga(
    service: &CoordinatorService,
    request: Request<pb::SubmitSagaRequest>,
) -> Result<Response<pb::SubmitSagaResponse>, Status> {
    let hop = forward::Hop::of(&request);
    let mut request = request.into_inner();
    if let Some(owner) = service.group_of_key(&hop, &request.idempotency_key)? {
        return send_on(owner, &hop, &request, |mut node, call| async move {
            node.submit_saga(call).await
        })
        .await;
    }
    let original = service.keyed_in_groups(&request.idempotency_key, &request);
    let request_digest = convert::saga_digest(&mut request);
    let submit = SubmitSaga {
        idempotency_key: validate::idempotency_key(&request.idempotency_key)?,
        request_digest,
        description: validate::text("description", &request.description)?,
        wait: request.wait,
        steps: validate::saga_steps(&service.limits, request.steps)?,
    };
    let accepted = match (
        service.handed_over(&hop, service.runtime.submit_saga(submit).await)?,
        original,
    ) {
        (Route::Here(accepted), _) => accepted,
        (Route::Owner(owner), Some(original)) => {
            return send_on(owner, &hop, &original, |mut node, call| async move {
                node.submit_saga(call).await
            })
            .await;
        }
        (Route::Owner(_), None) => return Err(not_forwardable()),
    };
    Ok(Response::new(pb::SubmitSagaResponse {
        transaction_id: accepted.id.to_string(),
        created: accepted.created,
        state: convert::state(accepted.state).into(),
        reason: accepted.reason.unwrap_or_default(),
    }))
}
