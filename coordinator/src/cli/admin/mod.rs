//! `concord txn ...`: the operator's tools, over the coordinator's gRPC API
//! (any node of a cluster answers): list transactions by state, kind, age
//! and NEEDS_ATTENTION; show one with its branches or steps, attempts, last
//! errors, timeline and operators' decisions; cut a waiting retry short;
//! and record an operator's outcome for a branch that cannot answer.

mod text;
use std::time::Duration;
pub(super) use text::moment;
use text::{list_text, resolution_name, show_text, state_name};

use anyhow::Context;
use concord_proto::v1 as pb;
use concord_proto::v1::coordinator_client::CoordinatorClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::model::now_ms;

/// How to reach a coordinator: the node to ask, the token to show, TLS.
#[derive(clap::Args, Debug)]
pub struct Remote {
    /// The coordinator to ask: any node of a cluster.
    #[arg(
        long,
        env = "CONCORD_COORDINATOR",
        default_value = "http://127.0.0.1:7400"
    )]
    #[arg(global = true)]
    pub(super) coordinator: String,

    /// The token to send with every call.
    ///
    /// The coordinator's admin token for `concord txn retry` and `resolve`
    /// and for `concord shards add-group`, `move`, `cancel` and `sync` (the
    /// shard map's writes and the handover of shards' keys); for reads
    /// (`concord txn list` and `show`, `concord shards show`), a client
    /// token does when the coordinator requires one (--client-token).
    #[arg(
        long,
        env = "CONCORD_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub(super) token: Option<String>,

    /// For an https:// coordinator: the CA (PEM) that signed its
    /// certificate.
    #[arg(long, env = "CONCORD_CLI_TLS_CA", global = true)]
    tls_ca: Option<std::path::PathBuf>,

    /// This client's certificate chain (PEM); needs --tls-key and --tls-ca.
    ///
    /// For a coordinator that requires mutual TLS.
    #[arg(long, env = "CONCORD_CLI_TLS_CERT", requires_all = ["tls_key", "tls_ca"], global = true)]
    tls_cert: Option<std::path::PathBuf>,

    /// The private key of --tls-cert (PEM).
    #[arg(
        long,
        env = "CONCORD_CLI_TLS_KEY",
        requires = "tls_cert",
        global = true
    )]
    tls_key: Option<std::path::PathBuf>,

    /// The name to check the coordinator's certificate against.
    ///
    /// Give it when that is not the URL's host.
    #[arg(
        long,
        env = "CONCORD_CLI_TLS_DOMAIN",
        requires = "tls_ca",
        global = true
    )]
    tls_domain: Option<String>,
}

#[derive(clap::Args, Debug)]
pub struct TxnArgs {
    #[command(flatten)]
    remote: Remote,

    #[command(subcommand)]
    command: TxnCommand,
}

#[derive(clap::Subcommand, Debug)]
enum TxnCommand {
    /// Transactions newest first. Filters combine; --page-token continues.
    List {
        /// Only this state (repeatable).
        ///
        /// One of: active, preparing, committing, aborting, committed,
        /// aborted, running, compensating, completed, compensated, failed,
        /// prepared, delivering, delivered, dropped.
        #[arg(long = "state", value_parser = parse_state)]
        states: Vec<pb::TransactionState>,
        /// Only this kind: 2pc, saga or message.
        #[arg(long, value_parser = parse_kind)]
        kind: Option<pb::TransactionKind>,
        /// Only transactions begun at least this long ago: 90s, 5m, 2h, 1d.
        #[arg(long, value_parser = parse_age)]
        older_than: Option<u64>,
        /// Only transactions flagged NEEDS_ATTENTION.
        #[arg(long)]
        needs_attention: bool,
        /// At most this many (1 to 1000).
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
        /// Where the previous page ended (printed under it).
        #[arg(long)]
        page_token: Option<String>,
        /// Only transactions whose description or a participant's endpoint
        /// contains this text (any ASCII case).
        ///
        /// E.g. `--text bank-a` or `--text "trip for ada"`. The log is read
        /// newest first until a page is found: on a large log, combine it
        /// with --page-token or --older-than.
        #[arg(long)]
        text: Option<String>,
        /// With several groups (DESIGN §11): only this group's transactions.
        ///
        /// Default: every group's, gathered by the node called.
        #[arg(long)]
        group: Option<String>,
        /// Print the page as one JSON object.
        ///
        /// Its fields are `transactions` and `next_page_token`, as the
        /// console's API gives the page.
        #[arg(long)]
        json: bool,
    },
    /// One transaction, in detail.
    ///
    /// Its state, branches or steps, attempts, errors and operators'
    /// decisions.
    Show {
        /// The transaction: its id (any case), its first digits, or
        /// FIRST…LAST (`01a2525d…0dd3`, `...` for `…`).
        id: String,
        /// Print it as one JSON object, as the console's API gives it.
        #[arg(long)]
        json: bool,
        /// Also print each branch's payload and each step's action and
        /// compensation.
        ///
        /// The first 4 KiB of each, as text when it is UTF-8, hex otherwise.
        #[arg(long)]
        payloads: bool,
    },
    /// Makes the transaction's waiting retries happen now.
    ///
    /// Every retry of the transaction that is waiting out its backoff:
    /// phase-2 deliveries, saga steps, compensations.
    Retry {
        /// The transaction: its id (any case), its first digits, or
        /// FIRST…LAST (`01a2525d…0dd3`, `...` for `…`).
        id: String,
    },
    /// Records what happened at a participant that cannot answer.
    ///
    /// What you established happened there, so that the transaction can
    /// finish: a 2PC branch in phase 2 (committed or aborted, as the
    /// transaction decided), a saga step whose action (committed) or
    /// compensation (compensated) keeps failing, a message's producer
    /// that cannot answer its check-back
    /// (`--branch producer`: committed to deliver, aborted to drop) or a
    /// message's destination that keeps failing (committed). Recorded with
    /// who, when and why; shown forever after.
    Resolve {
        /// The transaction: its id (any case), its first digits, or
        /// FIRST…LAST (`01a2525d…0dd3`, `...` for `…`).
        id: String,
        /// The branch, step or destination name, or `producer`.
        ///
        /// The name as `concord txn show` prints it; `producer` for a
        /// message's producer.
        #[arg(long)]
        branch: String,
        /// committed, aborted or compensated.
        #[arg(long, value_parser = parse_resolution)]
        outcome: pb::Resolution,
        /// Why: what you checked or did (required).
        #[arg(long)]
        reason: String,
        /// Who you are; default: $USER.
        #[arg(long, env = "CONCORD_OPERATOR")]
        operator: Option<String>,
    },
}

pub async fn run(args: TxnArgs) -> anyhow::Result<()> {
    let url = args.remote.url();
    let explain = asking(&url);
    let mut client = connect(&args.remote, &url)?;
    match args.command {
        TxnCommand::List {
            states,
            kind,
            older_than,
            needs_attention,
            limit,
            page_token,
            text,
            group,
            json,
        } => {
            let page = client
                .list_transactions(pb::ListTransactionsRequest {
                    states: states.into_iter().map(Into::into).collect(),
                    needs_attention,
                    page_size: limit,
                    page_token: page_token.unwrap_or_default(),
                    kind: kind.unwrap_or(pb::TransactionKind::Unspecified).into(),
                    min_age_ms: older_than.unwrap_or(0),
                    group: group.unwrap_or_default(),
                    text: text.unwrap_or_default(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            if json {
                println!("{}", crate::console::json::page(page));
            } else {
                print!("{}", list_text(&page, now_ms()));
            }
        }
        TxnCommand::Show { id, json, payloads } => {
            let id = find_id(&mut client, &id, &explain).await?;
            let txn = client
                .get_transaction(pb::GetTransactionRequest {
                    transaction_id: id,
                    include_payloads: payloads,
                })
                .await
                .map_err(explain)?
                .into_inner();
            if json {
                println!("{}", crate::console::json::transaction(&txn));
            } else {
                print!("{}", show_text(&txn, now_ms()));
            }
        }
        TxnCommand::Resolve {
            id,
            branch,
            outcome,
            reason,
            operator,
        } => {
            let id = find_id(&mut client, &id, &explain).await?;
            let operator = operator
                .or_else(|| std::env::var("USER").ok())
                .filter(|name| !name.is_empty())
                .context("say who you are: --operator NAME (or set CONCORD_OPERATOR)")?;
            let answer = client
                .resolve_branch(pb::ResolveBranchRequest {
                    transaction_id: id.clone(),
                    branch: branch.clone(),
                    outcome: outcome.into(),
                    reason,
                    operator: operator.clone(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            println!(
                "{id}: {branch} resolved {} by {operator}; state {}",
                resolution_name(outcome.into()),
                state_name(answer.state)
            );
        }
        TxnCommand::Retry { id } => {
            let id = find_id(&mut client, &id, &explain).await?;
            let answer = client
                .retry_transaction(pb::RetryTransactionRequest {
                    transaction_id: id.clone(),
                })
                .await
                .map_err(explain)?
                .into_inner();
            println!(
                "{id}: {} waiting retr{} started now; state {}",
                answer.retried,
                if answer.retried == 1 { "y" } else { "ies" },
                state_name(answer.state)
            );
        }
    }
    Ok(())
}

/// Most ids a prefix is looked up among: more matches than this ask for
/// more of the id.
const PREFIX_MATCHES: u32 = 20;

/// The transaction `given` names: a whole id, in any case, or a unique
/// prefix of one, also as the console shortens ids (`01a2525d…0dd3`; see
/// [`crate::model::IdPattern`]).
async fn find_id(
    client: &mut Client,
    given: &str,
    explain: &impl Fn(tonic::Status) -> anyhow::Error,
) -> anyhow::Result<String> {
    let pattern = crate::model::IdPattern::parse(given).map_err(|e| anyhow::anyhow!(e))?;
    if let Some(id) = pattern.whole() {
        return Ok(id);
    }
    let page = client
        .list_transactions(pb::ListTransactionsRequest {
            page_size: PREFIX_MATCHES + 1,
            page_token: pattern.upper_bound(),
            ..Default::default()
        })
        .await
        .map_err(explain)?
        .into_inner();
    let within: Vec<String> = page
        .transactions
        .into_iter()
        .map(|txn| txn.id)
        .filter(|id| pattern.within(id))
        .collect();
    let crowded = within.len() > PREFIX_MATCHES as usize;
    let ids: Vec<&String> = within.iter().filter(|id| pattern.matches(id)).collect();
    match ids.as_slice() {
        [id] => Ok((*id).clone()),
        [] if !crowded => anyhow::bail!("no transaction's id starts with {given:?}"),
        _ if crowded => anyhow::bail!(
            "more than {PREFIX_MATCHES} transactions' ids start with {given:?}; give more of it, \
             or its last digits too (FIRST…LAST, as the console shows ids): ids \
             begun in the same minute share their first digits"
        ),
        many => anyhow::bail!(
            "{} transactions' ids start with {given:?}; give more of it, or its last digits \
             too (FIRST…LAST):\n  {}",
            many.len(),
            many.iter()
                .map(|id| id.as_str())
                .collect::<Vec<_>>()
                .join("\n  ")
        ),
    }
}

/// The token as request metadata: the admin token, or a client token for
/// reads on a node that requires one. Sent with every call
/// ([`Client`]).
#[derive(Clone)]
pub(super) struct Auth(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Auth {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// A client of one node that sends the token with every call.
pub(super) type Client = CoordinatorClient<InterceptedService<Channel, Auth>>;

impl Remote {
    /// The node's URL; `host:port` without a scheme is taken as https://
    /// when TLS settings are given, http:// otherwise.
    pub(super) fn url(&self) -> String {
        with_scheme(&self.coordinator, self.tls_ca.is_some())
    }
}

/// `url`, with a scheme in front when it names none.
fn with_scheme(url: &str, tls: bool) -> String {
    match (url.contains("://"), tls) {
        (true, _) => url.to_owned(),
        (false, true) => format!("https://{url}"),
        (false, false) => format!("http://{url}"),
    }
}

impl Auth {
    pub(super) fn new(token: Option<&str>) -> anyhow::Result<Self> {
        match token.filter(|t| !t.is_empty()) {
            None => Ok(Self(None)),
            Some(token) => Ok(Self(Some(
                format!("Bearer {token}")
                    .parse()
                    .context("the admin token must be printable ASCII")?,
            ))),
        }
    }

    pub(super) fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }
}

/// A client for the node at `url`, with `args`' TLS settings and token.
pub(super) fn connect(args: &Remote, url: &str) -> anyhow::Result<Client> {
    let url = with_scheme(url, args.tls_ca.is_some());
    // tonic speaks TLS only to https:// URLs: TLS settings with http://
    // would send the token in clear.
    if args.tls_ca.is_some() && url.starts_with("http://") {
        anyhow::bail!(
            "{url} is not https:// but TLS settings (--tls-ca) were given: give https://"
        );
    }
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("{url:?} is not a coordinator's URL"))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30));
    if let Some(ca) = &args.tls_ca {
        let read = |flag: &str, path: &std::path::Path| {
            std::fs::read(path).with_context(|| format!("reading --{flag} {}", path.display()))
        };
        let mut tls = tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(read("tls-ca", ca)?));
        if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
            tls = tls.identity(tonic::transport::Identity::from_pem(
                read("tls-cert", cert)?,
                read("tls-key", key)?,
            ));
        }
        if let Some(domain) = &args.tls_domain {
            tls = tls.domain_name(domain.clone());
        }
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    }
    Ok(CoordinatorClient::with_interceptor(
        endpoint.connect_lazy(),
        Auth::new(args.token.as_deref())?,
    ))
}

/// A gRPC failure as the one line an operator needs.
pub(super) fn explain(status: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{:?}: {}", status.code(), status.message())
}

/// [`explain`] for a call to the node at `url`: a node that could not be
/// reached, or that is not a coordinator's gRPC port, is named with what
/// to check.
pub(super) fn asking(url: &str) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |status| match unreached(&status) {
        Some(check) => anyhow::anyhow!(
            "cannot ask the coordinator at {url}: {check} ({:?}: {})",
            status.code(),
            status.message()
        ),
        None => explain(status),
    }
}

/// What to check when `status` says the node was not reached, or is not a
/// coordinator.
fn unreached(status: &tonic::Status) -> Option<&'static str> {
    let mut text = status.message().to_ascii_lowercase();
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        text.push_str(&error.to_string().to_ascii_lowercase());
        source = error.source();
    }
    if text.contains("grpc-status header missing") || text.contains("http status code") {
        Some(
            "that port answers HTTP but is not a coordinator's gRPC port (the console's or the \
             metrics' port?); give the address `concord serve --listen` serves",
        )
    } else if text.contains("connection refused") || text.contains("tcp connect error") {
        Some(
            "nothing listens there; is `concord serve` running, and is this its --listen \
             address? (--coordinator or CONCORD_COORDINATOR; default http://127.0.0.1:7400)",
        )
    } else if text.contains("dns error") || text.contains("failed to lookup") {
        Some("the host name does not resolve")
    } else if text.contains("timed out") || text.contains("deadline") {
        Some("no answer in time; is the address right, and does a firewall drop it?")
    } else if text.contains("https without tls") {
        Some("an https:// coordinator needs --tls-ca, the CA that signed its certificate")
    } else if status.code() == tonic::Code::Unimplemented {
        Some(
            "that port serves gRPC but not the Coordinator API (a participant's port?); give \
             the address `concord serve --listen` serves",
        )
    } else if status.code() == tonic::Code::Unknown && text.contains("transport error") {
        Some(
            "the connection failed: a port that does not speak gRPC (the metrics' port?), or a \
             TLS port asked over http:// (give https:// and --tls-ca)?",
        )
    } else {
        None
    }
}

fn parse_state(value: &str) -> Result<pb::TransactionState, String> {
    let name = format!("TRANSACTION_STATE_{}", value.to_ascii_uppercase());
    pb::TransactionState::from_str_name(&name)
        .filter(|state| *state != pb::TransactionState::Unspecified)
        .ok_or_else(|| {
            format!(
                "{value:?} is not a transaction state: active, preparing, committing, aborting, \
                 committed, aborted, running, compensating, completed, compensated, failed, \
                 prepared, delivering, delivered or dropped"
            )
        })
}

fn parse_resolution(value: &str) -> Result<pb::Resolution, String> {
    match value {
        "committed" => Ok(pb::Resolution::Committed),
        "aborted" => Ok(pb::Resolution::Aborted),
        "compensated" => Ok(pb::Resolution::Compensated),
        _ => Err(format!(
            "{value:?} is not an outcome: give committed, aborted or compensated"
        )),
    }
}

fn parse_kind(value: &str) -> Result<pb::TransactionKind, String> {
    match value {
        "2pc" | "two-phase" | "two_phase" => Ok(pb::TransactionKind::TwoPhase),
        "saga" => Ok(pb::TransactionKind::Saga),
        "message" => Ok(pb::TransactionKind::Message),
        _ => Err(format!(
            "{value:?} is not a kind: give 2pc, saga or message"
        )),
    }
}

/// "90s", "5m", "2h", "1d", "250ms" as milliseconds.
fn parse_age(value: &str) -> Result<u64, String> {
    let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &value[digits.len()..];
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{value:?} is not a duration like 90s, 5m, 2h or 1d"))?;
    let scale = match unit {
        "ms" => 1,
        "s" | "" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{value:?}: the unit must be ms, s, m, h or d")),
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{value:?} is too long"))
}

#[cfg(test)]
mod tests;
