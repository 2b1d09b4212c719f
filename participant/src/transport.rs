//! How the SDK reaches a coordinator node: a lazy, self-reconnecting gRPC
//! channel per address, with TLS when asked ([`ClientTls`]) and keepalive
//! pings that find a vanished node, and the `authorization` value a client
//! token travels as. Shared by the client and the group router
//! ([`crate::groups`]).

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::client::error::ClientError;

/// TLS towards the coordinator.
#[derive(Clone, Default)]
pub struct ClientTls {
    /// PEM: the CA that signed the coordinator's certificate.
    pub ca_pem: Vec<u8>,
    /// PEM certificate chain and private key of this client, for a
    /// coordinator that requires mutual TLS.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the coordinator's certificate is checked against, when it
    /// is not the URL's host (e.g. `localhost` for `https://127.0.0.1:7400`).
    pub domain: Option<String>,
}

impl std::fmt::Debug for ClientTls {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls")
            .field("mutual", &self.identity.is_some())
            .field("domain", &self.domain)
            .finish_non_exhaustive()
    }
}

/// The value of an `authorization` header.
pub(crate) type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// A channel to the coordinator node at `url`, lazy: it connects on first
/// use and reconnects by itself.
pub(crate) fn channel(url: &str, tls: Option<&ClientTls>) -> Result<Channel, ClientError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned()).map_err(|e| ClientError::BadUrl {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    if let Some(tls) = tls {
        let mut config = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        if let Some(domain) = &tls.domain {
            config = config.domain_name(domain.clone());
        }
        endpoint = endpoint
            .tls_config(config)
            .map_err(|e| ClientError::BadTls {
                url: url.to_owned(),
                reason: e.to_string(),
            })?;
    }
    Ok(endpoint
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A connection to a coordinator that vanished (host lost, a
        // partition that swallowed its packets) is found dead by pings
        // and dialled again, instead of failing every later call.
        .http2_keep_alive_interval(Duration::from_secs(2))
        .keep_alive_timeout(Duration::from_secs(2))
        .keep_alive_while_idle(true)
        .connect_lazy())
}
