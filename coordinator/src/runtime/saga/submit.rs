//! Submitting a saga: the definition durable before the answer (§3), a key
//! found again answered with the first saga, and the answer once it ends
//! when asked to wait. The saga in memory and its driver are in
//! [`super`].

use crate::model::TxnId;
use crate::model::TxnKind;
use crate::protocol::saga as saga_protocol;
use crate::protocol::saga::Saga;
use crate::protocol::saga::StepShape;
use crate::runtime::error::Error;
use crate::runtime::keys::KeyClaim;
use crate::runtime::requests::SagaAccepted;
use crate::runtime::requests::SubmitSaga;
use crate::runtime::requests::TxnHeader;
use crate::runtime::saga;
use crate::runtime::saga::LiveSaga;
use crate::runtime::shared::Runtime;
use crate::store::Record;
use std::sync::Arc;

impl Runtime {
    /// Submits a saga: durable before the answer; with `wait`, answers once
    /// it is terminal. A known idempotency key returns the first saga.
    pub async fn submit_saga(&self, request: SubmitSaga) -> Result<SagaAccepted, Error> {
        let shared = &self.shared;
        let (key, digest) = (
            request.idempotency_key.clone(),
            request.request_digest.clone(),
        );
        let claim = match self.claim_key(key.as_deref(), digest.as_ref()).await? {
            KeyClaim::Taken(id, _) => return self.saga_answer(id, false, request.wait).await,
            KeyClaim::Free(guard) => guard,
        };
        let id = self.mint(key.as_deref())?;
        shared.note_begun(id);
        let created_at_ms = shared.config.clock.now_ms();
        let shapes: Vec<StepShape> = request
            .steps
            .iter()
            .map(|step| StepShape {
                kind: step.kind,
                depends_on: step.depends_on.clone(),
            })
            .collect();
        let header = TxnHeader {
            id,
            created_at_ms,
            deadline_ms: 0,
            idempotency_key: request.idempotency_key.clone(),
            request_digest: request.request_digest.clone(),
            description: request.description.clone(),
        };
        let progress = vec![saga::Progress::default(); request.steps.len()];
        let live_saga = Arc::new(LiveSaga::new(
            header,
            request.steps.clone(),
            Saga::new(shapes),
            progress,
        ));
        shared.sagas.insert(id, Arc::clone(&live_saga));
        if let Some(key) = &request.idempotency_key {
            shared.keys().insert(key.clone(), id);
        }
        // §3: the definition is durable before SubmitSaga answers.
        let durable = shared.log.submit(vec![Record::SagaSubmitted {
            id,
            created_at_ms,
            idempotency_key: request.idempotency_key,
            request_digest: request.request_digest,
            description: request.description,
            steps: request.steps,
        }]);
        drop(claim);
        let start = {
            let shared = Arc::clone(shared);
            async move {
                let written = durable.wait().await;
                match &written {
                    Err(_) => {
                        shared.forget_saga(&live_saga);
                        shared.note_doubtful(live_saga.header.id);
                    }
                    Ok(()) => {
                        live_saga
                            .recorded
                            .store(true, std::sync::atomic::Ordering::SeqCst);
                        let mut inner = live_saga.lock();
                        let effects = inner.machine.apply(saga_protocol::Event::Start);
                        saga::dispatch(&shared, &live_saga, &mut inner, effects);
                    }
                }
                written
            }
        };
        if let Err(error) = self.detached(start).await? {
            if let Some(key) = &key
                && let Some((id, _)) = self.key_taken_meanwhile(key, digest.as_ref(), id).await?
            {
                return self.saga_answer(id, false, request.wait).await;
            }
            return Err(Error::Unavailable(format!(
                "could not record the saga: {error}"
            )));
        }
        crate::metrics::begun(TxnKind::Saga);
        self.saga_answer(id, true, request.wait).await
    }

    /// A saga's state for SubmitSaga, after waiting for its end if asked.
    async fn saga_answer(
        &self,
        id: TxnId,
        created: bool,
        wait: bool,
    ) -> Result<SagaAccepted, Error> {
        if let Some(live_saga) = self.shared.sagas.get(&id).map(|s| Arc::clone(&s)) {
            if wait {
                let mut ended = live_saga.ended.subscribe();
                tokio::select! {
                    biased;
                    result = ended.wait_for(|ended| *ended) => {
                        result.map_err(|_| Error::ShuttingDown)?;
                    }
                    () = self.shared.shutdown.cancelled() => return Err(Error::ShuttingDown),
                }
            }
            if live_saga
                .taken_over
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                return Err(Error::TakenOver(id));
            }
            let view = live_saga.view(false);
            return Ok(SagaAccepted {
                id,
                created,
                state: view.state,
                reason: view.reason,
            });
        }
        let view = self.transaction(id).await?;
        if view.kind != TxnKind::Saga {
            return Err(Error::Unavailable(format!(
                "idempotency key belongs to transaction {id}, which is not a saga"
            )));
        }
        Ok(SagaAccepted {
            id,
            created,
            state: view.state,
            reason: view.reason,
        })
    }
}
