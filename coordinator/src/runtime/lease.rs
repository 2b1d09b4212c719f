//! This node's lease on a store several nodes share, and the takeover of
//! gone nodes' transactions (DESIGN §6).
//!
//! `keep` renews the lease every third of its duration. A renewal that
//! finds this node declared gone (it was paused or cut off past its lease,
//! or a newer start of its name replaced it) fires `lease_lost`: the node
//! stops, because every write of the transactions it held is refused now
//! (fencing) and another node is finishing them.
//!
//! After each renewal the node declares gone every other node whose lease
//! has expired — but only once it has itself held its lease without a gap
//! for a whole lease period: after a database outage every lease looks
//! expired, and the nodes that were merely cut off from the database too
//! must get the chance to renew first. Then it claims the unfinished
//! transactions of gone nodes (raising their epochs) and drives them like
//! recovery does.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::store::Lease;

use super::recovery::adopt;
use crate::runtime::shared::Shared;

pub(super) async fn keep(shared: Arc<Shared>) {
    let Some(cluster) = shared.store.cluster() else {
        return;
    };
    let lease = cluster.lease();
    let every = (lease / 3).max(Duration::from_millis(10));
    // Joining the store took the lease.
    let mut held_since = Some(Instant::now());
    loop {
        tokio::select! {
            () = shared.shutdown.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        match cluster.renew().await {
            Ok(Lease::Held) => {
                held_since.get_or_insert_with(Instant::now);
            }
            Ok(Lease::Lost) => {
                tracing::error!(
                    node = cluster.node_id(),
                    "this node was declared gone (paused or cut off past its lease, or \
                     replaced by a newer start of its name); its transactions are being \
                     finished by other nodes, and it stops"
                );
                shared.lease_lost.cancel();
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "could not renew the lease; retrying");
                held_since = None;
                continue;
            }
        }
        if held_since.is_some_and(|since| since.elapsed() >= lease) {
            match cluster.expire_others().await {
                Ok(0) => {}
                Ok(gone) => tracing::warn!(gone, "declared nodes whose lease expired gone"),
                Err(error) => tracing::warn!(%error, "could not look for expired nodes"),
            }
        }
        match shared.store.claim_unfinished().await {
            Ok(unfinished) => adopt(&shared, unfinished),
            Err(error) => tracing::warn!(%error, "could not take over gone nodes' transactions"),
        }
    }
}
