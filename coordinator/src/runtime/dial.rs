//! Which addresses this node may call participants at (DESIGN §12, S6),
//! and the TCP connector that holds every connection to it.
//!
//! Clients name participants; the node dials them, from inside the
//! network, and signs what it sends. So a caller must not be able to make
//! it reach what only its own host may reach: a link-local address (where
//! cloud metadata services answer and hand out credentials) or an
//! unspecified one is never connected to, whether the URL names it or a
//! host name resolves to it. With `--allowed-participants`, only the
//! networks and host names listed are dialled: a name listed is dialled
//! wherever it resolves; any other name only where it resolves inside a
//! listed network, each address checked as the connection is made, not
//! when the name was first seen.

use std::net::IpAddr;
use std::sync::Arc;

use tonic::codegen::http::Uri;

/// The rule: empty allows every address but the never-dialled ones.
#[derive(Debug, Default)]
pub struct DialPolicy {
    networks: Vec<Network>,
    names: Vec<Name>,
}

/// A network: an address and how many of its leading bits count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Network {
    base: IpAddr,
    bits: u8,
}

/// A host name, or (`*.example.com`) every name below one.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    Exactly(String),
    Below(String),
}

impl Network {
    fn parse(text: &str) -> Option<Self> {
        let (address, bits) = match text.split_once('/') {
            Some((address, bits)) => (address, Some(bits.parse::<u8>().ok()?)),
            None => (text, None),
        };
        let base: IpAddr = address.parse().ok()?;
        let most = if base.is_ipv4() { 32 } else { 128 };
        let bits = bits.unwrap_or(most);
        (bits <= most).then_some(Self { base, bits })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match (self.base, canonical(ip)) {
            (IpAddr::V4(base), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.bits)).unwrap_or(0);
                u32::from(base) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(base), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.bits))
                    .unwrap_or(0);
                u128::from(base) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// An IPv4 address written as IPv6 is the IPv4 one: mapped
/// (`::ffff:a.b.c.d`), compatible (`::a.b.c.d`) or behind NAT64
/// (`64:ff9b::a.b.c.d`).
fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    let segments = v6.segments();
    let nat64 = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    let compatible =
        segments[..6] == [0, 0, 0, 0, 0, 0] && !v6.is_loopback() && !v6.is_unspecified();
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None if nat64 || compatible => {
            let [.., a, b, c, d] = v6.octets();
            IpAddr::V4(std::net::Ipv4Addr::new(a, b, c, d))
        }
        None => ip,
    }
}

/// Metadata services outside the link-local ranges: AWS's IPv6 one,
/// Alibaba Cloud's, Azure's WireServer.
const METADATA: [IpAddr; 3] = [
    IpAddr::V6(std::net::Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(std::net::Ipv4Addr::new(100, 100, 100, 200)),
    IpAddr::V4(std::net::Ipv4Addr::new(168, 63, 129, 16)),
];

/// Why no caller may make this node connect to `ip`, if none may.
pub fn never_dialled(ip: IpAddr) -> Option<&'static str> {
    let ip = canonical(ip);
    let link_local = match ip {
        IpAddr::V4(v4) => v4.is_link_local(),
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    if link_local || METADATA.contains(&ip) {
        Some(
            "a link-local or cloud metadata address (where metadata services hand out \
             credentials) is never dialled",
        )
    } else if ip.is_unspecified() {
        Some("an unspecified address (0.0.0.0, ::) names no participant")
    } else {
        None
    }
}

impl DialPolicy {
    /// The rule from `--allowed-participants` entries: networks
    /// (`10.0.0.0/8`, `192.168.1.7`, `fd00::/8`), host names
    /// (`bank.internal`) and name suffixes (`*.svc.cluster.local`).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let mut policy = Self::default();
        for entry in entries.iter().map(|e| e.trim()).filter(|e| !e.is_empty()) {
            if let Some(network) = Network::parse(entry) {
                policy.networks.push(network);
            } else if let Some(suffix) = entry.strip_prefix("*.") {
                policy.names.push(Name::Below(checked_name(entry, suffix)?));
            } else if entry.contains('/') || entry.parse::<IpAddr>().is_ok() {
                return Err(format!("{entry:?} is not a network (address/bits)"));
            } else {
                policy
                    .names
                    .push(Name::Exactly(checked_name(entry, entry)?));
            }
        }
        Ok(policy)
    }

    /// Whether every address is allowed (but the never-dialled ones).
    pub fn is_open(&self) -> bool {
        self.networks.is_empty() && self.names.is_empty()
    }

    /// Whether `host` is allowed by name.
    fn names(&self, host: &str) -> bool {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        self.names.iter().any(|name| match name {
            Name::Exactly(name) => *name == host,
            Name::Below(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|head| head.len() > 1 && head.ends_with('.')),
        })
    }

    /// Why `host` (a URL's host: a name, or an address in brackets or
    /// not) may not be dialled, when that is known without resolving it.
    pub fn refuses_host(&self, host: &str) -> Option<String> {
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            Ok(ip) => self.refuses_address(false, ip),
            Err(_) => None,
        }
    }

    /// Why this node may not connect to `ip`, reached through a name the
    /// list allows (`by_name`) or not.
    fn refuses_address(&self, by_name: bool, ip: IpAddr) -> Option<String> {
        if let Some(never) = never_dialled(ip) {
            return Some(never.to_owned());
        }
        if self.is_open() || by_name || self.networks.iter().any(|n| n.contains(ip)) {
            return None;
        }
        Some(format!(
            "{ip} is outside the networks this coordinator may call participants in \
             (--allowed-participants)"
        ))
    }

    /// Opens a TCP connection to `uri`'s host, to an address the rule
    /// allows, trying each the name resolves to in turn.
    async fn connect(&self, uri: &Uri) -> std::io::Result<tokio::net::TcpStream> {
        let refused = |why: String| std::io::Error::new(std::io::ErrorKind::PermissionDenied, why);
        let host = uri.host().unwrap_or_default();
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let port = uri
            .port_u16()
            .unwrap_or(if uri.scheme_str() == Some("https") {
                443
            } else {
                80
            });
        let by_name = literal.parse::<IpAddr>().is_err() && self.names(literal);
        if literal.parse::<IpAddr>().is_err()
            && !by_name
            && !self.is_open()
            && self.networks.is_empty()
        {
            return Err(refused(format!(
                "{host} is not among the hosts this coordinator may call (--allowed-participants)"
            )));
        }
        let mut last = None;
        for address in tokio::net::lookup_host((literal, port)).await? {
            if let Some(why) = self.refuses_address(by_name, address.ip()) {
                last = Some(refused(format!(
                    "{host} resolves to {}: {why}",
                    address.ip()
                )));
                continue;
            }
            match tokio::net::TcpStream::connect(address).await {
                Ok(stream) => {
                    // A response's second small write must not wait for the
                    // peer's delayed ACK (Nagle).
                    stream.set_nodelay(true)?;
                    return Ok(stream);
                }
                Err(error) => last = Some(error),
            }
        }
        Err(last.unwrap_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("{host} resolves to no address"),
            )
        }))
    }
}

/// A host name as a list entry: letters, digits, '-' and '.', lowercase.
fn checked_name(entry: &str, name: &str) -> Result<String, String> {
    let fine = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    if fine {
        Ok(name.trim_end_matches('.').to_ascii_lowercase())
    } else {
        Err(format!(
            "{entry:?} is neither a network (10.0.0.0/8), a host name (bank.internal) nor \
             a name suffix (*.svc.cluster.local)"
        ))
    }
}

/// A channel to `endpoint` whose every connection `policy` allows.
pub fn channel(
    endpoint: tonic::transport::Endpoint,
    policy: Arc<DialPolicy>,
) -> tonic::transport::Channel {
    let connector = tower::service_fn(move |uri: Uri| {
        let policy = Arc::clone(&policy);
        async move { policy.connect(&uri).await.map(hyper_util::rt::TokioIo::new) }
    });
    endpoint.connect_with_connector_lazy(connector)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback(port: u16) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn policy(entries: &[&str]) -> DialPolicy {
        DialPolicy::parse(&entries.iter().map(|e| e.to_string()).collect::<Vec<_>>())
            .expect("a rule")
    }

    #[test]
    fn metadata_and_unspecified_addresses_are_never_dialled_whatever_the_list() {
        for ip in [
            "169.254.169.254",
            "fe80::1",
            "::ffff:169.254.169.254",
            "::169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "fd00:ec2::254",
            "100.100.100.200",
            "168.63.129.16",
            "0.0.0.0",
            "::",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert!(policy(&[]).refuses_address(false, ip).is_some(), "{ip}");
            assert!(
                policy(&["0.0.0.0/0", "::/0"])
                    .refuses_address(true, ip)
                    .is_some(),
                "{ip}"
            );
        }
        assert!(
            policy(&[])
                .refuses_address(false, loopback(1).ip())
                .is_none()
        );
    }

    #[test]
    fn with_a_list_only_its_networks_and_names_are_dialled() {
        let rule = policy(&[
            "10.0.0.0/8",
            "fd00::/8",
            "bank.internal",
            "*.svc.cluster.local",
        ]);
        let allowed = |ip: &str| {
            rule.refuses_address(false, ip.parse().expect("ip"))
                .is_none()
        };
        assert!(allowed("10.1.2.3"));
        assert!(allowed("::ffff:10.1.2.3"));
        assert!(allowed("fd12::7"));
        assert!(!allowed("11.0.0.1"));
        assert!(!allowed("127.0.0.1"));
        assert!(rule.names("bank.internal"));
        assert!(rule.names("BANK.internal."));
        assert!(rule.names("payments.prod.svc.cluster.local"));
        assert!(!rule.names("svc.cluster.local"));
        assert!(!rule.names("evilsvc.cluster.local"));
        assert!(!rule.names("bank.internal.evil.com"));
        assert!(rule.refuses_host("[fd12::7]").is_none());
        assert!(rule.refuses_host("127.0.0.1").is_some());
        assert!(rule.refuses_host("bank.internal").is_none());
    }

    #[test]
    fn entries_that_are_neither_networks_nor_names_are_refused() {
        for bad in ["10.0.0.0/33", "10.0.0/8", "bank internal", "*.", "http://x"] {
            assert!(DialPolicy::parse(&[bad.to_string()]).is_err(), "{bad}");
        }
        assert!(DialPolicy::parse(&[" 127.0.0.1 ".into(), String::new()]).is_ok());
    }

    #[tokio::test]
    async fn a_connection_is_made_only_where_the_rule_allows() {
        let listener = tokio::net::TcpListener::bind(loopback(0))
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let uri = |host: &str| -> Uri { format!("http://{host}:{port}").parse().expect("uri") };
        assert!(policy(&[]).connect(&uri("127.0.0.1")).await.is_ok());
        assert!(
            policy(&["127.0.0.0/8"])
                .connect(&uri("localhost"))
                .await
                .is_ok()
        );
        assert!(
            policy(&["localhost"])
                .connect(&uri("localhost"))
                .await
                .is_ok()
        );
        let refused = policy(&["10.0.0.0/8"])
            .connect(&uri("localhost"))
            .await
            .expect_err("outside the list");
        assert!(
            refused.to_string().contains("--allowed-participants"),
            "{refused}"
        );
        let refused = policy(&["bank.internal"])
            .connect(&uri("localhost"))
            .await
            .expect_err("not listed");
        assert!(refused.to_string().contains("not among"), "{refused}");
    }
}
