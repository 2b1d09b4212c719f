//! The store contract: one suite of tests every backend must pass, so that
//! the runtime can rely on the same semantics whichever store it runs on.
//!
//! Each backend in this crate instantiates the suite with `store_contract!`
//! (one test per case); backends tested elsewhere run [`ALL`]. Either way a
//! backend gives a function that opens its store on some storage and can
//! open it again on the same storage (to check what survives reopening).
//! Compiled for this crate's tests and, with the `store-contract` feature,
//! for the integration tests. Test code only; long because it is one case
//! after another.

use std::sync::Arc;

use futures::future::{BoxFuture, LocalBoxFuture};

use super::{BranchEnd, ListQuery, Record, StepProgress, Store};
use crate::model::{
    BranchState, RetryPolicy, SagaStepDef, StepKind, StepStatus, TxnId, TxnState, VoteKind,
};

/// The cases of the tables of a deployment of several groups (DESIGN
/// §11), for the backends that have them (SQLite, PostgreSQL; the
/// in-memory store of the simulation keeps none).
pub const SHARDED: &[(&str, Test)] = &[(
    "the_shard_tables_keep_the_newest_map_and_the_keys_handed_over",
    |open| Box::pin(the_shard_tables_keep_the_newest_map_and_the_keys_handed_over(open)),
)];

/// Opens the store on one storage; calling it again reopens the same one.
pub type Open = Box<dyn Fn() -> BoxFuture<'static, Arc<dyn Store>>>;

/// One contract test.
pub type Test = fn(Open) -> LocalBoxFuture<'static, ()>;

/// Every contract test by name, for backends tested outside this crate
/// (PostgreSQL: `tests/tests/store`, against a server the harness starts).
pub const ALL: &[(&str, Test)] = &[
    ("a_committed_decision_survives_reopening", |open| {
        Box::pin(a_committed_decision_survives_reopening(open))
    }),
    (
        "an_ended_transaction_is_not_unfinished_and_keeps_its_branches",
        |open| Box::pin(an_ended_transaction_is_not_unfinished_and_keeps_its_branches(open)),
    ),
    ("a_failed_batch_applies_nothing", |open| {
        Box::pin(a_failed_batch_applies_nothing(open))
    }),
    ("a_taken_idempotency_key_fails_the_batch", |open| {
        Box::pin(a_taken_idempotency_key_fails_the_batch(open))
    }),
    (
        "a_batch_failing_midway_applies_nothing_and_the_next_one_does",
        |open| Box::pin(a_batch_failing_midway_applies_nothing_and_the_next_one_does(open)),
    ),
    ("listing_pages_newest_first_and_filters", |open| {
        Box::pin(listing_pages_newest_first_and_filters(open))
    }),
    ("a_text_search_finds_descriptions_and_endpoints", |open| {
        Box::pin(a_text_search_finds_descriptions_and_endpoints(open))
    }),
    ("a_saga_keeps_its_definition_and_step_progress", |open| {
        Box::pin(a_saga_keeps_its_definition_and_step_progress(open))
    }),
    (
        "a_message_keeps_its_destinations_decision_and_place",
        |open| Box::pin(a_message_keeps_its_destinations_decision_and_place(open)),
    ),
    ("a_decision_applies_only_to_an_active_transaction", |open| {
        Box::pin(a_decision_applies_only_to_an_active_transaction(open))
    }),
    (
        "a_whole_life_in_one_batch_reads_as_if_written_record_by_record",
        |open| Box::pin(a_whole_life_in_one_batch_reads_as_if_written_record_by_record(open)),
    ),
    (
        "recovery_gets_each_unfinished_transaction_with_its_own_parts",
        |open| Box::pin(recovery_gets_each_unfinished_transaction_with_its_own_parts(open)),
    ),
    ("operator_actions_are_kept_in_order_and_recovered", |open| {
        Box::pin(operator_actions_are_kept_in_order_and_recovered(open))
    }),
    (
        "pruning_forgets_only_old_finished_transactions_nobody_can_ask_about",
        |open| Box::pin(pruning_forgets_only_old_finished_transactions_nobody_can_ask_about(open)),
    ),
    (
        "the_change_feed_holds_every_change_in_order_and_resumes",
        |open| {
            Box::pin(the_change_feed_holds_every_change_in_order_and_resumes(
                open,
            ))
        },
    ),
];

/// Expands to one `#[tokio::test]` per contract test, each calling
/// `$open()` to get an [`Open`] for fresh storage.
#[cfg(test)]
macro_rules! store_contract {
    ($open:expr) => {
        store_contract!(@tests $open;
            a_committed_decision_survives_reopening,
            an_ended_transaction_is_not_unfinished_and_keeps_its_branches,
            a_failed_batch_applies_nothing,
            a_taken_idempotency_key_fails_the_batch,
            a_batch_failing_midway_applies_nothing_and_the_next_one_does,
            listing_pages_newest_first_and_filters,
            a_text_search_finds_descriptions_and_endpoints,
            a_saga_keeps_its_definition_and_step_progress,
            a_message_keeps_its_destinations_decision_and_place,
            a_decision_applies_only_to_an_active_transaction,
            a_whole_life_in_one_batch_reads_as_if_written_record_by_record,
            recovery_gets_each_unfinished_transaction_with_its_own_parts,
            operator_actions_are_kept_in_order_and_recovered,
            pruning_forgets_only_old_finished_transactions_nobody_can_ask_about,
            the_change_feed_holds_every_change_in_order_and_resumes,
        );
    };
    (@tests $open:expr; $($name:ident,)*) => {
        $(
            #[tokio::test]
            async fn $name() {
                let (_storage, open) = $open.await;
                $crate::store::contract::$name(open).await;
            }
        )*
    };
}
#[cfg(test)]
pub(crate) use store_contract;

fn begun(id: TxnId, key: Option<&str>) -> Record {
    Record::Begun {
        id,
        created_at_ms: 1_000,
        deadline_ms: 31_000,
        idempotency_key: key.map(str::to_owned),
        request_digest: key.map(|k| format!("digest of {k}")),
        description: Some("test".into()),
    }
}

fn enlisted(id: TxnId, idx: u32) -> Record {
    Record::Enlisted {
        id,
        idx,
        name: format!("b{}", idx + 1),
        participant: "http://127.0.0.1:1".into(),
        payload: vec![1, 2, 3],
    }
}

fn list(
    states: Vec<TxnState>,
    needs_attention: bool,
    before: Option<TxnId>,
    limit: u32,
) -> ListQuery {
    ListQuery {
        states,
        needs_attention,
        before,
        limit,
        text: None,
        since: None,
    }
}

fn ids(views: &[crate::model::TxnView]) -> Vec<TxnId> {
    views.iter().map(|v| v.id).collect()
}

pub async fn a_committed_decision_survives_reopening(open: Open) {
    let store = open().await;
    let id = TxnId::mint();
    store
        .append(&[begun(id, None), enlisted(id, 0), enlisted(id, 1)])
        .await
        .expect("append");
    store
        .append(&[Record::Decided { id, at_ms: 2_000 }])
        .await
        .expect("decide");
    drop(store);

    let store = open().await;
    let unfinished = store.unfinished().await.expect("unfinished");
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].view.state, TxnState::Committing);
    assert_eq!(unfinished[0].view.decided_at_ms, Some(2_000));
    assert_eq!(unfinished[0].view.branches.len(), 2);
    assert_eq!(unfinished[0].payloads, vec![vec![1, 2, 3], vec![1, 2, 3]]);
}

pub async fn an_ended_transaction_is_not_unfinished_and_keeps_its_branches(open: Open) {
    let store = open().await;
    let id = TxnId::mint();
    store
        .append(&[begun(id, Some("k1")), enlisted(id, 0)])
        .await
        .expect("append");
    store
        .append(&[Record::Ended {
            id,
            state: TxnState::Aborted,
            at_ms: 3_000,
            read_only: false,
            reason: Some("insufficient funds".into()),
            branches: vec![BranchEnd {
                idx: 0,
                state: BranchState::Aborted,
                vote: Some(VoteKind::Abort),
                attempts: 1,
                last_error: None,
            }],
            steps: vec![],
        }])
        .await
        .expect("end");
    assert!(store.unfinished().await.expect("unfinished").is_empty());
    let view = store.transaction(&id).await.expect("get").expect("known");
    assert_eq!(view.state, TxnState::Aborted);
    assert_eq!(view.reason.as_deref(), Some("insufficient funds"));
    assert_eq!(
        view.decided_at_ms,
        Some(3_000),
        "an abort ended at once is decided then"
    );
    assert_eq!(view.branches[0].vote, Some(VoteKind::Abort));
    assert_eq!(view.branches[0].state, BranchState::Aborted);
    assert_eq!(
        view.branches[0].payload,
        crate::model::Preview::of(&[1, 2, 3])
    );
    assert_eq!(view.branch_count, 1);
    let by_key = store
        .by_idempotency_key("k1")
        .await
        .expect("key")
        .expect("found");
    assert_eq!(by_key.id, id);
    // R7: the first request's digest comes back, to refuse another body.
    assert_eq!(by_key.request_digest.as_deref(), Some("digest of k1"));
    assert!(store.by_idempotency_key("k2").await.expect("key").is_none());
}

pub async fn a_failed_batch_applies_nothing(open: Open) {
    let store = open().await;
    let id = TxnId::mint();
    store.append(&[begun(id, None)]).await.expect("append");
    let other = TxnId::mint();
    // The second Begun repeats a primary key: the whole batch must fail.
    let result = store.append(&[begun(other, None), begun(id, None)]).await;
    assert!(result.is_err());
    assert!(store.transaction(&other).await.expect("get").is_none());
}

pub async fn a_taken_idempotency_key_fails_the_batch(open: Open) {
    let store = open().await;
    let first = TxnId::mint();
    store
        .append(&[begun(first, Some("k"))])
        .await
        .expect("append");
    let second = TxnId::mint();
    let decided = Record::Decided {
        id: first,
        at_ms: 9,
    };
    assert!(
        store
            .append(&[decided, begun(second, Some("k"))])
            .await
            .is_err()
    );
    assert!(store.transaction(&second).await.expect("get").is_none());
    let view = store
        .transaction(&first)
        .await
        .expect("get")
        .expect("known");
    assert_eq!(
        view.state,
        TxnState::Active,
        "the batch's other records were not applied"
    );
}

/// A batch whose later statement fails after an earlier one was applied
/// (a new transaction inserted, then a branch that repeats a key): nothing
/// of it stays, and the store goes on writing (SQLite runs a batch as one
/// text with its BEGIN and COMMIT, so a failure must not leave the
/// transaction open on a pooled connection).
pub async fn a_batch_failing_midway_applies_nothing_and_the_next_one_does(open: Open) {
    let store = open().await;
    let id = TxnId::mint();
    store
        .append(&[begun(id, None), enlisted(id, 0)])
        .await
        .expect("append");
    let other = TxnId::mint();
    let failed = store
        .append(&[
            begun(other, None),
            enlisted(other, 0),
            Record::Decided { id, at_ms: 9 },
            enlisted(id, 0),
        ])
        .await;
    assert!(failed.is_err(), "a branch key was repeated");
    assert!(store.transaction(&other).await.expect("get").is_none());
    let view = store.transaction(&id).await.expect("get").expect("known");
    assert_eq!(view.state, TxnState::Active, "its decision was not applied");
    assert_eq!(view.branch_count, 1);
    // Several times over: each batch may get any of the pool's connections.
    for _ in 0..10 {
        let next = TxnId::mint();
        store
            .append(&[begun(next, None), enlisted(next, 0), enlisted(next, 1)])
            .await
            .expect("a batch after the failed one");
        let view = store
            .transaction(&next)
            .await
            .expect("get")
            .expect("written");
        assert_eq!(view.branch_count, 2);
    }
    store
        .append(&[Record::Decided { id, at_ms: 10 }, begun(other, None)])
        .await
        .expect("a batch after the failed one");
    let view = store.transaction(&id).await.expect("get").expect("known");
    assert_eq!(view.state, TxnState::Committing);
}

pub async fn listing_pages_newest_first_and_filters(open: Open) {
    let store = open().await;
    let ids_made: Vec<TxnId> = (0..5).map(|_| TxnId::mint()).collect();
    let records: Vec<Record> = ids_made.iter().map(|id| begun(*id, None)).collect();
    store.append(&records).await.expect("append");
    store
        .append(&[
            Record::Decided {
                id: ids_made[1],
                at_ms: 5,
            },
            enlisted(ids_made[1], 0),
            Record::NeedsAttention { id: ids_made[2] },
        ])
        .await
        .expect("decide");

    let page = store
        .list(&list(vec![], false, None, 2))
        .await
        .expect("list");
    assert_eq!(ids(&page), vec![ids_made[4], ids_made[3]]);
    assert!(page.iter().all(|v| v.branches.is_empty()));
    let next = store
        .list(&list(vec![], false, Some(ids_made[3]), 10))
        .await
        .expect("list");
    assert_eq!(ids(&next), vec![ids_made[2], ids_made[1], ids_made[0]]);
    assert_eq!(next[1].branch_count, 1, "listings count branches");
    let committing = store
        .list(&list(vec![TxnState::Committing], false, None, 10))
        .await
        .expect("list");
    assert_eq!(ids(&committing), vec![ids_made[1]]);
    let either = store
        .list(&list(
            vec![TxnState::Active, TxnState::Committing],
            false,
            Some(ids_made[2]),
            10,
        ))
        .await
        .expect("list");
    assert_eq!(ids(&either), vec![ids_made[1], ids_made[0]]);
    let flagged = store
        .list(&list(vec![], true, None, 10))
        .await
        .expect("list");
    assert_eq!(ids(&flagged), vec![ids_made[2]]);
}

pub async fn a_text_search_finds_descriptions_and_endpoints(open: Open) {
    let store = open().await;
    let described = |id: TxnId, description: &str| Record::Begun {
        id,
        created_at_ms: 1_000,
        deadline_ms: 31_000,
        idempotency_key: None,
        request_digest: None,
        description: Some(description.into()),
    };
    let [transfer, booking, odd, saga] = [(); 4].map(|()| TxnId::mint());
    store
        .append(&[
            described(transfer, "Transfer 30.00 from Alice"),
            Record::Enlisted {
                id: transfer,
                idx: 0,
                name: "debit".into(),
                participant: "http://bank-a.internal:7501".into(),
                payload: b"{}".to_vec(),
            },
            described(booking, "trip for ada"),
            described(odd, "100%_sure!\\"),
            Record::SagaSubmitted {
                id: saga,
                created_at_ms: 7,
                idempotency_key: None,
                request_digest: None,
                description: None,
                steps: vec![SagaStepDef {
                    name: "car".into(),
                    participant: "http://Cars.internal:7603".into(),
                    kind: StepKind::Compensatable,
                    action: b"book".to_vec(),
                    compensation: Some(b"release".to_vec()),
                    depends_on: vec![],
                    attempt_timeout: std::time::Duration::from_millis(1_500),
                    retry: RetryPolicy::default(),
                }],
            },
        ])
        .await
        .expect("append");
    let found = |text: &'static str| {
        let store = &store;
        async move {
            let query = ListQuery {
                text: Some(text.into()),
                ..list(vec![], false, None, 10)
            };
            ids(&store.list(&query).await.expect("list"))
        }
    };
    assert_eq!(
        found("alice").await,
        vec![transfer],
        "a description, any case"
    );
    assert_eq!(found("BANK-A").await, vec![transfer], "a branch's endpoint");
    assert_eq!(
        found("cars.internal").await,
        vec![saga],
        "a step's endpoint"
    );
    assert_eq!(found(".internal").await, vec![saga, transfer]);
    assert_eq!(found("%").await, vec![odd], "LIKE's wildcards are text");
    assert_eq!(found("0%_s").await, vec![odd]);
    assert_eq!(found("_").await, vec![odd]);
    assert_eq!(found("\\").await, vec![odd]);
    assert_eq!(
        found("!").await,
        vec![odd],
        "the escape character is text too"
    );
    assert_eq!(found("e!").await, vec![odd]);
    assert!(found("nobody").await.is_empty());
    let listed = store
        .list(&ListQuery {
            text: Some("a".into()),
            ..list(vec![], false, Some(odd), 10)
        })
        .await
        .expect("list");
    assert_eq!(
        ids(&listed),
        vec![booking, transfer],
        "paged like any listing"
    );
    assert!(listed.iter().all(|view| view.branches.is_empty()));

    // A bounded scan (`id_floor`, `since`): the two newest ids are saga's
    // and odd's; a search within them finds only what they hold.
    assert_eq!(store.id_floor(None, 2).await.expect("floor"), Some(odd));
    assert_eq!(
        store.id_floor(Some(odd), 1).await.expect("floor"),
        Some(booking)
    );
    assert_eq!(
        store.id_floor(None, 5).await.expect("floor"),
        None,
        "only four"
    );
    assert_eq!(store.id_floor(None, 0).await.expect("floor"), None);
    let windowed = store
        .list(&ListQuery {
            text: Some("a".into()),
            since: Some(odd),
            ..list(vec![], false, None, 10)
        })
        .await
        .expect("list");
    assert_eq!(
        ids(&windowed),
        vec![saga],
        "Cars.internal, within the window"
    );
    let crossed = store
        .list(&ListQuery {
            since: Some(saga),
            ..list(vec![], false, Some(odd), 10)
        })
        .await
        .expect("list");
    assert!(
        crossed.is_empty(),
        "a floor above the cursor leaves nothing"
    );
}

pub async fn a_saga_keeps_its_definition_and_step_progress(open: Open) {
    let store = open().await;
    let id = TxnId::mint();
    let step = |name: &str, depends_on: Vec<usize>| SagaStepDef {
        name: name.into(),
        participant: "http://127.0.0.1:2".into(),
        kind: StepKind::Compensatable,
        action: name.as_bytes().to_vec(),
        compensation: Some(b"undo".to_vec()),
        depends_on,
        attempt_timeout: std::time::Duration::from_millis(1_500),
        retry: RetryPolicy::default(),
    };
    let steps = vec![step("flight", vec![]), step("hotel", vec![0])];
    store
        .append(&[Record::SagaSubmitted {
            id,
            created_at_ms: 7,
            idempotency_key: Some("trip".into()),
            request_digest: Some("saga-digest".into()),
            description: None,
            steps: steps.clone(),
        }])
        .await
        .expect("submit");
    store
        .append(&[Record::StepRecorded {
            id,
            saga_state: TxnState::Compensating,
            reason: Some("hotel full".into()),
            step: StepProgress {
                idx: 0,
                status: StepStatus::Succeeded,
                attempts: 2,
                compensation_attempts: 0,
                last_error: Some("timeout".into()),
            },
        }])
        .await
        .expect("step");
    drop(store);

    let store = open().await;
    let unfinished = store.unfinished().await.expect("unfinished");
    assert_eq!(unfinished.len(), 1);
    assert_eq!(unfinished[0].steps, steps);
    let view = &unfinished[0].view;
    assert_eq!(view.state, TxnState::Compensating);
    assert_eq!(view.reason.as_deref(), Some("hotel full"));
    assert_eq!(view.steps[0].status, StepStatus::Succeeded);
    assert_eq!(view.steps[0].attempts, 2);
    assert_eq!(view.steps[1].status, StepStatus::Pending);
    assert_eq!(view.steps[1].depends_on, vec!["flight".to_string()]);
    // Listings count a saga's steps as its parts.
    let listed = store
        .list(&list(vec![], false, None, 10))
        .await
        .expect("list");
    assert_eq!(
        listed.iter().map(|v| v.branch_count).collect::<Vec<_>>(),
        [2]
    );
    let by_key = store.by_idempotency_key("trip").await.expect("key");
    assert_eq!(
        by_key.map(|v| (v.steps.len(), v.request_digest)),
        Some((2, Some("saga-digest".to_string())))
    );
}

/// DESIGN §10: a message with its destinations, prepared (recovery needs
/// its payloads, producer and check-back time), decided once (a late
/// second decision or one after its drop changes nothing), with its place
/// among its key's messages, and ended.
pub async fn a_message_keeps_its_destinations_decision_and_place(open: Open) {
    use crate::model::{BranchState, Destination, MessageVia, TxnKind};
    let store = open().await;
    let (delivered, dropped) = (TxnId::mint(), TxnId::mint());
    let prepared = |id: TxnId, key: &str| Record::MessagePrepared {
        id,
        created_at_ms: 10,
        check_at_ms: 5_010,
        idempotency_key: Some(key.to_owned()),
        request_digest: Some(format!("digest of {key}")),
        description: Some("transfer t1".into()),
        producer: "http://127.0.0.1:3".into(),
        ordering_key: Some("acct-1".into()),
        destinations: vec![
            Destination {
                name: "audit".into(),
                participant: "http://127.0.0.1:4".into(),
                payload: b"t1".to_vec(),
            },
            Destination {
                name: "notify".into(),
                participant: "http://127.0.0.1:5".into(),
                payload: Vec::new(),
            },
        ],
    };
    store
        .append(&[prepared(delivered, "m1"), prepared(dropped, "m2")])
        .await
        .expect("prepare");
    store
        .append(&[Record::MessageDecided {
            id: delivered,
            at_ms: 20,
            via: MessageVia::CheckBack,
            ordering_seq: Some(3),
        }])
        .await
        .expect("decide");
    // A second decision changes nothing (the first stands, M2).
    store
        .append(&[Record::MessageDecided {
            id: delivered,
            at_ms: 30,
            via: MessageVia::Submit,
            ordering_seq: Some(9),
        }])
        .await
        .expect("decide again");
    let unfinished = store.unfinished().await.expect("unfinished");
    assert_eq!(unfinished.len(), 2);
    let (one, two) = (&unfinished[0], &unfinished[1]);
    assert_eq!(one.view.id, delivered);
    assert_eq!(one.view.kind, TxnKind::Message);
    assert_eq!(one.view.state, TxnState::Delivering);
    assert_eq!(one.view.decided_at_ms, Some(20));
    assert_eq!(
        one.view.reason.as_deref(),
        Some(crate::model::message_via_str(MessageVia::CheckBack))
    );
    assert_eq!(one.ordering_seq, Some(3));
    assert_eq!(one.view.producer.as_deref(), Some("http://127.0.0.1:3"));
    assert_eq!(one.view.ordering_key.as_deref(), Some("acct-1"));
    assert_eq!(one.view.deadline_ms, 5_010);
    assert_eq!(one.payloads, [b"t1".to_vec(), Vec::new()]);
    assert_eq!(
        one.view
            .branches
            .iter()
            .map(|b| (b.name.as_str(), b.participant.as_str(), b.state))
            .collect::<Vec<_>>(),
        [
            ("audit", "http://127.0.0.1:4", BranchState::Enlisted),
            ("notify", "http://127.0.0.1:5", BranchState::Enlisted)
        ]
    );
    assert_eq!(two.view.state, TxnState::Prepared);
    assert_eq!(two.ordering_seq, None);

    let end = |id, state, branch_state| Record::Ended {
        id,
        state,
        at_ms: 40,
        read_only: false,
        reason: Some("why".into()),
        branches: (0..2)
            .map(|idx| BranchEnd {
                idx,
                state: branch_state,
                vote: None,
                attempts: idx + 1,
                last_error: None,
            })
            .collect(),
        steps: Vec::new(),
    };
    store
        .append(&[
            end(delivered, TxnState::Delivered, BranchState::Delivered),
            end(dropped, TxnState::Dropped, BranchState::Aborted),
        ])
        .await
        .expect("end");
    // A decision after the drop changes nothing either.
    store
        .append(&[Record::MessageDecided {
            id: dropped,
            at_ms: 50,
            via: MessageVia::Submit,
            ordering_seq: None,
        }])
        .await
        .expect("late decide");
    drop(store);

    let store = open().await;
    assert!(store.unfinished().await.expect("unfinished").is_empty());
    let view = store
        .transaction(&delivered)
        .await
        .expect("get")
        .expect("known");
    assert_eq!(view.state, TxnState::Delivered);
    assert_eq!(view.branches[1].state, BranchState::Delivered);
    assert_eq!(view.branches[1].attempts, 2);
    let view = store
        .by_idempotency_key("m2")
        .await
        .expect("key")
        .expect("known");
    assert_eq!((view.id, view.state), (dropped, TxnState::Dropped));
    assert_eq!(view.branch_count, 2);
}

pub async fn a_decision_applies_only_to_an_active_transaction(open: Open) {
    let store = open().await;
    let id = TxnId::mint();
    store.append(&[begun(id, None)]).await.expect("append");
    store
        .append(&[Record::Aborting {
            id,
            at_ms: 4,
            reason: "timed out".into(),
        }])
        .await
        .expect("abort");
    // A late COMMITTED decision must not flip an abort (I2).
    store
        .append(&[Record::Decided { id, at_ms: 5 }])
        .await
        .expect("late decide");
    let view = store.transaction(&id).await.expect("get").expect("known");
    assert_eq!(view.state, TxnState::Aborting);
    assert_eq!(view.decided_at_ms, Some(4));
}

/// The group-commit writer puts many records of one transaction in one
/// batch; a backend that regroups them must end where applying them one by
/// one would.
pub async fn a_whole_life_in_one_batch_reads_as_if_written_record_by_record(open: Open) {
    let store = open().await;
    let txn = TxnId::mint();
    let saga = TxnId::mint();
    let progress = |status, attempts, compensation_attempts| StepProgress {
        idx: 0,
        status,
        attempts,
        compensation_attempts,
        last_error: None,
    };
    let step = SagaStepDef {
        name: "only".into(),
        participant: "http://127.0.0.1:3".into(),
        kind: StepKind::Compensatable,
        action: Vec::new(),
        compensation: None,
        depends_on: vec![],
        attempt_timeout: std::time::Duration::from_secs(1),
        retry: RetryPolicy::default(),
    };
    store
        .append(&[
            begun(txn, None),
            Record::Enlisted {
                id: txn,
                idx: 0,
                name: "empty".into(),
                participant: "http://127.0.0.1:1".into(),
                payload: Vec::new(),
            },
            Record::Decided { id: txn, at_ms: 10 },
            Record::Ended {
                id: txn,
                state: TxnState::Committed,
                at_ms: 20,
                read_only: false,
                reason: None,
                branches: vec![BranchEnd {
                    idx: 0,
                    state: BranchState::Committed,
                    vote: Some(VoteKind::Commit),
                    attempts: 1,
                    last_error: None,
                }],
                steps: vec![],
            },
            Record::SagaSubmitted {
                id: saga,
                created_at_ms: 5,
                idempotency_key: None,
                request_digest: None,
                description: None,
                steps: vec![step.clone()],
            },
            Record::StepRecorded {
                id: saga,
                saga_state: TxnState::Running,
                reason: None,
                step: progress(StepStatus::Unknown, 3, 0),
            },
            Record::NeedsAttention { id: saga },
            Record::StepRecorded {
                id: saga,
                saga_state: TxnState::Compensating,
                reason: Some("gave up".into()),
                step: progress(StepStatus::Compensated, 3, 1),
            },
        ])
        .await
        .expect("append");

    let view = store.transaction(&txn).await.expect("get").expect("known");
    assert_eq!(view.state, TxnState::Committed);
    assert_eq!(
        view.decided_at_ms,
        Some(10),
        "the decision's stamp, not the end's"
    );
    assert_eq!(view.ended_at_ms, Some(20));
    assert_eq!(view.branches[0].state, BranchState::Committed);
    assert_eq!(view.branches[0].payload.bytes, 0);
    let unfinished = store.unfinished().await.expect("unfinished");
    assert_eq!(unfinished.len(), 1);
    assert_eq!(
        unfinished[0].steps,
        vec![step],
        "an empty action stays empty"
    );
    let saga_view = &unfinished[0].view;
    assert_eq!(saga_view.state, TxnState::Compensating);
    assert_eq!(saga_view.reason.as_deref(), Some("gave up"));
    assert!(saga_view.needs_attention);
    assert_eq!(
        saga_view.steps[0].status,
        StepStatus::Compensated,
        "the last record wins"
    );
    assert_eq!(saga_view.steps[0].compensation_attempts, 1);
}

/// Recovery loads many transactions at once; each must get exactly its own
/// branches and steps, whatever finished transactions sit between them.
pub async fn recovery_gets_each_unfinished_transaction_with_its_own_parts(open: Open) {
    let store = open().await;
    let mut records = Vec::new();
    let mut expected = Vec::new();
    for n in 0..6u32 {
        let id = TxnId::mint();
        if n % 3 == 2 {
            let steps: Vec<SagaStepDef> = (0..n)
                .map(|i| SagaStepDef {
                    name: format!("s{i}"),
                    participant: "http://127.0.0.1:4".into(),
                    kind: StepKind::Compensatable,
                    action: vec![n as u8, i as u8],
                    compensation: Some(vec![]),
                    depends_on: if i == 0 { vec![] } else { vec![i as usize - 1] },
                    attempt_timeout: std::time::Duration::from_secs(1),
                    retry: RetryPolicy::default(),
                })
                .collect();
            records.push(Record::SagaSubmitted {
                id,
                created_at_ms: 1,
                idempotency_key: None,
                request_digest: None,
                description: None,
                steps: steps.clone(),
            });
            expected.push((id, Vec::new(), steps));
            continue;
        }
        records.push(begun(id, None));
        let mut payloads = Vec::new();
        for idx in 0..n {
            let payload = vec![n as u8; idx as usize + 1];
            records.push(Record::Enlisted {
                id,
                idx,
                name: format!("b{idx}"),
                participant: "http://127.0.0.1:1".into(),
                payload: payload.clone(),
            });
            payloads.push(payload);
        }
        if n % 3 == 1 {
            // Finished: recovery must not see it, nor hand its branches on.
            records.push(Record::Ended {
                id,
                state: TxnState::Aborted,
                at_ms: 2,
                read_only: false,
                reason: None,
                branches: vec![],
                steps: vec![],
            });
        } else {
            expected.push((id, payloads, Vec::new()));
        }
    }
    store.append(&records).await.expect("append");
    let unfinished = store.unfinished().await.expect("unfinished");
    let got: Vec<_> = unfinished
        .iter()
        .map(|u| (u.view.id, u.payloads.clone(), u.steps.clone()))
        .collect();
    assert_eq!(got, expected);
    for u in &unfinished {
        assert_eq!(u.view.branches.len(), u.payloads.len());
        assert_eq!(u.view.steps.len(), u.steps.len());
    }
}

pub async fn operator_actions_are_kept_in_order_and_recovered(open: Open) {
    use crate::model::{OperatorAction, Resolution};
    let store = open().await;
    let (stuck, other) = (TxnId::mint(), TxnId::mint());
    let action = |branch: &str, at_ms| OperatorAction {
        branch: branch.into(),
        outcome: Resolution::Committed,
        reason: format!("bank {branch} restored from backup; commit applied by hand"),
        operator: "alice@ops".into(),
        at_ms,
    };
    store
        .append(&[
            begun(stuck, None),
            enlisted(stuck, 0),
            enlisted(stuck, 1),
            begun(other, None),
        ])
        .await
        .expect("append");
    store
        .append(&[
            Record::Decided {
                id: stuck,
                at_ms: 2_000,
            },
            Record::OperatorResolved {
                id: stuck,
                action: action("b1", 3_000),
            },
        ])
        .await
        .expect("append");
    // Two in the same millisecond (a retry then a resolve can be): they
    // come back in the order written, not by branch name.
    store
        .append(&[
            Record::OperatorResolved {
                id: stuck,
                action: action("b2", 4_000),
            },
            Record::OperatorResolved {
                id: stuck,
                action: action("b0", 4_000),
            },
        ])
        .await
        .expect("append");
    let in_order = vec![
        action("b1", 3_000),
        action("b2", 4_000),
        action("b0", 4_000),
    ];
    // A restart sees them with the unfinished transaction, in order...
    // One log, one writer: the first store goes before the reopening.
    drop(store);
    let store = open().await;
    let unfinished = store.unfinished().await.expect("unfinished");
    let recovered = unfinished
        .iter()
        .find(|u| u.view.id == stuck)
        .expect("stuck is unfinished");
    assert_eq!(recovered.view.operator_actions, in_order);
    let untouched = unfinished
        .iter()
        .find(|u| u.view.id == other)
        .expect("other");
    assert!(untouched.view.operator_actions.is_empty());
    // ...and they stay with it after it ended.
    store
        .append(&[Record::Ended {
            id: stuck,
            state: TxnState::Committed,
            at_ms: 5_000,
            read_only: false,
            reason: None,
            branches: Vec::new(),
            steps: Vec::new(),
        }])
        .await
        .expect("append");
    let view = store
        .transaction(&stuck)
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(view.operator_actions, in_order);
}

pub async fn pruning_forgets_only_old_finished_transactions_nobody_can_ask_about(open: Open) {
    use crate::model::{OperatorAction, Resolution};
    let store = open().await;
    let ended = |id, at_ms| Record::Ended {
        id,
        state: TxnState::Committed,
        at_ms,
        read_only: false,
        reason: None,
        branches: Vec::new(),
        steps: Vec::new(),
    };
    let [old, resolved, recent, unfinished, keyed] = [(); 5].map(|()| TxnId::mint());
    store
        .append(&[
            begun(old, None),
            enlisted(old, 0),
            begun(resolved, None),
            enlisted(resolved, 0),
            begun(recent, None),
            begun(unfinished, None),
            begun(keyed, Some("order-9")),
        ])
        .await
        .expect("append");
    store
        .append(&[
            Record::Decided {
                id: old,
                at_ms: 1_500,
            },
            ended(old, 2_000),
            Record::Decided {
                id: resolved,
                at_ms: 1_500,
            },
            Record::OperatorResolved {
                id: resolved,
                action: OperatorAction {
                    branch: "b1".into(),
                    outcome: Resolution::Committed,
                    reason: "applied by hand".into(),
                    operator: "ops".into(),
                    at_ms: 1_800,
                },
            },
            ended(resolved, 2_000),
            ended(recent, 9_000),
            ended(keyed, 2_000),
        ])
        .await
        .expect("append");
    let everything = TxnId::mint();
    let pruned = store.prune(&everything, 5_000, 100).await.expect("prune");
    assert_eq!(pruned, 2, "the old one and the old keyed one");
    assert!(store.transaction(&old).await.expect("read").is_none());
    assert!(store.transaction(&keyed).await.expect("read").is_none());
    assert!(
        store
            .by_idempotency_key("order-9")
            .await
            .expect("read")
            .is_none()
    );
    for kept in [resolved, recent, unfinished] {
        assert!(store.transaction(&kept).await.expect("read").is_some());
    }
    // Nothing more to prune; and nothing begun after the bound is touched.
    assert_eq!(
        store.prune(&everything, 5_000, 100).await.expect("prune"),
        0
    );
    assert_eq!(store.prune(&old, 99_000, 100).await.expect("prune"), 0);
}

/// The feed WatchTransactions follows: one change per new transaction, new
/// state, step status, raised flag and operator action, in the order
/// written, each after the last by cursor; read a page at a time from any
/// cursor; kept across reopening; pruned from the oldest.
pub async fn the_change_feed_holds_every_change_in_order_and_resumes(open: Open) {
    use crate::model::{Change, OperatorAction, Resolution};
    let store = open().await;
    assert_eq!(store.newest_change().await.expect("newest"), None);
    let (paid, stuck, saga) = (TxnId::mint(), TxnId::mint(), TxnId::mint());
    // One record a batch: a batch may fold one transaction's records into
    // its last state, and this checks each change.
    let records = vec![
        begun(paid, None),
        begun(stuck, None),
        Record::Decided {
            id: paid,
            at_ms: 2_000,
        },
        Record::Ended {
            id: paid,
            state: TxnState::Committed,
            at_ms: 3_000,
            read_only: false,
            reason: None,
            branches: Vec::new(),
            steps: Vec::new(),
        },
        Record::SagaSubmitted {
            id: saga,
            created_at_ms: 4_000,
            idempotency_key: None,
            request_digest: None,
            description: None,
            steps: vec![SagaStepDef {
                name: "flight".into(),
                participant: "http://127.0.0.1:2".into(),
                kind: StepKind::Compensatable,
                action: b"book".to_vec(),
                compensation: Some(b"cancel".to_vec()),
                depends_on: Vec::new(),
                attempt_timeout: std::time::Duration::from_millis(1_500),
                retry: RetryPolicy::default(),
            }],
        },
        Record::StepRecorded {
            id: saga,
            saga_state: TxnState::Running,
            reason: None,
            step: StepProgress {
                idx: 0,
                status: StepStatus::Succeeded,
                attempts: 1,
                compensation_attempts: 0,
                last_error: None,
            },
        },
        Record::NeedsAttention { id: saga },
        Record::Decided {
            id: stuck,
            at_ms: 5_000,
        },
        Record::OperatorResolved {
            id: stuck,
            action: OperatorAction {
                branch: "b1".into(),
                outcome: Resolution::Committed,
                reason: "applied by hand".into(),
                operator: "ana".into(),
                at_ms: 6_000,
            },
        },
    ];
    for record in records {
        store.append(&[record]).await.expect("append");
    }
    let seen = |changes: &[Change]| -> Vec<(TxnId, Option<TxnState>, TxnState, String, String)> {
        changes
            .iter()
            .map(|c| (c.id, c.from, c.to, c.subject.clone(), c.detail.clone()))
            .collect()
    };
    use TxnState::{Active, Committed, Committing, Running};
    let expected = vec![
        (paid, None, Active, String::new(), String::new()),
        (stuck, None, Active, String::new(), String::new()),
        (paid, Some(Active), Committing, String::new(), String::new()),
        (
            paid,
            Some(Committing),
            Committed,
            String::new(),
            String::new(),
        ),
        (saga, None, Running, String::new(), String::new()),
        (
            saga,
            Some(Running),
            Running,
            "flight".into(),
            "succeeded".into(),
        ),
        (
            saga,
            Some(Running),
            Running,
            String::new(),
            "needs attention".into(),
        ),
        (
            stuck,
            Some(Active),
            Committing,
            String::new(),
            String::new(),
        ),
        (
            stuck,
            Some(Committing),
            Committing,
            "b1".into(),
            "resolved committed by ana: applied by hand".into(),
        ),
    ];
    let all = store.changes(None, 100).await.expect("changes");
    assert_eq!(seen(&all), expected);
    assert!(
        all.windows(2).all(|pair| pair[0].cursor < pair[1].cursor),
        "cursors grow: {all:?}"
    );
    assert!(all[6].needs_attention && !all[5].needs_attention);
    assert_eq!(all[0].kind, crate::model::TxnKind::TwoPhase);
    assert_eq!(all[4].kind, crate::model::TxnKind::Saga);
    assert_eq!(
        store.newest_change().await.expect("newest"),
        all.last().map(|c| c.cursor)
    );
    // Each transaction's changes chain: each starts where the last ended.
    let mut last_to = std::collections::HashMap::new();
    for change in &all {
        assert_eq!(
            change.from,
            last_to.get(&change.id).copied(),
            "{change:?} after {:?}",
            last_to.get(&change.id)
        );
        last_to.insert(change.id, change.to);
    }
    // A saga that ends FAILED raises its flag with its end: one change,
    // flagged, on every backend.
    let failed = TxnId::mint();
    store
        .append(&[Record::SagaSubmitted {
            id: failed,
            created_at_ms: 7_000,
            idempotency_key: None,
            request_digest: None,
            description: None,
            steps: Vec::new(),
        }])
        .await
        .expect("submit");
    store
        .append(&[Record::Ended {
            id: failed,
            state: TxnState::Failed,
            at_ms: 8_000,
            read_only: false,
            reason: Some("the pivot refused".into()),
            branches: Vec::new(),
            steps: Vec::new(),
        }])
        .await
        .expect("end");
    let ended = store
        .changes(all.last().map(|c| c.cursor), 100)
        .await
        .expect("the failure");
    assert_eq!(
        seen(&ended),
        vec![
            (failed, None, Running, String::new(), String::new()),
            (
                failed,
                Some(Running),
                TxnState::Failed,
                String::new(),
                "the pivot refused".into()
            ),
        ]
    );
    assert!(ended[1].needs_attention, "{ended:?}");
    // A page at a time, from any cursor, and the same after reopening.
    // One log, one writer: the first store goes before the reopening.
    drop(store);
    let store = open().await;
    let page = store.changes(Some(all[2].cursor), 3).await.expect("page");
    assert_eq!(seen(&page), expected[3..6].to_vec());
    let rest = store
        .changes(Some(page[2].cursor), 100)
        .await
        .expect("rest");
    assert_eq!(seen(&rest[..3]), expected[6..].to_vec());
    assert_eq!(seen(&rest[3..]), seen(&ended));
    assert!(
        store
            .changes(ended.last().map(|c| c.cursor), 100)
            .await
            .expect("none")
            .is_empty()
    );
    // Pruning forgets the oldest, never one recorded after its horizon.
    let far_future = u64::MAX / 2;
    store
        .prune(&TxnId::mint(), far_future, 2)
        .await
        .expect("prune");
    let kept = store.changes(None, 100).await.expect("kept");
    assert_eq!(seen(&kept[..7]), expected[2..].to_vec());
    store.prune(&TxnId::mint(), 0, 100).await.expect("prune");
    assert_eq!(store.changes(None, 100).await.expect("kept").len(), 9);
}

pub async fn the_shard_tables_keep_the_newest_map_and_the_keys_handed_over(open: Open) {
    use crate::shard::{Group, Shard, ShardMap};
    use crate::store::shards::HandedKey;

    let store = open().await;
    assert!(store.shard_map().await.expect("read").is_none());
    let group = |name: &str| Group {
        name: name.into(),
        nodes: vec![format!("http://{name}.invalid:7400")],
    };
    let first = ShardMap::split(16, vec![group("g1"), group("g2")], 0).expect("a map");
    // Far ahead: no key of shard 0 is refused for its switch in this test.
    let switch_ms = crate::model::now_ms() + 86_400_000;
    let second = first.with_move(Shard(0), "g2", switch_ms).expect("a move");
    assert_eq!(
        store.put_shard_map("g1", &first).await.expect("put"),
        first.version
    );
    let refused = store
        .put_shard_map("g2", &second)
        .await
        .expect_err("another group's");
    assert!(refused.to_string().contains("\"g1\""), "{refused}");
    assert_eq!(
        store.put_shard_map("g1", &second).await.expect("put"),
        second.version
    );
    // An older version is not written over the newer one; another map of
    // the same version is refused.
    assert_eq!(
        store.put_shard_map("g1", &first).await.expect("put"),
        second.version
    );
    let rival = first.with_move(Shard(1), "g2", switch_ms).expect("a move");
    assert_eq!(rival.version, second.version);
    let refused = store
        .put_shard_map("g1", &rival)
        .await
        .expect_err("a rival");
    assert!(refused.is_refused_record(), "{refused}");
    // One log, one writer: the first store goes before the reopening.
    drop(store);
    let store = open().await;
    let held = store.shard_map().await.expect("read").expect("a map");
    assert_eq!((held.group.as_str(), &held.map), ("g1", &second));
    assert!(held.handed_over.is_empty());

    // Keys of g1's shards, in this group's transactions.
    let mut keyed = Vec::new();
    for key in ["k-b", "k-a", "k-c"] {
        let shard = second.shard_for_key(key);
        let id = second.stamp(TxnId::mint(), shard);
        keyed.push((key, id, second.group_of(id).to_owned()));
    }
    for (key, id, _) in keyed.iter().filter(|(_, _, group)| group == "g1") {
        store
            .append(&[begun(*id, Some(key))])
            .await
            .expect("append");
    }
    let mine: Vec<&str> = {
        let mut mine: Vec<&str> = keyed
            .iter()
            .filter(|(_, _, group)| group == "g1")
            .map(|(key, _, _)| *key)
            .collect();
        mine.sort_unstable();
        mine
    };
    assert!(!mine.is_empty(), "the keys fall in g1's shards: {keyed:?}");
    let page = store.shard_keys("", 1).await.expect("keys");
    assert_eq!(
        page.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        &mine[..1]
    );
    assert_eq!(
        page[0].request_digest.as_deref(),
        Some(format!("digest of {}", mine[0]).as_str())
    );
    let rest = store.shard_keys(&page[0].key, 10).await.expect("keys");
    assert_eq!(
        rest.iter().map(|k| k.key.as_str()).collect::<Vec<_>>(),
        &mine[1..]
    );

    // Keys handed over: found by key, listed with the group's own, and
    // the switch recorded only with the last page.
    let other = TxnId::mint();
    let handed = HandedKey {
        key: "k-handed".into(),
        txn_id: other,
        request_digest: Some("its digest".into()),
    };
    store
        .adopt_shard_keys(Shard(3), switch_ms, std::slice::from_ref(&handed), false)
        .await
        .expect("adopt");
    assert_eq!(
        store.handed_over_key("k-handed").await.expect("read"),
        Some(handed.clone())
    );
    assert!(store.handed_over_key("k-a").await.expect("read").is_none());
    assert!(
        store
            .shard_map()
            .await
            .expect("read")
            .expect("a map")
            .handed_over
            .is_empty()
    );
    // A page sent again (a retried call) changes nothing.
    store
        .adopt_shard_keys(Shard(3), switch_ms, std::slice::from_ref(&handed), false)
        .await
        .expect("adopt again");
    store
        .adopt_shard_keys(Shard(3), switch_ms, &[], true)
        .await
        .expect("the last page");
    // One log, one writer: the first store goes before the reopening.
    drop(store);
    let store = open().await;
    assert_eq!(
        store
            .shard_map()
            .await
            .expect("read")
            .expect("a map")
            .handed_over,
        vec![(Shard(3), switch_ms)]
    );
    let all = store.shard_keys("", 100).await.expect("keys");
    assert!(all.contains(&handed), "{all:?}");
    assert_eq!(all.len(), mine.len() + 1);
}
