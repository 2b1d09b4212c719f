//! The `concord` command line: `concord serve` runs a coordinator node,
//! `concord bench` measures, `concord txn` is the operator's tool.
//! Every flag also reads an environment variable (`CONCORD_*`), shown by
//! `concord serve --help`. The binary's `main` is [`main`]; it lives in the
//! library so that tests can build the same program with fail points on.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub mod admin;
pub mod bench;
pub mod keys;
pub mod shards;

use crate::api::Limits;
use crate::node::{Node, NodeConfig, StoreLocation};
use crate::runtime::RuntimeConfig;
use crate::telemetry::OtlpConfig;
use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "concord",
    version,
    about = "Concord distributed transaction coordinator"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a coordinator node (gRPC on --listen, log in --data-dir).
    Serve(Box<ServeArgs>),
    /// Measure throughput and latency against this machine's floor.
    Bench(bench::BenchArgs),
    /// Operator tools: list, show, retry and resolve transactions.
    Txn(admin::TxnArgs),
    /// Shard map of a multi-group deployment; moving shards between groups.
    ///
    /// For a deployment of several groups of nodes (DESIGN §11): print or
    /// write its shard map, and move shards from one group to another.
    Shards(shards::ShardsArgs),
    /// Make or inspect the key that participant calls are signed with.
    ///
    /// Every call to a participant is signed with this key: `generate`
    /// makes one, `public` prints its public half.
    Keys(keys::KeysArgs),
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// A TOML file of settings for any flag below.
    ///
    /// Each setting as `key = value`, the key named as the flag without its
    /// dashes (`lease_ms = 5000` or `lease-ms = 5000`). Flags and
    /// environment variables override it.
    #[arg(help_heading = "Serving", long, env = "CONCORD_CONFIG")]
    config: Option<PathBuf>,

    /// Address to serve gRPC on.
    #[arg(
        help_heading = "Serving",
        long,
        env = "CONCORD_LISTEN",
        default_value = "127.0.0.1:7400"
    )]
    listen: SocketAddr,

    /// Directory of the embedded SQLite log (created if missing).
    #[arg(
        help_heading = "The log",
        long,
        env = "CONCORD_DATA_DIR",
        default_value = "./concord-data"
    )]
    data_dir: PathBuf,

    /// Database URL of the log, overriding --data-dir.
    ///
    /// E.g. sqlite:///var/lib/concord/log.db, or
    /// postgres://user:password@host/db (several nodes may share one
    /// PostgreSQL database: see --node-name and --lease-ms).
    #[arg(
        help_heading = "The log",
        long,
        env = "CONCORD_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,

    /// On PostgreSQL: this node's name among the nodes sharing the database.
    ///
    /// A restart under the same name takes over the previous start's
    /// transactions at once. Default: --advertise-url (one of the two is required on PostgreSQL).
    #[arg(help_heading = "The log", long, env = "CONCORD_NODE_NAME")]
    node_name: Option<String>,

    /// On PostgreSQL: how long a node's lease lasts without renewal, in ms.
    ///
    /// The lease is renewed every third of it. A node silent for longer is
    /// declared gone and its transactions are taken over. Same value on
    /// every node.
    #[arg(help_heading = "The log", long, env = "CONCORD_LEASE_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(300..=600_000))]
    lease_ms: u64,

    /// The token the operator's calls must carry, when set.
    ///
    /// The operator's calls (`concord txn retry` and `resolve`; `concord
    /// shards` writing the shard map and handing shards' keys over) must
    /// then carry this token (`authorization: Bearer <token>`). Prefer the
    /// environment variable or the config file to the command line, which
    /// other local users can read.
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_ADMIN_TOKEN",
        hide_env_values = true
    )]
    admin_token: Option<String>,

    /// Client tokens: when set, every client call must carry one of them.
    ///
    /// Client calls are Begin, Commit, SubmitSaga, messages, reads and
    /// watches: all but GetOutcome. The admin token is accepted too; either
    /// is sent as `authorization: Bearer <token>`. Comma-separated: give
    /// the new token beside the old one while clients move to it.
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_CLIENT_TOKEN",
        hide_env_values = true,
        value_delimiter = ',',
        value_name = "TOKEN"
    )]
    client_token: Vec<String>,

    /// Serve gRPC over TLS with this certificate chain (PEM); needs
    /// --tls-key.
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_TLS_CERT",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_TLS_KEY",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,

    /// Mutual TLS: accept only clients whose certificate this CA (PEM) signed.
    ///
    /// Needs --tls-cert.
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    tls_client_ca: Option<PathBuf>,

    /// CA (PEM) that signed the certificates of the servers this node calls.
    ///
    /// TLS for this node's own calls to https:// participants and to other
    /// nodes.
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_PEER_TLS_CA"
    )]
    peer_tls_ca: Option<PathBuf>,

    /// Certificate chain (PEM) this node presents to the servers it calls.
    ///
    /// For https:// participants and nodes that require mutual TLS. Needs
    /// --peer-tls-key and --peer-tls-ca.
    #[arg(help_heading = "Who may call, and whom it calls", long, env = "CONCORD_PEER_TLS_CERT", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    peer_tls_cert: Option<PathBuf>,

    /// The private key of --peer-tls-cert (PEM).
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_PEER_TLS_KEY",
        requires = "peer_tls_cert"
    )]
    peer_tls_key: Option<PathBuf>,

    /// Days to keep finished transactions in the log; 0 keeps everything.
    ///
    /// A finished transaction is removed from the log this many days after
    /// it ended (checked every minute; each removal is logged and counted).
    /// Never those an operator resolved a branch of, nor those flagged
    /// NEEDS_ATTENTION.
    #[arg(help_heading = "The log", long, env = "CONCORD_RETENTION_DAYS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=36_500))]
    retention_days: u64,

    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9464.
    ///
    /// At http://<this address>/metrics. Off when not given.
    #[arg(help_heading = "Serving", long, env = "CONCORD_METRICS_LISTEN")]
    metrics_listen: Option<SocketAddr>,

    /// Serve the web console on this address, e.g. 127.0.0.1:7480.
    ///
    /// Transactions, the NEEDS_ATTENTION queue, live updates, Retry and
    /// Resolve. Off unless given. TLS and the admin token as on the gRPC
    /// port; without the token it is read-only.
    #[arg(help_heading = "Serving", long, env = "CONCORD_CONSOLE_LISTEN")]
    console_listen: Option<SocketAddr>,

    /// Host names a loopback console answers to besides loopback's.
    ///
    /// A console on loopback answers only requests addressed to a loopback
    /// name (DNS rebinding); behind a reverse proxy on the same host, give
    /// the names it is reached by (comma-separated): `console.example.com`.
    #[arg(
        help_heading = "Serving",
        long,
        env = "CONCORD_CONSOLE_HOST",
        value_delimiter = ',',
        value_name = "NAME",
        requires = "console_listen"
    )]
    console_host: Vec<String>,

    /// Export spans to this OpenTelemetry collector over OTLP/gRPC.
    ///
    /// Every span (each transaction's, and each participant call's under
    /// it) is exported to it, e.g. http://127.0.0.1:4317, and participants
    /// are sent the W3C `traceparent`. Needs a build with the `otlp` cargo
    /// feature.
    #[arg(help_heading = "Serving", long, env = "CONCORD_OTLP_ENDPOINT")]
    otlp_endpoint: Option<String>,

    /// The `service.name` of exported spans.
    #[arg(
        help_heading = "Serving",
        long,
        env = "CONCORD_OTLP_SERVICE_NAME",
        default_value = "concord"
    )]
    otlp_service_name: String,

    /// On SIGTERM or SIGINT: how long to drain transactions in flight, in ms.
    ///
    /// The node keeps serving the transactions in flight until they have
    /// decided (health reports NOT_SERVING and new transactions are refused
    /// meanwhile). What is left is finished by the next start.
    #[arg(help_heading = "Serving", long, env = "CONCORD_DRAIN_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    drain_timeout_ms: u64,

    /// The private key every call to a participant is signed with (PEM).
    ///
    /// Made by `concord keys generate`; the same on every node of a
    /// deployment. Default on the SQLite data directory: its `signing.key`,
    /// made at the first start. Required with --database-url.
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_SIGNING_KEY"
    )]
    signing_key: Option<PathBuf>,

    /// Allow serving other hosts unprotected (protected mode off).
    ///
    /// Serve on an address other hosts can reach without both
    /// --admin-token and --client-token, and without mutual TLS
    /// (--tls-client-ca): anyone who reaches the port may then begin and
    /// commit, or resolve, retry and reshard. Refused without this flag
    /// (protected mode).
    #[arg(help_heading = "Who may call, and whom it calls", long, env = "CONCORD_ALLOW_UNPROTECTED", action = clap::ArgAction::Set,
          num_args = 0..=1, default_missing_value = "true", default_value_t = false,
          value_name = "BOOL")]
    allow_unprotected: bool,

    /// The URL other hosts reach this node at. Default: http://<listen>.
    ///
    /// The other nodes forward calls to it and clients are pointed at it
    /// (`concord-owner`); on PostgreSQL it is the node's name unless
    /// --node-name says otherwise. Participants are sent it too, but ask
    /// only the coordinator they were configured with about an in-doubt
    /// branch (DESIGN §12).
    #[arg(help_heading = "Serving", long, env = "CONCORD_ADVERTISE_URL")]
    advertise_url: Option<String>,

    /// Shard map (JSON) of a deployment of several groups; needs --group.
    ///
    /// For a deployment of several groups of nodes, each group its own
    /// database (DESIGN §11): the map is a JSON file (`shard::ShardMap`),
    /// the same on every node at its start. Running nodes follow newer
    /// versions of it themselves; change it with `concord shards`
    /// (add-group, move, cancel), never by editing the file under running
    /// nodes.
    #[arg(
        help_heading = "The log",
        long,
        env = "CONCORD_SHARD_MAP",
        requires = "group"
    )]
    shard_map: Option<PathBuf>,

    /// This node's group in the shard map (--shard-map).
    #[arg(
        help_heading = "The log",
        long,
        env = "CONCORD_GROUP",
        requires = "shard_map"
    )]
    group: Option<String>,

    /// Timeout of a transaction whose Begin names none, in ms.
    #[arg(help_heading = "Transactions", long, env = "CONCORD_TXN_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    txn_timeout_ms: u64,

    /// Prepare deadline when Commit names none, in ms (R5).
    #[arg(help_heading = "Transactions", long, env = "CONCORD_PREPARE_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    prepare_timeout_ms: u64,

    /// Deadline of each phase-2 Commit/Abort delivery attempt, in ms.
    #[arg(help_heading = "Transactions", long, env = "CONCORD_DELIVERY_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    delivery_timeout_ms: u64,

    /// Coalesce waiting calls to a participant into one Batch call.
    ///
    /// The calls that wait for one participant while earlier calls to it
    /// are in flight go in one `Participant.Batch` call (no added delay;
    /// participants that do not implement Batch get single calls).
    /// `false`: every call alone.
    #[arg(help_heading = "Transactions", long, env = "CONCORD_BATCH_CALLS", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    batch_calls: bool,

    /// Failed tries of a forced log write before its client gets UNAVAILABLE.
    ///
    /// A forced log write (a decision, an end) that failed this many times
    /// answers its waiting client UNAVAILABLE with the store's error; the
    /// node goes on writing it with capped backoff, since a decision
    /// cannot be dropped, and reports NOT_SERVING until a write succeeds.
    #[arg(help_heading = "The log", long, env = "CONCORD_LOG_WRITE_ATTEMPTS", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    log_write_attempts: u32,

    /// First retry delay of phase-2 deliveries, in ms; doubles with jitter.
    #[arg(help_heading = "Transactions", long, env = "CONCORD_RETRY_MIN_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    retry_min_ms: u64,

    /// Cap on the phase-2 retry delay, in ms.
    #[arg(help_heading = "Transactions", long, env = "CONCORD_RETRY_MAX_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    retry_max_ms: u64,

    /// Largest branch payload accepted, in bytes.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    max_payload_bytes: u64,

    /// Most steps one saga may have.
    ///
    /// At most 1,000: checking a saga's shape costs the square of its
    /// steps.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_SAGA_STEPS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=1_000))]
    max_saga_steps: u64,

    /// Most transactions this node holds live at once.
    ///
    /// 2PC, sagas and messages together; about 13 KiB each. Past it a new
    /// one is refused RESOURCE_EXHAUSTED, to retry after a backoff.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_IN_FLIGHT", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    max_in_flight: u64,

    /// Most WatchTransactions streams this node serves at once.
    ///
    /// As many again for its console's live pages. Past it a new watch is
    /// RESOURCE_EXHAUSTED.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_WATCHES", default_value_t = 1_024,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    max_watches: u64,

    /// The only networks and host names participants may be at.
    ///
    /// Comma-separated: `10.0.0.0/8,bank.internal,*.svc.cluster.local`. A
    /// listed name is dialled wherever it resolves; another name only where
    /// it resolves inside a listed network. Empty: anywhere. Never, list or
    /// not: link-local addresses (cloud metadata) and 0.0.0.0.
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_ALLOWED_PARTICIPANTS",
        value_delimiter = ',',
        value_name = "NETWORK|HOST"
    )]
    allowed_participants: Vec<String>,

    /// Most calls this node serves at once, every client's together.
    ///
    /// A watch counts until its stream starts. Past it a call is refused
    /// UNAVAILABLE with retry advice. Health checks are not counted.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_CALLS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    max_calls: u64,

    /// Most branches one transaction may have.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_BRANCHES", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    max_branches: u64,
}

/// How a command-line program ends: on an error, its reasons in one line
/// each (`Error: what: why`) and exit status 1; a usage error as clap
/// prints it (status 2). Never a stack trace, whatever `RUST_BACKTRACE`
/// says: an operator's mistake is not a crash.
pub fn exit(result: anyhow::Result<()>) -> std::process::ExitCode {
    let Err(error) = result else {
        return std::process::ExitCode::SUCCESS;
    };
    if let Some(usage) = error.downcast_ref::<clap::Error>() {
        usage.exit();
    }
    eprintln!("Error: {}", one_line(&error));
    std::process::ExitCode::FAILURE
}

/// `error` and its causes, `: `-separated, each cause left out when the
/// text before already says it (an error that prints its source in its
/// own message would otherwise say it twice).
fn one_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Runs the command line; returns when the command is done.
pub fn main() -> anyhow::Result<()> {
    // Fail points (tests only): FAILPOINTS="2pc-after-decision=return"
    // stops the process dead at that log boundary (see `runtime::crash`).
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = parse_with_config_file(std::env::args_os().collect())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Tracing starts inside the runtime: the OTLP exporter lives on it.
        let otlp = match &cli.command {
            Command::Serve(args) => args.otlp_endpoint.clone().map(|endpoint| OtlpConfig {
                endpoint,
                service_name: args.otlp_service_name.clone(),
                instance: args.node_name.clone(),
            }),
            Command::Bench(_) | Command::Txn(_) | Command::Shards(_) | Command::Keys(_) => None,
        };
        let telemetry = crate::telemetry::init(otlp)?;
        let result = match cli.command {
            Command::Serve(args) => serve(*args).await,
            Command::Bench(args) => bench::run(args).await,
            Command::Txn(args) => admin::run(args).await,
            Command::Shards(args) => shards::run(args).await,
            Command::Keys(args) => keys::run(args),
        };
        telemetry.shutdown().await;
        result
    })
}

/// The node's group and shard map from `--shard-map FILE --group NAME`,
/// checked before the node starts (DESIGN §11).
fn sharding(
    map: Option<&std::path::Path>,
    group: Option<&str>,
) -> anyhow::Result<Option<crate::runtime::Sharding>> {
    let (Some(path), Some(group)) = (map, group) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the shard map {}", path.display()))?;
    let map: crate::shard::ShardMap = serde_json::from_str(&text)
        .with_context(|| format!("the shard map {} is not a map's JSON", path.display()))?;
    let sharding = crate::runtime::Sharding::new(map, group.to_owned())
        .map_err(|reason| anyhow::anyhow!("--shard-map {}: {reason}", path.display()))?;
    Ok(Some(sharding))
}

/// Tokens shorter than this are warned of at start.
const MIN_TOKEN_CHARS: usize = 16;

/// Protected mode (DESIGN §12, S3): a node that other hosts can reach
/// serves only callers it can authenticate, unless told by name to serve
/// anyone. Both kinds of caller: whoever may Begin and Commit makes this
/// node sign calls to the participants, and whoever may Resolve decides.
fn protected(args: &ServeArgs) -> anyhow::Result<()> {
    let exposed: Vec<SocketAddr> = std::iter::once(args.listen)
        .chain(args.console_listen)
        .filter(|addr| !addr.ip().is_loopback())
        .collect();
    let mutual_tls = args.tls_client_ca.is_some();
    let mut missing = Vec::new();
    if args.admin_token.as_ref().is_none_or(|t| t.is_empty()) {
        missing.push("--admin-token (or CONCORD_ADMIN_TOKEN) for the operator's calls");
    }
    if args.client_token.iter().all(String::is_empty) {
        missing.push("--client-token (or CONCORD_CLIENT_TOKEN) for every other call");
    }
    if exposed.is_empty() || mutual_tls || missing.is_empty() {
        return Ok(());
    }
    let listed: Vec<String> = exposed.iter().map(ToString::to_string).collect();
    if args.allow_unprotected {
        tracing::warn!(addrs = %listed.join(", "),
            "serving unprotected (--allow-unprotected): anyone who reaches these ports can \
             begin and commit transactions, or resolve, retry and reshard them");
        return Ok(());
    }
    anyhow::bail!(
        "refusing to serve {} unprotected: other hosts could begin and commit transactions \
         (which this node signs for its participants), or resolve, retry and reshard them. \
         Give {}; or mutual TLS (--tls-cert, --tls-key, --tls-client-ca); or listen on \
         127.0.0.1; --allow-unprotected if the open door is deliberate",
        listed.join(" and "),
        missing.join(", and ")
    )
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    protected(&args)?;
    // A token is a password: a short one is guessed.
    let short = args
        .admin_token
        .iter()
        .chain(&args.client_token)
        .filter(|token| !token.is_empty())
        .any(|token| token.len() < MIN_TOKEN_CHARS);
    if short {
        tracing::warn!(
            "a token of fewer than {MIN_TOKEN_CHARS} characters can be guessed: make one with \
             `openssl rand -hex 24`"
        );
    }
    if args.database_url.as_deref().is_some_and(is_postgres)
        && args.node_name.is_none()
        && args.advertise_url.is_none()
    {
        // Two hosts started with default flags would both be
        // http://127.0.0.1:7400 and take each other for a restart.
        anyhow::bail!(
            "on PostgreSQL each node needs a name of its own among the nodes sharing the \
             database: give --node-name (or --advertise-url, the address participants reach \
             it at)"
        );
    }
    let signer = match (&args.signing_key, &args.database_url) {
        (Some(path), _) => keys::load(path)?,
        (None, None) => keys::load_or_create(None, &args.data_dir)?,
        (None, Some(_)) => anyhow::bail!(
            "give --signing-key FILE: every node of a deployment signs its participant calls \
             with one key (make one with `concord keys generate --out FILE`, and give \
             participants FILE.pub)"
        ),
    };
    tracing::info!(key = %signer.key_id(), "signing participant calls");
    let ms = Duration::from_millis;
    let runtime = RuntimeConfig::with_retry(
        ms(args.retry_min_ms),
        ms(args.retry_max_ms.max(args.retry_min_ms)),
        RuntimeConfig {
            default_txn_timeout: ms(args.txn_timeout_ms),
            default_prepare_timeout: ms(args.prepare_timeout_ms),
            delivery_timeout: ms(args.delivery_timeout_ms),
            batch_calls: args.batch_calls,
            log_write_attempts: args.log_write_attempts,
            max_branches: usize::try_from(args.max_branches).unwrap_or(usize::MAX),
            max_in_flight: usize::try_from(args.max_in_flight).unwrap_or(usize::MAX),
            advertised_url: args.advertise_url.clone().unwrap_or_default(),
            peer_tls: peer_tls(&args.peer_tls_ca, &args.peer_tls_cert, &args.peer_tls_key)?,
            retention: (args.retention_days > 0)
                .then(|| Duration::from_secs(args.retention_days * 86_400)),
            sharding: sharding(args.shard_map.as_deref(), args.group.as_deref())?,
            signer: Some(std::sync::Arc::new(signer)),
            dialer: crate::runtime::participants::Dialer::tcp(
                crate::runtime::dial::DialPolicy::parse(&args.allowed_participants)
                    .map_err(|why| anyhow::anyhow!("--allowed-participants: {why}"))?,
            ),
            ..RuntimeConfig::default()
        },
    );
    let store = match args.database_url {
        Some(url) => StoreLocation::Url(url),
        None => StoreLocation::DataDir(args.data_dir),
    };
    let config = NodeConfig {
        listen: args.listen,
        store,
        runtime,
        limits: Limits {
            max_payload_bytes: usize::try_from(args.max_payload_bytes).unwrap_or(usize::MAX),
            max_saga_steps: usize::try_from(args.max_saga_steps).unwrap_or(usize::MAX),
            max_watches: usize::try_from(args.max_watches).unwrap_or(usize::MAX),
            max_calls: usize::try_from(args.max_calls).unwrap_or(usize::MAX),
        },
        node_name: args.node_name,
        lease: ms(args.lease_ms),
        access: crate::api::Access {
            admin_token: args.admin_token.filter(|token| !token.is_empty()),
            client_tokens: args.client_token,
            console_hosts: args.console_host,
            tls: server_tls(&args.tls_cert, &args.tls_key, &args.tls_client_ca)?,
        },
        console: args.console_listen,
    };
    if let Some(listen) = args.metrics_listen {
        crate::metrics::install(listen).with_context(|| format!("serving metrics on {listen}"))?;
        tracing::info!(%listen, "serving Prometheus metrics at /metrics");
    }
    let drain = ms(args.drain_timeout_ms);
    let mut node = Node::start(config)
        .await
        .context("starting the coordinator")?;
    tokio::select! {
        result = node.wait() => {
            result.context("the coordinator stopped")?;
        }
        signal = shutdown_signal() => {
            signal?;
            tracing::info!("shutting down: draining the transactions in flight");
            node.drain(drain).await;
            node.shutdown().await.context("shutting down")?;
            tracing::info!("stopped");
        }
    }
    Ok(())
}

fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Reads the peer TLS files named by the flags, if any.
fn peer_tls(
    ca: &Option<PathBuf>,
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
) -> anyhow::Result<Option<crate::runtime::participants::PeerTls>> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("reading --{flag} {}", path.display()))
    };
    let Some(ca) = ca else { return Ok(None) };
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((read("peer-tls-cert", cert)?, read("peer-tls-key", key)?)),
        _ => None,
    };
    Ok(Some(crate::runtime::participants::PeerTls {
        ca_pem: read("peer-tls-ca", ca)?,
        identity,
    }))
}

/// Reads the TLS files named by the flags, if any.
fn server_tls(
    cert: &Option<PathBuf>,
    key: &Option<PathBuf>,
    client_ca: &Option<PathBuf>,
) -> anyhow::Result<Option<crate::api::ServerTls>> {
    let read = |flag: &str, path: &PathBuf| {
        std::fs::read(path).with_context(|| format!("reading --{flag} {}", path.display()))
    };
    let (Some(cert), Some(key)) = (cert, key) else {
        return Ok(None);
    };
    Ok(Some(crate::api::ServerTls {
        cert_pem: read("tls-cert", cert)?,
        key_pem: read("tls-key", key)?,
        client_ca_pem: client_ca
            .as_ref()
            .map(|ca| read("tls-client-ca", ca))
            .transpose()?,
    }))
}

/// Parses the command line; for `serve --config FILE`, the file's settings
/// fill in every flag that neither the command line nor the environment
/// gave (precedence: flags, environment, file, built-in defaults).
fn parse_with_config_file(argv: Vec<std::ffi::OsString>) -> anyhow::Result<Cli> {
    use clap::parser::ValueSource;
    use clap::{CommandFactory, FromArgMatches};

    let command = Cli::command();
    let matches = command.clone().get_matches_from(argv.clone());
    let Some(("serve", serve)) = matches.subcommand() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let Some(path) = serve.get_one::<PathBuf>("config") else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {} as TOML", path.display()))?;
    let serve_command = command
        .find_subcommand("serve")
        .context("the serve command")?;
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    // (flag, key as written, value) of each setting the file gives.
    let mut from_file: Vec<(String, String, String)> = Vec::new();
    for (key, value) in table {
        let flag = key.replace('_', "-");
        let arg = serve_command
            .get_arguments()
            .find(|arg| arg.get_long() == Some(flag.as_str()) && flag != "config")
            .with_context(|| {
                let known: Vec<String> = serve_command
                    .get_arguments()
                    .filter_map(|arg| arg.get_long())
                    .filter(|long| *long != "config" && *long != "help")
                    .map(|long| long.replace('-', "_"))
                    .collect();
                format!(
                    "{}: unknown setting {key:?}; known: {}",
                    path.display(),
                    known.join(", ")
                )
            })?;
        let given = matches!(
            serve.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if given {
            continue;
        }
        let value = match value {
            toml::Value::String(text) => text,
            toml::Value::Integer(number) => number.to_string(),
            toml::Value::Float(number) => number.to_string(),
            toml::Value::Boolean(flag) => flag.to_string(),
            // A list setting (client_token, allowed_participants) as an
            // array of strings: the flag's comma-separated form.
            toml::Value::Array(items) if items.iter().all(toml::Value::is_str) => items
                .iter()
                .filter_map(toml::Value::as_str)
                .collect::<Vec<_>>()
                .join(","),
            other => anyhow::bail!(
                "{}: {key} is {}; give a string, a number, a boolean or (for a list) an \
                 array of strings",
                path.display(),
                other.type_str()
            ),
        };
        extra.push(format!("--{flag}={value}").into());
        from_file.push((flag, key, value));
    }
    // The file's settings go after the subcommand's own flags; none of them
    // was given there, so nothing is given twice.
    let mut argv = argv;
    argv.extend(extra);
    let matches = command.try_get_matches_from(argv).map_err(|error| {
        // A bad value from the file is the file's: name it, its line, the
        // key as written there, and what was expected (clap's reason).
        let blamed = error
            .get(clap::error::ContextKind::InvalidArg)
            .map(ToString::to_string)
            .unwrap_or_default();
        let Some((_, key, value)) = from_file
            .iter()
            .find(|(flag, ..)| blamed.split_whitespace().next() == Some(&format!("--{flag}")))
        else {
            return anyhow::Error::from(error);
        };
        let line = text
            .lines()
            .position(|line| {
                line.trim_start()
                    .strip_prefix(key.as_str())
                    .is_some_and(|rest| rest.trim_start().starts_with('='))
            })
            .map(|at| format!(", line {}", at + 1))
            .unwrap_or_default();
        let reason = std::error::Error::source(&error).map_or_else(
            || {
                error
                    .to_string()
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim_start_matches("error: ")
                    .to_owned()
            },
            ToString::to_string,
        );
        // A secret's value is not repeated (a token, a URL's password).
        let shown = if ["token", "url", "key"]
            .iter()
            .any(|secret| key.contains(secret))
        {
            "(hidden)".to_owned()
        } else {
            format!("{value:?}")
        };
        anyhow::anyhow!(
            "{}{line}: {key} = {shown} cannot be used ({reason})",
            path.display()
        )
    })?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("installing the SIGTERM handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(file: &str, flags: &[&str]) -> anyhow::Result<ServeArgs> {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("concord.toml");
        std::fs::write(&path, file).expect("write");
        let mut argv: Vec<std::ffi::OsString> = vec!["concord".into(), "serve".into()];
        argv.push("--config".into());
        argv.push(path.into_os_string());
        argv.extend(flags.iter().map(|f| std::ffi::OsString::from(*f)));
        match parse_with_config_file(argv)?.command {
            Command::Serve(args) => Ok(*args),
            other => anyhow::bail!("parsed {other:?}"),
        }
    }

    #[test]
    fn the_config_file_fills_in_what_the_flags_do_not_give() {
        let args = parse(
            "lease_ms = 5000\nlisten = \"0.0.0.0:7999\"\nnode-name = \"coord-1\"\n",
            &["--listen", "127.0.0.1:7401"],
        )
        .expect("parse");
        assert_eq!(args.lease_ms, 5000, "from the file");
        assert_eq!(args.node_name.as_deref(), Some("coord-1"), "from the file");
        assert_eq!(args.listen.to_string(), "127.0.0.1:7401", "the flag wins");
        assert_eq!(args.drain_timeout_ms, 10_000, "the built-in default");
    }

    #[test]
    fn the_open_door_is_a_flag_or_a_setting_typed_on_purpose() {
        assert!(!parse("", &[]).expect("parse").allow_unprotected);
        assert!(
            parse("", &["--allow-unprotected"])
                .expect("parse")
                .allow_unprotected
        );
        assert!(
            parse("allow_unprotected = true\n", &[])
                .expect("parse")
                .allow_unprotected
        );
    }

    #[test]
    fn list_settings_take_commas_or_an_array_of_strings() {
        let args = parse(
            "client_token = [\"old\", \"new\"]\nallowed_participants = \"10.0.0.0/8,bank.internal\"\n",
            &[],
        )
        .expect("parse");
        assert_eq!(args.client_token, ["old", "new"]);
        assert_eq!(args.allowed_participants, ["10.0.0.0/8", "bank.internal"]);
        let flags = parse("", &["--client-token", "a,b", "--client-token", "c"]).expect("parse");
        assert_eq!(flags.client_token, ["a", "b", "c"]);
    }

    #[test]
    fn a_config_file_with_an_unknown_or_bad_setting_is_refused_with_the_reason() {
        let unknown = parse("lease = 5000\n", &[]).expect_err("unknown key");
        let message = format!("{unknown:#}");
        assert!(
            message.contains("unknown setting \"lease\"") && message.contains("lease_ms"),
            "{message}"
        );
        let range = parse("# the lease\nlease_ms = 5\n", &[]).expect_err("out of range");
        let range = format!("{range:#}");
        assert!(
            range.contains("concord.toml, line 2: lease_ms = \"5\"") && range.contains("300"),
            "{range}"
        );
        let typed = parse("lease_ms = \"soon\"\n", &[]).expect_err("not a number");
        let typed = format!("{typed:#}");
        assert!(typed.contains("line 1: lease_ms = \"soon\""), "{typed}");
        assert!(
            !typed.contains("--lease-ms"),
            "the file is blamed, not a flag: {typed}"
        );
        let table = parse("listen = [1, 2]\n", &[]).expect_err("array");
        assert!(format!("{table:#}").contains("give a string"), "{table:#}");
        let syntax = parse("lease_ms = \n", &[]).expect_err("syntax");
        assert!(format!("{syntax:#}").contains("TOML"), "{syntax:#}");
    }
}
