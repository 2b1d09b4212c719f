//! Compensating sagas (DESIGN §3), as a pure state machine.
//!
//! A saga is a graph of steps. Each step waits for the steps it depends on;
//! steps whose dependencies succeeded run in parallel. Going forward, a
//! step's success is recorded before any step that depends on it starts. A
//! definite failure — or retries running out on a compensatable step, whose
//! outcome is then unknown — turns the saga backward: nothing new starts,
//! in-flight actions finish, and every step that succeeded or may have
//! succeeded is compensated, a step only after every step depending on it is
//! settled (reverse dependency order). Once the pivot succeeded the saga only
//! moves forward.
//!
//! As with `two_phase`, the runtime feeds [`Event`]s and executes the
//! [`Effect`]s; retries, backoff and deadlines are the runtime's. This module
//! has no I/O, no clock and no randomness.
//!
//! Invariant I4 (checked by the property test below): each saga ends with
//! all steps done, or with every done-or-maybe-done compensatable step
//! compensated in reverse order; after the pivot, it completes (or fails
//! for an operator, never compensates).

/// Position of a step in the saga's definition.
pub type StepIdx = usize;

/// How a step may be undone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    Compensatable,
    Pivot,
    Retriable,
}

/// What the machine needs to know of a step's definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepShape {
    pub kind: StepKind,
    pub depends_on: Vec<StepIdx>,
}

/// Where a step is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepStatus {
    Pending,
    Running,
    Succeeded,
    /// A definite "no": nothing of the action happened.
    Failed,
    /// Retries ran out: the action may have happened.
    Unknown,
    Compensating,
    Compensated,
    /// Never started: the saga went backward first.
    Skipped,
}

/// Where the saga is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SagaPhase {
    Running,
    Compensating,
    /// Terminal: every step succeeded.
    Completed,
    /// Terminal: every done-or-maybe-done step compensated.
    Compensated,
    /// Terminal: a step after the pivot definitely failed; needs an operator.
    Failed,
}

impl SagaPhase {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            SagaPhase::Completed | SagaPhase::Compensated | SagaPhase::Failed
        )
    }
}

/// Something that happened to the saga.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The saga was accepted; start the steps with no dependencies.
    Start,
    ActionSucceeded(StepIdx),
    /// The participant answered a definite business failure.
    ActionFailed {
        step: StepIdx,
        reason: String,
    },
    /// A compensatable step's retries ran out without a definite answer.
    ActionExhausted {
        step: StepIdx,
        reason: String,
    },
    /// A pivot or retriable step passed its retry budget; still retrying.
    ActionOverBudget(StepIdx),
    Compensated(StepIdx),
    /// A compensation passed its retry budget; still retrying.
    CompensationOverBudget(StepIdx),
}

/// Something the runtime must do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Effect {
    /// Call the step's action, retrying per its policy. With
    /// `report_budget`, report [`Event::ActionOverBudget`] (pivot,
    /// retriable) or [`Event::ActionExhausted`] (compensatable) when the
    /// policy's attempts run out.
    Execute { step: StepIdx, report_budget: bool },
    /// Call the step's compensation until it succeeds; with `report_budget`,
    /// report [`Event::CompensationOverBudget`] once past the budget.
    Compensate { step: StepIdx, report_budget: bool },
    /// Make the step's status durable before the effects after it (§3:
    /// progress recorded before a dependent step starts).
    Record { step: StepIdx, status: StepStatus },
    /// Record that the saga needs an operator's attention (lazily).
    FlagAttention,
    /// The saga ended; record it.
    End {
        phase: SagaPhase,
        reason: Option<String>,
    },
}

/// One saga's protocol state.
#[derive(Clone, Debug)]
pub struct Saga {
    shapes: Vec<StepShape>,
    status: Vec<StepStatus>,
    phase: SagaPhase,
    /// Set when a step after the pivot definitely failed: nothing new
    /// starts, and the saga fails once in-flight actions finish.
    halted: bool,
    reason: Option<String>,
    needs_attention: bool,
}

impl Saga {
    /// A saga about to start. The shapes must be valid (acyclic, kinds in
    /// order): the API validates them before anything is recorded.
    pub fn new(shapes: Vec<StepShape>) -> Self {
        let status = vec![StepStatus::Pending; shapes.len()];
        Self {
            shapes,
            status,
            phase: SagaPhase::Running,
            halted: false,
            reason: None,
            needs_attention: false,
        }
    }

    /// A saga read back after a restart, from the statuses its records hold
    /// (None where a step has no record). A step whose dependencies all
    /// succeeded but has no record may have run: going forward it is called
    /// again (participants are idempotent); going backward it is compensated
    /// (a compensation of something that never happened is a no-op).
    pub fn recover(
        shapes: Vec<StepShape>,
        recorded: &[Option<StepStatus>],
        reason: Option<String>,
    ) -> (Self, Vec<Effect>) {
        let mut saga = Self::new(shapes);
        saga.reason = reason;
        for (idx, status) in recorded.iter().enumerate().take(saga.status.len()) {
            if let Some(status) = status {
                saga.status[idx] = match status {
                    // In flight when the coordinator stopped: unrecorded.
                    StepStatus::Running | StepStatus::Compensating | StepStatus::Pending => {
                        StepStatus::Pending
                    }
                    other => *other,
                };
            }
        }
        let mut effects = Vec::new();
        let retriable_failed = (0..saga.status.len()).any(|i| {
            saga.status[i] == StepStatus::Failed && saga.shapes[i].kind == StepKind::Retriable
        });
        let backward = (0..saga.status.len()).any(|i| {
            matches!(
                saga.status[i],
                StepStatus::Failed | StepStatus::Unknown | StepStatus::Compensated
            ) && saga.shapes[i].kind != StepKind::Retriable
        });
        if retriable_failed {
            saga.halted = true;
            saga.finish_halted(&mut effects);
        } else if backward {
            for idx in 0..saga.status.len() {
                if saga.status[idx] == StepStatus::Pending {
                    saga.status[idx] = if saga.deps_succeeded(idx) {
                        StepStatus::Unknown
                    } else {
                        StepStatus::Skipped
                    };
                }
            }
            saga.phase = SagaPhase::Compensating;
            saga.schedule_compensations(&mut effects);
        } else {
            saga.start_ready(&mut effects);
            saga.finish_if_done(&mut effects);
        }
        (saga, effects)
    }

    pub fn phase(&self) -> SagaPhase {
        self.phase
    }

    pub fn statuses(&self) -> &[StepStatus] {
        &self.status
    }

    pub fn shapes(&self) -> &[StepShape] {
        &self.shapes
    }

    pub fn reason(&self) -> Option<&str> {
        self.reason.as_deref()
    }

    /// Whether an operator should look: a compensation past its budget, or
    /// a FAILED saga. A saga that ended COMPLETED or COMPENSATED (an
    /// operator's resolution included) no longer does — the same rule its
    /// end record applies in the store, so the live view and the log agree.
    pub fn needs_attention(&self) -> bool {
        self.needs_attention && !matches!(self.phase, SagaPhase::Completed | SagaPhase::Compensated)
    }

    /// Whether the runtime should keep retrying a running action: not a
    /// compensatable step's once the saga goes backward (its outcome then
    /// counts as unknown and it is compensated).
    pub fn keeps_retrying(&self, step: StepIdx) -> bool {
        match self.shapes.get(step).map(|s| s.kind) {
            Some(StepKind::Compensatable) => self.phase == SagaPhase::Running && !self.halted,
            Some(_) => true,
            None => false,
        }
    }

    pub fn apply(&mut self, event: Event) -> Vec<Effect> {
        let mut effects = Vec::new();
        match event {
            Event::Start => {
                if self.status.iter().all(|s| *s == StepStatus::Pending) {
                    self.start_ready(&mut effects);
                    self.finish_if_done(&mut effects);
                }
            }
            Event::ActionSucceeded(step) => {
                if self.status.get(step) != Some(&StepStatus::Running) {
                    return effects;
                }
                self.status[step] = StepStatus::Succeeded;
                effects.push(Effect::Record {
                    step,
                    status: StepStatus::Succeeded,
                });
                self.advance(&mut effects);
            }
            Event::ActionFailed { step, reason } => {
                if self.status.get(step) != Some(&StepStatus::Running) {
                    return effects;
                }
                self.status[step] = StepStatus::Failed;
                effects.push(Effect::Record {
                    step,
                    status: StepStatus::Failed,
                });
                if self.shapes[step].kind == StepKind::Retriable {
                    // After the pivot: no way back, and this step will
                    // not succeed by itself. An operator decides.
                    self.halted = true;
                    self.reason.get_or_insert(reason);
                } else {
                    self.turn_backward(reason);
                }
                self.advance(&mut effects);
            }
            Event::ActionExhausted { step, reason } => {
                if self.status.get(step) != Some(&StepStatus::Running) {
                    return effects;
                }
                self.status[step] = StepStatus::Unknown;
                effects.push(Effect::Record {
                    step,
                    status: StepStatus::Unknown,
                });
                self.turn_backward(reason);
                self.advance(&mut effects);
            }
            Event::ActionOverBudget(step) => {
                if self.status.get(step) == Some(&StepStatus::Running) {
                    self.flag_attention(&mut effects);
                    effects.push(Effect::Execute {
                        step,
                        report_budget: false,
                    });
                }
            }
            Event::Compensated(step) => {
                if self.status.get(step) != Some(&StepStatus::Compensating) {
                    return effects;
                }
                self.status[step] = StepStatus::Compensated;
                effects.push(Effect::Record {
                    step,
                    status: StepStatus::Compensated,
                });
                self.advance(&mut effects);
            }
            Event::CompensationOverBudget(step) => {
                if self.status.get(step) == Some(&StepStatus::Compensating) {
                    self.flag_attention(&mut effects);
                    effects.push(Effect::Compensate {
                        step,
                        report_budget: false,
                    });
                }
            }
        }
        effects
    }

    fn flag_attention(&mut self, effects: &mut Vec<Effect>) {
        if !self.needs_attention {
            self.needs_attention = true;
            effects.push(Effect::FlagAttention);
        }
    }

    fn turn_backward(&mut self, reason: String) {
        if self.phase != SagaPhase::Running || self.halted {
            return;
        }
        self.phase = SagaPhase::Compensating;
        self.reason = Some(reason);
        for status in &mut self.status {
            if *status == StepStatus::Pending {
                *status = StepStatus::Skipped;
            }
        }
    }

    /// After any step settled: start what is ready, or compensate what may
    /// be compensated, and end when nothing is left.
    fn advance(&mut self, effects: &mut Vec<Effect>) {
        match self.phase {
            SagaPhase::Running if self.halted => self.finish_halted(effects),
            SagaPhase::Running => {
                self.start_ready(effects);
                self.finish_if_done(effects);
            }
            SagaPhase::Compensating => self.schedule_compensations(effects),
            _ => {}
        }
    }

    fn deps_succeeded(&self, step: StepIdx) -> bool {
        self.shapes[step]
            .depends_on
            .iter()
            .all(|dep| self.status.get(*dep) == Some(&StepStatus::Succeeded))
    }

    fn start_ready(&mut self, effects: &mut Vec<Effect>) {
        for step in 0..self.status.len() {
            if self.status[step] == StepStatus::Pending && self.deps_succeeded(step) {
                self.status[step] = StepStatus::Running;
                effects.push(Effect::Execute {
                    step,
                    report_budget: true,
                });
            }
        }
    }

    fn finish_if_done(&mut self, effects: &mut Vec<Effect>) {
        if self.phase == SagaPhase::Running
            && self.status.iter().all(|s| *s == StepStatus::Succeeded)
        {
            self.phase = SagaPhase::Completed;
            effects.push(Effect::End {
                phase: SagaPhase::Completed,
                reason: None,
            });
        }
    }

    fn finish_halted(&mut self, effects: &mut Vec<Effect>) {
        if self.status.contains(&StepStatus::Running) {
            return;
        }
        self.phase = SagaPhase::Failed;
        effects.push(Effect::End {
            phase: SagaPhase::Failed,
            reason: self.reason.clone(),
        });
    }

    /// A step needs compensating if it succeeded or may have; it may be
    /// compensated once no step depending on it still holds work.
    fn schedule_compensations(&mut self, effects: &mut Vec<Effect>) {
        for step in 0..self.status.len() {
            if !matches!(
                self.status[step],
                StepStatus::Succeeded | StepStatus::Unknown
            ) {
                continue;
            }
            let dependents_settled = (0..self.status.len())
                .filter(|other| self.shapes[*other].depends_on.contains(&step))
                .all(|other| {
                    matches!(
                        self.status[other],
                        StepStatus::Failed | StepStatus::Compensated | StepStatus::Skipped
                    )
                });
            if dependents_settled {
                self.status[step] = StepStatus::Compensating;
                effects.push(Effect::Compensate {
                    step,
                    report_budget: true,
                });
            }
        }
        let open = self.status.iter().any(|s| {
            matches!(
                s,
                StepStatus::Running
                    | StepStatus::Succeeded
                    | StepStatus::Unknown
                    | StepStatus::Compensating
            )
        });
        if !open {
            self.phase = SagaPhase::Compensated;
            effects.push(Effect::End {
                phase: SagaPhase::Compensated,
                reason: self.reason.clone(),
            });
        }
    }
}

/// Why a step graph cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ShapeError {
    #[error("step {step} depends on step {dep}, which does not exist")]
    UnknownDependency { step: StepIdx, dep: StepIdx },
    #[error("step {0} depends on itself")]
    SelfDependency(StepIdx),
    #[error("the steps form a cycle through step {0}")]
    Cycle(StepIdx),
    #[error("steps {0} and {1} are both pivots; a saga has at most one")]
    TwoPivots(StepIdx, StepIdx),
    #[error(
        "pivot step {pivot} must come after compensatable step {step} (depend on it, directly or not)"
    )]
    PivotBeforeCompensatable { pivot: StepIdx, step: StepIdx },
    #[error(
        "retriable step {retriable} must come after step {step} (depend on it, directly or not)"
    )]
    RetriableTooEarly { retriable: StepIdx, step: StepIdx },
}

/// Checks that a step graph can run as a saga: dependencies exist, no
/// cycles, at most one pivot, the pivot after every compensatable step, and
/// every retriable step after the pivot and every compensatable step (so
/// that once any of them ran, the saga can only go forward).
pub fn check_shapes(shapes: &[StepShape]) -> Result<(), ShapeError> {
    let n = shapes.len();
    for (step, shape) in shapes.iter().enumerate() {
        for dep in &shape.depends_on {
            if *dep == step {
                return Err(ShapeError::SelfDependency(step));
            }
            if *dep >= n {
                return Err(ShapeError::UnknownDependency { step, dep: *dep });
            }
        }
    }
    // Ancestors of each step, by depth-first search with cycle detection.
    let mut ancestors: Vec<Option<Vec<bool>>> = vec![None; n];
    let mut visiting = vec![false; n];
    fn visit(
        step: StepIdx,
        shapes: &[StepShape],
        ancestors: &mut Vec<Option<Vec<bool>>>,
        visiting: &mut Vec<bool>,
    ) -> Result<(), ShapeError> {
        if ancestors[step].is_some() {
            return Ok(());
        }
        if visiting[step] {
            return Err(ShapeError::Cycle(step));
        }
        visiting[step] = true;
        let mut mine = vec![false; shapes.len()];
        for dep in &shapes[step].depends_on {
            visit(*dep, shapes, ancestors, visiting)?;
            mine[*dep] = true;
            if let Some(theirs) = &ancestors[*dep] {
                for (i, is) in theirs.iter().enumerate() {
                    mine[i] |= *is;
                }
            }
        }
        visiting[step] = false;
        ancestors[step] = Some(mine);
        Ok(())
    }
    for step in 0..n {
        visit(step, shapes, &mut ancestors, &mut visiting)?;
    }
    let ancestors: Vec<Vec<bool>> = ancestors
        .into_iter()
        .map(Option::unwrap_or_default)
        .collect();
    let pivots: Vec<StepIdx> = (0..n)
        .filter(|i| shapes[*i].kind == StepKind::Pivot)
        .collect();
    if pivots.len() > 1 {
        return Err(ShapeError::TwoPivots(pivots[0], pivots[1]));
    }
    let compensatable: Vec<StepIdx> = (0..n)
        .filter(|i| shapes[*i].kind == StepKind::Compensatable)
        .collect();
    if let Some(pivot) = pivots.first()
        && let Some(step) = compensatable.iter().find(|c| !ancestors[*pivot][**c])
    {
        return Err(ShapeError::PivotBeforeCompensatable {
            pivot: *pivot,
            step: *step,
        });
    }
    for retriable in (0..n).filter(|i| shapes[*i].kind == StepKind::Retriable) {
        let must_follow = compensatable.iter().chain(pivots.iter());
        for step in must_follow {
            if !ancestors[retriable][*step] {
                return Err(ShapeError::RetriableTooEarly {
                    retriable,
                    step: *step,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
