//! What the integration tests share: a coordinator node on `127.0.0.1:0`
//! with its SQLite log in a temp dir, and scripted participants — real gRPC
//! servers with their own SQLite databases — whose behaviour each branch's
//! payload chooses.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use concord_coordinator::node::{Node, NodeConfig, StoreLocation};
use concord_coordinator::runtime::RuntimeConfig;
use concord_participant::{
    BranchContext, CoordinatorClient, LocalTx, ParticipantError, ParticipantService,
    TwoPhaseParticipant, Vote,
};
use sqlx::SqlitePool;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runtime settings that keep tests quick: short retry delays and sweeps.
pub fn quick_config() -> RuntimeConfig {
    RuntimeConfig::with_retry(
        Duration::from_millis(10),
        Duration::from_millis(200),
        RuntimeConfig {
            sweep_interval: Duration::from_millis(20),
            delivery_timeout: Duration::from_secs(2),
            signer: Some(keys::signer()),
            ..RuntimeConfig::default()
        },
    )
}

/// A node's settings for a test: loopback on a port the system picks, its
/// log in `data_dir`, quick retries ([`quick_config`]); a test changes
/// what it needs (`NodeConfig { limits, ..node_config(dir) }`).
pub fn node_config(data_dir: &Path) -> NodeConfig {
    NodeConfig {
        runtime: quick_config(),
        ..NodeConfig::new(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            StoreLocation::DataDir(data_dir.to_path_buf()),
        )
    }
}

pub async fn start_coordinator(data_dir: &Path, runtime: RuntimeConfig) -> Node {
    Node::start(NodeConfig {
        runtime,
        ..node_config(data_dir)
    })
    .await
    .expect("coordinator starts")
}

pub fn client(node: &Node) -> CoordinatorClient {
    CoordinatorClient::connect(node.url()).expect("client")
}

/// Polls `check` until it returns Some, for at most 15 s (a bound on a
/// hang, not a timing assertion).
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    for _ in 0..750 {
        if let Some(value) = check().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("gave up waiting for: {what}");
}

/// A participant whose every branch does what its payload says:
/// - `commit`: vote COMMIT; `abort`: vote ABORT; `readonly`: vote READ_ONLY;
/// - `hang`: take 3 s to prepare (past any test's prepare deadline);
/// - `flaky-commit:N`: vote COMMIT, then fail the first N commit attempts.
///
/// Every handler run is written to its own SQLite table `effects`, in the
/// same local transaction as the ledger row, so the tests see exactly which
/// effects happened and how often.
pub struct Scripted {
    commit_failures: Mutex<HashMap<String, u32>>,
    /// The coordinator's log: commit checks the decision is durable (R1).
    coordinator_db: Option<PathBuf>,
    /// Ignores `flaky-commit`: a participant that was repaired.
    healthy: bool,
}

async fn effect(tx: &mut LocalTx, branch: &BranchContext, op: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO effects (txn_id, branch, op) VALUES (?1, ?2, ?3)")
        .bind(&branch.transaction_id)
        .bind(&branch.branch)
        .bind(op)
        .execute(&mut **tx)
        .await?;
    // A coordinator that exports traces sends its call's trace context.
    if let Some(traceparent) = &branch.traceparent {
        sqlx::query("INSERT INTO traced (txn_id, op, traceparent) VALUES (?1, ?2, ?3)")
            .bind(&branch.transaction_id)
            .bind(op)
            .bind(traceparent)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

impl TwoPhaseParticipant for Scripted {
    async fn prepare(
        &self,
        tx: &mut LocalTx,
        branch: &BranchContext,
        payload: &[u8],
    ) -> Result<Vote, ParticipantError> {
        let script = String::from_utf8_lossy(payload).to_string();
        if script == "hang" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        if let Some(db) = self.coordinator_db.as_ref().filter(|_| branch.one_phase) {
            // A one-phase commit is the decision: the coordinator's log must
            // hold the transaction before it happens, or a crash would leave
            // a commit the log presumes aborted.
            if coordinator_state(db, &branch.transaction_id)
                .await
                .is_none()
            {
                effect(tx, branch, "one-phase-before-its-record").await?;
            }
        }
        effect(tx, branch, "prepare").await?;
        Ok(match script.as_str() {
            "abort" => Vote::Abort("scripted refusal".into()),
            "readonly" => Vote::ReadOnly,
            _ => Vote::Commit,
        })
    }

    async fn commit(
        &self,
        tx: &mut LocalTx,
        branch: &BranchContext,
        payload: &[u8],
    ) -> Result<(), ParticipantError> {
        let script = String::from_utf8_lossy(payload).to_string();
        if let Some(n) = script
            .strip_prefix("flaky-commit:")
            .filter(|_| !self.healthy)
        {
            let limit: u32 = n.parse().unwrap_or(0);
            let mut failures = self.commit_failures.lock().expect("lock");
            let seen = failures.entry(branch.transaction_id.clone()).or_insert(0);
            if *seen < limit {
                *seen += 1;
                return Err(ParticipantError::Unavailable(
                    "scripted commit failure".into(),
                ));
            }
        }
        if let Some(db) = self.coordinator_db.as_ref().filter(|_| !branch.one_phase) {
            // R1: when a participant hears Commit, the decision is on disk.
            let state = coordinator_state(db, &branch.transaction_id).await;
            if !matches!(state.as_deref(), Some("committing" | "committed")) {
                effect(tx, branch, "r1-violation").await?;
            }
        }
        effect(tx, branch, "commit").await?;
        Ok(())
    }

    async fn abort(
        &self,
        tx: &mut LocalTx,
        branch: &BranchContext,
        _payload: &[u8],
    ) -> Result<(), ParticipantError> {
        effect(tx, branch, "abort").await?;
        Ok(())
    }
}

/// Opens a participant's SQLite database in `dir` and creates its effects
/// table with `ddl`.
pub async fn participant_db(dir: &Path, name: &str, ddl: &'static str) -> SqlitePool {
    let options = SqliteConnectOptions::new()
        .filename(dir.join(format!("{name}.db")))
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10));
    let pool = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .expect("participant database");
    sqlx::query(ddl)
        .execute(&pool)
        .await
        .expect("effects table");
    // The trace context each handler run was called with, if any.
    sqlx::query("CREATE TABLE IF NOT EXISTS traced (txn_id TEXT NOT NULL, op TEXT NOT NULL, traceparent TEXT NOT NULL)")
        .execute(&pool)
        .await
        .expect("traced table");
    pool
}

/// Serves a participant service on `addr`; returns its URL, the token
/// that stops it, and its task.
pub async fn serve_participant<P, S>(
    service: ParticipantService<P, S>,
    addr: &str,
) -> (String, CancellationToken, JoinHandle<()>)
where
    P: concord_participant::TwoPhaseParticipant,
    S: concord_participant::SagaStep,
{
    let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let stop = CancellationToken::new();
    let shutdown = stop.clone().cancelled_owned();
    let service = service.with_coordinator_keys(keys::trusted());
    let task = tokio::spawn(async move {
        service
            .serve(listener, shutdown)
            .await
            .expect("participant serves");
    });
    (url, stop, task)
}

/// A saga step's recorded state (by index) as the coordinator's SQLite file
/// has it, read through a separate connection.
pub async fn coordinator_step_state(data_dir: &Path, id: &str, idx: i64) -> Option<String> {
    let options = SqliteConnectOptions::new()
        .filename(data_dir.join("concord.db"))
        .read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .ok()?;
    let row: Option<(String,)> =
        sqlx::query_as("SELECT state FROM saga_steps WHERE txn_id = ?1 AND idx = ?2")
            .bind(id)
            .bind(idx)
            .fetch_optional(&pool)
            .await
            .ok()?;
    pool.close().await;
    row.map(|(state,)| state)
}

/// A transaction's state as the coordinator's SQLite file has it, read
/// through a separate connection.
pub async fn coordinator_state(data_dir: &Path, id: &str) -> Option<String> {
    let options = SqliteConnectOptions::new()
        .filename(data_dir.join("concord.db"))
        .read_only(true);
    let pool = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options)
        .await
        .ok()?;
    let row: Option<(String,)> = sqlx::query_as("SELECT state FROM transactions WHERE id = ?1")
        .bind(id)
        .fetch_optional(&pool)
        .await
        .ok()?;
    pool.close().await;
    row.map(|(state,)| state)
}

pub struct TestParticipant {
    pub url: String,
    pub pool: SqlitePool,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl TestParticipant {
    /// Starts a scripted participant with its database in `dir/<name>.db`.
    pub async fn start(dir: &Path, name: &str, coordinator_db: Option<&Path>) -> Self {
        // A reserved port, so that a restart on the same address cannot
        // find it taken (see `processes::free_addr`).
        let addr = processes::free_addr().to_string();
        Self::start_on(dir, name, coordinator_db, &addr).await
    }

    /// Restarts a participant on `addr` (`127.0.0.1:0` for a new port) with
    /// its old database, repaired: it no longer fails commits on purpose.
    /// Its resolver asks the coordinator at `resolver` about branches left
    /// in doubt, when given.
    pub async fn restart_healthy(
        dir: &Path,
        name: &str,
        coordinator_db: Option<&Path>,
        addr: &str,
        resolver: Option<&str>,
    ) -> Self {
        Self::start_with(dir, name, coordinator_db, addr, true, resolver, None).await
    }

    async fn start_on(dir: &Path, name: &str, coordinator_db: Option<&Path>, addr: &str) -> Self {
        Self::start_with(dir, name, coordinator_db, addr, false, None, None).await
    }

    /// A scripted participant that decodes calls of up to `max_call_bytes`
    /// (`ParticipantService::with_max_call_bytes`).
    pub async fn start_taking(dir: &Path, name: &str, max_call_bytes: usize) -> Self {
        let addr = processes::free_addr().to_string();
        Self::start_with(dir, name, None, &addr, false, None, Some(max_call_bytes)).await
    }

    /// A scripted participant serving TLS (mutual TLS when `tls` names a
    /// client CA) at `https://localhost:<port>`.
    pub async fn start_tls(dir: &Path, name: &str, tls: tonic::transport::ServerTlsConfig) -> Self {
        let pool = participant_db(
            dir,
            name,
            "CREATE TABLE IF NOT EXISTS effects (txn_id TEXT NOT NULL, branch TEXT NOT NULL, op TEXT NOT NULL)",
        )
        .await;
        let handler = Scripted {
            commit_failures: Mutex::new(HashMap::new()),
            coordinator_db: None,
            healthy: false,
        };
        let service = ParticipantService::new(handler, pool.clone())
            .await
            .expect("ledger")
            .with_coordinator_keys(keys::trusted());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!(
            "https://localhost:{}",
            listener.local_addr().expect("addr").port()
        );
        let stop = CancellationToken::new();
        let shutdown = stop.clone().cancelled_owned();
        let task = tokio::spawn(async move {
            service
                .serve_tls(listener, Some(tls), shutdown)
                .await
                .expect("participant serves");
        });
        Self {
            url,
            pool,
            stop,
            task,
        }
    }

    async fn start_with(
        dir: &Path,
        name: &str,
        coordinator_db: Option<&Path>,
        addr: &str,
        healthy: bool,
        resolver: Option<&str>,
        max_call_bytes: Option<usize>,
    ) -> Self {
        let pool = participant_db(
            dir,
            name,
            "CREATE TABLE IF NOT EXISTS effects (txn_id TEXT NOT NULL, branch TEXT NOT NULL, op TEXT NOT NULL)",
        )
        .await;
        let handler = Scripted {
            commit_failures: Mutex::new(HashMap::new()),
            coordinator_db: coordinator_db.map(Path::to_path_buf),
            healthy,
        };
        let service = ParticipantService::new(handler, pool.clone())
            .await
            .expect("ledger")
            .with_resolver(concord_participant::ResolverConfig {
                coordinator: resolver.map(str::to_owned),
                ..Default::default()
            })
            .with_max_call_bytes(
                max_call_bytes.unwrap_or(concord_participant::DEFAULT_MAX_CALL_BYTES),
            );
        let (url, stop, task) = serve_participant(service, addr).await;
        Self {
            url,
            pool,
            stop,
            task,
        }
    }

    /// Effects of every transaction.
    pub async fn effect_count(&self) -> i64 {
        let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM effects")
            .fetch_one(&self.pool)
            .await
            .expect("effects");
        count
    }

    /// The handler runs for one transaction, in order: "prepare", "commit",
    /// "abort".
    pub async fn effects(&self, txn_id: &str) -> Vec<String> {
        let rows: Vec<(String,)> =
            sqlx::query_as("SELECT op FROM effects WHERE txn_id = ?1 ORDER BY rowid")
                .bind(txn_id)
                .fetch_all(&self.pool)
                .await
                .expect("effects");
        rows.into_iter().map(|(op,)| op).collect()
    }

    /// The trace context each handler run for one transaction was called
    /// with, as (op, traceparent), in order.
    pub async fn traced(&self, txn_id: &str) -> Vec<(String, String)> {
        sqlx::query_as("SELECT op, traceparent FROM traced WHERE txn_id = ?1 ORDER BY rowid")
            .bind(txn_id)
            .fetch_all(&self.pool)
            .await
            .expect("traced")
    }

    /// The ledger's rows for one transaction as "op=result".
    pub async fn ledger(&self, txn_id: &str) -> Vec<String> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT op, result FROM concord_ledger WHERE txn_id = ?1 ORDER BY op")
                .bind(txn_id)
                .fetch_all(&self.pool)
                .await
                .expect("ledger");
        rows.into_iter()
            .map(|(op, result)| format!("{op}={result}"))
            .collect()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
pub mod faulty_store;
pub mod keys;
pub mod message;
pub mod postgres;
pub mod processes;
pub mod proxy;
pub mod saga;
