//! `concord txn ...`: the operator's tools, over the coordinator's gRPC API
//! (any node of a cluster answers): list transactions by state, kind, age
//! and NEEDS_ATTENTION; show one with its branches or steps, attempts, last
//! errors, timeline and operators' decisions; cut a waiting retry short;
//! and record an operator's outcome for a branch that cannot answer.

use std::time::Duration;

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

fn resolution_name(outcome: i32) -> String {
    pb::Resolution::try_from(outcome)
        .map(|r| {
            r.as_str_name()
                .trim_start_matches("RESOLUTION_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("outcome {outcome}"))
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

fn state_name(state: i32) -> String {
    pb::TransactionState::try_from(state)
        .map(|s| {
            s.as_str_name()
                .trim_start_matches("TRANSACTION_STATE_")
                .to_ascii_lowercase()
        })
        .unwrap_or_else(|_| format!("state {state}"))
}

fn kind_name(kind: i32) -> &'static str {
    match pb::TransactionKind::try_from(kind) {
        Ok(pb::TransactionKind::Saga) => "saga",
        Ok(pb::TransactionKind::TwoPhase) => "2pc",
        Ok(pb::TransactionKind::Message) => "message",
        _ => "?",
    }
}

/// "3m12s" for a span of milliseconds.
fn span(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        3600..=86_399 => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{:02}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// An instant (ms since the Unix epoch) in UTC, RFC 3339, and how long ago.
pub(super) fn moment(ms: u64, now: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    let days = i64::try_from(ms / 86_400_000).unwrap_or(i64::MAX);
    let rest = ms % 86_400_000;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let when = format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rest / 3_600_000,
        (rest / 60_000) % 60,
        (rest / 1000) % 60,
        rest % 1000
    );
    if now >= ms {
        format!("{when} ({} ago)", span(now - ms))
    } else {
        format!("{when} (in {})", span(ms - now))
    }
}

/// Text a client or participant supplied, as a terminal may show it: a
/// control character (a newline that forges a line, an escape sequence
/// that rewrites the screen) or a bidirectional override is printed as
/// its escape (`\n`, `\u{1b}`), never acted on (DESIGN §12).
/// A payload's line under its branch or step, when its head was asked for
/// (`--payloads`): its text (control characters escaped, as [`shown`]
/// does) or hex, and how much of it that is.
fn payload_lines(what: &str, head: &[u8], bytes: u64) -> String {
    if head.is_empty() {
        return String::new();
    }
    let cut = if (head.len() as u64) < bytes {
        format!(" (first {} of {bytes} bytes)", head.len())
    } else {
        String::new()
    };
    match crate::model::Readable::of(head) {
        crate::model::Readable::Text(text) => {
            format!("  {:<16}{what}{cut}: {}\n", "", shown(&text))
        }
        crate::model::Readable::Hex(hex) => format!("  {:<16}{what} (hex){cut}: {hex}\n", ""),
    }
}

fn shown(text: &str) -> std::borrow::Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || ('\u{202a}'..='\u{202e}').contains(&c)
            || ('\u{2066}'..='\u{2069}').contains(&c)
    };
    if !text.chars().any(hidden) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(
        text.chars()
            .map(|c| {
                if hidden(c) {
                    c.escape_default().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect(),
    )
}

fn list_text(page: &pb::ListTransactionsResponse, now: u64) -> String {
    // The GROUP column only in a deployment of several groups (DESIGN §11).
    let grouped = page.transactions.iter().any(|txn| !txn.group.is_empty());
    let group = |name: &str| {
        if grouped {
            format!("{name:<10}  ")
        } else {
            String::new()
        }
    };
    let mut out = format!(
        "{:<36}  {}{:<7}  {:<12}  {:>7}  {:>5}  {:<4}  {}\n",
        "ID",
        group("GROUP"),
        "KIND",
        "STATE",
        "AGE",
        "PARTS",
        "ATTN",
        "REASON"
    );
    for txn in &page.transactions {
        let parts = txn.branch_count as usize;
        out.push_str(&format!(
            "{:<36}  {}{:<7}  {:<12}  {:>7}  {:>5}  {:<4}  {}\n",
            txn.id,
            group(&txn.group),
            kind_name(txn.kind),
            state_name(txn.state),
            span(now.saturating_sub(txn.created_at_ms)),
            parts,
            if txn.needs_attention { "yes" } else { "-" },
            shown(&txn.reason)
        ));
    }
    if page.transactions.is_empty() {
        out.push_str("(none)\n");
    }
    for skipped in &page.skipped_groups {
        out.push_str(&format!(
            "missing: group {} did not answer ({}); its transactions are not listed\n",
            shown(&skipped.group),
            shown(&skipped.reason)
        ));
    }
    if !page.next_page_token.is_empty() {
        out.push_str(&format!("more: --page-token {}\n", page.next_page_token));
    }
    out
}

fn show_text(txn: &pb::Transaction, now: u64) -> String {
    let mut out = format!("transaction {}\n", txn.id);
    let mut field = |name: &str, value: String| {
        if !value.is_empty() {
            out.push_str(&format!("  {name:<16}{value}\n"));
        }
    };
    field("kind", kind_name(txn.kind).into());
    field("state", state_name(txn.state));
    field(
        "needs attention",
        if txn.needs_attention {
            "YES".into()
        } else {
            String::new()
        },
    );
    field("begun", moment(txn.created_at_ms, now));
    let message = txn.kind == pb::TransactionKind::Message as i32;
    // Past its end a deadline says nothing: shown only while it can still
    // pass.
    if txn.deadline_ms > 0 && txn.ended_at_ms == 0 {
        // A message's deadline is when its check-back is due (M6).
        let label = if message {
            "check-back due"
        } else {
            "deadline"
        };
        field(label, moment(txn.deadline_ms, now));
    }
    if !txn.group.is_empty() {
        field("group", format!("{} (shard {})", txn.group, txn.shard));
    }
    field("producer", shown(&txn.producer).into_owned());
    field("ordering key", shown(&txn.ordering_key).into_owned());
    field("decided", moment(txn.decided_at_ms, now));
    field("ended", moment(txn.ended_at_ms, now));
    field("reason", shown(&txn.reason).into_owned());
    field("description", shown(&txn.description).into_owned());
    field("idempotency key", shown(&txn.idempotency_key).into_owned());
    if txn.read_only {
        field("read only", "yes".into());
    }
    if !txn.branches.is_empty() {
        out.push_str(if message {
            "destinations:\n"
        } else {
            "branches:\n"
        });
        for branch in &txn.branches {
            let state = pb::BranchState::try_from(branch.state)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("BRANCH_STATE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            let vote = pb::Vote::try_from(branch.vote)
                .ok()
                .filter(|v| *v != pb::Vote::Unspecified)
                .map(|v| {
                    v.as_str_name()
                        .trim_start_matches("VOTE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_else(|| "-".into());
            if message {
                out.push_str(&format!(
                    "  {:<16}{:<12} attempts {:<4} {}\n",
                    shown(&branch.name),
                    state,
                    branch.attempts,
                    shown(&branch.participant)
                ));
            } else {
                out.push_str(&format!(
                    "  {:<16}{:<12} vote {:<9} attempts {:<4} {}\n",
                    shown(&branch.name),
                    state,
                    vote,
                    branch.attempts,
                    shown(&branch.participant)
                ));
            }
            if !branch.last_error.is_empty() {
                out.push_str(&format!(
                    "  {:<16}last error: {}\n",
                    "",
                    shown(&branch.last_error)
                ));
            }
            out.push_str(&payload_lines(
                "payload",
                &branch.payload,
                branch.payload_bytes,
            ));
        }
    }
    if !txn.operator_actions.is_empty() {
        out.push_str("operator decisions:\n");
        for action in &txn.operator_actions {
            out.push_str(&format!(
                "  {:<16}{} by {} at {}\n  {:<16}reason: {}\n",
                shown(&action.branch),
                resolution_name(action.outcome),
                shown(&action.operator),
                moment(action.at_ms, now),
                "",
                shown(&action.reason)
            ));
        }
    }
    if !txn.steps.is_empty() {
        out.push_str("steps:\n");
        for step in &txn.steps {
            let state = pb::StepState::try_from(step.state)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("STEP_STATE_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            let kind = pb::StepKind::try_from(step.kind)
                .map(|s| {
                    s.as_str_name()
                        .trim_start_matches("STEP_KIND_")
                        .to_ascii_lowercase()
                })
                .unwrap_or_default();
            out.push_str(&format!(
                "  {:<16}{:<14} {:<13} attempts {:<4} compensations {:<4} {}\n",
                shown(&step.name),
                state,
                kind,
                step.attempts,
                step.compensation_attempts,
                shown(&step.participant)
            ));
            if !step.last_error.is_empty() {
                out.push_str(&format!(
                    "  {:<16}last error: {}\n",
                    "",
                    shown(&step.last_error)
                ));
            }
            out.push_str(&payload_lines("action", &step.action, step.action_bytes));
            out.push_str(&payload_lines(
                "compensation",
                &step.compensation,
                step.compensation_bytes,
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_without_a_scheme_is_https_with_tls_settings_and_http_without() {
        assert_eq!(with_scheme("coord:7400", false), "http://coord:7400");
        assert_eq!(with_scheme("coord:7400", true), "https://coord:7400");
        assert_eq!(with_scheme("http://coord:7400", true), "http://coord:7400");
    }

    #[test]
    fn client_text_cannot_forge_lines_or_drive_the_terminal() {
        assert_eq!(shown("paid 20.00"), "paid 20.00");
        assert_eq!(
            shown("ok\nstate COMMITTED\u{1b}[2J"),
            "ok\\nstate COMMITTED\\u{1b}[2J"
        );
        assert_eq!(shown("a\u{202e}b"), "a\\u{202e}b");
        let txn = pb::Transaction {
            id: "t".into(),
            description: "x\n  state           COMMITTED".into(),
            ..Default::default()
        };
        let text = show_text(&txn, 0);
        assert!(
            !text
                .lines()
                .any(|line| line.starts_with("  state") && line.ends_with("COMMITTED")),
            "a forged line: {text}"
        );
    }

    #[test]
    fn ages_read_the_way_operators_write_them() {
        assert_eq!(parse_age("90s"), Ok(90_000));
        assert_eq!(parse_age("5m"), Ok(300_000));
        assert_eq!(parse_age("2h"), Ok(7_200_000));
        assert_eq!(parse_age("1d"), Ok(86_400_000));
        assert_eq!(parse_age("250ms"), Ok(250));
        assert!(parse_age("5 minutes").is_err());
        assert!(parse_age("m").is_err());
        assert!(parse_age("99999999999999999d").is_err());
    }

    #[test]
    fn states_and_kinds_parse_by_their_short_names() {
        assert_eq!(
            parse_state("committing"),
            Ok(pb::TransactionState::Committing)
        );
        assert_eq!(
            parse_state("NEEDS"),
            Err("\"NEEDS\" is not a transaction state".into())
        );
        assert!(parse_state("unspecified").is_err());
        assert_eq!(parse_kind("saga"), Ok(pb::TransactionKind::Saga));
        assert!(parse_kind("xa").is_err());
    }

    #[test]
    fn moments_are_utc_and_relative() {
        // 2025-11-24T01:02:03.004Z
        let ms = 1_763_946_123_004;
        assert_eq!(
            moment(ms, ms + 192_000),
            "2025-11-24T01:02:03.004Z (3m12s ago)"
        );
        assert_eq!(moment(0, ms), "-");
        assert_eq!(
            moment(951_782_400_000, 951_782_400_000),
            "2000-02-29T00:00:00.000Z (0ms ago)"
        );
    }
}
