//! Deterministic simulation (DESIGN §7): the real coordinator runtime and
//! gRPC API, on the in-memory store, with simulated banks and clients, all
//! inside turmoil's simulated network and time. Each seed decides one run:
//! a workload of 2PC transfers (committed by Commit or inside Begin),
//! one-phase moves, rollbacks and sagas; a nemesis that crashes and
//! restarts the coordinator and the banks, partitions links (both ways and
//! one way) and slows the network past deadlines; then a heal, and the
//! invariants I1-I6 plus termination within a bound (I3).
//!
//! `CONCORD_SIM_SEEDS` runs that many seeds (default 1,000) starting at
//! `CONCORD_SIM_SEED` (default 0); a failing seed is printed with the one
//! command that replays it. `CONCORD_SIM_VERBOSE=1` prints what each run
//! left in the store and what the clients were told.
//!
//! Each seed runs in a fresh child process (this test binary, filtered to
//! [`one_seed`]): tokio numbers tasks from a process-wide counter and the
//! numbers decide the order a crashed host's tasks are dropped in, so only a
//! fresh process replays a seed exactly.

mod bank;
mod net;
mod run;

use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const DEFAULT_SEEDS: u64 = 1_000;
const CHILD_SEED: &str = "CONCORD_SIM_CHILD_SEED";

fn env_u64(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
        Err(_) => default,
    }
}

/// What a child reported about its seed.
#[derive(Debug, Default)]
struct Seeded {
    report: run::Report,
    fingerprint: u64,
    violations: Vec<String>,
}

/// Runs `seed` in a fresh process and reads its report.
fn run_in_child(seed: u64) -> Seeded {
    let output = Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "one_seed",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_SEED, seed.to_string())
        .output()
        .expect("start a simulation child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let mut seeded = Seeded::default();
    let mut reported = false;
    // libtest prints "test one_seed ... " before the first line of output.
    let marked = |line: &str, marker: &str| {
        line.find(marker)
            .map(|at| line[at + marker.len()..].to_owned())
    };
    for line in stdout.lines() {
        if let Some(fields) = marked(line, "SIM-REPORT ") {
            let n: Vec<u64> = fields.split(' ').filter_map(|f| f.parse().ok()).collect();
            if let [tx, c, a, sc, sx, md, mx, f, u, ms, fp] = n[..] {
                seeded.report = run::Report {
                    transactions: tx as usize,
                    committed: c as usize,
                    aborted: a as usize,
                    sagas_completed: sc as usize,
                    sagas_compensated: sx as usize,
                    messages_delivered: md as usize,
                    messages_dropped: mx as usize,
                    faults: f as usize,
                    unknown_to_clients: u as usize,
                    simulated: Duration::from_millis(ms),
                };
                seeded.fingerprint = fp;
                reported = true;
            }
        } else if let Some(violation) = marked(line, "SIM-VIOLATION ") {
            seeded.violations.push(violation);
        } else if std::env::var_os("CONCORD_SIM_VERBOSE").is_some() {
            println!("{line}");
        }
    }
    if !reported {
        seeded.violations.push(format!(
            "the run did not finish ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
                .lines()
                .filter(|l| l.contains("panicked") || l.contains("error"))
                .collect::<Vec<_>>()
                .join(" | ")
        ));
    }
    seeded
}

/// The child side: one seed, reported on stdout. Run by the tests below.
#[test]
#[ignore = "run by the simulation tests, one fresh process per seed"]
fn one_seed() {
    let seed = env_u64(CHILD_SEED, 0);
    let result = run::run(seed);
    if std::env::var_os("CONCORD_SIM_VERBOSE").is_some() {
        println!("{}", result.debug);
    }
    let r = &result.report;
    for violation in &result.violations {
        println!("SIM-VIOLATION {violation}");
    }
    println!(
        "SIM-REPORT {} {} {} {} {} {} {} {} {} {} {}",
        r.transactions,
        r.committed,
        r.aborted,
        r.sagas_completed,
        r.sagas_compensated,
        r.messages_delivered,
        r.messages_dropped,
        r.faults,
        r.unknown_to_clients,
        r.simulated.as_millis(),
        result.fingerprint
    );
}

#[test]
fn random_fault_schedules_keep_every_invariant() {
    let first = env_u64("CONCORD_SIM_SEED", 0);
    let count = env_u64("CONCORD_SIM_SEEDS", DEFAULT_SEEDS);
    let next = AtomicU64::new(first);
    let failures: Mutex<Vec<(u64, Vec<String>)>> = Mutex::default();
    let totals: Mutex<run::Report> = Mutex::default();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let started = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= first + count {
                        return;
                    }
                    let seeded = run_in_child(seed);
                    let mut t = totals.lock().unwrap_or_else(|p| p.into_inner());
                    let r = &seeded.report;
                    t.transactions += r.transactions;
                    t.committed += r.committed;
                    t.aborted += r.aborted;
                    t.sagas_completed += r.sagas_completed;
                    t.sagas_compensated += r.sagas_compensated;
                    t.messages_delivered += r.messages_delivered;
                    t.messages_dropped += r.messages_dropped;
                    t.faults += r.faults;
                    t.unknown_to_clients += r.unknown_to_clients;
                    t.simulated += r.simulated;
                    drop(t);
                    if !seeded.violations.is_empty() {
                        failures
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((seed, seeded.violations));
                    }
                }
            });
        }
    });
    let t = totals.into_inner().unwrap_or_else(|p| p.into_inner());
    let mut failures = failures.into_inner().unwrap_or_else(|p| p.into_inner());
    failures.sort();
    eprintln!(
        "simulation: {count} seeds from {first} in {:.1} s ({:.0} simulated s): {} transactions \
         ({} committed, {} aborted, {} sagas completed, {} compensated, {} messages delivered, \
         {} dropped), {} faults injected, \
         {} answers unknown to clients, {} seeds with violations",
        started.elapsed().as_secs_f64(),
        t.simulated.as_secs_f64(),
        t.transactions,
        t.committed,
        t.aborted,
        t.sagas_completed,
        t.sagas_compensated,
        t.messages_delivered,
        t.messages_dropped,
        t.faults,
        t.unknown_to_clients,
        failures.len(),
    );
    for (seed, violations) in &failures {
        eprintln!("seed {seed}:");
        for violation in violations {
            eprintln!("  {violation}");
        }
        eprintln!(
            "  replay: CONCORD_SIM_SEED={seed} CONCORD_SIM_SEEDS=1 CONCORD_SIM_VERBOSE=1 \
             cargo test -p concord-tests --test simulation -- --nocapture random_fault"
        );
    }
    assert!(
        failures.is_empty(),
        "{} seeds broke an invariant",
        failures.len()
    );
    assert!(
        t.committed > 0
            && t.aborted > 0
            && t.sagas_compensated > 0
            && t.messages_delivered > 0
            && t.messages_dropped > 0
            && t.faults > 0,
        "the runs exercised nothing: {t:?}"
    );
}

#[test]
fn a_seed_replays_exactly() {
    for seed in [1, 7, 42] {
        let first = run_in_child(seed);
        let second = run_in_child(seed);
        assert!(first.fingerprint != 0, "seed {seed} did not run: {first:?}");
        assert_eq!(
            first.fingerprint, second.fingerprint,
            "seed {seed} produced two different runs"
        );
    }
}
