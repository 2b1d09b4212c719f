//! TLS and mutual TLS between clients and the coordinator, and between the
//! coordinator and participants, with certificates made for the test
//! (rcgen): a peer that does not present a certificate the configured CA
//! signed is refused; one that does works.

use concord_coordinator::api::{Access, ServerTls};
use concord_coordinator::node::{Node, NodeConfig, StoreLocation};
use concord_participant::{BeginOptions, ClientTls, CoordinatorClient};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

use super::support::{TestParticipant, quick_config};

/// A CA, and certificates it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().expect("key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    fn pem(&self) -> Vec<u8> {
        self.issuer.pem().into_bytes()
    }

    /// A certificate for `names`, and its key, as PEM.
    fn leaf(&self, names: &[&str]) -> (Vec<u8>, Vec<u8>) {
        let key = KeyPair::generate().expect("key");
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("params");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem().into_bytes(), key.serialize_pem().into_bytes())
    }
}

async fn tls_node(dir: &std::path::Path, ca: &Ca, client_ca: Option<&Ca>) -> Node {
    tls_node_with_console(dir, ca, client_ca, None).await
}

async fn tls_node_with_console(
    dir: &std::path::Path,
    ca: &Ca,
    client_ca: Option<&Ca>,
    console: Option<std::net::SocketAddr>,
) -> Node {
    let (cert_pem, key_pem) = ca.leaf(&["localhost"]);
    Node::start(NodeConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        store: StoreLocation::DataDir(dir.join("coordinator")),
        runtime: quick_config(),
        limits: Default::default(),
        node_name: None,
        lease: concord_coordinator::node::DEFAULT_LEASE,
        access: Access {
            admin_token: None,
            client_tokens: Vec::new(),
            console_hosts: Vec::new(),
            tls: Some(ServerTls {
                cert_pem,
                key_pem,
                client_ca_pem: client_ca.map(Ca::pem),
            }),
        },
        console,
    })
    .await
    .expect("coordinator starts")
}

fn https(node: &Node) -> String {
    format!("https://{}", node.addr())
}

async fn begins(client: &CoordinatorClient) -> Result<String, String> {
    client
        .begin(BeginOptions::default())
        .await
        .map(|begun| begun.transaction_id)
        .map_err(|error| error.to_string())
}

#[tokio::test]
async fn tls_serves_clients_that_trust_the_ca_and_refuses_plaintext() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = Ca::new("concord test CA");
    let node = tls_node(dir.path(), &ca, None).await;
    let trusting = ClientTls {
        ca_pem: ca.pem(),
        identity: None,
        domain: Some("localhost".into()),
    };
    let client = CoordinatorClient::connect_tls(https(&node), &trusting).expect("client");
    let id = begins(&client)
        .await
        .expect("a client trusting the CA works");
    assert_eq!(client.transaction(&id).await.expect("get").id, id);

    // Plaintext gets no answer from a TLS port.
    let plain = CoordinatorClient::connect(node.url()).expect("client");
    assert!(begins(&plain).await.is_err());
    // A client that trusts another CA refuses the coordinator.
    let other = Ca::new("someone else");
    let wary = ClientTls {
        ca_pem: other.pem(),
        ..trusting.clone()
    };
    let client = CoordinatorClient::connect_tls(https(&node), &wary).expect("client");
    assert!(begins(&client).await.is_err());
}

#[tokio::test]
async fn mutual_tls_refuses_clients_without_a_certificate_from_the_client_ca() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server_ca = Ca::new("servers");
    let client_ca = Ca::new("clients");
    let node = tls_node(dir.path(), &server_ca, Some(&client_ca)).await;
    let base = ClientTls {
        ca_pem: server_ca.pem(),
        identity: None,
        domain: Some("localhost".into()),
    };

    let anonymous = CoordinatorClient::connect_tls(https(&node), &base).expect("client");
    let refused = begins(&anonymous).await.expect_err("no client certificate");
    assert!(!refused.is_empty());

    let stranger = ClientTls {
        identity: Some(Ca::new("strangers").leaf(&["intruder"])),
        ..base.clone()
    };
    let client = CoordinatorClient::connect_tls(https(&node), &stranger).expect("client");
    begins(&client)
        .await
        .expect_err("a certificate from another CA");

    let (cert, key) = client_ca.leaf(&["bank-a"]);
    let member = ClientTls {
        identity: Some((cert.clone(), key.clone())),
        ..base
    };
    let client = CoordinatorClient::connect_tls(https(&node), &member).expect("client");
    let id = begins(&client)
        .await
        .expect("a client the client CA signed works");
    assert_eq!(client.transaction(&id).await.expect("get").id, id);

    // The operator's tool speaks mutual TLS too.
    let files = |name: &str, pem: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).expect("write");
        path.display().to_string()
    };
    let (ca, cert, key) = (
        files("ca.pem", &server_ca.pem()),
        files("operator.pem", &cert),
        files("operator.key", &key),
    );
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_concord-failpoints"))
        .args(["txn", "--coordinator", &https(&node)])
        .args(["--tls-ca", &ca, "--tls-cert", &cert, "--tls-key", &key])
        .args(["--tls-domain", "localhost", "show", &id])
        .output()
        .await
        .expect("run concord txn");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(&id));
}

#[tokio::test]
async fn the_coordinator_reaches_participants_over_mutual_tls_and_only_with_its_certificate() {
    use concord_coordinator::runtime::participants::PeerTls;
    use concord_participant::Outcome;
    let dir = tempfile::tempdir().expect("temp dir");
    let mesh = Ca::new("service mesh");
    let (cert, key) = mesh.leaf(&["localhost"]);
    let participant_tls = tonic::transport::ServerTlsConfig::new()
        .identity(tonic::transport::Identity::from_pem(cert, key))
        .client_ca_root(tonic::transport::Certificate::from_pem(mesh.pem()));
    let p = TestParticipant::start_tls(dir.path(), "p", participant_tls).await;

    let coordinator = |name: &'static str, identity| {
        let mut runtime = quick_config();
        runtime.peer_tls = Some(PeerTls {
            ca_pem: mesh.pem(),
            identity,
        });
        let data = dir.path().join(name);
        async move {
            Node::start(NodeConfig {
                listen: "127.0.0.1:0".parse().expect("addr"),
                store: StoreLocation::DataDir(data),
                runtime,
                limits: Default::default(),
                node_name: None,
                lease: concord_coordinator::node::DEFAULT_LEASE,
                access: Access::default(),
                console: None,
            })
            .await
            .expect("coordinator starts")
        }
    };
    let transfer = |client: CoordinatorClient| {
        let url = p.url.clone();
        async move {
            let spec = |name: &str| concord_participant::BranchSpec {
                participant: url.clone(),
                payload: b"commit".to_vec(),
                name: Some(name.into()),
            };
            let id = client
                .begin(BeginOptions {
                    branches: vec![spec("x"), spec("y")],
                    ..BeginOptions::default()
                })
                .await
                .expect("begin")
                .transaction_id;
            let outcome = client.commit(&id).await.expect("commit answered");
            (id, outcome)
        }
    };

    // With its certificate: prepared and committed over mutual TLS.
    let trusted = coordinator("trusted", Some(mesh.leaf(&["coordinator"]))).await;
    let client = CoordinatorClient::connect(trusted.url()).expect("client");
    let (id, outcome) = transfer(client).await;
    assert_eq!(outcome, Outcome::Committed { read_only: false });
    super::support::eventually("phase 2 over TLS", || async {
        (p.effects(&id).await.len() == 4).then_some(())
    })
    .await;

    // Without one, the participant refuses the connection: nothing is
    // prepared, and the transaction aborts.
    let anonymous = coordinator("anonymous", None).await;
    let client = CoordinatorClient::connect(anonymous.url()).expect("client");
    let (id, outcome) = transfer(client).await;
    assert!(matches!(outcome, Outcome::Aborted { .. }), "{outcome:?}");
    assert!(p.effects(&id).await.is_empty());
}

/// GET / on the console over TLS, trusting `ca` and presenting `identity`
/// (PEM certificate and key) if given: the status line, or why it failed.
async fn console_get(
    addr: std::net::SocketAddr,
    ca: &Ca,
    identity: Option<(Vec<u8>, Vec<u8>)>,
) -> Result<String, String> {
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(&ca.pem()) {
        roots.add(cert.expect("CA pem")).expect("CA");
    }
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let config = match identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                CertificateDer::pem_slice_iter(&cert)
                    .collect::<Result<Vec<_>, _>>()
                    .expect("cert"),
                PrivateKeyDer::from_pem_slice(&key).expect("key"),
            )
            .expect("client identity"),
        None => builder.with_no_client_auth(),
    };
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tls.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    tls.read_to_end(&mut answer)
        .await
        .map_err(|e| format!("read: {e}"))?;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    if !answer.contains("<title>Concord console</title>") {
        return Err(format!("not the console page: {answer:.200}"));
    }
    Ok(answer.lines().next().unwrap_or_default().to_owned())
}

#[tokio::test]
async fn the_console_serves_tls_with_the_grpc_ports_certificate_and_client_rule() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (server_ca, client_ca) = (Ca::new("servers"), Ca::new("operators"));
    let node = tls_node_with_console(
        dir.path(),
        &server_ca,
        Some(&client_ca),
        Some("127.0.0.1:0".parse().expect("addr")),
    )
    .await;
    let console = node.console_addr().expect("a console");
    // A browser with an operator's certificate gets the page.
    let status = console_get(console, &server_ca, Some(client_ca.leaf(&["ana"])))
        .await
        .expect("the page over mutual TLS");
    assert!(status.starts_with("HTTP/1.1 200"), "{status}");
    // Without a certificate from the operators' CA, nothing is served.
    let refused = console_get(console, &server_ca, None).await;
    assert!(refused.is_err(), "{refused:?}");
    let stranger = console_get(
        console,
        &server_ca,
        Some(Ca::new("elsewhere").leaf(&["eve"])),
    )
    .await;
    assert!(stranger.is_err(), "{stranger:?}");
    // And no plaintext.
    let plain = {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tokio::net::TcpStream::connect(console)
            .await
            .expect("connect");
        tcp.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            tcp.read_to_end(&mut answer),
        )
        .await;
        String::from_utf8_lossy(&answer).into_owned()
    };
    assert!(!plain.contains("Concord console"), "{plain:.200}");
    node.shutdown().await.expect("shutdown");
}
