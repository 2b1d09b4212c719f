//! The bank chaos test (Jepsen style, DESIGN §7): three banks and a
//! coordinator as separate processes, every coordinator-to-bank link through
//! a fault proxy, 20 clients making random transfers for a bounded time while
//! a nemesis kills and restarts processes and partitions links. Then
//! everything heals and the test checks, in the banks' own databases:
//! - I6: money is neither created nor destroyed, and no balance is negative;
//! - I3: every transaction ended, and no bank holds a prepared transfer;
//! - I1/I2/I5: each account's balance is exactly its opening balance plus the
//!   transfers the coordinator committed, once each, and every transfer a
//!   client was told committed is among them.
//!
//! The nemesis and the clients draw their choices from a seed (`CHAOS_SEED`,
//! printed; real processes make the timing vary from run to run); the length
//! from `CHAOS_SECONDS` (default 6).

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use concord_example_bank::{Movement, accounts, open_db, open_holds};
use concord_participant::{BeginOptions, CoordinatorClient, Outcome};
use concord_proto::v1 as pb;
use support::eventually;
use support::processes::{Proc, free_addr, start_coordinator_with};
use support::proxy::Proxy;
use tokio::sync::Mutex;

/// A small deterministic generator (xorshift64*), so a seed replays the
/// schedule of choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

const BANKS: [(&str, [&str; 2]); 3] = [
    ("a", ["alice", "anna"]),
    ("b", ["bob", "bea"]),
    ("c", ["cy", "cat"]),
];
const OPENING: i64 = 10_000;

struct World {
    dir: tempfile::TempDir,
    coordinator_addr: SocketAddr,
    bank_addrs: Vec<SocketAddr>,
    proxies: Vec<Proxy>,
}

impl World {
    fn db(&self, bank: usize) -> PathBuf {
        self.dir.path().join(format!("bank-{}.db", BANKS[bank].0))
    }

    async fn coordinator(&self) -> Proc {
        // A short transaction timeout aborts the transactions whose client
        // lost its connection before committing.
        start_coordinator_with(
            self.coordinator_addr,
            &self.dir.path().join("coordinator"),
            None,
            &["--txn-timeout-ms", "2000", "--prepare-timeout-ms", "1000"],
        )
        .await
    }

    async fn bank(&self, bank: usize, first_start: bool) -> Proc {
        let (name, owners) = BANKS[bank];
        let mut args = vec![
            "serve".to_string(),
            "--listen".into(),
            self.bank_addrs[bank].to_string(),
            "--db".into(),
            self.db(bank).display().to_string(),
        ];
        args.extend(support::keys::coordinator_key_args());
        args.extend([
            "--coordinator".into(),
            format!("http://{}", self.coordinator_addr),
        ]);
        if first_start {
            for owner in owners {
                args.extend(["--open".into(), format!("{owner}={OPENING}")]);
            }
        }
        let exe = env!("CARGO_BIN_EXE_account-service-failpoints");
        Proc::start(
            &format!("bank-{name}"),
            exe,
            &args,
            None,
            self.bank_addrs[bank],
        )
        .await
    }

    fn client(&self) -> CoordinatorClient {
        CoordinatorClient::connect(format!("http://{}", self.coordinator_addr))
            .expect("client")
            .with_timeout(Duration::from_secs(3))
    }
}

/// What a client did: the transfer, and what it was told.
#[derive(Debug, Clone)]
struct Attempt {
    id: String,
    from: &'static str,
    to: &'static str,
    amount: i64,
    told: Option<Outcome>,
}

async fn client_loop(world: Arc<World>, seed: u64, until: Instant, log: Arc<Mutex<Vec<Attempt>>>) {
    let mut rng = Rng(seed);
    let client = world.client();
    let all: Vec<(usize, &'static str)> = (0..BANKS.len())
        .flat_map(|b| BANKS[b].1.iter().map(move |owner| (b, *owner)))
        .collect();
    while Instant::now() < until {
        let from = all[rng.below(all.len() as u64) as usize];
        let mut to = all[rng.below(all.len() as u64) as usize];
        while to == from {
            to = all[rng.below(all.len() as u64) as usize];
        }
        let amount = 1 + rng.below(3_000) as i64;
        let Ok(begun) = client.begin(BeginOptions::default()).await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let id = begun.transaction_id;
        let mut attempt = Attempt {
            id: id.clone(),
            from: from.1,
            to: to.1,
            amount,
            told: None,
        };
        let debit = Movement {
            account: from.1.into(),
            delta: -amount,
        };
        let credit = Movement {
            account: to.1.into(),
            delta: amount,
        };
        let enlisted = async {
            client
                .enlist(
                    &id,
                    &world.proxies[from.0].url(),
                    debit.to_payload(),
                    Some("debit"),
                )
                .await?;
            client
                .enlist(
                    &id,
                    &world.proxies[to.0].url(),
                    credit.to_payload(),
                    Some("credit"),
                )
                .await
        };
        if enlisted.await.is_ok() {
            attempt.told = client.commit(&id).await.ok();
        }
        log.lock().await.push(attempt);
    }
}

#[tokio::test]
async fn bank_transfers_survive_kills_and_partitions_with_money_conserved() {
    let seed: u64 = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(7)
                | 1
        });
    let seconds: u64 = std::env::var("CHAOS_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(6);
    println!(
        "chaos seed {seed} ({seconds} s); replay: CHAOS_SEED={seed} cargo test -p concord-tests --test chaos"
    );

    let bank_addrs: Vec<SocketAddr> = (0..BANKS.len()).map(|_| free_addr()).collect();
    let mut proxies = Vec::new();
    for addr in &bank_addrs {
        proxies.push(Proxy::start(*addr).await);
    }
    let world = Arc::new(World {
        dir: tempfile::tempdir().expect("temp dir"),
        coordinator_addr: free_addr(),
        bank_addrs,
        proxies,
    });
    let mut banks = Vec::new();
    for bank in 0..BANKS.len() {
        banks.push(Some(world.bank(bank, true).await));
    }
    let mut coordinator = Some(world.coordinator().await);

    let until = Instant::now() + Duration::from_secs(seconds);
    let log = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..20u64)
        .map(|i| {
            tokio::spawn(client_loop(
                Arc::clone(&world),
                seed.wrapping_add(i * 7919) | 1,
                until,
                Arc::clone(&log),
            ))
        })
        .collect();

    // The nemesis: every few hundred ms, one fault, healed soon after.
    let mut rng = Rng(seed);
    let mut faults = HashMap::<&str, u32>::new();
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(200 + rng.below(300))).await;
        match rng.below(4) {
            0 => {
                if let Some(proc) = coordinator.take() {
                    proc.kill().await;
                }
                tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                coordinator = Some(world.coordinator().await);
                *faults.entry("coordinator killed").or_default() += 1;
            }
            1 => {
                let bank = rng.below(BANKS.len() as u64) as usize;
                if let Some(proc) = banks[bank].take() {
                    proc.kill().await;
                }
                tokio::time::sleep(Duration::from_millis(rng.below(300))).await;
                banks[bank] = Some(world.bank(bank, false).await);
                *faults.entry("bank killed").or_default() += 1;
            }
            2 => {
                let proxy = &world.proxies[rng.below(BANKS.len() as u64) as usize];
                let (forward, backward) = match rng.below(3) {
                    0 => (true, true),
                    1 => (true, false),
                    _ => (false, true),
                };
                proxy.partition(forward, backward);
                tokio::time::sleep(Duration::from_millis(100 + rng.below(500))).await;
                if rng.below(2) == 0 {
                    proxy.drop_connections();
                }
                proxy.heal();
                *faults.entry("link partitioned").or_default() += 1;
            }
            _ => {
                let proxy = &world.proxies[rng.below(BANKS.len() as u64) as usize];
                proxy.latency(Duration::from_millis(50 + rng.below(400)));
                tokio::time::sleep(Duration::from_millis(300)).await;
                proxy.latency(Duration::ZERO);
                *faults.entry("link slowed").or_default() += 1;
            }
        }
    }
    for client in clients {
        client.await.expect("client task");
    }
    // Heal: everything up, every link clear.
    for proxy in &world.proxies {
        proxy.heal();
        proxy.latency(Duration::ZERO);
    }
    let attempts = log.lock().await.clone();
    let client = world.client();

    // I3: every transaction ends (aborted by timeout if it never committed).
    let mut committed = Vec::new();
    for attempt in &attempts {
        let state = eventually(&format!("{} ends", attempt.id), || async {
            let state =
                pb::TransactionState::try_from(client.transaction(&attempt.id).await.ok()?.state)
                    .ok()?;
            matches!(
                state,
                pb::TransactionState::Committed | pb::TransactionState::Aborted
            )
            .then_some(state)
        })
        .await;
        let is_committed = state == pb::TransactionState::Committed;
        // I2: a transfer the client was told committed is committed.
        if let Some(told) = &attempt.told {
            assert_eq!(
                matches!(told, Outcome::Committed { .. }),
                is_committed,
                "{attempt:?} ended {state:?}"
            );
        }
        if is_committed {
            committed.push(attempt.clone());
        }
    }
    let unfinished = eventually("no transaction left unfinished", || async {
        let listed = client
            .raw()
            .list_transactions(pb::ListTransactionsRequest {
                states: vec![
                    pb::TransactionState::Active as i32,
                    pb::TransactionState::Preparing as i32,
                    pb::TransactionState::Committing as i32,
                    pb::TransactionState::Aborting as i32,
                ],
                page_size: 1000,
                ..Default::default()
            })
            .await
            .ok()?
            .into_inner();
        listed.transactions.is_empty().then_some(0)
    })
    .await;
    assert_eq!(unfinished, 0);

    // I1, I5, I6 in the banks' own databases.
    let mut expected: HashMap<&str, i64> = BANKS
        .iter()
        .flat_map(|(_, owners)| owners.iter().map(|o| (*o, OPENING)))
        .collect();
    for attempt in &committed {
        *expected.get_mut(attempt.from).expect("account") -= attempt.amount;
        *expected.get_mut(attempt.to).expect("account") += attempt.amount;
    }
    let mut total = 0;
    for bank in 0..BANKS.len() {
        let pool = open_db(&world.db(bank)).await.expect("bank db");
        eventually("the bank has released every hold", || async {
            (open_holds(&pool).await.ok()? == 0).then_some(())
        })
        .await;
        for account in accounts(&pool).await.expect("accounts") {
            assert!(account.balance >= 0 && account.held == 0, "{account:?}");
            assert_eq!(
                account.balance,
                expected[account.name.as_str()],
                "{} (seed {seed})",
                account.name
            );
            total += account.balance;
        }
    }
    assert_eq!(
        total,
        OPENING * 6,
        "money created or destroyed (seed {seed})"
    );
    let told_committed = attempts
        .iter()
        .filter(|a| matches!(a.told, Some(Outcome::Committed { .. })))
        .count();
    println!(
        "chaos: {} transfers attempted, {} committed ({} told so), faults {:?}, 0 invariant violations",
        attempts.len(),
        committed.len(),
        told_committed,
        faults
    );
    assert!(
        !committed.is_empty(),
        "no transfer committed at all (seed {seed})"
    );
    drop(banks);
    drop(coordinator);
}
