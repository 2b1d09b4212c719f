//! In-doubt resolution (DESIGN §4): a branch that voted COMMIT has promised
//! to wait for the coordinator's decision. When it has waited too long — or
//! the participant restarted and phase 2 may have come and gone — the
//! resolver asks `Coordinator.GetOutcome` (of the coordinator it was
//! configured with, never an address a call named: DESIGN §12), with
//! backoff per branch, until it knows; then applies the
//! outcome through the same ledger-guarded path as a delivered Commit or
//! Abort, so it takes effect exactly once whichever arrives first.
//!
//! The same loop prunes ledger rows of transactions finished longer ago than
//! the retention.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder};

use sqlx::Pool;

use crate::client::{CoordinatorClient, Outcome};
use crate::ledger::{self, LedgerDb};

/// How the resolver behaves.
#[derive(Debug, Clone)]
pub struct ResolverConfig {
    /// The coordinator to ask about in-doubt branches: the only one asked
    /// (any node of the deployment will do; it forwards to the owner). The
    /// address a prepare carries is never used (DESIGN §12).
    pub coordinator: Option<String>,
    /// A branch prepared by this process waits this long for phase 2 before
    /// asking on its own. Branches prepared before the process started are
    /// asked about at once.
    pub in_doubt_after: Duration,
    /// How often to look for in-doubt branches.
    pub check_interval: Duration,
    /// Deadline of each GetOutcome call.
    pub call_timeout: Duration,
    /// Backoff between questions about one branch: first delay and cap.
    pub retry_min_delay: Duration,
    pub retry_max_delay: Duration,
    /// Ledger rows of finished transactions are deleted after this long.
    pub retention: Duration,
    /// How often to prune.
    pub prune_interval: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        Self {
            coordinator: None,
            in_doubt_after: Duration::from_secs(10),
            check_interval: Duration::from_secs(1),
            call_timeout: Duration::from_secs(5),
            retry_min_delay: Duration::from_millis(200),
            retry_max_delay: Duration::from_secs(30),
            retention: Duration::from_secs(7 * 24 * 3600),
            prune_interval: Duration::from_secs(60),
        }
    }
}

/// When to ask next about one branch.
struct Pending {
    next: Instant,
    delays: backon::ExponentialBackoff,
}

/// The resolver's memory between checks.
pub(crate) struct Resolver {
    config: ResolverConfig,
    started_at_ms: i64,
    pending: HashMap<(String, String), Pending>,
    clients: HashMap<String, CoordinatorClient>,
    last_prune: Option<Instant>,
}

/// What the resolver decided for one in-doubt branch.
pub(crate) enum Resolution {
    Commit,
    Abort,
}

impl Resolver {
    pub(crate) fn new(config: ResolverConfig) -> Self {
        Self {
            config,
            started_at_ms: ledger::now_ms(),
            pending: HashMap::new(),
            clients: HashMap::new(),
            last_prune: None,
        }
    }

    pub(crate) fn config(&self) -> &ResolverConfig {
        &self.config
    }

    /// In-doubt branches whose turn to be asked about has come.
    pub(crate) async fn due<DB: LedgerDb>(
        &mut self,
        pool: &Pool<DB>,
    ) -> Result<Vec<ledger::InDoubt>, sqlx::Error> {
        let waited = i64::try_from(self.config.in_doubt_after.as_millis()).unwrap_or(i64::MAX);
        let threshold = self
            .started_at_ms
            .max(ledger::now_ms().saturating_sub(waited));
        let now = Instant::now();
        let found = DB::in_doubt(pool, threshold).await?;
        Ok(found
            .into_iter()
            .filter(|branch| {
                self.pending
                    .get(&(branch.txn_id.clone(), branch.branch.clone()))
                    .is_none_or(|p| p.next <= now)
            })
            .collect())
    }

    /// Asks the coordinator about one branch. None means "not yet": asked
    /// again after a backoff.
    pub(crate) async fn ask(&mut self, branch: &ledger::InDoubt) -> Option<Resolution> {
        // DESIGN §12: only the coordinator this service was configured
        // with. The address a prepare carried is not covered by its
        // signature, and a resolver that asked it would let whoever wrote
        // it answer COMMITTED or ABORTED for the real coordinator.
        let answer = match self
            .config
            .coordinator
            .clone()
            .filter(|url| !url.is_empty())
        {
            None => {
                tracing::warn!(txn = %branch.txn_id, branch = %branch.branch,
                    "in-doubt branch, and no coordinator to ask: set ResolverConfig::coordinator \
                     (the examples' --coordinator)");
                None
            }
            Some(url) => match self.client(&url) {
                Some(client) => match client.outcome(&branch.txn_id).await {
                    Ok(Outcome::Committed { .. }) => Some(Resolution::Commit),
                    Ok(Outcome::Aborted { .. }) => Some(Resolution::Abort),
                    Ok(Outcome::Undecided) => None,
                    Err(error) => {
                        tracing::warn!(txn = %branch.txn_id, %error, "asking the coordinator failed");
                        None
                    }
                },
                None => None,
            },
        };
        let key = (branch.txn_id.clone(), branch.branch.clone());
        if answer.is_some() {
            self.pending.remove(&key);
        } else {
            let (min, max) = (self.config.retry_min_delay, self.config.retry_max_delay);
            let pending = self.pending.entry(key).or_insert_with(|| Pending {
                next: Instant::now(),
                delays: ExponentialBuilder::default()
                    .with_min_delay(min)
                    .with_max_delay(max)
                    .with_jitter()
                    .without_max_times()
                    .build(),
            });
            pending.next = Instant::now() + pending.delays.next().unwrap_or(max);
        }
        answer
    }

    fn client(&mut self, url: &str) -> Option<CoordinatorClient> {
        if let Some(client) = self.clients.get(url) {
            return Some(client.clone());
        }
        match CoordinatorClient::connect(url) {
            Ok(client) => {
                let client = client.with_timeout(self.config.call_timeout);
                self.clients.insert(url.to_owned(), client.clone());
                Some(client)
            }
            Err(error) => {
                tracing::warn!(%url, %error, "cannot ask this coordinator");
                None
            }
        }
    }

    /// Prunes finished ledger rows when the prune interval has passed.
    pub(crate) async fn maybe_prune<DB: LedgerDb>(&mut self, pool: &Pool<DB>) {
        if self
            .last_prune
            .is_some_and(|at| at.elapsed() < self.config.prune_interval)
        {
            return;
        }
        self.last_prune = Some(Instant::now());
        let keep = i64::try_from(self.config.retention.as_millis()).unwrap_or(i64::MAX);
        match DB::prune(pool, ledger::now_ms().saturating_sub(keep)).await {
            Ok(0) => {}
            Ok(rows) => tracing::info!(rows, "pruned finished ledger rows"),
            Err(error) => tracing::warn!(%error, "ledger pruning failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

    use super::*;
    use crate::branch::BranchContext;

    async fn pool() -> (tempfile::TempDir, sqlx::SqlitePool) {
        let dir = tempfile::tempdir().expect("temp dir");
        let options = SqliteConnectOptions::new()
            .filename(dir.path().join("p.db"))
            .create_if_missing(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .expect("pool");
        sqlx::Sqlite::install(&pool).await.expect("ledger");
        (dir, pool)
    }

    fn branch(txn: &str) -> BranchContext {
        BranchContext {
            transaction_id: txn.into(),
            branch: "b1".into(),
            coordinator: "http://127.0.0.1:1".into(),
            one_phase: false,
            traceparent: None,
        }
    }

    /// Writes a row and backdates it by `age_ms`.
    async fn row(pool: &sqlx::SqlitePool, txn: &str, op: ledger::Op, result: &str, age_ms: i64) {
        let mut tx = sqlx::Sqlite::begin(pool, &branch(txn))
            .await
            .expect("begin");
        sqlx::Sqlite::record(&mut tx, &branch(txn), op, result, None, Some(b"x"))
            .await
            .expect("record");
        tx.commit().await.expect("commit");
        sqlx::query(
            "UPDATE concord_ledger SET created_at_ms = created_at_ms - ?1 WHERE txn_id = ?2",
        )
        .bind(age_ms)
        .bind(txn)
        .execute(pool)
        .await
        .expect("backdate");
    }

    #[tokio::test]
    async fn branches_prepared_before_the_start_are_due_at_once_later_ones_after_the_wait() {
        let (_dir, pool) = pool().await;
        row(&pool, "old", ledger::Op::Prepare, "commit", 60_000).await;
        row(&pool, "decided", ledger::Op::Prepare, "commit", 60_000).await;
        row(&pool, "decided", ledger::Op::Commit, "done", 60_000).await;
        row(&pool, "refused", ledger::Op::Prepare, "abort", 60_000).await;
        let mut resolver = Resolver::new(ResolverConfig {
            in_doubt_after: Duration::from_secs(10),
            ..ResolverConfig::default()
        });
        // Prepared after the resolver started (a later millisecond), just
        // now: not due yet.
        tokio::time::sleep(Duration::from_millis(5)).await;
        row(&pool, "fresh", ledger::Op::Prepare, "commit", 0).await;
        let due: Vec<String> = resolver
            .due(&pool)
            .await
            .expect("due")
            .into_iter()
            .map(|b| b.txn_id)
            .collect();
        assert_eq!(due, ["old"]);
        // The same branch prepared 20 s ago by this process has waited too
        // long: it asks on its own.
        resolver.started_at_ms -= 30_000;
        sqlx::query("UPDATE concord_ledger SET created_at_ms = created_at_ms - 20000 WHERE txn_id = 'fresh'")
            .execute(&pool)
            .await
            .expect("age");
        let mut due: Vec<String> = resolver
            .due(&pool)
            .await
            .expect("due")
            .into_iter()
            .map(|b| b.txn_id)
            .collect();
        due.sort();
        assert_eq!(due, ["fresh", "old"]);
    }

    #[tokio::test]
    async fn pruning_removes_old_finished_rows_and_keeps_in_doubt_ones() {
        let (_dir, pool) = pool().await;
        let day = 86_400_000;
        row(
            &pool,
            "finished-long-ago",
            ledger::Op::Prepare,
            "commit",
            10 * day,
        )
        .await;
        row(
            &pool,
            "finished-long-ago",
            ledger::Op::Commit,
            "done",
            10 * day,
        )
        .await;
        row(
            &pool,
            "finished-recently",
            ledger::Op::Prepare,
            "commit",
            10 * day,
        )
        .await;
        row(&pool, "finished-recently", ledger::Op::Abort, "done", 0).await;
        row(
            &pool,
            "in-doubt-long-ago",
            ledger::Op::Prepare,
            "commit",
            10 * day,
        )
        .await;
        row(
            &pool,
            "tombstone-long-ago",
            ledger::Op::Abort,
            "tombstone",
            10 * day,
        )
        .await;
        let deleted = sqlx::Sqlite::prune(&pool, ledger::now_ms() - 7 * day)
            .await
            .expect("prune");
        assert_eq!(deleted, 3);
        let left: Vec<(String,)> =
            sqlx::query_as("SELECT DISTINCT txn_id FROM concord_ledger ORDER BY txn_id")
                .fetch_all(&pool)
                .await
                .expect("rows");
        let left: Vec<&str> = left.iter().map(|(t,)| t.as_str()).collect();
        assert_eq!(left, ["finished-recently", "in-doubt-long-ago"]);
    }
}
