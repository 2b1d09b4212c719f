//! One seeded simulation run: the world (a coordinator on the in-memory
//! store, three banks, three clients), the nemesis that breaks it, the heal,
//! and the invariant checks. Everything random comes from the seed: the
//! workload, the fault schedule, turmoil's network, the coordinator's
//! backoff jitter (fastrand, seeded per run) and its clock and ids.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, UNIX_EPOCH};

use concord_coordinator::api::{self, Limits};
use concord_coordinator::model::{BranchState, StepStatus, TxnId, TxnKind, TxnState, TxnView};
use concord_coordinator::runtime::clock::Clock;
use concord_coordinator::runtime::participants::Dialer;
use concord_coordinator::runtime::{Runtime, RuntimeConfig};
use concord_coordinator::store::memory::MemoryStore;
use concord_proto::v1::{self as pb, coordinator_client::CoordinatorClient};
use tonic::Request;
use tonic::transport::Channel;

use super::bank::{ACCOUNTS, Bank, Change, Entry, OPENING_BALANCE, OPENING_SEATS};
use super::net;

const COORDINATOR: &str = "coordinator";
const COORDINATOR_URL: &str = "http://coordinator:7400";
const BANKS: [&str; 3] = ["bank-a", "bank-b", "bank-c"];
const BANK_PORT: u16 = 7500;
const CLIENTS: u64 = 3;
const REQUESTS_PER_CLIENT: u64 = 8;
/// After the heal, everything must have ended within this much simulated
/// time (I3).
const TERMINATION_BOUND: Duration = Duration::from_secs(60);

fn bank_url(bank: &str) -> String {
    format!("http://{bank}:{BANK_PORT}")
}

/// Simulated wall time and ids from a counter: the same on every replay.
#[derive(Debug, Default)]
struct SimClock {
    sequence: AtomicU64,
}

impl Clock for SimClock {
    fn now_ms(&self) -> u64 {
        turmoil::since_epoch().map_or(0, |d| d.as_millis() as u64)
    }

    fn mint(&self) -> TxnId {
        TxnId::from_parts(self.now_ms(), self.sequence.fetch_add(1, Ordering::Relaxed))
    }
}

/// What a client was told about one request.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub enum Told {
    Committed,
    Aborted,
    /// A saga was durably accepted.
    Accepted,
    /// No answer the client could trust (timeouts, partitions, crashes).
    Unknown,
}

#[derive(Clone, Debug, Hash)]
struct Heard {
    client: u64,
    request: u64,
    txn: Option<String>,
    told: Told,
}

/// What one run did, for the summary.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub transactions: usize,
    pub committed: usize,
    pub aborted: usize,
    pub sagas_completed: usize,
    pub sagas_compensated: usize,
    pub messages_delivered: usize,
    pub messages_dropped: usize,
    pub faults: usize,
    pub unknown_to_clients: usize,
    pub simulated: Duration,
}

pub struct RunResult {
    pub violations: Vec<String>,
    pub report: Report,
    /// A hash of everything the run produced: equal for equal seeds.
    pub fingerprint: u64,
    pub debug: String,
}

/// A fault in force and how to undo it.
#[derive(Clone, Debug)]
enum Fault {
    Crashed(&'static str),
    Partitioned(&'static str, &'static str),
    OneWay(&'static str, &'static str),
    Slow,
    /// The log's every write fails (a full disk).
    StoreFails,
    /// The log's writes take 50-500 ms longer.
    StoreSlow,
    /// One write of the log fails as a failed fsync does, applied or not;
    /// the coordinator stops at once (crash-only, as `concord serve` does)
    /// and restarts at the heal.
    StoreLost,
}

pub fn run(seed: u64) -> RunResult {
    // The coordinator's backoff jitter draws from this thread's fastrand.
    fastrand::seed(seed);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut sim = turmoil::Builder::new()
        .simulation_duration(Duration::from_secs(3_600))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(Duration::from_millis(rng.u64(2..=20)))
        .epoch(UNIX_EPOCH + Duration::from_secs(1_800_000_000))
        .rng_seed(seed)
        .build();

    // An fsync of 0.5-5 ms: crashes can land while a batch is being written.
    let store = MemoryStore::with_write_latency(Duration::from_micros(rng.u64(500..=5_000)));
    let clock = Arc::new(SimClock::default());
    {
        let store = store.clone();
        sim.host(COORDINATOR, move || {
            let store = store.clone();
            let clock: Arc<dyn Clock> = clock.clone();
            async move {
                let mut config = RuntimeConfig::with_retry(
                    Duration::from_millis(50),
                    Duration::from_secs(1),
                    RuntimeConfig {
                        default_txn_timeout: Duration::from_secs(5),
                        default_prepare_timeout: Duration::from_secs(1),
                        delivery_timeout: Duration::from_secs(1),
                        connect_timeout: Duration::from_millis(500),
                        advertised_url: COORDINATOR_URL.into(),
                        clock,
                        dialer: Dialer::custom(net::channel),
                        ..RuntimeConfig::default()
                    },
                );
                config.sweep_interval = Duration::from_millis(100);
                let runtime = Runtime::start(Arc::new(store), config).await?;
                let incoming = net::incoming(7400).await?;
                api::serve_incoming(
                    incoming,
                    runtime,
                    Limits::default(),
                    Default::default(),
                    std::future::pending(),
                )
                .await?;
                Ok(())
            }
        });
    }
    let banks: Vec<Bank> = BANKS.iter().map(|name| Bank::new(name)).collect();
    for bank in &banks {
        let bank = bank.clone();
        sim.host(bank.name.clone(), move || {
            let bank = bank.clone();
            async move {
                let incoming = net::incoming(BANK_PORT).await?;
                tokio::spawn(
                    bank.clone()
                        .resolve_in_doubt(COORDINATOR_URL.into(), Duration::from_secs(2)),
                );
                tonic::transport::Server::builder()
                    .add_service(pb::participant_server::ParticipantServer::new(bank))
                    .serve_with_incoming(incoming)
                    .await?;
                Ok(())
            }
        });
    }
    let heard: Arc<Mutex<Vec<Heard>>> = Arc::default();
    for client in 0..CLIENTS {
        let heard = Arc::clone(&heard);
        let banks = banks.clone();
        let client_seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(client + 1);
        sim.client(format!("client-{client}"), async move {
            run_client(client, client_seed, heard, banks).await;
            Ok(())
        });
    }

    let mut violations = Vec::new();
    let mut report = Report::default();
    let faults_until = Duration::from_millis(rng.u64(2_000..=8_000));
    let mut next_fault = Duration::from_millis(rng.u64(0..500));
    let mut in_force: Vec<(Duration, Fault)> = Vec::new();
    let mut healed_at: Option<Duration> = None;
    let mut lost_crashed = false;
    let mut steps: u64 = 0;
    loop {
        let clients_done = match sim.step() {
            Ok(done) => done,
            Err(error) => {
                violations.push(format!("the simulation failed: {error}"));
                break;
            }
        };
        steps += 1;
        let now = sim.elapsed();
        // Faults end by themselves after a while, or all at once at the heal.
        let heal_all = healed_at.is_none() && now >= faults_until;
        let (due, rest): (Vec<_>, Vec<_>) = in_force
            .drain(..)
            .partition(|(until, _)| heal_all || *until <= now);
        in_force = rest;
        for (_, fault) in due {
            heal(&mut sim, &fault, &store);
            if matches!(fault, Fault::StoreLost) {
                lost_crashed = false;
            }
        }
        if heal_all {
            healed_at = Some(now);
        }
        // A coordinator whose log lost a write exits (`Node::wait`): here,
        // at the first step after, until its StoreLost fault heals.
        if store
            .faults()
            .lost
            .load(std::sync::atomic::Ordering::SeqCst)
            && !in_force
                .iter()
                .any(|(_, f)| matches!(f, Fault::Crashed(COORDINATOR)))
            && !lost_crashed
        {
            sim.crash(COORDINATOR);
            lost_crashed = true;
        }
        if healed_at.is_none() && now >= next_fault {
            if let Some(fault) = inject(&mut sim, &mut rng, &in_force, &store) {
                report.faults += 1;
                let lasts = Duration::from_millis(rng.u64(50..=2_000));
                in_force.push((now + lasts, fault));
            }
            next_fault = now + Duration::from_millis(rng.u64(50..=600));
        }
        if let Some(healed) = healed_at {
            if clients_done && steps.is_multiple_of(50) && quiescent(&store, &banks) {
                break;
            }
            if now.saturating_sub(healed) > TERMINATION_BOUND {
                violations.push(format!(
                    "I3: not everything ended within {} s of the heal",
                    TERMINATION_BOUND.as_secs()
                ));
                break;
            }
        }
    }
    report.simulated = sim.elapsed();
    drop(sim);

    let heard = heard.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let views = store.snapshot();
    check(&views, &banks, &heard, &mut violations, &mut report);
    check_feed(&views, &store.change_feed(), &mut violations);

    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    format!("{views:?}").hash(&mut hasher);
    for bank in &banks {
        format!("{:?}", *bank.state()).hash(&mut hasher);
    }
    heard.hash(&mut hasher);
    report.simulated.hash(&mut hasher);
    let debug = format!("{views:#?}\n{heard:#?}\n{:?}", report.simulated);
    RunResult {
        violations,
        report,
        fingerprint: hasher.finish(),
        debug,
    }
}

fn inject(
    sim: &mut turmoil::Sim<'_>,
    rng: &mut fastrand::Rng,
    in_force: &[(Duration, Fault)],
    store: &MemoryStore,
) -> Option<Fault> {
    let down = |host: &str| {
        in_force
            .iter()
            .any(|(_, f)| matches!(f, Fault::Crashed(h) if *h == host))
    };
    let bank = BANKS[rng.usize(..BANKS.len())];
    let client = ["client-0", "client-1", "client-2"][rng.usize(..3)];
    let store_fault = |fault: &Fault| {
        in_force
            .iter()
            .any(|(_, f)| std::mem::discriminant(f) == std::mem::discriminant(fault))
    };
    let fault = match rng.u32(0..13) {
        // Not while a lost write may have stopped it already.
        0 | 1 if !down(COORDINATOR) && !store_fault(&Fault::StoreLost) => {
            Fault::Crashed(COORDINATOR)
        }
        2 | 3 if !down(bank) => Fault::Crashed(bank),
        4 | 5 => Fault::Partitioned(COORDINATOR, bank),
        6 => Fault::OneWay(COORDINATOR, bank),
        7 => Fault::OneWay(bank, COORDINATOR),
        8 => Fault::Partitioned(client, COORDINATOR),
        9 => Fault::Slow,
        10 if !store_fault(&Fault::StoreFails) => Fault::StoreFails,
        11 if !store_fault(&Fault::StoreSlow) => Fault::StoreSlow,
        12 if !store_fault(&Fault::StoreLost) && !down(COORDINATOR) => Fault::StoreLost,
        _ => return None,
    };
    let faults = store.faults();
    let set = std::sync::atomic::Ordering::SeqCst;
    match &fault {
        Fault::Crashed(host) => sim.crash(*host),
        Fault::Partitioned(a, b) => sim.partition(*a, *b),
        Fault::OneWay(from, to) => sim.partition_oneway(*from, *to),
        // Latency past the prepare and delivery deadlines.
        Fault::Slow => sim.set_max_message_latency(Duration::from_millis(rng.u64(200..=1_500))),
        Fault::StoreFails => faults.failing.store(true, set),
        Fault::StoreSlow => faults
            .extra_latency_us
            .store(rng.u64(50_000..=500_000), set),
        Fault::StoreLost => faults.lose_next.store(true, set),
    }
    Some(fault)
}

fn heal(sim: &mut turmoil::Sim<'_>, fault: &Fault, store: &MemoryStore) {
    let faults = store.faults();
    let set = std::sync::atomic::Ordering::SeqCst;
    match fault {
        Fault::Crashed(host) => sim.bounce(*host),
        Fault::Partitioned(a, b) => sim.repair(*a, *b),
        Fault::OneWay(from, to) => sim.repair_oneway(*from, *to),
        Fault::Slow => sim.set_max_message_latency(Duration::from_millis(20)),
        Fault::StoreFails => faults.failing.store(false, set),
        Fault::StoreSlow => faults.extra_latency_us.store(0, set),
        Fault::StoreLost => {
            // Restarted by its supervisor, it opens the log anew and
            // recovers from what it holds.
            faults.reopen();
            sim.bounce(COORDINATOR);
        }
    }
}

/// Every transaction ended and no bank holds a prepared branch.
fn quiescent(store: &MemoryStore, banks: &[Bank]) -> bool {
    store.snapshot().iter().all(|view| view.state.is_terminal())
        && banks.iter().all(|bank| bank.state().prepared().is_empty())
}

/// A call with a deadline the server sees and one we enforce.
async fn call<T, F>(make: impl FnOnce(Duration) -> F) -> Option<T>
where
    F: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let deadline = Duration::from_secs(1);
    match tokio::time::timeout(deadline * 2, make(deadline)).await {
        Ok(Ok(response)) => Some(response.into_inner()),
        _ => None,
    }
}

fn request<T>(message: T, deadline: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(deadline);
    request
}

async fn run_client(client: u64, seed: u64, heard: Arc<Mutex<Vec<Heard>>>, banks: Vec<Bank>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut coordinator = CoordinatorClient::new(net::channel_to(COORDINATOR_URL));
    for n in 0..REQUESTS_PER_CLIENT {
        let key = format!("client-{client}-{n}");
        let (txn, told) = match rng.u32(0..12) {
            0..=2 => transfer(&mut coordinator, &mut rng, &key, Finish::Commit).await,
            3 | 4 => transfer(&mut coordinator, &mut rng, &key, Finish::CommitInBegin).await,
            5 => transfer(&mut coordinator, &mut rng, &key, Finish::RollBack).await,
            6 => move_within_bank(&mut coordinator, &mut rng, &key).await,
            7 | 8 => publish(&mut coordinator, &mut rng, &key, &banks).await,
            _ => book(&mut coordinator, &key).await,
        };
        heard.lock().unwrap_or_else(|p| p.into_inner()).push(Heard {
            client,
            request: n,
            txn,
            told,
        });
        tokio::time::sleep(Duration::from_millis(rng.u64(0..100))).await;
    }
}

/// How a client ends a 2PC transaction.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Finish {
    /// Begin, then Commit.
    Commit,
    /// Begin with `commit`: one call.
    CommitInBegin,
    /// Begin, then Rollback.
    RollBack,
}

/// Begin (retried with the same idempotency key, R7), then Commit or
/// Rollback (retried: both answer the decided outcome again).
async fn two_phase(
    coordinator: &mut CoordinatorClient<Channel>,
    key: &str,
    branches: Vec<pb::BranchSpec>,
    finish: Finish,
) -> (Option<String>, Told) {
    let mut txn = None;
    for attempt in 0..3 {
        let begin = pb::BeginRequest {
            timeout_ms: 5_000,
            idempotency_key: key.to_owned(),
            branches: branches.clone(),
            commit: finish == Finish::CommitInBegin,
            ..Default::default()
        };
        let mut client = coordinator.clone();
        if let Some(begun) = call(|d| client.begin(request(begin, d))).await {
            if let Some(answer) = begun.commit {
                let told = if answer.outcome == pb::Outcome::Committed as i32 {
                    Told::Committed
                } else {
                    Told::Aborted
                };
                return (Some(begun.transaction_id), told);
            }
            txn = Some(begun.transaction_id);
            if finish != Finish::CommitInBegin {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    let Some(id) = txn else {
        return (None, Told::Unknown);
    };
    for attempt in 0..3 {
        let mut client = coordinator.clone();
        if finish == Finish::RollBack {
            let rollback = pb::RollbackRequest {
                transaction_id: id.clone(),
                reason: "the client changed its mind".into(),
            };
            if call(|d| client.rollback(request(rollback, d)))
                .await
                .is_some()
            {
                return (Some(id), Told::Aborted);
            }
        } else {
            let commit = pb::CommitRequest {
                transaction_id: id.clone(),
                wait_for_completion: false,
                prepare_timeout_ms: 1_000,
            };
            if let Some(answer) = call(|d| client.commit(request(commit, d))).await {
                if answer.outcome == pb::Outcome::Committed as i32 {
                    return (Some(id), Told::Committed);
                }
                if answer.outcome == pb::Outcome::Aborted as i32 {
                    return (Some(id), Told::Aborted);
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    (Some(id), Told::Unknown)
}

async fn transfer(
    coordinator: &mut CoordinatorClient<Channel>,
    rng: &mut fastrand::Rng,
    key: &str,
    finish: Finish,
) -> (Option<String>, Told) {
    let from = rng.usize(..BANKS.len());
    let to = (from + rng.usize(1..BANKS.len())) % BANKS.len();
    let amount = rng.i64(1..=600);
    let account = |rng: &mut fastrand::Rng| ACCOUNTS[rng.usize(..ACCOUNTS.len())].to_owned();
    let branches = vec![
        pb::BranchSpec {
            participant: bank_url(BANKS[from]),
            payload: Change::Debit(account(rng), amount).encode(),
            branch: "debit".into(),
        },
        pb::BranchSpec {
            participant: bank_url(BANKS[to]),
            payload: Change::Credit(account(rng), amount).encode(),
            branch: "credit".into(),
        },
    ];
    two_phase(coordinator, key, branches, finish).await
}

/// One branch: the coordinator takes the one-phase path (R6).
async fn move_within_bank(
    coordinator: &mut CoordinatorClient<Channel>,
    rng: &mut fastrand::Rng,
    key: &str,
) -> (Option<String>, Told) {
    let bank = BANKS[rng.usize(..BANKS.len())];
    let from = rng.usize(..ACCOUNTS.len());
    let to = (from + 1) % ACCOUNTS.len();
    let branches = vec![pb::BranchSpec {
        participant: bank_url(bank),
        payload: Change::Move(ACCOUNTS[from].into(), ACCOUNTS[to].into(), rng.i64(1..=600))
            .encode(),
        branch: "move".into(),
    }];
    two_phase(coordinator, key, branches, Finish::Commit).await
}

/// A saga reserving a seat at each bank: two compensatable steps, then the
/// pivot. Seats run out, so some sagas compensate.
async fn book(coordinator: &mut CoordinatorClient<Channel>, key: &str) -> (Option<String>, Told) {
    let steps: Vec<pb::SagaStep> = BANKS
        .iter()
        .enumerate()
        .map(|(idx, bank)| {
            let pivot = idx == BANKS.len() - 1;
            pb::SagaStep {
                name: format!("seat-{bank}"),
                participant: bank_url(bank),
                action: b"reserve".to_vec(),
                compensation: (!pivot).then(|| b"release".to_vec()),
                depends_on: None,
                kind: if pivot {
                    pb::StepKind::Pivot
                } else {
                    pb::StepKind::Compensatable
                } as i32,
                attempt_timeout_ms: 1_000,
                retry: Some(pb::RetryPolicy {
                    initial_delay_ms: 50,
                    multiplier: 2.0,
                    max_delay_ms: 500,
                    max_attempts: 3,
                    disable_jitter: false,
                }),
            }
        })
        .collect();
    for attempt in 0..3 {
        let submit = pb::SubmitSagaRequest {
            steps: steps.clone(),
            idempotency_key: key.to_owned(),
            wait: false,
            description: String::new(),
        };
        let mut client = coordinator.clone();
        if let Some(accepted) = call(|d| client.submit_saga(request(submit, d))).await {
            return (Some(accepted.transaction_id), Told::Accepted);
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    (None, Told::Unknown)
}

/// A transactional message (DESIGN §10): a bank publishes an event to one
/// or two others, some with an ordering key. Prepared (retried with its
/// idempotency key), then the producer's local transaction publishes it
/// (or rolls back, or the producer dies before it), then the producer
/// submits it (retried), or dies before it does and leaves it to the
/// check-back.
async fn publish(
    coordinator: &mut CoordinatorClient<Channel>,
    rng: &mut fastrand::Rng,
    key: &str,
    banks: &[Bank],
) -> (Option<String>, Told) {
    let producer = rng.usize(..BANKS.len());
    let destinations = (1..=rng.usize(1..BANKS.len()))
        .map(|n| {
            let bank = BANKS[(producer + n) % BANKS.len()];
            pb::MessageDestination {
                name: format!("to-{bank}"),
                participant: bank_url(bank),
                payload: key.as_bytes().to_vec(),
            }
        })
        .collect::<Vec<_>>();
    let mut id = None;
    for attempt in 0..3 {
        let prepare = pb::PrepareMessageRequest {
            producer: bank_url(BANKS[producer]),
            destinations: destinations.clone(),
            check_after_ms: 1_000,
            ordering_key: if rng.bool() {
                String::new()
            } else {
                ACCOUNTS[rng.usize(..ACCOUNTS.len())].into()
            },
            idempotency_key: key.to_owned(),
            description: String::new(),
        };
        let mut client = coordinator.clone();
        if let Some(prepared) = call(|d| client.prepare_message(request(prepare, d))).await {
            id = Some(prepared.transaction_id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    let Some(id) = id else {
        return (None, Told::Unknown);
    };
    match rng.u32(0..6) {
        // The local transaction rolled back, or the producer died first.
        0 => return (Some(id), Told::Accepted),
        // Committed, and the producer died before submitting.
        1 => {
            banks[producer].publish(&id);
            return (Some(id), Told::Accepted);
        }
        _ => {
            if !banks[producer].publish(&id) {
                return (Some(id), Told::Accepted);
            }
        }
    }
    for attempt in 0..3 {
        let submit = pb::SubmitMessageRequest {
            transaction_id: id.clone(),
            wait: false,
        };
        let mut client = coordinator.clone();
        if call(|d| client.submit_message(request(submit, d)))
            .await
            .is_some()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
    }
    (Some(id), Told::Accepted)
}

/// I1-I7 against the store, the banks' ledgers and what clients were told.
fn check(
    views: &[TxnView],
    banks: &[Bank],
    heard: &[Heard],
    violations: &mut Vec<String>,
    report: &mut Report,
) {
    let states: Vec<_> = banks.iter().map(|bank| bank.state()).collect();
    let entry = |participant: &str, txn: &TxnId, name: &str| -> Option<Entry> {
        let idx = BANKS.iter().position(|b| bank_url(b) == participant)?;
        states[idx]
            .ledger
            .get(&(txn.to_string(), name.to_owned()))
            .cloned()
    };
    report.transactions = views.len();
    for view in views {
        if !view.state.is_terminal() {
            violations.push(format!("I3: {} is still {}", view.id, view.state.as_str()));
            continue;
        }
        match view.kind {
            TxnKind::TwoPhase => {
                let committed: Vec<bool> = view
                    .branches
                    .iter()
                    .map(|b| {
                        matches!(
                            entry(&b.participant, &view.id, &b.name),
                            Some(Entry::Committed { .. })
                        )
                    })
                    .collect();
                match view.state {
                    TxnState::Committed => {
                        report.committed += 1;
                        if !committed.iter().all(|c| *c) {
                            violations.push(format!(
                                "I1: {} is committed but not at every participant ({committed:?})",
                                view.id
                            ));
                        }
                        if view
                            .branches
                            .iter()
                            .any(|b| b.state == BranchState::Aborted)
                        {
                            violations
                                .push(format!("I1: {} committed with an aborted branch", view.id));
                        }
                    }
                    TxnState::Aborted => {
                        report.aborted += 1;
                        if committed.iter().any(|c| *c) {
                            violations.push(format!(
                                "I1: {} is aborted but committed at a participant ({committed:?})",
                                view.id
                            ));
                        }
                    }
                    other => violations.push(format!("{} ended {}", view.id, other.as_str())),
                }
            }
            // I7: delivered everywhere if and only if its producer's local
            // transaction committed (the producer's outbox says).
            TxnKind::Message => {
                let published = view
                    .producer
                    .as_deref()
                    .and_then(|url| BANKS.iter().position(|b| bank_url(b) == url))
                    .is_some_and(|idx| states[idx].outbox.get(&view.id.to_string()) == Some(&true));
                let delivered: Vec<bool> = view
                    .branches
                    .iter()
                    .map(|b| entry(&b.participant, &view.id, &b.name) == Some(Entry::Delivered))
                    .collect();
                match view.state {
                    TxnState::Delivered => {
                        report.messages_delivered += 1;
                        if !published {
                            violations.push(format!(
                                "I7: message {} delivered, but its local change did not commit",
                                view.id
                            ));
                        }
                        if !delivered.iter().all(|d| *d) {
                            violations.push(format!(
                                "I7: message {} is delivered but not at every destination \
                                 ({delivered:?})",
                                view.id
                            ));
                        }
                    }
                    TxnState::Dropped => {
                        report.messages_dropped += 1;
                        if published {
                            violations.push(format!(
                                "I7: message {} dropped, but its local change committed",
                                view.id
                            ));
                        }
                        if delivered.iter().any(|d| *d) {
                            violations.push(format!(
                                "I7: message {} is dropped but took effect ({delivered:?})",
                                view.id
                            ));
                        }
                    }
                    other => violations.push(format!("{} ended {}", view.id, other.as_str())),
                }
            }
            TxnKind::Saga => {
                let reserved: Vec<bool> = view
                    .steps
                    .iter()
                    .map(|s| {
                        matches!(
                            entry(&s.participant, &view.id, &s.name),
                            Some(Entry::Acted { reserved: true })
                        )
                    })
                    .collect();
                match view.state {
                    TxnState::Completed => {
                        report.sagas_completed += 1;
                        if !reserved.iter().all(|r| *r)
                            || view.steps.iter().any(|s| s.status != StepStatus::Succeeded)
                        {
                            violations.push(format!(
                                "I4: saga {} completed without every step done ({reserved:?})",
                                view.id
                            ));
                        }
                    }
                    TxnState::Compensated => {
                        report.sagas_compensated += 1;
                        if reserved.iter().any(|r| *r) {
                            violations.push(format!(
                                "I4: saga {} compensated but a step is still done ({reserved:?})",
                                view.id
                            ));
                        }
                    }
                    other => {
                        violations.push(format!("I4: saga {} ended {}", view.id, other.as_str()))
                    }
                }
            }
        }
    }
    let by_id: BTreeMap<String, &TxnView> = views.iter().map(|v| (v.id.to_string(), v)).collect();
    for h in heard {
        let Some(txn) = &h.txn else {
            if h.told != Told::Unknown {
                violations.push(format!(
                    "client {} request {} told {:?} without an id",
                    h.client, h.request, h.told
                ));
            }
            continue;
        };
        let state = by_id.get(txn).map(|v| v.state);
        let agrees = match h.told {
            // The decision is what must never change (I3 checks the end).
            Told::Committed => {
                matches!(state, Some(TxnState::Committed | TxnState::Committing))
            }
            // No record is an abort too (R2, presumed abort: GetOutcome
            // answers ABORTED). A transaction committed in its Begin has
            // its records ride with its decision; when an abort is told
            // first and the log then loses writes (a store fault) or the
            // coordinator restarts, nothing of it may be left.
            Told::Aborted => matches!(state, None | Some(TxnState::Aborted | TxnState::Aborting)),
            // Accepted means durable (§3): the store must know it.
            Told::Accepted | Told::Unknown => state.is_some(),
        };
        if h.told == Told::Unknown {
            report.unknown_to_clients += 1;
        }
        if !agrees {
            violations.push(format!(
                "I2: client {} was told {:?} about {txn}, the store says {state:?}",
                h.client, h.told
            ));
        }
    }
    let mut total = 0;
    for state in &states {
        violations.extend(
            state
                .violations
                .iter()
                .map(|v| format!("I5/I1 protocol: {v}")),
        );
        for key in state.prepared() {
            violations.push(format!("I3: {key:?} is still prepared"));
        }
        for (account, balance) in &state.balances {
            total += balance;
            if *balance < 0 {
                violations.push(format!("I6: {account} has {balance}"));
            }
        }
        if state.held.values().any(|held| *held != 0) {
            violations.push(format!("I3: funds still held: {:?}", state.held));
        }
        let taken = state
            .ledger
            .values()
            .filter(|e| matches!(e, Entry::Acted { reserved: true }))
            .count() as i64;
        if state.seats + taken != OPENING_SEATS {
            violations.push(format!(
                "I5: seats {} + reserved {taken} != {OPENING_SEATS}",
                state.seats
            ));
        }
    }
    let expected = OPENING_BALANCE * (ACCOUNTS.len() * BANKS.len()) as i64;
    if total != expected {
        violations.push(format!("I6: total money {total}, expected {expected}"));
    }
}

/// The change feed WatchTransactions follows, against the log's final
/// states: its cursors only grow; every transaction has its creation as its
/// first change and its final state as its last; a change leaves the
/// transaction where the next one found it; nothing names a transaction
/// the log does not hold.
fn check_feed(
    views: &[concord_coordinator::model::TxnView],
    feed: &[concord_coordinator::model::Change],
    violations: &mut Vec<String>,
) {
    use std::collections::HashMap;
    if let Some(pair) = feed
        .windows(2)
        .find(|pair| pair[0].cursor >= pair[1].cursor)
    {
        violations.push(format!(
            "feed: cursor {} after {}",
            pair[1].cursor, pair[0].cursor
        ));
    }
    let mut last: HashMap<_, &concord_coordinator::model::Change> = HashMap::new();
    for change in feed {
        match last.get(&change.id) {
            None if change.from.is_some() => violations.push(format!(
                "feed: {}'s first change is from {:?}, not its creation",
                change.id, change.from
            )),
            Some(previous) if change.from != Some(previous.to) => violations.push(format!(
                "feed: {} went {:?} -> {:?} after a change to {:?}",
                change.id, change.from, change.to, previous.to
            )),
            _ => {}
        }
        last.insert(change.id, change);
    }
    for view in views {
        match last.remove(&view.id) {
            Some(change) if change.to == view.state => {}
            Some(change) => violations.push(format!(
                "feed: {}'s last change is to {}, the log says {}",
                view.id,
                change.to.as_str(),
                view.state.as_str()
            )),
            None => violations.push(format!("feed: no change for {}", view.id)),
        }
    }
    for id in last.keys() {
        violations.push(format!(
            "feed: a change for {id}, which the log does not hold"
        ));
    }
}
