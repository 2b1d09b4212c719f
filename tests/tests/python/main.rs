//! Any language can take part: the Python participant in
//! `examples/python` (built only from the proto files with grpcio, set up by
//! its own `setup.sh`) runs as a child process next to the Rust example
//! services: with the bank in 2PC transactions (one commits, one it
//! refuses) and with the travel hotel in sagas (one turns back, one
//! completes). Points, money and rooms are checked in each service's own
//! database.

#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use concord_coordinator::node::{Node, NodeConfig, StoreLocation};
use concord_coordinator::runtime::{RuntimeConfig, Sharding};
use concord_coordinator::shard::{Group, ShardMap};
use concord_example_bank::Movement;
use concord_example_travel::{Booking, Kind};
use concord_participant::saga::{Saga, SagaState, Step};
use concord_participant::{BeginOptions, BranchSpec, Outcome};
use support::processes::{Proc, free_addr};
use support::{client, eventually, quick_config, start_coordinator};
use tokio_util::sync::CancellationToken;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/python")
}

/// Runs the example's own setup (a virtualenv with grpcio, stubs from the
/// proto files); quick when already done.
fn set_up() {
    let status = std::process::Command::new("bash")
        .arg(example().join("setup.sh"))
        .status()
        .expect("run examples/python/setup.sh");
    assert!(
        status.success(),
        "examples/python/setup.sh failed: {status}"
    );
}

fn change(account: &str, delta: i64) -> Vec<u8> {
    format!(r#"{{"account": "{account}", "delta": {delta}}}"#).into_bytes()
}

/// ada's balance and the holds left, from the Python service's database.
async fn points(db: &Path) -> (i64, i64) {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("points db");
    let (balance,): (i64,) = sqlx::query_as("SELECT balance FROM accounts WHERE name = 'ada'")
        .fetch_one(&pool)
        .await
        .expect("ada");
    let (holds,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM holds")
        .fetch_one(&pool)
        .await
        .expect("holds");
    pool.close().await;
    (balance, holds)
}

/// The bank example serving on 127.0.0.1 until `stop`, alice with 10,000
/// cents: its database, its URL and its task.
async fn start_bank(
    dir: &Path,
    stop: &CancellationToken,
) -> (
    sqlx::SqlitePool,
    String,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let bank_db = concord_example_bank::open_db(&dir.join("bank.db"))
        .await
        .expect("bank db");
    concord_example_bank::open_account(&bank_db, "alice", 10_000)
        .await
        .expect("alice");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let bank_url = format!("http://{}", listener.local_addr().expect("addr"));
    let bank = tokio::spawn(concord_example_bank::serve(
        bank_db.clone(),
        support::keys::callers(),
        Default::default(),
        listener,
        stop.clone().cancelled_owned(),
    ));
    (bank_db, bank_url, bank)
}

#[tokio::test]
async fn a_python_participant_takes_part_in_two_phase_commit_and_sagas() {
    set_up();
    let dir = tempfile::tempdir().expect("temp dir");
    let coordinator_dir = dir.path().join("coordinator");
    let node = start_coordinator(&coordinator_dir, quick_config()).await;
    let client = client(&node).with_timeout(Duration::from_secs(20));
    let stop = CancellationToken::new();
    let (bank_db, bank_url, bank) = start_bank(dir.path(), &stop).await;
    // The travel example's hotel: one room, no suite.
    let hotel_db = concord_example_travel::open_db(&dir.path().join("hotel.db"))
        .await
        .expect("hotel db");
    concord_example_travel::stock(&hotel_db, "room", 1)
        .await
        .expect("stock");
    concord_example_travel::stock(&hotel_db, "suite", 0)
        .await
        .expect("stock");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let hotel_url = format!("http://{}", listener.local_addr().expect("addr"));
    let hotel = tokio::spawn(concord_example_travel::serve(
        Kind::Hotel,
        0,
        hotel_db.clone(),
        support::keys::callers(),
        Default::default(),
        listener,
        stop.clone().cancelled_owned(),
    ));
    let alice = |cents: i64| {
        Movement {
            account: "alice".into(),
            delta: cents,
        }
        .to_payload()
    };
    let alice_balance = || async {
        concord_example_bank::account(&bank_db, "alice")
            .await
            .expect("read")
            .expect("alice")
    };

    let addr = free_addr();
    let db = dir.path().join("points.db");
    let _points = python_points(addr, &db, &node.url(), None).await;
    let points_url = format!("http://{addr}");
    let branch = |url: &str, payload: Vec<u8>, name: &str| BranchSpec {
        participant: url.to_string(),
        payload,
        name: Some(name.into()),
    };

    // 2PC with the bank: alice pays 500 cents, ada gets 5 points.
    let id = client
        .begin(BeginOptions {
            branches: vec![
                branch(&points_url, change("ada", 5), "points"),
                branch(&bank_url, alice(-500), "money"),
            ],
            ..BeginOptions::default()
        })
        .await
        .expect("begin")
        .transaction_id;
    assert_eq!(
        client.commit(&id).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    eventually("both applied their commit", || async {
        let alice = alice_balance().await;
        (points(&db).await == (105, 0) && alice.balance == 9_500 && alice.held == 0).then_some(())
    })
    .await;

    // ada cannot spend 1,000 points: the Python service votes ABORT and
    // alice's money is released.
    let id = client
        .begin(BeginOptions {
            branches: vec![
                branch(&points_url, change("ada", -1000), "points"),
                branch(&bank_url, alice(700), "money"),
            ],
            ..BeginOptions::default()
        })
        .await
        .expect("begin")
        .transaction_id;
    match client.commit(&id).await.expect("commit") {
        Outcome::Aborted { reason } => {
            assert!(reason.contains("ada has 105 points"), "{reason}")
        }
        other => panic!("expected ABORTED, got {other:?}"),
    }
    eventually("nothing moved, nothing held", || async {
        let alice = alice_balance().await;
        (points(&db).await == (105, 0) && alice.balance == 9_500 && alice.held == 0).then_some(())
    })
    .await;

    // A saga with the hotel: ada spends 3 points on a suite, which is sold
    // out; the saga turns back and the Python service gives the points back.
    let booking = |item: &str| {
        serde_json::to_vec(&Booking {
            item: item.into(),
            traveller: "ada".into(),
        })
        .expect("json")
    };
    let saga = |item: &str| {
        Saga::new()
            .step(
                Step::new("spend", &points_url)
                    .action(change("ada", -3))
                    .compensation(change("ada", -3)),
            )
            .step(
                Step::new("room", &hotel_url)
                    .action(booking(item))
                    .compensation(booking(item)),
            )
    };
    let status = saga("suite").run(&client).await.expect("saga");
    assert_eq!(status.state, SagaState::Compensated, "{}", status.reason);
    assert_eq!(points(&db).await, (105, 0));
    assert_eq!(
        concord_example_travel::available(&hotel_db, "suite")
            .await
            .expect("read"),
        Some(0)
    );

    // And one that completes: the room is booked and the points spent.
    let status = saga("room").run(&client).await.expect("saga");
    assert_eq!(status.state, SagaState::Completed, "{}", status.reason);
    assert_eq!(points(&db).await, (102, 0));
    assert_eq!(
        concord_example_travel::available(&hotel_db, "room")
            .await
            .expect("read"),
        Some(0)
    );

    stop.cancel();
    let _ = bank.await;
    let _ = hotel.await;
}

/// The Python points service started on `addr` with `db`, dying at
/// `crash` (a crash point of the Python SDK) when given.
async fn python_points(
    addr: std::net::SocketAddr,
    db: &Path,
    coordinator: &str,
    crash: Option<&str>,
) -> Proc {
    let python = example().join(".venv/bin/python");
    let args: Vec<String> = vec![
        example().join("participant.py").display().to_string(),
        "--listen".into(),
        addr.to_string(),
        "--db".into(),
        db.display().to_string(),
        "--open".into(),
        "ada=100".into(),
        "--coordinator".into(),
        coordinator.into(),
    ];
    let args = [args, support::keys::coordinator_key_args().to_vec()].concat();
    let env: Vec<(&str, &str)> = crash
        .map(|point| vec![("CONCORD_PARTICIPANT_CRASH", point)])
        .unwrap_or_default();
    Proc::start_with_env(
        "python-points",
        &python.display().to_string(),
        &args,
        None,
        addr,
        None,
        &env,
    )
    .await
}

/// The ledger rows of one transaction in the Python service's database,
/// as `op=result`, sorted.
async fn python_ledger(db: &Path, txn: &str) -> Vec<String> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .expect("points db");
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT op, result FROM concord_ledger WHERE txn_id = ?1 ORDER BY op")
            .bind(txn)
            .fetch_all(&pool)
            .await
            .expect("ledger");
    pool.close().await;
    rows.into_iter()
        .map(|(op, r)| format!("{op}={r}"))
        .collect()
}

/// A Python participant killed with SIGKILL after it voted COMMIT, then
/// restarted on its database, ends its branch as the coordinator decided,
/// once: committed when it died on receiving the Commit (restarted where
/// the coordinator's retries cannot reach it, so its resolver did it),
/// aborted when it died before its vote reached the coordinator. The Rust
/// bank in the same transactions agrees each time.
#[tokio::test]
async fn a_python_participant_killed_after_voting_commit_ends_as_the_coordinator_decided() {
    set_up();
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    let client = client(&node).with_timeout(Duration::from_secs(20));
    let stop = CancellationToken::new();
    let (bank_db, bank_url, bank) = start_bank(dir.path(), &stop).await;
    let alice = || async {
        concord_example_bank::account(&bank_db, "alice")
            .await
            .expect("read")
            .expect("alice")
    };
    let (addr, db) = (free_addr(), dir.path().join("points.db"));
    let points_url = format!("http://{addr}");
    let transfer = |cents: i64, points: i64| BeginOptions {
        branches: vec![
            BranchSpec {
                participant: points_url.clone(),
                payload: change("ada", points),
                name: Some("points".into()),
            },
            BranchSpec {
                participant: bank_url.clone(),
                payload: Movement {
                    account: "alice".into(),
                    delta: cents,
                }
                .to_payload(),
                name: Some("money".into()),
            },
        ],
        ..BeginOptions::default()
    };

    // Dies on receiving the Commit: the decision was COMMIT.
    let service = python_points(addr, &db, &node.url(), Some("participant-before-commit")).await;
    let id = client
        .begin(transfer(-500, 5))
        .await
        .expect("begin")
        .transaction_id;
    assert_eq!(
        client.commit(&id).await.expect("commit"),
        Outcome::Committed { read_only: false }
    );
    service.crashed().await;
    assert_eq!(points(&db).await, (100, 1), "its hold survived the kill");
    // Restarted on another address, where the coordinator's retried Commit
    // cannot reach it: only its resolver, asking GetOutcome, can finish it.
    let service = python_points(free_addr(), &db, &node.url(), None).await;
    eventually("the restarted Python service commits", || async {
        (points(&db).await == (105, 0)).then_some(())
    })
    .await;
    assert_eq!(
        python_ledger(&db, &id).await,
        ["commit=done", "prepare=commit"]
    );
    eventually("the bank commits", || async {
        let alice = alice().await;
        (alice.balance == 9_500 && alice.held == 0).then_some(())
    })
    .await;
    drop(service);

    // Dies right after voting COMMIT, before the vote leaves: the
    // coordinator counts the failed Prepare as ABORT, and the restarted
    // service learns it (its resolver asks at once about a branch prepared
    // before it started) and releases its hold.
    let service = python_points(addr, &db, &node.url(), Some("participant-after-prepare")).await;
    let id = client
        .begin(transfer(-700, 7))
        .await
        .expect("begin")
        .transaction_id;
    match client.commit(&id).await.expect("commit") {
        Outcome::Aborted { .. } => {}
        other => panic!("expected ABORTED, got {other:?}"),
    }
    service.crashed().await;
    assert_eq!(
        python_ledger(&db, &id).await,
        ["prepare=commit"],
        "voted COMMIT"
    );
    let _service = python_points(addr, &db, &node.url(), None).await;
    eventually("the restarted Python service aborts", || async {
        (points(&db).await == (105, 0)).then_some(())
    })
    .await;
    assert_eq!(
        python_ledger(&db, &id).await,
        ["abort=done", "prepare=commit"]
    );
    let alice = alice().await;
    assert_eq!((alice.balance, alice.held), (9_500, 0));

    stop.cancel();
    let _ = bank.await;
}

/// The client token of the guarded coordinator the Python SDK's tests get.
const PYTHON_CLIENT_TOKEN: &str = "python-sdk-client-token";

/// The Python participant SDK (`sdk/python`) passes its own tests — the
/// ledger cases shared with the Rust SDK (`sdk/ledger-cases.json`), Batch,
/// malformed calls, concurrent duplicates, each on SQLite and on a real
/// PostgreSQL started here, and its coordinator client against a real
/// coordinator started here — and `mypy --strict`, in a virtualenv of its
/// own that `scripts/test-python-sdk.sh` makes (pytest's summary is kept in
/// `target/python-sdk/pytest.log` for CI's closing line).
#[tokio::test]
async fn the_python_sdk_passes_its_own_tests_and_type_checks() {
    let postgres = support::postgres::Postgres::start().await;
    let url = postgres.database("python_sdk").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    // And a deployment of two groups (one node each, SQLite), for the
    // client that routes by the shard map.
    let (addr1, addr2) = (free_addr(), free_addr());
    let group = |name: &str, addr: std::net::SocketAddr| Group {
        name: name.into(),
        nodes: vec![format!("http://{addr}")],
    };
    let map = ShardMap::split(16, vec![group("g1", addr1), group("g2", addr2)], 0).expect("a map");
    let mut groups = Vec::new();
    for (name, addr) in [("g1", addr1), ("g2", addr2)] {
        let sharding = Sharding::new(map.clone(), name.into()).expect("a group");
        groups.push(
            Node::start(NodeConfig {
                runtime: RuntimeConfig {
                    sharding: Some(sharding),
                    ..quick_config()
                },
                ..NodeConfig::new(addr, StoreLocation::DataDir(dir.path().join(name)))
            })
            .await
            .expect("a group's node starts"),
        );
    }
    // And one that requires a client token (DESIGN §12, S3).
    let guarded = Node::start(NodeConfig {
        access: concord_coordinator::api::Access {
            client_tokens: vec![PYTHON_CLIENT_TOKEN.into()],
            ..Default::default()
        },
        ..support::node_config(&dir.path().join("guarded"))
    })
    .await
    .expect("the guarded node starts");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/test-python-sdk.sh");
    let output = tokio::process::Command::new("bash")
        .arg(&script)
        .env("CONCORD_TEST_POSTGRES_URL", &url)
        .env("CONCORD_TEST_COORDINATOR_URL", node.url())
        // The coordinators above sign their calls with the tests' key
        // (DESIGN §12); the SDK's participants trust it.
        .env(
            "CONCORD_TEST_COORDINATOR_PUBLIC_KEY",
            &support::keys::files().1,
        )
        .env("CONCORD_TEST_GUARDED_COORDINATOR_URL", guarded.url())
        .env("CONCORD_TEST_CLIENT_TOKEN", PYTHON_CLIENT_TOKEN)
        .env(
            "CONCORD_TEST_GROUP_URLS",
            format!("http://{addr1},http://{addr2}"),
        )
        .output()
        .await
        .expect("run scripts/test-python-sdk.sh");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "scripts/test-python-sdk.sh failed: {}\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout.lines().last().unwrap_or_default();
    assert!(
        summary.contains(" passed") && !summary.contains("failed") && !summary.contains("skipped"),
        "every case ran, on both databases: {stdout}"
    );
    eprintln!("python sdk: {summary}");
}

/// The code blocks of `markdown` fenced as ```` ```lang ````, in order.
fn fenced(markdown: &str, lang: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut open: Option<String> = None;
    for line in markdown.lines() {
        match open.as_mut() {
            Some(block) if line.trim_start().starts_with("```") => {
                blocks.push(std::mem::take(block));
                open = None;
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
            None if line.trim() == format!("```{lang}") => open = Some(String::new()),
            None => {}
        }
    }
    blocks
}

/// README.md's Python participant, extracted from the Markdown and run as
/// printed (issue 32: it used to do nothing at all): in a directory whose
/// `concord-data/signing.key.pub` is the coordinator's public key, as in
/// the README's flow, it creates its tables, serves on 127.0.0.1:7601 and
/// takes part in a 2PC transaction with the Rust bank; ada's points are
/// read from its own database.
#[tokio::test]
async fn the_readmes_python_participant_runs_as_printed() {
    set_up();
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md"))
            .expect("README.md");
    let snippet = fenced(&readme, "python")
        .into_iter()
        .next()
        .expect("README.md has a Python block");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("points.py"), &snippet).expect("write the snippet");
    std::fs::create_dir(dir.path().join("concord-data")).expect("concord-data");
    std::fs::copy(
        &support::keys::files().1,
        dir.path().join("concord-data/signing.key.pub"),
    )
    .expect("the coordinator's public key");
    let node = start_coordinator(&dir.path().join("coordinator"), quick_config()).await;
    // The address the README prints.
    let addr: std::net::SocketAddr = "127.0.0.1:7601".parse().expect("addr");
    let python = example().join(".venv/bin/python");
    let script = format!(
        "cd '{}' && exec '{}' points.py",
        dir.path().display(),
        python.display()
    );
    let service = Proc::start(
        "readme-points",
        "bash",
        &["-c".to_owned(), script],
        None,
        addr,
    )
    .await;
    let client = client(&node);
    let (_, outcome) = client
        .begin_and_commit(BeginOptions {
            branches: vec![
                BranchSpec {
                    participant: format!("http://{addr}"),
                    payload: change("ada", 5),
                    name: Some("points".into()),
                },
                BranchSpec {
                    participant: format!("http://{addr}"),
                    payload: change("ada", 2),
                    name: Some("more-points".into()),
                },
            ],
            ..Default::default()
        })
        .await
        .expect("commit");
    assert!(matches!(outcome, Outcome::Committed { .. }), "{outcome:?}");
    let db = dir.path().join("points.db");
    eventually(
        "ada's 7 points are committed in the snippet's database",
        || async {
            let (balance, holds) = points(&db).await;
            (balance == 7 && holds == 0).then_some(())
        },
    )
    .await;
    service.kill().await;
}
