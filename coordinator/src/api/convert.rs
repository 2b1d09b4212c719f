//! Conversions between the coordinator's domain types and the wire types of
//! `concord.v1`, in one place rather than scattered through handlers.

use concord_proto::v1 as pb;

use crate::model::{
    BranchState, BranchView, Change, RequestDigest, Resolution, StepKind, StepStatus, StepView,
    TxnKind, TxnState, TxnView, VoteKind,
};
use crate::runtime::watch::WatchEnd;
use crate::runtime::{Error, Outcome};

pub fn state(state: TxnState) -> pb::TransactionState {
    match state {
        TxnState::Active => pb::TransactionState::Active,
        TxnState::Preparing => pb::TransactionState::Preparing,
        TxnState::Committing => pb::TransactionState::Committing,
        TxnState::Aborting => pb::TransactionState::Aborting,
        TxnState::Committed => pb::TransactionState::Committed,
        TxnState::Aborted => pb::TransactionState::Aborted,
        TxnState::Running => pb::TransactionState::Running,
        TxnState::Compensating => pb::TransactionState::Compensating,
        TxnState::Completed => pb::TransactionState::Completed,
        TxnState::Compensated => pb::TransactionState::Compensated,
        TxnState::Failed => pb::TransactionState::Failed,
        TxnState::Prepared => pb::TransactionState::Prepared,
        TxnState::Delivering => pb::TransactionState::Delivering,
        TxnState::Delivered => pb::TransactionState::Delivered,
        TxnState::Dropped => pb::TransactionState::Dropped,
    }
}

pub fn step_kind(kind: StepKind) -> pb::StepKind {
    match kind {
        StepKind::Compensatable => pb::StepKind::Compensatable,
        StepKind::Pivot => pb::StepKind::Pivot,
        StepKind::Retriable => pb::StepKind::Retriable,
    }
}

fn step_state(status: StepStatus) -> pb::StepState {
    match status {
        StepStatus::Pending => pb::StepState::Pending,
        StepStatus::Running => pb::StepState::Running,
        StepStatus::Succeeded => pb::StepState::Succeeded,
        StepStatus::Failed => pb::StepState::Failed,
        StepStatus::Unknown => pb::StepState::Unknown,
        StepStatus::Compensating => pb::StepState::Compensating,
        StepStatus::Compensated => pb::StepState::Compensated,
        StepStatus::Skipped => pb::StepState::Skipped,
    }
}

fn step(view: StepView) -> pb::Step {
    pb::Step {
        name: view.name,
        participant: view.participant,
        kind: step_kind(view.kind).into(),
        state: step_state(view.status).into(),
        depends_on: view.depends_on,
        attempts: view.attempts,
        compensation_attempts: view.compensation_attempts,
        last_error: view.last_error.unwrap_or_default(),
        action_bytes: view.action.bytes,
        action: view.action.head,
        compensation_bytes: view.compensation.bytes,
        compensation: view.compensation.head,
    }
}

/// A wire state as a domain state; None for UNSPECIFIED or unknown values.
pub fn state_from_wire(value: i32) -> Option<TxnState> {
    match pb::TransactionState::try_from(value).ok()? {
        pb::TransactionState::Unspecified => None,
        pb::TransactionState::Active => Some(TxnState::Active),
        pb::TransactionState::Preparing => Some(TxnState::Preparing),
        pb::TransactionState::Committing => Some(TxnState::Committing),
        pb::TransactionState::Aborting => Some(TxnState::Aborting),
        pb::TransactionState::Committed => Some(TxnState::Committed),
        pb::TransactionState::Aborted => Some(TxnState::Aborted),
        pb::TransactionState::Running => Some(TxnState::Running),
        pb::TransactionState::Compensating => Some(TxnState::Compensating),
        pb::TransactionState::Completed => Some(TxnState::Completed),
        pb::TransactionState::Compensated => Some(TxnState::Compensated),
        pb::TransactionState::Failed => Some(TxnState::Failed),
        pb::TransactionState::Prepared => Some(TxnState::Prepared),
        pb::TransactionState::Delivering => Some(TxnState::Delivering),
        pb::TransactionState::Delivered => Some(TxnState::Delivered),
        pb::TransactionState::Dropped => Some(TxnState::Dropped),
    }
}

fn branch_state(state: BranchState) -> pb::BranchState {
    match state {
        BranchState::Enlisted => pb::BranchState::Enlisted,
        BranchState::Preparing => pb::BranchState::Preparing,
        BranchState::Prepared => pb::BranchState::Prepared,
        BranchState::Committed => pb::BranchState::Committed,
        BranchState::Aborted => pb::BranchState::Aborted,
        BranchState::ReadOnly => pb::BranchState::ReadOnly,
        BranchState::Delivering => pb::BranchState::Delivering,
        BranchState::Delivered => pb::BranchState::Delivered,
    }
}

pub fn kind(kind: TxnKind) -> pb::TransactionKind {
    match kind {
        TxnKind::TwoPhase => pb::TransactionKind::TwoPhase,
        TxnKind::Saga => pb::TransactionKind::Saga,
        TxnKind::Message => pb::TransactionKind::Message,
    }
}

fn vote(vote: Option<VoteKind>) -> pb::Vote {
    match vote {
        None => pb::Vote::Unspecified,
        Some(VoteKind::Commit) => pb::Vote::Commit,
        Some(VoteKind::Abort) => pb::Vote::Abort,
        Some(VoteKind::ReadOnly) => pb::Vote::ReadOnly,
    }
}

pub fn outcome(outcome: &Outcome) -> pb::Outcome {
    match outcome {
        Outcome::Committed { .. } => pb::Outcome::Committed,
        Outcome::Aborted { .. } => pb::Outcome::Aborted,
    }
}

fn branch(view: BranchView) -> pb::Branch {
    pb::Branch {
        name: view.name,
        participant: view.participant,
        state: branch_state(view.state).into(),
        vote: vote(view.vote).into(),
        attempts: view.attempts,
        last_error: view.last_error.unwrap_or_default(),
        payload_bytes: view.payload.bytes,
        payload: view.payload.head,
    }
}

pub fn transaction(view: TxnView) -> pb::Transaction {
    pb::Transaction {
        id: view.id.to_string(),
        state: state(view.state).into(),
        created_at_ms: view.created_at_ms,
        decided_at_ms: view.decided_at_ms.unwrap_or(0),
        ended_at_ms: view.ended_at_ms.unwrap_or(0),
        deadline_ms: view.deadline_ms,
        reason: view.reason.unwrap_or_default(),
        idempotency_key: view.idempotency_key.unwrap_or_default(),
        description: view.description.unwrap_or_default(),
        read_only: view.read_only,
        branches: view.branches.into_iter().map(branch).collect(),
        branch_count: view.branch_count,
        kind: kind(view.kind).into(),
        steps: view.steps.into_iter().map(step).collect(),
        needs_attention: view.needs_attention,
        operator_actions: view
            .operator_actions
            .into_iter()
            .map(|action| pb::OperatorAction {
                branch: action.branch,
                outcome: resolution(action.outcome).into(),
                reason: action.reason,
                operator: action.operator,
                at_ms: action.at_ms,
            })
            .collect(),
        producer: view.producer.unwrap_or_default(),
        ordering_key: view.ordering_key.unwrap_or_default(),
        // Set by the API, which knows the shard map.
        group: String::new(),
        shard: 0,
    }
}

pub fn resolution(outcome: Resolution) -> pb::Resolution {
    match outcome {
        Resolution::Committed => pb::Resolution::Committed,
        Resolution::Aborted => pb::Resolution::Aborted,
        Resolution::Compensated => pb::Resolution::Compensated,
    }
}

/// R7: what a keyed Begin asked for (its timeout, description and
/// branches), not how it wants to be answered (`commit`,
/// `prepare_timeout_ms`: a Begin retried to also commit is the same
/// request). None without a key. The fields left out are set aside while
/// the rest is hashed, rather than the rest copied, payloads and all.
pub fn begin_digest(request: &mut pb::BeginRequest) -> Option<RequestDigest> {
    if request.idempotency_key.is_empty() {
        return None;
    }
    let key = std::mem::take(&mut request.idempotency_key);
    let commit = std::mem::take(&mut request.commit);
    let prepare_timeout_ms = std::mem::take(&mut request.prepare_timeout_ms);
    let digest = digest(&*request);
    request.idempotency_key = key;
    request.commit = commit;
    request.prepare_timeout_ms = prepare_timeout_ms;
    Some(digest)
}

/// R7: what a keyed SubmitSaga asked for (its steps and description), not
/// whether it waits for the end. None without a key.
pub fn saga_digest(request: &mut pb::SubmitSagaRequest) -> Option<RequestDigest> {
    if request.idempotency_key.is_empty() {
        return None;
    }
    let key = std::mem::take(&mut request.idempotency_key);
    let wait = std::mem::take(&mut request.wait);
    let digest = digest(&*request);
    request.idempotency_key = key;
    request.wait = wait;
    Some(digest)
}

/// What a keyed PrepareMessage asked for, as [`saga_digest`]: everything
/// but the key.
pub fn message_digest(request: &mut pb::PrepareMessageRequest) -> Option<RequestDigest> {
    if request.idempotency_key.is_empty() {
        return None;
    }
    let key = std::mem::take(&mut request.idempotency_key);
    let digest = digest(&*request);
    request.idempotency_key = key;
    Some(digest)
}

/// SHA-256 of the message's protobuf encoding, in hex. prost writes fields
/// in tag order and repeated fields in their order, so the same request
/// always has the same digest; a field added later is left out while it
/// holds its default, so older digests stay valid.
fn digest(message: &impl prost::Message) -> RequestDigest {
    use sha2::Digest as _;
    let hash = sha2::Sha256::digest(message.encode_to_vec());
    hash.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// One change of the log, as WatchTransactions streams it.
pub fn change(change: Change) -> pb::TransactionChange {
    pb::TransactionChange {
        transaction_id: change.id.to_string(),
        kind: kind(change.kind).into(),
        old_state: change
            .from
            .map_or(pb::TransactionState::Unspecified, state)
            .into(),
        new_state: state(change.to).into(),
        subject: change.subject,
        detail: change.detail,
        needs_attention: change.needs_attention,
        at_ms: change.at_ms,
        cursor: change.cursor.to_string(),
    }
}

use concord_proto::metadata::{RESUME_CURSOR, TRANSACTION_ID};

/// Why a watch ended, as the status that ends its stream, saying how to
/// resume without missing a change.
pub fn watch_end(end: WatchEnd) -> tonic::Status {
    let resume = end.resume();
    let how = match resume {
        Some(cursor) => format!("reconnect with cursor \"{cursor}\" to miss nothing"),
        None => "reconnect with from_oldest to miss nothing".to_owned(),
    };
    let message = format!("{end}; {how}");
    let mut status = match end {
        WatchEnd::FellBehind { .. } => tonic::Status::resource_exhausted(message),
        WatchEnd::ShuttingDown { .. } | WatchEnd::Store { .. } => {
            tonic::Status::unavailable(message)
        }
    };
    if let Some(cursor) = resume
        && let Ok(value) = cursor.to_string().parse()
    {
        status.metadata_mut().insert(RESUME_CURSOR, value);
    }
    status
}

/// UNAVAILABLE, with where to send the call in the `concord-owner` header.
fn owned_by(message: String, address: &str) -> tonic::Status {
    let mut status = tonic::Status::unavailable(message);
    if let Ok(owner) = address.parse() {
        status
            .metadata_mut()
            .insert(concord_proto::metadata::OWNER, owner);
    }
    status
}

/// Every runtime error as the one gRPC status that describes it.
pub fn status(error: Error) -> tonic::Status {
    let message = error.to_string();
    match error {
        Error::NotFound(_) => tonic::Status::not_found(message),
        Error::Rejected(_)
        | Error::Finished { .. }
        | Error::NotTwoPhase(_)
        | Error::NotAMessage(_)
        | Error::MessageDropped(_) => tonic::Status::failed_precondition(message),
        Error::BranchConflict { .. } => tonic::Status::already_exists(message),
        Error::KeyReused { id, .. } => {
            // The first transaction, named in the message and here for
            // programs (R7, as Stripe and the IETF Idempotency-Key draft
            // refuse a key reused with another body).
            let mut status = tonic::Status::already_exists(message);
            if let Ok(id) = id.to_string().parse() {
                status.metadata_mut().insert(TRANSACTION_ID, id);
            }
            status
        }
        Error::NoSuchBranch { .. } => tonic::Status::not_found(message),
        Error::CannotResolve(_) | Error::Sharding(_) => tonic::Status::failed_precondition(message),
        Error::TooManyBranches { .. } => tonic::Status::resource_exhausted(message),
        Error::TooManyInFlight { .. } => {
            let mut status = tonic::Status::resource_exhausted(message);
            // gRPC's retry pushback: a client that retries waits this long.
            status.metadata_mut().insert(
                "grpc-retry-pushback-ms",
                tonic::metadata::MetadataValue::from(200u32),
            );
            status
        }
        Error::Unavailable(_)
        | Error::ShuttingDown
        | Error::Draining
        | Error::Store(_)
        | Error::TakenOver(_) => tonic::Status::unavailable(message),
        Error::OwnedElsewhere { address, .. } => owned_by(message, &address),
        Error::OtherGroup { addresses, .. } => {
            owned_by(message, addresses.first().map_or("", String::as_str))
        }
    }
}

/// The shard map as the API shows it (DESIGN §11).
pub fn shard_map(map: &crate::shard::ShardMap) -> pb::ShardMap {
    map.to_wire()
}

/// A key handed over between groups, on the wire.
pub fn handed_key(key: crate::store::shards::HandedKey) -> pb::HandedKey {
    pb::HandedKey {
        idempotency_key: key.key,
        transaction_id: key.txn_id.to_string(),
        request_digest: key.request_digest.unwrap_or_default(),
    }
}
