//! The trust boundary at a node's start (DESIGN §12), with the real
//! binaries: one log has one writer, and a node that other hosts can reach
//! does not serve anyone it cannot authenticate unless told so by name.

use std::time::Duration;

use super::support::processes::{Proc, coordinator_args, free_addr, start_coordinator};

const CONCORD: &str = env!("CARGO_BIN_EXE_concord-failpoints");
const ACCOUNT_SERVICE: &str = env!("CARGO_BIN_EXE_account-service-failpoints");

/// Runs `exe args` to its end (at most 30 s): its exit status and stderr.
async fn run(exe: &str, args: &[String]) -> (std::process::ExitStatus, String) {
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new(exe)
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("{exe} {args:?} did not exit"))
    .expect("run");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A second `concord serve` on a data directory in use exits at once,
/// naming the pid that holds it, and changes nothing: the first goes on
/// serving. Once the first is gone (SIGKILL), the directory is free again:
/// the lock dies with its process.
#[tokio::test]
async fn a_second_node_on_one_data_directory_exits_naming_the_first() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("coordinator");
    let first = start_coordinator(free_addr(), &data, None).await;
    let (status, stderr) = run(CONCORD, &coordinator_args(free_addr(), &data)).await;
    assert!(!status.success(), "the second node must not serve");
    assert!(
        stderr.contains("in use by another coordinator")
            && stderr.contains(&format!("pid {}", first.pid())),
        "{stderr}"
    );
    first.kill().await;
    let second = start_coordinator(free_addr(), &data, None).await;
    second.kill().await;
}

/// Protected mode: `concord serve` on an address other hosts can reach,
/// without both an admin and a client token and without mutual TLS,
/// refuses to start and names the flags that fix it; with both tokens, or
/// with --allow-unprotected, it serves.
#[tokio::test]
async fn a_node_reachable_from_other_hosts_needs_a_token_or_an_explicit_open_door() {
    let dir = tempfile::tempdir().expect("temp dir");
    // On every interface, at a port known free on loopback.
    let exposed = |name: &str| {
        let addr = free_addr();
        let mut args = coordinator_args(addr, &dir.path().join(name));
        let listen = args.iter().position(|a| a == "--listen").expect("--listen") + 1;
        args[listen] = format!("0.0.0.0:{}", addr.port());
        (addr, args)
    };
    let (_, args) = exposed("open");
    let (status, stderr) = run(CONCORD, &args).await;
    assert!(!status.success());
    for named in [
        "--admin-token",
        "--client-token",
        "--tls-client-ca",
        "--allow-unprotected",
        "0.0.0.0:",
    ] {
        assert!(stderr.contains(named), "{named}: {stderr}");
    }
    // The console's port is held to the same rule.
    let mut console = coordinator_args(free_addr(), &dir.path().join("console"));
    console.extend(["--console-listen".into(), "0.0.0.0:0".into()]);
    let (status, stderr) = run(CONCORD, &console).await;
    assert!(
        !status.success() && stderr.contains("--admin-token"),
        "{stderr}"
    );
    // An admin token alone leaves client calls open: whoever may Begin
    // and Commit has the node sign calls to the participants.
    let (_, mut args) = exposed("admin-only");
    args.extend(["--admin-token".into(), "s3cret".into()]);
    let (status, stderr) = run(CONCORD, &args).await;
    assert!(
        !status.success()
            && stderr.contains("--client-token")
            && !stderr.contains("--admin-token ("),
        "{stderr}"
    );
    // With both tokens, or the open door asked for by name, it serves.
    for extra in [
        &["--admin-token", "s3cret", "--client-token", "app"][..],
        &["--allow-unprotected"][..],
    ] {
        let (addr, mut args) = exposed(extra[0]);
        args.extend(extra.iter().map(|a| a.to_string()));
        Proc::start("concord", CONCORD, &args, None, addr)
            .await
            .kill()
            .await;
    }
}

/// A participant process told neither whose calls to obey nor to obey
/// anyone exits at once, naming both flags.
#[tokio::test]
async fn an_account_service_without_a_coordinator_key_exits_naming_the_flags() {
    let dir = tempfile::tempdir().expect("temp dir");
    let args: Vec<String> = vec![
        "serve".into(),
        "--listen".into(),
        free_addr().to_string(),
        "--db".into(),
        dir.path().join("bank.db").display().to_string(),
    ];
    let (status, stderr) = run(ACCOUNT_SERVICE, &args).await;
    assert!(!status.success());
    assert!(
        stderr.contains("--coordinator-key") && stderr.contains("--accept-unsigned-calls"),
        "{stderr}"
    );
    assert!(
        !dir.path().join("bank.db").exists(),
        "refused before anything was opened"
    );
}

/// A log that cannot be opened is named, with why and what to check, in
/// one line: a SQLite path in a directory that does not exist; a
/// PostgreSQL server that refuses the connection (its address, never the
/// password, and at once, not after the pool's timeout). Never a stack
/// trace, even with RUST_BACKTRACE set.
#[tokio::test]
async fn a_log_that_cannot_be_opened_is_named_with_why() {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = super::support::keys::files().0.display().to_string();
    let missing = dir.path().join("no-such-dir/log.db");
    let closed = free_addr();
    for (url, named, why) in [
        (
            format!("sqlite://{}", missing.display()),
            format!("sqlite://{}", missing.display()),
            "no such directory",
        ),
        (
            format!("postgres://concord:s3cret@{closed}/concord"),
            format!("postgres://concord:***@{closed}/concord"),
            "Connection refused",
        ),
    ] {
        let args: Vec<String> = [
            "serve",
            "--listen",
            &free_addr().to_string(),
            "--database-url",
            &url,
            "--node-name",
            "n1",
            "--signing-key",
            &key,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        let output = tokio::time::timeout(
            Duration::from_secs(30),
            tokio::process::Command::new(CONCORD)
                .args(&args)
                .env("RUST_BACKTRACE", "1")
                .env("RUST_LOG", "error")
                .stdin(std::process::Stdio::null())
                .kill_on_drop(true)
                .output(),
        )
        .await
        .expect("exits")
        .expect("run");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success());
        assert!(
            stderr.contains(&format!("cannot open the log at {named}")) && stderr.contains(why),
            "{stderr}"
        );
        assert!(
            !stderr.contains("s3cret") && !stderr.contains("backtrace"),
            "{stderr}"
        );
    }
}
