//! Two-phase commit with presumed abort (DESIGN §2), as a pure state machine.
//!
//! One [`TwoPhase`] value is one transaction. The runtime feeds it [`Event`]s
//! (a client asked to commit, a participant voted, the decision became
//! durable, a delivery was acknowledged) and executes the [`Effect`]s it
//! returns (send Prepare, force the decision to the log, announce the outcome).
//! It owns the protocol's rules and nothing else: no I/O, no clock, no retries,
//! no branch endpoints or payloads. That is what lets a unit test, a
//! simulation and a reader check R1–R6 one transition at a time.
//!
//! Rules upheld here:
//! - R1: nobody hears COMMITTED (no [`Effect::Announce`], no
//!   [`Effect::SendCommit`]) before [`Event::DecisionDurable`].
//! - R2: an abort needs no forced write ([`Effect::LogAbort`] is lazy), and a
//!   recovered transaction without a durable decision aborts. Only a branch
//!   that may hold a prepared part hears the Abort: one that was never sent
//!   a Prepare (or whose Prepare never left, [`Event::PrepareNotSent`]) holds
//!   nothing, and asking it would only let an unreachable address keep the
//!   transaction from ending.
//! - R5: a prepare error or missed deadline is an ABORT vote; an expired
//!   transaction that has not decided aborts.
//! - R6: READ_ONLY voters hear nothing more; an all-read-only transaction logs
//!   no decision; a single branch gets one-phase commit.
//!
//! Over 600 lines on purpose: the events, the effects and every transition
//! are one machine, read together to check a rule (the tests are in
//! `two_phase/tests.rs`).

use std::fmt;

/// Position of a branch in its transaction, in enlistment order.
pub type BranchIdx = usize;

/// The final decision of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Commit,
    Abort,
}

/// What a participant answered to Prepare.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Vote {
    /// Prepared: durably ready to commit.
    Commit,
    /// Refused, with the participant's reason.
    Abort { reason: String },
    /// Nothing to commit; releases the branch (R6).
    ReadOnly,
}

/// What a participant did with a one-phase commit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OnePhaseResult {
    Committed { read_only: bool },
    Aborted { reason: String },
}

/// Where the transaction is. Moves only forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Branches may enlist.
    Active,
    /// Votes (or a one-phase answer) are being collected.
    Preparing,
    /// Every vote was COMMIT or READ_ONLY; the COMMITTED decision is being
    /// made durable. Nothing can abort it now, and nobody has heard it yet.
    Deciding,
    /// Decided COMMITTED durably; phase 2 delivers Commit.
    Committing,
    /// Decided ABORTED; phase 2 delivers Abort.
    Aborting,
    /// Terminal.
    Committed,
    /// Terminal.
    Aborted,
}

impl Phase {
    /// True once nothing is left to do.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Committed | Phase::Aborted)
    }

    /// The decision this phase implies, if one is made.
    pub fn decision(self) -> Option<Decision> {
        match self {
            Phase::Committing | Phase::Committed => Some(Decision::Commit),
            Phase::Aborting | Phase::Aborted => Some(Decision::Abort),
            Phase::Active | Phase::Preparing | Phase::Deciding => None,
        }
    }
}

/// Where one branch is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BranchPhase {
    /// Enlisted; nothing sent.
    Enlisted,
    /// Prepare (or the one-phase commit) sent; no answer yet.
    Preparing,
    /// Voted COMMIT.
    Prepared,
    /// Voted READ_ONLY; hears nothing more.
    ReadOnly,
    /// Commit or Abort sent, not yet acknowledged.
    Delivering(Decision),
    /// Committed (acknowledged, or committed in one phase).
    Committed,
    /// Aborted (acknowledged, or refused in its vote).
    Aborted,
}

/// Something that happened to the transaction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The client asked to commit.
    CommitRequested,
    /// The client asked to roll back.
    RollbackRequested { reason: String },
    /// The transaction's own timeout passed (R5).
    Expired,
    /// A branch answered Prepare.
    Voted { branch: BranchIdx, vote: Vote },
    /// A Prepare failed or missed its deadline: an ABORT vote (R5). It may
    /// have arrived, so the branch is still owed an Abort.
    PrepareFailed { branch: BranchIdx, reason: String },
    /// A Prepare that certainly never reached the participant (no
    /// connection could be made, the address cannot be dialled): an ABORT
    /// vote from a branch that holds nothing and needs no Abort.
    PrepareNotSent { branch: BranchIdx, reason: String },
    /// The single branch answered the one-phase commit.
    OnePhaseAnswered(OnePhaseResult),
    /// The one-phase commit failed or missed its deadline: its outcome is
    /// unknown until an Abort is acknowledged.
    OnePhaseFailed { reason: String },
    /// The one-phase commit certainly never reached the participant: it
    /// cannot have committed, so the transaction aborts at once and the
    /// branch needs no Abort.
    OnePhaseNotSent { reason: String },
    /// The COMMITTED decision is durable in the log (R1).
    DecisionDurable,
    /// A branch acknowledged the Commit or Abort delivered to it.
    Delivered { branch: BranchIdx },
    /// A branch answered an Abort with "already committed": it had committed
    /// through the one-phase path before the abort reached it.
    FoundCommitted { branch: BranchIdx },
}

/// Something the runtime must do, in the order given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    SendPrepare(BranchIdx),
    SendOnePhase(BranchIdx),
    /// Force the COMMITTED decision to the log, then feed
    /// [`Event::DecisionDurable`] (R1).
    LogDecision,
    /// Record the abort lazily: presumed abort needs no forced write (R2).
    LogAbort {
        reason: String,
    },
    /// Tell whoever waits for the decision what it is.
    Announce(Outcome),
    SendCommit(BranchIdx),
    SendAbort(BranchIdx),
    /// Record that the transaction ended (lazily: a lost end record only
    /// makes recovery re-deliver an idempotent decision).
    LogEnd(Outcome),
}

/// The outcome a client is told.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    Committed { read_only: bool },
    Aborted { reason: String },
}

impl Outcome {
    pub fn decision(&self) -> Decision {
        match self {
            Outcome::Committed { .. } => Decision::Commit,
            Outcome::Aborted { .. } => Decision::Abort,
        }
    }
}

/// An event the transaction's phase does not allow.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    /// Enlisting needs an ACTIVE transaction.
    #[error("the transaction is {0}, not active: no branch can enlist")]
    NotActive(Phase),
    /// Rolling back needs an undecided transaction.
    #[error("the transaction decided to commit and cannot roll back")]
    AlreadyCommitted,
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Phase::Active => "active",
            Phase::Preparing => "preparing",
            Phase::Deciding => "preparing",
            Phase::Committing => "committing",
            Phase::Aborting => "aborting",
            Phase::Committed => "committed",
            Phase::Aborted => "aborted",
        };
        f.write_str(name)
    }
}

/// One transaction's protocol state.
#[derive(Clone, Debug)]
pub struct TwoPhase {
    phase: Phase,
    branches: Vec<BranchPhase>,
    /// Set while a one-phase commit may have run at the participant: the
    /// outcome is then the participant's, and an abort is not announced until
    /// the Abort's answer says what happened.
    one_phase_pending: bool,
    /// The abort reason, once aborting.
    reason: Option<String>,
    /// The outcome announced, once announced.
    announced: Option<Outcome>,
    read_only: bool,
}

impl Default for TwoPhase {
    fn default() -> Self {
        Self::new()
    }
}

impl TwoPhase {
    /// A newly begun transaction with no branches.
    pub fn new() -> Self {
        Self {
            phase: Phase::Active,
            branches: Vec::new(),
            one_phase_pending: false,
            reason: None,
            announced: None,
            read_only: false,
        }
    }

    /// A transaction read back from the log after a restart. With a durable
    /// COMMITTED decision it re-drives Commit to every branch not known to be
    /// done (R3); without one it aborts (R2), telling every branch, since
    /// any of them may have been sent a Prepare before the crash. A single
    /// branch may have committed through the one-phase path, so its abort
    /// waits for the participant's word before announcing anything.
    pub fn recover(
        branch_count: usize,
        decision: Option<Decision>,
        reason: Option<String>,
    ) -> (Self, Vec<Effect>) {
        let mut txn = Self::new();
        // No record says which Prepares went out: each may have.
        txn.branches = vec![BranchPhase::Preparing; branch_count];
        let mut effects = Vec::new();
        match decision {
            Some(Decision::Commit) => {
                txn.phase = Phase::Committing;
                txn.branches = vec![BranchPhase::Prepared; branch_count];
                let outcome = Outcome::Committed { read_only: false };
                txn.announced = Some(outcome.clone());
                effects.push(Effect::Announce(outcome));
                txn.deliver(Decision::Commit, &mut effects);
            }
            None | Some(Decision::Abort) => {
                // A lone branch can only have committed through the one-phase
                // path, whose outcome is the participant's: ask before telling.
                txn.one_phase_pending = branch_count == 1;
                let reason =
                    reason.unwrap_or_else(|| "coordinator restarted before deciding".into());
                txn.abort(reason, &mut effects);
            }
        }
        (txn, effects)
    }

    pub fn phase(&self) -> Phase {
        self.phase
    }

    pub fn branches(&self) -> &[BranchPhase] {
        &self.branches
    }

    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    pub fn announced(&self) -> Option<&Outcome> {
        self.announced.as_ref()
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Adds a branch; only an ACTIVE transaction accepts one.
    pub fn enlist(&mut self) -> Result<BranchIdx, Rejected> {
        if self.phase != Phase::Active {
            return Err(Rejected::NotActive(self.phase));
        }
        self.branches.push(BranchPhase::Enlisted);
        Ok(self.branches.len() - 1)
    }

    /// Applies one event and returns what the runtime must do. Events that no
    /// longer matter (a vote arriving after the abort, a duplicate
    /// acknowledgement) return no effects.
    pub fn apply(&mut self, event: Event) -> Result<Vec<Effect>, Rejected> {
        let mut effects = Vec::new();
        match event {
            Event::CommitRequested => self.commit_requested(&mut effects),
            Event::RollbackRequested { reason } => match self.phase {
                Phase::Active | Phase::Preparing => self.abort(reason, &mut effects),
                Phase::Deciding | Phase::Committing | Phase::Committed => {
                    return Err(Rejected::AlreadyCommitted);
                }
                Phase::Aborting | Phase::Aborted => {}
            },
            Event::Expired => {
                // R5: only an undecided transaction times out; a decision being
                // written is already final.
                if matches!(self.phase, Phase::Active | Phase::Preparing) {
                    self.abort("transaction timed out before deciding".into(), &mut effects);
                }
            }
            Event::Voted { branch, vote } => self.voted(branch, vote, &mut effects),
            Event::PrepareFailed { branch, reason } => {
                // R5: no answer in time is an ABORT vote. Unlike a real ABORT
                // vote, the participant may still finish preparing and hold
                // its part, so it stays owed an Abort.
                if self.branches.get(branch) == Some(&BranchPhase::Preparing)
                    && self.phase == Phase::Preparing
                {
                    self.abort(reason, &mut effects);
                }
            }
            Event::PrepareNotSent { branch, reason } => {
                self.prepare_not_sent(branch, reason, &mut effects);
            }
            Event::OnePhaseAnswered(result) => self.one_phase_answered(result, &mut effects),
            Event::OnePhaseNotSent { reason } => {
                if self.phase == Phase::Preparing
                    && self.one_phase_pending
                    && self.branches.first() == Some(&BranchPhase::Preparing)
                {
                    // Nothing reached the participant: no commit can have
                    // happened there, so the abort is known and told now
                    // instead of at the caller's deadline.
                    self.one_phase_pending = false;
                    self.branches[0] = BranchPhase::Aborted;
                    self.abort(reason, &mut effects);
                }
            }
            Event::OnePhaseFailed { reason } => {
                if self.phase == Phase::Preparing {
                    // The participant may have committed: abort, and let the
                    // Abort's answer tell which outcome is true.
                    self.abort(reason, &mut effects);
                }
            }
            Event::DecisionDurable => {
                if self.phase == Phase::Deciding {
                    // R1: the decision is durable; only now may anyone hear it.
                    self.phase = Phase::Committing;
                    let outcome = Outcome::Committed { read_only: false };
                    self.announced = Some(outcome.clone());
                    effects.push(Effect::Announce(outcome));
                    self.deliver(Decision::Commit, &mut effects);
                }
            }
            Event::Delivered { branch } => self.delivered(branch, &mut effects),
            Event::FoundCommitted { branch } => self.found_committed(branch, &mut effects),
        }
        Ok(effects)
    }

    fn commit_requested(&mut self, effects: &mut Vec<Effect>) {
        if self.phase != Phase::Active {
            // A repeated Commit waits for the outcome already on its way.
            return;
        }
        self.phase = Phase::Preparing;
        match self.branches.len() {
            0 => {
                // Nothing enlisted: nothing to change anywhere.
                self.read_only = true;
                self.finish_read_only(effects);
            }
            1 => {
                // R6: a single branch decides alone, in one round trip.
                self.one_phase_pending = true;
                self.branches[0] = BranchPhase::Preparing;
                effects.push(Effect::SendOnePhase(0));
            }
            n => {
                for idx in 0..n {
                    self.branches[idx] = BranchPhase::Preparing;
                    effects.push(Effect::SendPrepare(idx));
                }
            }
        }
    }

    fn voted(&mut self, idx: BranchIdx, vote: Vote, effects: &mut Vec<Effect>) {
        let Some(branch) = self.branches.get(idx).copied() else {
            return;
        };
        if branch != BranchPhase::Preparing {
            // A late or duplicate answer. If the abort already went out to
            // this branch it will be (or was) delivered; nothing to add.
            return;
        }
        match vote {
            Vote::Commit => self.branches[idx] = BranchPhase::Prepared,
            Vote::ReadOnly => self.branches[idx] = BranchPhase::ReadOnly,
            Vote::Abort { reason } => {
                // The voter has undone its own part and needs no Abort.
                self.branches[idx] = BranchPhase::Aborted;
                if self.phase == Phase::Preparing {
                    self.abort(reason, effects);
                }
                return;
            }
        }
        if self.phase != Phase::Preparing {
            return;
        }
        let all_voted = self
            .branches
            .iter()
            .all(|b| matches!(b, BranchPhase::Prepared | BranchPhase::ReadOnly));
        if !all_voted {
            return;
        }
        if self.branches.iter().all(|b| *b == BranchPhase::ReadOnly) {
            // R6: all read-only: nothing to commit, no decision to log.
            self.read_only = true;
            self.finish_read_only(effects);
        } else {
            // R1: decide, and make it durable before anyone hears it.
            self.phase = Phase::Deciding;
            effects.push(Effect::LogDecision);
        }
    }

    fn prepare_not_sent(&mut self, idx: BranchIdx, reason: String, effects: &mut Vec<Effect>) {
        match self.branches.get(idx).copied() {
            Some(BranchPhase::Preparing) if self.phase == Phase::Preparing => {
                // An ABORT vote (R5) from a branch that holds nothing.
                self.branches[idx] = BranchPhase::Aborted;
                self.abort(reason, effects);
            }
            Some(BranchPhase::Delivering(Decision::Abort)) if !self.one_phase_pending => {
                // Another branch's vote aborted first and the Abort went out
                // while this Prepare was still trying to connect. The
                // Prepare never arrived, so the Abort is owed nothing.
                self.branches[idx] = BranchPhase::Aborted;
                self.finish_if_delivered(effects);
            }
            _ => {}
        }
    }

    fn one_phase_answered(&mut self, result: OnePhaseResult, effects: &mut Vec<Effect>) {
        if !self.one_phase_pending || self.branches.len() != 1 {
            return;
        }
        if self.phase != Phase::Preparing {
            // An abort (rollback, timeout) already went out; its answer, not
            // this one, settles the outcome, and the participant's ledger
            // makes the two agree.
            return;
        }
        self.one_phase_pending = false;
        match result {
            OnePhaseResult::Committed { read_only } => {
                self.read_only = read_only;
                self.branches[0] = if read_only {
                    BranchPhase::ReadOnly
                } else {
                    BranchPhase::Committed
                };
                self.finish(Outcome::Committed { read_only }, effects);
            }
            OnePhaseResult::Aborted { reason } => {
                self.branches[0] = BranchPhase::Aborted;
                self.reason = Some(reason.clone());
                effects.push(Effect::LogAbort {
                    reason: reason.clone(),
                });
                self.finish(Outcome::Aborted { reason }, effects);
            }
        }
    }

    fn delivered(&mut self, idx: BranchIdx, effects: &mut Vec<Effect>) {
        let Some(BranchPhase::Delivering(decision)) = self.branches.get(idx).copied() else {
            return;
        };
        self.branches[idx] = match decision {
            Decision::Commit => BranchPhase::Committed,
            Decision::Abort => BranchPhase::Aborted,
        };
        if decision == Decision::Abort {
            // If a one-phase commit was in doubt, the abort won the race at
            // the participant: aborted, and announced as the transaction ends.
            self.one_phase_pending = false;
        }
        self.finish_if_delivered(effects);
    }

    fn found_committed(&mut self, idx: BranchIdx, effects: &mut Vec<Effect>) {
        let Some(BranchPhase::Delivering(Decision::Abort)) = self.branches.get(idx).copied() else {
            return;
        };
        self.branches[idx] = BranchPhase::Committed;
        if self.one_phase_pending {
            // The one-phase commit won the race: the participant's outcome is
            // the transaction's, and it is the only branch (I1 holds).
            self.one_phase_pending = false;
            self.reason = None;
            self.phase = Phase::Committed;
            let outcome = Outcome::Committed { read_only: false };
            self.announced = Some(outcome.clone());
            effects.push(Effect::Announce(outcome.clone()));
            effects.push(Effect::LogEnd(outcome));
        } else {
            // A participant claims a commit it was never sent: a heuristic
            // outcome the runtime reports; the branch is settled either way.
            self.finish_if_delivered(effects);
        }
    }

    /// Decides ABORTED: announce at once unless a one-phase commit may have
    /// run, and deliver Abort to every branch that may hold work.
    fn abort(&mut self, reason: String, effects: &mut Vec<Effect>) {
        self.phase = Phase::Aborting;
        self.reason = Some(reason.clone());
        // R2: the abort record is lazy; nothing waits for it.
        effects.push(Effect::LogAbort {
            reason: reason.clone(),
        });
        if !self.one_phase_pending {
            let outcome = Outcome::Aborted { reason };
            self.announced = Some(outcome.clone());
            effects.push(Effect::Announce(outcome));
        }
        self.deliver(Decision::Abort, effects);
        self.finish_if_delivered(effects);
    }

    /// Sends the decision to every branch that may hold work: not to READ_ONLY
    /// voters (R6), nor to branches that refused, nor (for an abort) to
    /// branches never sent a Prepare: they hold nothing, and presumed abort
    /// (R2) answers them ABORTED if they ask.
    fn deliver(&mut self, decision: Decision, effects: &mut Vec<Effect>) {
        for idx in 0..self.branches.len() {
            if decision == Decision::Abort && self.branches[idx] == BranchPhase::Enlisted {
                // Never sent anything: aborted as it stands.
                self.branches[idx] = BranchPhase::Aborted;
                continue;
            }
            let needs = match decision {
                Decision::Commit => self.branches[idx] == BranchPhase::Prepared,
                Decision::Abort => matches!(
                    self.branches[idx],
                    BranchPhase::Preparing | BranchPhase::Prepared
                ),
            };
            if needs {
                self.branches[idx] = BranchPhase::Delivering(decision);
                effects.push(match decision {
                    Decision::Commit => Effect::SendCommit(idx),
                    Decision::Abort => Effect::SendAbort(idx),
                });
            }
        }
    }

    fn finish_if_delivered(&mut self, effects: &mut Vec<Effect>) {
        if !matches!(self.phase, Phase::Committing | Phase::Aborting) {
            return;
        }
        let pending = self
            .branches
            .iter()
            .any(|b| matches!(b, BranchPhase::Delivering(_)));
        if pending {
            return;
        }
        let outcome = match self.phase {
            Phase::Committing => Outcome::Committed {
                read_only: self.read_only,
            },
            _ => Outcome::Aborted {
                reason: self.reason.clone().unwrap_or_default(),
            },
        };
        if self.announced.is_none() {
            self.announced = Some(outcome.clone());
            effects.push(Effect::Announce(outcome.clone()));
        }
        self.phase = match outcome {
            Outcome::Committed { .. } => Phase::Committed,
            Outcome::Aborted { .. } => Phase::Aborted,
        };
        effects.push(Effect::LogEnd(outcome));
    }

    fn finish_read_only(&mut self, effects: &mut Vec<Effect>) {
        self.finish(Outcome::Committed { read_only: true }, effects);
    }

    fn finish(&mut self, outcome: Outcome, effects: &mut Vec<Effect>) {
        self.phase = match outcome {
            Outcome::Committed { .. } => Phase::Committed,
            Outcome::Aborted { .. } => Phase::Aborted,
        };
        self.announced = Some(outcome.clone());
        effects.push(Effect::Announce(outcome.clone()));
        effects.push(Effect::LogEnd(outcome));
    }
}

#[cfg(test)]
mod tests;
