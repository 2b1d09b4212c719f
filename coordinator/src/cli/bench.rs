//! `concord bench`: a load generator that measures Concord against the
//! machine's own floor, in the same run.
//!
//! By default it starts an in-process coordinator (SQLite log with fsync, in
//! a temp dir) and K no-op participants, all serving real gRPC on loopback,
//! then runs C concurrent clients for D seconds (or N transactions). It
//! reports throughput and latency, and beside them the floor: the raw unary
//! gRPC echo rate on loopback at the same concurrency, the fsync latency of
//! the disk, and `ratio_to_floor` = throughput ÷ (echo rate ÷ gRPC calls per
//! transaction), and how many RPCs its own participants served per
//! transaction (fewer than calls when calls shared `Batch` RPCs). Flags
//! point it at an external coordinator or participants instead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use concord_proto::v1 as pb;
use concord_proto::v1::coordinator_client::CoordinatorClient;
use concord_proto::v1::participant_client::ParticipantClient;
use concord_proto::v1::participant_server::{Participant, ParticipantServer};
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

use crate::api::Limits;
use crate::model::{TxnId, now_ms};
use crate::node::{Node, NodeConfig, StoreLocation};
use crate::runtime::RuntimeConfig;
use crate::store::Record;

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Begin, enlist K participants, commit.
    #[value(name = "2pc")]
    TwoPhase,
    /// SubmitSaga with K steps, waiting for completion.
    Saga,
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    #[arg(long, value_enum, default_value = "2pc")]
    pub workload: Workload,
    /// Participants per 2PC transaction, or steps per saga.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub participants: u64,
    /// Concurrent clients, each running one transaction at a time.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub clients: u64,
    /// How long to run, e.g. 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Stop after this many transactions instead.
    #[arg(long)]
    pub transactions: Option<u64>,
    /// Coordinator store for the in-process coordinator (default: SQLite
    /// in a temp dir, fsync on).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Drive an external coordinator instead of starting one.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// External participant endpoints instead of in-process no-op ones
    /// (repeat; used round-robin).
    #[arg(long = "participant")]
    pub participant_urls: Vec<String>,
    /// Connections the clients share to the coordinator (0: one per
    /// client). Fewer connections than clients multiplex calls over HTTP/2
    /// streams, as real services do; per-connection buffers then stop
    /// dominating the memory measured.
    #[arg(long, default_value_t = 0)]
    pub connections: u64,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// 2PC: enlist each participant with its own Enlist call instead of
    /// naming them in Begin (one more call and forced write per branch).
    #[arg(long, conflicts_with = "one_call")]
    pub enlist_separately: bool,
    /// 2PC: begin and commit in one call (`BeginRequest.commit`), one round
    /// trip fewer.
    #[arg(long)]
    pub one_call: bool,
    /// The in-process coordinator coalesces calls waiting for one
    /// participant into `Participant.Batch` calls (`serve --batch-calls`);
    /// `false` sends every call alone. Calls per transaction in the report
    /// count calls, not the batches that carry them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub batch_calls: bool,
    /// Instead of a load: write this many decided-but-unfinished 2PC
    /// transactions (COMMITTED, phase 2 not delivered) to the store, start
    /// a coordinator on it, and time how soon it serves and how soon every
    /// one of them is finished.
    #[arg(long, value_name = "TRANSACTIONS")]
    pub recovery: Option<u64>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit())
        .map(|at| text.split_at(at))
        .unwrap_or((text, "s"));
    let n: u64 = number.parse().map_err(|e| format!("{text:?}: {e}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{text:?}: use ms, s or m")),
    }
}

/// A participant that says yes to everything at once: the benchmark
/// measures the coordinator, not a participant's work. It counts the RPCs
/// it serves (a `Batch` is one), shared by all the bench's participants.
#[derive(Clone, Default)]
struct NoOp {
    rpcs: Arc<AtomicU64>,
}

impl NoOp {
    fn served(&self) {
        self.rpcs.fetch_add(1, Ordering::Relaxed);
    }
}

#[tonic::async_trait]
impl Participant for NoOp {
    async fn prepare(
        &self,
        _: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        self.served();
        Ok(Response::new(pb::PrepareResponse {
            vote: pb::Vote::Commit.into(),
            reason: String::new(),
        }))
    }
    async fn commit(
        &self,
        _: Request<pb::CommitBranchRequest>,
    ) -> Result<Response<pb::CommitBranchResponse>, Status> {
        self.served();
        Ok(Response::new(pb::CommitBranchResponse {}))
    }
    async fn abort(
        &self,
        _: Request<pb::AbortBranchRequest>,
    ) -> Result<Response<pb::AbortBranchResponse>, Status> {
        self.served();
        Ok(Response::new(pb::AbortBranchResponse::default()))
    }
    async fn commit_one_phase(
        &self,
        _: Request<pb::CommitOnePhaseRequest>,
    ) -> Result<Response<pb::CommitOnePhaseResponse>, Status> {
        self.served();
        Ok(Response::new(pb::CommitOnePhaseResponse {
            outcome: pb::Outcome::Committed.into(),
            ..Default::default()
        }))
    }
    async fn execute(
        &self,
        _: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        self.served();
        Ok(Response::new(pb::ExecuteResponse {
            result: pb::execute_response::Result::Succeeded.into(),
            reason: String::new(),
        }))
    }
    async fn compensate(
        &self,
        _: Request<pb::CompensateRequest>,
    ) -> Result<Response<pb::CompensateResponse>, Status> {
        self.served();
        Ok(Response::new(pb::CompensateResponse {}))
    }
    type BatchStream = futures::stream::Iter<std::vec::IntoIter<Result<pb::BatchAnswer, Status>>>;

    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        self.served();
        use pb::batch_answer::Answer;
        use pb::batch_call::Call;
        let answers: Vec<_> = request
            .into_inner()
            .calls
            .into_iter()
            .zip(0u32..)
            .map(|(call, index)| {
                Ok(pb::BatchAnswer {
                    index,
                    answer: call.call.map(|call| match call {
                        Call::Prepare(_) => Answer::Prepare(pb::PrepareResponse {
                            vote: pb::Vote::Commit.into(),
                            reason: String::new(),
                        }),
                        Call::Commit(_) => Answer::Commit(pb::CommitBranchResponse {}),
                        Call::Abort(_) => Answer::Abort(pb::AbortBranchResponse::default()),
                        Call::CommitOnePhase(_) => {
                            Answer::CommitOnePhase(pb::CommitOnePhaseResponse {
                                outcome: pb::Outcome::Committed.into(),
                                ..Default::default()
                            })
                        }
                        Call::Execute(_) => Answer::Execute(pb::ExecuteResponse {
                            result: pb::execute_response::Result::Succeeded.into(),
                            reason: String::new(),
                        }),
                        Call::Compensate(_) => Answer::Compensate(pb::CompensateResponse {}),
                    }),
                    ..Default::default()
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(answers)))
    }
}

/// Serves a no-op participant on a loopback port until `stop`.
async fn start_no_op(
    stop: &CancellationToken,
    participant: NoOp,
) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let stop = stop.clone();
    let task = tokio::spawn(async move {
        let served = tonic::transport::Server::builder()
            .add_service(ParticipantServer::new(participant))
            .serve_with_incoming_shutdown(
                TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop.cancelled_owned(),
            )
            .await;
        if let Err(error) = served {
            tracing::error!(%error, "no-op participant stopped");
        }
    });
    Ok((url, task))
}

fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect_lazy())
}

/// Latencies in microseconds, merged from every client.
struct Stats {
    micros: Vec<u64>,
    errors: u64,
    elapsed: Duration,
}

impl Stats {
    fn percentile_ms(&self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        let at = ((self.micros.len() as f64 - 1.0) * p).round() as usize;
        self.micros[at.min(self.micros.len() - 1)] as f64 / 1000.0
    }

    fn throughput(&self) -> f64 {
        self.micros.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Runs `op` from `clients` tasks until the duration or count is reached.
async fn drive<F, Fut>(
    clients: u64,
    duration: Duration,
    limit: Option<u64>,
    progress: bool,
    op: F,
) -> Stats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (op, done, stop) = (Arc::clone(&op), Arc::clone(&done), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut micros = Vec::new();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < duration {
                if let Some(limit) = limit
                    && done.fetch_add(1, Ordering::Relaxed) >= limit
                {
                    break;
                }
                let at = Instant::now();
                match op(client).await {
                    Ok(()) => {
                        micros.push(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX));
                        if limit.is_none() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (micros, errors)
        }));
    }
    let reporter = progress.then(|| {
        let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>5.1}s  {now:>9} transactions  {:>8}/s",
                    started.elapsed().as_secs_f64(),
                    now - last
                );
                last = now;
            }
        })
    });
    let mut stats = Stats {
        micros: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        if let Ok((micros, errors)) = task.await {
            stats.micros.extend(micros);
            stats.errors += errors;
        }
    }
    stats.elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    stats.micros.sort_unstable();
    stats
}

/// The median fsync latency of the disk holding `dir`, in microseconds.
fn fsync_p50_us(dir: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut samples = Vec::with_capacity(100);
    for _ in 0..100 {
        file.write_all(&[0u8; 512])?;
        let at = Instant::now();
        file.sync_all()?;
        samples.push(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    std::fs::remove_file(&path)?;
    samples.sort_unstable();
    Ok(samples[samples.len() / 2])
}

/// Peak resident memory of this process, from /proc (0 where unknown).
fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(count) = args.recovery {
        return recovery(&args, count).await;
    }
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let k = args.participants;

    let mut participant_urls = args.participant_urls.clone();
    let mut servers = Vec::new();
    let no_op = NoOp::default();
    let own_participants = participant_urls.is_empty();
    if own_participants {
        for _ in 0..k {
            let (url, task) = start_no_op(&stop, no_op.clone()).await?;
            participant_urls.push(url);
            servers.push(task);
        }
    }
    let mut node = None;
    let coordinator_url = match &args.coordinator {
        Some(url) => url.clone(),
        None => {
            let store = match &args.database_url {
                Some(url) => StoreLocation::Url(url.clone()),
                None => StoreLocation::DataDir(dir.path().join("coordinator")),
            };
            let started = Node::start(NodeConfig {
                listen: SocketAddr::from(([127, 0, 0, 1], 0)),
                store,
                runtime: RuntimeConfig {
                    batch_calls: args.batch_calls,
                    ..RuntimeConfig::default()
                },
                limits: Limits::default(),
                node_name: None,
                lease: crate::node::DEFAULT_LEASE,
                access: Default::default(),
            })
            .await
            .context("starting the in-process coordinator")?;
            let url = started.url();
            node = Some(started);
            url
        }
    };

    // The floor: raw unary gRPC calls on loopback at the same concurrency.
    let echo_channels: Vec<Channel> = (0..args.clients)
        .map(|_| channel(&participant_urls[0]))
        .collect::<Result<_, _>>()?;
    let echo = drive(
        args.clients,
        Duration::from_secs(2),
        None,
        false,
        move |client| {
            let mut raw = ParticipantClient::new(echo_channels[client as usize].clone());
            async move {
                raw.commit(pb::CommitBranchRequest::default()).await?;
                Ok(())
            }
        },
    )
    .await;
    let fsync_us = fsync_p50_us(dir.path())?;

    let connections = match args.connections {
        0 => args.clients,
        n => n.min(args.clients),
    };
    let channels: Vec<Channel> = (0..connections)
        .map(|_| channel(&coordinator_url))
        .collect::<Result<_, _>>()?;
    let urls = Arc::new(participant_urls);
    if !args.json {
        eprintln!(
            "concord bench: {:?}, {k} participant(s), {} clients, coordinator {coordinator_url}",
            args.workload, args.clients
        );
    }
    let served_before = no_op.rpcs.load(Ordering::Relaxed);
    let (stats, rpcs_per_txn) = match args.workload {
        Workload::TwoPhase => {
            // Begin (+ K Enlists when asked) + Commit from the client;
            // Prepare and Commit to each participant (one CommitOnePhase
            // when K = 1).
            let separately = args.enlist_separately;
            let one_call = args.one_call;
            let client_calls = if separately {
                2 + k
            } else if one_call {
                1
            } else {
                2
            };
            let rpcs = client_calls + if k == 1 { 1 } else { 2 * k };
            let stats = drive(
                args.clients,
                args.duration,
                args.transactions,
                !args.json,
                move |client| {
                    let mut raw =
                        CoordinatorClient::new(channels[client as usize % channels.len()].clone());
                    let urls = Arc::clone(&urls);
                    async move {
                        let specs: Vec<pb::BranchSpec> = (0..k)
                            .map(|i| pb::BranchSpec {
                                participant: urls[(i as usize) % urls.len()].clone(),
                                payload: vec![],
                                branch: format!("b{i}"),
                            })
                            .collect();
                        let begin = if separately {
                            pb::BeginRequest::default()
                        } else {
                            pb::BeginRequest {
                                branches: specs.clone(),
                                commit: one_call,
                                ..Default::default()
                            }
                        };
                        let begun = raw.begin(begin).await?.into_inner();
                        if let Some(answer) = begun.commit {
                            if answer.outcome != pb::Outcome::Committed as i32 {
                                return Err(Status::aborted(answer.reason));
                            }
                            return Ok(());
                        }
                        let id = begun.transaction_id;
                        if separately {
                            for spec in specs {
                                raw.enlist(pb::EnlistRequest {
                                    transaction_id: id.clone(),
                                    participant: spec.participant,
                                    payload: spec.payload,
                                    branch: spec.branch,
                                })
                                .await?;
                            }
                        }
                        let answer = raw
                            .commit(pb::CommitRequest {
                                transaction_id: id,
                                ..Default::default()
                            })
                            .await?
                            .into_inner();
                        if answer.outcome != pb::Outcome::Committed as i32 {
                            return Err(Status::aborted(answer.reason));
                        }
                        Ok(())
                    }
                },
            )
            .await;
            (stats, rpcs)
        }
        Workload::Saga => {
            // SubmitSaga, then one Execute per step.
            let rpcs = 1 + k;
            let stats = drive(
                args.clients,
                args.duration,
                args.transactions,
                !args.json,
                move |client| {
                    let mut raw =
                        CoordinatorClient::new(channels[client as usize % channels.len()].clone());
                    let urls = Arc::clone(&urls);
                    async move {
                        let steps = (0..k)
                            .map(|i| pb::SagaStep {
                                name: format!("s{i}"),
                                participant: urls[(i as usize) % urls.len()].clone(),
                                compensation: Some(vec![]),
                                ..Default::default()
                            })
                            .collect();
                        let answer = raw
                            .submit_saga(pb::SubmitSagaRequest {
                                steps,
                                wait: true,
                                ..Default::default()
                            })
                            .await?
                            .into_inner();
                        if answer.state != pb::TransactionState::Completed as i32 {
                            return Err(Status::aborted(answer.reason));
                        }
                        Ok(())
                    }
                },
            )
            .await;
            (stats, rpcs)
        }
    };

    // What the participants were really sent per transaction: fewer RPCs
    // than calls when calls shared batches. Only the bench's own no-op
    // participants count them.
    let served = no_op.rpcs.load(Ordering::Relaxed) - served_before;
    let participant_rpcs_per_txn = (own_participants && !stats.micros.is_empty())
        .then(|| served as f64 / stats.micros.len() as f64);
    let throughput = stats.throughput();
    let echo_rate = echo.throughput();
    let floor = echo_rate / rpcs_per_txn as f64;
    let ratio = throughput / floor.max(1e-9);
    let workload = match args.workload {
        Workload::TwoPhase => "2pc",
        Workload::Saga => "saga",
    };
    if args.json {
        println!(
            "{{\"workload\":\"{workload}\",\"participants\":{k},\"clients\":{},\"transactions\":{},\"errors\":{},\"seconds\":{:.3},\"throughput_tps\":{throughput:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"rpc_echo_per_s\":{echo_rate:.1},\"rpcs_per_txn\":{rpcs_per_txn},\"participant_rpcs_per_txn\":{},\"rpc_floor_tps\":{floor:.1},\"ratio_to_floor\":{ratio:.3},\"fsync_p50_us\":{fsync_us},\"batch_calls\":{},\"peak_rss_bytes\":{}}}",
            args.clients,
            stats.micros.len(),
            stats.errors,
            stats.elapsed.as_secs_f64(),
            stats.percentile_ms(0.50),
            stats.percentile_ms(0.90),
            stats.percentile_ms(0.99),
            stats.percentile_ms(1.0),
            participant_rpcs_per_txn.map_or("null".to_owned(), |n| format!("{n:.2}")),
            args.batch_calls,
            peak_rss_bytes(),
        );
    } else {
        println!(
            "workload        {workload}, {k} participant(s), {} clients",
            args.clients
        );
        println!(
            "transactions    {} in {:.1} s ({} errors)",
            stats.micros.len(),
            stats.elapsed.as_secs_f64(),
            stats.errors
        );
        println!("throughput      {throughput:.0} transactions/s");
        println!(
            "latency         p50 {:.2} ms  p90 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            stats.percentile_ms(0.50),
            stats.percentile_ms(0.90),
            stats.percentile_ms(0.99),
            stats.percentile_ms(1.0)
        );
        println!(
            "floor           gRPC echo {echo_rate:.0}/s at {} clients; {rpcs_per_txn} calls per transaction -> {floor:.0} transactions/s",
            args.clients
        );
        println!("ratio_to_floor  {ratio:.2}");
        if let Some(rpcs) = participant_rpcs_per_txn {
            println!(
                "participants    served {rpcs:.2} RPCs per transaction (batching {})",
                if args.batch_calls { "on" } else { "off" }
            );
        }
        println!("fsync p50       {fsync_us} us");
        println!(
            "peak RSS        {:.1} MiB",
            peak_rss_bytes() as f64 / (1024.0 * 1024.0)
        );
    }

    stop.cancel();
    for server in servers {
        let _ = server.await;
    }
    if let Some(node) = node {
        node.shutdown().await?;
    }
    Ok(())
}

/// `--recovery N`: N transactions left COMMITTING by a "crash", then a
/// coordinator started on them (issue 6: serving within 1 s, all finished
/// within 30 s for N = 100,000).
async fn recovery(args: &BenchArgs, count: u64) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut participant_urls = args.participant_urls.clone();
    let mut servers = Vec::new();
    if participant_urls.is_empty() {
        for _ in 0..args.participants {
            let (url, task) = start_no_op(&stop, NoOp::default()).await?;
            participant_urls.push(url);
            servers.push(task);
        }
    }
    let location = match &args.database_url {
        Some(url) => StoreLocation::Url(url.clone()),
        None => StoreLocation::DataDir(dir.path().join("coordinator")),
    };
    // The "crash": a log with every transaction decided and none ended.
    let written = Instant::now();
    {
        let store: Box<dyn crate::store::Store> = match &location {
            StoreLocation::DataDir(path) => {
                Box::new(crate::store::sqlite::SqliteStore::open_dir(path).await?)
            }
            StoreLocation::Url(url) if url.starts_with("sqlite:") => {
                Box::new(crate::store::sqlite::SqliteStore::open_url(url).await?)
            }
            StoreLocation::Url(url) => {
                Box::new(crate::store::postgres::PostgresStore::open_url(url).await?)
            }
        };
        let mut left = count;
        while left > 0 {
            let chunk = left.min(2_000);
            let mut records = Vec::new();
            for _ in 0..chunk {
                let id = TxnId::mint();
                records.push(Record::Begun {
                    id,
                    created_at_ms: now_ms(),
                    deadline_ms: now_ms() + 3_600_000,
                    idempotency_key: None,
                    request_digest: None,
                    description: None,
                });
                for (idx, url) in participant_urls.iter().enumerate() {
                    records.push(Record::Enlisted {
                        id,
                        idx: u32::try_from(idx).unwrap_or(u32::MAX),
                        name: format!("b{idx}"),
                        participant: url.clone(),
                        payload: Vec::new(),
                    });
                }
                records.push(Record::Decided {
                    id,
                    at_ms: now_ms(),
                });
            }
            store.append(&records).await?;
            left -= chunk;
        }
        // On a shared store the writer is a node of its own: leaving hands
        // what it wrote to the coordinator started next, at once.
        if let Some(cluster) = store.cluster() {
            cluster.leave().await?;
        }
    }
    if !args.json {
        eprintln!(
            "wrote {count} unfinished transactions in {:.1} s; starting the coordinator",
            written.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    let node = Node::start(NodeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: location,
        runtime: RuntimeConfig::default(),
        limits: Limits::default(),
        node_name: None,
        lease: crate::node::DEFAULT_LEASE,
        access: Default::default(),
    })
    .await
    .context("starting the coordinator")?;
    let serving = started.elapsed();
    // Answering a request proves it serves while the backlog drains.
    let mut client = CoordinatorClient::new(channel(&node.url())?);
    let probe = Instant::now();
    client
        .list_transactions(pb::ListTransactionsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?;
    let first_answer = serving + probe.elapsed();
    // Finished when the log holds no unfinished transaction (the backlog is
    // loaded in the background, so memory alone cannot tell).
    loop {
        let unfinished = client
            .list_transactions(pb::ListTransactionsRequest {
                page_size: 1,
                states: vec![
                    pb::TransactionState::Active.into(),
                    pb::TransactionState::Preparing.into(),
                    pb::TransactionState::Committing.into(),
                    pb::TransactionState::Aborting.into(),
                ],
                ..Default::default()
            })
            .await?
            .into_inner()
            .transactions;
        if unfinished.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = started.elapsed();
    node.shutdown().await?;
    stop.cancel();
    for server in servers {
        let _ = server.await;
    }
    if args.json {
        println!(
            "{{\"workload\":\"recovery\",\"participants\":{},\"transactions\":{count},\"serving_after_ms\":{:.1},\"first_answer_after_ms\":{:.1},\"all_finished_after_ms\":{:.1},\"peak_rss_bytes\":{}}}",
            participant_urls.len(),
            serving.as_secs_f64() * 1e3,
            first_answer.as_secs_f64() * 1e3,
            done.as_secs_f64() * 1e3,
            peak_rss_bytes(),
        );
    } else {
        println!(
            "recovery of {count} transactions: serving after {:.0} ms, first answer after {:.0} ms, all finished after {:.1} s; peak RSS {:.1} MiB",
            serving.as_secs_f64() * 1e3,
            first_answer.as_secs_f64() * 1e3,
            done.as_secs_f64(),
            peak_rss_bytes() as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}
