//! `concord txn`, the operator's tool, run as the real binary against a
//! coordinator: a transaction stuck waiting out a long phase-2 backoff is
//! found by `list`, explained by `show`, and finished by `retry` long before
//! its backoff would have ended; a branch whose participant is lost is
//! resolved by an operator, durably and visibly.

use std::time::Duration;

use concord_coordinator::runtime::RuntimeConfig;
use concord_participant::{BeginOptions, Outcome};
use concord_proto::v1 as pb;

use super::support::{TestParticipant, client, eventually, quick_config, start_coordinator};

/// Runs `concord txn <args>` against `url`; returns stdout, or panics with
/// stderr.
async fn txn(url: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .arg("txn")
        .args(["--coordinator", url])
        .args(args)
        .output()
        .await
        .expect("run concord txn");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "concord txn {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

#[tokio::test]
async fn an_operator_finds_a_stuck_transaction_sees_why_and_retries_it_now() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    // Phase-2 retries wait a minute: longer than this test may take.
    let config = RuntimeConfig::with_retry(
        Duration::from_secs(60),
        Duration::from_secs(120),
        RuntimeConfig {
            signer: Some(super::support::keys::signer()),
            ..RuntimeConfig::default()
        },
    );
    let node = start_coordinator(&coordinator_dir, config).await;
    let url = node.url();
    let client = client(&node);
    let a = TestParticipant::start(dir.path(), "a", Some(&coordinator_dir)).await;
    let b = TestParticipant::start(dir.path(), "b", Some(&coordinator_dir)).await;
    let id = client
        .begin(BeginOptions::default())
        .await
        .expect("begin")
        .transaction_id;
    client
        .enlist(&id, &a.url, "commit", Some("steady"))
        .await
        .expect("enlist");
    client
        .enlist(&id, &b.url, "flaky-commit:1", Some("flaky"))
        .await
        .expect("enlist");
    assert_eq!(
        client.commit(&id).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    // b refused its first Commit; the next attempt is a minute away.
    eventually("the flaky branch failed once", || async {
        let txn = client.transaction(&id).await.ok()?;
        txn.branches
            .iter()
            .any(|b| b.name == "flaky" && !b.last_error.is_empty())
            .then_some(())
    })
    .await;

    let listed = txn(&url, &["list", "--state", "committing"]).await;
    assert!(listed.contains(&id), "{listed}");
    assert!(
        listed.contains("2pc") && listed.contains("committing"),
        "{listed}"
    );
    let shown = txn(&url, &["show", &id]).await;
    assert!(shown.contains("state           committing"), "{shown}");
    assert!(
        shown.contains("flaky") && shown.contains("last error: commit delivery failed"),
        "{shown}"
    );
    assert!(shown.contains("decided"), "{shown}");
    // Undecided or not, it has not ended: its deadline still shows.
    assert!(shown.contains("deadline"), "{shown}");

    let retried = txn(&url, &["retry", &id]).await;
    assert!(retried.contains("1 waiting retry started now"), "{retried}");
    // Well within the minute the backoff would have taken.
    eventually("the transaction commits after the retry", || async {
        let state = client.transaction(&id).await.ok()?.state;
        (state == pb::TransactionState::Committed as i32).then_some(())
    })
    .await;
    assert_eq!(b.effects(&id).await, ["prepare", "commit"]);

    // Filters: nothing of this kind or age, and a clear error for a typo.
    assert!(
        txn(&url, &["list", "--kind", "saga"])
            .await
            .contains("(none)")
    );
    assert!(
        txn(&url, &["list", "--older-than", "1d"])
            .await
            .contains("(none)")
    );
    assert!(
        txn(&url, &["list", "--older-than", "0s", "--kind", "2pc"])
            .await
            .contains(&id)
    );
    let typo = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .args(["txn", "--coordinator", &url, "show", "not-an-id"])
        .output()
        .await
        .expect("run");
    assert!(!typo.status.success());
    let stderr = String::from_utf8_lossy(&typo.stderr);
    assert!(
        stderr.contains("\"not-an-id\" is not a transaction id"),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_operator_resolves_a_branch_that_cannot_answer_and_the_decision_is_kept_forever() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let url = node.url();
    let client = client(&node);
    let a = TestParticipant::start(dir.path(), "a", Some(&coordinator_dir)).await;
    let b = TestParticipant::start(dir.path(), "b", Some(&coordinator_dir)).await;
    let id = client
        .begin(BeginOptions::default())
        .await
        .expect("begin")
        .transaction_id;
    client
        .enlist(&id, &a.url, "commit", Some("steady"))
        .await
        .expect("enlist");
    // b votes COMMIT, then refuses every Commit: its bank is "lost".
    client
        .enlist(&id, &b.url, "flaky-commit:1000000", Some("lost"))
        .await
        .expect("enlist");
    assert_eq!(
        client.commit(&id).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    eventually("the lost branch keeps failing", || async {
        let txn = client.transaction(&id).await.ok()?;
        (txn.branches.iter().any(|b| b.attempts >= 3)).then_some(())
    })
    .await;

    // What would leave it half-done, or is not there, is refused.
    let refused = txn_fails(
        &url,
        &[
            "resolve",
            &id,
            "--branch",
            "lost",
            "--outcome",
            "aborted",
            "--reason",
            "oops",
            "--operator",
            "bob",
        ],
    )
    .await;
    assert!(
        refused.contains("FailedPrecondition") && refused.contains("half-done"),
        "{refused}"
    );
    let missing = txn_fails(
        &url,
        &[
            "resolve",
            &id,
            "--branch",
            "nope",
            "--outcome",
            "committed",
            "--reason",
            "x",
            "--operator",
            "bob",
        ],
    )
    .await;
    assert!(missing.contains("NotFound"), "{missing}");
    let anonymous = txn_fails(
        &url,
        &[
            "resolve",
            &id,
            "--branch",
            "lost",
            "--outcome",
            "committed",
            "--reason",
            " ",
            "--operator",
            "bob",
        ],
    )
    .await;
    assert!(anonymous.contains("reason is empty"), "{anonymous}");

    let resolved = txn(
        &url,
        &[
            "resolve",
            &id,
            "--branch",
            "lost",
            "--outcome",
            "committed",
            "--reason",
            "bank b restored from backup; transfer applied by hand (ticket 4711)",
            "--operator",
            "alice@ops",
        ],
    )
    .await;
    assert!(
        resolved.contains("lost resolved committed by alice@ops"),
        "{resolved}"
    );
    eventually("the transaction ends committed", || async {
        let state = client.transaction(&id).await.ok()?.state;
        (state == pb::TransactionState::Committed as i32).then_some(())
    })
    .await;
    // The participant was not told: the operator's word stands for it.
    assert_eq!(b.effects(&id).await, ["prepare"]);
    // Recorded with who, when and why, and shown after the end (from the log).
    let txn_view = client.transaction(&id).await.expect("get");
    assert_eq!(txn_view.operator_actions.len(), 1);
    let action = &txn_view.operator_actions[0];
    assert_eq!(
        (action.branch.as_str(), action.operator.as_str()),
        ("lost", "alice@ops")
    );
    assert_eq!(action.outcome, pb::Resolution::Committed as i32);
    assert!(action.reason.contains("ticket 4711") && action.at_ms > 0);
    let shown = txn(&url, &["show", &id]).await;
    assert!(
        shown.contains("operator decisions") && shown.contains("alice@ops"),
        "{shown}"
    );
    // Ended: a deadline would say nothing.
    assert!(
        shown.contains("ended") && !shown.contains("deadline"),
        "{shown}"
    );
    // An ended transaction has nothing left to resolve.
    let late = txn_fails(
        &url,
        &[
            "resolve",
            &id,
            "--branch",
            "lost",
            "--outcome",
            "committed",
            "--reason",
            "again",
            "--operator",
            "alice",
        ],
    )
    .await;
    assert!(late.contains("already ended"), "{late}");
}

/// Runs `concord txn <args>` expecting it to fail; returns its stderr.
async fn txn_fails(url: &str, args: &[&str]) -> String {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .arg("txn")
        .args(["--coordinator", url])
        .args(args)
        .output()
        .await
        .expect("run concord txn");
    assert!(!output.status.success(), "concord txn {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[tokio::test]
async fn with_an_admin_token_configured_the_operators_calls_need_it() {
    use concord_coordinator::node::{Node, NodeConfig, StoreLocation};
    let dir = tempfile::tempdir().expect("temp dir");
    let node = Node::start(NodeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        store: StoreLocation::DataDir(dir.path().join("coordinator")),
        runtime: quick_config(),
        limits: Default::default(),
        node_name: None,
        lease: concord_coordinator::node::DEFAULT_LEASE,
        access: concord_coordinator::api::Access {
            admin_token: Some("s3cret-token".into()),
            client_tokens: Vec::new(),
            ..Default::default()
        },
        console: None,
    })
    .await
    .expect("coordinator starts");
    let url = node.url();
    let id = client(&node)
        .begin(BeginOptions::default())
        .await
        .expect("begin: not an operator's call")
        .transaction_id;

    let missing = txn_fails(&url, &["retry", &id]).await;
    assert!(
        missing.contains("Unauthenticated") && missing.contains("admin token"),
        "{missing}"
    );
    let wrong = txn_fails(&url, &["--token", "guess", "retry", &id]).await;
    assert!(wrong.contains("does not match"), "{wrong}");
    let resolve = txn_fails(
        &url,
        &[
            "resolve",
            &id,
            "--branch",
            "b",
            "--outcome",
            "aborted",
            "--reason",
            "r",
            "--operator",
            "o",
        ],
    )
    .await;
    assert!(resolve.contains("Unauthenticated"), "{resolve}");
    // Reading needs no token; its payloads do (docs/security.md).
    assert!(txn(&url, &["show", &id]).await.contains(&id));
    let payloads = txn_fails(&url, &["show", &id, "--payloads"]).await;
    assert!(
        payloads.contains("Unauthenticated") && payloads.contains("admin token"),
        "{payloads}"
    );
    assert!(
        txn(
            &url,
            &["--token", "s3cret-token", "show", &id, "--payloads"]
        )
        .await
        .contains(&id)
    );
    // The right token, on the command line or from the environment.
    assert!(
        txn(&url, &["--token", "s3cret-token", "retry", &id])
            .await
            .contains("state active")
    );
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .args(["txn", "--coordinator", &url, "retry", &id])
        .env("CONCORD_ADMIN_TOKEN", "s3cret-token")
        .output()
        .await
        .expect("run");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

#[tokio::test]
async fn with_a_retention_finished_transactions_leave_the_log_and_unfinished_ones_stay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = client(&node);
    let p = TestParticipant::start(dir.path(), "p", Some(&coordinator_dir)).await;
    let finished = client
        .begin(BeginOptions::default())
        .await
        .expect("begin")
        .transaction_id;
    client
        .enlist(&finished, &p.url, "commit", None)
        .await
        .expect("enlist");
    client.commit(&finished).await.expect("commit");
    eventually("it ends", || async {
        let state = client.transaction(&finished).await.ok()?.state;
        (state == pb::TransactionState::Committed as i32).then_some(())
    })
    .await;
    let open = client
        .begin(BeginOptions {
            timeout: Some(Duration::from_secs(600)),
            ..BeginOptions::default()
        })
        .await
        .expect("begin")
        .transaction_id;
    // Its participant is gone: after the restart its abort (R2) cannot be
    // delivered, so it stays unfinished.
    client
        .enlist(&open, "http://127.0.0.1:1", "commit", None)
        .await
        .expect("enlist");
    node.shutdown().await.expect("shutdown");

    // Restarted with a retention of a millisecond: the pruner runs at once.
    let mut config = quick_config();
    config.retention = Some(Duration::from_millis(1));
    let node = start_coordinator(&coordinator_dir, config).await;
    let client = super::support::client(&node);
    eventually("the finished transaction is removed", || async {
        client.transaction(&finished).await.is_err().then_some(())
    })
    .await;
    let error = client.transaction(&finished).await.expect_err("gone");
    assert!(error.to_string().contains("not found"), "{error}");
    // The unfinished one stays (recovery aborts it, R2, but cannot tell its
    // participant).
    eventually("the unfinished one is recovered and kept", || async {
        let state = client.transaction(&open).await.ok()?.state;
        (state == pb::TransactionState::Aborting as i32).then_some(())
    })
    .await;
}

/// A newcomer's `concord txn`: an id in any case, a unique prefix of one,
/// or the console's short form finds the transaction; an ambiguous prefix
/// lists the candidates; `--json` prints what a script reads; the
/// node's address without a scheme, and the flags after the subcommand,
/// work; a node that is not there is named with what to check, in one
/// line, never with a stack trace (RUST_BACKTRACE set or not).
#[tokio::test]
async fn concord_txn_finds_ids_as_people_type_them_and_says_what_to_check() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(
            client
                .begin(BeginOptions::default())
                .await
                .expect("begin")
                .transaction_id,
        );
    }
    let url = node.url();
    let bare = url.trim_start_matches("http://");
    let id = &ids[1];
    let short = format!("{}…{}", &id[..8], &id[id.len() - 4..]);
    for given in [
        id.to_ascii_uppercase(),
        id[..id.len() - 4].to_owned(),
        short.clone(),
    ] {
        let shown = txn(bare, &["show", &given]).await;
        assert!(
            shown.contains(&format!("transaction {id}")),
            "{given}: {shown}"
        );
    }
    // Both ids begin with the same milliseconds' digits.
    let common: String = ids[0]
        .chars()
        .zip(ids[1].chars())
        .take_while(|(a, b)| a == b)
        .map(|(a, _)| a)
        .collect();
    if common.len() >= 4 {
        let ambiguous = txn_fails(&url, &["show", &common]).await;
        assert!(
            ambiguous.contains(&ids[0]) && ambiguous.contains(&ids[1]),
            "{ambiguous}"
        );
    }
    // Flags after the subcommand, and JSON.
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .args(["txn", "show", id, "--json", "--coordinator", bare])
        .output()
        .await
        .expect("run");
    assert!(output.status.success(), "{output:?}");
    let shown: serde_json::Value = serde_json::from_slice(&output.stdout).expect("JSON");
    assert_eq!(shown["id"], id.as_str());
    assert_eq!(shown["state"], "active");
    let listed: serde_json::Value =
        serde_json::from_str(&txn(&url, &["list", "--json"]).await).expect("JSON");
    assert_eq!(listed["transactions"].as_array().map(Vec::len), Some(2));

    let nothing = super::support::processes::free_addr();
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .args(["txn", "list", "--coordinator", &nothing.to_string()])
        .env("RUST_BACKTRACE", "1")
        .output()
        .await
        .expect("run");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("http://{nothing}")) && stderr.contains("concord serve"),
        "{stderr}"
    );
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}

/// Issue 32: an operator investigating reads what each branch was sent (on
/// request only, the first 4 KiB, text or hex) and finds transactions by
/// their description or a participant's address — through the API and
/// `concord txn`.
#[tokio::test]
async fn an_operator_reads_what_each_branch_was_sent_and_finds_transactions_by_text() {
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let url = node.url();
    let client = client(&node);
    let a = TestParticipant::start(dir.path(), "a", Some(&coordinator_dir)).await;
    let refund = client
        .begin(BeginOptions {
            description: Some("Refund for Ada".into()),
            ..BeginOptions::default()
        })
        .await
        .expect("begin")
        .transaction_id;
    client
        .enlist(&refund, &a.url, "commit", Some("text"))
        .await
        .expect("enlist");
    let mut large = vec![0xff_u8, 0x00];
    large.resize(5_000, 0xab);
    client
        .enlist(&refund, &a.url, large.clone(), Some("binary"))
        .await
        .expect("enlist");
    let other = client
        .begin(BeginOptions {
            description: Some("payroll".into()),
            ..BeginOptions::default()
        })
        .await
        .expect("begin")
        .transaction_id;

    let mut api = pb::coordinator_client::CoordinatorClient::connect(url.clone())
        .await
        .expect("connect");
    let read = |include_payloads: bool| pb::GetTransactionRequest {
        transaction_id: refund.clone(),
        include_payloads,
    };
    let plain = api
        .get_transaction(read(false))
        .await
        .expect("get")
        .into_inner();
    assert!(
        plain.branches.iter().all(|b| b.payload.is_empty()),
        "only on request"
    );
    assert_eq!(plain.branches[1].payload_bytes, 5_000);
    let whole = api
        .get_transaction(read(true))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(whole.branches[0].payload, b"commit");
    assert_eq!(whole.branches[1].payload, large[..4096], "the first 4 KiB");
    assert_eq!(whole.branches[1].payload_bytes, 5_000);

    let shown = txn(&url, &["show", &refund, "--payloads"]).await;
    assert!(shown.contains("payload: commit"), "{shown}");
    assert!(
        shown.contains("payload (hex) (first 4096 of 5000 bytes): ff00abab"),
        "{shown}"
    );
    assert!(!txn(&url, &["show", &refund]).await.contains("payload"));

    // By text: the description in any case, a participant's address.
    let listed = |text: &str| {
        let url = url.clone();
        let text = text.to_owned();
        async move { txn(&url, &["list", "--text", &text]).await }
    };
    let found = listed("refund for ADA").await;
    assert!(
        found.contains(refund.as_str()) && !found.contains(other.as_str()),
        "{found}"
    );
    let address = a.url.trim_start_matches("http://").to_owned();
    let found = listed(&address).await;
    assert!(
        found.contains(refund.as_str()) && !found.contains(other.as_str()),
        "{found}"
    );
    let found = listed("nobody").await;
    assert!(
        !found.contains(refund.as_str()) && !found.contains(other.as_str()),
        "{found}"
    );
    let refused = api
        .list_transactions(pb::ListTransactionsRequest {
            text: "x".repeat(257),
            ..Default::default()
        })
        .await
        .expect_err("too long");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("at most 256"), "{refused:?}");
    for id in [&refund, &other] {
        client.rollback(id, "done").await.expect("rollback");
    }
}

/// A text search reads a bounded window of the log per call (DESIGN §12:
/// no request makes a node read its whole log): a page past the window
/// comes back short, with the window's end as its token, and following the
/// tokens finds what lies further back.
#[tokio::test]
async fn a_text_search_reads_a_window_of_the_log_per_call_and_pages_on() {
    let dir = tempfile::tempdir().expect("temp dir");
    let config = concord_coordinator::runtime::RuntimeConfig {
        text_scan_window: 2,
        ..quick_config()
    };
    let node = start_coordinator(&dir.path().join("coordinator"), config).await;
    let client = client(&node);
    let mut ids = Vec::new();
    for description in ["find me", "other", "other", "other", "other"] {
        let id = client
            .begin(BeginOptions {
                description: Some(description.into()),
                ..BeginOptions::default()
            })
            .await
            .expect("begin")
            .transaction_id;
        ids.push(id);
    }
    let mut api = pb::coordinator_client::CoordinatorClient::connect(node.url())
        .await
        .expect("connect");
    let mut token = String::new();
    let mut pages = Vec::new();
    loop {
        let page = api
            .list_transactions(pb::ListTransactionsRequest {
                text: "FIND".into(),
                page_token: token.clone(),
                ..Default::default()
            })
            .await
            .expect("list")
            .into_inner();
        pages.push(
            page.transactions
                .iter()
                .map(|t| t.id.clone())
                .collect::<Vec<_>>(),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
        assert!(pages.len() < 10, "the pages end");
    }
    // Two windows of two "other"s, then the one that matches.
    assert_eq!(
        pages,
        vec![vec![], vec![], vec![ids[0].clone()]],
        "{pages:?}"
    );
    for id in &ids {
        client.rollback(id, "done").await.expect("rollback");
    }
}
