//! Transactional messages (DESIGN §10) over real gRPC on loopback, each
//! service with its own SQLite file: a producer debits and publishes in one
//! local transaction; the coordinator delivers to destinations that record
//! what they took in their own databases. Checked by what is in those
//! databases: a message takes effect once at every destination if and only
//! if its producer's local change committed (I7), and in order when it
//! has a key (M5). The coordinator is a real child process where the test
//! kills it.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use concord_participant::message::{Destination, Message, PreparedMessage};
use concord_participant::outbox::PublishError;
use concord_participant::{ClientError, CoordinatorClient, MessageState};
use concord_proto::v1 as pb;
use support::keys::SignedClient;
use support::message::{MessageParticipant, debit_and_publish};
use support::processes::{free_addr, start_coordinator as start_process};
use support::{client, eventually, quick_config, start_coordinator};

struct Setup {
    dir: tempfile::TempDir,
    _node: concord_coordinator::node::Node,
    client: CoordinatorClient,
    bank: MessageParticipant,
    audit: MessageParticipant,
    notify: MessageParticipant,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let bank = MessageParticipant::start(dir.path(), "bank").await;
    let audit = MessageParticipant::start(dir.path(), "audit").await;
    let notify = MessageParticipant::start(dir.path(), "notify").await;
    Setup {
        dir,
        _node: node,
        client,
        bank,
        audit,
        notify,
    }
}

/// "transfer completed" to the audit and notification services. Its
/// check-back is due 3 s after it is prepared: long enough that each test's
/// local transaction is done by then on a loaded machine.
fn transfer_event(s: &Setup, text: &str) -> Message {
    Message::new(&s.bank.url)
        .to(Destination::new("audit", &s.audit.url).payload(text))
        .to(Destination::new("notify", &s.notify.url).payload(text))
        .check_after(Duration::from_secs(3))
}

/// [`transfer_event`], prepared.
async fn prepared(s: &Setup, text: &str) -> PreparedMessage {
    transfer_event(s, text)
        .prepare(&s.client)
        .await
        .expect("prepare")
}

async fn state(client: &CoordinatorClient, id: &str) -> pb::TransactionState {
    let txn = client.transaction(id).await.expect("get");
    pb::TransactionState::try_from(txn.state).expect("state")
}

async fn until_state(client: &CoordinatorClient, id: &str, wanted: pb::TransactionState) {
    eventually(&format!("message {id} {wanted:?}"), || async move {
        (state(client, id).await == wanted).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_submitted_message_takes_effect_once_at_every_destination() {
    let s = setup().await;
    let message = transfer_event(&s, "acct-1 -100")
        .description("transfer t1")
        .prepare(&s.client)
        .await
        .expect("prepare");
    assert_eq!(
        state(&s.client, message.id()).await,
        pb::TransactionState::Prepared
    );
    s.bank
        .debit_and_publish("t1", 100, &message, true)
        .await
        .expect("local transaction");
    let delivered = message.submit_and_wait(&s.client).await.expect("submit");
    assert_eq!(delivered, MessageState::Delivered);
    assert_eq!(s.bank.debits().await, ["t1"]);
    assert_eq!(
        s.audit.inbox().await,
        [(message.id().into(), "audit".into(), "acct-1 -100".into())]
    );
    assert_eq!(
        s.notify.inbox().await,
        [(message.id().into(), "notify".into(), "acct-1 -100".into())]
    );
    let txn = s.client.transaction(message.id()).await.expect("get");
    assert_eq!(txn.kind, pb::TransactionKind::Message as i32);
    assert_eq!(txn.producer, s.bank.url);
    assert_eq!(txn.reason, "submitted by the producer");
    let branches: Vec<(String, i32)> = txn
        .branches
        .iter()
        .map(|b| (b.name.clone(), b.state))
        .collect();
    assert_eq!(
        branches,
        [
            ("audit".into(), pb::BranchState::Delivered as i32),
            ("notify".into(), pb::BranchState::Delivered as i32)
        ]
    );

    // Submitting again answers the same; nothing is delivered twice.
    assert_eq!(
        message.submit(&s.client).await.expect("again"),
        MessageState::Delivered
    );
    // A delivery made again (a redelivery after a crash, a duplicate on the
    // wire) has no second effect (M4).
    let mut raw = SignedClient::connect(s.audit.url.clone())
        .await
        .expect("connect");
    raw.deliver(pb::DeliverRequest {
        branch: Some(pb::BranchRef {
            transaction_id: message.id().into(),
            branch: "audit".into(),
            coordinator: String::new(),
        }),
        payload: b"acct-1 -100".to_vec(),
    })
    .await
    .expect("duplicate delivery acknowledged");
    assert_eq!(s.audit.received(message.id()).await, 1);
}

#[tokio::test]
async fn a_producer_gone_after_its_commit_is_asked_and_its_message_delivered() {
    let s = setup().await;
    let bank_addr = s.bank.addr();
    let message = prepared(&s, "acct-2 -50").await;
    // The producer dies between its local commit and SubmitMessage: its
    // service is gone before the check-back is due (3 s), and its local
    // transaction committed.
    let pool = s.bank.pool.clone();
    s.bank.stop().await;
    debit_and_publish(&pool, "t2", 50, &message, true)
        .await
        .expect("local transaction");
    // Its check-back fails while it is down (M6: asked again, never
    // dropped for silence) ...
    eventually("a failed check-back", || async {
        let txn = s.client.transaction(message.id()).await.expect("get");
        txn.reason.contains("check-back failed").then_some(())
    })
    .await;
    assert_eq!(
        state(&s.client, message.id()).await,
        pb::TransactionState::Prepared
    );
    assert!(
        s.audit.inbox().await.is_empty(),
        "M1: delivered before confirmed"
    );
    // ... and once it is back, finds the outbox row: delivered.
    let bank = MessageParticipant::start_on(s.dir.path(), "bank", &bank_addr).await;
    until_state(&s.client, message.id(), pb::TransactionState::Delivered).await;
    assert_eq!(s.audit.received(message.id()).await, 1);
    assert_eq!(s.notify.received(message.id()).await, 1);
    let txn = s.client.transaction(message.id()).await.expect("get");
    assert!(
        txn.reason.starts_with("confirmed by a check-back"),
        "{}",
        txn.reason
    );
    assert_eq!(bank.debits().await, ["t2"]);
}

#[tokio::test]
async fn a_message_whose_local_change_never_committed_is_dropped_for_good() {
    let s = setup().await;
    // Rolled back: the debit and its outbox row go together.
    let rolled_back = prepared(&s, "acct-3 -10").await;
    s.bank
        .debit_and_publish("t3", 10, &rolled_back, false)
        .await
        .expect("local transaction");
    // Never reached: the producer died before its local transaction.
    let never = prepared(&s, "acct-3 -20").await;
    until_state(&s.client, rolled_back.id(), pb::TransactionState::Dropped).await;
    until_state(&s.client, never.id(), pb::TransactionState::Dropped).await;
    assert!(s.audit.inbox().await.is_empty());
    assert!(s.notify.inbox().await.is_empty());
    assert!(s.bank.debits().await.is_empty());

    // M2: the producer, late, can no longer commit a change with it ...
    let late = s.bank.debit_and_publish("t3-late", 20, &never, true).await;
    assert!(matches!(late, Err(PublishError::Dropped(_))), "{late:?}");
    assert!(
        s.bank.debits().await.is_empty(),
        "the late change committed"
    );
    // ... nor submit it.
    let submitted = never.submit(&s.client).await;
    assert!(
        matches!(&submitted, Err(ClientError::FailedPrecondition(m)) if m.contains("dropped")),
        "{submitted:?}"
    );
    assert!(s.audit.inbox().await.is_empty());
}

#[tokio::test]
async fn a_destination_down_for_a_while_gets_the_message_once_it_is_back() {
    let s = setup().await;
    s.notify.down(true);
    let message = prepared(&s, "flaky:2 acct-4 -5").await;
    s.bank
        .debit_and_publish("t4", 5, &message, true)
        .await
        .expect("local transaction");
    assert_eq!(
        message.submit(&s.client).await.expect("submit"),
        MessageState::Delivering
    );
    // The audit service took it (after two scripted failures); the
    // notifier is down, and the coordinator keeps trying (M3).
    eventually("audit's delivery", || async {
        (s.audit.received(message.id()).await == 1).then_some(())
    })
    .await;
    eventually("a few failed deliveries to the notifier", || async {
        let txn = s.client.transaction(message.id()).await.expect("get");
        let notify = txn.branches.iter().find(|b| b.name == "notify")?;
        (notify.attempts >= 3 && notify.last_error.contains("down")).then_some(())
    })
    .await;
    assert_eq!(
        state(&s.client, message.id()).await,
        pb::TransactionState::Delivering
    );
    s.notify.down(false);
    until_state(&s.client, message.id(), pb::TransactionState::Delivered).await;
    assert_eq!(s.audit.received(message.id()).await, 1);
    assert_eq!(s.notify.received(message.id()).await, 1);
    let txn = s.client.transaction(message.id()).await.expect("get");
    let audit = txn
        .branches
        .iter()
        .find(|b| b.name == "audit")
        .expect("audit");
    assert_eq!(
        audit.attempts, 3,
        "two scripted failures, then the delivery"
    );
}

#[tokio::test]
async fn messages_with_one_key_reach_each_destination_in_order_despite_retries() {
    let s = setup().await;
    // The first message of each run fails its first deliveries to the
    // audit service (`first`'s script): the others, submitted after it,
    // must wait behind it when they share its key.
    async fn run(s: &Setup, key: Option<&str>, run: &str, first: &str) -> Vec<String> {
        let mut ids = Vec::new();
        for n in 0..4 {
            let text = if n == 0 {
                format!("{first} {run}-{n}")
            } else {
                format!("{run}-{n}")
            };
            let mut message =
                Message::new(&s.bank.url).to(Destination::new("audit", &s.audit.url).payload(text));
            if let Some(key) = key {
                message = message.ordering_key(key);
            }
            let message = message.prepare(&s.client).await.expect("prepare");
            s.bank
                .debit_and_publish(&format!("{run}-{n}"), 1, &message, true)
                .await
                .expect("local transaction");
            message.submit(&s.client).await.expect("submit");
            ids.push(message.id().to_owned());
        }
        for id in &ids {
            until_state(&s.client, id, pb::TransactionState::Delivered).await;
        }
        ids
    }
    let ordered = run(&s, Some("acct-5"), "ordered", "flaky:2").await;
    let taken: Vec<String> = s
        .audit
        .inbox()
        .await
        .into_iter()
        .map(|(id, ..)| id)
        .collect();
    assert_eq!(taken, ordered, "M5: the key's order was not kept");

    // Without a key nothing waits: the first message, failing until the
    // three after it are in, arrives last (with a key it never would).
    let unordered = run(&s, None, "unordered", "until:7").await;
    let taken: Vec<String> = s
        .audit
        .inbox()
        .await
        .into_iter()
        .map(|(id, ..)| id)
        .filter(|id| unordered.contains(id))
        .collect();
    assert_eq!(taken.len(), 4);
    assert_eq!(
        taken.last(),
        Some(&unordered[0]),
        "without a key, the retried message should not hold the others up"
    );
}

#[tokio::test]
async fn a_coordinator_killed_mid_delivery_delivers_after_its_restart_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("coordinator");
    let addr = free_addr();
    let coordinator = start_process(addr, &data, None).await;
    let client = CoordinatorClient::connect(format!("http://{addr}")).expect("client");
    let bank = MessageParticipant::start(dir.path(), "bank").await;
    let audit = MessageParticipant::start(dir.path(), "audit").await;
    let notify = MessageParticipant::start(dir.path(), "notify").await;
    notify.down(true);
    let message = Message::new(&bank.url)
        .to(Destination::new("audit", &audit.url).payload("acct-6 -7"))
        .to(Destination::new("notify", &notify.url).payload("acct-6 -7"))
        .ordering_key("acct-6")
        .prepare(&client)
        .await
        .expect("prepare");
    bank.debit_and_publish("t6", 7, &message, true)
        .await
        .expect("local transaction");
    message.submit(&client).await.expect("submit");
    eventually("audit's delivery", || async {
        (audit.received(message.id()).await == 1).then_some(())
    })
    .await;
    // Mid-delivery: audit acknowledged, the notifier not yet. kill -9.
    coordinator.kill().await;
    notify.down(false);
    let _coordinator = start_process(addr, &data, None).await;
    until_state(&client, message.id(), pb::TransactionState::Delivered).await;
    // The restarted coordinator delivered to both again (it does not log
    // acknowledgements); the audit service's ledger absorbed the second.
    assert_eq!(audit.received(message.id()).await, 1);
    assert_eq!(notify.received(message.id()).await, 1);
    let txn = client.transaction(message.id()).await.expect("get");
    assert_eq!(txn.ordering_key, "acct-6");
}

#[tokio::test]
async fn a_retried_prepare_with_its_key_finds_the_same_message() {
    let s = setup().await;
    let first = transfer_event(&s, "acct-7 -1")
        .idempotency_key("t7-event")
        .prepare(&s.client)
        .await
        .expect("prepare");
    let again = transfer_event(&s, "acct-7 -1")
        .idempotency_key("t7-event")
        .prepare(&s.client)
        .await
        .expect("prepare again");
    assert_eq!(first, again);
    let other = transfer_event(&s, "acct-7 -2")
        .idempotency_key("t7-event")
        .prepare(&s.client)
        .await;
    assert!(
        matches!(&other, Err(ClientError::AlreadyExists(m)) if m.contains(first.id())),
        "{other:?}"
    );
    // A key a 2PC transaction holds is not a message's.
    let begun = s
        .client
        .begin(concord_participant::BeginOptions {
            idempotency_key: Some("t7-2pc".into()),
            ..Default::default()
        })
        .await
        .expect("begin");
    let submitted = PreparedMessage::from_id(&begun.transaction_id)
        .submit(&s.client)
        .await;
    assert!(
        matches!(&submitted, Err(ClientError::FailedPrecondition(m)) if m.contains("not a message")),
        "{submitted:?}"
    );
}

#[tokio::test]
async fn bad_messages_are_refused_precisely_and_change_nothing() {
    let s = setup().await;
    let good = || pb::PrepareMessageRequest {
        producer: s.bank.url.clone(),
        destinations: vec![pb::MessageDestination {
            name: "audit".into(),
            participant: s.audit.url.clone(),
            payload: b"x".to_vec(),
        }],
        ..Default::default()
    };
    let cases: Vec<(pb::PrepareMessageRequest, &str)> = vec![
        (
            pb::PrepareMessageRequest {
                producer: String::new(),
                ..good()
            },
            "producer is empty",
        ),
        (
            pb::PrepareMessageRequest {
                producer: "bank:7501".into(),
                ..good()
            },
            "producer \"bank:7501\" must start with http:// or https://",
        ),
        (
            pb::PrepareMessageRequest {
                destinations: Vec::new(),
                ..good()
            },
            "destinations is empty",
        ),
        (
            pb::PrepareMessageRequest {
                destinations: vec![
                    good().destinations[0].clone(),
                    good().destinations[0].clone(),
                ],
                ..good()
            },
            "destination \"audit\" is named twice",
        ),
        (
            pb::PrepareMessageRequest {
                destinations: vec![pb::MessageDestination {
                    name: String::new(),
                    ..good().destinations[0].clone()
                }],
                ..good()
            },
            "destinations[0].name is empty",
        ),
        (
            pb::PrepareMessageRequest {
                destinations: vec![pb::MessageDestination {
                    participant: "http://audit".into(),
                    ..good().destinations[0].clone()
                }],
                ..good()
            },
            "destinations[0].participant \"http://audit\" has no port",
        ),
        (
            pb::PrepareMessageRequest {
                destinations: vec![pb::MessageDestination {
                    name: "producer".into(),
                    ..good().destinations[0].clone()
                }],
                ..good()
            },
            "destinations[0].name \"producer\" is reserved",
        ),
        (
            pb::PrepareMessageRequest {
                check_after_ms: 10,
                ..good()
            },
            "check_after_ms must be 0 (the default) or between 1000 and 86400000 ms",
        ),
        (
            pb::PrepareMessageRequest {
                ordering_key: "ключ".into(),
                ..good()
            },
            "ordering_key must be printable ASCII",
        ),
        (
            pb::PrepareMessageRequest {
                description: "d".repeat(300),
                ..good()
            },
            "description is 300 bytes; at most 256",
        ),
    ];
    for (request, expected) in cases {
        let refused = s
            .client
            .prepare_message(request)
            .await
            .expect_err("refused");
        assert!(
            matches!(&refused, ClientError::InvalidArgument(m) if m.contains(expected)),
            "expected {expected:?}, got {refused:?}"
        );
    }
    for (id, expected) in [("", "transaction_id is empty"), ("nope", "is not a UUID")] {
        let refused = s
            .client
            .submit_message(id, false)
            .await
            .expect_err("refused");
        assert!(
            matches!(&refused, ClientError::InvalidArgument(m) if m.contains(expected)),
            "{refused:?}"
        );
    }
    let unknown = s
        .client
        .submit_message("01890a5d-ac96-774b-bcce-b302099a8057", false)
        .await;
    assert!(
        matches!(unknown, Err(ClientError::NotFound(_))),
        "{unknown:?}"
    );
    // Nothing was recorded.
    let mut raw = s.client.raw();
    let listed = raw
        .list_transactions(pb::ListTransactionsRequest::default())
        .await
        .expect("list")
        .into_inner();
    assert!(listed.transactions.is_empty(), "{:?}", listed.transactions);
}

/// M6: a producer gone for good leaves its message PREPARED and flagged,
/// never dropped for silence; an operator who looked for the outbox row by
/// hand resolves it (aborted: dropped; committed: delivered), and one
/// destination that will never answer is resolved as having taken it. Each
/// decision is recorded with who and why; nothing contradicting what is
/// known is accepted.
#[tokio::test]
async fn an_operator_resolves_a_producer_gone_for_good_and_a_destination_that_never_answers() {
    let s = setup().await;
    let never = prepared(&s, "acct-8 -1").await;
    let committed = prepared(&s, "acct-8 -2").await;
    s.bank
        .debit_and_publish("t8", 2, &committed, true)
        .await
        .expect("local transaction");
    // The producer is gone for good, before submitting either.
    let (bank_url, audit_url) = (s.bank.url.clone(), s.audit.url.clone());
    s.bank.stop().await;
    for id in [never.id(), committed.id()] {
        eventually("the message flagged NEEDS_ATTENTION", || async {
            let txn = s.client.transaction(id).await.expect("get");
            (txn.needs_attention && txn.state == pb::TransactionState::Prepared as i32)
                .then_some(())
        })
        .await;
    }
    let mut raw = s.client.raw();
    let resolve = |id: &str, branch: &str, outcome: pb::Resolution| pb::ResolveBranchRequest {
        transaction_id: id.into(),
        branch: branch.into(),
        outcome: outcome as i32,
        reason: "restored the bank from backup; looked for the outbox row by hand".into(),
        operator: "ops-anna".into(),
    };
    // What contradicts the message is refused and changes nothing.
    let refused = raw
        .resolve_branch(resolve(never.id(), "producer", pb::Resolution::Compensated))
        .await
        .expect_err("compensated");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let refused = raw
        .resolve_branch(resolve(never.id(), "audit", pb::Resolution::Committed))
        .await
        .expect_err("a destination of a prepared message");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let refused = raw
        .resolve_branch(resolve(never.id(), "ledger", pb::Resolution::Committed))
        .await
        .expect_err("no such destination");
    assert_eq!(refused.code(), tonic::Code::NotFound, "{refused:?}");

    raw.resolve_branch(resolve(never.id(), "producer", pb::Resolution::Aborted))
        .await
        .expect("resolve aborted");
    until_state(&s.client, never.id(), pb::TransactionState::Dropped).await;
    raw.resolve_branch(resolve(
        committed.id(),
        "producer",
        pb::Resolution::Committed,
    ))
    .await
    .expect("resolve committed");
    until_state(&s.client, committed.id(), pb::TransactionState::Delivered).await;
    assert_eq!(s.audit.received(never.id()).await, 0);
    assert_eq!(s.notify.received(never.id()).await, 0);
    assert_eq!(s.audit.received(committed.id()).await, 1);
    assert_eq!(s.notify.received(committed.id()).await, 1);
    let txn = s.client.transaction(never.id()).await.expect("get");
    assert!(
        txn.reason.contains("dropped by an operator (ops-anna)"),
        "{}",
        txn.reason
    );
    assert_eq!(txn.operator_actions.len(), 1);
    assert_eq!(txn.operator_actions[0].branch, "producer");
    assert_eq!(txn.operator_actions[0].operator, "ops-anna");
    // The producer's answer is known now: resolving it again is refused.
    let refused = raw
        .resolve_branch(resolve(committed.id(), "producer", pb::Resolution::Aborted))
        .await
        .expect_err("already delivered");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );

    // A destination that will never answer: the others get the message,
    // and the operator records that one by hand.
    let bank =
        MessageParticipant::start_on(s.dir.path(), "bank", &bank_url.replace("http://", "")).await;
    s.notify.down(true);
    let stuck = Message::new(&bank.url)
        .to(Destination::new("audit", &audit_url).payload("acct-9 -3"))
        .to(Destination::new("notify", &s.notify.url).payload("acct-9 -3"))
        .prepare(&s.client)
        .await
        .expect("prepare");
    bank.debit_and_publish("t9", 3, &stuck, true)
        .await
        .expect("local transaction");
    stuck.submit(&s.client).await.expect("submit");
    eventually("audit's delivery", || async {
        (s.audit.received(stuck.id()).await == 1).then_some(())
    })
    .await;
    let refused = raw
        .resolve_branch(resolve(stuck.id(), "notify", pb::Resolution::Aborted))
        .await
        .expect_err("a committed message cannot be undone");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    raw.resolve_branch(resolve(stuck.id(), "notify", pb::Resolution::Committed))
        .await
        .expect("resolve the destination");
    until_state(&s.client, stuck.id(), pb::TransactionState::Delivered).await;
    assert_eq!(
        s.notify.received(stuck.id()).await,
        0,
        "the operator took it on"
    );
    let txn = s.client.transaction(stuck.id()).await.expect("get");
    assert_eq!(txn.operator_actions[0].branch, "notify");
}

/// An operator's decision for a destination holds across a crash: after
/// the coordinator is killed and restarted (acknowledgements are not
/// logged, so every destination is owed again), the one resolved by hand
/// is not called, even though it is back up; the others are delivered to.
#[tokio::test]
async fn an_operators_decision_for_a_destination_survives_a_kill_9() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("coordinator");
    let addr = free_addr();
    let coordinator = start_process(addr, &data, None).await;
    let client = CoordinatorClient::connect(format!("http://{addr}")).expect("client");
    let bank = MessageParticipant::start(dir.path(), "bank").await;
    let audit = MessageParticipant::start(dir.path(), "audit").await;
    let notify = MessageParticipant::start(dir.path(), "notify").await;
    let ledger = MessageParticipant::start(dir.path(), "ledger").await;
    notify.down(true);
    ledger.down(true);
    let message = Message::new(&bank.url)
        .to(Destination::new("audit", &audit.url).payload("acct-10 -4"))
        .to(Destination::new("notify", &notify.url).payload("acct-10 -4"))
        .to(Destination::new("ledger", &ledger.url).payload("acct-10 -4"))
        .prepare(&client)
        .await
        .expect("prepare");
    bank.debit_and_publish("t10", 4, &message, true)
        .await
        .expect("local transaction");
    message.submit(&client).await.expect("submit");
    eventually("audit's delivery", || async {
        (audit.received(message.id()).await == 1).then_some(())
    })
    .await;
    client
        .raw()
        .resolve_branch(pb::ResolveBranchRequest {
            transaction_id: message.id().into(),
            branch: "notify".into(),
            outcome: pb::Resolution::Committed as i32,
            reason: "the notifier is retired; its users were told by mail".into(),
            operator: "ops-anna".into(),
        })
        .await
        .expect("resolve");
    assert_eq!(
        state(&client, message.id()).await,
        pb::TransactionState::Delivering,
        "the ledger still owes it"
    );
    coordinator.kill().await;
    notify.down(false);
    ledger.down(false);
    let _coordinator = start_process(addr, &data, None).await;
    until_state(&client, message.id(), pb::TransactionState::Delivered).await;
    assert_eq!(audit.received(message.id()).await, 1);
    assert_eq!(ledger.received(message.id()).await, 1);
    assert_eq!(
        notify.received(message.id()).await,
        0,
        "the operator's decision did not hold across the restart"
    );
    let txn = client.transaction(message.id()).await.expect("get");
    assert_eq!(txn.operator_actions.len(), 1);
}
