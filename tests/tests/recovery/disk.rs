//! Disk full, for real (issue 17 item 3): `concord serve` with its log on a
//! small tmpfs that the test fills while clients keep transferring money
//! between two banks. No client may hear COMMITTED for a decision that is
//! not durable, nothing panics, the error names the log's path and the
//! cause, and once space is freed the same process commits again; in the
//! end every transaction ended, and the banks hold exactly what the
//! committed ones moved.
//!
//! Mounting needs root (as in CI); elsewhere the test says why it skips.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use concord_example_bank::{account, open_holds};
use concord_participant::Outcome;
use concord_proto::v1 as pb;

use super::process::Banks;
use super::support::eventually;

/// The tmpfs: room for the log and its WAL under light load, not much more.
const DISK: &str = "size=24m";

/// A tmpfs mounted for the test, unmounted when dropped.
struct SmallDisk(PathBuf);

impl SmallDisk {
    fn mount(at: &Path) -> Option<Self> {
        std::fs::create_dir_all(at).expect("mount point");
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", DISK, "tmpfs"])
            .arg(at)
            .status()
            .ok()?
            .success();
        mounted.then(|| Self(at.to_path_buf()))
    }

    /// Writes zeros to a file until the disk refuses (ENOSPC).
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut file = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.flush();
        path
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

fn root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("Uid:"))
                .and_then(|line| line.split_whitespace().nth(1).map(|uid| uid == "0"))
        })
        .unwrap_or(false)
}

/// What the clients heard, per transfer.
#[derive(Default)]
struct Heard {
    committed: Vec<String>,
    aborted: usize,
    failed: Vec<String>,
}

#[tokio::test]
async fn a_full_disk_under_load_commits_nothing_undurable_and_commits_again_once_freed() {
    if !root() {
        eprintln!("skipped: mounting a tmpfs for the coordinator's log needs root");
        return;
    }
    let world = Banks::new();
    let Some(disk) = SmallDisk::mount(&world.dir().join("small-disk")) else {
        eprintln!("skipped: `mount -t tmpfs` failed here (no CAP_SYS_ADMIN?)");
        return;
    };
    let data = disk.0.join("coordinator");
    let log = world.dir().join("coordinator.log");
    let _a = world.bank("a", None, true).await;
    let _b = world.bank("b", None, true).await;
    let mut coordinator = world.coordinator_at(&data, &log).await;

    // Four clients transfer 10 cents at a time until told to stop.
    let world = Arc::new(world);
    let stop = Arc::new(AtomicBool::new(false));
    let heard = Arc::new(std::sync::Mutex::new(Heard::default()));
    let mut clients = Vec::new();
    for _ in 0..4 {
        let (world, stop, heard) = (Arc::clone(&world), Arc::clone(&stop), Arc::clone(&heard));
        clients.push(tokio::spawn(async move {
            let client = world.client();
            // Bounded: 15 000 transfers at most per client.
            for _ in 0..15_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let answer = world.small_transfer(&client).await;
                let mut heard = heard.lock().expect("lock");
                match answer {
                    Ok((id, Outcome::Committed { .. })) => heard.committed.push(id),
                    Ok((_, _)) => heard.aborted += 1,
                    Err(error) => heard.failed.push(error),
                }
            }
        }));
    }
    let committed_so_far = || heard.lock().expect("lock").committed.len();
    eventually("transfers commit before the disk fills", || async {
        (committed_so_far() >= 50).then_some(())
    })
    .await;

    // The disk fills up under load.
    let filler = disk.fill();
    let before = heard.lock().expect("lock").failed.len();
    eventually("clients are told the log takes no writes", || async {
        (heard.lock().expect("lock").failed.len() >= before + 8).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        coordinator.running(),
        "the coordinator must not die of a full disk"
    );
    let stderr = std::fs::read_to_string(&log).expect("coordinator log");
    assert!(
        stderr.contains("database or disk is full"),
        "the cause is named: {stderr}"
    );
    assert!(
        stderr.contains(&data.join("concord.db").display().to_string()),
        "the path is named: {stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");

    // Space is freed: the same process commits again.
    std::fs::remove_file(&filler).expect("free the disk");
    let freed_at = committed_so_far();
    eventually("transfers commit again without a restart", || async {
        (committed_so_far() >= freed_at + 50).then_some(())
    })
    .await;
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.await.expect("client");
    }
    assert!(coordinator.running());

    // Every transaction ended, and the banks agree with the log: money
    // moved exactly for the committed ones (I1, I3, I6), and each one a
    // client was told COMMITTED is among them (I2). One whose decision was
    // being written again when the clients stopped may not be in the
    // listing yet (its records ride with the decision), but it holds money
    // at both banks until it ends: so all three are checked together.
    let client = world.client();
    let a = concord_example_bank::open_db(&world.db("a"))
        .await
        .expect("bank a");
    let b = concord_example_bank::open_db(&world.db("b"))
        .await
        .expect("bank b");
    let committed: Vec<String> =
        eventually("every transaction ends and the banks agree", || async {
            let holds = open_holds(&a).await.ok()? + open_holds(&b).await.ok()?;
            if holds != 0 {
                return None;
            }
            let committed = committed_in_log(&client).await?;
            let moved = 10 * i64::try_from(committed.len()).ok()?;
            let alice = account(&a, "alice").await.ok()??;
            let bob = account(&b, "bob").await.ok()??;
            (alice.balance == 10_000 - moved
                && bob.balance == 5_000 + moved
                && alice.held == 0
                && bob.held == 0)
                .then_some(committed)
        })
        .await;
    let heard = heard.lock().expect("lock");
    for id in &heard.committed {
        assert!(
            committed.contains(id),
            "told COMMITTED, but {id} did not commit"
        );
    }
    let moved = 10 * i64::try_from(committed.len()).expect("count");
    println!(
        "disk full under load: {} committed ({} told), {} aborted, {} refused while full; \
         balances alice {} bob {}",
        committed.len(),
        heard.committed.len(),
        heard.aborted,
        heard.failed.len(),
        10_000 - moved,
        5_000 + moved
    );
    drop(coordinator);
}

/// The committed transactions in the coordinator's listing, once every
/// listed one has ended (None while any has not).
async fn committed_in_log(client: &concord_participant::CoordinatorClient) -> Option<Vec<String>> {
    let mut raw = client.raw();
    let mut committed = Vec::new();
    let mut token = String::new();
    loop {
        let page = raw
            .list_transactions(pb::ListTransactionsRequest {
                page_size: 1000,
                page_token: token.clone(),
                ..pb::ListTransactionsRequest::default()
            })
            .await
            .ok()?
            .into_inner();
        for txn in &page.transactions {
            match pb::TransactionState::try_from(txn.state).ok()? {
                pb::TransactionState::Committed => committed.push(txn.id.clone()),
                pb::TransactionState::Aborted => {}
                _ => return None,
            }
        }
        if page.next_page_token.is_empty() {
            return Some(committed);
        }
        token = page.next_page_token;
    }
}
