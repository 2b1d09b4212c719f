//! Crash points in the participant SDK, for crash tests: with the
//! `failpoints` feature, `FAILPOINTS="<name>=return"` makes the participant
//! process abort at that instant, as `kill -9` would. Without the feature
//! everything here compiles to nothing.
//!
//! - `participant-after-prepare`: the COMMIT vote is durable, not yet sent;
//! - `participant-before-commit`: Commit arrived, not yet applied;
//! - `participant-after-commit`: Commit applied, not yet acknowledged;
//! - `participant-after-one-phase`: a one-phase commit applied, not yet
//!   answered;
//! - `participant-after-action`: a saga action applied, not yet answered;
//! - `participant-after-compensate`: a compensation applied, not yet
//!   acknowledged.

/// Arms the fail points named in `FAILPOINTS`; keep the guard alive for as
/// long as the process runs. A no-op without the `failpoints` feature.
pub fn arm_from_env() -> Armed {
    #[cfg(feature = "failpoints")]
    {
        Armed(Some(fail::FailScenario::setup()))
    }
    #[cfg(not(feature = "failpoints"))]
    {
        Armed(None)
    }
}

/// Keeps fail points armed while alive.
pub struct Armed(#[allow(dead_code)] Option<Scenario>);

#[cfg(feature = "failpoints")]
type Scenario = fail::FailScenario<'static>;
#[cfg(not(feature = "failpoints"))]
type Scenario = ();

/// Aborts the process if the named fail point is armed.
#[cfg(feature = "failpoints")]
pub(crate) fn point(name: &'static str) {
    if fail::eval(name, |_| ()).is_some() {
        tracing::error!(point = name, "crash point reached: aborting the process");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn point(_name: &'static str) {}
