//! Whom a participant obeys (DESIGN §12): only a call signed by a
//! coordinator key it trusts, checked before any handler or ledger work.
//! A service told nothing refuses every call and will not start serving:
//! obeying anyone who reaches the port must be asked for by name.

use concord_proto::signature::{SignatureError, SignedCall, TrustedKeys};
use tonic::Status;

use super::BranchContext;

/// Whose calls a participant obeys: a service's choice, made once at its
/// start (`--coordinator-key FILE` or `--accept-unsigned-calls` in the
/// examples' command lines, [`Callers::from_flags`]).
#[derive(Debug, Clone)]
pub enum Callers {
    /// Calls signed by one of these coordinator keys.
    SignedBy(TrustedKeys),
    /// Anyone who reaches the port: for a participant only its coordinator
    /// can reach (a private network, or mutual TLS). Warned at each start.
    Anyone,
}

impl Callers {
    /// The callers a command line asked for: the keys in `key_file` (PEM,
    /// one or more `PUBLIC KEY` blocks), or anyone when `accept_unsigned`
    /// was typed; an error naming both flags when neither was.
    pub fn from_flags(
        key_file: Option<&std::path::Path>,
        accept_unsigned: bool,
    ) -> Result<Self, CallersError> {
        match (key_file, accept_unsigned) {
            (Some(_), true) => Err(CallersError::Both),
            (Some(path), false) => {
                let text = std::fs::read_to_string(path).map_err(|source| CallersError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                TrustedKeys::from_pem(&text)
                    .map(Self::SignedBy)
                    .map_err(|source| CallersError::Key {
                        path: path.to_owned(),
                        source,
                    })
            }
            (None, true) => Ok(Self::Anyone),
            (None, false) => Err(CallersError::Neither),
        }
    }
}

/// Why [`Callers::from_flags`] could not say whom to obey.
#[derive(Debug, thiserror::Error)]
pub enum CallersError {
    #[error(
        "whose calls should this participant obey? Give --coordinator-key FILE (the \
         coordinator's public key: `concord keys public`), or --accept-unsigned-calls to obey \
         anyone who reaches its port"
    )]
    Neither,
    #[error("--coordinator-key and --accept-unsigned-calls contradict each other: give one")]
    Both,
    #[error("cannot read the coordinator key file {}: {source}", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}", path.display())]
    Key {
        path: std::path::PathBuf,
        source: concord_proto::signature::KeyError,
    },
}

/// What a [`super::ParticipantService`] checks of each call.
#[derive(Debug, Clone, Default)]
pub(crate) enum Trust {
    /// Not configured: every call is refused, and `serve` will not start.
    #[default]
    Unset,
    /// Calls signed by one of these keys; the forged ones counted for the
    /// log.
    Keys(TrustedKeys, std::sync::Arc<Refusals>),
    /// Anyone who reaches the port (`accept_unsigned_calls`).
    Anyone,
}

/// How often at most a participant warns of refused calls: one forged
/// call is worth an operator's eye, a flood of them must not flood the log
/// (nor cost a log write each).
const WARN_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// The refused calls not yet warned of.
#[derive(Debug, Default)]
pub(crate) struct Refusals(std::sync::Mutex<RefusalsState>);

#[derive(Debug, Default)]
struct RefusalsState {
    last_warned: Option<std::time::Instant>,
    unwarned: u64,
}

impl Refusals {
    /// Counts a refusal at `now`; Some(how many refusals the warning due
    /// now stands for) when one is due: the first at once, then at most
    /// one per [`WARN_EVERY`].
    fn note(&self, now: std::time::Instant) -> Option<u64> {
        let mut state = self.0.lock().unwrap_or_else(|p| p.into_inner());
        state.unwarned += 1;
        match state.last_warned {
            Some(at) if now.saturating_duration_since(at) < WARN_EVERY => None,
            _ => {
                state.last_warned = Some(now);
                Some(std::mem::take(&mut state.unwarned))
            }
        }
    }
}

impl From<Callers> for Trust {
    fn from(callers: Callers) -> Self {
        match callers {
            Callers::SignedBy(keys) => Self::Keys(keys, Default::default()),
            Callers::Anyone => Self::Anyone,
        }
    }
}

impl Trust {
    /// Whether the call `method` on `branch` with `payload`, carrying
    /// `signature`, may be obeyed; UNAUTHENTICATED saying why otherwise.
    pub(crate) fn check(
        &self,
        method: &str,
        branch: &BranchContext,
        payload: &[u8],
        signature: Option<&str>,
    ) -> Result<(), Status> {
        self.check_call(
            &SignedCall {
                method,
                transaction_id: &branch.transaction_id,
                branch: &branch.branch,
                payload,
            },
            signature,
        )
    }

    /// Whether the `Batch` of `calls`, carrying `signature`, is vouched
    /// for as a whole: then every call in it may be obeyed without a
    /// signature of its own. Checked once, before any call's work.
    pub(crate) fn check_batch(
        &self,
        calls: &[concord_proto::v1::BatchCall],
        signature: Option<&str>,
    ) -> Result<(), Status> {
        match self {
            Self::Anyone => Ok(()),
            Self::Unset => Err(Status::unauthenticated(NOT_CONFIGURED)),
            Self::Keys(..) => self.check_call(
                &SignedCall {
                    method: concord_proto::signature::BATCH_METHOD,
                    transaction_id: "",
                    branch: "",
                    payload: &concord_proto::signature::batch_payload_of(calls),
                },
                signature,
            ),
        }
    }

    pub(crate) fn check_call(
        &self,
        call: &SignedCall<'_>,
        signature: Option<&str>,
    ) -> Result<(), Status> {
        match self {
            Self::Anyone => Ok(()),
            Self::Unset => Err(Status::unauthenticated(NOT_CONFIGURED)),
            Self::Keys(keys, refusals) => keys.verify(call, signature).map_err(|error| {
                // A call that claims to be the coordinator's and is not:
                // worth an operator's eye, once in a while.
                if !matches!(error, SignatureError::Missing)
                    && let Some(refused) = refusals.note(std::time::Instant::now())
                {
                    tracing::warn!(method = call.method, txn = call.transaction_id,
                        branch = call.branch, %error, refused,
                        "refused calls whose signature is not the coordinator's (this one, \
                         and the count since the last such warning; one a 10 s at most)");
                }
                Status::unauthenticated(error.to_string())
            }),
        }
    }
}

/// Why a participant told nothing refuses: what to do about it.
pub(crate) const NOT_CONFIGURED: &str = "this participant trusts no coordinator key: give it the \
     coordinator's public key (ParticipantService::with_coordinator_keys; `concord keys public`), \
     or accept unsigned calls explicitly (ParticipantService::accept_unsigned_calls)";

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn refused_calls_are_warned_of_once_then_at_most_every_ten_seconds_with_a_count() {
        let refusals = Refusals::default();
        let start = Instant::now();
        assert_eq!(refusals.note(start), Some(1), "the first at once");
        for i in 1..=99 {
            assert_eq!(refusals.note(start + Duration::from_millis(i * 50)), None);
        }
        assert_eq!(
            refusals.note(start + WARN_EVERY),
            Some(100),
            "the next warning counts every refusal since the last"
        );
        assert_eq!(
            refusals.note(start + WARN_EVERY + Duration::from_secs(1)),
            None
        );
    }
}
