//! What operators and their tools call: GetTransaction and
//! ListTransactions (any caller that may read), RetryTransaction and
//! ResolveBranch (the admin token). A listing in a deployment of several
//! groups gathers every group's page (`everywhere`).

use concord_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::everywhere;
use super::forward;
use super::route::Answer;
use super::{CoordinatorService, convert, validate};
use crate::model::{OperatorAction, Resolution, TxnId};
use crate::runtime::ListQuery;

/// GetTransaction: everything known of one transaction, payloads' heads
/// only when asked.
pub(super) async fn get_transaction(
    service: &CoordinatorService,
    request: Request<pb::GetTransactionRequest>,
) -> Result<Response<pb::Transaction>, Status> {
    // Payloads carry the business data itself (amounts, accounts, cards):
    // only the admin token reads them (docs/security.md).
    if request.get_ref().include_payloads {
        service.admin("GetTransaction with include_payloads", &request)?;
    }
    let hop = forward::Hop::of(&request);
    let request = request.into_inner();
    let id = validate::txn_id("transaction_id", &request.transaction_id)?;
    // Within a group every node reads the same log; another group's
    // transaction is in its own (DESIGN §11): ask one of its nodes.
    let view = match service
        .here_or_owner(
            &hop,
            service.runtime.transaction(id).await,
            &request,
            |mut node, call| async move { node.get_transaction(call).await },
        )
        .await?
    {
        Answer::Here(value) => value,
        Answer::Forwarded(answer) => return Ok(answer),
    };
    let mut txn = service.placed(view);
    // Asked for: each payload's head, all of them within PAYLOADS_BYTES
    // (a transaction of many branches or steps gets shorter heads) so that
    // the answer stays far below what a client decodes (4 MiB by default).
    let parts = txn.branches.len() + 2 * txn.steps.len();
    let each = if request.include_payloads {
        (PAYLOADS_BYTES / parts.max(1)).min(crate::model::Preview::LIMIT)
    } else {
        0
    };
    for branch in &mut txn.branches {
        branch.payload.truncate(each);
    }
    for step in &mut txn.steps {
        step.action.truncate(each);
        step.compensation.truncate(each);
    }
    Ok(Response::new(txn))
}

/// The most payload bytes one GetTransaction answers with.
const PAYLOADS_BYTES: usize = 1024 * 1024;

/// ListTransactions: a page, newest first; every group's in a deployment of
/// several.
pub(super) async fn list_transactions(
    service: &CoordinatorService,
    request: Request<pb::ListTransactionsRequest>,
) -> Result<Response<pb::ListTransactionsResponse>, Status> {
    let hop = forward::Hop::of(&request);
    let request = request.into_inner();
    let states = validate::states(&request.states)?;
    let limit = validate::page_size(request.page_size)?;
    let kind = validate::kind(request.kind)?;
    let text = validate::search_text(&request.text)?;
    let mut before = validate::page_token(&request.page_token)?;
    if let Some(age) = validate::min_age_ms(request.min_age_ms)? {
        // Ids are UUIDv7, ordered by the time they were minted: "begun
        // at least `age` ago" is "id below the first id of that moment".
        let now = service.runtime.config().clock.now_ms();
        let bound = TxnId::from_parts(now.saturating_sub(age), 0);
        before = Some(before.map_or(bound, |cursor| cursor.min(bound)));
    }
    let sharding = service.runtime.sharding();
    let group = validate::group(sharding.as_deref(), &request.group)?;
    // DESIGN §11: the other groups to ask for their page, when the
    // listing is of every group and a client asked for it.
    let mut others = Vec::new();
    if let Some(sharding) = &sharding {
        match group {
            None if hop.may_forward_to_group() => {
                others = (sharding.map.groups.iter())
                    .map(|g| g.name.clone())
                    .filter(|name| *name != sharding.group)
                    .collect();
            }
            Some(group) if group != sharding.group => {
                if !hop.may_forward_to_group() {
                    return Err(Status::unavailable(format!(
                        "a listing of group {group:?} reached group {:?}: the \
                         nodes' shard maps disagree for now; retry",
                        sharding.group
                    )));
                }
                // One group's listing, asked of another: its answer.
                return Box::pin(
                    service
                        .forward
                        .group(sharding.map.nodes_of_group(group))?
                        .call(|mut node| {
                            let call = hop.to_group(request.clone(), everywhere::GROUP_DEADLINE);
                            async move { node.list_transactions(call).await }
                        }),
                )
                .await;
            }
            _ => {}
        }
    }
    let query = ListQuery {
        states,
        needs_attention: request.needs_attention,
        before,
        limit,
        text,
        since: None,
    };
    // The other groups are asked for the page this node lists, its
    // cursor and age already made one id bound.
    let asked = pb::ListTransactionsRequest {
        page_token: before.map(|id| id.to_string()).unwrap_or_default(),
        min_age_ms: 0,
        page_size: limit,
        ..request
    };
    let (local, remote) = tokio::join!(
        service.runtime.list(&query),
        everywhere::ask_groups(
            &service.forward,
            &hop,
            sharding.as_ref().map(|s| &*s.map),
            &others,
            &asked
        )
    );
    let page = local.map_err(convert::status)?;
    let here = everywhere::GroupPage {
        transactions: page
            .views
            .into_iter()
            .filter(|view| kind.is_none_or(|kind| view.kind == kind))
            .map(|view| (view.id, service.placed(view)))
            .collect(),
        next: page.next,
    };
    let mut pages = vec![here];
    let mut skipped_groups = Vec::new();
    for (group, answer) in remote {
        match answer {
            Ok(page) => pages.push(page),
            Err(status) => {
                tracing::warn!(%group, code = ?status.code(), reason = status.message(),
                    "listing every group: this group's page is missing");
                skipped_groups.push(pb::SkippedGroup {
                    group,
                    reason: format!("{:?}: {}", status.code(), status.message()),
                });
            }
        }
    }
    let (transactions, next) = everywhere::merge(pages, limit as usize);
    Ok(Response::new(pb::ListTransactionsResponse {
        transactions,
        next_page_token: next.map(|id| id.to_string()).unwrap_or_default(),
        skipped_groups,
    }))
}

/// RetryTransaction (admin): the transaction's waiting retries, now.
pub(super) async fn retry_transaction(
    service: &CoordinatorService,
    request: Request<pb::RetryTransactionRequest>,
) -> Result<Response<pb::RetryTransactionResponse>, Status> {
    service.admin("RetryTransaction", &request)?;
    let hop = forward::Hop::of(&request);
    let request = request.into_inner();
    let id = validate::txn_id("transaction_id", &request.transaction_id)?;
    let (retried, state) = match service
        .here_or_owner(
            &hop,
            service.runtime.retry(id).await,
            &request,
            |mut node, call| async move { node.retry_transaction(call).await },
        )
        .await?
    {
        Answer::Here(value) => value,
        Answer::Forwarded(answer) => return Ok(answer),
    };
    Ok(Response::new(pb::RetryTransactionResponse {
        retried,
        state: convert::state(state).into(),
    }))
}

/// ResolveBranch (admin): an operator's decision for a branch or step that
/// cannot answer, recorded before it takes effect.
pub(super) async fn resolve_branch(
    service: &CoordinatorService,
    request: Request<pb::ResolveBranchRequest>,
) -> Result<Response<pb::ResolveBranchResponse>, Status> {
    service.admin("ResolveBranch", &request)?;
    let hop = forward::Hop::of(&request);
    let request = request.into_inner();
    let id = validate::txn_id("transaction_id", &request.transaction_id)?;
    let action = OperatorAction {
        branch: validate::branch_name(&request.branch)?.ok_or_else(|| {
            Status::invalid_argument("branch is empty: name the branch or step to resolve")
        })?,
        outcome: match pb::Resolution::try_from(request.outcome) {
            Ok(pb::Resolution::Committed) => Resolution::Committed,
            Ok(pb::Resolution::Aborted) => Resolution::Aborted,
            Ok(pb::Resolution::Compensated) => Resolution::Compensated,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "outcome is {}: give COMMITTED, ABORTED or COMPENSATED",
                    request.outcome
                )));
            }
        },
        reason: validate::required_text("reason", &request.reason, 1024)?,
        operator: validate::required_text("operator", &request.operator, 256)?,
        at_ms: service.runtime.config().clock.now_ms(),
    };
    let state = match service
        .here_or_owner(
            &hop,
            service.runtime.resolve(id, action).await,
            &request,
            |mut node, call| async move { node.resolve_branch(call).await },
        )
        .await?
    {
        Answer::Here(value) => value,
        Answer::Forwarded(answer) => return Ok(answer),
    };
    Ok(Response::new(pb::ResolveBranchResponse {
        state: convert::state(state).into(),
    }))
}
