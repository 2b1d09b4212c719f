//! The console's TLS listener: the same certificate, key and client CA as
//! the node's gRPC port (`--tls-cert`, `--tls-key`, `--tls-client-ca`).
//! Handshakes run each in a task of their own, bounded in time, so that a
//! client that stalls in one holds up no other; the listener's accept loop
//! and every handshake end when the listener is dropped.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{RootCertStore, ServerConfig};

use crate::api::ServerTls;

/// A handshake that takes longer is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type Accepted = (
    tokio_rustls::server::TlsStream<TcpStream>,
    std::net::SocketAddr,
);

pub struct Listener {
    local: std::net::SocketAddr,
    accepted: mpsc::Receiver<Accepted>,
    /// The accept loop; aborted with the listener.
    accepting: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

fn invalid(what: &str, error: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what}: {error}"))
}

impl Listener {
    pub fn new(listener: TcpListener, tls: &ServerTls) -> std::io::Result<Self> {
        let certs = CertificateDer::pem_slice_iter(&tls.cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| invalid("console TLS certificate", e))?;
        let key = PrivateKeyDer::from_pem_slice(&tls.key_pem)
            .map_err(|e| invalid("console TLS key", e))?;
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let builder = ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| invalid("console TLS", e))?;
        let builder = match &tls.client_ca_pem {
            // Mutual TLS, as on the gRPC port: a browser must present a
            // certificate the clients' CA signed.
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    roots
                        .add(cert.map_err(|e| invalid("console TLS client CA", e))?)
                        .map_err(|e| invalid("console TLS client CA", e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                        .build()
                        .map_err(|e| invalid("console TLS client CA", e))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| invalid("console TLS certificate", e))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let local = listener.local_addr()?;
        let (send, accepted) = mpsc::channel(64);
        let accepting = tokio::spawn(accept_loop(listener, acceptor, send));
        Ok(Self {
            local,
            accepted,
            accepting,
        })
    }
}

async fn accept_loop(listener: TcpListener, acceptor: TlsAcceptor, send: mpsc::Sender<Accepted>) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let (acceptor, send) = (acceptor.clone(), send.clone());
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => {
                                let _ = send.send((tls, peer)).await;
                            }
                            Ok(Err(error)) => tracing::debug!(%error, %peer, "console TLS handshake failed"),
                            Err(_) => tracing::debug!(%peer, "console TLS handshake timed out"),
                        }
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "console: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            // Reap finished handshakes so that the set does not grow.
            Some(_) = handshakes.join_next(), if !handshakes.is_empty() => {}
        }
    }
}

impl axum::serve::Listener for Listener {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.accepted.recv().await {
            Some(accepted) => accepted,
            // The accept loop never ends by itself; if it did, serve
            // nothing more rather than spin.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
