//! `concord serve`: its flags ([`ServeArgs`], grouped by topic in
//! `--help`), the checks made before anything starts (protected mode,
//! DESIGN §12; the shard map, §11; TLS files), and the node run until
//! SIGTERM or SIGINT, drained first.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use crate::api::Limits;
use crate::node::{Node, NodeConfig, StoreLocation};
use crate::runtime::RuntimeConfig;

use super::keys;

#[derive(clap::Args, Debug)]
pub(super) struct ServeArgs {
    /// A TOML file of settings for any flag below.
    ///
    /// Each setting as `key = value`, the key named as the flag without its
    /// dashes (`lease_ms = 5000` or `lease-ms = 5000`). Flags and
    /// environment variables override it.
    #[arg(help_heading = "Serving", long, env = "CONCORD_CONFIG")]
    pub(super) config: Option<PathBuf>,

    /// Address to serve gRPC on.
    #[arg(
        help_heading = "Serving",
        long,
        env = "CONCORD_LISTEN",
        default_value = "127.0.0.1:7400"
    )]
    pub(super) listen: SocketAddr,

    /// Directory of the embedded SQLite log (created if missing).
    #[arg(
        help_heading = "The log",
        long,
        env = "CONCORD_DATA_DIR",
        default_value = "./concord-data"
    )]
    pub(super) data_dir: PathBuf,

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
    pub(super) database_url: Option<String>,

    /// On PostgreSQL: this node's name among the nodes sharing the database.
    ///
    /// A restart under the same name takes over the previous start's
    /// transactions at once. Default: --advertise-url (one of the two is required on PostgreSQL).
    #[arg(help_heading = "The log", long, env = "CONCORD_NODE_NAME")]
    pub(super) node_name: Option<String>,

    /// On PostgreSQL: how long a node's lease lasts without renewal, in ms.
    ///
    /// The lease is renewed every third of it. A node silent for longer is
    /// declared gone and its transactions are taken over. Same value on
    /// every node.
    #[arg(help_heading = "The log", long, env = "CONCORD_LEASE_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(300..=600_000))]
    pub(super) lease_ms: u64,

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
    pub(super) admin_token: Option<String>,

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
    pub(super) client_token: Vec<String>,

    /// Serve gRPC over TLS with this certificate chain (PEM); needs
    /// --tls-key.
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_TLS_CERT",
        requires = "tls_key"
    )]
    pub(super) tls_cert: Option<PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_TLS_KEY",
        requires = "tls_cert"
    )]
    pub(super) tls_key: Option<PathBuf>,

    /// Mutual TLS: accept only clients whose certificate this CA (PEM) signed.
    ///
    /// Needs --tls-cert.
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_TLS_CLIENT_CA",
        requires = "tls_cert"
    )]
    pub(super) tls_client_ca: Option<PathBuf>,

    /// CA (PEM) that signed the certificates of the servers this node calls.
    ///
    /// TLS for this node's own calls to https:// participants and to other
    /// nodes.
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_PEER_TLS_CA"
    )]
    pub(super) peer_tls_ca: Option<PathBuf>,

    /// Certificate chain (PEM) this node presents to the servers it calls.
    ///
    /// For https:// participants and nodes that require mutual TLS. Needs
    /// --peer-tls-key and --peer-tls-ca.
    #[arg(help_heading = "Who may call, and whom it calls", long, env = "CONCORD_PEER_TLS_CERT", requires_all = ["peer_tls_key", "peer_tls_ca"])]
    pub(super) peer_tls_cert: Option<PathBuf>,

    /// The private key of --peer-tls-cert (PEM).
    #[arg(
        help_heading = "Who may call, and whom it calls",
        long,
        env = "CONCORD_PEER_TLS_KEY",
        requires = "peer_tls_cert"
    )]
    pub(super) peer_tls_key: Option<PathBuf>,

    /// Days to keep finished transactions in the log; 0 keeps everything.
    ///
    /// A finished transaction is removed from the log this many days after
    /// it ended (checked every minute; each removal is logged and counted).
    /// Never those an operator resolved a branch of, nor those flagged
    /// NEEDS_ATTENTION.
    #[arg(help_heading = "The log", long, env = "CONCORD_RETENTION_DAYS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=36_500))]
    pub(super) retention_days: u64,

    /// Serve Prometheus metrics on this address, e.g. 0.0.0.0:9464.
    ///
    /// At http://<this address>/metrics. Off when not given.
    #[arg(help_heading = "Serving", long, env = "CONCORD_METRICS_LISTEN")]
    pub(super) metrics_listen: Option<SocketAddr>,

    /// Serve the web console on this address, e.g. 127.0.0.1:7480.
    ///
    /// Transactions, the NEEDS_ATTENTION queue, live updates, Retry and
    /// Resolve. Off unless given. TLS and the admin token as on the gRPC
    /// port; without the token it is read-only.
    #[arg(help_heading = "Serving", long, env = "CONCORD_CONSOLE_LISTEN")]
    pub(super) console_listen: Option<SocketAddr>,

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
    pub(super) console_host: Vec<String>,

    /// Export spans to this OpenTelemetry collector over OTLP/gRPC.
    ///
    /// Every span (each transaction's, and each participant call's under
    /// it) is exported to it, e.g. http://127.0.0.1:4317, and participants
    /// are sent the W3C `traceparent`. Needs a build with the `otlp` cargo
    /// feature.
    #[arg(help_heading = "Serving", long, env = "CONCORD_OTLP_ENDPOINT")]
    pub(super) otlp_endpoint: Option<String>,

    /// The `service.name` of exported spans.
    #[arg(
        help_heading = "Serving",
        long,
        env = "CONCORD_OTLP_SERVICE_NAME",
        default_value = "concord"
    )]
    pub(super) otlp_service_name: String,

    /// On SIGTERM or SIGINT: how long to drain transactions in flight, in ms.
    ///
    /// The node keeps serving the transactions in flight until they have
    /// decided (health reports NOT_SERVING and new transactions are refused
    /// meanwhile). What is left is finished by the next start.
    #[arg(help_heading = "Serving", long, env = "CONCORD_DRAIN_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub(super) drain_timeout_ms: u64,

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
    pub(super) signing_key: Option<PathBuf>,

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
    pub(super) allow_unprotected: bool,

    /// The URL other hosts reach this node at. Default: http://<listen>.
    ///
    /// The other nodes forward calls to it and clients are pointed at it
    /// (`concord-owner`); on PostgreSQL it is the node's name unless
    /// --node-name says otherwise. Participants are sent it too, but ask
    /// only the coordinator they were configured with about an in-doubt
    /// branch (DESIGN §12).
    #[arg(help_heading = "Serving", long, env = "CONCORD_ADVERTISE_URL")]
    pub(super) advertise_url: Option<String>,

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
    pub(super) shard_map: Option<PathBuf>,

    /// This node's group in the shard map (--shard-map).
    #[arg(
        help_heading = "The log",
        long,
        env = "CONCORD_GROUP",
        requires = "shard_map"
    )]
    pub(super) group: Option<String>,

    /// Timeout of a transaction whose Begin names none, in ms.
    #[arg(help_heading = "Transactions", long, env = "CONCORD_TXN_TIMEOUT_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(10..=86_400_000))]
    pub(super) txn_timeout_ms: u64,

    /// Prepare deadline when Commit names none, in ms (R5).
    #[arg(help_heading = "Transactions", long, env = "CONCORD_PREPARE_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub(super) prepare_timeout_ms: u64,

    /// Deadline of each phase-2 Commit/Abort delivery attempt, in ms.
    #[arg(help_heading = "Transactions", long, env = "CONCORD_DELIVERY_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=600_000))]
    pub(super) delivery_timeout_ms: u64,

    /// Coalesce waiting calls to a participant into one Batch call.
    ///
    /// The calls that wait for one participant while earlier calls to it
    /// are in flight go in one `Participant.Batch` call (no added delay;
    /// participants that do not implement Batch get single calls).
    /// `false`: every call alone.
    #[arg(help_heading = "Transactions", long, env = "CONCORD_BATCH_CALLS", default_value_t = true,
          action = clap::ArgAction::Set, value_name = "BOOL")]
    pub(super) batch_calls: bool,

    /// Failed tries of a forced log write before its client gets UNAVAILABLE.
    ///
    /// A forced log write (a decision, an end) that failed this many times
    /// answers its waiting client UNAVAILABLE with the store's error; the
    /// node goes on writing it with capped backoff, since a decision
    /// cannot be dropped, and reports NOT_SERVING until a write succeeds.
    #[arg(help_heading = "The log", long, env = "CONCORD_LOG_WRITE_ATTEMPTS", default_value_t = 6,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub(super) log_write_attempts: u32,

    /// First retry delay of phase-2 deliveries, in ms; doubles with jitter.
    #[arg(help_heading = "Transactions", long, env = "CONCORD_RETRY_MIN_MS", default_value_t = 50,
          value_parser = clap::value_parser!(u64).range(1..=60_000))]
    pub(super) retry_min_ms: u64,

    /// Cap on the phase-2 retry delay, in ms.
    #[arg(help_heading = "Transactions", long, env = "CONCORD_RETRY_MAX_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub(super) retry_max_ms: u64,

    /// Largest branch payload accepted, in bytes.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_PAYLOAD_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=64 * 1024 * 1024))]
    pub(super) max_payload_bytes: u64,

    /// Most steps one saga may have.
    ///
    /// At most 1,000: checking a saga's shape costs the square of its
    /// steps.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_SAGA_STEPS", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=1_000))]
    pub(super) max_saga_steps: u64,

    /// Most transactions this node holds live at once.
    ///
    /// 2PC, sagas and messages together; about 13 KiB each. Past it a new
    /// one is refused RESOURCE_EXHAUSTED, to retry after a backoff.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_IN_FLIGHT", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub(super) max_in_flight: u64,

    /// Most WatchTransactions streams this node serves at once.
    ///
    /// As many again for its console's live pages. Past it a new watch is
    /// RESOURCE_EXHAUSTED.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_WATCHES", default_value_t = 1_024,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub(super) max_watches: u64,

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
    pub(super) allowed_participants: Vec<String>,

    /// Most calls this node serves at once, every client's together.
    ///
    /// A watch counts until its stream starts. Past it a call is refused
    /// UNAVAILABLE with retry advice. Health checks are not counted.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_CALLS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub(super) max_calls: u64,

    /// Most branches one transaction may have.
    #[arg(help_heading = "Limits", long, env = "CONCORD_MAX_BRANCHES", default_value_t = 64,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub(super) max_branches: u64,
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

pub(super) async fn serve(args: ServeArgs) -> anyhow::Result<()> {
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
