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
mod tests {
    use super::*;

    fn active(branches: usize) -> TwoPhase {
        let mut txn = TwoPhase::new();
        for _ in 0..branches {
            txn.enlist().expect("active transaction accepts branches");
        }
        txn
    }

    fn apply(txn: &mut TwoPhase, event: Event) -> Vec<Effect> {
        txn.apply(event).expect("event allowed")
    }

    fn vote(branch: BranchIdx, vote: Vote) -> Event {
        Event::Voted { branch, vote }
    }

    fn abort_vote(reason: &str) -> Vote {
        Vote::Abort {
            reason: reason.into(),
        }
    }

    fn committed() -> Outcome {
        Outcome::Committed { read_only: false }
    }

    #[test]
    fn commit_sends_prepare_to_every_branch() {
        let mut txn = active(3);
        let effects = apply(&mut txn, Event::CommitRequested);
        assert_eq!(
            effects,
            vec![
                Effect::SendPrepare(0),
                Effect::SendPrepare(1),
                Effect::SendPrepare(2)
            ]
        );
        assert_eq!(txn.phase(), Phase::Preparing);
    }

    #[test]
    fn all_yes_votes_force_the_decision_before_anyone_hears_it() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        assert!(apply(&mut txn, vote(0, Vote::Commit)).is_empty());
        let effects = apply(&mut txn, vote(1, Vote::Commit));
        // R1: the only effect is the forced write; no Announce, no SendCommit.
        assert_eq!(effects, vec![Effect::LogDecision]);
        assert_eq!(txn.phase(), Phase::Deciding);
        assert_eq!(txn.announced(), None);
    }

    #[test]
    fn durable_decision_announces_then_delivers_commit() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        apply(&mut txn, vote(0, Vote::Commit));
        apply(&mut txn, vote(1, Vote::Commit));
        let effects = apply(&mut txn, Event::DecisionDurable);
        assert_eq!(
            effects,
            vec![
                Effect::Announce(committed()),
                Effect::SendCommit(0),
                Effect::SendCommit(1)
            ]
        );
        assert_eq!(txn.phase(), Phase::Committing);
    }

    #[test]
    fn acknowledgements_end_the_transaction() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        apply(&mut txn, vote(0, Vote::Commit));
        apply(&mut txn, vote(1, Vote::Commit));
        apply(&mut txn, Event::DecisionDurable);
        assert!(apply(&mut txn, Event::Delivered { branch: 1 }).is_empty());
        // A duplicate acknowledgement changes nothing.
        assert!(apply(&mut txn, Event::Delivered { branch: 1 }).is_empty());
        let effects = apply(&mut txn, Event::Delivered { branch: 0 });
        assert_eq!(effects, vec![Effect::LogEnd(committed())]);
        assert_eq!(txn.phase(), Phase::Committed);
        assert_eq!(
            txn.branches(),
            &[BranchPhase::Committed, BranchPhase::Committed]
        );
    }

    #[test]
    fn an_abort_vote_aborts_at_once_and_tells_the_others() {
        let mut txn = active(3);
        apply(&mut txn, Event::CommitRequested);
        apply(&mut txn, vote(0, Vote::Commit));
        let effects = apply(&mut txn, vote(1, abort_vote("insufficient funds")));
        assert_eq!(
            effects,
            vec![
                Effect::LogAbort {
                    reason: "insufficient funds".into()
                },
                Effect::Announce(Outcome::Aborted {
                    reason: "insufficient funds".into()
                }),
                // Not to branch 1: it refused and undid its own part.
                Effect::SendAbort(0),
                Effect::SendAbort(2),
            ]
        );
        assert_eq!(txn.phase(), Phase::Aborting);
        // Branch 2's late YES vote changes nothing: its Abort is on the way.
        assert!(apply(&mut txn, vote(2, Vote::Commit)).is_empty());
        apply(&mut txn, Event::Delivered { branch: 0 });
        let effects = apply(&mut txn, Event::Delivered { branch: 2 });
        assert_eq!(
            effects,
            vec![Effect::LogEnd(Outcome::Aborted {
                reason: "insufficient funds".into()
            })]
        );
        assert_eq!(txn.phase(), Phase::Aborted);
    }

    #[test]
    fn a_failed_prepare_is_an_abort_vote() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        apply(&mut txn, vote(0, Vote::Commit));
        let effects = apply(
            &mut txn,
            Event::PrepareFailed {
                branch: 1,
                reason: "prepare deadline of 100 ms passed".into(),
            },
        );
        assert_eq!(txn.phase(), Phase::Aborting);
        assert!(effects.contains(&Effect::SendAbort(0)));
        // The silent branch may have prepared after all: it is told too.
        assert!(effects.contains(&Effect::SendAbort(1)));
        assert!(!effects.contains(&Effect::LogDecision));
    }

    #[test]
    fn read_only_voters_hear_nothing_more() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        apply(&mut txn, vote(0, Vote::ReadOnly));
        assert_eq!(
            apply(&mut txn, vote(1, Vote::Commit)),
            vec![Effect::LogDecision]
        );
        let effects = apply(&mut txn, Event::DecisionDurable);
        assert_eq!(
            effects,
            vec![Effect::Announce(committed()), Effect::SendCommit(1)]
        );
        let effects = apply(&mut txn, Event::Delivered { branch: 1 });
        assert_eq!(effects, vec![Effect::LogEnd(committed())]);
    }

    #[test]
    fn all_read_only_logs_no_decision() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        apply(&mut txn, vote(0, Vote::ReadOnly));
        let effects = apply(&mut txn, vote(1, Vote::ReadOnly));
        let outcome = Outcome::Committed { read_only: true };
        assert_eq!(
            effects,
            vec![Effect::Announce(outcome.clone()), Effect::LogEnd(outcome)]
        );
        assert!(txn.read_only());
        assert_eq!(txn.phase(), Phase::Committed);
    }

    #[test]
    fn read_only_voters_get_no_abort() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        apply(&mut txn, vote(0, Vote::ReadOnly));
        let effects = apply(&mut txn, vote(1, abort_vote("no")));
        assert!(!effects.iter().any(|e| matches!(e, Effect::SendAbort(_))));
        assert_eq!(txn.phase(), Phase::Aborted);
    }

    #[test]
    fn no_branches_commits_as_read_only() {
        let mut txn = active(0);
        let effects = apply(&mut txn, Event::CommitRequested);
        let outcome = Outcome::Committed { read_only: true };
        assert_eq!(
            effects,
            vec![Effect::Announce(outcome.clone()), Effect::LogEnd(outcome)]
        );
    }

    #[test]
    fn a_single_branch_gets_one_phase_commit() {
        let mut txn = active(1);
        assert_eq!(
            apply(&mut txn, Event::CommitRequested),
            vec![Effect::SendOnePhase(0)]
        );
        let effects = apply(
            &mut txn,
            Event::OnePhaseAnswered(OnePhaseResult::Committed { read_only: false }),
        );
        // R6: no forced decision; the participant's local commit is the decision.
        assert_eq!(
            effects,
            vec![Effect::Announce(committed()), Effect::LogEnd(committed())]
        );
        assert_eq!(txn.phase(), Phase::Committed);
    }

    #[test]
    fn one_phase_refusal_aborts_without_an_abort_delivery() {
        let mut txn = active(1);
        apply(&mut txn, Event::CommitRequested);
        let effects = apply(
            &mut txn,
            Event::OnePhaseAnswered(OnePhaseResult::Aborted {
                reason: "sold out".into(),
            }),
        );
        assert!(!effects.iter().any(|e| matches!(e, Effect::SendAbort(_))));
        assert!(effects.contains(&Effect::Announce(Outcome::Aborted {
            reason: "sold out".into()
        })));
        assert_eq!(txn.phase(), Phase::Aborted);
    }

    #[test]
    fn a_lost_one_phase_answer_is_settled_by_the_abort_answer() {
        // The participant committed, but its answer was lost.
        let mut txn = active(1);
        apply(&mut txn, Event::CommitRequested);
        let effects = apply(
            &mut txn,
            Event::OnePhaseFailed {
                reason: "deadline passed".into(),
            },
        );
        // Nothing is announced while the outcome is the participant's secret.
        assert!(!effects.iter().any(|e| matches!(e, Effect::Announce(_))));
        assert!(effects.contains(&Effect::SendAbort(0)));
        let effects = apply(&mut txn, Event::FoundCommitted { branch: 0 });
        assert_eq!(
            effects,
            vec![Effect::Announce(committed()), Effect::LogEnd(committed())]
        );
        assert_eq!(txn.phase(), Phase::Committed);
    }

    #[test]
    fn a_one_phase_commit_that_lost_the_race_is_aborted() {
        let mut txn = active(1);
        apply(&mut txn, Event::CommitRequested);
        apply(
            &mut txn,
            Event::RollbackRequested {
                reason: "client gave up".into(),
            },
        )
        .into_iter()
        .for_each(drop);
        let effects = apply(&mut txn, Event::Delivered { branch: 0 });
        let outcome = Outcome::Aborted {
            reason: "client gave up".into(),
        };
        assert_eq!(
            effects,
            vec![Effect::Announce(outcome.clone()), Effect::LogEnd(outcome)]
        );
        // The one-phase answer arriving after the abort settled changes nothing.
        assert!(
            apply(
                &mut txn,
                Event::OnePhaseAnswered(OnePhaseResult::Aborted {
                    reason: "refused: already aborted".into()
                })
            )
            .is_empty()
        );
        assert_eq!(txn.phase(), Phase::Aborted);
    }

    #[test]
    fn rollback_before_any_prepare_ends_at_once_and_tells_no_branch() {
        let mut txn = active(2);
        let reason = "user cancelled".to_string();
        let effects = apply(
            &mut txn,
            Event::RollbackRequested {
                reason: reason.clone(),
            },
        );
        // R2: no branch was sent anything, so none holds a part to undo,
        // and an address that cannot answer cannot hold the end up.
        let aborted = Outcome::Aborted { reason };
        assert_eq!(
            effects,
            vec![
                Effect::LogAbort {
                    reason: "user cancelled".into()
                },
                Effect::Announce(aborted.clone()),
                Effect::LogEnd(aborted),
            ]
        );
        assert_eq!(txn.phase(), Phase::Aborted);
        assert_eq!(txn.branches(), [BranchPhase::Aborted, BranchPhase::Aborted]);
        // Rolling back again is harmless.
        assert!(
            apply(
                &mut txn,
                Event::RollbackRequested {
                    reason: "again".into()
                }
            )
            .is_empty()
        );
    }

    #[test]
    fn rollback_after_the_decision_is_refused() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        apply(&mut txn, vote(0, Vote::Commit));
        apply(&mut txn, vote(1, Vote::Commit));
        let rollback = Event::RollbackRequested {
            reason: "late".into(),
        };
        assert_eq!(txn.apply(rollback.clone()), Err(Rejected::AlreadyCommitted));
        apply(&mut txn, Event::DecisionDurable);
        assert_eq!(txn.apply(rollback), Err(Rejected::AlreadyCommitted));
        assert_eq!(txn.phase(), Phase::Committing);
    }

    #[test]
    fn enlisting_needs_an_active_transaction() {
        let mut txn = active(1);
        apply(&mut txn, Event::CommitRequested);
        assert_eq!(txn.enlist(), Err(Rejected::NotActive(Phase::Preparing)));
    }

    #[test]
    fn expiry_aborts_only_an_undecided_transaction() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        apply(&mut txn, vote(0, Vote::Commit));
        apply(&mut txn, vote(1, Vote::Commit));
        // Deciding: the decision is being written and is final.
        assert!(apply(&mut txn, Event::Expired).is_empty());
        assert_eq!(txn.phase(), Phase::Deciding);

        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        let effects = apply(&mut txn, Event::Expired);
        assert_eq!(txn.phase(), Phase::Aborting);
        assert!(effects.contains(&Effect::SendAbort(0)));
        assert!(effects.contains(&Effect::SendAbort(1)));
    }

    #[test]
    fn a_prepare_that_never_left_is_an_abort_vote_owed_nothing() {
        let mut txn = active(3);
        apply(&mut txn, Event::CommitRequested);
        apply(&mut txn, vote(0, Vote::Commit));
        let effects = apply(
            &mut txn,
            Event::PrepareNotSent {
                branch: 1,
                reason: "connection refused".into(),
            },
        );
        // The prepared branch and the one still preparing (its Prepare may
        // have arrived) hear the Abort; the one never reached does not.
        assert!(effects.contains(&Effect::SendAbort(0)));
        assert!(!effects.contains(&Effect::SendAbort(1)));
        assert!(effects.contains(&Effect::SendAbort(2)));
        assert_eq!(txn.branches()[1], BranchPhase::Aborted);
        apply(&mut txn, Event::Delivered { branch: 0 });
        let effects = apply(&mut txn, Event::Delivered { branch: 2 });
        assert_eq!(txn.phase(), Phase::Aborted);
        assert!(matches!(
            effects.last(),
            Some(Effect::LogEnd(Outcome::Aborted { .. }))
        ));
    }

    #[test]
    fn a_prepare_found_never_sent_after_the_abort_went_out_settles_its_branch() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        // Branch 0 refuses first; branch 1's Prepare is still connecting,
        // so it is sent an Abort it may be owed.
        let effects = apply(&mut txn, vote(0, abort_vote("no funds")));
        assert!(effects.contains(&Effect::SendAbort(1)));
        // Its connection then fails: it was never sent anything, and the
        // Abort to an address that may never answer is not waited for.
        let effects = apply(
            &mut txn,
            Event::PrepareNotSent {
                branch: 1,
                reason: "connection refused".into(),
            },
        );
        assert_eq!(txn.phase(), Phase::Aborted);
        assert!(matches!(
            effects.last(),
            Some(Effect::LogEnd(Outcome::Aborted { .. }))
        ));
    }

    #[test]
    fn a_one_phase_commit_that_never_left_aborts_at_once() {
        let mut txn = active(1);
        apply(&mut txn, Event::CommitRequested);
        let effects = apply(
            &mut txn,
            Event::OnePhaseNotSent {
                reason: "connection refused".into(),
            },
        );
        // No commit can have happened: announced now, no Abort owed.
        assert!(effects.contains(&Effect::Announce(Outcome::Aborted {
            reason: "connection refused".into()
        })));
        assert!(!effects.iter().any(|e| matches!(e, Effect::SendAbort(_))));
        assert_eq!(txn.phase(), Phase::Aborted);
        // A one-phase commit that may have arrived is still in doubt.
        let mut txn = active(1);
        apply(&mut txn, Event::CommitRequested);
        let effects = apply(
            &mut txn,
            Event::OnePhaseFailed {
                reason: "deadline".into(),
            },
        );
        assert!(!effects.iter().any(|e| matches!(e, Effect::Announce(_))));
        assert_eq!(effects.last(), Some(&Effect::SendAbort(0)));
    }

    #[test]
    fn recovery_without_a_decision_tells_every_branch() {
        // No record says which Prepares went out before the crash.
        let (txn, effects) = TwoPhase::recover(2, None, None);
        assert!(effects.contains(&Effect::SendAbort(0)));
        assert!(effects.contains(&Effect::SendAbort(1)));
        assert_eq!(txn.phase(), Phase::Aborting);
    }

    #[test]
    fn a_repeated_commit_request_adds_nothing() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        assert!(apply(&mut txn, Event::CommitRequested).is_empty());
    }

    #[test]
    fn recovery_with_a_durable_commit_redelivers_commit() {
        let (txn, effects) = TwoPhase::recover(2, Some(Decision::Commit), None);
        assert_eq!(
            effects,
            vec![
                Effect::Announce(committed()),
                Effect::SendCommit(0),
                Effect::SendCommit(1)
            ]
        );
        assert_eq!(txn.phase(), Phase::Committing);
    }

    #[test]
    fn recovery_without_a_decision_aborts_every_branch() {
        let (txn, effects) = TwoPhase::recover(2, None, None);
        assert!(effects.contains(&Effect::SendAbort(0)));
        assert!(effects.contains(&Effect::SendAbort(1)));
        assert!(!effects.iter().any(|e| matches!(e, Effect::SendCommit(_))));
        assert_eq!(txn.phase(), Phase::Aborting);
    }

    #[test]
    fn recovery_of_a_lone_branch_asks_before_announcing() {
        let (mut txn, effects) = TwoPhase::recover(1, None, None);
        assert!(!effects.iter().any(|e| matches!(e, Effect::Announce(_))));
        let effects = apply(&mut txn, Event::FoundCommitted { branch: 0 });
        assert!(effects.contains(&Effect::Announce(committed())));
    }

    #[test]
    fn events_for_unknown_branches_are_ignored() {
        let mut txn = active(2);
        apply(&mut txn, Event::CommitRequested);
        assert!(apply(&mut txn, vote(7, Vote::Commit)).is_empty());
        assert!(apply(&mut txn, Event::Delivered { branch: 9 }).is_empty());
        assert_eq!(txn.phase(), Phase::Preparing);
    }
}
