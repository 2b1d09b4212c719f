//! A real PostgreSQL for tests: `initdb` and `postgres` in a temp dir, on a
//! free loopback port, as an unprivileged user when the tests run as root
//! (PostgreSQL refuses root). Installed first by `scripts/install-postgres.sh`
//! if the machine lacks it. Stopped, and its files removed, on drop;
//! [`Postgres::restart`] crashes and restarts it on the same port and data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

pub struct Postgres {
    dir: tempfile::TempDir,
    server: Child,
    /// Starts the server again on the same data directory and port.
    launch: Launch,
    pub url: String,
}

struct Launch {
    user: Option<(String, String)>,
    postgres: PathBuf,
    data: PathBuf,
    port: u16,
    socket_dir: PathBuf,
}

impl Launch {
    fn spawn(&self) -> Child {
        command(self.user.as_ref(), &self.postgres)
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &self.port.to_string(), "-k"])
            .arg(&self.socket_dir)
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start postgres")
    }
}

/// Serialises installing, so parallel tests install at most once.
static INSTALL: Mutex<()> = Mutex::new(());

fn server_bin(name: &str) -> Option<PathBuf> {
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if candidate.is_file() {
                return Some(candidate);
            }
        }
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path().join("bin").join(name))
        .filter(|path| path.is_file())
        .collect();
    versions.sort();
    versions.pop()
}

fn bins() -> (PathBuf, PathBuf) {
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if server_bin("initdb").is_none() {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/install-postgres.sh");
        let status = Command::new("bash")
            .arg(&script)
            .status()
            .expect("run install-postgres.sh");
        assert!(status.success(), "installing PostgreSQL failed: {status}");
    }
    (
        server_bin("initdb").expect("initdb after install"),
        server_bin("postgres").expect("postgres after install"),
    )
}

fn output(command: &mut Command) -> String {
    let out = command.output().expect("run command");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Runs `program` as `user` (when root) via setpriv, which execs in place so
/// that killing the child kills the server itself.
fn command(user: Option<&(String, String)>, program: &Path) -> Command {
    match user {
        Some((uid, gid)) => {
            let mut command = Command::new("setpriv");
            command
                .arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .arg("--clear-groups")
                .arg("--")
                .arg(program);
            command
        }
        None => Command::new(program),
    }
}

impl Postgres {
    pub async fn start() -> Self {
        let (initdb, postgres) = bins();
        let dir = tempfile::tempdir().expect("temp dir");
        let root = output(Command::new("id").arg("-u")) == "0";
        let user = root.then(|| {
            let name = if Command::new("id")
                .arg("postgres")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                "postgres"
            } else {
                "nobody"
            };
            let uid = output(Command::new("id").args(["-u", name]));
            let gid = output(Command::new("id").args(["-g", name]));
            let status = Command::new("chown")
                .args(["-R", &format!("{uid}:{gid}")])
                .arg(dir.path())
                .status()
                .expect("chown");
            assert!(status.success());
            (uid, gid)
        });
        let data = dir.path().join("data");
        let status = command(user.as_ref(), &initdb)
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "concord",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("initdb");
        assert!(status.success(), "initdb failed: {status}");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let launch = Launch {
            user,
            postgres,
            data,
            port,
            socket_dir: dir.path().to_owned(),
        };
        let server = launch.spawn();
        let url = format!("postgres://concord@127.0.0.1:{port}/postgres");
        let mut this = Self {
            dir,
            server,
            launch,
            url,
        };
        this.until_accepting().await;
        this
    }

    async fn until_accepting(&mut self) {
        for _ in 0..300 {
            if let Ok(pool) = sqlx::PgPool::connect(&self.url).await {
                pool.close().await;
                return;
            }
            if let Ok(Some(status)) = self.server.try_wait() {
                panic!("postgres exited at start: {status}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.server.kill();
        panic!("postgres did not accept connections at {}", self.url);
    }

    /// Crashes the server (SIGQUIT: no checkpoint, every connection cut),
    /// keeps it down for `down`, and starts it again on the same port and
    /// data; it replays its WAL like after a power cut.
    pub async fn restart(&mut self, down: Duration) {
        self.stop();
        tokio::time::sleep(down).await;
        self.server = self.launch.spawn();
        self.until_accepting().await;
    }

    /// A new, empty database on this server, and its URL.
    pub async fn database(&self, name: &str) -> String {
        let pool = sqlx::PgPool::connect(&self.url).await.expect("connect");
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&pool)
            .await
            .expect("create database");
        pool.close().await;
        format!("{}/{name}", self.url.trim_end_matches("/postgres"))
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Postgres {
    fn stop(&mut self) {
        // SIGQUIT: immediate shutdown, backends exit with the postmaster.
        let _ = Command::new("kill")
            .args(["-QUIT", &self.server.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.server.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}
