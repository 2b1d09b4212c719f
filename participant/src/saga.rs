//! The client side of sagas: build a step graph that reads like the
//! business process, and submit it in one call.
//!
//! ```no_run
//! # async fn trip(client: &concord_participant::CoordinatorClient) -> Result<(), concord_participant::ClientError> {
//! use concord_participant::saga::{Saga, Step};
//! let status = Saga::new()
//!     .idempotency_key("trip-42")
//!     .step(Step::new("flight", "http://flights:7601").action("LH123").compensation("LH123"))
//!     .step(Step::new("hotel", "http://hotels:7602").action("H1").compensation("H1").after(["flight"]))
//!     .step(Step::new("car", "http://cars:7603").action("C1").compensation("C1").after(["flight"]))
//!     .step(Step::new("payment", "http://pay:7604").action("card").pivot().after(["hotel", "car"]))
//!     .step(Step::new("email", "http://mail:7605").action("me@x").retriable())
//!     .run(client)
//!     .await?;
//! # Ok(()) }
//! ```

use std::time::Duration;

use concord_proto::v1 as pb;

use crate::client::{ClientError, CoordinatorClient};
// The answers live with the client that returns them, so that the client
// needs nothing of this builder; they are a saga's, so they are found here.
pub use crate::client::{SagaState, SagaStatus};

/// How a step's calls are retried; `None` fields take the coordinator's
/// defaults (100 ms doubling to 10 s, 5 attempts, with jitter).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RetryPolicy {
    pub initial_delay: Option<Duration>,
    pub multiplier: Option<f64>,
    pub max_delay: Option<Duration>,
    pub max_attempts: Option<u32>,
    pub jitter: bool,
}

impl RetryPolicy {
    /// `max_attempts` attempts, `initial_delay` doubling, jittered.
    pub fn attempts(max_attempts: u32, initial_delay: Duration) -> Self {
        Self {
            initial_delay: Some(initial_delay),
            multiplier: None,
            max_delay: None,
            max_attempts: Some(max_attempts),
            jitter: true,
        }
    }

    fn to_wire(&self) -> pb::RetryPolicy {
        let ms =
            |d: Option<Duration>| d.map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        pb::RetryPolicy {
            initial_delay_ms: ms(self.initial_delay),
            multiplier: self.multiplier.unwrap_or(0.0),
            max_delay_ms: ms(self.max_delay),
            max_attempts: self.max_attempts.unwrap_or(0),
            disable_jitter: !self.jitter,
        }
    }
}

/// One step. Compensatable unless [`Step::pivot`] or [`Step::retriable`];
/// runs after the previous step unless [`Step::after`] or [`Step::first`].
#[derive(Debug, Clone)]
pub struct Step(pb::SagaStep);

impl Step {
    pub fn new(name: impl Into<String>, participant: impl Into<String>) -> Self {
        Self(pb::SagaStep {
            name: name.into(),
            participant: participant.into(),
            ..Default::default()
        })
    }

    /// The payload handed to the participant's action.
    pub fn action(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.0.action = payload.into();
        self
    }

    /// The payload handed to the participant's compensation.
    pub fn compensation(mut self, payload: impl Into<Vec<u8>>) -> Self {
        self.0.compensation = Some(payload.into());
        self
    }

    /// Runs once these steps succeeded (instead of after the previous one).
    pub fn after<I, N>(mut self, steps: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.0.depends_on = Some(pb::Dependencies {
            steps: steps.into_iter().map(Into::into).collect(),
        });
        self
    }

    /// Runs at once, waiting for no other step.
    pub fn first(self) -> Self {
        self.after(Vec::<String>::new())
    }

    /// The go/no-go step: once it succeeded, the saga only moves forward.
    pub fn pivot(mut self) -> Self {
        self.0.kind = pb::StepKind::Pivot.into();
        self
    }

    /// After the pivot: retried until it succeeds, never compensated.
    pub fn retriable(mut self) -> Self {
        self.0.kind = pb::StepKind::Retriable.into();
        self
    }

    /// Deadline of each call to this step.
    pub fn attempt_timeout(mut self, timeout: Duration) -> Self {
        self.0.attempt_timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        self
    }

    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.0.retry = Some(policy.to_wire());
        self
    }

    /// The wire form, for calls this builder does not cover.
    pub fn into_wire(self) -> pb::SagaStep {
        self.0
    }
}

/// A saga being built.
#[derive(Debug, Clone, Default)]
pub struct Saga {
    request: pb::SubmitSagaRequest,
}

impl Saga {
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes resubmitting safe: the same key returns the first saga.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.request.idempotency_key = key.into();
        self
    }

    pub fn description(mut self, description: impl Into<String>) -> Self {
        self.request.description = description.into();
        self
    }

    pub fn step(mut self, step: Step) -> Self {
        self.request.steps.push(step.0);
        self
    }

    /// Submits the saga; answers once it is durably accepted.
    pub async fn submit(self, client: &CoordinatorClient) -> Result<SagaStatus, ClientError> {
        client.submit_saga(self.request).await
    }

    /// Submits the saga and answers once it reached a terminal state.
    pub async fn run(mut self, client: &CoordinatorClient) -> Result<SagaStatus, ClientError> {
        self.request.wait = true;
        client.submit_saga(self.request).await
    }
}
