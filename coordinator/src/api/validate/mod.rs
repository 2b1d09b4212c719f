//! Checks every request field before anything is touched. Each failure is an
//! INVALID_ARGUMENT that names the field, says what was wrong and what is
//! allowed, and changes nothing.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tonic::Status;

use concord_proto::v1 as pb;

use crate::model::{
    Cursor, Destination, RetryPolicy, SagaStepDef, StepKind, TxnId, TxnIdError, TxnKind, TxnState,
};
use crate::runtime::EnlistBranch;
use crate::runtime::{ShapeError, StepShape, check_shapes};

/// Limits on what a request may carry.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Bytes per branch payload or saga step payload (--max-payload-bytes).
    pub max_payload_bytes: usize,
    /// Steps per saga (--max-saga-steps).
    pub max_saga_steps: usize,
    /// WatchTransactions streams served at once (--max-watches).
    pub max_watches: usize,
    /// Calls on the Coordinator service in flight at once, every client's
    /// together (--max-calls).
    pub max_calls: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            max_saga_steps: 256,
            max_watches: DEFAULT_MAX_WATCHES,
            max_calls: DEFAULT_MAX_CALLS,
        }
    }
}

/// Watches one node serves at once by default: each is a stream, a
/// buffer of up to 1,024 changes and a share of the tailer's work.
pub const DEFAULT_MAX_WATCHES: usize = 1_024;

/// Calls one node serves at once by default (a watch counts only until its
/// stream starts): each is a handler's state, and far more than the
/// in-flight transactions a node can drive at its speed.
pub const DEFAULT_MAX_CALLS: usize = 10_000;

pub const DEFAULT_ATTEMPT_TIMEOUT_MS: u64 = 5_000;
pub const MAX_ATTEMPT_TIMEOUT_MS: u64 = 600_000;
pub const MAX_RETRY_DELAY_MS: u64 = 3_600_000;
pub const MAX_RETRY_ATTEMPTS: u32 = 1_000;
pub const MAX_RETRY_MULTIPLIER: f64 = 10.0;

pub const MIN_TXN_TIMEOUT_MS: u64 = 10;
pub const MAX_TXN_TIMEOUT_MS: u64 = 86_400_000;
pub const MAX_PREPARE_TIMEOUT_MS: u64 = 600_000;
pub const MAX_KEY_BYTES: usize = 128;
pub const MAX_TEXT_BYTES: usize = 256;
pub const MAX_ENDPOINT_BYTES: usize = 512;
pub const MAX_BRANCH_NAME_BYTES: usize = 128;
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

fn invalid(message: String) -> Status {
    Status::invalid_argument(message)
}

pub fn txn_id(field: &str, value: &str) -> Result<TxnId, Status> {
    value.parse().map_err(|error: TxnIdError| {
        let shown: String = value.chars().take(64).collect();
        match error {
            TxnIdError::Empty => invalid(format!("{field} is empty")),
            TxnIdError::Malformed => invalid(format!("{field} {shown:?} {error}")),
        }
    })
}

/// 0 means the default; otherwise within `min..=max` milliseconds.
pub fn optional_ms(
    field: &str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<Option<Duration>, Status> {
    if value == 0 {
        return Ok(None);
    }
    if !(min..=max).contains(&value) {
        return Err(invalid(format!(
            "{field} must be 0 (the default) or between {min} and {max} ms, got {value}"
        )));
    }
    Ok(Some(Duration::from_millis(value)))
}

pub fn idempotency_key(value: &str) -> Result<Option<String>, Status> {
    printable_key("idempotency_key", value)
}

/// A key a client chooses (an idempotency key, a message's ordering key):
/// empty for none, else 1 to [`MAX_KEY_BYTES`] bytes of printable ASCII.
pub fn printable_key(field: &str, value: &str) -> Result<Option<String>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_KEY_BYTES {
        return Err(invalid(format!(
            "{field} is {} bytes; at most {MAX_KEY_BYTES}",
            value.len()
        )));
    }
    if !value.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(invalid(format!(
            "{field} must be printable ASCII (0x20 to 0x7e)"
        )));
    }
    Ok(Some(value.to_owned()))
}

pub fn text(field: &str, value: &str) -> Result<Option<String>, Status> {
    if value.len() > MAX_TEXT_BYTES {
        return Err(invalid(format!(
            "{field} is {} bytes; at most {MAX_TEXT_BYTES}",
            value.len()
        )));
    }
    Ok((!value.is_empty()).then(|| value.to_owned()))
}

/// Text that must be given, at most `max` bytes.
pub fn required_text(field: &str, value: &str, max: usize) -> Result<String, Status> {
    if value.trim().is_empty() {
        return Err(invalid(format!("{field} is empty; it is required")));
    }
    if value.len() > max {
        return Err(invalid(format!(
            "{field} is {} bytes; at most {max}",
            value.len()
        )));
    }
    Ok(value.to_owned())
}

/// An absolute http:// or https:// URI with a host and a port (1 to
/// 65535), no user information, and no path beyond "/" nor query. The
/// port is required although a scheme implies one: a participant on port
/// 80 or 443 is rare, and a forgotten port is not (types.proto).
pub fn endpoint(field: &str, value: &str) -> Result<String, Status> {
    if value.is_empty() {
        return Err(invalid(format!(
            "{field} is empty; give the participant's URI, e.g. http://127.0.0.1:7501"
        )));
    }
    if value.len() > MAX_ENDPOINT_BYTES {
        return Err(invalid(format!(
            "{field} is {} bytes; at most {MAX_ENDPOINT_BYTES}",
            value.len()
        )));
    }
    let uri: tonic::codegen::http::Uri = value
        .parse()
        .map_err(|e| invalid(format!("{field} {value:?} is not a valid URI: {e}")))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => {
            return Err(invalid(format!(
                "{field} {value:?} must start with http:// or https://"
            )));
        }
    }
    let host = uri.host().unwrap_or_default();
    if host.is_empty() {
        return Err(invalid(format!("{field} {value:?} has no host")));
    }
    if let Some(refused) = never_dialled(host) {
        return Err(invalid(format!("{field} {value:?}: {refused}")));
    }
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        return Err(invalid(format!(
            "{field} {value:?} has user information (before '@'); name only host and port"
        )));
    }
    let Some(port) = uri.port() else {
        return Err(invalid(format!(
            "{field} {value:?} has no port; give the one the participant listens on, e.g. http://{host}:7501"
        )));
    };
    match port.as_str().parse::<u16>() {
        Ok(1..) => {}
        _ => {
            return Err(invalid(format!(
                "{field} {value:?} has port {}; a port is between 1 and 65535",
                port.as_str()
            )));
        }
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(invalid(format!(
            "{field} {value:?} must have no path or query: name the server, e.g. http://host:port"
        )));
    }
    Ok(value.trim_end_matches('/').to_owned())
}

/// Why the coordinator will never dial `host`, if it will not (DESIGN
/// §12): a caller must not make it reach what only the coordinator's own
/// host may reach (`runtime::dial`). Names are checked where they resolve,
/// as each connection is made.
fn never_dialled(host: &str) -> Option<&'static str> {
    let ip: std::net::IpAddr = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .parse()
        .ok()?;
    crate::runtime::dial::never_dialled(ip)
}

pub fn payload(limits: &Limits, value: &[u8]) -> Result<(), Status> {
    if value.len() > limits.max_payload_bytes {
        return Err(invalid(format!(
            "payload is {} bytes; the limit is {} (--max-payload-bytes)",
            value.len(),
            limits.max_payload_bytes
        )));
    }
    Ok(())
}

pub fn branch_name(value: &str) -> Result<Option<String>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    if value.len() > MAX_BRANCH_NAME_BYTES {
        return Err(invalid(format!(
            "branch is {} bytes; at most {MAX_BRANCH_NAME_BYTES}",
            value.len()
        )));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':');
    if !value.chars().all(allowed) {
        return Err(invalid(format!(
            "branch {value:?} may only hold letters, digits, '-', '_', '.' and ':'"
        )));
    }
    Ok(Some(value.to_owned()))
}

pub fn page_size(value: u32) -> Result<u32, Status> {
    match value {
        0 => Ok(DEFAULT_PAGE_SIZE),
        1..=MAX_PAGE_SIZE => Ok(value),
        _ => Err(invalid(format!(
            "page_size must be at most {MAX_PAGE_SIZE}, got {value}"
        ))),
    }
}

/// `min_age_ms` of ListTransactions: at most ten years; 0 means any age.
pub fn min_age_ms(value: u64) -> Result<Option<u64>, Status> {
    const TEN_YEARS_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
    match value {
        0 => Ok(None),
        1..=TEN_YEARS_MS => Ok(Some(value)),
        _ => Err(invalid(format!(
            "min_age_ms must be at most {TEN_YEARS_MS} (ten years), got {value}"
        ))),
    }
}

/// A listing's or a watch's state filter: every value a transaction state.
pub fn states(values: &[i32]) -> Result<Vec<TxnState>, Status> {
    values
        .iter()
        .map(|value| {
            super::convert::state_from_wire(*value).ok_or_else(|| {
                invalid(format!(
                    "states holds {value}, which is not a transaction state"
                ))
            })
        })
        .collect()
}

/// A listing's or a watch's kind filter; UNSPECIFIED means every kind.
pub fn kind(value: i32) -> Result<Option<TxnKind>, Status> {
    match pb::TransactionKind::try_from(value) {
        Ok(pb::TransactionKind::Unspecified) => Ok(None),
        Ok(pb::TransactionKind::TwoPhase) => Ok(Some(TxnKind::TwoPhase)),
        Ok(pb::TransactionKind::Saga) => Ok(Some(TxnKind::Saga)),
        Ok(pb::TransactionKind::Message) => Ok(Some(TxnKind::Message)),
        Err(_) => Err(invalid(format!(
            "kind is {value}, which is not a transaction kind"
        ))),
    }
}

/// A watch's `id_prefix`: the start of a canonical id (lowercase hex
/// digits and '-', at most 36 characters).
pub fn id_prefix(value: &str) -> Result<String, Status> {
    if value.len() > 36 {
        return Err(invalid(format!(
            "id_prefix is {} bytes; an id has 36",
            value.len()
        )));
    }
    if let Some(bad) = value
        .chars()
        .find(|c| !(c.is_ascii_digit() || ('a'..='f').contains(c) || *c == '-'))
    {
        return Err(invalid(format!(
            "id_prefix {value:?} holds {bad:?}; ids are lowercase hex digits and '-'"
        )));
    }
    Ok(value.to_owned())
}

/// A watch's `cursor`, as an earlier stream's TransactionChange gave it.
pub fn watch_cursor(value: &str) -> Result<Cursor, Status> {
    value
        .parse()
        .map_err(|error: String| invalid(format!("cursor: {error}")))
}

/// A watch of every group's `cursor` (DESIGN §11): each group it names is
/// in the map.
pub fn watch_positions(
    map: &crate::shard::ShardMap,
    value: &str,
) -> Result<super::everywhere::watch::Positions, Status> {
    let positions = super::everywhere::watch::Positions::parse(value)
        .map_err(|error| invalid(format!("cursor: {error}")))?;
    if let Some(unknown) = positions
        .groups()
        .find(|group| !map.groups.iter().any(|g| g.name == *group))
    {
        let shown: String = unknown.chars().take(64).collect();
        return Err(invalid(format!(
            "cursor: it names group {shown:?}, which the shard map does not have"
        )));
    }
    Ok(positions)
}

pub fn page_token(value: &str) -> Result<Option<TxnId>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    value
        .parse()
        .map(Some)
        .map_err(|_| invalid("page_token is not one this service issued".into()))
}

/// Checks the branches given with Begin, as Enlist would each one; names
/// must be unique within the request. Counted against `max_branches`
/// before any branch is looked at, and each name checked against the
/// others in constant time: a request's cost grows with its size, never
/// faster (a 200,000-branch Begin held a node for 46 s when the names were
/// compared pairwise first).
pub fn begin_branches(
    limits: &Limits,
    max_branches: usize,
    branches: Vec<pb::BranchSpec>,
) -> Result<Vec<EnlistBranch>, Status> {
    if branches.len() > max_branches {
        return Err(Status::resource_exhausted(format!(
            "Begin names {} branches; the limit is {max_branches} (--max-branches)",
            branches.len()
        )));
    }
    let mut named: HashSet<String> = HashSet::with_capacity(branches.len());
    let mut checked: Vec<EnlistBranch> = Vec::with_capacity(branches.len());
    for (idx, branch) in branches.into_iter().enumerate() {
        let participant = endpoint(&format!("branches[{idx}].participant"), &branch.participant)?;
        payload(limits, &branch.payload)
            .map_err(|s| invalid(format!("branches[{idx}].{}", s.message())))?;
        let name = branch_name(&branch.branch)
            .map_err(|s| invalid(format!("branches[{idx}].{}", s.message())))?;
        if let Some(name) = &name
            && !named.insert(name.clone())
        {
            return Err(invalid(format!(
                "branches[{idx}].branch {name:?} is given twice"
            )));
        }
        checked.push(EnlistBranch {
            participant,
            payload: branch.payload,
            name,
        });
    }
    Ok(checked)
}

pub const DEFAULT_CHECK_AFTER_MS: u64 = 5_000;
pub const MIN_CHECK_AFTER_MS: u64 = 1_000;
pub const MAX_CHECK_AFTER_MS: u64 = 86_400_000;

/// Checks a PrepareMessage (DESIGN §10): the producer's endpoint, 1 to
/// `max_destinations` destinations with unique names, the check-back's
/// delay, the ordering key. Every message names the field it is about.
pub fn prepare_message(
    limits: &Limits,
    max_destinations: usize,
    request: pb::PrepareMessageRequest,
) -> Result<crate::runtime::PrepareMessage, Status> {
    let producer = endpoint("producer", &request.producer)?;
    if request.destinations.is_empty() {
        return Err(invalid(
            "destinations is empty: a message needs at least one".into(),
        ));
    }
    if request.destinations.len() > max_destinations {
        return Err(invalid(format!(
            "the message has {} destinations; the limit is {max_destinations} (--max-branches)",
            request.destinations.len()
        )));
    }
    let mut destinations: Vec<Destination> = Vec::with_capacity(request.destinations.len());
    let mut named: HashMap<String, usize> = HashMap::with_capacity(request.destinations.len());
    for (idx, destination) in request.destinations.into_iter().enumerate() {
        let at = |status: Status| invalid(format!("destinations[{idx}].{}", status.message()));
        let name = branch_name(&destination.name)
            .map_err(|s| invalid(format!("destinations[{idx}].name: {}", s.message())))?
            .ok_or_else(|| {
                invalid(format!(
                    "destinations[{idx}].name is empty; every destination needs a name (its \
                     ledger key with the message id)"
                ))
            })?;
        if name == crate::runtime::message::PRODUCER {
            return Err(invalid(format!(
                "destinations[{idx}].name {name:?} is reserved: it names the message's producer \
                 (concord txn resolve --branch producer)"
            )));
        }
        if let Some(first) = named.insert(name.clone(), idx) {
            return Err(invalid(format!(
                "destination {name:?} is named twice (destinations[{first}] and \
                 destinations[{idx}])"
            )));
        }
        let participant = endpoint(
            &format!("destinations[{idx}].participant"),
            &destination.participant,
        )?;
        payload(limits, &destination.payload).map_err(at)?;
        destinations.push(Destination {
            name,
            participant,
            payload: destination.payload,
        });
    }
    let check_after = optional_ms(
        "check_after_ms",
        request.check_after_ms,
        MIN_CHECK_AFTER_MS,
        MAX_CHECK_AFTER_MS,
    )?
    .unwrap_or(Duration::from_millis(DEFAULT_CHECK_AFTER_MS));
    let ordering_key = printable_key("ordering_key", &request.ordering_key)?;
    Ok(crate::runtime::PrepareMessage {
        producer,
        destinations,
        check_after,
        ordering_key,
        idempotency_key: idempotency_key(&request.idempotency_key)?,
        request_digest: None,
        description: text("description", &request.description)?,
    })
}

/// Checks a saga's steps and turns them into definitions. Every message
/// names the step it is about.
pub fn saga_steps(limits: &Limits, steps: Vec<pb::SagaStep>) -> Result<Vec<SagaStepDef>, Status> {
    if steps.is_empty() {
        return Err(invalid(
            "steps is empty: a saga needs at least one step".into(),
        ));
    }
    if steps.len() > limits.max_saga_steps {
        return Err(invalid(format!(
            "the saga has {} steps; the limit is {} (--max-saga-steps)",
            steps.len(),
            limits.max_saga_steps
        )));
    }
    // Names first, so dependencies can be resolved and errors name steps.
    let mut names: Vec<String> = Vec::with_capacity(steps.len());
    let mut index: HashMap<String, usize> = HashMap::with_capacity(steps.len());
    for (idx, step) in steps.iter().enumerate() {
        let name = branch_name(&step.name)
            .map_err(|status| invalid(format!("steps[{idx}].name: {}", status.message())))?
            .ok_or_else(|| {
                invalid(format!(
                    "steps[{idx}].name is empty; every step needs a name"
                ))
            })?;
        if let Some(first) = index.insert(name.clone(), idx) {
            return Err(invalid(format!(
                "step {name:?} is declared twice (steps[{first}] and steps[{idx}])"
            )));
        }
        // A step depends on other steps, each once at most: a longer list
        // is refused before any name of it is looked up.
        if let Some(deps) = &step.depends_on
            && deps.steps.len() > steps.len()
        {
            return Err(invalid(format!(
                "step {name:?} depends on {} steps; the saga has {}",
                deps.steps.len(),
                steps.len()
            )));
        }
        names.push(name);
    }
    let mut defs = Vec::with_capacity(steps.len());
    for (idx, (step, name)) in steps.into_iter().zip(names.iter()).enumerate() {
        let at = |message: String| invalid(format!("step {name:?}: {message}"));
        let participant =
            endpoint("participant", &step.participant).map_err(|s| at(s.message().into()))?;
        payload(limits, &step.action).map_err(|s| at(format!("action {}", s.message())))?;
        if let Some(compensation) = &step.compensation {
            payload(limits, compensation)
                .map_err(|s| at(format!("compensation {}", s.message())))?;
        }
        let kind = match pb::StepKind::try_from(step.kind) {
            Ok(pb::StepKind::Unspecified | pb::StepKind::Compensatable) => StepKind::Compensatable,
            Ok(pb::StepKind::Pivot) => StepKind::Pivot,
            Ok(pb::StepKind::Retriable) => StepKind::Retriable,
            Err(_) => return Err(at(format!("kind {} is not a step kind", step.kind))),
        };
        match (kind, step.compensation.is_some()) {
            (StepKind::Compensatable, false) => {
                return Err(at("a compensatable step needs a compensation".into()));
            }
            (StepKind::Pivot | StepKind::Retriable, true) => {
                return Err(at("only compensatable steps have a compensation".into()));
            }
            _ => {}
        }
        let depends_on = match step.depends_on {
            None => idx.checked_sub(1).into_iter().collect(),
            Some(deps) => {
                let mut resolved = Vec::with_capacity(deps.steps.len());
                let mut seen = HashSet::with_capacity(deps.steps.len());
                for dep in &deps.steps {
                    let Some(&pos) = index.get(dep) else {
                        return Err(at(format!(
                            "depends on {dep:?}, which is not a step of this saga"
                        )));
                    };
                    if seen.insert(pos) {
                        resolved.push(pos);
                    }
                }
                resolved
            }
        };
        let attempt_timeout = optional_ms(
            "attempt_timeout_ms",
            step.attempt_timeout_ms,
            1,
            MAX_ATTEMPT_TIMEOUT_MS,
        )
        .map_err(|s| at(s.message().into()))?
        .unwrap_or(Duration::from_millis(DEFAULT_ATTEMPT_TIMEOUT_MS));
        let retry =
            retry_policy(step.retry.unwrap_or_default()).map_err(|s| at(s.message().into()))?;
        defs.push(SagaStepDef {
            name: name.clone(),
            participant,
            kind,
            action: step.action,
            compensation: step.compensation,
            depends_on,
            attempt_timeout,
            retry,
        });
    }
    let shapes: Vec<StepShape> = defs
        .iter()
        .map(|d| StepShape {
            kind: d.kind,
            depends_on: d.depends_on.clone(),
        })
        .collect();
    check_shapes(&shapes).map_err(|error| {
        let name = |idx: &usize| names.get(*idx).map(String::as_str).unwrap_or("?");
        invalid(match error {
            ShapeError::UnknownDependency { step, dep } => {
                format!("step {:?} depends on step #{dep}, which does not exist", name(&step))
            }
            ShapeError::SelfDependency(step) => format!("step {:?} depends on itself", name(&step)),
            ShapeError::Cycle(step) => format!("the steps form a cycle through step {:?}", name(&step)),
            ShapeError::TwoPivots(a, b) => format!(
                "steps {:?} and {:?} are both pivots; a saga has at most one",
                name(&a),
                name(&b)
            ),
            ShapeError::PivotBeforeCompensatable { pivot, step } => format!(
                "pivot step {:?} must come after compensatable step {:?} (depend on it, directly or not)",
                name(&pivot),
                name(&step)
            ),
            ShapeError::RetriableTooEarly { retriable, step } => format!(
                "retriable step {:?} must come after step {:?} (depend on it, directly or not)",
                name(&retriable),
                name(&step)
            ),
        })
    })?;
    Ok(defs)
}

fn retry_policy(policy: pb::RetryPolicy) -> Result<RetryPolicy, Status> {
    let defaults = RetryPolicy::default();
    let initial_delay = optional_ms(
        "retry.initial_delay_ms",
        policy.initial_delay_ms,
        1,
        MAX_RETRY_DELAY_MS,
    )?
    .unwrap_or(defaults.initial_delay);
    let multiplier = if policy.multiplier == 0.0 {
        defaults.multiplier
    } else if (1.0..=MAX_RETRY_MULTIPLIER).contains(&policy.multiplier) {
        policy.multiplier
    } else {
        return Err(invalid(format!(
            "retry.multiplier must be 0 (the default) or between 1.0 and {MAX_RETRY_MULTIPLIER}, got {}",
            policy.multiplier
        )));
    };
    let min_cap = u64::try_from(initial_delay.as_millis()).unwrap_or(u64::MAX);
    let max_delay = match policy.max_delay_ms {
        0 => defaults.max_delay.max(initial_delay),
        ms if (min_cap..=MAX_RETRY_DELAY_MS).contains(&ms) => Duration::from_millis(ms),
        ms => {
            return Err(invalid(format!(
                "retry.max_delay_ms must be 0 (the default) or between retry.initial_delay_ms ({min_cap}) and {MAX_RETRY_DELAY_MS}, got {ms}"
            )));
        }
    };
    let max_attempts = match policy.max_attempts {
        0 => defaults.max_attempts,
        n if n <= MAX_RETRY_ATTEMPTS => n,
        n => {
            return Err(invalid(format!(
                "retry.max_attempts must be at most {MAX_RETRY_ATTEMPTS}, got {n}"
            )));
        }
    };
    Ok(RetryPolicy {
        initial_delay,
        multiplier,
        max_delay,
        max_attempts,
        jitter: !policy.disable_jitter,
    })
}

/// A shard map sent to be written (PutShardMap): every field in range; the
/// map's own rules (switch times, groups) are the runtime's to check.
pub fn shard_map(map: Option<pb::ShardMap>) -> Result<crate::shard::ShardMap, Status> {
    let map = map.ok_or_else(|| invalid("map is required".into()))?;
    let map = crate::shard::ShardMap::from_wire(map).map_err(|e| invalid(format!("map: {e}")))?;
    for group in &map.groups {
        for node in &group.nodes {
            endpoint("map.groups.nodes", node)?;
        }
    }
    Ok(map)
}

/// A listing's text search: None when empty; at most 256 bytes.
/// Control characters are refused: no description or endpoint holds one,
/// and PostgreSQL refuses a NUL outright.
pub fn search_text(value: &str) -> Result<Option<String>, Status> {
    if value.chars().any(char::is_control) {
        return Err(Status::invalid_argument(
            "text holds a control character: give printable text",
        ));
    }
    match value.len() {
        0 => Ok(None),
        1..=MAX_SEARCH_TEXT_BYTES => Ok(Some(value.to_owned())),
        len => Err(Status::invalid_argument(format!(
            "text is {len} bytes; at most {MAX_SEARCH_TEXT_BYTES}"
        ))),
    }
}

/// The longest text a listing looks for.
pub const MAX_SEARCH_TEXT_BYTES: usize = 256;

/// The group a listing is restricted to: empty for every group, else a
/// group of this node's map (or, on a node without one, refused).
pub fn group<'a>(
    sharding: Option<&crate::runtime::groups::Sharding>,
    value: &'a str,
) -> Result<Option<&'a str>, Status> {
    if value.is_empty() {
        return Ok(None);
    }
    let shown: String = value.chars().take(64).collect();
    let Some(sharding) = sharding else {
        return Err(Status::failed_precondition(format!(
            "group is {shown:?}, but this coordinator has no shard map: it has no \
             groups and lists all its transactions; leave group empty"
        )));
    };
    if !sharding.map.groups.iter().any(|g| g.name == value) {
        let known: Vec<&str> = sharding
            .map
            .groups
            .iter()
            .map(|g| g.name.as_str())
            .collect();
        return Err(invalid(format!(
            "group {shown:?} is not in the shard map (its groups: {})",
            known.join(", ")
        )));
    }
    Ok(Some(value))
}

/// A shard number of a request about one shard: below the map's count is
/// the runtime's to check.
pub fn shard(value: u32) -> Result<crate::shard::Shard, Status> {
    u16::try_from(value)
        .ok()
        .filter(|n| *n < crate::shard::MAX_SHARDS)
        .map(crate::shard::Shard)
        .ok_or_else(|| {
            invalid(format!(
                "shard is {value}; at most {}",
                crate::shard::MAX_SHARDS - 1
            ))
        })
}

/// Keys handed over from one group to another (AdoptShardKeys).
pub fn handed_keys(
    keys: Vec<pb::HandedKey>,
) -> Result<Vec<crate::store::shards::HandedKey>, Status> {
    if keys.len() > 10_000 {
        return Err(invalid(format!(
            "keys holds {}; at most 10 000 a call",
            keys.len()
        )));
    }
    keys.into_iter()
        .map(|k| {
            let key = idempotency_key(&k.idempotency_key)?
                .ok_or_else(|| invalid("keys.idempotency_key is empty".into()))?;
            Ok(crate::store::shards::HandedKey {
                key,
                txn_id: txn_id("keys.transaction_id", &k.transaction_id)?,
                request_digest: text("keys.request_digest", &k.request_digest)?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests;
