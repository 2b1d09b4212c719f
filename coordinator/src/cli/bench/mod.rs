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
//!
//! Here: the flags and the run. `no_op`: the bench's own participants.
//! `measure`: driving clients and merging their latencies, fsync and
//! memory probes. `recovery`: `--recovery N`. `report`: `--report
//! FILE.svg`.

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

mod db_time;
mod measure;
mod no_op;
mod recovery;
mod report;

use measure::{drive, fsync_p50_us, peak_rss_bytes};
use no_op::{NoOp, start_no_op};

/// What to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Begin, enlist K participants, commit.
    #[value(name = "2pc")]
    TwoPhase,
    /// SubmitSaga with K steps, waiting for completion.
    Saga,
    /// A transactional message to K destinations: PrepareMessage, then
    /// SubmitMessage waiting until every destination acknowledged.
    Message,
}

impl Workload {
    /// What `--participants` counts for this workload.
    fn parts(self) -> &'static str {
        match self {
            Workload::TwoPhase => "participant(s)",
            Workload::Saga => "step(s)",
            Workload::Message => "destination(s)",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// What each client runs, over and over.
    #[arg(long, value_enum, default_value = "2pc")]
    pub workload: Workload,
    /// Participants per 2PC transaction, steps per saga, or destinations
    /// per message.
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
    /// Coordinator store for the in-process coordinator.
    ///
    /// Default: SQLite in a temp dir, fsync on. With --groups, one per
    /// group, in order.
    #[arg(long = "database-url")]
    pub database_urls: Vec<String>,
    /// Run this many groups of one in-process node each.
    ///
    /// Each on a log of its own, with the shards split among them (DESIGN
    /// §11); the clients' connections are spread over the nodes. Keyless
    /// transactions stay in the group they reach, so no call is forwarded.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=16))]
    pub groups: u64,
    /// Drive an external coordinator instead of starting one.
    #[arg(long)]
    pub coordinator: Option<String>,
    /// External participant endpoints instead of in-process no-op ones.
    ///
    /// Repeat the flag for several; they are used round-robin.
    #[arg(long = "participant")]
    pub participant_urls: Vec<String>,
    /// Connections the clients share to the coordinator (0: one per client).
    ///
    /// Fewer connections than clients multiplex calls over HTTP/2 streams,
    /// as real services do; per-connection buffers then stop dominating
    /// the memory measured.
    #[arg(long, default_value_t = 0)]
    pub connections: u64,
    /// Print one JSON object instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Also draw the run as a standalone SVG at this path.
    ///
    /// Throughput in each second (with the floor) and the latency
    /// distribution, under a summary line and the command.
    #[arg(long, value_name = "FILE.svg")]
    pub report: Option<std::path::PathBuf>,
    /// 2PC: enlist each participant with its own Enlist call.
    ///
    /// Instead of naming them in Begin: one more call and forced write per
    /// branch.
    #[arg(long, conflicts_with = "one_call")]
    pub enlist_separately: bool,
    /// 2PC: begin and commit in one call (`BeginRequest.commit`), one round
    /// trip fewer.
    #[arg(long)]
    pub one_call: bool,
    /// Coalesce calls waiting for one participant (`serve --batch-calls`).
    ///
    /// The in-process coordinator puts them into `Participant.Batch` calls;
    /// `false` sends every call alone. Calls per transaction in the report
    /// count calls, not the batches that carry them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub batch_calls: bool,
    /// Sign every participant call, as `concord serve` does (DESIGN §12).
    ///
    /// The in-process coordinator signs them; `false` measures what
    /// signing costs.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub sign_calls: bool,
    /// The bench's own participants answer every Prepare only after this long.
    ///
    /// E.g. 2s, so that each client's transaction stays in flight: for
    /// measuring the coordinator's memory per in-flight transaction
    /// (scripts/bench-memory.sh). Throughput is then bounded by it.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Instead of a load: time recovering this many unfinished transactions.
    ///
    /// Writes this many decided-but-unfinished 2PC transactions
    /// (COMMITTED, phase 2 not delivered) to the store, starts a
    /// coordinator on it, and times how soon it serves and how soon every
    /// one of them is finished.
    #[arg(long, value_name = "TRANSACTIONS")]
    pub recovery: Option<u64>,
}

/// "10s", "500ms", "1m" (a bare number is seconds): how long a run lasts.
/// Also what `bank-bench` (examples/bank) takes.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
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

fn channel(url: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(url.to_owned())?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect_lazy())
}

/// The clients of one run: how many, for how long, over which channels,
/// against which participants.
struct Load {
    clients: u64,
    duration: Duration,
    limit: Option<u64>,
    progress: bool,
    channels: Arc<Vec<Channel>>,
    urls: Arc<Vec<String>>,
}

impl Load {
    /// Runs `op` (one transaction, with a client on this client's channel
    /// and the participants' URLs) from every client until the run ends.
    async fn run<F, Fut>(self, op: F) -> measure::Stats
    where
        F: Fn(CoordinatorClient<Channel>, Arc<Vec<String>>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), Status>> + Send,
    {
        let Load {
            clients,
            duration,
            limit,
            progress,
            channels,
            urls,
        } = self;
        drive(clients, duration, limit, progress, move |client| {
            let raw = CoordinatorClient::new(channels[client as usize % channels.len()].clone());
            op(raw, Arc::clone(&urls))
        })
        .await
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    if let Some(count) = args.recovery {
        return recovery::recovery(&args, count).await;
    }
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let k = args.participants;

    let mut participant_urls = args.participant_urls.clone();
    let mut servers = Vec::new();
    let no_op = NoOp {
        hold: args.hold,
        ..NoOp::default()
    };
    let own_participants = participant_urls.is_empty();
    if own_participants {
        for _ in 0..k {
            let (url, task) = start_no_op(&stop, no_op.clone()).await?;
            participant_urls.push(url);
            servers.push(task);
        }
    }
    let mut nodes = Vec::new();
    let coordinator_urls = match &args.coordinator {
        Some(url) => vec![url.clone()],
        None => {
            for url in &args.database_urls {
                db_time::track(url).await;
            }
            nodes = start_groups(&args, dir.path()).await?;
            nodes.iter().map(Node::url).collect()
        }
    };
    let run_started_ms = now_ms();
    let coordinator_url = coordinator_urls.join(", ");

    let connections = match args.connections {
        0 => args.clients,
        n => n.min(args.clients),
    };
    // The floor: raw unary gRPC calls on loopback at the same concurrency,
    // over as many connections as the load uses.
    let echo_channels: Vec<Channel> = (0..connections)
        .map(|_| channel(&participant_urls[0]))
        .collect::<Result<_, _>>()?;
    let echo = drive(
        args.clients,
        Duration::from_secs(2),
        None,
        false,
        move |client| {
            let channel = &echo_channels[client as usize % echo_channels.len()];
            let mut raw = ParticipantClient::new(channel.clone());
            async move {
                raw.commit(pb::CommitBranchRequest::default()).await?;
                Ok(())
            }
        },
    )
    .await;
    let fsync_us = fsync_p50_us(dir.path())?;

    let channels: Vec<Channel> = (0..connections)
        .map(|i| channel(&coordinator_urls[i as usize % coordinator_urls.len()]))
        .collect::<Result<_, _>>()?;
    let urls = Arc::new(participant_urls);
    if !args.json {
        eprintln!(
            "concord bench: {:?}, {k} {}, {} clients, coordinator {coordinator_url}",
            args.workload,
            args.workload.parts(),
            args.clients
        );
    }
    let served_before = no_op.rpcs.load(Ordering::Relaxed);
    let load = Load {
        clients: args.clients,
        duration: args.duration,
        limit: args.transactions,
        progress: !args.json,
        channels: Arc::new(channels),
        urls,
    };
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
            let stats = load
                .run(move |mut raw, urls| async move {
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
                })
                .await;
            (stats, rpcs)
        }
        Workload::Saga => {
            // SubmitSaga, then one Execute per step.
            let rpcs = 1 + k;
            let stats = load
                .run(move |mut raw, urls| async move {
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
                })
                .await;
            (stats, rpcs)
        }
        Workload::Message => {
            // PrepareMessage and SubmitMessage, then one Deliver per
            // destination. The producer's own local transaction (its
            // outbox row) is the producer's cost, not the coordinator's,
            // and is left out, as DTM's figures leave out the business
            // database.
            let rpcs = 2 + k;
            let stats = load
                .run(move |mut raw, urls| async move {
                    let destinations = (0..k)
                        .map(|i| pb::MessageDestination {
                            name: format!("d{i}"),
                            participant: urls[(i as usize) % urls.len()].clone(),
                            payload: Vec::new(),
                        })
                        .collect();
                    let prepared = raw
                        .prepare_message(pb::PrepareMessageRequest {
                            producer: urls[0].clone(),
                            destinations,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    let answer = raw
                        .submit_message(pb::SubmitMessageRequest {
                            transaction_id: prepared.transaction_id,
                            wait: true,
                        })
                        .await?
                        .into_inner();
                    if answer.state != pb::TransactionState::Delivered as i32 {
                        return Err(Status::aborted(format!("state {}", answer.state)));
                    }
                    Ok(())
                })
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
        Workload::Message => "message",
    };
    if args.json {
        println!(
            "{{\"workload\":\"{workload}\",\"participants\":{k},\"clients\":{},\"transactions\":{},\"errors\":{},\"seconds\":{:.3},\"throughput_tps\":{throughput:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"rpc_echo_per_s\":{echo_rate:.1},\"rpcs_per_txn\":{rpcs_per_txn},\"participant_rpcs_per_txn\":{},\"rpc_floor_tps\":{floor:.1},\"ratio_to_floor\":{ratio:.3},\"fsync_p50_us\":{fsync_us},\"batch_calls\":{},\"groups\":{},\"peak_rss_bytes\":{}}}",
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
            args.groups,
            peak_rss_bytes(),
        );
    } else {
        println!(
            "workload        {workload}, {k} {}, {} clients, {} group{}",
            args.workload.parts(),
            args.clients,
            args.groups,
            if args.groups == 1 { "" } else { "s" }
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

    // Each group's share and, on PostgreSQL, the time its database spent
    // in the log's writes (the 2 cores here cap the whole; a group's own
    // database time is what N groups on N machines would each spend).
    let mut per_group = Vec::new();
    if args.coordinator.is_none() {
        for (i, url) in args.database_urls.iter().enumerate() {
            if let Some(time) = db_time::read(url, run_started_ms).await {
                per_group.push((i, time));
            }
        }
    }
    for (i, time) in &per_group {
        let line = format!(
            "group g{}: {} transactions, {} log writes (concord_append) taking {:.1} ms of \
             database time in all, {:.3} ms a transaction",
            i + 1,
            time.transactions,
            time.appends,
            time.append_ms,
            time.append_ms / (time.transactions.max(1) as f64)
        );
        if args.json {
            eprintln!("{line}");
        } else {
            println!("{line}");
        }
    }

    if let Some(path) = &args.report {
        let summary = report::Summary {
            title: format!(
                "{workload}, {k} {}, {} clients{}",
                args.workload.parts(),
                args.clients,
                if args.one_call { ", one call" } else { "" }
            ),
            line: format!(
                "{throughput:.0} transactions/s, p50 {:.2} ms, p99 {:.2} ms, {} errors; \
                 floor {floor:.0}/s (ratio {ratio:.2}); fsync p50 {fsync_us} us",
                stats.percentile_ms(0.50),
                stats.percentile_ms(0.99),
                stats.errors
            ),
            floor_tps: floor,
            // As a reader would type it, wherever the binary lives here.
            command: std::iter::once("concord".to_owned())
                .chain(std::env::args().skip(1))
                .collect::<Vec<_>>()
                .join(" "),
        };
        std::fs::write(path, report::svg(&summary, &stats))
            .with_context(|| format!("writing the report to {}", path.display()))?;
        eprintln!("report: {}", path.display());
    }

    stop.cancel();
    for server in servers {
        let _ = server.await;
    }
    for node in nodes {
        node.shutdown().await?;
    }
    Ok(())
}

/// The in-process coordinator: one node, or with `--groups N` one node per
/// group, each on its own log (a SQLite file in `dir`, or the group's
/// `--database-url`), with the shards split among them.
async fn start_groups(args: &BenchArgs, dir: &std::path::Path) -> anyhow::Result<Vec<Node>> {
    let groups = usize::try_from(args.groups).unwrap_or(1);
    if !args.database_urls.is_empty() && args.database_urls.len() != groups {
        anyhow::bail!(
            "{} --database-url for {groups} group{}: give one per group",
            args.database_urls.len(),
            if groups == 1 { "" } else { "s" }
        );
    }
    // The map names every node, so each listens on a port chosen first.
    let mut addresses = Vec::with_capacity(groups);
    for _ in 0..groups {
        let probe = std::net::TcpListener::bind(("127.0.0.1", 0)).context("choosing a port")?;
        addresses.push(probe.local_addr().context("choosing a port")?);
    }
    let map = (groups > 1)
        .then(|| {
            let members = addresses
                .iter()
                .enumerate()
                .map(|(i, addr)| crate::shard::Group {
                    name: format!("g{}", i + 1),
                    nodes: vec![format!("http://{addr}")],
                })
                .collect();
            crate::shard::ShardMap::split(
                crate::shard::DEFAULT_SHARDS,
                members,
                crate::model::now_ms(),
            )
        })
        .transpose()
        .map_err(|e| anyhow::anyhow!("the shard map: {e}"))?;
    // One deployment key, as its nodes would share.
    let signer = if args.sign_calls {
        Some(Arc::new(concord_proto::signature::CallSigner::generate()?))
    } else {
        None
    };
    let mut nodes = Vec::with_capacity(groups);
    for (i, addr) in addresses.into_iter().enumerate() {
        let store = match args.database_urls.get(i) {
            Some(url) => StoreLocation::Url(url.clone()),
            None => StoreLocation::DataDir(dir.join(format!("coordinator-{i}"))),
        };
        let sharding = map
            .as_ref()
            .map(|map| crate::runtime::Sharding::new(map.clone(), format!("g{}", i + 1)))
            .transpose()
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        let listen = if groups > 1 {
            addr
        } else {
            SocketAddr::from(([127, 0, 0, 1], 0))
        };
        let node = Node::start(NodeConfig {
            runtime: RuntimeConfig {
                batch_calls: args.batch_calls,
                signer: signer.clone(),
                advertised_url: if groups > 1 {
                    format!("http://{addr}")
                } else {
                    String::new()
                },
                sharding,
                ..RuntimeConfig::default()
            },
            ..NodeConfig::new(listen, store)
        })
        .await
        .context("starting the in-process coordinator")?;
        nodes.push(node);
    }
    Ok(nodes)
}
