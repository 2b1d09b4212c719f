//! Two-phase commit's RPCs (DESIGN §2): Begin (which may enlist and
//! commit in the same call), Enlist, Commit, Rollback, and GetOutcome, the
//! question a participant holding a prepared branch asks (R2).

use concord_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::forward::{self, Route};
use super::route::{Answer, not_forwardable, send_on};
use super::{CoordinatorService, convert, validate};
use crate::runtime::{BeginTxn, Committed, Decision, EnlistBranch, Outcome};

/// Begin: a new transaction (or the one its idempotency key began, R7), its
/// branches enlisted in the same durable write, committed at once when
/// asked.
pub(super) async fn begin(
    service: &CoordinatorService,
    request: Request<pb::BeginRequest>,
) -> Result<Response<pb::BeginResponse>, Status> {
    let hop = forward::Hop::of(&request);
    let mut request = request.into_inner();
    if let Some(owner) = service.group_of_key(&hop, &request.idempotency_key)? {
        return send_on(owner, &hop, &request, |mut node, call| async move {
            node.begin(call).await
        })
        .await;
    }
    let original = service.keyed_in_groups(&request.idempotency_key, &request);
    let request_digest = convert::begin_digest(&mut request);
    let begin = BeginTxn {
        timeout: validate::optional_ms(
            "timeout_ms",
            request.timeout_ms,
            validate::MIN_TXN_TIMEOUT_MS,
            validate::MAX_TXN_TIMEOUT_MS,
        )?,
        idempotency_key: validate::idempotency_key(&request.idempotency_key)?,
        request_digest,
        description: validate::text("description", &request.description)?,
        branches: validate::begin_branches(
            &service.limits,
            service.runtime.config().max_branches,
            request.branches,
        )?,
    };
    let prepare_timeout = validate::optional_ms(
        "prepare_timeout_ms",
        request.prepare_timeout_ms,
        1,
        validate::MAX_PREPARE_TIMEOUT_MS,
    )?;
    if request.commit && begin.branches.is_empty() {
        return Err(Status::invalid_argument(
            "commit: a transaction committed in its Begin needs at least one branch in \
             `branches`",
        ));
    }
    let begun = if request.commit {
        service.runtime.begin_to_commit(begin).await
    } else {
        service.runtime.begin(begin).await
    };
    let begun = match (service.handed_over(&hop, begun)?, original) {
        (Route::Here(begun), _) => begun,
        (Route::Owner(owner), Some(original)) => {
            return send_on(owner, &hop, &original, |mut node, call| async move {
                node.begin(call).await
            })
            .await;
        }
        (Route::Owner(_), None) => return Err(not_forwardable()),
    };
    let mut state = convert::state(begun.state);
    let commit = if request.commit {
        let committed = service
            .runtime
            .commit(begun.id, false, prepare_timeout)
            .await
            .map_err(convert::status)?;
        let answer = commit_response(&committed);
        state = answer.state();
        Some(answer)
    } else {
        None
    };
    Ok(Response::new(pb::BeginResponse {
        transaction_id: begun.id.to_string(),
        created: begun.created,
        state: state.into(),
        branches: begun.branches,
        commit,
    }))
}

/// Enlist: one more branch, durable before the answer.
pub(super) async fn enlist(
    service: &CoordinatorService,
    request: Request<pb::EnlistRequest>,
) -> Result<Response<pb::EnlistResponse>, Status> {
    let hop = forward::Hop::of(&request);
    let request = request.into_inner();
    let id = validate::txn_id("transaction_id", &request.transaction_id)?;
    let participant = validate::endpoint("participant", &request.participant)?;
    validate::payload(&service.limits, &request.payload)?;
    let name = validate::branch_name(&request.branch)?;
    let result = service
        .runtime
        .enlist(
            id,
            EnlistBranch {
                participant,
                payload: request.payload.clone(),
                name,
            },
        )
        .await;
    let enlisted = match service
        .here_or_owner(&hop, result, &request, |mut node, call| async move {
            node.enlist(call).await
        })
        .await?
    {
        Answer::Here(value) => value,
        Answer::Forwarded(answer) => return Ok(answer),
    };
    Ok(Response::new(pb::EnlistResponse {
        branch: enlisted.name,
        created: enlisted.created,
    }))
}

/// Commit: the prepare round, the decision written (R1), the answer (R4).
pub(super) async fn commit(
    service: &CoordinatorService,
    request: Request<pb::CommitRequest>,
) -> Result<Response<pb::CommitResponse>, Status> {
    let hop = forward::Hop::of(&request);
    let request = request.into_inner();
    let id = validate::txn_id("transaction_id", &request.transaction_id)?;
    let prepare_timeout = validate::optional_ms(
        "prepare_timeout_ms",
        request.prepare_timeout_ms,
        1,
        validate::MAX_PREPARE_TIMEOUT_MS,
    )?;
    let result = service
        .runtime
        .commit(id, request.wait_for_completion, prepare_timeout)
        .await;
    let committed = match service
        .here_or_owner(&hop, result, &request, |mut node, call| async move {
            node.commit(call).await
        })
        .await?
    {
        Answer::Here(value) => value,
        Answer::Forwarded(answer) => return Ok(answer),
    };
    Ok(Response::new(commit_response(&committed)))
}

/// Rollback: an undecided transaction aborted (R2).
pub(super) async fn rollback(
    service: &CoordinatorService,
    request: Request<pb::RollbackRequest>,
) -> Result<Response<pb::RollbackResponse>, Status> {
    let hop = forward::Hop::of(&request);
    let request = request.into_inner();
    let id = validate::txn_id("transaction_id", &request.transaction_id)?;
    let reason = validate::text("reason", &request.reason)?
        .unwrap_or_else(|| "rolled back by the client".into());
    let state = match service
        .here_or_owner(
            &hop,
            service.runtime.rollback(id, reason).await,
            &request,
            |mut node, call| async move { node.rollback(call).await },
        )
        .await?
    {
        Answer::Here(value) => value,
        Answer::Forwarded(answer) => return Ok(answer),
    };
    Ok(Response::new(pb::RollbackResponse {
        state: convert::state(state).into(),
    }))
}

/// GetOutcome: the decision, for a participant holding a prepared branch
/// (presumed abort, R2).
pub(super) async fn get_outcome(
    service: &CoordinatorService,
    request: Request<pb::GetOutcomeRequest>,
) -> Result<Response<pb::GetOutcomeResponse>, Status> {
    let hop = forward::Hop::of(&request);
    let request = request.into_inner();
    let id = validate::txn_id("transaction_id", &request.transaction_id)?;
    let decision = match service
        .here_or_owner(
            &hop,
            service.runtime.outcome(id).await,
            &request,
            |mut node, call| async move { node.get_outcome(call).await },
        )
        .await?
    {
        Answer::Here(value) => value,
        Answer::Forwarded(answer) => return Ok(answer),
    };
    let outcome = match decision {
        None => pb::Outcome::Undecided,
        Some(Decision::Commit) => pb::Outcome::Committed,
        Some(Decision::Abort) => pb::Outcome::Aborted,
    };
    Ok(Response::new(pb::GetOutcomeResponse {
        outcome: outcome.into(),
    }))
}

/// Commit's answer, for Commit and for a Begin that commits.
fn commit_response(committed: &Committed) -> pb::CommitResponse {
    let (reason, read_only) = match &committed.outcome {
        Outcome::Committed { read_only } => (String::new(), *read_only),
        Outcome::Aborted { reason } => (reason.clone(), false),
    };
    pb::CommitResponse {
        outcome: convert::outcome(&committed.outcome).into(),
        reason,
        read_only,
        state: convert::state(committed.state).into(),
    }
}
