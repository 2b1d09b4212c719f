//! A simulated participant: a bank with accounts (2PC transfers), a stock
//! of seats (saga reservations), an outbox (the transactional messages it
//! publishes, DESIGN §10) and an inbox (those it receives), keeping the
//! exactly-once ledger of DESIGN §4 in memory.
//!
//! Its state is its database: it lives outside the simulated host, so it
//! survives the host's crash. Each handler changes it in one step with no
//! await in between — a local transaction — so a crash lands before or after
//! it. It also checks the protocol from the participant's side and writes
//! down every message a correct coordinator would never send (a Commit for a
//! branch never prepared, an Abort after a two-phase Commit, ...).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use concord_proto::v1::{self as pb, participant_server::Participant};
use tonic::{Request, Response, Status};

pub const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];
pub const OPENING_BALANCE: i64 = 1_000;
pub const OPENING_SEATS: i64 = 4;

/// Where one branch or step got to at this participant.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Voted yes; the change is held (funds reserved).
    Prepared { change: Change, since: Duration },
    /// Applied; `one_phase` if through CommitOnePhase.
    Committed { one_phase: bool },
    /// Voted no, aborted, or a tombstone (abort before prepare).
    Aborted,
    /// A saga action ran; `reserved` if it took a seat.
    Acted { reserved: bool },
    /// Compensated; `undid` if a seat was given back (false: a tombstone or
    /// the action had failed).
    Compensated { undid: bool },
    /// A message delivered here took effect (once: the ledger, M4).
    Delivered,
}

/// A transfer leg, parsed from a branch payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    Debit(String, i64),
    Credit(String, i64),
    /// Within one bank: the one-phase path (R6).
    Move(String, String, i64),
}

impl Change {
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Change::Debit(account, amount) => format!("debit:{account}:{amount}"),
            Change::Credit(account, amount) => format!("credit:{account}:{amount}"),
            Change::Move(from, to, amount) => format!("move:{from}:{to}:{amount}"),
        }
        .into_bytes()
    }

    fn decode(payload: &[u8]) -> Option<Self> {
        let text = std::str::from_utf8(payload).ok()?;
        let parts: Vec<&str> = text.split(':').collect();
        match parts.as_slice() {
            ["debit", account, amount] => {
                Some(Change::Debit(account.to_string(), amount.parse().ok()?))
            }
            ["credit", account, amount] => {
                Some(Change::Credit(account.to_string(), amount.parse().ok()?))
            }
            ["move", from, to, amount] => Some(Change::Move(
                from.to_string(),
                to.to_string(),
                amount.parse().ok()?,
            )),
            _ => None,
        }
    }

    /// What this change takes from an account before it commits.
    fn hold(&self) -> Option<(&str, i64)> {
        match self {
            Change::Debit(account, amount) | Change::Move(account, _, amount) => {
                Some((account, *amount))
            }
            Change::Credit(..) => None,
        }
    }
}

#[derive(Debug)]
pub struct BankState {
    pub balances: BTreeMap<String, i64>,
    pub held: BTreeMap<String, i64>,
    pub seats: i64,
    /// (transaction, branch or step) -> where it got to.
    pub ledger: BTreeMap<(String, String), Entry>,
    /// Messages a correct coordinator never sends.
    pub violations: Vec<String>,
    /// The outbox: message id -> true for a row published by a local
    /// transaction that committed, false for a check-back's tombstone.
    pub outbox: BTreeMap<String, bool>,
}

impl Default for BankState {
    fn default() -> Self {
        Self {
            balances: ACCOUNTS
                .iter()
                .map(|a| (a.to_string(), OPENING_BALANCE))
                .collect(),
            held: BTreeMap::new(),
            seats: OPENING_SEATS,
            ledger: BTreeMap::new(),
            violations: Vec::new(),
            outbox: BTreeMap::new(),
        }
    }
}

impl BankState {
    fn available(&self, account: &str) -> i64 {
        self.balances.get(account).copied().unwrap_or(0)
            - self.held.get(account).copied().unwrap_or(0)
    }

    fn apply(&mut self, change: &Change) {
        let mut add = |account: &str, delta: i64| {
            *self.balances.entry(account.to_owned()).or_default() += delta;
        };
        match change {
            Change::Debit(account, amount) => add(account, -amount),
            Change::Credit(account, amount) => add(account, *amount),
            Change::Move(from, to, amount) => {
                add(from, -amount);
                add(to, *amount);
            }
        }
    }

    fn release(&mut self, change: &Change) {
        if let Some((account, amount)) = change.hold() {
            *self.held.entry(account.to_owned()).or_default() -= amount;
        }
    }

    /// Branches voted yes and still waiting for phase 2.
    pub fn prepared(&self) -> Vec<(String, String)> {
        self.ledger
            .iter()
            .filter(|(_, entry)| matches!(entry, Entry::Prepared { .. }))
            .map(|(key, _)| key.clone())
            .collect()
    }
}

/// One bank; clones share its state.
#[derive(Clone, Default)]
pub struct Bank {
    pub name: String,
    state: Arc<Mutex<BankState>>,
}

impl Bank {
    pub fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            state: Arc::default(),
        }
    }

    pub fn state(&self) -> MutexGuard<'_, BankState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The producer's local transaction publishing `message` (one step, as
    /// a database transaction): false if a check-back's tombstone came
    /// first, and the local transaction rolls back (M2).
    pub fn publish(&self, message: &str) -> bool {
        *self
            .state()
            .outbox
            .entry(message.to_owned())
            .or_insert(true)
    }

    fn violation(&self, state: &mut BankState, what: String) -> Status {
        state.violations.push(format!("{}: {what}", self.name));
        Status::failed_precondition(what)
    }

    /// The participant's own in-doubt resolution (DESIGN §4): a branch
    /// prepared for longer than `patience` asks the coordinator for the
    /// outcome and applies it.
    pub async fn resolve_in_doubt(self, coordinator: String, patience: Duration) {
        let mut client =
            pb::coordinator_client::CoordinatorClient::new(super::net::channel_to(&coordinator));
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let now = now();
            let waiting: Vec<(String, String)> = {
                let state = self.state();
                state
                    .ledger
                    .iter()
                    .filter(|(_, entry)| {
                        matches!(entry, Entry::Prepared { since, .. } if now.saturating_sub(*since) > patience)
                    })
                    .map(|(key, _)| key.clone())
                    .collect()
            };
            for (txn, branch) in waiting {
                let mut request = Request::new(pb::GetOutcomeRequest {
                    transaction_id: txn.clone(),
                });
                request.set_timeout(Duration::from_secs(1));
                let asked =
                    tokio::time::timeout(Duration::from_secs(1), client.get_outcome(request));
                let Ok(Ok(answer)) = asked.await else {
                    continue;
                };
                let outcome = answer.into_inner().outcome;
                let mut state = self.state();
                let key = (txn, branch);
                let Some(Entry::Prepared { change, .. }) = state.ledger.get(&key).cloned() else {
                    continue;
                };
                if outcome == pb::Outcome::Committed as i32 {
                    state.release(&change);
                    state.apply(&change);
                    state
                        .ledger
                        .insert(key, Entry::Committed { one_phase: false });
                } else if outcome == pb::Outcome::Aborted as i32 {
                    state.release(&change);
                    state.ledger.insert(key, Entry::Aborted);
                }
            }
        }
    }
}

/// The simulated wall clock, as the bank sees it.
fn now() -> Duration {
    turmoil::sim_elapsed().unwrap_or_default()
}

fn key(branch: Option<pb::BranchRef>) -> Result<(String, String), Status> {
    let branch = branch.ok_or_else(|| Status::invalid_argument("branch is required"))?;
    Ok((branch.transaction_id, branch.branch))
}

#[tonic::async_trait]
impl Participant for Bank {
    async fn prepare(
        &self,
        request: Request<pb::PrepareRequest>,
    ) -> Result<Response<pb::PrepareResponse>, Status> {
        let request = request.into_inner();
        let key = key(request.branch)?;
        let vote = |vote: pb::Vote, reason: &str| {
            Ok(Response::new(pb::PrepareResponse {
                vote: vote as i32,
                reason: reason.to_owned(),
            }))
        };
        let mut state = self.state();
        match state.ledger.get(&key) {
            Some(Entry::Prepared { .. } | Entry::Committed { .. }) => {
                return vote(pb::Vote::Commit, "");
            }
            Some(Entry::Aborted) => return vote(pb::Vote::Abort, "already aborted"),
            Some(_) => {
                return Err(self.violation(&mut state, format!("prepare of saga step {key:?}")));
            }
            None => {}
        }
        let Some(change) = Change::decode(&request.payload) else {
            return Err(Status::invalid_argument("payload is not a transfer leg"));
        };
        if let Some((account, amount)) = change.hold() {
            if state.available(account) < amount {
                state.ledger.insert(key, Entry::Aborted);
                return vote(pb::Vote::Abort, "insufficient funds");
            }
            *state.held.entry(account.to_owned()).or_default() += amount;
        }
        state.ledger.insert(
            key,
            Entry::Prepared {
                change,
                since: now(),
            },
        );
        vote(pb::Vote::Commit, "")
    }

    async fn commit(
        &self,
        request: Request<pb::CommitBranchRequest>,
    ) -> Result<Response<pb::CommitBranchResponse>, Status> {
        let key = key(request.into_inner().branch)?;
        let mut state = self.state();
        match state.ledger.get(&key).cloned() {
            Some(Entry::Prepared { change, .. }) => {
                state.release(&change);
                state.apply(&change);
                state
                    .ledger
                    .insert(key, Entry::Committed { one_phase: false });
            }
            Some(Entry::Committed { .. }) => {}
            other => {
                return Err(self.violation(&mut state, format!("commit of {key:?} in {other:?}")));
            }
        }
        Ok(Response::new(pb::CommitBranchResponse {}))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortBranchRequest>,
    ) -> Result<Response<pb::AbortBranchResponse>, Status> {
        let key = key(request.into_inner().branch)?;
        let mut state = self.state();
        let already_committed = match state.ledger.get(&key).cloned() {
            Some(Entry::Prepared { change, .. }) => {
                state.release(&change);
                state.ledger.insert(key, Entry::Aborted);
                false
            }
            // A tombstone: the late prepare will be refused.
            None => {
                state.ledger.insert(key, Entry::Aborted);
                false
            }
            Some(Entry::Aborted) => false,
            Some(Entry::Committed { one_phase: true }) => true,
            other => {
                return Err(self.violation(&mut state, format!("abort of {key:?} in {other:?}")));
            }
        };
        Ok(Response::new(pb::AbortBranchResponse { already_committed }))
    }

    async fn commit_one_phase(
        &self,
        request: Request<pb::CommitOnePhaseRequest>,
    ) -> Result<Response<pb::CommitOnePhaseResponse>, Status> {
        let request = request.into_inner();
        let key = key(request.branch)?;
        let answer = |outcome: pb::Outcome, reason: &str| {
            Ok(Response::new(pb::CommitOnePhaseResponse {
                outcome: outcome as i32,
                reason: reason.to_owned(),
                read_only: false,
            }))
        };
        let mut state = self.state();
        match state.ledger.get(&key) {
            Some(Entry::Committed { .. }) => return answer(pb::Outcome::Committed, ""),
            Some(Entry::Aborted) => return answer(pb::Outcome::Aborted, "already aborted"),
            Some(other) => {
                let what = format!("one-phase commit of {key:?} in {other:?}");
                return Err(self.violation(&mut state, what));
            }
            None => {}
        }
        let Some(change) = Change::decode(&request.payload) else {
            return Err(Status::invalid_argument("payload is not a transfer leg"));
        };
        if let Some((account, amount)) = change.hold()
            && state.available(account) < amount
        {
            state.ledger.insert(key, Entry::Aborted);
            return answer(pb::Outcome::Aborted, "insufficient funds");
        }
        state.apply(&change);
        state
            .ledger
            .insert(key, Entry::Committed { one_phase: true });
        answer(pb::Outcome::Committed, "")
    }

    async fn execute(
        &self,
        request: Request<pb::ExecuteRequest>,
    ) -> Result<Response<pb::ExecuteResponse>, Status> {
        let key = key(request.into_inner().branch)?;
        let answer = |reserved: bool, reason: &str| {
            Ok(Response::new(pb::ExecuteResponse {
                result: if reserved {
                    pb::execute_response::Result::Succeeded
                } else {
                    pb::execute_response::Result::Failed
                } as i32,
                reason: reason.to_owned(),
            }))
        };
        let mut state = self.state();
        match state.ledger.get(&key).cloned() {
            Some(Entry::Acted { reserved }) => return answer(reserved, "sold out"),
            Some(Entry::Compensated { .. }) => return answer(false, "compensated before it ran"),
            Some(other) => {
                return Err(self.violation(&mut state, format!("execute of {key:?} in {other:?}")));
            }
            None => {}
        }
        let reserved = state.seats > 0;
        if reserved {
            state.seats -= 1;
        }
        state.ledger.insert(key, Entry::Acted { reserved });
        answer(reserved, "sold out")
    }

    async fn compensate(
        &self,
        request: Request<pb::CompensateRequest>,
    ) -> Result<Response<pb::CompensateResponse>, Status> {
        let key = key(request.into_inner().branch)?;
        let mut state = self.state();
        match state.ledger.get(&key).cloned() {
            Some(Entry::Acted { reserved }) => {
                if reserved {
                    state.seats += 1;
                }
                state
                    .ledger
                    .insert(key, Entry::Compensated { undid: reserved });
            }
            None => {
                state
                    .ledger
                    .insert(key, Entry::Compensated { undid: false });
            }
            Some(Entry::Compensated { .. }) => {}
            Some(other) => {
                let what = format!("compensate of {key:?} in {other:?}");
                return Err(self.violation(&mut state, what));
            }
        }
        Ok(Response::new(pb::CompensateResponse {}))
    }

    async fn deliver(
        &self,
        request: Request<pb::DeliverRequest>,
    ) -> Result<Response<pb::DeliverResponse>, Status> {
        let key = key(request.into_inner().branch)?;
        let mut state = self.state();
        match state.ledger.get(&key) {
            None => {
                state.ledger.insert(key, Entry::Delivered);
            }
            Some(Entry::Delivered) => {}
            Some(other) => {
                let what = format!("deliver of {key:?} in {other:?}");
                return Err(self.violation(&mut state, what));
            }
        }
        Ok(Response::new(pb::DeliverResponse {}))
    }

    /// The check-back (M2): the outbox row, or a tombstone in its place.
    async fn check_message(
        &self,
        request: Request<pb::CheckMessageRequest>,
    ) -> Result<Response<pb::CheckMessageResponse>, Status> {
        let id = request.into_inner().transaction_id;
        let published = *self.state().outbox.entry(id).or_insert(false);
        use pb::check_message_response::Result as Checked;
        Ok(Response::new(pb::CheckMessageResponse {
            result: if published {
                Checked::Committed
            } else {
                Checked::RolledBack
            } as i32,
        }))
    }

    type BatchStream = futures::stream::Iter<std::vec::IntoIter<Result<pb::BatchAnswer, Status>>>;

    /// Each call as if it came alone, so the simulation drives the
    /// coordinator's batched path with the same checks.
    async fn batch(
        &self,
        request: Request<pb::BatchRequest>,
    ) -> Result<Response<Self::BatchStream>, Status> {
        use pb::batch_answer::Answer;
        use pb::batch_call::Call;
        let mut answers = Vec::new();
        for (call, index) in request.into_inner().calls.into_iter().zip(0u32..) {
            let answer = match call.call {
                Some(Call::Prepare(call)) => self
                    .prepare(Request::new(call))
                    .await
                    .map(|r| Answer::Prepare(r.into_inner())),
                Some(Call::Commit(call)) => self
                    .commit(Request::new(call))
                    .await
                    .map(|r| Answer::Commit(r.into_inner())),
                Some(Call::Abort(call)) => self
                    .abort(Request::new(call))
                    .await
                    .map(|r| Answer::Abort(r.into_inner())),
                Some(Call::CommitOnePhase(call)) => self
                    .commit_one_phase(Request::new(call))
                    .await
                    .map(|r| Answer::CommitOnePhase(r.into_inner())),
                Some(Call::Execute(call)) => self
                    .execute(Request::new(call))
                    .await
                    .map(|r| Answer::Execute(r.into_inner())),
                Some(Call::Compensate(call)) => self
                    .compensate(Request::new(call))
                    .await
                    .map(|r| Answer::Compensate(r.into_inner())),
                Some(Call::Deliver(call)) => self
                    .deliver(Request::new(call))
                    .await
                    .map(|r| Answer::Deliver(r.into_inner())),
                None => Err(Status::invalid_argument("empty batch call")),
            };
            answers.push(Ok(match answer {
                Ok(answer) => pb::BatchAnswer {
                    index,
                    answer: Some(answer),
                    ..Default::default()
                },
                Err(status) => pb::BatchAnswer {
                    index,
                    code: status.code() as i32,
                    message: status.message().to_owned(),
                    answer: None,
                },
            }));
        }
        Ok(Response::new(futures::stream::iter(answers)))
    }
}
