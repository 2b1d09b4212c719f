//! ListTransactions and WatchTransactions across every group of a
//! deployment (DESIGN §11); the watch is [`watch`]'s. ListTransactions: the
//! node a client calls lists its own group's log and asks one node of each
//! other group for the same page, then merges the pages into one, newest
//! first, so that an operator sees every group's stuck transactions in one
//! listing (and in the console) without knowing the groups.
//!
//! The merge is exact because every group pages by the same order: ids are
//! UUIDv7, time-ordered across groups, and a page token is the id to list
//! below. A group's page covers its ids from its `next_page_token` (or the
//! bottom, when it has none) up to the token asked for; the merged page
//! keeps only ids from the highest of those up, where every group's answer
//! is complete, and its own token is where it stopped. A group none of whose
//! nodes answers is named in `skipped_groups`, never silently left out.

use std::time::Duration;

use concord_proto::v1 as pb;
use futures::future::join_all;
use tonic::Status;

use super::forward::{Forwarder, Hop};
use crate::model::TxnId;
use crate::shard::ShardMap;

pub mod watch;

/// How long another group's page may take when the client set no deadline
/// (a listing is interactive: a group this slow is reported as skipped).
pub const GROUP_DEADLINE: Duration = Duration::from_secs(10);

/// One group's answer: its transactions, newest first, and where its next
/// page starts (None: nothing below).
pub struct GroupPage {
    pub transactions: Vec<(TxnId, pb::Transaction)>,
    pub next: Option<TxnId>,
}

/// Asks a node of each group in `groups` (tried in the map's order until
/// one is reached) for `request` restricted to that group. A group's
/// answer, or why it has none.
pub async fn ask_groups(
    forward: &Forwarder,
    hop: &Hop,
    map: Option<&ShardMap>,
    groups: &[String],
    request: &pb::ListTransactionsRequest,
) -> Vec<(String, Result<GroupPage, Status>)> {
    let Some(map) = map else {
        return Vec::new();
    };
    let asks = groups.iter().map(|group| async move {
        let answer = ask_group(forward, hop, map, group, request).await;
        (group.clone(), answer)
    });
    join_all(asks).await
}

async fn ask_group(
    forward: &Forwarder,
    hop: &Hop,
    map: &ShardMap,
    group: &str,
    request: &pb::ListTransactionsRequest,
) -> Result<GroupPage, Status> {
    let owners = forward.group(map.nodes_of_group(group))?;
    let asked = pb::ListTransactionsRequest {
        group: group.to_owned(),
        ..request.clone()
    };
    let page = owners
        .call(|mut node| {
            let call = hop.to_group(asked.clone(), GROUP_DEADLINE);
            async move { node.list_transactions(call).await }
        })
        .await?
        .into_inner();
    page_of(page)
}

/// A group's wire answer with its ids read back, so that pages merge by
/// the order the store pages by (not by the ids' text).
pub fn page_of(page: pb::ListTransactionsResponse) -> Result<GroupPage, Status> {
    let id = |text: &str| {
        text.parse::<TxnId>().map_err(|_| {
            Status::internal(format!(
                "another group's node answered the transaction id {text:?}, which is not one"
            ))
        })
    };
    let transactions = page
        .transactions
        .into_iter()
        .map(|txn| Ok((id(&txn.id)?, txn)))
        .collect::<Result<_, Status>>()?;
    let next = match page.next_page_token.as_str() {
        "" => None,
        token => Some(id(token)?),
    };
    Ok(GroupPage { transactions, next })
}

/// Merges the groups' pages (each newest first) into one of at most
/// `limit`, newest first, with the token of the next page.
pub fn merge(pages: Vec<GroupPage>, limit: usize) -> (Vec<pb::Transaction>, Option<TxnId>) {
    // A group's next token is the lowest id its page covers (the next page
    // lists below it). Below the highest of them some group has not
    // answered yet: only ids from it up are complete. (Ids are unique
    // across groups, so the one at the bound is that group's.)
    let complete_from = pages.iter().filter_map(|page| page.next).max();
    let mut all: Vec<(TxnId, pb::Transaction)> = pages
        .into_iter()
        .flat_map(|page| page.transactions)
        .filter(|(id, _)| complete_from.is_none_or(|bound| *id >= bound))
        .collect();
    all.sort_by_key(|(id, _)| std::cmp::Reverse(*id));
    if all.len() > limit {
        all.truncate(limit);
        let next = all.last().map(|(id, _)| *id);
        return (all.into_iter().map(|(_, txn)| txn).collect(), next);
    }
    (all.into_iter().map(|(_, txn)| txn).collect(), complete_from)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(ms: u64) -> TxnId {
        TxnId::from_parts(ms, 0)
    }

    fn page(ids: &[u64], next: Option<u64>) -> GroupPage {
        GroupPage {
            transactions: ids
                .iter()
                .map(|&ms| {
                    (
                        id(ms),
                        pb::Transaction {
                            id: id(ms).to_string(),
                            ..Default::default()
                        },
                    )
                })
                .collect(),
            next: next.map(id),
        }
    }

    fn ids(txns: &[pb::Transaction]) -> Vec<TxnId> {
        txns.iter().map(|t| t.id.parse().expect("id")).collect()
    }

    #[test]
    fn complete_pages_interleave_newest_first() {
        let (txns, next) = merge(vec![page(&[9, 5, 1], None), page(&[8, 2], None)], 10);
        assert_eq!(ids(&txns), [9, 8, 5, 2, 1].map(id));
        assert_eq!(next, None);
    }

    #[test]
    fn a_full_page_cuts_at_the_limit_and_resumes_below_its_last() {
        let (txns, next) = merge(vec![page(&[9, 5, 1], None), page(&[8, 2], None)], 3);
        assert_eq!(ids(&txns), [9, 8, 5].map(id));
        assert_eq!(next, Some(id(5)));
    }

    #[test]
    fn nothing_below_a_groups_unfinished_page_is_shown_yet() {
        // Group A stopped at 7 (more below it); group B's 6 and 2 wait for
        // the next page, which lists below 7 in both groups.
        let (txns, next) = merge(vec![page(&[9, 7], Some(7)), page(&[8, 6, 2], None)], 10);
        assert_eq!(ids(&txns), [9, 8, 7].map(id));
        assert_eq!(next, Some(id(7)));
        let (txns, next) = merge(vec![page(&[3], None), page(&[6, 2], None)], 10);
        assert_eq!(ids(&txns), [6, 3, 2].map(id));
        assert_eq!(next, None);
    }

    #[test]
    fn an_empty_filtered_page_with_more_behind_it_keeps_the_listing_going() {
        let (txns, next) = merge(vec![page(&[], Some(50)), page(&[], None)], 10);
        assert!(txns.is_empty());
        assert_eq!(next, Some(id(50)));
    }
}
