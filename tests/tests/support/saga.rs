//! A scripted saga participant: every step does what its payload says, and
//! every action or compensation that took effect is written to its own
//! SQLite table `effects`, in the same local transaction as the ledger row,
//! so tests see the exact order of effects across all steps it serves.
//!
//! Action payloads: `ok`; `refuse` (a business failure); `flaky:N` (the
//! first N attempts fail transiently); `hang` (takes 3 s, past any test's
//! attempt deadline); `barrier` (waits for a second `barrier` step, on
//! another participant sharing the barrier, so it only succeeds when two
//! steps run in parallel). Compensation payloads:
//! `ok`, `flaky:N`, `stuck` (always fails transiently).

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use concord_participant::{
    BranchContext, LocalTx, ParticipantError, ParticipantService, SagaStep, StepResult,
};
use sqlx::SqlitePool;
use tokio::sync::Barrier;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub struct ScriptedSteps {
    failures: Mutex<HashMap<(String, String, &'static str), u32>>,
    barrier: Arc<Barrier>,
    /// Ignores `flaky` and `stuck`: a participant that was repaired.
    healthy: bool,
}

impl ScriptedSteps {
    /// True while the scripted failures of this call are not used up.
    fn fails(&self, step: &BranchContext, op: &'static str, script: &str) -> bool {
        if self.healthy {
            return false;
        }
        if script == "stuck" {
            return true;
        }
        let Some(limit) = script
            .strip_prefix("flaky:")
            .and_then(|n| n.parse::<u32>().ok())
        else {
            return false;
        };
        let mut failures = self.failures.lock().expect("lock");
        let seen = failures
            .entry((step.transaction_id.clone(), step.branch.clone(), op))
            .or_insert(0);
        if *seen < limit {
            *seen += 1;
            true
        } else {
            false
        }
    }
}

async fn effect(tx: &mut LocalTx, step: &BranchContext, op: &str) -> Result<(), sqlx::Error> {
    sqlx::query("INSERT INTO effects (txn_id, step, op) VALUES (?1, ?2, ?3)")
        .bind(&step.transaction_id)
        .bind(&step.branch)
        .bind(op)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

impl SagaStep for ScriptedSteps {
    async fn action(
        &self,
        tx: &mut LocalTx,
        step: &BranchContext,
        payload: &[u8],
    ) -> Result<StepResult, ParticipantError> {
        let script = String::from_utf8_lossy(payload).to_string();
        if self.fails(step, "action", &script) {
            return Err(ParticipantError::Unavailable(
                "scripted transient failure".into(),
            ));
        }
        match script.as_str() {
            "refuse" => return Ok(StepResult::Refused("scripted refusal".into())),
            "hang" => tokio::time::sleep(Duration::from_secs(3)).await,
            "barrier" => {
                let met = tokio::time::timeout(Duration::from_secs(5), self.barrier.wait()).await;
                if met.is_err() {
                    return Ok(StepResult::Refused(
                        "ran alone: no parallel step arrived".into(),
                    ));
                }
            }
            _ => {}
        }
        effect(tx, step, "action").await?;
        Ok(StepResult::Done)
    }

    async fn compensate(
        &self,
        tx: &mut LocalTx,
        step: &BranchContext,
        payload: &[u8],
    ) -> Result<(), ParticipantError> {
        let script = String::from_utf8_lossy(payload).to_string();
        if self.fails(step, "compensate", &script) {
            return Err(ParticipantError::Unavailable(
                "scripted compensation failure".into(),
            ));
        }
        effect(tx, step, "compensate").await?;
        Ok(())
    }
}

pub struct StepParticipant {
    pub url: String,
    pub pool: SqlitePool,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl StepParticipant {
    pub async fn start(dir: &Path, name: &str) -> Self {
        let addr = super::processes::free_addr().to_string();
        Self::start_with(dir, name, &addr, false, Arc::new(Barrier::new(2))).await
    }

    /// Starts a participant whose `barrier` steps wait on `barrier`, shared
    /// with another participant: a SQLite participant runs one handler at a
    /// time (the ledger's local transaction holds the write lock), so steps
    /// that must meet run on different participants.
    pub async fn start_sharing(dir: &Path, name: &str, barrier: Arc<Barrier>) -> Self {
        let addr = super::processes::free_addr().to_string();
        Self::start_with(dir, name, &addr, false, barrier).await
    }

    /// Restarts on `addr` with the same database, repaired.
    pub async fn restart_healthy(dir: &Path, name: &str, addr: &str) -> Self {
        Self::start_with(dir, name, addr, true, Arc::new(Barrier::new(2))).await
    }

    async fn start_with(
        dir: &Path,
        name: &str,
        addr: &str,
        healthy: bool,
        barrier: Arc<Barrier>,
    ) -> Self {
        let pool = super::participant_db(
            dir,
            name,
            "CREATE TABLE IF NOT EXISTS effects (txn_id TEXT NOT NULL, step TEXT NOT NULL, op TEXT NOT NULL)",
        )
        .await;
        let steps = ScriptedSteps {
            failures: Mutex::new(HashMap::new()),
            barrier,
            healthy,
        };
        let service = ParticipantService::saga(steps, pool.clone())
            .await
            .expect("ledger");
        let (url, stop, task) = super::serve_participant(service, addr).await;
        Self {
            url,
            pool,
            stop,
            task,
        }
    }

    /// Effects of one saga in the order they took effect, as "op:step".
    pub async fn effects(&self, txn_id: &str) -> Vec<String> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT op, step FROM effects WHERE txn_id = ?1 ORDER BY rowid")
                .bind(txn_id)
                .fetch_all(&self.pool)
                .await
                .expect("effects");
        rows.into_iter()
            .map(|(op, step)| format!("{op}:{step}"))
            .collect()
    }

    /// The ledger's result for one step's operation.
    pub async fn ledger(&self, txn_id: &str, step: &str, op: &str) -> Option<String> {
        sqlx::query_as::<_, (String,)>(
            "SELECT result FROM concord_ledger WHERE txn_id = ?1 AND branch = ?2 AND op = ?3",
        )
        .bind(txn_id)
        .bind(step)
        .bind(op)
        .fetch_optional(&self.pool)
        .await
        .expect("ledger")
        .map(|(result,)| result)
    }

    pub fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_owned()
    }

    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}
