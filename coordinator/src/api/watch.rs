//! WatchTransactions (DESIGN §8): a stream of every change the log
//! records, from a cursor; admitted up to `--max-watches` at once; in a
//! deployment of several groups, every group's streams merged
//! (`everywhere::watch`).

use concord_proto::v1 as pb;
use futures::StreamExt;
use tonic::{Request, Response, Status};

use super::everywhere::watch;
use super::forward;
use super::{CoordinatorService, WatchStream, convert, validate};
use crate::runtime::watch::{WatchFilter, WatchStart};

/// WatchTransactions: admitted up to `--max-watches` at once (DESIGN §12);
/// the permit goes with the stream.
pub(super) async fn watch_transactions(
    service: &CoordinatorService,
    request: Request<pb::WatchTransactionsRequest>,
) -> Result<Response<WatchStream>, Status> {
    // DESIGN §12: each watch holds a stream, its buffer and a tail of
    // the log on this node for as long as its client stays; a node
    // serves at most `max_watches` at once (the console's own service
    // has a count of its own).
    let permit = std::sync::Arc::clone(&service.watches)
        .try_acquire_owned()
        .map_err(|_| {
            Status::resource_exhausted(format!(
                "this node serves {} watches, its limit (--max-watches); retry after a \
                 backoff, or watch another node",
                service.limits.max_watches
            ))
        })?;
    let response = unbounded(service, request).await?;
    Ok(response.map(|stream| {
        // The permit goes when the stream does.
        let held: WatchStream = Box::pin(stream.map(move |change| {
            let _held = &permit;
            change
        }));
        held
    }))
}

/// WatchTransactions past its admission ([`watch_transactions`]).
async fn unbounded(
    service: &CoordinatorService,
    request: Request<pb::WatchTransactionsRequest>,
) -> Result<Response<WatchStream>, Status> {
    let hop = forward::Hop::of(&request);
    let request = request.into_inner();
    let filter = WatchFilter {
        states: validate::states(&request.states)?,
        kind: validate::kind(request.kind)?,
        needs_attention: request.needs_attention,
        id_prefix: validate::id_prefix(&request.id_prefix)?,
    };
    let sharding = service.runtime.sharding();
    let group = validate::group(sharding.as_deref(), &request.group)?;
    if let (Some(sharding), Some(group)) = (&sharding, group)
        && group != sharding.group
    {
        if !hop.may_forward_to_group() {
            return Err(Status::unavailable(format!(
                "a watch of group {group:?} reached group {:?}: the nodes' shard \
                 maps disagree for now; retry",
                sharding.group
            )));
        }
        // One group's watch, asked of another: its stream, as it is.
        let stream = Box::pin(
            service
                .forward
                .group(sharding.map.nodes_of_group(group))?
                .call(|mut node| {
                    let call = hop.to_group_stream(request.clone());
                    async move { node.watch_transactions(call).await }
                }),
        )
        .await?;
        return Ok(Response::new(Box::pin(stream.into_inner())));
    }
    let fresh = if request.from_oldest {
        WatchStart::Oldest
    } else {
        WatchStart::Next
    };
    let every_group = sharding
        .as_ref()
        .filter(|_| group.is_none() && hop.may_forward_to_group());
    let Some(sharding) = every_group else {
        // This node's group only (or no groups at all).
        let start = match request.cursor.as_str() {
            "" => fresh,
            cursor => WatchStart::After(validate::watch_cursor(cursor)?),
        };
        let start = service
            .runtime
            .watch_start(start)
            .await
            .map_err(store_status)?;
        let changes = service
            .runtime
            .watch(filter, start)
            .await
            .map_err(store_status)?;
        let stream = futures::stream::unfold(changes, |mut changes| async move {
            let item = changes.recv().await?;
            Some((
                item.map(convert::change).map_err(convert::watch_end),
                changes,
            ))
        });
        let mark = request.mark_start.then(|| {
            Ok(pb::TransactionChange {
                cursor: match start {
                    WatchStart::After(cursor) => cursor.to_string(),
                    WatchStart::Oldest | WatchStart::Next => String::new(),
                },
                ..Default::default()
            })
        });
        return Ok(Response::new(Box::pin(
            futures::stream::iter(mark).chain(stream),
        )));
    };
    // DESIGN §11: every group's changes, merged here.
    let resumed = match request.cursor.as_str() {
        "" => None,
        cursor => Some(validate::watch_positions(&sharding.map, cursor)?),
    };
    let own = &sharding.group;
    let start = watch::start_of(own, resumed.as_ref(), fresh);
    let start = service
        .runtime
        .watch_start(start)
        .await
        .map_err(store_status)?;
    let mut positions = resumed.clone().unwrap_or_default();
    positions.set(
        own,
        match start {
            WatchStart::After(cursor) => Some(cursor),
            WatchStart::Oldest | WatchStart::Next => None,
        },
    );
    let changes = service
        .runtime
        .watch(filter, start)
        .await
        .map_err(store_status)?;
    let metadata = watch::metadata(&hop);
    let filters = pb::WatchTransactionsRequest {
        cursor: String::new(),
        from_oldest: false,
        group: String::new(),
        mark_start: false,
        ..request.clone()
    };
    let others = (sharding.map.groups.iter())
        .filter(|g| g.name != *own)
        .map(|g| async {
            let start = watch::start_of(&g.name, resumed.as_ref(), fresh);
            let stream = watch::other_group(
                watch::OtherGroup {
                    forward: std::sync::Arc::clone(&service.forward),
                    name: g.name.clone(),
                    nodes: g.nodes.clone(),
                    request: filters.clone(),
                    metadata: metadata.clone(),
                },
                start,
            );
            (g.name.clone(), watch::started(stream).await)
        });
    let mut groups = vec![watch::own_group(own.clone(), changes)];
    for (group, (stream, start)) in futures::future::join_all(others).await {
        // Where each group's stream starts is in the watch's cursors
        // from the first (the start mark's included), so that a client
        // resuming before any change of that group misses none of it.
        if let Some(start) = start
            && positions.get(&group).is_none()
        {
            positions.set(&group, start);
        }
        groups.push(stream);
    }
    let mark = request.mark_start.then(|| {
        Ok(pb::TransactionChange {
            cursor: positions.encode(),
            ..Default::default()
        })
    });
    Ok(Response::new(Box::pin(
        futures::stream::iter(mark).chain(watch::merge(groups, positions)),
    )))
}

/// A watch that could not start: the log could not be read.
fn store_status(error: crate::store::StoreError) -> Status {
    convert::status(error.into())
}
