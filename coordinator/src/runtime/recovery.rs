//! Recovery: at start, every unfinished transaction this node must finish
//! is read from the log and driven to its end (R2, R3); on a shared store
//! the same path adopts the transactions of nodes that are gone (DESIGN §6).

use crate::protocol::two_phase::Decision;
use crate::runtime::message;
use crate::runtime::saga;

use crate::model::OperatorAction;
use crate::model::StepStatus;
use crate::model::TxnKind;
use crate::model::TxnState;
use crate::model::TxnView;
use crate::protocol::saga as saga_protocol;
use crate::protocol::saga::{Saga, StepShape};
use crate::protocol::two_phase::TwoPhase;
use crate::runtime::message::LiveMessage;
use crate::runtime::requests::TxnHeader;
use crate::runtime::saga::LiveSaga;
use crate::runtime::shared::Shared;
use crate::runtime::two_phase::driver;
use crate::runtime::two_phase::live::BranchInfo;
use crate::runtime::two_phase::live::LiveTxn;
use crate::store::Unfinished;
use std::sync::Arc;

use backon::BackoffBuilder;
use tokio::sync::Semaphore;

/// The start-up recovery: reads every unfinished transaction this node must
/// finish (retrying while the store fails) and adopts those not begun since
/// the start.
pub(super) async fn recover(shared: Arc<Shared>) {
    let mut delays = shared.config.retry.build();
    let unfinished = loop {
        let read = tokio::select! {
            () = shared.shutdown.cancelled() => return,
            read = shared.store.claim_unfinished() => read,
        };
        match read {
            Ok(unfinished) => break unfinished,
            Err(error) => {
                let delay = delays.next().unwrap_or(shared.config.retry_max_delay);
                tracing::error!(%error, ?delay, "could not read the unfinished transactions; retrying");
                tokio::select! {
                    () = shared.shutdown.cancelled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    };
    // Every transaction begun after this point was begun after the read.
    let begun = shared
        .begun_while_recovering
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .take()
        .unwrap_or_default();
    let unfinished = unfinished
        .into_iter()
        .filter(|u| !begun.contains(&u.view.id))
        .collect();
    adopt(&shared, unfinished);
    shared.recovered.send_replace(true);
}

/// Takes unfinished transactions into memory and starts finishing them: at
/// start every one this node must finish (recovery), later those it took
/// over from gone nodes (DESIGN §6). 2PC: with a durable COMMITTED decision,
/// phase 2 again (R3); without, abort (R2). Sagas: forward or backward from
/// their step records (§3). At most `recovery_concurrency` are driven at
/// once, in the background, while new requests are served.
pub(super) fn adopt(shared: &Arc<Shared>, unfinished: Vec<Unfinished>) {
    if unfinished.is_empty() {
        return;
    }
    tracing::info!(
        count = unfinished.len(),
        "recovering unfinished transactions"
    );
    let mut pending: Vec<Recovered> = Vec::with_capacity(unfinished.len());
    for record in unfinished {
        let mut view = record.view;
        if shared.live.contains_key(&view.id)
            || shared.sagas.contains_key(&view.id)
            || shared.messages.contains_key(&view.id)
        {
            continue;
        }
        // Operators' decisions hold across restarts: a resolved branch is
        // not called again.
        let operator_actions = std::mem::take(&mut view.operator_actions);
        let header = TxnHeader {
            id: view.id,
            created_at_ms: view.created_at_ms,
            deadline_ms: view.deadline_ms,
            idempotency_key: view.idempotency_key.clone(),
            request_digest: view.request_digest.clone(),
            description: view.description.clone(),
        };
        if let Some(key) = &view.idempotency_key {
            shared.keys().insert(key.clone(), view.id);
        }
        if view.kind == TxnKind::Message {
            pending.push(Recovered::Message(adopt_message(
                shared,
                header,
                view,
                (record.payloads, record.ordering_seq),
                operator_actions,
            )));
            continue;
        }
        if view.kind == TxnKind::Saga {
            let shapes = record
                .steps
                .iter()
                .map(|step| StepShape {
                    kind: step.kind,
                    depends_on: step.depends_on.clone(),
                })
                .collect();
            let recorded: Vec<Option<StepStatus>> = view
                .steps
                .iter()
                .map(|step| (step.status != StepStatus::Pending).then_some(step.status))
                .collect();
            let (machine, effects) = Saga::recover(shapes, &recorded, view.reason.clone());
            let progress = view
                .steps
                .iter()
                .map(|step| saga::Progress {
                    attempts: step.attempts,
                    compensation_attempts: step.compensation_attempts,
                    last_error: step.last_error.clone(),
                })
                .collect();
            let live_saga = Arc::new(LiveSaga::new(header, record.steps, machine, progress));
            live_saga.lock().operator_actions = operator_actions;
            live_saga
                .recorded
                .store(true, std::sync::atomic::Ordering::SeqCst);
            shared.sagas.insert(view.id, Arc::clone(&live_saga));
            pending.push(Recovered::Saga(live_saga, effects));
            continue;
        }
        let decision = match view.state {
            TxnState::Committing => Some(Decision::Commit),
            TxnState::Aborting => Some(Decision::Abort),
            _ => None,
        };
        let (machine, effects) =
            TwoPhase::recover(view.branches.len(), decision, view.reason.clone());
        let branches = view
            .branches
            .into_iter()
            .zip(record.payloads)
            .map(|(branch, payload)| BranchInfo {
                name: branch.name,
                participant: branch.participant,
                payload,
                vote: branch.vote,
                attempts: branch.attempts,
                last_error: branch.last_error,
            })
            .collect();
        let txn = Arc::new(LiveTxn::new(
            header,
            machine,
            branches,
            shared.config.default_prepare_timeout,
        ));
        {
            let mut inner = txn.lock();
            inner.decided_at_ms = view.decided_at_ms;
            inner.operator_actions = operator_actions;
            inner.recovered = true;
            txn.mark_recorded();
        }
        if let Some(announced) = txn.lock().machine.announced().cloned() {
            txn.announce(announced);
        }
        shared.live.insert(view.id, Arc::clone(&txn));
        pending.push(Recovered::TwoPhase(txn, effects));
    }
    shared
        .recovery_backlog
        .fetch_add(pending.len(), std::sync::atomic::Ordering::Relaxed);
    // Drive the backlog in the background, a bounded number at a time,
    // while new requests are served.
    let permits = Arc::new(Semaphore::new(shared.config.recovery_concurrency.max(1)));
    let driver_shared = Arc::clone(shared);
    shared.tasks.spawn(async move {
        for recovered in pending {
            let permit = tokio::select! {
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                () = driver_shared.shutdown.cancelled() => return,
            };
            let ended: futures::future::BoxFuture<'static, ()> = match recovered {
                Recovered::TwoPhase(txn, effects) => {
                    let mut progress = txn.progress.subscribe();
                    let mut inner = txn.lock();
                    driver::dispatch(&driver_shared, &txn, &mut inner, effects);
                    Box::pin(async move {
                        let _ = progress.wait_for(|p| p.ended).await;
                    })
                }
                Recovered::Saga(live_saga, effects) => {
                    let mut ended = live_saga.ended.subscribe();
                    let mut inner = live_saga.lock();
                    saga::dispatch(&driver_shared, &live_saga, &mut inner, effects);
                    Box::pin(async move {
                        let _ = ended.wait_for(|ended| *ended).await;
                    })
                }
                Recovered::Message(live_message) => {
                    let mut ended = live_message.ended.subscribe();
                    message::start(&driver_shared, live_message);
                    Box::pin(async move {
                        let _ = ended.wait_for(|ended| *ended).await;
                    })
                }
            };
            // The permit returns when this transaction ends, or at
            // shutdown (which must not wait for it).
            let shutdown = driver_shared.shutdown.clone();
            let backlog = Arc::clone(&driver_shared);
            driver_shared.tasks.spawn(async move {
                let _permit = permit;
                tokio::select! {
                    () = ended => {
                        backlog
                            .recovery_backlog
                            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    () = shutdown.cancelled() => {}
                }
            });
        }
    });
}

/// A transaction loaded by recovery, with the effects that finish it (a
/// message's driver reads what it owes from its machine).
enum Recovered {
    TwoPhase(Arc<LiveTxn>, Vec<crate::protocol::two_phase::Effect>),
    Saga(Arc<LiveSaga>, Vec<saga_protocol::Effect>),
    Message(Arc<LiveMessage>),
}

/// A message from the log (DESIGN §10): PREPARED waits for its submit or
/// check-back as before; DELIVERING owes every destination its delivery
/// again (acknowledgements are not logged; the destinations' ledgers
/// absorb a second one, M4), in its key's recorded order (M5).
fn adopt_message(
    shared: &Arc<Shared>,
    header: TxnHeader,
    view: TxnView,
    (payloads, ordering_seq): (Vec<Vec<u8>>, Option<u64>),
    operator_actions: Vec<OperatorAction>,
) -> Arc<LiveMessage> {
    let decided =
        (view.state == TxnState::Delivering).then(|| message::via_of(view.reason.as_deref()));
    let (machine, _owed) =
        crate::protocol::message::Message::recovered(view.branches.len(), decided);
    let destinations = view
        .branches
        .iter()
        .zip(payloads)
        .map(|(branch, payload)| crate::model::Destination {
            name: branch.name.clone(),
            participant: branch.participant.clone(),
            payload,
        })
        .collect();
    let live_message = Arc::new(LiveMessage::new(
        header,
        view.producer.clone().unwrap_or_default(),
        view.ordering_key.clone(),
        destinations,
        machine,
    ));
    live_message.restore(&view, ordering_seq, operator_actions.clone());
    live_message
        .recorded
        .store(true, std::sync::atomic::Ordering::SeqCst);
    if decided.is_some()
        && let Some(key) = &view.ordering_key
    {
        shared
            .orders
            .restore(key, ordering_seq.unwrap_or(0), &live_message);
    }
    shared.messages.insert(view.id, Arc::clone(&live_message));
    // Operators' decisions hold across restarts (M6): a producer resolved
    // but not yet decided in the log is decided now; a destination
    // resolved is not called again.
    for action in &operator_actions {
        message::apply_action(shared, &live_message, action);
    }
    live_message
}
