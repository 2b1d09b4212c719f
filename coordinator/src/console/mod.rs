//! The web console (`concord serve --console-listen ADDR`): a page to see
//! and steer transactions, served by the node itself, offline (every asset
//! is embedded in the binary; no framework, no CDN, no build step).
//!
//! The console is a client of the node's own Coordinator service, called
//! in-process: every read, the live feed (WatchTransactions, as
//! server-sent events that resume by `Last-Event-ID`), and the operator's
//! Retry and Resolve go through the same validation, forwarding, admin
//! token check and audit record as `concord txn` and gRPC callers do. It
//! serves TLS exactly when the gRPC port does, with the same certificate and
//! client-certificate rule. It steers (Retry, Resolve) only for a
//! browser that sent the node's admin token; a node without one has a
//! read-only console (DESIGN §12). It answers only requests addressed to
//! it by a name it serves under (`addressed_here`): a page of another
//! site that rebinds its own name to this address gets nothing.
//!
//! - [`json`]: the service's answers as the page reads them.
//! - [`stats`]: the chart: ends per second and latency percentiles.
//! - `tls`: the TLS listener.
//! - `assets/`: the page (HTML, CSS, JavaScript).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use concord_proto::v1 as pb;
use concord_proto::v1::coordinator_server::Coordinator;
use futures::StreamExt;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::api::{Access, CoordinatorService, Credentials, Limits};
use crate::runtime::Runtime;

pub mod json;
pub mod stats;
mod tls;

/// The console's state, shared by every request.
struct Console {
    service: Arc<CoordinatorService>,
    stats: Arc<stats::Stats>,
    /// The node's tokens: without an admin token the console is
    /// read-only; with client tokens, it shows nothing to a browser that
    /// sent none of them ([`reader`]).
    credentials: Arc<Credentials>,
    /// The port it listens on, and whether on loopback only: what
    /// [`addressed_here`] checks a request's Host against.
    listen: SocketAddr,
    /// The names it answers to besides loopback's (a reverse proxy's,
    /// `--console-host`), lowercase.
    hosts: Vec<String>,
    /// Ends the live feeds when the node stops, so that the server's
    /// graceful stop does not wait on them.
    stop: CancellationToken,
}

/// Serves the console on `listener` until `stop` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    runtime: Runtime,
    limits: Limits,
    access: Access,
    stop: CancellationToken,
) -> std::io::Result<()> {
    let credentials = Arc::new(Credentials::of(&access));
    let service = Arc::new(CoordinatorService::new(
        runtime,
        limits,
        Arc::clone(&credentials),
    ));
    let stats = stats::Stats::follow(Arc::clone(&service), stop.clone());
    let listen = listener.local_addr()?;
    let console = Arc::new(Console {
        credentials,
        hosts: access
            .console_hosts
            .iter()
            .map(|host| host.trim().to_ascii_lowercase())
            .filter(|host| !host.is_empty())
            .collect(),
        listen,
        service,
        stats,
        stop: stop.clone(),
    });
    // What shows transactions needs a client token when the node has
    // them (DESIGN §12, S3), as the same reads over gRPC do.
    let reads = Router::new()
        .route("/api/transactions", get(list))
        .route("/api/transactions/{id}", get(transaction))
        .route("/api/transactions/{id}/retry", post(retry))
        .route("/api/transactions/{id}/resolve", post(resolve))
        .route("/api/changes", get(changes))
        .route("/api/stats", get(chart))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&console),
            reader,
        ));
    let router = Router::new()
        .route("/", get(page))
        .route("/app.js", get(script))
        .route("/style.css", get(style))
        .route("/api/info", get(info))
        .merge(reads)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&console),
            addressed_here,
        ))
        .with_state(console);
    let shutdown = stop.clone().cancelled_owned();
    match access.tls {
        Some(server_tls) => {
            let listener = tls::Listener::new(listener, &server_tls)?;
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const STYLE_CSS: &str = include_str!("assets/style.css");

async fn page() -> Response {
    asset("text/html; charset=utf-8", INDEX_HTML)
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", APP_JS)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE_CSS)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The page runs only its own script and styles (no inline
            // code, nothing from elsewhere).
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// A request to the in-process service, carrying the browser's token.
/// How long a call of the page's may take (R5): sent on as its deadline
/// when the service forwards it to another node, and enforced here.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

/// Waits for one of the service's answers, at most [`CALL_DEADLINE`].
async fn within<T>(
    call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<tonic::Response<T>, tonic::Status> {
    tokio::time::timeout(CALL_DEADLINE, call)
        .await
        .unwrap_or_else(|_| {
            Err(tonic::Status::deadline_exceeded(format!(
                "no answer within {} s",
                CALL_DEADLINE.as_secs()
            )))
        })
}

fn request<T>(headers: &HeaderMap, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(CALL_DEADLINE);
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
    {
        request.metadata_mut().insert("authorization", value);
    }
    request
}

/// A gRPC status as the page gets it: the HTTP status that says the same,
/// and `{code, message}`.
fn failure(status: tonic::Status) -> Response {
    let http = match status.code() {
        tonic::Code::InvalidArgument => StatusCode::BAD_REQUEST,
        tonic::Code::NotFound => StatusCode::NOT_FOUND,
        tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition => StatusCode::CONFLICT,
        tonic::Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        tonic::Code::PermissionDenied => StatusCode::FORBIDDEN,
        tonic::Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        tonic::Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({
        "code": format!("{:?}", status.code()),
        "message": status.message(),
    });
    (http, Json(body)).into_response()
}

fn answer<T>(
    result: Result<tonic::Response<T>, tonic::Status>,
    to_json: impl FnOnce(T) -> serde_json::Value,
) -> Response {
    match result {
        // What the log holds is nobody's cache's to keep.
        Ok(response) => (
            [(header::CACHE_CONTROL, "no-store")],
            Json(to_json(response.into_inner())),
        )
            .into_response(),
        Err(status) => failure(status),
    }
}

/// DNS rebinding: a page of another site whose name its owner points at
/// this address afterwards reaches the console as its own origin, past
/// every browser rule. A console on loopback answers only requests whose
/// Host names loopback (`localhost`, `127.x`, `[::1]`); one on other
/// addresses is behind the admin token or mutual TLS (protected mode).
/// Anything else is 421 Misdirected Request.
async fn addressed_here(
    State(console): State<Arc<Console>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .or_else(|| request.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    if !host_serves(host, console.listen, &console.hosts) {
        return misdirected(host, console.listen);
    }
    // A page of another site that sends a request here says so in its
    // Origin (browsers send it with every POST and cross-site fetch): what
    // it asks is refused whatever cookie or token the browser holds.
    let origin = request
        .headers()
        .get(header::ORIGIN)
        .and_then(|origin| origin.to_str().ok());
    if let Some(origin) = origin
        && !same_origin(origin, host)
    {
        return (
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({
                "code": "CrossOrigin",
                "message": format!(
                    "a request from the page of {origin:?} is not the console's own (it \
                     serves {host:?})"
                ),
            })),
        )
            .into_response();
    }
    next.run(request).await
}

/// Whether an Origin header (`scheme://host[:port]`, or `null`) names the
/// same host and port as the request's Host.
fn same_origin(origin: &str, host: &str) -> bool {
    origin
        .split_once("://")
        .is_some_and(|(_, authority)| authority.eq_ignore_ascii_case(host))
}

/// The answer to a request addressed to a name this console does not
/// serve under.
fn misdirected(host: &str, listen: SocketAddr) -> Response {
    (
        StatusCode::MISDIRECTED_REQUEST,
        Json(serde_json::json!({
            "code": "Misdirected",
            "message": format!(
                "this console on {listen} answers requests for localhost, 127.0.0.1 or \
                 [::1] (and the names given with --console-host), not {host:?}"
            ),
        })),
    )
        .into_response()
}

/// Whether `host` (a Host header: `name[:port]`) names the console at
/// `listen`. The name is what a rebinding page cannot fake (its own name
/// is in the Host its victim's browser sends); the port says nothing more.
fn host_serves(host: &str, listen: SocketAddr, also: &[String]) -> bool {
    let Ok(authority) = host.parse::<axum::http::uri::Authority>() else {
        return false;
    };
    if !listen.ip().is_loopback() {
        return true;
    }
    let name = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
        || also.iter().any(|named| name.eq_ignore_ascii_case(named))
}

/// Whether this browser may steer: the node has an admin token and the
/// browser sent it, by the same rule as the operator's RPCs.
/// And whether it may read at all: the node requires no client token, or
/// the browser sent one (or the admin token).
async fn info(State(console): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let token_required = console.credentials.admin_required();
    let operator = token_required
        && console
            .service
            .admits("the console", request(&headers, ()).metadata())
            .is_ok();
    Json(serde_json::json!({
        "token_required": token_required,
        "operator": operator,
        "client_token_required": console.credentials.client_required(),
        "reader": console.credentials.client(&headers).is_ok(),
    }))
    .into_response()
}

/// The client-token check of every read (DESIGN §12, S3): 401 with what
/// to send, before any work.
async fn reader(
    State(console): State<Arc<Console>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    match console.credentials.client(request.headers()) {
        Ok(()) => next.run(request).await,
        Err(status) => failure(status),
    }
}

/// The listing's filters, as the page's query string gives them.
#[derive(Debug, Default, Deserialize)]
struct Filters {
    /// Comma-separated state names (`committing,aborting`).
    #[serde(default)]
    states: String,
    /// `2pc`, `saga` or `message`; empty: every kind.
    #[serde(default)]
    kind: String,
    #[serde(default)]
    needs_attention: bool,
    #[serde(default)]
    page_token: String,
    #[serde(default)]
    limit: u32,
    /// In a deployment of several groups: this group's transactions (or
    /// changes); empty: every group's.
    #[serde(default)]
    group: String,
    /// The watch only: transactions whose id starts with this.
    #[serde(default)]
    id_prefix: String,
    /// The list only: what the search box holds. Ids as people type them
    /// (`model::IdPattern`: a prefix, or the page's short form); anything
    /// else, or text in double quotes, is looked for in descriptions and
    /// participants' endpoints (ListTransactions' `text`).
    #[serde(default)]
    search: String,
    /// The list only: transactions begun before this moment (Unix ms).
    #[serde(default)]
    before_ms: u64,
    /// The list only: transactions begun at or after this moment.
    #[serde(default)]
    after_ms: u64,
    /// The watch only: resume after this change.
    #[serde(default)]
    cursor: String,
    /// The watch only: from the oldest change kept.
    #[serde(default)]
    from_oldest: bool,
}

impl Filters {
    fn states(&self) -> Result<Vec<i32>, tonic::Status> {
        self.states
            .split(',')
            .filter(|name| !name.is_empty())
            .map(|name| {
                json::state_from_name(name)
                    .map(|state| state as i32)
                    .ok_or_else(|| {
                        tonic::Status::invalid_argument(format!(
                            "states: {name:?} is not a transaction state"
                        ))
                    })
            })
            .collect()
    }

    fn kind(&self) -> Result<i32, tonic::Status> {
        Ok(match self.kind.as_str() {
            "" => pb::TransactionKind::Unspecified,
            "2pc" | "two_phase" => pb::TransactionKind::TwoPhase,
            "saga" => pb::TransactionKind::Saga,
            "message" => pb::TransactionKind::Message,
            other => {
                return Err(tonic::Status::invalid_argument(format!(
                    "kind: {other:?} is not 2pc, saga or message"
                )));
            }
        } as i32)
    }
}

async fn list(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    let (search, text) = match filters.search.trim() {
        "" => (None, String::new()),
        quoted if quoted.len() >= 2 && quoted.starts_with('"') && quoted.ends_with('"') => {
            (None, quoted[1..quoted.len() - 1].to_owned())
        }
        typed => match crate::model::IdPattern::parse(typed) {
            Ok(pattern) => (Some(pattern), String::new()),
            Err(_) => (None, typed.to_owned()),
        },
    };
    // Ids are UUIDv7, time-ordered, listed newest first below the page
    // token: a search and a time range start the list at their highest
    // id, and end it at the first id past them.
    let before = (filters.before_ms > 0)
        .then(|| crate::model::TxnId::from_parts(filters.before_ms, 0).to_string());
    let page_token = match (filters.page_token.as_str(), &search, before) {
        ("", None, None) => String::new(),
        ("", pattern, before) => pattern
            .iter()
            .map(crate::model::IdPattern::upper_bound)
            .chain(before)
            .min()
            .unwrap_or_default(),
        (token, ..) => token.to_owned(),
    };
    let built = filters.states().and_then(|states| {
        Ok(pb::ListTransactionsRequest {
            states,
            kind: filters.kind()?,
            needs_attention: filters.needs_attention,
            page_size: filters.limit,
            page_token,
            min_age_ms: 0,
            group: filters.group.clone(),
            text,
        })
    });
    let message = match built {
        Ok(message) => message,
        Err(status) => return failure(status),
    };
    let answered = within(
        console
            .service
            .list_transactions(request(&headers, message)),
    )
    .await
    .map(|response| {
        response.map(|mut page| {
            let after = filters.after_ms;
            let passed = |txn: &pb::Transaction| {
                search.as_ref().is_some_and(|p| !p.within(&txn.id))
                    || (after > 0
                        && txn
                            .id
                            .parse::<crate::model::TxnId>()
                            .is_ok_and(|id| id.unix_ms() < after))
            };
            if page.transactions.iter().any(passed) {
                // Every later page is further past.
                page.next_page_token.clear();
            }
            page.transactions
                .retain(|txn| !passed(txn) && search.as_ref().is_none_or(|p| p.matches(&txn.id)));
            page
        })
    });
    answer(answered, json::page)
}

async fn transaction(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    // The page shows each payload's head to an operator holding the admin
    // token (or on a node that requires none), as the API does
    // (docs/security.md).
    let mut call = request(
        &headers,
        pb::GetTransactionRequest {
            transaction_id: id,
            include_payloads: false,
        },
    );
    call.get_mut().include_payloads = console
        .service
        .admits("GetTransaction with include_payloads", call.metadata())
        .is_ok();
    answer(within(console.service.get_transaction(call)).await, |txn| {
        json::transaction(&txn)
    })
}

/// The header the page sends with every change it asks for. A form on
/// another site cannot set it (nor send JSON without the browser asking
/// this server first, which says nothing), so no other page can make a
/// browser that is logged in here retry or resolve anything.
const FROM_THE_PAGE: &str = "x-concord-console";

/// The refusal of an operator action the console does not take: one not
/// from the page, or on a node without an admin token (read-only).
fn not_from_the_page(console: &Console, headers: &HeaderMap) -> Option<Response> {
    if !console.credentials.admin_required() {
        return Some(failure(tonic::Status::permission_denied(
            "this node has no admin token, so its console is read-only: start it with \
             --admin-token (or CONCORD_ADMIN_TOKEN) to retry and resolve here, or use \
             `concord txn retry` / `concord txn resolve`",
        )));
    }
    if headers.contains_key(FROM_THE_PAGE) {
        return None;
    }
    Some(failure(tonic::Status::permission_denied(format!(
        "send the {FROM_THE_PAGE} header: operator actions are taken from the console's own page"
    ))))
}

async fn retry(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(refused) = not_from_the_page(&console, &headers) {
        return refused;
    }
    let message = pb::RetryTransactionRequest { transaction_id: id };
    answer(
        within(
            console
                .service
                .retry_transaction(request(&headers, message)),
        )
        .await,
        |answer| {
            serde_json::json!({
                "retried": answer.retried,
                "state": json::state_name(answer.state),
            })
        },
    )
}

/// What the page's Resolve form sends.
#[derive(Debug, Deserialize)]
struct Resolve {
    branch: String,
    /// `committed`, `aborted` or `compensated`.
    outcome: String,
    reason: String,
    operator: String,
}

async fn resolve(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(form): Json<Resolve>,
) -> Response {
    if let Some(refused) = not_from_the_page(&console, &headers) {
        return refused;
    }
    let outcome = match form.outcome.as_str() {
        "committed" => pb::Resolution::Committed,
        "aborted" => pb::Resolution::Aborted,
        "compensated" => pb::Resolution::Compensated,
        _ => pb::Resolution::Unspecified,
    };
    let message = pb::ResolveBranchRequest {
        transaction_id: id,
        branch: form.branch,
        outcome: outcome as i32,
        reason: form.reason,
        operator: form.operator,
    };
    answer(
        within(console.service.resolve_branch(request(&headers, message))).await,
        |answer| serde_json::json!({ "state": json::state_name(answer.state) }),
    )
}

/// The live feed as server-sent events: each change an event whose id is
/// its cursor, so that the browser's automatic reconnect (`Last-Event-ID`)
/// resumes where it was; a watch that ended says so in an `end` event
/// before the stream closes, and the browser reconnects.
async fn changes(
    State(console): State<Arc<Console>>,
    headers: HeaderMap,
    Query(filters): Query<Filters>,
) -> Response {
    let resume = headers
        .get("last-event-id")
        .and_then(|value| value.to_str().ok())
        .filter(|value| !value.is_empty())
        .map(str::to_owned);
    let built = filters.states().and_then(|states| {
        Ok(pb::WatchTransactionsRequest {
            states,
            kind: filters.kind()?,
            needs_attention: filters.needs_attention,
            id_prefix: filters.id_prefix.clone(),
            cursor: resume.unwrap_or_else(|| filters.cursor.clone()),
            from_oldest: filters.from_oldest,
            group: filters.group.clone(),
            mark_start: false,
        })
    });
    let message = match built {
        Ok(message) => message,
        Err(status) => return failure(status),
    };
    let stream = match within(
        console
            .service
            .watch_transactions(request(&headers, message)),
    )
    .await
    {
        Ok(response) => response.into_inner(),
        Err(status) => return failure(status),
    };
    let events = stream
        .map(|item| {
            Ok::<_, std::convert::Infallible>(match item {
                Ok(change) => Event::default()
                    .id(change.cursor.clone())
                    .event("change")
                    .data(json::change(&change).to_string()),
                Err(status) => Event::default().event("end").data(
                    serde_json::json!({
                        "code": format!("{:?}", status.code()),
                        "message": status.message(),
                    })
                    .to_string(),
                ),
            })
        })
        .take_until(console.stop.clone().cancelled_owned());
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn chart(State(console): State<Arc<Console>>) -> Response {
    Json(console.stats.snapshot()).into_response()
}

/// Binds the console's listener (`--console-listen`), before the node
/// reports itself serving.
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}
