//! The gRPC server: the Coordinator service with gRPC health (following
//! the log's health and a graceful drain) and reflection (v1 and v1alpha),
//! over TLS when configured, with the client-token check in front of
//! the Coordinator service ([`access::Guarded`]), until shutdown.

use std::time::Duration;

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use concord_proto::v1::coordinator_server::CoordinatorServer;

use super::{Access, CoordinatorService, Credentials, Limits, access};
use crate::runtime::Runtime;
use crate::runtime::log::LogHealth;

/// Streams one client connection may hold open at once: far more than a
/// client with a pool of connections needs, and a bound on what one
/// connection can make this node hold (each stream is a handler's state).
/// A client past it waits for a stream to end (HTTP/2 flow control): it
/// is slowed, never refused.
const MAX_STREAMS_PER_CONNECTION: u32 = 1_024;

/// The deadline of a call that carries none (no `grpc-timeout`): without
/// one a client that never finishes sending its request, or a call that
/// waits on something that never comes, holds its handler forever. Long
/// enough for any unary call, a Commit waiting for phase 2 included; a
/// watch's stream is not cut by it (it bounds the wait for the response's
/// start, which a stream sends at once).
const DEFAULT_CALL_DEADLINE: Duration = Duration::from_secs(300);

/// Headroom over the payload limit for the rest of a request, so that an
/// oversized payload still decodes and gets the precise "payload is N bytes"
/// answer rather than a generic one.
const MESSAGE_OVERHEAD_BYTES: usize = 1024 * 1024;

/// Reflection calls served at once (grpcurl and the like, by hand).
const REFLECTION_CALLS: usize = 64;

/// Serves the Coordinator service, gRPC health and reflection on `listener`
/// until `shutdown` resolves, then stops accepting and lets in-flight calls
/// finish.
pub async fn serve(
    listener: TcpListener,
    runtime: Runtime,
    limits: Limits,
    access: Access,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    serve_incoming(
        // `tcp_nodelay` on the builder applies only to listeners tonic binds
        // itself; without it a response's second small write waits for the
        // client's delayed ACK (a 40 ms stall, Nagle).
        TcpIncoming::from(listener).with_nodelay(Some(true)),
        runtime,
        limits,
        access,
        shutdown,
    )
    .await
}

/// [`serve`] on any stream of connections: a simulation's network, say.
pub async fn serve_incoming<I, IO, IE>(
    incoming: I,
    runtime: Runtime,
    limits: Limits,
    access: Access,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error>
where
    I: futures::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IO::ConnectInfo: Clone + Send + Sync + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let max_message = limits
        .max_payload_bytes
        .saturating_add(MESSAGE_OVERHEAD_BYTES)
        .max(4 * 1024 * 1024);
    let draining = runtime.draining();
    let mut log_health = runtime.log_health();
    let credentials = std::sync::Arc::new(Credentials::of(&access));
    let reflection_credentials = std::sync::Arc::clone(&credentials);
    let max_calls = limits.max_calls.max(1);
    // DESIGN §12 (S3): with client tokens, a call without one is refused
    // before its request is decoded.
    let coordinator = access::Guarded::new(
        CoordinatorServer::new(CoordinatorService::new(
            runtime,
            limits,
            std::sync::Arc::clone(&credentials),
        ))
        .max_decoding_message_size(max_message),
        credentials,
        max_calls,
        "--max-calls",
    );
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<CoordinatorServer<CoordinatorService>>()
        .await;
    // Both reflection versions: grpcurl and tonic speak v1, while Python's
    // grpcio-reflection (and the tools built on it) ask v1alpha only.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(concord_proto::FILE_DESCRIPTOR_SET)
    };
    let reflection = match (reflection().build_v1(), reflection().build_v1alpha()) {
        (Ok(v1), Ok(v1alpha)) => Some((v1, v1alpha)),
        (Err(error), _) | (_, Err(error)) => {
            // The descriptor set is generated at build time; failing to read
            // it is a build defect, reported rather than panicking.
            tracing::error!(%error, "gRPC reflection unavailable");
            None
        }
    };
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = access.tls {
        let mut config = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(tls.cert_pem, tls.key_pem),
        );
        if let Some(ca) = tls.client_ca_pem {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        server = server.tls_config(config)?;
    }
    let mut router = server
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .max_concurrent_streams(Some(MAX_STREAMS_PER_CONNECTION))
        .timeout(DEFAULT_CALL_DEADLINE)
        .add_service(health_service)
        .add_service(coordinator);
    if let Some((v1, v1alpha)) = reflection {
        // The API's schema is for the callers the node admits (the client
        // token), and a few at a time.
        router = router
            .add_service(access::Guarded::new(
                v1,
                std::sync::Arc::clone(&reflection_credentials),
                REFLECTION_CALLS,
                "reflection's own",
            ))
            .add_service(access::Guarded::new(
                v1alpha,
                reflection_credentials,
                REFLECTION_CALLS,
                "reflection's own",
            ));
    }
    // Load balancers stop sending work once a graceful shutdown begins, and
    // while the log takes no writes (a full disk, a database that refuses):
    // this node could decide nothing. It serves again by itself once a
    // write succeeds.
    let health_follows = {
        let health = health.clone();
        async move {
            loop {
                let writing = matches!(*log_health.borrow_and_update(), LogHealth::Writing);
                if writing {
                    health
                        .set_serving::<CoordinatorServer<CoordinatorService>>()
                        .await;
                } else {
                    health
                        .set_not_serving::<CoordinatorServer<CoordinatorService>>()
                        .await;
                }
                tokio::select! {
                    changed = log_health.changed() => {
                        if changed.is_err() {
                            break;
                        }
                    }
                    () = draining.cancelled() => break,
                }
            }
            draining.cancelled().await;
            health
                .set_not_serving::<CoordinatorServer<CoordinatorService>>()
                .await;
            std::future::pending::<()>().await
        }
    };
    let shutdown = async move {
        shutdown.await;
        health
            .set_not_serving::<CoordinatorServer<CoordinatorService>>()
            .await;
    };
    tokio::select! {
        served = router.serve_with_incoming_shutdown(incoming, shutdown) => served,
        () = health_follows => Ok(()),
    }
}
