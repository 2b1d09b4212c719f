//! The bank example end to end: a coordinator and two account services on
//! loopback, each bank with its own SQLite file; balances checked in the
//! banks' databases, not only statuses.

#[path = "../support/mod.rs"]
mod support;

use concord_example_bank::{account, accounts, open_account, open_db, open_holds, transfer};
use concord_participant::{CoordinatorClient, Outcome};
use concord_proto::v1 as pb;
use sqlx::SqlitePool;
use support::{eventually, quick_config, start_coordinator};
use tokio_util::sync::CancellationToken;

struct Bank {
    url: String,
    pool: SqlitePool,
}

async fn start_bank(
    dir: &std::path::Path,
    name: &str,
    opening: &[(&str, i64)],
    stop: &CancellationToken,
) -> Bank {
    let pool = open_db(&dir.join(format!("{name}.db")))
        .await
        .expect("bank db");
    for (account, cents) in opening {
        open_account(&pool, account, *cents)
            .await
            .expect("open account");
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let served = pool.clone();
    let stop = stop.clone().cancelled_owned();
    tokio::spawn(async move {
        concord_example_bank::serve(
            served,
            support::keys::callers(),
            Default::default(),
            listener,
            stop,
        )
        .await
        .expect("bank serves");
    });
    Bank { url, pool }
}

async fn balance(bank: &Bank, name: &str) -> i64 {
    account(&bank.pool, name)
        .await
        .expect("read")
        .expect("account exists")
        .balance
}

async fn until_ended(client: &CoordinatorClient, id: &str) -> pb::TransactionState {
    eventually(&format!("{id} ends"), || async {
        let state = client.transaction(id).await.ok()?.state;
        let state = pb::TransactionState::try_from(state).ok()?;
        matches!(
            state,
            pb::TransactionState::Committed | pb::TransactionState::Aborted
        )
        .then_some(state)
    })
    .await
}

#[tokio::test]
async fn transfers_commit_or_abort_with_correct_balances() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = CancellationToken::new();
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = support::client(&node);
    let a = start_bank(dir.path(), "bank-a", &[("alice", 10_000)], &stop).await;
    let b = start_bank(dir.path(), "bank-b", &[("bob", 5_000)], &stop).await;

    let done = transfer(&client, &a.url, "alice", &b.url, "bob", 3_000)
        .await
        .expect("transfer");
    assert_eq!(done.outcome, Outcome::Committed { read_only: false });
    until_ended(&client, &done.transaction_id).await;
    assert_eq!(
        (balance(&a, "alice").await, balance(&b, "bob").await),
        (7_000, 8_000)
    );

    let refused = transfer(&client, &a.url, "alice", &b.url, "bob", 50_000)
        .await
        .expect("transfer");
    let Outcome::Aborted { reason } = &refused.outcome else {
        panic!("expected insufficient funds, got {:?}", refused.outcome);
    };
    assert!(reason.contains("insufficient funds"), "{reason}");
    until_ended(&client, &refused.transaction_id).await;
    assert_eq!(
        (balance(&a, "alice").await, balance(&b, "bob").await),
        (7_000, 8_000)
    );

    // A credit that would overflow the balance is refused at prepare, not
    // voted COMMIT and then failed forever in phase 2 (issue 31).
    open_account(&b.pool, "full", i64::MAX - 50)
        .await
        .expect("open account");
    let overflow = transfer(&client, &a.url, "alice", &b.url, "full", 100)
        .await
        .expect("transfer");
    assert!(
        matches!(&overflow.outcome, Outcome::Aborted { reason } if reason.contains("overflow")),
        "{:?}",
        overflow.outcome
    );
    until_ended(&client, &overflow.transaction_id).await;
    assert_eq!(balance(&b, "full").await, i64::MAX - 50);
    assert_eq!(balance(&a, "alice").await, 7_000);

    let nobody = transfer(&client, &a.url, "alice", &b.url, "carol", 100)
        .await
        .expect("transfer");
    assert!(
        matches!(&nobody.outcome, Outcome::Aborted { reason } if reason.contains("no account"))
    );
    until_ended(&client, &nobody.transaction_id).await;
    // Nothing held, nothing pending: the aborted debits were released.
    for bank in [&a, &b] {
        assert!(
            accounts(&bank.pool)
                .await
                .expect("accounts")
                .iter()
                .all(|acc| acc.held == 0)
        );
        assert_eq!(open_holds(&bank.pool).await.expect("holds"), 0);
    }
    stop.cancel();
}

#[tokio::test]
async fn concurrent_transfers_conserve_money() {
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = CancellationToken::new();
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = support::client(&node);
    let a = start_bank(
        dir.path(),
        "bank-a",
        &[("alice", 1_000), ("anna", 1_000)],
        &stop,
    )
    .await;
    let b = start_bank(
        dir.path(),
        "bank-b",
        &[("bob", 1_000), ("bea", 1_000)],
        &stop,
    )
    .await;
    let total_before = 4_000;

    // 40 transfers at once, both directions, some bound to overdraw.
    let mut jobs = Vec::new();
    for i in 0..40i64 {
        let (from_bank, from, to_bank, to) = match i % 4 {
            0 => (a.url.clone(), "alice", b.url.clone(), "bob"),
            1 => (b.url.clone(), "bob", a.url.clone(), "anna"),
            2 => (a.url.clone(), "anna", b.url.clone(), "bea"),
            _ => (b.url.clone(), "bea", a.url.clone(), "alice"),
        };
        let amount = 50 + (i * 37) % 400;
        let client = client.clone();
        jobs.push(tokio::spawn(async move {
            let done = transfer(&client, &from_bank, from, &to_bank, to, amount).await;
            (done, from, to, amount)
        }));
    }
    let mut committed = 0;
    let mut expected: std::collections::HashMap<&str, i64> = [
        ("alice", 1_000),
        ("anna", 1_000),
        ("bob", 1_000),
        ("bea", 1_000),
    ]
    .into();
    for job in jobs {
        let (done, from, to, amount) = job.await.expect("join");
        let done = done.expect("transfer answered");
        if until_ended(&client, &done.transaction_id).await == pb::TransactionState::Committed {
            assert!(
                matches!(done.outcome, Outcome::Committed { .. }),
                "told {:?}",
                done.outcome
            );
            committed += 1;
            *expected.get_mut(from).expect("known") -= amount;
            *expected.get_mut(to).expect("known") += amount;
        } else {
            assert!(
                matches!(done.outcome, Outcome::Aborted { .. }),
                "told {:?}",
                done.outcome
            );
        }
    }
    assert!(committed > 0);
    // I6: no money created or destroyed, none negative; every transfer the
    // client was told committed is applied exactly once.
    let mut total = 0;
    for bank in [&a, &b] {
        for acc in accounts(&bank.pool).await.expect("accounts") {
            assert!(acc.balance >= 0 && acc.held == 0, "{acc:?}");
            assert_eq!(acc.balance, expected[acc.name.as_str()], "{}", acc.name);
            total += acc.balance;
        }
        assert_eq!(open_holds(&bank.pool).await.expect("holds"), 0);
    }
    assert_eq!(total, total_before);
    stop.cancel();
}

/// The bank's "transfer completed" events (DESIGN §10): a payment within
/// one bank is its local transaction, and its event reaches the audit and
/// notification services once if it committed, never if it rolled back.
#[tokio::test]
async fn a_payments_event_reaches_each_service_once_and_a_refused_ones_never() {
    use concord_example_bank::events::{self, Payment, TransferCompleted};
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = CancellationToken::new();
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = support::client(&node);
    let bank = start_bank(
        dir.path(),
        "bank-a",
        &[("alice", 10_000), ("carol", 0)],
        &stop,
    )
    .await;
    let mut services = Vec::new();
    for name in ["audit", "notify"] {
        let pool = events::open_events_db(&dir.path().join(format!("{name}.db")))
            .await
            .expect("events db");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (served, stop) = (pool.clone(), stop.clone().cancelled_owned());
        tokio::spawn(async move {
            events::serve_events(served, support::keys::callers(), listener, stop)
                .await
                .expect("event service serves");
        });
        services.push((name, url, pool));
    }
    let targets: Vec<(&str, &str)> = services
        .iter()
        .map(|(name, url, _)| (*name, url.as_str()))
        .collect();

    let paid = events::pay(
        &client,
        &bank.url,
        &bank.pool,
        ("alice", "carol", 2_000),
        &targets,
    )
    .await
    .expect("pay");
    let Payment::Paid { message_id } = paid else {
        panic!("refused: {paid:?}");
    };
    assert_eq!(balance(&bank, "alice").await, 8_000);
    assert_eq!(balance(&bank, "carol").await, 2_000);
    for (name, _, pool) in &services {
        let received = eventually(&format!("{name}'s event"), || async {
            let events = events::events(pool).await.expect("events");
            (!events.is_empty()).then_some(events)
        })
        .await;
        assert_eq!(received.len(), 1, "{name}: {received:?}");
        assert_eq!(received[0].message_id, message_id);
        assert_eq!(received[0].destination, *name);
        let event: TransferCompleted = serde_json::from_str(&received[0].body).expect("json");
        assert_eq!(
            (
                event.event.as_str(),
                event.from.as_str(),
                event.to.as_str(),
                event.amount
            ),
            ("transfer completed", "alice", "carol", 2_000)
        );
    }

    let refused = events::pay(
        &client,
        &bank.url,
        &bank.pool,
        ("alice", "carol", 90_000),
        &targets,
    )
    .await
    .expect("pay");
    let Payment::Refused { message_id } = refused else {
        panic!("paid: {refused:?}");
    };
    eventually("the refused payment's event dropped", || async {
        let state = client.transaction(&message_id).await.ok()?.state;
        (state == pb::TransactionState::Dropped as i32).then_some(())
    })
    .await;
    assert_eq!(balance(&bank, "alice").await, 8_000);
    for (name, _, pool) in &services {
        let received = events::events(pool).await.expect("events");
        assert_eq!(received.len(), 1, "{name} got the refused payment's event");
    }
    stop.cancel();
}

/// The account service on PostgreSQL (each bank its own database on the
/// harness's server), as `bank-bench` runs it beside XA: a transfer
/// commits at both, one past the balance aborts at both, and concurrent
/// debits of one account never overdraw it (the hold is taken under the
/// row's lock).
#[tokio::test]
async fn banks_on_postgres_commit_abort_and_never_overdraw() {
    use concord_example_bank::{open_pg_db, serve_pg};
    let server = support::postgres::Postgres::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = CancellationToken::new();
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = support::client(&node);
    let mut banks = Vec::new();
    for (name, account, cents) in [("bank_a", "alice", 10_000i64), ("bank_b", "bob", 5_000)] {
        let pool = open_pg_db(&server.database(name).await)
            .await
            .expect("bank db");
        sqlx::query("INSERT INTO accounts (name, balance) VALUES ($1, $2)")
            .bind(account)
            .bind(cents)
            .execute(&pool)
            .await
            .expect("open account");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let (served, stop) = (pool.clone(), stop.clone().cancelled_owned());
        tokio::spawn(async move {
            serve_pg(
                served,
                support::keys::callers(),
                Default::default(),
                listener,
                stop,
            )
            .await
            .expect("serves")
        });
        banks.push((url, pool));
    }
    let balance = |pool: sqlx::PgPool, name: &'static str| async move {
        let (balance, held): (i64, i64) =
            sqlx::query_as("SELECT balance, held FROM accounts WHERE name = $1")
                .bind(name)
                .fetch_one(&pool)
                .await
                .expect("balance");
        (balance, held)
    };
    let ((a, a_pool), (b, b_pool)) = (&banks[0], &banks[1]);

    let done = transfer(&client, a, "alice", b, "bob", 3_000)
        .await
        .expect("transfer");
    assert_eq!(done.outcome, Outcome::Committed { read_only: false });
    until_ended(&client, &done.transaction_id).await;
    assert_eq!(balance(a_pool.clone(), "alice").await, (7_000, 0));
    assert_eq!(balance(b_pool.clone(), "bob").await, (8_000, 0));

    let refused = transfer(&client, a, "alice", b, "bob", 50_000)
        .await
        .expect("transfer");
    assert!(
        matches!(&refused.outcome, Outcome::Aborted { reason } if reason.contains("insufficient funds: alice has 7000 available")),
        "{:?}",
        refused.outcome
    );
    until_ended(&client, &refused.transaction_id).await;

    // Twenty debits of 1,000 at once from 7,000: exactly seven commit.
    let mut racing = Vec::new();
    for _ in 0..20 {
        let (client, a, b) = (client.clone(), a.clone(), b.clone());
        racing.push(tokio::spawn(async move {
            transfer(&client, &a, "alice", &b, "bob", 1_000)
                .await
                .expect("transfer")
        }));
    }
    let mut committed = 0;
    for transfer in racing {
        let transfer = transfer.await.expect("task");
        until_ended(&client, &transfer.transaction_id).await;
        if transfer.outcome == (Outcome::Committed { read_only: false }) {
            committed += 1;
        }
    }
    assert_eq!(committed, 7);
    assert_eq!(balance(a_pool.clone(), "alice").await, (0, 0));
    assert_eq!(balance(b_pool.clone(), "bob").await, (15_000, 0));
    stop.cancel();
}

/// The attack of issue 31 (DESIGN §12): a stranger who reaches a bank's
/// port sends it a `CommitOnePhase` crediting alice a million, no
/// coordinator involved. Unsigned, signed by another key, signed for
/// another payload or branch, or expired: each is refused UNAUTHENTICATED
/// with what was wrong, and nothing changes in the bank's database; the
/// coordinator's own transfer still goes through.
#[tokio::test]
async fn a_stranger_cannot_move_money_by_calling_a_bank_directly() {
    use concord_proto::signature::{CallSigner, SignedCall};
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = CancellationToken::new();
    let a = start_bank(dir.path(), "bank-a", &[("alice", 10_000)], &stop).await;
    let mut stranger = pb::participant_client::ParticipantClient::connect(a.url.clone())
        .await
        .expect("connect");
    let txn = "019a0d3c-5e1f-7c44-9a8b-2f3e4d5c6b7a";
    let theft = br#"{"account":"alice","delta":1000000}"#.to_vec();
    let call = |signature: Option<String>| {
        let mut request = tonic::Request::new(pb::CommitOnePhaseRequest {
            branch: Some(pb::BranchRef {
                transaction_id: txn.into(),
                branch: "credit".into(),
                coordinator: String::new(),
            }),
            payload: theft.clone(),
        });
        if let Some(signature) = signature {
            request.metadata_mut().insert(
                concord_proto::signature::SIGNATURE_HEADER,
                signature.parse().expect("ASCII"),
            );
        }
        request
    };
    let signed_for =
        |branch: &str, payload: &[u8]| support::keys::sign("CommitOnePhase", txn, branch, payload);
    let other_key = CallSigner::generate().expect("a key").sign(
        &SignedCall {
            method: "CommitOnePhase",
            transaction_id: txn,
            branch: "credit",
            payload: &theft,
        },
        std::time::Duration::from_secs(60),
    );
    let expired = support::keys::signer().sign_until(
        &SignedCall {
            method: "CommitOnePhase",
            transaction_id: txn,
            branch: "credit",
            payload: &theft,
        },
        1_000,
    );
    let attempts = [
        (None, "not signed"),
        (Some(other_key), "does not trust"),
        (
            Some(signed_for("credit", br#"{"account":"alice","delta":1}"#)),
            "does not match",
        ),
        (Some(signed_for("debit", &theft)), "does not match"),
        (Some(expired), "expired"),
        (Some("v1.garbage".into()), "malformed"),
    ];
    for (signature, why) in attempts {
        let status = stranger
            .commit_one_phase(call(signature))
            .await
            .expect_err("refused");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
        assert!(status.message().contains(why), "{why}: {status:?}");
    }
    assert_eq!(balance(&a, "alice").await, 10_000, "nothing moved");
    let (ledger,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM concord_ledger")
        .fetch_one(&a.pool)
        .await
        .expect("ledger");
    assert_eq!(ledger, 0, "not even a ledger row");

    // The coordinator's own calls, signed, are obeyed.
    let node_dir = dir.path().join("coordinator");
    let node = start_coordinator(&node_dir, quick_config()).await;
    let client = support::client(&node);
    let b = start_bank(dir.path(), "bank-b", &[("bob", 5_000)], &stop).await;
    let done = transfer(&client, &a.url, "alice", &b.url, "bob", 3_000)
        .await
        .expect("transfer");
    assert_eq!(
        until_ended(&client, &done.transaction_id).await,
        pb::TransactionState::Committed
    );
    assert_eq!(balance(&a, "alice").await, 7_000);
    assert_eq!(balance(&b, "bob").await, 8_000);
    stop.cancel();
}

/// DESIGN §12 (S3): a coordinator signs what its clients ask it to send,
/// so a stranger who may Begin and Commit moves money past every
/// signature. With client tokens, a call without one (or with a wrong one)
/// is refused before anything happens: no transaction, no call to the
/// bank, alice's balance as it was. A client with a token (the old one or
/// the new, during a rotation) transfers; a client token is not the admin
/// token; GetOutcome, a participant's question, needs none.
#[tokio::test]
async fn a_stranger_cannot_move_money_through_a_coordinator_that_requires_a_client_token() {
    use concord_coordinator::node::{Node, NodeConfig};
    let dir = tempfile::tempdir().expect("temp dir");
    let stop = CancellationToken::new();
    let a = start_bank(dir.path(), "bank-a", &[("alice", 10_000)], &stop).await;
    let b = start_bank(dir.path(), "bank-b", &[("bob", 5_000)], &stop).await;
    let node = Node::start(NodeConfig {
        access: concord_coordinator::api::Access {
            admin_token: Some("ops-token".into()),
            client_tokens: vec!["old-app-token".into(), "app-token".into()],
            ..Default::default()
        },
        ..support::node_config(&dir.path().join("coordinator"))
    })
    .await
    .expect("coordinator starts");
    let url = node.url();

    let stranger = CoordinatorClient::connect(url.clone()).expect("client");
    let guessed = CoordinatorClient::connect(url.clone())
        .expect("client")
        .with_token("app-tokem")
        .expect("token");
    for (who, client) in [("no token", &stranger), ("a wrong token", &guessed)] {
        // All of bob's money to alice.
        let refused = transfer(client, &b.url, "bob", &a.url, "alice", 5_000)
            .await
            .expect_err(who);
        assert!(
            matches!(&refused, concord_participant::ClientError::Unauthenticated(m)
                if m.contains("client token")),
            "{who}: {refused:?}"
        );
        let listed = client
            .transaction("019a0d3c-5e1f-7c44-9a8b-2f3e4d5c6b7a")
            .await
            .expect_err("reads need a token too");
        assert!(
            matches!(listed, concord_participant::ClientError::Unauthenticated(_)),
            "{listed:?}"
        );
    }
    assert_eq!(balance(&a, "alice").await, 10_000, "nothing moved");
    assert_eq!(balance(&b, "bob").await, 5_000, "nothing moved");
    let (ledger,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM concord_ledger")
        .fetch_one(&a.pool)
        .await
        .expect("ledger");
    assert_eq!(ledger, 0, "the bank was never called");

    for token in ["old-app-token", "app-token"] {
        let client = CoordinatorClient::connect(url.clone())
            .expect("client")
            .with_token(token)
            .expect("token");
        let done = transfer(&client, &a.url, "alice", &b.url, "bob", 1_000)
            .await
            .expect("a client with a token transfers");
        assert_eq!(
            until_ended(&client, &done.transaction_id).await,
            pb::TransactionState::Committed
        );
        // A participant asks about its branch without a token.
        let mut raw = stranger.raw();
        let outcome = raw
            .get_outcome(pb::GetOutcomeRequest {
                transaction_id: done.transaction_id.clone(),
            })
            .await
            .expect("GetOutcome needs no token")
            .into_inner();
        assert_eq!(outcome.outcome(), pb::Outcome::Committed);
        // A client token is no operator's.
        let mut request = tonic::Request::new(pb::RetryTransactionRequest {
            transaction_id: done.transaction_id.clone(),
        });
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ASCII"),
        );
        let status = raw
            .retry_transaction(request)
            .await
            .expect_err("not an operator");
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{status:?}");
    }
    assert_eq!(balance(&a, "alice").await, 8_000);
    assert_eq!(balance(&b, "bob").await, 7_000);
    stop.cancel();
}

/// A participant told neither whose calls to obey nor to obey anyone
/// refuses to start, naming both ways to fix it.
#[tokio::test]
async fn a_bank_without_a_coordinator_key_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let pool = open_db(&dir.path().join("bank.db")).await.expect("db");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let service = concord_participant::ParticipantService::new(concord_example_bank::Bank, pool)
        .await
        .expect("ledger");
    let error = service
        .serve(listener, std::future::pending())
        .await
        .expect_err("refuses");
    let message = error.to_string();
    assert!(
        message.contains("with_coordinator_keys") && message.contains("accept_unsigned_calls"),
        "{message}"
    );
    let error = concord_participant::Callers::from_flags(None, false).expect_err("neither");
    assert!(
        error.to_string().contains("--coordinator-key")
            && error.to_string().contains("--accept-unsigned-calls"),
        "{error}"
    );
}
