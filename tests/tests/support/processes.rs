//! Child processes for crash and chaos tests: the real programs built with
//! fail points on (`tests/src/bin`), started on a fixed loopback address so
//! that a restart comes back where its peers expect it.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::process::{Child, Command};

/// A free loopback address for a child process, reused when it restarts.
///
/// Taken below the OS's ephemeral port range, where `bind(127.0.0.1:0)`
/// never lands: otherwise, while a crashed process is down, another test's
/// server could be given its port and answer in its place. Each port is
/// reserved for the life of this test process by an exclusive lock on a
/// file named after it (released by the OS when the process exits, however
/// it exits): `cargo nextest` runs every test in a process of its own, and
/// a free port probed by one could otherwise be handed to another before
/// either server bound it ("is 127.0.0.1:17417 taken?").
pub fn free_addr() -> SocketAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    reserve(&NEXT)
}

/// Port locks held by this process; never released before it exits.
static RESERVED: std::sync::Mutex<Vec<std::fs::File>> = std::sync::Mutex::new(Vec::new());

fn reserve(next: &AtomicU32) -> SocketAddr {
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768);
    let (low, high) = (10_000u32, ephemeral_low.max(12_000));
    let span = high - low;
    let locks = std::env::temp_dir().join("concord-test-ports");
    std::fs::create_dir_all(&locks).expect("port lock directory");
    // Different test processes start at different places in the range
    // (spread out: nextest's processes have neighbouring ids).
    let start = std::process::id().wrapping_mul(2_654_435_761) % span;
    for _ in 0..span {
        let port = low + (start + next.fetch_add(1, Ordering::Relaxed)) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        let Ok(lock) = std::fs::File::create(locks.join(port.to_string())) else {
            continue;
        };
        if lock.try_lock().is_err() {
            // Another test process holds it.
            continue;
        }
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            RESERVED
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .push(lock);
            return addr;
        }
    }
    panic!("no free loopback port between {low} and {high}");
}

/// Two test processes whose searches start at the same place (their own
/// counters, the same process-id offset) must not be handed the same port:
/// the lock, not the bind probe, keeps them apart. Two counters in one
/// process stand for the two processes (a flock is per open file, so a
/// second open of the same lock file conflicts as another process's would).
#[test]
fn searches_from_the_same_place_get_different_ports() {
    let (first, second) = (AtomicU32::new(0), AtomicU32::new(0));
    let a = reserve(&first);
    let b = reserve(&second);
    assert_ne!(a, b);
}

/// A child process serving on `addr`.
pub struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    /// Starts `exe` and waits until it accepts connections on `addr`.
    pub async fn start(
        name: &str,
        exe: &str,
        args: &[String],
        failpoint: Option<&str>,
        addr: SocketAddr,
    ) -> Self {
        Self::start_logged(name, exe, args, failpoint, addr, None).await
    }

    /// [`Proc::start`], with the process's log (stderr) written to `log`.
    pub async fn start_logged(
        name: &str,
        exe: &str,
        args: &[String],
        failpoint: Option<&str>,
        addr: SocketAddr,
        log: Option<&Path>,
    ) -> Self {
        Self::start_with_env(name, exe, args, failpoint, addr, log, &[]).await
    }

    /// [`Proc::start_logged`], with `env` added to the process's
    /// environment (a Python participant's crash point, say).
    pub async fn start_with_env(
        name: &str,
        exe: &str,
        args: &[String],
        failpoint: Option<&str>,
        addr: SocketAddr,
        log: Option<&Path>,
        env: &[(&str, &str)],
    ) -> Self {
        let mut command = Command::new(exe);
        command.envs(env.iter().copied());
        if let Some(log) = log {
            let file = std::fs::File::create(log).expect("log file");
            command.stderr(file);
        }
        command
            .args(args)
            // CONCORD_CHILD_LOG=debug (say) shows more of a child's log.
            .env(
                "RUST_LOG",
                std::env::var("CONCORD_CHILD_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .env(
                "FAILPOINTS",
                // A bare name crashes there; "name=action" is taken as is.
                failpoint
                    .map(|p| {
                        if p.contains('=') {
                            p.to_owned()
                        } else {
                            format!("{p}=return")
                        }
                    })
                    .unwrap_or_default(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        for _ in 0..750 {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                // Someone accepts on the address; make sure it is our child
                // (a child that could not bind exits at once).
                tokio::time::sleep(Duration::from_millis(30)).await;
                if let Ok(Some(status)) = child.try_wait() {
                    panic!("{name} exited at start ({status}); is {addr} taken?");
                }
                return Self {
                    name: name.to_owned(),
                    child,
                };
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{name} exited before serving: {status}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{name} did not start serving on {addr}");
    }

    /// Waits for the process to die at its fail point; it must not exit
    /// cleanly.
    pub async fn crashed(mut self) {
        let status = tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not reach its crash point", self.name))
            .expect("wait");
        assert!(
            !status.success(),
            "{} exited cleanly instead of crashing: {status}",
            self.name
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Sends `signal` ("STOP", "CONT", ...) to the process.
    pub fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .args([format!("-{signal}"), self.pid().to_string()])
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {}", self.name);
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for the process to exit by itself.
    pub async fn exits(mut self, within: Duration) -> std::process::ExitStatus {
        tokio::time::timeout(within, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("{} did not exit", self.name))
            .expect("wait")
    }

    /// SIGKILL, and wait for it to be gone.
    pub async fn kill(mut self) {
        self.child.start_kill().expect("SIGKILL");
        let _ = self.child.wait().await;
    }
}

/// Flags every test coordinator process runs with: quick retries and
/// delivery attempts, so that recovery and phase 2 finish within a test.
pub const QUICK_FLAGS: [&str; 6] = [
    "--retry-min-ms",
    "10",
    "--retry-max-ms",
    "200",
    "--delivery-timeout-ms",
    "1000",
];

pub fn coordinator_args(addr: SocketAddr, data: &Path) -> Vec<String> {
    let mut args: Vec<String> = [
        "serve",
        "--listen",
        &addr.to_string(),
        "--data-dir",
        &data.display().to_string(),
    ]
    .map(String::from)
    .to_vec();
    args.extend(QUICK_FLAGS.map(String::from));
    args.extend(super::keys::signing_key_args());
    args
}

/// Starts the coordinator with extra flags.
pub async fn start_coordinator_with(
    addr: SocketAddr,
    data: &Path,
    failpoint: Option<&str>,
    extra: &[&str],
) -> Proc {
    let exe = env!("CARGO_BIN_EXE_concord-failpoints");
    let mut args = coordinator_args(addr, data);
    args.extend(extra.iter().map(|a| a.to_string()));
    Proc::start("concord", exe, &args, failpoint, addr).await
}

pub async fn start_coordinator(addr: SocketAddr, data: &Path, failpoint: Option<&str>) -> Proc {
    let exe = env!("CARGO_BIN_EXE_concord-failpoints");
    Proc::start(
        "concord",
        exe,
        &coordinator_args(addr, data),
        failpoint,
        addr,
    )
    .await
}
