//! The README, run as printed (issue 32): its commands are taken from the
//! Markdown, not copied here, so the page and the programs cannot drift.
//!
//! - The quick start's demo, its whole output compared with the output the
//!   README shows (ids and ports aside), and the travel demo it mentions.
//! - The console's commands: a node serving the console, the travel demo
//!   through it, the trips read back from the console's API.
//! - "The bank example by hand" and "The travel example (a saga) by hand":
//!   each `# terminal N` part runs as its own shell script in a temp dir
//!   (the first two stay up, as in a terminal; the third runs to its end),
//!   and every service's database is checked afterwards.
//! - The Rust message snippet, compiled into this test by `tests/build.rs`
//!   and run against a real coordinator, a bank and two event services.
//!
//! `cargo run [options] --bin NAME [--]` becomes the same program as the
//! tests build it (`tests/src/bin`), because cargo cannot run inside
//! `cargo test`; `cargo test --workspace` itself is this run. The README's
//! commands use fixed ports (7400, 7480, 75xx, 76xx): the flows that do take
//! turns, and a port already taken fails with its number.

#[path = "../support/mod.rs"]
mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use sqlx::SqlitePool;
use tokio_util::sync::CancellationToken;

const README: &str = include_str!("../../../README.md");

/// The README's commands use fixed ports: one such flow at a time.
static FIXED_PORTS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A fenced block of the README.
struct Block {
    /// The `## ` heading it is under.
    section: String,
    /// What follows the opening fence (`sh`, `rust`, or nothing).
    info: String,
    text: String,
}

fn blocks() -> Vec<Block> {
    let mut found = Vec::new();
    let mut section = String::new();
    let mut open: Option<Block> = None;
    for line in README.lines() {
        if let Some(fence) = line.trim_start().strip_prefix("```") {
            match open.take() {
                Some(block) => found.push(block),
                None => {
                    open = Some(Block {
                        section: section.clone(),
                        info: fence.trim().to_owned(),
                        text: String::new(),
                    })
                }
            }
        } else if let Some(block) = open.as_mut() {
            block.text.push_str(line);
            block.text.push('\n');
        } else if let Some(heading) = line.strip_prefix("## ") {
            section = heading.trim().to_owned();
        }
    }
    found
}

/// The README's blocks of `info` under the heading that starts with `section`.
fn blocks_in(section: &str, info: &str) -> Vec<String> {
    let found: Vec<String> = blocks()
        .into_iter()
        .filter(|b| b.section.starts_with(section) && b.info == info)
        .map(|b| b.text)
        .collect();
    assert!(
        !found.is_empty(),
        "README.md has no ```{info} block under a heading starting {section:?}"
    );
    found
}

/// The program a README command runs with `cargo run ... --bin NAME`, the
/// same `main` as the tests build it, and the package that binary is in.
fn program(name: &str) -> (&'static str, &'static str) {
    match name {
        "concord" => (
            env!("CARGO_BIN_EXE_concord-failpoints"),
            "concord-coordinator",
        ),
        "account-service" => (
            env!("CARGO_BIN_EXE_account-service-failpoints"),
            "concord-example-bank",
        ),
        "transfer" => (
            env!("CARGO_BIN_EXE_transfer-failpoints"),
            "concord-example-bank",
        ),
        "bank-demo" => (
            env!("CARGO_BIN_EXE_bank-demo-failpoints"),
            "concord-example-bank",
        ),
        "travel-service" => (
            env!("CARGO_BIN_EXE_travel-service-failpoints"),
            "concord-example-travel",
        ),
        "book-trip" => (
            env!("CARGO_BIN_EXE_book-trip-failpoints"),
            "concord-example-travel",
        ),
        "travel-demo" => (
            env!("CARGO_BIN_EXE_travel-demo-failpoints"),
            "concord-example-travel",
        ),
        other => panic!("the README runs `{other}`: add it to this test and to tests/src/bin"),
    }
}

/// `script` with every `cargo run [options] --bin NAME [--]` replaced by
/// the program it builds; continued lines (`\`) left as they are.
fn without_cargo(script: &str) -> String {
    let mut out = String::new();
    let mut rest = script;
    while let Some(at) = rest.find("cargo run") {
        out.push_str(&rest[..at]);
        let command = &rest[at..];
        let line_end = command.find('\n').unwrap_or(command.len());
        let name_at = command[..line_end]
            .find("--bin ")
            .map(|bin| bin + "--bin ".len())
            .unwrap_or_else(|| panic!("`{}` names no --bin", &command[..line_end]));
        let name_len = command[name_at..]
            .find(|c: char| c.is_whitespace() || c == '"')
            .unwrap_or(command.len() - name_at);
        let (path, package) = program(&command[name_at..name_at + name_len]);
        // `-p PACKAGE` must name the package the binary is in, as cargo
        // would insist.
        let options: Vec<&str> = command[..name_at].split_whitespace().collect();
        if let Some(named) = options
            .windows(2)
            .find(|pair| pair[0] == "-p" || pair[0] == "--package")
            .map(|pair| pair[1])
        {
            assert_eq!(named, package, "`{}`", &command[..line_end]);
        }
        out.push_str(path);
        rest = &command[name_at + name_len..];
        // A `--` right after the name ends cargo's options, not the program's.
        if let Some(after) = rest.strip_prefix(" --")
            && (after.is_empty() || after.starts_with(char::is_whitespace))
        {
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The parts of a block written for several terminals (`# terminal N`),
/// in order.
fn terminals(block: &str) -> Vec<String> {
    let mut parts: Vec<String> = Vec::new();
    for line in block.lines() {
        if line.trim_start().starts_with("# terminal") {
            parts.push(String::new());
        }
        if let Some(part) = parts.last_mut() {
            part.push_str(line);
            part.push('\n');
        }
    }
    parts
}

/// The ports a script serves on: each `--listen`/`--console-listen
/// 127.0.0.1:N`, and 7400 for a `concord serve` that names none (the
/// documented default).
fn ports_served(script: &str) -> Vec<u16> {
    let mut ports = Vec::new();
    let words: Vec<&str> = script.split_whitespace().collect();
    for pair in words.windows(2) {
        if matches!(pair[0], "--listen" | "--console-listen")
            && let Some(port) = pair[1].strip_prefix("127.0.0.1:")
        {
            ports.push(port.parse().expect("a port number"));
        }
    }
    if script.contains("--bin concord -- serve") && !script.contains("--listen ") {
        ports.push(7400);
    }
    ports
}

/// Fails, naming it, when a port the README uses is taken.
fn assert_free(ports: &[u16]) {
    for port in ports {
        if let Err(error) = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], *port))) {
            panic!(
                "the README's commands serve on 127.0.0.1:{port}, which is taken ({error}): \
                 stop what listens there and run again"
            );
        }
    }
}

/// A shell script running in the background, as in a terminal left open;
/// its whole process group is killed when dropped.
struct Terminal {
    name: String,
    child: std::process::Child,
    dir: PathBuf,
}

/// A command as a newcomer's shell runs it: in `dir`, with none of this
/// machine's Concord settings in the environment.
fn shell(dir: &Path, script: &str) -> std::process::Command {
    let mut command = std::process::Command::new("bash");
    command
        .arg("-c")
        .arg(without_cargo(script))
        .current_dir(dir);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if key.starts_with("CONCORD_") || key.starts_with("BANK_") || key == "FAILPOINTS" {
            command.env_remove(&*key);
        }
    }
    command
}

impl Terminal {
    fn start(dir: &Path, name: &str, script: &str) -> Terminal {
        use std::os::unix::process::CommandExt;
        let log = |suffix: &str| {
            std::fs::File::create(dir.join(format!("{name}.{suffix}"))).expect("log file")
        };
        let child = shell(dir, script)
            .stdin(Stdio::null())
            .stdout(log("out"))
            .stderr(log("err"))
            .process_group(0)
            .spawn()
            .expect("bash starts");
        Terminal {
            name: name.to_owned(),
            child,
            dir: dir.to_owned(),
        }
    }

    /// Waits until something accepts connections on each of `ports`;
    /// fails with the terminal's output if it ends first.
    async fn serving(&mut self, ports: &[u16]) {
        for port in ports {
            for attempt in 0.. {
                if tokio::net::TcpStream::connect(("127.0.0.1", *port))
                    .await
                    .is_ok()
                {
                    break;
                }
                if let Ok(Some(status)) = self.child.try_wait() {
                    panic!(
                        "{} ended ({status}) before serving on {port}: {}",
                        self.name,
                        self.output()
                    );
                }
                assert!(
                    attempt < 1_200,
                    "{} never served on {port}: {}",
                    self.name,
                    self.output()
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }

    fn output(&self) -> String {
        let read = |suffix: &str| {
            std::fs::read_to_string(self.dir.join(format!("{}.{suffix}", self.name)))
                .unwrap_or_default()
        };
        format!("\nstdout:\n{}\nstderr:\n{}", read("out"), read("err"))
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.child.wait();
        // Until every process of the group is gone (their ports with them),
        // so that the next flow finds the README's ports free.
        for _ in 0..200 {
            let alive = std::process::Command::new("kill")
                .args(["-0", "--", &group])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            if !alive {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs `script` to its end in `dir` (at most two minutes, a bound on a
/// hang); its stdout, after checking it succeeded.
async fn run(dir: &Path, script: &str) -> String {
    let mut command = tokio::process::Command::from(shell(dir, script));
    command.kill_on_drop(true).stdin(Stdio::null());
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .unwrap_or_else(|_| panic!("still running after 2 min: {script}"))
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{script}\nended {}\nstdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// `text` with what differs from run to run written the same way: ids as
/// `<id>`, loopback addresses as `<addr>`, trailing blanks gone.
fn normalized(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| {
            let mut out = String::new();
            let mut rest = line;
            while !rest.is_empty() {
                if is_uuid(rest) {
                    out.push_str("<id>");
                    rest = &rest[36..];
                } else if let Some(port) = rest.strip_prefix("127.0.0.1:") {
                    out.push_str("<addr>");
                    rest = port.trim_start_matches(|c: char| c.is_ascii_digit());
                } else {
                    let c = rest.chars().next().expect("not empty");
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
            out.trim_end().to_owned()
        })
        .collect()
}

fn is_uuid(text: &str) -> bool {
    text.len() >= 36
        && text.as_bytes()[..36]
            .iter()
            .enumerate()
            .all(|(i, b)| match i {
                8 | 13 | 18 | 23 => *b == b'-',
                _ => b.is_ascii_hexdigit(),
            })
}

/// A command of the README whose words start with `start`.
fn command<'a>(block: &'a str, start: &str) -> &'a str {
    block
        .lines()
        .find(|line| line.trim_start().starts_with(start))
        .unwrap_or_else(|| panic!("no `{start}` command in:\n{block}"))
}

#[tokio::test]
async fn the_quick_start_demo_prints_what_the_readme_shows() {
    let block = &blocks_in("Quick start", "sh")[0];
    let commands: Vec<&str> = block.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(
        commands.len(),
        2,
        "the quick start is two commands: {commands:?}"
    );
    // The other is `cargo test --workspace`: this run.
    assert!(commands[1].starts_with("cargo test --workspace"));
    let dir = tempfile::tempdir().expect("temp dir");
    let printed = run(dir.path(), commands[0]).await;
    // The README shows the whole output, in two blocks.
    let shown = blocks_in("Quick start", "").concat();
    let lines = |text: &str| -> Vec<String> {
        normalized(text)
            .into_iter()
            .filter(|l| !l.is_empty())
            .collect()
    };
    assert_eq!(
        lines(&shown),
        lines(&printed),
        "the README shows the demo's output as it prints it (ids and ports aside)"
    );

    // "The saga example runs the same way": the command in the prose.
    let prose = README
        .split("The saga example runs the same way: `")
        .nth(1)
        .and_then(|rest| rest.split('`').next())
        .expect("the README names the travel demo's command")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let printed = run(dir.path(), &prose).await;
    let sagas: Vec<&str> = printed
        .lines()
        .filter(|l| l.trim_start().starts_with("saga "))
        .collect();
    assert_eq!(sagas.len(), 3, "three trips:\n{printed}");
    assert!(sagas[0].contains("-> Completed"), "{printed}");
    assert!(
        sagas[1].contains("-> Compensated compact-car is sold out"),
        "{printed}"
    );
    assert!(sagas[2].contains("-> Completed"), "{printed}");
    assert!(
        printed.contains("hotel    succeeded    attempts 3"),
        "the flaky hotel's retries:\n{printed}"
    );
}

#[tokio::test]
async fn the_consoles_commands_show_the_trips_in_the_console() {
    let block = &blocks_in("The web console", "sh")[0];
    let serve = command(block, "cargo run --bin concord -- serve");
    let demo = &block[block
        .find("cargo run -p concord-example-travel")
        .expect("the demo")..];
    let _ports = FIXED_PORTS.lock().await;
    let ports = ports_served(serve);
    assert_free(&ports);
    let dir = tempfile::tempdir().expect("temp dir");
    let mut node = Terminal::start(dir.path(), "coordinator", serve);
    node.serving(&ports).await;
    let printed = run(dir.path(), demo).await;
    assert_eq!(printed.matches("saga ").count(), 3, "{printed}");

    // What the console's page reads: its listing, as JSON.
    let console = ports.iter().find(|p| **p != 7400).expect("a console port");
    let listing = http_get(*console, "/api/transactions?kind=saga").await;
    let listing: serde_json::Value = serde_json::from_str(&listing).expect("JSON");
    let mut states: Vec<&str> = listing["transactions"]
        .as_array()
        .expect("transactions")
        .iter()
        .map(|t| t["state"].as_str().expect("a state"))
        .collect();
    states.sort_unstable();
    assert_eq!(
        states,
        ["compensated", "completed", "completed"],
        "{listing}"
    );
    drop(node);
}

/// The body of `GET path` on the console at 127.0.0.1:`port`.
async fn http_get(port: u16, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("the console answers");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{body}");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunked(body)
    } else {
        body.to_owned()
    }
}

fn dechunked(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
        if size == 0 {
            break;
        }
        out.push_str(&rest[..size]);
        body = &rest[size + 2..];
    }
    out
}

async fn open(path: PathBuf) -> SqlitePool {
    assert!(path.exists(), "{} was not created", path.display());
    SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect("open")
}

#[tokio::test]
async fn the_bank_example_by_hand_moves_the_money_it_says() {
    let block = &blocks_in("The bank example by hand", "sh")[0];
    let parts = terminals(block);
    assert_eq!(parts.len(), 3, "three terminals:\n{block}");
    let _ports = FIXED_PORTS.lock().await;
    let (first, second) = (ports_served(&parts[0]), ports_served(&parts[1]));
    assert_free(&[first.clone(), second.clone()].concat());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut coordinator = Terminal::start(dir.path(), "terminal-1", &parts[0]);
    coordinator.serving(&first).await;
    let mut banks = Terminal::start(dir.path(), "terminal-2", &parts[1]);
    banks.serving(&second).await;
    let printed = run(dir.path(), &parts[2]).await;

    let outcomes: Vec<&str> = printed
        .lines()
        .filter(|l| l.contains(" committed") || l.contains(" aborted"))
        .collect();
    assert_eq!(outcomes.len(), 2, "{printed}");
    assert!(outcomes[0].ends_with(" committed"), "{printed}");
    assert!(
        outcomes[1].contains(" aborted: insufficient funds"),
        "{printed}"
    );
    // The balances as printed, and as each bank's database has them.
    assert!(
        printed.contains("alice        balance       7000  held        0"),
        "{printed}"
    );
    assert!(
        printed.contains("bob          balance       8000  held        0"),
        "{printed}"
    );
    let bank_a = open(dir.path().join("bank-a.db")).await;
    let bank_b = open(dir.path().join("bank-b.db")).await;
    let balance = |pool: SqlitePool, name: &'static str| async move {
        concord_example_bank::account(&pool, name)
            .await
            .expect("read")
            .expect("the account")
    };
    let alice = balance(bank_a.clone(), "alice").await;
    let bob = balance(bank_b.clone(), "bob").await;
    assert_eq!((alice.balance, alice.held), (7_000, 0));
    assert_eq!((bob.balance, bob.held), (8_000, 0));

    // Terminal 2 run again, as someone restarting the banks would: the
    // accounts it opens exist, and keep their money (no 3,000 created).
    drop(banks);
    let mut banks = Terminal::start(dir.path(), "terminal-2-again", &parts[1]);
    banks.serving(&second).await;
    assert_eq!(balance(bank_a, "alice").await.balance, 7_000);
    assert_eq!(balance(bank_b, "bob").await.balance, 8_000);
    drop(banks);
    drop(coordinator);
}

#[tokio::test]
async fn the_travel_example_by_hand_books_one_trip_and_gives_back_the_other() {
    let block = &blocks_in("The travel example", "sh")[0];
    let parts = terminals(block);
    assert_eq!(parts.len(), 3, "three terminals:\n{block}");
    let _ports = FIXED_PORTS.lock().await;
    let (first, second) = (ports_served(&parts[0]), ports_served(&parts[1]));
    assert_eq!(second.len(), 5, "five services: {second:?}");
    assert_free(&[first.clone(), second.clone()].concat());
    let dir = tempfile::tempdir().expect("temp dir");
    let mut coordinator = Terminal::start(dir.path(), "terminal-1", &parts[0]);
    coordinator.serving(&first).await;
    let mut services = Terminal::start(dir.path(), "terminal-2", &parts[1]);
    services.serving(&second).await;
    let printed = run(dir.path(), &parts[2]).await;
    let trips: Vec<&str> = printed.lines().filter(|l| is_uuid(l)).collect();
    assert_eq!(trips.len(), 2, "{printed}");
    assert!(trips[0].contains(" Completed"), "{printed}");
    assert!(
        trips[1].contains(" Compensated compact-car is sold out"),
        "{printed}"
    );

    // Each service's own database: ada holds a seat, a room and the car and
    // paid; bob's seat and room were given back, his card never charged.
    let db = |name: &str| open(dir.path().join(format!("{name}.db")));
    let left = |pool: SqlitePool, item: &'static str| async move {
        concord_example_travel::available(&pool, item)
            .await
            .expect("read")
            .expect("stocked")
    };
    assert_eq!(left(db("flight").await, "LH123").await, 9);
    assert_eq!(left(db("hotel").await, "grand-hotel").await, 4);
    assert_eq!(left(db("car").await, "compact-car").await, 0);
    let payment = db("payment").await;
    let card = |card: &'static str| {
        let payment = payment.clone();
        async move {
            concord_example_travel::balance(&payment, card)
                .await
                .expect("read")
                .expect("funded")
        }
    };
    assert_eq!(card("ada").await, 100_000 - 42_000);
    assert_eq!(card("bob").await, 100_000);
    let ada = trips[0].split_whitespace().next().expect("an id");
    let bob = trips[1].split_whitespace().next().expect("an id");
    let email = db("email").await;
    assert_eq!(
        concord_example_travel::emails(&email, ada)
            .await
            .expect("read"),
        1
    );
    assert_eq!(
        concord_example_travel::emails(&email, bob)
            .await
            .expect("read"),
        0
    );

    // Terminal 2 run again: what was sold stays sold, no card is refilled.
    drop(services);
    let mut services = Terminal::start(dir.path(), "terminal-2-again", &parts[1]);
    services.serving(&second).await;
    assert_eq!(left(db("car").await, "compact-car").await, 0);
    assert_eq!(left(db("flight").await, "LH123").await, 9);
    assert_eq!(card("ada").await, 100_000 - 42_000);
    drop(services);
    drop(coordinator);
}

/// A service of the snippet's on 127.0.0.1:0: a bank (the producer, which
/// answers check-backs) or an event service (a destination).
async fn serve_on_loopback<F, Fut>(serve: F) -> String
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(serve(listener));
    url
}

#[tokio::test]
async fn the_readmes_message_snippet_debits_once_and_delivers_once() {
    assert_eq!(
        include_str!(concat!(env!("OUT_DIR"), "/readme_rust_count")),
        "1",
        "each Rust block of the README is run by a test here"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let node =
        support::start_coordinator(&dir.path().join("coordinator"), support::quick_config()).await;
    let stop = CancellationToken::new();

    let pool = concord_example_bank::open_db(&dir.path().join("bank-a.db"))
        .await
        .expect("bank db");
    concord_example_bank::open_account(&pool, "alice", 10_000)
        .await
        .expect("account");
    let (served, halt) = (pool.clone(), stop.clone());
    let bank_url = serve_on_loopback(|listener| async move {
        concord_example_bank::serve(
            served,
            support::keys::callers(),
            Default::default(),
            listener,
            halt.cancelled_owned(),
        )
        .await
        .expect("the bank serves");
    })
    .await;
    let mut destinations = Vec::new();
    for name in ["audit", "notify"] {
        let events =
            concord_example_bank::events::open_events_db(&dir.path().join(format!("{name}.db")))
                .await
                .expect("events db");
        let (served, halt) = (events.clone(), stop.clone());
        let url = serve_on_loopback(|listener| async move {
            concord_example_bank::events::serve_events(
                served,
                support::keys::callers(),
                listener,
                halt.cancelled_owned(),
            )
            .await
            .expect("the event service serves");
        })
        .await;
        destinations.push((events, url));
    }

    // The names the snippet uses.
    let client = support::client(&node);
    let (bank_a, audit, notify) = (
        bank_url.as_str(),
        destinations[0].1.as_str(),
        destinations[1].1.as_str(),
    );
    let event = br#"{"event":"transfer completed","from":"alice","amount":3000}"#.to_vec();
    let amount: i64 = 3_000;
    let ran: anyhow::Result<()> = async {
        include!(concat!(env!("OUT_DIR"), "/readme_rust_0.rs"));
        Ok(())
    }
    .await;
    ran.expect("the README's snippet runs");

    let alice = concord_example_bank::account(&pool, "alice")
        .await
        .expect("read")
        .expect("alice");
    assert_eq!(alice.balance, 7_000, "debited once");
    for (events, url) in &destinations {
        let received = support::eventually("the event is delivered", || async {
            let received = concord_example_bank::events::events(events)
                .await
                .expect("read");
            (!received.is_empty()).then_some(received)
        })
        .await;
        assert_eq!(received.len(), 1, "{url} received it once: {received:?}");
        assert!(received[0].body.contains("transfer completed"));
    }
    stop.cancel();
    node.shutdown().await.expect("shutdown");
}
