//! The coordinator's nouns, shared by the runtime, the store and the API:
//! transaction ids, states, and the stored picture of a transaction and its
//! branches. Wire conversions live in `api::convert`, not here.

use std::fmt;
use std::str::FromStr;

use concord_shard::ShardedId;
use uuid::Uuid;

pub use crate::protocol::message::Via as MessageVia;
pub use crate::protocol::saga::{StepKind, StepStatus};

/// Ids as people type them (`concord txn`, the console's search): a whole
/// id in any case, a prefix of one, or the console's short form, a prefix
/// and an ending (`01a2525d…0dd3`, or `...`). Ids are time-ordered and
/// listed newest first below a page token, so the ids a pattern matches
/// are the first ones listed below [`IdPattern::upper_bound`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdPattern {
    /// Hex digits the id begins with (no dashes, lowercase).
    head: String,
    /// Hex digits it ends with.
    tail: String,
}

impl IdPattern {
    /// Reads `text`; at least 4 leading digits, so that a pattern never
    /// asks for every id.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim().to_ascii_lowercase();
        let (head, tail) = text
            .split_once('…')
            .or_else(|| text.split_once("..."))
            .unwrap_or((&text, ""));
        let digits = |part: &str| -> Option<String> {
            let hex: String = part.chars().filter(|c| *c != '-').collect();
            hex.chars().all(|c| c.is_ascii_hexdigit()).then_some(hex)
        };
        let (Some(head), Some(tail)) = (digits(head), digits(tail)) else {
            return Err(format!(
                "{text:?} is not a transaction id (hex digits and dashes, as ids are printed)"
            ));
        };
        if head.len() < 4 || head.len() + tail.len() > 32 {
            return Err(format!(
                "{text:?} is not a transaction id nor enough of one: give at least its first 4 \
                 digits"
            ));
        }
        Ok(Self { head, tail })
    }

    /// The whole id (hyphenated, lowercase), when the pattern is one.
    pub fn whole(&self) -> Option<String> {
        (self.head.len() == 32)
            .then(|| Uuid::parse_str(&self.head).ok())
            .flatten()
            .map(|id| id.hyphenated().to_string())
    }

    /// The highest id the pattern could match, as a page token: every id it
    /// matches but this one lists below it (one in 2^74 of a prefix's ids).
    pub fn upper_bound(&self) -> String {
        let digits = format!("{:f<32}", self.head);
        Uuid::parse_str(&digits)
            .map(|id| id.hyphenated().to_string())
            .unwrap_or_default()
    }

    /// Whether `id` begins with the pattern's head (the ids below the
    /// upper bound that do not have passed it: no later one will).
    pub fn within(&self, id: &str) -> bool {
        id.replace('-', "")
            .to_ascii_lowercase()
            .starts_with(&self.head)
    }

    /// Whether `id` matches: its head and its ending.
    pub fn matches(&self, id: &str) -> bool {
        let hex = id.replace('-', "").to_ascii_lowercase();
        hex.starts_with(&self.head) && hex.ends_with(&self.tail)
    }
}

/// A transaction id: a UUIDv7, so ids sort by creation time (R7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TxnId(Uuid);

impl TxnId {
    /// Mints a new time-ordered id.
    pub fn mint() -> Self {
        Self(Uuid::now_v7())
    }

    /// The UUIDv7 for `unix_ms` whose random bits are `sequence`: ids made
    /// with a rising sequence sort in that order. For clocks that must be
    /// deterministic (simulation).
    pub fn from_parts(unix_ms: u64, sequence: u64) -> Self {
        let mut random = [0u8; 10];
        random[2..].copy_from_slice(&sequence.to_be_bytes());
        Self(uuid::Builder::from_unix_timestamp_millis(unix_ms, &random).into_uuid())
    }
}

impl TxnId {
    /// The millisecond the id was minted at (UUIDv7's timestamp).
    pub fn unix_ms(&self) -> u64 {
        self.0.unix_ms()
    }

    /// The 12 bits after the version (UUIDv7's `rand_a`): random in an id
    /// minted alone, a shard number in a sharded deployment (DESIGN §11).
    pub fn rand_a(&self) -> u16 {
        self.0.rand_a()
    }

    /// This id with `bits` (their low 12) as its `rand_a`.
    pub fn with_rand_a(self, bits: u16) -> Self {
        Self(self.0.with_rand_a(bits))
    }
}

impl ShardedId for TxnId {
    fn unix_ms(&self) -> u64 {
        TxnId::unix_ms(self)
    }

    fn rand_a(&self) -> u16 {
        TxnId::rand_a(self)
    }

    fn with_rand_a(self, bits: u16) -> Self {
        TxnId::with_rand_a(self, bits)
    }
}

impl fmt::Display for TxnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

/// Why a string is not a transaction id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TxnIdError {
    #[error("is empty")]
    Empty,
    #[error("is not a UUID in canonical form (36 characters, lowercase hex with hyphens)")]
    Malformed,
}

impl FromStr for TxnId {
    type Err = TxnIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() {
            return Err(TxnIdError::Empty);
        }
        // Only the canonical form, so one transaction has one spelling (ids
        // are keys in participants' ledgers too).
        let uuid = Uuid::try_parse(s).map_err(|_| TxnIdError::Malformed)?;
        if uuid.hyphenated().to_string() != s {
            return Err(TxnIdError::Malformed);
        }
        Ok(Self(uuid))
    }
}

/// A transaction's state as operators and clients see it. The first six
/// are 2PC's, the next five a saga's, the last four a message's (DESIGN
/// §10).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnState {
    Active,
    Preparing,
    Committing,
    Aborting,
    Committed,
    Aborted,
    Running,
    Compensating,
    Completed,
    Compensated,
    Failed,
    Prepared,
    Delivering,
    Delivered,
    Dropped,
}

impl TxnState {
    pub const ALL: [TxnState; 15] = [
        TxnState::Active,
        TxnState::Preparing,
        TxnState::Committing,
        TxnState::Aborting,
        TxnState::Committed,
        TxnState::Aborted,
        TxnState::Running,
        TxnState::Compensating,
        TxnState::Completed,
        TxnState::Compensated,
        TxnState::Failed,
        TxnState::Prepared,
        TxnState::Delivering,
        TxnState::Delivered,
        TxnState::Dropped,
    ];

    /// The name used in the store.
    pub fn as_str(self) -> &'static str {
        match self {
            TxnState::Active => "active",
            TxnState::Preparing => "preparing",
            TxnState::Committing => "committing",
            TxnState::Aborting => "aborting",
            TxnState::Committed => "committed",
            TxnState::Aborted => "aborted",
            TxnState::Running => "running",
            TxnState::Compensating => "compensating",
            TxnState::Completed => "completed",
            TxnState::Compensated => "compensated",
            TxnState::Failed => "failed",
            TxnState::Prepared => "prepared",
            TxnState::Delivering => "delivering",
            TxnState::Delivered => "delivered",
            TxnState::Dropped => "dropped",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|state| state.as_str() == s)
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TxnState::Committed
                | TxnState::Aborted
                | TxnState::Completed
                | TxnState::Compensated
                | TxnState::Failed
                | TxnState::Delivered
                | TxnState::Dropped
        )
    }
}

/// Two-phase commit, saga, or transactional message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnKind {
    TwoPhase,
    Saga,
    Message,
}

impl TxnKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TxnKind::TwoPhase => "two_phase",
            TxnKind::Saga => "saga",
            TxnKind::Message => "message",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "two_phase" => Some(TxnKind::TwoPhase),
            "saga" => Some(TxnKind::Saga),
            "message" => Some(TxnKind::Message),
            _ => None,
        }
    }
}

pub fn step_kind_str(kind: StepKind) -> &'static str {
    match kind {
        StepKind::Compensatable => "compensatable",
        StepKind::Pivot => "pivot",
        StepKind::Retriable => "retriable",
    }
}

pub fn parse_step_kind(s: &str) -> Option<StepKind> {
    [
        StepKind::Compensatable,
        StepKind::Pivot,
        StepKind::Retriable,
    ]
    .into_iter()
    .find(|kind| step_kind_str(*kind) == s)
}

pub fn step_status_str(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Pending => "pending",
        StepStatus::Running => "running",
        StepStatus::Succeeded => "succeeded",
        StepStatus::Failed => "failed",
        StepStatus::Unknown => "unknown",
        StepStatus::Compensating => "compensating",
        StepStatus::Compensated => "compensated",
        StepStatus::Skipped => "skipped",
    }
}

pub fn parse_step_status(s: &str) -> Option<StepStatus> {
    [
        StepStatus::Pending,
        StepStatus::Running,
        StepStatus::Succeeded,
        StepStatus::Failed,
        StepStatus::Unknown,
        StepStatus::Compensating,
        StepStatus::Compensated,
        StepStatus::Skipped,
    ]
    .into_iter()
    .find(|status| step_status_str(*status) == s)
}

/// How a saga step's calls are retried.
#[derive(Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    pub initial_delay: std::time::Duration,
    pub multiplier: f64,
    pub max_delay: std::time::Duration,
    /// Attempts before a compensatable action counts as unknown, or before
    /// anything else is flagged NEEDS_ATTENTION.
    pub max_attempts: u32,
    pub jitter: bool,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            initial_delay: std::time::Duration::from_millis(100),
            multiplier: 2.0,
            max_delay: std::time::Duration::from_secs(10),
            max_attempts: 5,
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// The delays between attempts: exponential, capped, jittered if asked,
    /// never ending (the caller counts attempts).
    pub fn delays(&self) -> impl Iterator<Item = std::time::Duration> + use<> {
        use backon::BackoffBuilder;
        let mut builder = backon::ExponentialBuilder::default()
            .with_min_delay(self.initial_delay)
            .with_factor(self.multiplier as f32)
            .with_max_delay(self.max_delay)
            .without_max_times();
        if self.jitter {
            builder = builder.with_jitter();
        }
        builder.build()
    }
}

/// One saga step as submitted and stored.
#[derive(Clone, Debug, PartialEq)]
pub struct SagaStepDef {
    pub name: String,
    pub participant: String,
    pub kind: StepKind,
    pub action: Vec<u8>,
    pub compensation: Option<Vec<u8>>,
    pub depends_on: Vec<usize>,
    pub attempt_timeout: std::time::Duration,
    pub retry: RetryPolicy,
}

/// One saga step as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepView {
    pub name: String,
    pub participant: String,
    pub kind: StepKind,
    pub status: StepStatus,
    pub depends_on: Vec<String>,
    pub attempts: u32,
    pub compensation_attempts: u32,
    pub last_error: Option<String>,
    /// What the action is sent, and its compensation (empty without one).
    pub action: Preview,
    pub compensation: Preview,
}

/// A payload as an operator may see it: its size and its first
/// [`Preview::LIMIT`] bytes (GetTransaction's `include_payloads`). The
/// coordinator never interprets payloads; a view keeps only this much of
/// one so reading a transaction of large payloads stays cheap.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preview {
    /// The whole payload's size in bytes.
    pub bytes: u64,
    /// Its first [`Preview::LIMIT`] bytes.
    pub head: Vec<u8>,
}

/// A payload's head as an operator reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readable {
    /// UTF-8 (a character cut at the end of the head left out).
    Text(String),
    /// Anything else, as lowercase hex.
    Hex(String),
}

impl Readable {
    /// `head`, the first bytes of a payload of `bytes` bytes.
    pub fn of(head: &[u8], bytes: u64) -> Readable {
        let cut_short = (head.len() as u64) < bytes;
        match std::str::from_utf8(head) {
            Ok(text) => Readable::Text(text.to_owned()),
            // Only the last character, cut where the head ends, is
            // incomplete: text all the same. A whole payload that ends so
            // is not text.
            Err(cut)
                if cut_short && cut.error_len().is_none() && head.len() - cut.valid_up_to() < 4 =>
            {
                Readable::Text(String::from_utf8_lossy(&head[..cut.valid_up_to()]).into_owned())
            }
            Err(_) => Readable::Hex(head.iter().map(|b| format!("{b:02x}")).collect()),
        }
    }
}

impl Preview {
    /// How much of a payload a view keeps: 4 KiB.
    pub const LIMIT: usize = 4096;

    pub fn of(payload: &[u8]) -> Preview {
        Preview {
            bytes: payload.len() as u64,
            head: payload[..payload.len().min(Self::LIMIT)].to_vec(),
        }
    }
}

/// A branch's state as operators see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchState {
    Enlisted,
    Preparing,
    Prepared,
    Committed,
    Aborted,
    ReadOnly,
    Delivering,
    /// A message's destination acknowledged its delivery.
    Delivered,
}

impl BranchState {
    pub fn as_str(self) -> &'static str {
        match self {
            BranchState::Enlisted => "enlisted",
            BranchState::Preparing => "preparing",
            BranchState::Prepared => "prepared",
            BranchState::Committed => "committed",
            BranchState::Aborted => "aborted",
            BranchState::ReadOnly => "read_only",
            BranchState::Delivering => "delivering",
            BranchState::Delivered => "delivered",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            BranchState::Enlisted,
            BranchState::Preparing,
            BranchState::Prepared,
            BranchState::Committed,
            BranchState::Aborted,
            BranchState::ReadOnly,
            BranchState::Delivering,
            BranchState::Delivered,
        ]
        .into_iter()
        .find(|state| state.as_str() == s)
    }
}

/// A participant's vote, as recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VoteKind {
    Commit,
    Abort,
    ReadOnly,
}

impl VoteKind {
    pub fn as_str(self) -> &'static str {
        match self {
            VoteKind::Commit => "commit",
            VoteKind::Abort => "abort",
            VoteKind::ReadOnly => "read_only",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "commit" => Some(VoteKind::Commit),
            "abort" => Some(VoteKind::Abort),
            "read_only" => Some(VoteKind::ReadOnly),
            _ => None,
        }
    }
}

/// What an operator established happened at a participant that cannot
/// answer (`concord txn resolve`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Resolution {
    /// A 2PC branch committed (the transaction decided COMMIT), or a saga
    /// step's action completed.
    Committed,
    /// A 2PC branch aborted (the transaction decided ABORT).
    Aborted,
    /// A saga step's compensation completed.
    Compensated,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Committed => "committed",
            Resolution::Aborted => "aborted",
            Resolution::Compensated => "compensated",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "committed" => Some(Resolution::Committed),
            "aborted" => Some(Resolution::Aborted),
            "compensated" => Some(Resolution::Compensated),
            _ => None,
        }
    }
}

/// An operator's decision for one branch or step, recorded durably and
/// shown with the transaction forever after.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OperatorAction {
    /// The branch (2PC) or step (saga) name.
    pub branch: String,
    pub outcome: Resolution,
    pub reason: String,
    /// Who: the name the operator gave.
    pub operator: String,
    pub at_ms: u64,
}

/// One branch as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BranchView {
    pub name: String,
    pub participant: String,
    pub state: BranchState,
    pub vote: Option<VoteKind>,
    pub attempts: u32,
    pub last_error: Option<String>,
    pub payload: Preview,
}

/// The SHA-256 (hex) of what a Begin or SubmitSaga asked for, less its
/// idempotency key and how it wanted to be answered: two requests with the
/// same key and different digests are different requests (R7), and the
/// second is refused (docs/decisions.md, "Idempotency keys").
pub type RequestDigest = String;

/// One transaction as the coordinator knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TxnView {
    pub id: TxnId,
    pub kind: TxnKind,
    pub state: TxnState,
    pub created_at_ms: u64,
    pub deadline_ms: u64,
    pub decided_at_ms: Option<u64>,
    pub ended_at_ms: Option<u64>,
    pub reason: Option<String>,
    pub idempotency_key: Option<String>,
    /// With a key: the digest of the request the key was first used with
    /// ([`RequestDigest`]); None without a key, or from a log written
    /// before digests were kept.
    pub request_digest: Option<RequestDigest>,
    pub description: Option<String>,
    pub read_only: bool,
    pub branch_count: u32,
    /// Empty in listings.
    pub branches: Vec<BranchView>,
    /// A saga's steps; empty in listings and for 2PC.
    pub steps: Vec<StepView>,
    pub needs_attention: bool,
    /// Operators' decisions for branches or steps, oldest first. Empty in
    /// listings.
    pub operator_actions: Vec<OperatorAction>,
    /// A message's producer endpoint (the check-back's address); None for
    /// other kinds.
    pub producer: Option<String>,
    /// A message's ordering key (M5), if it has one.
    pub ordering_key: Option<String>,
}

impl TxnView {
    /// Whether its description, its producer or a branch's, destination's
    /// or step's endpoint contains `text`, regardless of ASCII case: the
    /// text search of ListTransactions (the SQL stores say the same in
    /// `store::reads`). Needs the view with its branches and steps.
    pub fn mentions(&self, text: &str) -> bool {
        any_mentions(
            (self.description.iter().chain(&self.producer))
                .map(String::as_str)
                .chain(
                    self.branches
                        .iter()
                        .map(|branch| branch.participant.as_str()),
                )
                .chain(self.steps.iter().map(|step| step.participant.as_str())),
            text,
        )
    }
}

/// Whether any of `fields` contains `text`, regardless of ASCII case: the
/// rule of ListTransactions' text, for views and for transactions in
/// memory alike.
pub fn any_mentions<'a>(fields: impl IntoIterator<Item = &'a str>, text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    fields
        .into_iter()
        .any(|field| field.to_ascii_lowercase().contains(&text))
}

/// The reason a message's decision is recorded with: how its producer's
/// local transaction was found committed.
pub fn message_via_str(via: MessageVia) -> &'static str {
    match via {
        MessageVia::Submit => "submitted by the producer",
        MessageVia::CheckBack => "confirmed by a check-back: the producer's outbox row is there",
        MessageVia::Operator => "resolved committed by an operator (concord txn resolve)",
    }
}

/// One destination of a transactional message, as prepared and stored (a
/// branch row: DESIGN §10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    pub name: String,
    pub participant: String,
    pub payload: Vec<u8>,
}

/// A place in the log's change feed (WatchTransactions): a reader that has
/// seen the change at a cursor has seen every change before it. Ordered by
/// `epoch`, then `seq`: `epoch` is the writing database transaction's id on
/// PostgreSQL (whose sequence alone does not follow commit order when
/// several nodes write) and 0 on the single-writer backends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Cursor {
    pub epoch: u64,
    pub seq: u64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

impl FromStr for Cursor {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let malformed = || format!("{s:?} is not a cursor from a TransactionChange");
        let (epoch, seq) = s.split_once('-').ok_or_else(malformed)?;
        let number = |part: &str| {
            // Digits only: u64's parser would also take a leading '+'.
            if part.is_empty() || part.len() > 20 || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(malformed());
            }
            part.parse::<u64>().map_err(|_| malformed())
        };
        Ok(Self {
            epoch: number(epoch)?,
            seq: number(seq)?,
        })
    }
}

/// One change the log recorded: a transaction's state, a saga step's
/// status, the NEEDS_ATTENTION flag raised, or an operator's action.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Change {
    pub cursor: Cursor,
    pub id: TxnId,
    pub kind: TxnKind,
    /// None when the transaction is new.
    pub from: Option<TxnState>,
    /// The transaction's state after the change (the same as `from` for a
    /// step, a flag or an operator action).
    pub to: TxnState,
    /// The saga step or branch concerned; empty for the transaction itself.
    pub subject: String,
    /// A step's new status, an abort's reason, "needs attention", or the
    /// operator's action.
    pub detail: String,
    pub needs_attention: bool,
    pub at_ms: u64,
}

/// Milliseconds since the Unix epoch, from the system clock. Only the runtime
/// and the API call this: the protocol never reads a clock.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_only_canonical_forms_parse() {
        let id = TxnId::mint();
        assert_eq!(id.to_string().parse::<TxnId>(), Ok(id));
        assert_eq!("".parse::<TxnId>(), Err(TxnIdError::Empty));
        assert_eq!("nope".parse::<TxnId>(), Err(TxnIdError::Malformed));
        let upper = id.to_string().to_uppercase();
        assert_eq!(upper.parse::<TxnId>(), Err(TxnIdError::Malformed));
        let simple = id.to_string().replace('-', "");
        assert_eq!(simple.parse::<TxnId>(), Err(TxnIdError::Malformed));
    }

    #[test]
    fn cursors_round_trip_and_only_their_own_form_parses() {
        let cursor = Cursor {
            epoch: 7_123,
            seq: 42,
        };
        assert_eq!(cursor.to_string().parse::<Cursor>(), Ok(cursor));
        for bad in [
            "",
            "42",
            "-42",
            "1-",
            "+1-2",
            "1-2-3",
            "a-1",
            "99999999999999999999-1",
        ] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad:?}");
        }
        assert!(Cursor { epoch: 1, seq: 0 } > Cursor { epoch: 0, seq: 9 });
    }

    #[test]
    fn minted_ids_are_time_ordered() {
        let a = TxnId::mint();
        let b = TxnId::mint();
        assert!(a < b);
        assert!(a.to_string() < b.to_string());
    }
}

#[cfg(test)]
mod id_pattern_tests {
    use super::*;

    #[test]
    fn ids_are_found_as_people_type_them() {
        let id = "01a2525d-5e1f-7c44-9a8b-2f3e4d5c6b7a";
        let whole = IdPattern::parse(&id.to_ascii_uppercase()).expect("whole");
        assert_eq!(whole.whole().as_deref(), Some(id));
        for typed in [
            "01a2525d",
            "01A2-525d-5e",
            "01a2525d…6b7a",
            "01a2525d...6b7a",
        ] {
            let pattern = IdPattern::parse(typed).expect(typed);
            assert!(pattern.matches(id), "{typed}");
            assert!(pattern.whole().is_none(), "{typed}");
            assert!(pattern.upper_bound().as_str() > id, "{typed}");
        }
        assert!(!IdPattern::parse("01a2525d…6b7b").expect("p").matches(id));
        assert_eq!(
            IdPattern::parse("01a2").expect("p").upper_bound(),
            "01a2ffff-ffff-ffff-ffff-ffffffffffff"
        );
        for bad in ["01a", "zz12", "", "01a2525d-5e1f-7c44-9a8b-2f3e4d5c6b7a0"] {
            assert!(IdPattern::parse(bad).is_err(), "{bad}");
        }
    }
}

#[cfg(test)]
mod payload_tests {
    use super::*;

    #[test]
    fn a_payload_reads_as_text_when_it_is_utf8_and_as_hex_otherwise() {
        assert_eq!(
            Readable::of(b"{\"a\":1}", 7),
            Readable::Text("{\"a\":1}".into())
        );
        assert_eq!(Readable::of(&[0xff, 0x00], 2), Readable::Hex("ff00".into()));
        // A head cut inside "é" (c3 a9) is text without its last character.
        let preview = Preview::of(&[b"x".repeat(Preview::LIMIT - 1), "é".into()].concat());
        assert_eq!(preview.head.len(), Preview::LIMIT);
        assert_eq!(preview.bytes, Preview::LIMIT as u64 + 1);
        assert_eq!(
            Readable::of(&preview.head, preview.bytes),
            Readable::Text("x".repeat(Preview::LIMIT - 1))
        );
        // A whole payload ending in half a character is not text.
        assert_eq!(Readable::of(&[b'a', 0xc3], 2), Readable::Hex("61c3".into()));
    }
}
