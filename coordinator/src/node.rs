//! One running coordinator node: store, runtime and gRPC server wired
//! together. `concord serve` runs one; tests and the bank demo start them on
//! `127.0.0.1:0` with a temp data directory.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, Limits};
use crate::runtime::log::LogHealth;
use crate::runtime::{Runtime, RuntimeConfig};
use crate::store::postgres::{Membership, PostgresStore};
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// Where the log lives.
#[derive(Clone, Debug)]
pub enum StoreLocation {
    /// `<dir>/concord.db`, SQLite.
    DataDir(PathBuf),
    /// A database URL (`sqlite://...` or `postgres://...`).
    Url(String),
}

/// The lease of a node on a shared store when none is configured.
pub const DEFAULT_LEASE: std::time::Duration = std::time::Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub listen: SocketAddr,
    pub store: StoreLocation,
    pub runtime: RuntimeConfig,
    pub limits: Limits,
    /// On PostgreSQL: this node's name among the nodes sharing the database
    /// (default: its advertised URL). A restart under the same name takes
    /// over the previous start's transactions at once.
    pub node_name: Option<String>,
    /// On PostgreSQL: how long a node's lease lasts without renewal.
    pub lease: std::time::Duration,
    /// The admin token and TLS.
    pub access: api::Access,
    /// Where to serve the web console (`--console-listen`); None: no
    /// console.
    pub console: Option<SocketAddr>,
}

impl NodeConfig {
    /// A node listening on `listen` with its log at `store`, and every other
    /// setting at its default: the runtime's defaults, no node name, the
    /// default lease, no admin token, no TLS, no console.
    pub fn new(listen: SocketAddr, store: StoreLocation) -> Self {
        Self {
            listen,
            store,
            runtime: RuntimeConfig::default(),
            limits: Limits::default(),
            node_name: None,
            lease: DEFAULT_LEASE,
            access: api::Access::default(),
            console: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot open the log at {at}: {source}")]
    OpenLog {
        at: String,
        #[source]
        source: StoreError,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("unsupported --database-url {0:?}: give sqlite://... or postgres://...")]
    UnsupportedUrl(String),
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error(
        "this node was declared gone by the others (paused or cut off from the database past \
         its lease); they are finishing its transactions. Restart it to rejoin."
    )]
    LeaseLost,
    /// The log may have lost a write (a failed fsync): crash-only, the
    /// node stops and a restart recovers from what the log holds.
    #[error("{0}")]
    LogLost(String),
    #[error("cannot make a signing key: {0}")]
    Key(#[from] concord_proto::signature::KeyError),
}

/// `url` with its password, if any, replaced by `***`: for errors and logs,
/// which other people read (DESIGN §12).
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => match user_info.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    // libpq also takes the password as a parameter: `?password=...`.
    let path = match path.split_once('?') {
        Some((path, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                    _ => pair.to_owned(),
                })
                .collect();
            format!("{path}?{}", query.join("&"))
        }
        None => path.to_owned(),
    };
    format!("{scheme}://{authority}{path}")
}

/// A running node.
pub struct Node {
    addr: SocketAddr,
    runtime: Runtime,
    stop: CancellationToken,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
    /// The web console's address and server, when one was asked for.
    console: Option<(SocketAddr, JoinHandle<std::io::Result<()>>)>,
}

impl Node {
    /// A node for a deployment that lives in one process (a demo, a
    /// benchmark): on 127.0.0.1 at a free port, its SQLite log in
    /// `data_dir`, signing its participant calls with a key made now
    /// (DESIGN §12). Returns the keys its participants must trust.
    pub async fn start_local(
        data_dir: &std::path::Path,
    ) -> Result<(Self, concord_proto::signature::TrustedKeys), NodeError> {
        let signer = concord_proto::signature::CallSigner::generate()?;
        let trusted = signer.trusted();
        let node = Self::start(NodeConfig {
            runtime: RuntimeConfig {
                signer: Some(Arc::new(signer)),
                ..RuntimeConfig::default()
            },
            ..NodeConfig::new(
                SocketAddr::from(([127, 0, 0, 1], 0)),
                StoreLocation::DataDir(data_dir.to_path_buf()),
            )
        })
        .await?;
        Ok((node, trusted))
    }

    /// Opens the store (applying migrations), recovers unfinished
    /// transactions, binds the listener and starts serving.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| NodeError::Listen {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| NodeError::Listen {
            addr: config.listen,
            source,
        })?;
        let mut runtime_config = config.runtime;
        if runtime_config.advertised_url.is_empty() {
            runtime_config.advertised_url = format!("http://{addr}");
        }
        // A log that cannot be opened is named (the path; the URL without
        // its password) in the error, with why.
        let log_at = |source: StoreError| NodeError::OpenLog {
            at: match &config.store {
                StoreLocation::DataDir(dir) => dir.display().to_string(),
                StoreLocation::Url(url) => redacted(url),
            },
            source,
        };
        let store: Arc<dyn Store> = match &config.store {
            StoreLocation::DataDir(dir) => {
                Arc::new(SqliteStore::open_dir(dir).await.map_err(log_at)?)
            }
            StoreLocation::Url(url) if url.starts_with("sqlite:") => {
                Arc::new(SqliteStore::open_url(url).await.map_err(log_at)?)
            }
            StoreLocation::Url(url)
                if url.starts_with("postgres://") || url.starts_with("postgresql://") =>
            {
                let membership = Membership {
                    name: config
                        .node_name
                        .clone()
                        .unwrap_or_else(|| runtime_config.advertised_url.clone()),
                    address: runtime_config.advertised_url.clone(),
                    lease: config.lease,
                };
                Arc::new(PostgresStore::open(url, membership).await.map_err(log_at)?)
            }
            StoreLocation::Url(url) => return Err(NodeError::UnsupportedUrl(redacted(url))),
        };
        // Bound before anything starts, so that a console port already in
        // use fails the start instead of leaving a node without it.
        let console_listener = match config.console {
            Some(addr) => Some(
                crate::console::bind(addr)
                    .await
                    .map_err(|source| NodeError::Listen { addr, source })?,
            ),
            None => None,
        };
        let runtime = Runtime::start(store, runtime_config).await?;
        let stop = CancellationToken::new();
        let server = tokio::spawn(api::serve(
            listener,
            runtime.clone(),
            config.limits.clone(),
            config.access.clone(),
            stop.clone().cancelled_owned(),
        ));
        tracing::info!(%addr, "concord coordinator serving");
        let console = match console_listener {
            Some(listener) => {
                let console_addr = listener
                    .local_addr()
                    .map_err(|source| NodeError::Listen { addr, source })?;
                let served = tokio::spawn(crate::console::serve(
                    listener,
                    runtime.clone(),
                    config.limits,
                    config.access.clone(),
                    stop.clone(),
                ));
                tracing::info!(addr = %console_addr, "web console serving");
                Some((console_addr, served))
            }
            None => None,
        };
        Ok(Self {
            addr,
            runtime,
            stop,
            server,
            console,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://<addr>`, for clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Where the web console listens, when it was asked for.
    pub fn console_addr(&self) -> Option<SocketAddr> {
        self.console.as_ref().map(|(addr, _)| *addr)
    }

    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }

    /// Graceful shutdown, first half: health turns NOT_SERVING, new
    /// transactions are refused, and the decisions in flight are made, for
    /// at most `within` ([`Runtime::drain`]). Then call [`Node::shutdown`].
    pub async fn drain(&self, within: std::time::Duration) {
        self.runtime.drain(within).await;
    }

    /// Stops serving, lets in-flight calls finish, then stops the runtime
    /// (the log writer writes what is queued).
    pub async fn shutdown(self) -> Result<(), NodeError> {
        // Open watch streams would hold the server's graceful stop: each
        // ends first, telling its client the cursor to resume from.
        self.runtime.end_watches();
        self.stop.cancel();
        let served = self.server.await;
        if let Some((_, console)) = self.console {
            match console.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::warn!(%error, "web console stopped with an error"),
                Err(join) => tracing::error!(%join, "web console task failed"),
            }
        }
        self.runtime.shutdown().await;
        match served {
            Ok(result) => result.map_err(NodeError::from),
            Err(join) => {
                tracing::error!(%join, "gRPC server task failed");
                Ok(())
            }
        }
    }

    /// Resolves when the node stops by itself: the server failed, the
    /// other nodes declared this one gone, or the log may have lost a
    /// write (then it must not go on serving).
    pub async fn wait(&mut self) -> Result<(), NodeError> {
        let lease_lost = self.runtime.lease_lost();
        let mut log_health = self.runtime.log_health();
        let log_lost = async {
            match log_health
                .wait_for(|health| matches!(health, LogHealth::Lost { .. }))
                .await
            {
                Ok(health) => match &*health {
                    LogHealth::Lost { error } => error.clone(),
                    _ => String::new(),
                },
                // The writer stopped (shutdown): nothing to report.
                Err(_) => std::future::pending().await,
            }
        };
        tokio::select! {
            served = &mut self.server => match served {
                Ok(result) => result.map_err(NodeError::from),
                Err(_) => Ok(()),
            },
            () = lease_lost.cancelled() => Err(NodeError::LeaseLost),
            error = log_lost => Err(NodeError::LogLost(error)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redacted;

    #[test]
    fn a_database_urls_password_is_never_shown() {
        assert_eq!(
            redacted("postgres://concord:s3cret@db:5432/log"),
            "postgres://concord:***@db:5432/log"
        );
        assert_eq!(
            redacted("postgres://concord@db/log?sslmode=require&password=s3cret"),
            "postgres://concord@db/log?sslmode=require&password=***"
        );
        assert_eq!(redacted("mysql://x"), "mysql://x");
        assert_eq!(redacted("not a url"), "not a url");
    }
}
