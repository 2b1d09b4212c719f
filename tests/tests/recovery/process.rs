//! Process-level crash tests: the real programs (built with fail points on,
//! see `tests/src/bin`) as child processes, each with its own SQLite files.
//! A fail point aborts a process at an exact log boundary — as `kill -9`
//! would at that instant — or the test sends SIGKILL; then the process is
//! restarted on the same address and data, and the outcome is checked in
//! every participant's database: balances, bookings, holds.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::support::eventually;
use super::support::processes::{
    Proc, coordinator_args, free_addr, start_coordinator, start_coordinator_with,
};
use concord_example_bank::{Movement, account, open_holds};
use concord_participant::saga::SagaState;
use concord_participant::{BeginOptions, CoordinatorClient, Outcome};
use concord_proto::v1 as pb;

/// Two banks and a coordinator, all separate processes.
pub(super) struct Banks {
    dir: tempfile::TempDir,
    coordinator_addr: SocketAddr,
    a_addr: SocketAddr,
    b_addr: SocketAddr,
}

impl Banks {
    pub(super) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            coordinator_addr: free_addr(),
            a_addr: free_addr(),
            b_addr: free_addr(),
        }
    }

    fn coordinator_data(&self) -> PathBuf {
        self.dir.path().join("coordinator")
    }

    /// The world's temp dir (bank databases, logs).
    pub(super) fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// The coordinator with its log in `data` and its stderr in `log`.
    pub(super) async fn coordinator_at(
        &self,
        data: &std::path::Path,
        log: &std::path::Path,
    ) -> Proc {
        Proc::start_logged(
            "concord",
            env!("CARGO_BIN_EXE_concord-failpoints"),
            &coordinator_args(self.coordinator_addr, data),
            None,
            self.coordinator_addr,
            Some(log),
        )
        .await
    }

    /// A 10-cent transfer from alice to bob begun and committed in one
    /// call; the id when it was answered (either outcome).
    pub(super) async fn small_transfer(
        &self,
        client: &CoordinatorClient,
    ) -> Result<(String, Outcome), String> {
        let branch =
            |addr: SocketAddr, account: &str, delta: i64| concord_participant::BranchSpec {
                participant: format!("http://{addr}"),
                payload: Movement {
                    account: account.into(),
                    delta,
                }
                .to_payload(),
                name: None,
            };
        let options = BeginOptions {
            branches: vec![
                branch(self.a_addr, "alice", -10),
                branch(self.b_addr, "bob", 10),
            ],
            ..BeginOptions::default()
        };
        client
            .begin_and_commit(options)
            .await
            .map(|(begun, outcome)| (begun.transaction_id, outcome))
            .map_err(|error| error.to_string())
    }

    pub(super) fn db(&self, bank: &str) -> PathBuf {
        self.dir.path().join(format!("{bank}.db"))
    }

    pub(super) async fn coordinator(&self, failpoint: Option<&str>) -> Proc {
        start_coordinator(self.coordinator_addr, &self.coordinator_data(), failpoint).await
    }

    /// Bank "a" holds alice (10 000 cents at first), bank "b" bob (5 000).
    pub(super) async fn bank(
        &self,
        bank: &str,
        failpoint: Option<&str>,
        first_start: bool,
    ) -> Proc {
        let (addr, opening) = match bank {
            "a" => (self.a_addr, "alice=10000"),
            _ => (self.b_addr, "bob=5000"),
        };
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            addr.to_string(),
            "--db".into(),
            self.db(bank).display().to_string(),
        ];
        args.extend(super::support::keys::coordinator_key_args());
        args.extend([
            "--coordinator".into(),
            format!("http://{}", self.coordinator_addr),
        ]);
        if first_start {
            args.extend(["--open".to_string(), opening.to_string()]);
        }
        let exe = env!("CARGO_BIN_EXE_account-service-failpoints");
        Proc::start(&format!("bank-{bank}"), exe, &args, failpoint, addr).await
    }

    pub(super) fn client(&self) -> CoordinatorClient {
        CoordinatorClient::connect(format!("http://{}", self.coordinator_addr))
            .expect("client")
            .with_timeout(Duration::from_secs(10))
    }

    /// Starts a 3 000-cent transfer from alice to bob; returns its id and
    /// what Commit answered (an error when the coordinator died first).
    async fn transfer(&self) -> (String, Option<Outcome>) {
        self.transfer_of(3_000).await
    }

    /// Starts a transfer of `amount` cents from alice to bob.
    pub(super) async fn transfer_of(&self, amount: i64) -> (String, Option<Outcome>) {
        let client = self.client();
        let id = client
            .begin(BeginOptions::default())
            .await
            .expect("begin")
            .transaction_id;
        let debit = Movement {
            account: "alice".into(),
            delta: -amount,
        };
        let credit = Movement {
            account: "bob".into(),
            delta: amount,
        };
        let a = format!("http://{}", self.a_addr);
        let b = format!("http://{}", self.b_addr);
        client
            .enlist(&id, &a, debit.to_payload(), Some("debit"))
            .await
            .expect("enlist");
        client
            .enlist(&id, &b, credit.to_payload(), Some("credit"))
            .await
            .expect("enlist");
        let answer = client.commit(&id).await.ok();
        (id, answer)
    }

    /// A 3 000-cent deposit to bob: one branch, so committed in one phase
    /// (R6). Returns its id and what Commit answered.
    pub(super) async fn deposit_in_one_phase(&self) -> (String, Option<Outcome>) {
        let client = self.client();
        let id = client
            .begin(BeginOptions::default())
            .await
            .expect("begin")
            .transaction_id;
        let credit = Movement {
            account: "bob".into(),
            delta: 3_000,
        };
        client
            .enlist(
                &id,
                &format!("http://{}", self.b_addr),
                credit.to_payload(),
                Some("credit"),
            )
            .await
            .expect("enlist");
        let answer = client.commit(&id).await.ok();
        (id, answer)
    }

    /// A transfer of `amount` from alice to bob begun and committed in one
    /// call (`BeginRequest.commit`). The id is None when the coordinator
    /// died before answering ([`Banks::only_transaction`] finds it).
    pub(super) async fn transfer_in_begin(&self, amount: i64) -> (Option<String>, Option<Outcome>) {
        let branch = |addr: SocketAddr, account: &str, delta: i64, name: &str| {
            concord_participant::BranchSpec {
                participant: format!("http://{addr}"),
                payload: Movement {
                    account: account.into(),
                    delta,
                }
                .to_payload(),
                name: Some(name.into()),
            }
        };
        let options = BeginOptions {
            branches: vec![
                branch(self.a_addr, "alice", -amount, "debit"),
                branch(self.b_addr, "bob", amount, "credit"),
            ],
            ..BeginOptions::default()
        };
        match self.client().begin_and_commit(options).await {
            Ok((begun, outcome)) => (Some(begun.transaction_id), Some(outcome)),
            Err(_) => (None, None),
        }
    }

    /// The one transaction this world's coordinator knows, if its records
    /// were written before a crash (a fresh log: nothing else is in it).
    pub(super) async fn only_transaction(&self) -> Option<String> {
        let mut raw = self.client().raw();
        let listed = raw
            .list_transactions(pb::ListTransactionsRequest::default())
            .await
            .expect("list")
            .into_inner();
        assert!(listed.transactions.len() <= 1, "{listed:?}");
        listed.transactions.first().map(|t| t.id.clone())
    }

    /// Neither bank kept anything of a transaction the coordinator never
    /// recorded: the in-doubt resolvers were told ABORTED (R2).
    pub(super) async fn untouched(&self) {
        self.balances_settle_at(10_000, 5_000).await;
    }

    /// Waits for the transaction to end and checks the money in both
    /// banks' databases: moved once or not at all, nothing held (I1, I3, I6).
    pub(super) async fn settles(&self, id: &str, told: Option<Outcome>, committed: bool) {
        self.settles_as_decided(id, told, Some(committed)).await;
    }

    /// Waits for the transfer to end and checks the money in both banks'
    /// databases against the decision: moved once or not at all, nothing
    /// held (I1, I3, I6). `must` is the decision required, if only one is
    /// right. Returns whether it committed.
    pub(super) async fn settles_as_decided(
        &self,
        id: &str,
        told: Option<Outcome>,
        must: Option<bool>,
    ) -> bool {
        self.settles_to(id, told, must, (7_000, 8_000)).await
    }

    /// [`Banks::settles_as_decided`] for any movement: `committed` is what
    /// alice and bob hold if it committed (they hold 10 000 and 5 000 if
    /// it aborted).
    pub(super) async fn settles_to(
        &self,
        id: &str,
        told: Option<Outcome>,
        must: Option<bool>,
        committed_balances: (i64, i64),
    ) -> bool {
        let client = self.client();
        let state = eventually(&format!("{id} ends"), || async {
            let state = client.transaction(id).await.ok()?.state;
            let state = pb::TransactionState::try_from(state).ok()?;
            matches!(
                state,
                pb::TransactionState::Committed | pb::TransactionState::Aborted
            )
            .then_some(state)
        })
        .await;
        let committed = state == pb::TransactionState::Committed;
        if let Some(must) = must {
            assert_eq!(committed, must, "{id} ended {state:?}");
        }
        // I2: what the client was told stands.
        if let Some(told) = told {
            assert_eq!(
                matches!(told, Outcome::Committed { .. }),
                committed,
                "told {told:?}"
            );
        }
        let (alice, bob) = if committed {
            committed_balances
        } else {
            (10_000, 5_000)
        };
        self.balances_settle_at(alice, bob).await;
        committed
    }

    /// Waits until alice holds `alice` and bob `bob`, with nothing held
    /// anywhere (I3, I6).
    pub(super) async fn balances_settle_at(&self, alice: i64, bob: i64) {
        let a = concord_example_bank::open_db(&self.db("a"))
            .await
            .expect("bank a db");
        let b = concord_example_bank::open_db(&self.db("b"))
            .await
            .expect("bank b db");
        eventually("both banks settle", || async {
            let alice_now = account(&a, "alice").await.ok()??;
            let bob_now = account(&b, "bob").await.ok()??;
            let holds = open_holds(&a).await.ok()? + open_holds(&b).await.ok()?;
            (alice_now.balance == alice
                && bob_now.balance == bob
                && alice_now.held == 0
                && bob_now.held == 0
                && holds == 0)
                .then_some(())
        })
        .await;
    }
}

/// The coordinator dies at `point` during a transfer; restarted, it must
/// finish the transfer everywhere as `committed` says.
async fn coordinator_dies_at(point: &str, committed: bool) {
    let world = Banks::new();
    let _a = world.bank("a", None, true).await;
    let _b = world.bank("b", None, true).await;
    let coordinator = world.coordinator(Some(point)).await;
    let (id, told) = world.transfer().await;
    coordinator.crashed().await;
    let _coordinator = world.coordinator(None).await;
    world.settles(&id, told, committed).await;
}

#[tokio::test]
async fn coordinator_killed_after_prepare_before_the_decision_aborts_everywhere() {
    coordinator_dies_at("2pc-before-decision", false).await;
}

#[tokio::test]
async fn coordinator_killed_after_the_decision_before_phase_two_commits_everywhere() {
    coordinator_dies_at("2pc-after-decision", true).await;
}

#[tokio::test]
async fn coordinator_killed_mid_phase_two_commits_everywhere_exactly_once() {
    coordinator_dies_at("2pc-mid-phase-two", true).await;
}

/// fsync failure is fatal (issue 17 item 2; docs/design.md, "A log that
/// fails"): the decision's COMMIT fails with an I/O error, injected where
/// SQLite's fsync of the WAL reports it. The coordinator writes nothing
/// more on that file and exits, naming the log's path and the cause; the
/// client is not told COMMITTED; restarted, it recovers from what the log
/// holds (no decision: abort) and both banks end as they began.
#[tokio::test]
async fn a_failed_fsync_of_the_decision_stops_the_coordinator_and_a_restart_recovers() {
    let world = Banks::new();
    let _a = world.bank("a", None, true).await;
    let _b = world.bank("b", None, true).await;
    let log = world.dir.path().join("coordinator.log");
    // The transfer's fourth commit is its decision (after its Begun and two
    // Enlisted records).
    let coordinator = Proc::start_logged(
        "concord",
        env!("CARGO_BIN_EXE_concord-failpoints"),
        &coordinator_args(world.coordinator_addr, &world.coordinator_data()),
        Some("sqlite-commit-io-error=3*off->return"),
        world.coordinator_addr,
        Some(&log),
    )
    .await;
    let (id, told) = world.transfer().await;
    assert!(
        !matches!(told, Some(Outcome::Committed { .. })),
        "told {told:?} though the decision may not be durable"
    );
    let status = coordinator.exits(Duration::from_secs(15)).await;
    assert!(!status.success(), "{status}");
    let stderr = std::fs::read_to_string(&log).expect("coordinator log");
    assert!(
        stderr.contains("failed to make a write durable") && stderr.contains("disk I/O error"),
        "{stderr}"
    );
    assert!(
        stderr.contains(
            &world
                .coordinator_data()
                .join("concord.db")
                .display()
                .to_string()
        ),
        "the error names the log's path: {stderr}"
    );
    let _coordinator = world.coordinator(None).await;
    world.settles(&id, told, false).await;
}

#[tokio::test]
async fn participant_killed_after_voting_yes_commits_after_its_restart() {
    let world = Banks::new();
    let _a = world.bank("a", None, true).await;
    let b = world
        .bank("b", Some("participant-before-commit"), true)
        .await;
    let _coordinator = world.coordinator(None).await;
    let (id, told) = world.transfer().await;
    assert_eq!(told, Some(Outcome::Committed { read_only: false }));
    b.crashed().await;
    let _b = world.bank("b", None, false).await;
    world.settles(&id, told, true).await;
}

#[tokio::test]
async fn participant_killed_before_its_vote_arrived_aborts_after_its_restart() {
    let world = Banks::new();
    let _a = world.bank("a", None, true).await;
    // b's YES vote is on its disk, but b dies before sending it.
    let b = world
        .bank("b", Some("participant-after-prepare"), true)
        .await;
    let _coordinator = world.coordinator(None).await;
    let (id, told) = world.transfer().await;
    assert!(matches!(told, Some(Outcome::Aborted { .. })), "{told:?}");
    b.crashed().await;
    let _b = world.bank("b", None, false).await;
    world.settles(&id, told, false).await;
}

#[tokio::test]
async fn a_killed_and_restarted_bank_keeps_every_committed_transfer() {
    let world = Banks::new();
    let a = world.bank("a", None, true).await;
    let _b = world.bank("b", None, true).await;
    let _coordinator = world.coordinator(None).await;
    let (id, told) = world.transfer().await;
    a.kill().await;
    let _a = world.bank("a", None, false).await;
    world.settles(&id, told, true).await;
}

#[tokio::test]
async fn sigterm_drains_the_decision_in_flight_refuses_new_work_and_a_restart_finishes_the_rest() {
    let world = Banks::new();
    let _a = world.bank("a", None, true).await;
    // b answers Prepare 1.5 s after its YES vote is durable: the Commit is
    // in flight when the coordinator is told to stop.
    let _b = world
        .bank("b", Some("participant-after-prepare=sleep(1500)"), true)
        .await;
    let coordinator = world.coordinator(None).await;
    let transfer = tokio::spawn({
        let client = world.client();
        let (a, b) = (
            format!("http://{}", world.a_addr),
            format!("http://{}", world.b_addr),
        );
        async move {
            let id = client
                .begin(BeginOptions::default())
                .await
                .expect("begin")
                .transaction_id;
            let debit = Movement {
                account: "alice".into(),
                delta: -3_000,
            };
            let credit = Movement {
                account: "bob".into(),
                delta: 3_000,
            };
            client
                .enlist(&id, &a, debit.to_payload(), Some("debit"))
                .await
                .expect("enlist");
            client
                .enlist(&id, &b, credit.to_payload(), Some("credit"))
                .await
                .expect("enlist");
            let told = client.commit(&id).await;
            (id, told)
        }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    coordinator.signal("TERM");

    // Draining: health says NOT_SERVING, and a new transaction is refused
    // with a status that says why.
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", world.coordinator_addr))
            .expect("endpoint")
            .connect_lazy();
    let health = tonic_health::pb::health_client::HealthClient::new(channel);
    eventually("health reports NOT_SERVING", || {
        let mut health = health.clone();
        async move {
            let status = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: "concord.v1.Coordinator".into(),
                })
                .await
                .ok()?
                .into_inner()
                .status;
            (status == tonic_health::pb::health_check_response::ServingStatus::NotServing as i32)
                .then_some(())
        }
    })
    .await;
    let refused = world
        .client()
        .begin(BeginOptions::default())
        .await
        .expect_err("no new transactions while draining");
    assert!(refused.to_string().contains("draining"), "{refused}");

    // The decision in flight is made and answered; then the process exits
    // cleanly.
    let (id, told) = transfer.await.expect("transfer task");
    assert_eq!(
        told.expect("commit answered"),
        Outcome::Committed { read_only: false }
    );
    let status = coordinator.exits(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "a drained coordinator exits cleanly: {status}"
    );

    // Whatever phase 2 had left, the next start finishes.
    let _coordinator = world.coordinator(None).await;
    world
        .settles(&id, Some(Outcome::Committed { read_only: false }), true)
        .await;
}

/// GET `path` over plain HTTP/1.1; the body.
async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await.ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_owned())
}

/// The value of the sample `name{labels}` in a Prometheus text page.
fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines()
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

#[tokio::test]
async fn prometheus_metrics_count_what_happened() {
    let world = Banks::new();
    let _a = world.bank("a", None, true).await;
    let _b = world.bank("b", None, true).await;
    let metrics = free_addr();
    let _coordinator = start_coordinator_with(
        world.coordinator_addr,
        &world.coordinator_data(),
        None,
        &["--metrics-listen", &metrics.to_string()],
    )
    .await;
    let (id, told) = world.transfer().await;
    world.settles(&id, told, true).await;
    // A transfer alice cannot pay: bank a votes ABORT.
    let (id, told) = world.transfer_of(1_000_000).await;
    assert!(matches!(told, Some(Outcome::Aborted { .. })), "{told:?}");
    let client = world.client();
    eventually("the refused transfer ends", || async {
        let state = client.transaction(&id).await.ok()?.state;
        (state == pb::TransactionState::Aborted as i32).then_some(())
    })
    .await;

    // A transaction is counted ended once its end record is durable, a
    // moment after its outcome is visible, and the gauges are published by
    // the sweeper every tick, so a page read too early can show 0 in
    // flight from a tick before the refused transfer began and no end for
    // it yet: wait for the page that shows both ends and nothing in flight.
    let in_flight = r#"concord_in_flight{kind="2pc"}"#;
    let committed = r#"concord_transactions_total{kind="2pc",outcome="committed"}"#;
    let aborted = r#"concord_transactions_total{kind="2pc",outcome="aborted"}"#;
    let page = eventually(
        "both transfers counted ended and none in flight",
        || async {
            let page = http_get(metrics, "/metrics").await?;
            (sample(&page, in_flight) == Some(0.0)
                && sample(&page, committed).is_some()
                && sample(&page, aborted).is_some())
            .then_some(page)
        },
    )
    .await;
    assert_eq!(sample(&page, committed), Some(1.0), "{page}");
    assert_eq!(sample(&page, aborted), Some(1.0), "{page}");
    assert_eq!(
        sample(&page, r#"concord_transactions_begun_total{kind="2pc"}"#),
        Some(2.0),
        "{page}"
    );
    assert!(
        sample(&page, r#"concord_phase_seconds_count{phase="commit"}"#) >= Some(2.0),
        "{page}"
    );
    assert!(
        sample(&page, "concord_log_batch_records_count").unwrap_or(0.0) >= 2.0,
        "{page}"
    );
}

/// The travel services and a coordinator, all separate processes.
pub(super) struct Travel {
    dir: tempfile::TempDir,
    coordinator_addr: SocketAddr,
    addrs: Vec<(&'static str, SocketAddr)>,
}

impl Travel {
    pub(super) fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            coordinator_addr: free_addr(),
            addrs: ["flight", "hotel", "car", "payment", "email"]
                .into_iter()
                .map(|kind| (kind, free_addr()))
                .collect(),
        }
    }

    fn db(&self, kind: &str) -> PathBuf {
        self.dir.path().join(format!("{kind}.db"))
    }

    fn url(&self, kind: &str) -> String {
        let addr = self
            .addrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
            .expect("kind");
        format!("http://{addr}")
    }

    pub(super) async fn services(&self, cars: i64) -> Vec<Proc> {
        self.services_armed(cars, None).await
    }

    /// Starts the five services; `armed` names one and its fail point.
    pub(super) async fn services_armed(&self, cars: i64, armed: Option<(&str, &str)>) -> Vec<Proc> {
        let mut procs = Vec::new();
        for (kind, _) in &self.addrs {
            let point = armed.filter(|(k, _)| k == kind).map(|(_, p)| p);
            procs.push(self.service(kind, cars, point, true).await);
        }
        procs
    }

    /// Starts one service; `first_start` stocks it (a restart keeps its
    /// database as it is).
    pub(super) async fn service(
        &self,
        kind: &str,
        cars: i64,
        failpoint: Option<&str>,
        first_start: bool,
    ) -> Proc {
        let addr = self
            .addrs
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, a)| *a)
            .expect("kind");
        {
            let mut args = vec![
                "--kind".to_string(),
                kind.to_string(),
                "--listen".into(),
                addr.to_string(),
                "--db".into(),
                self.db(kind).display().to_string(),
            ];
            match kind {
                _ if !first_start => {}
                "flight" => args.extend(["--stock".into(), "LH123=10".into()]),
                "hotel" => args.extend(["--stock".into(), "grand=5".into()]),
                "car" => args.extend(["--stock".into(), format!("compact={cars}")]),
                "payment" => args.extend(["--card".into(), "ada=100000".into()]),
                _ => {}
            }
            args.extend(super::support::keys::coordinator_key_args());
            args.extend([
                "--coordinator".into(),
                format!("http://{}", self.coordinator_addr),
            ]);
            let exe = env!("CARGO_BIN_EXE_travel-service-failpoints");
            Proc::start(kind, exe, &args, failpoint, addr).await
        }
    }

    pub(super) async fn coordinator(&self, failpoint: Option<&str>) -> Proc {
        start_coordinator(
            self.coordinator_addr,
            &self.dir.path().join("coordinator"),
            failpoint,
        )
        .await
    }

    pub(super) fn client(&self) -> CoordinatorClient {
        CoordinatorClient::connect(format!("http://{}", self.coordinator_addr))
            .expect("client")
            .with_timeout(Duration::from_secs(10))
    }

    pub(super) fn saga(&self) -> concord_participant::saga::Saga {
        let services = concord_example_travel::Services {
            flight: self.url("flight"),
            hotel: self.url("hotel"),
            car: self.url("car"),
            payment: self.url("payment"),
            email: self.url("email"),
        };
        let trip = concord_example_travel::Trip {
            traveller: "ada".into(),
            flight: "LH123".into(),
            hotel: "grand".into(),
            car: "compact".into(),
            card: "ada".into(),
            price: 42_000,
            email: "ada@example.com".into(),
        };
        concord_example_travel::trip_saga(&services, &trip).idempotency_key("ada-trip")
    }

    /// The coordinator dies at `point` while the trip runs; after a restart
    /// the saga must end as `expected`, with inventories to match.
    async fn coordinator_dies_at(point: &str, cars: i64, expected: SagaState) {
        let world = Self::new();
        let _services = world.services(cars).await;
        let coordinator = world.coordinator(Some(point)).await;
        // The crash may come before or after the answer; the idempotency
        // key finds the saga again either way, without running it twice.
        let _ = world.saga().submit(&world.client()).await;
        coordinator.crashed().await;
        let _coordinator = world.coordinator(None).await;
        let client = world.client();
        let id = world
            .saga()
            .submit(&client)
            .await
            .expect("resubmit finds the saga")
            .transaction_id;
        let state = world.ends(&id).await;
        assert_eq!(state, expected);
        world.consistent(&id, state, cars).await;
    }

    /// Waits for the saga to end.
    pub(super) async fn ends(&self, id: &str) -> SagaState {
        let client = self.client();
        eventually("the saga ends", || async {
            SagaState::from_wire(client.transaction(id).await.ok()?.state)
                .filter(|s| s.is_terminal())
        })
        .await
    }

    /// Checks every service's database against how the saga ended, `cars`
    /// having been in stock: each booking taken once or given back, the
    /// card charged once or not at all, one confirmation or none (I4, I5).
    pub(super) async fn consistent(&self, id: &str, state: SagaState, cars: i64) {
        let mut dbs = Vec::new();
        for kind in ["flight", "hotel", "car", "payment", "email"] {
            dbs.push(
                concord_example_travel::open_db(&self.db(kind))
                    .await
                    .expect("db"),
            );
        }
        let [flights, hotels, cars_db, payments, outbox] = <[_; 5]>::try_from(dbs).expect("five");
        use concord_example_travel::{available, balance, emails};
        assert!(
            matches!(state, SagaState::Completed | SagaState::Compensated),
            "{state:?}"
        );
        let completed = state == SagaState::Completed;
        let taken = i64::from(completed);
        assert_eq!(
            available(&flights, "LH123").await.expect("read"),
            Some(10 - taken)
        );
        assert_eq!(
            available(&hotels, "grand").await.expect("read"),
            Some(5 - taken)
        );
        assert_eq!(
            available(&cars_db, "compact").await.expect("read"),
            Some(cars - taken)
        );
        assert_eq!(
            balance(&payments, "ada").await.expect("read"),
            Some(100_000 - 42_000 * taken)
        );
        assert_eq!(
            emails(&outbox, id).await.expect("read"),
            usize::from(completed)
        );
    }
}

#[tokio::test]
async fn saga_coordinator_killed_mid_forward_completes_the_trip() {
    Travel::coordinator_dies_at("saga-after-step-record", 1, SagaState::Completed).await;
}

#[tokio::test]
async fn saga_coordinator_killed_before_a_step_record_completes_the_trip_once() {
    Travel::coordinator_dies_at("saga-before-step-record", 1, SagaState::Completed).await;
}

#[tokio::test]
async fn saga_coordinator_killed_mid_compensation_gives_everything_back() {
    Travel::coordinator_dies_at("saga-after-compensation-record", 0, SagaState::Compensated).await;
}

#[tokio::test]
async fn saga_coordinator_killed_before_a_compensation_record_gives_everything_back_once() {
    Travel::coordinator_dies_at("saga-before-compensation-record", 0, SagaState::Compensated).await;
}
