//! Crash points: places at the log boundaries of both protocols where a
//! test can stop the coordinator dead, as `kill -9` would at exactly that
//! instant (DESIGN §7 fault schedules). Built only with the `failpoints`
//! feature; `FAILPOINTS="<name>=return"` arms one. Without the feature the
//! calls compile to nothing.
//!
//! Two-phase commit, in protocol order:
//! - `2pc-before-prepare`: commit asked, no Prepare sent yet;
//! - `2pc-before-one-phase`: a single branch's records durable, its
//!   CommitOnePhase not sent yet;
//! - `2pc-before-decision`: every vote YES, decision not written;
//! - `2pc-after-decision`: decision durable, nobody told;
//! - `2pc-mid-phase-two`: one branch acknowledged Commit, others not yet;
//! - `2pc-before-end`: every branch acknowledged, end not recorded;
//! - `2pc-after-abort-decision`: abort decided, no Abort delivered.
//!
//! Sagas:
//! - `saga-before-step-record` / `saga-after-step-record`: around the
//!   record of a step's action outcome;
//! - `saga-before-compensation-record` / `saga-after-compensation-record`:
//!   around the record of a step's compensation.

/// Aborts the process if the named fail point is armed.
#[cfg(feature = "failpoints")]
pub fn point(name: &'static str) {
    if fail::eval(name, |_| ()).is_some() {
        tracing::error!(point = name, "crash point reached: aborting the process");
        std::process::abort();
    }
}

/// Nothing: fail points are compiled out.
#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub fn point(_name: &'static str) {}
