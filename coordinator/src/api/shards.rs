//! The shard map's RPCs (DESIGN §11): GetShardMap for clients and SDKs,
//! and the admin token's PutShardMap, ExportShardKeys and AdoptShardKeys,
//! which `concord shards` drives to add groups and move shards.

use concord_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::forward;
use super::{CoordinatorService, convert, validate};

/// GetShardMap: this node's map, its group and the hand-overs pending.
pub(super) async fn get_shard_map(
    service: &CoordinatorService,
    _request: Request<pb::GetShardMapRequest>,
) -> Result<Response<pb::GetShardMapResponse>, Status> {
    let sharding = service.runtime.sharding().ok_or_else(|| {
        Status::failed_precondition(
            "this node runs without a shard map: its deployment has one group",
        )
    })?;
    Ok(Response::new(pb::GetShardMapResponse {
        map: Some(convert::shard_map(&sharding.map)),
        group: sharding.group.clone(),
        now_ms: service.runtime.config().clock.now_ms(),
        pending: sharding
            .pending_handovers()
            .into_iter()
            .map(|(shard, from_ms)| pb::ShardSwitch {
                shard: u32::from(shard.0),
                from_ms,
            })
            .collect(),
    }))
}

/// PutShardMap (admin): a newer map, written to this group's log.
pub(super) async fn put_shard_map(
    service: &CoordinatorService,
    request: Request<pb::PutShardMapRequest>,
) -> Result<Response<pb::PutShardMapResponse>, Status> {
    service.admin("PutShardMap", &request)?;
    let hop = forward::Hop::of(&request);
    let map = validate::shard_map(request.into_inner().map)?;
    confirm_late_arrivals(service, &hop, &map).await?;
    let version = service
        .runtime
        .put_shard_map(map)
        .await
        .map_err(convert::status)?;
    Ok(Response::new(pb::PutShardMapResponse { version }))
}

/// ExportShardKeys (admin): a page of a moved shard's idempotency keys, for
/// the group it moved to.
pub(super) async fn export_shard_keys(
    service: &CoordinatorService,
    request: Request<pb::ExportShardKeysRequest>,
) -> Result<Response<pb::ExportShardKeysResponse>, Status> {
    service.admin("ExportShardKeys", &request)?;
    let request = request.into_inner();
    let shard = validate::shard(request.shard)?;
    let limit = if request.limit == 0 {
        1_000
    } else {
        request.limit.min(10_000)
    };
    let (keys, next) = service
        .runtime
        .shard_keys(shard, request.from_ms, &request.after, limit)
        .await
        .map_err(convert::status)?;
    Ok(Response::new(pb::ExportShardKeysResponse {
        keys: keys.into_iter().map(convert::handed_key).collect(),
        next_after: next.unwrap_or_default(),
    }))
}

/// AdoptShardKeys (admin): keys handed over from the group a shard left.
pub(super) async fn adopt_shard_keys(
    service: &CoordinatorService,
    request: Request<pb::AdoptShardKeysRequest>,
) -> Result<Response<pb::AdoptShardKeysResponse>, Status> {
    service.admin("AdoptShardKeys", &request)?;
    let request = request.into_inner();
    let shard = validate::shard(request.shard)?;
    let keys = validate::handed_keys(request.keys)?;
    service
        .runtime
        .adopt_shard_keys(shard, request.from_ms, keys, request.last)
        .await
        .map_err(convert::status)?;
    Ok(Response::new(pb::AdoptShardKeysResponse {}))
}

/// DESIGN §11: a version that gives this group a shard from a time
/// already (nearly) passed is taken only when the group the shard
/// leaves holds that switch too (`concord shards` writes the leaving
/// group first), asked now; otherwise both groups would begin
/// transactions of the shard, each placing the other's in itself.
async fn confirm_late_arrivals(
    service: &CoordinatorService,
    hop: &forward::Hop,
    map: &crate::shard::ShardMap,
) -> Result<(), Status> {
    let Some(sharding) = service.runtime.sharding() else {
        return Ok(());
    };
    let now = service.runtime.config().clock.now_ms();
    let mut held_by: std::collections::HashMap<String, crate::shard::ShardMap> =
        std::collections::HashMap::new();
    for (shard, from, at_ms) in map.late_arrivals(&sharding.map, &sharding.group, now) {
        if !held_by.contains_key(&from) {
            let answer = service
                .forward
                .group(map.nodes_of_group(&from))?
                .call(|mut node| {
                    let call = hop.to_group(pb::GetShardMapRequest {}, CONFIRM_DEADLINE);
                    async move { node.get_shard_map(call).await }
                })
                .await
                .map_err(|status| {
                    Status::unavailable(format!(
                        "shard {} comes to group {:?} at {at_ms} ms, already past here, and \
                         group {from:?}, which it leaves, could not be asked whether it \
                         holds that switch ({}); retry once it answers",
                        shard.0,
                        sharding.group,
                        status.message()
                    ))
                })?
                .into_inner();
            let theirs = answer
                .map
                .ok_or_else(|| Status::internal(format!("group {from:?} sent no map")))
                .and_then(|wire| {
                    crate::shard::ShardMap::from_wire(wire).map_err(|e| {
                        Status::internal(format!("group {from:?} sent a map that is not one: {e}"))
                    })
                })?;
            held_by.insert(from.clone(), theirs);
        }
        let holds = held_by.get(&from).is_some_and(|theirs| {
            theirs
                .owners
                .get(usize::from(shard.0))
                .is_some_and(|history| {
                    history
                        .iter()
                        .any(|o| o.group == sharding.group && o.from_ms == at_ms)
                })
        });
        if !holds {
            return Err(Status::failed_precondition(format!(
                "shard {} would come to group {:?} at {at_ms} ms, already past here, but \
                 group {from:?}, which it leaves, does not hold that switch: write the \
                 version to group {from:?} first (concord shards does), or both groups \
                 would begin transactions of the shard",
                shard.0, sharding.group
            )));
        }
    }
    Ok(())
}

/// How long PutShardMap waits for another group's map when it must confirm
/// a switch with it.
const CONFIRM_DEADLINE: std::time::Duration = std::time::Duration::from_secs(10);
