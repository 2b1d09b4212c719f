//! The web console in a real browser: headless Chromium driven over
//! WebDriver (Debian's `chromium` and `chromium-driver`, installed by
//! `scripts/install-chromium.sh`). A saga gets stuck while the page is open;
//! its row must appear in the NEEDS_ATTENTION queue live; an operator with
//! the token resolves it through the page; the decision must be in the log
//! and the row must leave the queue. Each page's screenshot is written
//! under the test's temp dir and its path printed (with
//! `CONCORD_CONSOLE_SCREENSHOTS=DIR`, copied there too).

#[path = "../support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use concord_coordinator::node::{Node, NodeConfig, StoreLocation};
use concord_participant::CoordinatorClient;
use concord_participant::saga::{RetryPolicy, Saga, Step};
use concord_proto::v1 as pb;
use fantoccini::{Client, ClientBuilder, Locator};
use support::saga::StepParticipant;
use support::{eventually, quick_config};

const TOKEN: &str = "console-test-token";

/// chromedriver and the browser session it runs; the driver is killed on
/// drop.
struct Browser {
    driver: Child,
    client: Option<Client>,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn program(env: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(env).map_or_else(|| PathBuf::from(default), PathBuf::from);
    assert!(
        path.exists(),
        "{} not found: run scripts/install-chromium.sh (Debian's chromium and chromium-driver), \
         or set {env}",
        path.display()
    );
    path
}

impl Browser {
    async fn start() -> Self {
        let chromium = program("CONCORD_CHROMIUM", "/usr/bin/chromium");
        let chromedriver = program("CONCORD_CHROMEDRIVER", "/usr/bin/chromedriver");
        let port = support::processes::free_addr().port();
        let driver = Command::new(chromedriver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Self {
            driver,
            client: None,
            _profile: profile,
        };
        // The flags this machine's closed network needs (no background
        // connections), a fresh profile, and a window large enough for the
        // pages.
        let capabilities = serde_json::json!({
            "goog:chromeOptions": {
                "binary": chromium,
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-quic", "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--window-size=1360,1100",
                    format!("--user-data-dir={}", browser._profile.path().display()),
                ],
            }
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let url = format!("http://127.0.0.1:{port}");
        let client = eventually("chromedriver answers", || {
            let capabilities = capabilities.clone();
            let url = url.clone();
            async move {
                let connector = hyper_util::client::legacy::connect::HttpConnector::new();
                ClientBuilder::new(connector)
                    .capabilities(capabilities)
                    .connect(&url)
                    .await
                    .ok()
            }
        })
        .await;
        browser.client = Some(client);
        browser
    }

    /// Opens the console's list page at `console` and waits until it is
    /// loaded (an empty queue) and following changes live.
    async fn open(&self, console: &str) {
        self.page().goto(console).await.expect("open the console");
        self.wait_for_text("#attention-body", "Nothing needs attention.")
            .await;
        self.wait_for_text("#live", "live").await;
    }

    fn page(&self) -> &Client {
        self.client.as_ref().expect("a session")
    }

    /// The element `css` selects, waiting for it at most 20 s.
    async fn wait_for(&self, css: &str) -> fantoccini::elements::Element {
        self.page()
            .wait()
            .at_most(Duration::from_secs(20))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|error| panic!("{css} never appeared: {error}"))
    }

    /// Types `token` into the page's token form and uses it.
    async fn use_token(&self, token: &str) {
        self.wait_for("#token")
            .await
            .send_keys(token)
            .await
            .expect("type the token");
        self.wait_for("#token-use")
            .await
            .click()
            .await
            .expect("use it");
    }

    /// Waits until `css`'s text contains `text`.
    async fn wait_for_text(&self, css: &str, text: &str) {
        eventually(&format!("{css} says {text:?}"), || async {
            let element = self.page().find(Locator::Css(css)).await.ok()?;
            element.text().await.ok()?.contains(text).then_some(())
        })
        .await;
    }

    async fn screenshot(&self, dir: &Path, name: &str) -> PathBuf {
        let png = self.page().screenshot().await.expect("screenshot");
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, &png).expect("write screenshot");
        println!("screenshot: {}", path.display());
        if let Some(copies) = std::env::var_os("CONCORD_CONSOLE_SCREENSHOTS") {
            let copy = Path::new(&copies).join(format!("{name}.png"));
            std::fs::write(&copy, &png).expect("copy screenshot");
            println!("screenshot copied: {}", copy.display());
        }
        path
    }
}

fn quick(attempts: u32) -> RetryPolicy {
    RetryPolicy::attempts(attempts, Duration::from_millis(20))
}

/// A saga whose hotel refuses and whose flight cannot be cancelled (its
/// compensation keeps failing): it gets stuck, NEEDS_ATTENTION.
fn stuck_trip(description: &str, steps: &str) -> Saga {
    Saga::new()
        .description(description)
        .step(
            Step::new("flight", steps)
                .action("ok")
                .compensation("stuck")
                .retry(quick(2)),
        )
        .step(
            Step::new("hotel", steps)
                .action("refuse")
                .compensation("ok")
                .after(["flight"]),
        )
}

/// A saga that goes well.
fn good_trip(description: impl Into<String>, steps: &str) -> Saga {
    Saga::new()
        .description(description)
        .step(Step::new("flight", steps).action("ok").compensation("ok"))
}

#[tokio::test]
async fn an_operator_sees_a_stuck_saga_arrive_live_and_resolves_it_in_the_browser() {
    let dir = tempfile::tempdir().expect("temp dir");
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let node = Node::start(NodeConfig {
        access: concord_coordinator::api::Access {
            admin_token: Some(TOKEN.into()),
            client_tokens: Vec::new(),
            ..Default::default()
        },
        console: Some(loopback),
        ..support::node_config(&dir.path().join("coordinator"))
    })
    .await
    .expect("coordinator starts");
    let console = format!("http://{}", node.console_addr().expect("a console"));
    let client = CoordinatorClient::connect(node.url()).expect("client");
    let steps = StepParticipant::start(dir.path(), "steps").await;
    // A few transactions that went well, for the list and the chart.
    for _ in 0..3 {
        good_trip("trip for the list", &steps.url)
            .run(&client)
            .await
            .expect("saga");
    }

    let browser = Browser::start().await;
    browser.open(&console).await;
    browser.wait_for_text("#mode", "read-only").await;

    // While the page is open: a saga whose hotel refuses, and whose flight
    // cannot be cancelled (its compensation keeps failing).
    let stuck = stuck_trip("trip to Lisbon", &steps.url)
        .submit(&client)
        .await
        .expect("saga")
        .transaction_id;
    // Its row appears in the queue without reloading the page.
    let row = format!("#attention tr[data-id=\"{stuck}\"]");
    browser.wait_for(&row).await;
    browser
        .wait_for(&format!("#transactions tr[data-id=\"{stuck}\"]"))
        .await;
    let shots = dir.path();
    browser.screenshot(shots, "console-list").await;

    // Its page, read-only: the stuck step and its error, no Resolve.
    browser
        .wait_for(&format!("{row} a"))
        .await
        .click()
        .await
        .expect("open the saga");
    browser
        .wait_for_text("#parts tr[data-name=\"flight\"]", "compensating")
        .await;
    browser.wait_for_text("#timeline", "needs attention").await;
    assert!(
        browser
            .page()
            .find(Locator::Css("button.resolve-open"))
            .await
            .is_err(),
        "no Resolve without the token"
    );
    browser.screenshot(shots, "console-transaction").await;

    // With the token: Resolve the flight as compensated by hand.
    browser.use_token(TOKEN).await;
    browser.wait_for_text("#mode", "operator").await;
    browser
        .wait_for("#parts tr[data-name=\"flight\"] button.resolve-open")
        .await
        .click()
        .await
        .expect("open the form");
    browser
        .wait_for("#resolve-reason")
        .await
        .send_keys("booking cancelled by phone with the airline, ref 7Q2K")
        .await
        .expect("reason");
    browser
        .wait_for("#resolve-operator")
        .await
        .send_keys("ana")
        .await
        .expect("operator");
    browser
        .wait_for("#resolve-submit")
        .await
        .click()
        .await
        .expect("submit");
    // The confirmation says what will happen before anything does.
    browser
        .wait_for_text("#confirm-text", "cannot be undone")
        .await;
    browser.screenshot(shots, "console-confirm").await;
    browser
        .wait_for("#confirm-ok")
        .await
        .click()
        .await
        .expect("confirm");
    browser
        .wait_for_text("#operator-actions", "booking cancelled by phone")
        .await;
    browser.wait_for_text("#txn-body", "compensated").await;
    browser.screenshot(shots, "console-resolved").await;

    // In the log: the operator's decision, with who and why, and the saga
    // ended compensated.
    let txn = eventually("the saga ends", || async {
        let txn = client.transaction(&stuck).await.ok()?;
        (txn.state == pb::TransactionState::Compensated as i32).then_some(txn)
    })
    .await;
    let action = txn.operator_actions.first().expect("an operator action");
    assert_eq!(
        (action.branch.as_str(), action.operator.as_str()),
        ("flight", "ana")
    );
    assert_eq!(action.outcome, pb::Resolution::Compensated as i32);
    assert!(action.reason.contains("7Q2K"));
    assert!(!txn.needs_attention);
    // And the queue is empty again, on the list page.
    browser
        .page()
        .goto(&console)
        .await
        .expect("back to the list");
    browser
        .wait_for_text("#attention-body", "Nothing needs attention.")
        .await;
    let queue = client
        .raw()
        .list_transactions(pb::ListTransactionsRequest {
            needs_attention: true,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert!(queue.transactions.is_empty(), "{:?}", queue.transactions);
    browser.screenshot(shots, "console-list-after").await;

    // The console's API refuses what its page would not send, and changes
    // nothing: an operator action without the page's header (a form on
    // another site), one without the admin token, one with bad input.
    let resolve = format!("/api/transactions/{stuck}/resolve");
    let body = r#"{"branch":"flight","outcome":"committed","reason":"x","operator":"y"}"#;
    let foreign = http_post(&console, &resolve, "", body).await;
    assert!(foreign.starts_with("HTTP/1.1 403"), "{foreign}");
    assert!(foreign.contains("x-concord-console"), "{foreign}");
    let page = "X-Concord-Console: 1\r\n";
    let anonymous = http_post(&console, &resolve, page, body).await;
    assert!(anonymous.starts_with("HTTP/1.1 401"), "{anonymous}");
    assert!(anonymous.contains("admin token"), "{anonymous}");
    let operator = format!("{page}Authorization: Bearer {TOKEN}\r\n");
    let bad = http_post(
        &console,
        &resolve,
        &operator,
        r#"{"branch":"flight","outcome":"maybe","reason":"x","operator":"y"}"#,
    )
    .await;
    assert!(bad.starts_with("HTTP/1.1 400"), "{bad}");
    assert!(bad.contains("outcome"), "{bad}");
    let after = client.transaction(&stuck).await.expect("get");
    assert_eq!(after.operator_actions.len(), 1, "nothing more was recorded");

    if let Some(client) = browser.client.as_ref() {
        let _ = client.clone().close().await;
    }
    node.shutdown().await.expect("shutdown");
}

/// DESIGN §12 (S3): on a node with client tokens the console shows
/// nothing to a browser that gave none: its API answers 401 naming the
/// token, its page asks for one. With a client token the page lists the
/// transactions and follows new ones live (the feed carries the token),
/// read-only. A request another site's page sends is refused by its
/// Origin, token or not.
#[tokio::test]
async fn with_client_tokens_the_console_shows_nothing_until_one_is_given() {
    const READER: &str = "console-reader-token";
    let dir = tempfile::tempdir().expect("temp dir");
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let node = Node::start(NodeConfig {
        access: concord_coordinator::api::Access {
            admin_token: Some(TOKEN.into()),
            client_tokens: vec![READER.into()],
            // Reached through a reverse proxy under this name too.
            console_hosts: vec!["Console.Example.com".into()],
            ..Default::default()
        },
        console: Some(loopback),
        ..support::node_config(&dir.path().join("coordinator"))
    })
    .await
    .expect("coordinator starts");
    let console = format!("http://{}", node.console_addr().expect("a console"));
    let client = CoordinatorClient::connect(node.url())
        .expect("client")
        .with_token(READER)
        .expect("token");
    let steps = StepParticipant::start(dir.path(), "steps").await;
    let first = good_trip("trip before the page", &steps.url)
        .run(&client)
        .await
        .expect("saga")
        .transaction_id;

    for path in ["/api/transactions", "/api/changes", "/api/stats"] {
        let anonymous = http("GET", &console, path, "", "").await;
        assert!(anonymous.starts_with("HTTP/1.1 401"), "{path}: {anonymous}");
        assert!(anonymous.contains("client token"), "{path}: {anonymous}");
    }
    // DNS rebinding stays refused; the proxy's name is answered.
    let proxied = http_to(&console, "console.example.com:443", "GET /api/info").await;
    assert!(proxied.starts_with("HTTP/1.1 200"), "{proxied}");
    let rebound = http_to(&console, "evil.example", "GET /api/info").await;
    assert!(rebound.starts_with("HTTP/1.1 421"), "{rebound}");
    let reader = format!("Authorization: Bearer {READER}\r\n");
    let listed = http("GET", &console, "/api/transactions", &reader, "").await;
    assert!(
        listed.starts_with("HTTP/1.1 200") && listed.contains(&first),
        "{listed}"
    );
    // Another site's page, even in a browser that holds the admin token.
    let foreign = format!(
        "Origin: http://evil.example\r\nX-Concord-Console: 1\r\nAuthorization: Bearer {TOKEN}\r\n"
    );
    let retry = format!("/api/transactions/{first}/retry");
    let crossed = http("POST", &console, &retry, &foreign, "").await;
    assert!(crossed.starts_with("HTTP/1.1 403"), "{crossed}");
    assert!(crossed.contains("evil.example"), "{crossed}");

    let browser = Browser::start().await;
    browser
        .page()
        .goto(&console)
        .await
        .expect("open the console");
    browser.wait_for_text("#mode", "token required").await;
    browser.wait_for_text("#main", "client token").await;
    assert!(
        browser
            .page()
            .find(Locator::Css("#transactions"))
            .await
            .is_err(),
        "no list without a token"
    );
    let shots = dir.path();
    browser.screenshot(shots, "console-token-required").await;
    browser.use_token(READER).await;
    browser.wait_for_text("#mode", "read-only").await;
    browser
        .wait_for(&format!("#transactions tr[data-id=\"{first}\"]"))
        .await;
    browser.wait_for_text("#live", "live").await;
    // Live: a saga that ends after the page opened shows up in the list.
    let later = good_trip("trip after the page", &steps.url)
        .run(&client)
        .await
        .expect("saga")
        .transaction_id;
    browser
        .wait_for(&format!("#transactions tr[data-id=\"{later}\"]"))
        .await;
    browser.screenshot(shots, "console-client-token").await;

    if let Some(client) = browser.client.as_ref() {
        let _ = client.clone().close().await;
    }
    node.shutdown().await.expect("shutdown");
}

/// The console for investigation (issue 32): on a fresh node its chart
/// says it has no data rather than `0 ms`; an id's first digits, or the
/// list's short form of it, find the one transaction; a whole id opens
/// it; a time range narrows the list; the timeline says how long each
/// change came after the one before. When the node goes away, a banner
/// says so over the page and marks what it shows as possibly stale.
#[tokio::test]
async fn an_operator_finds_a_transaction_by_its_digits_and_sees_when_the_node_is_gone() {
    let dir = tempfile::tempdir().expect("temp dir");
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let node = Node::start(NodeConfig {
        console: Some(loopback),
        ..support::node_config(&dir.path().join("coordinator"))
    })
    .await
    .expect("coordinator starts");
    let console = format!("http://{}", node.console_addr().expect("a console"));
    let browser = Browser::start().await;
    browser.open(&console).await;
    browser.wait_for_text("#percentiles", "no data").await;
    let shots = dir.path();

    let client = CoordinatorClient::connect(node.url()).expect("client");
    let steps = StepParticipant::start(dir.path(), "steps").await;
    let started_ms = concord_coordinator::model::now_ms();
    let mut ids = Vec::new();
    for trip in ["trip to Porto", "trip to Faro", "trip to Braga"] {
        ids.push(
            good_trip(trip, &steps.url)
                .run(&client)
                .await
                .expect("saga")
                .transaction_id,
        );
    }
    let row = |id: &str| format!("#transactions tr[data-id=\"{id}\"]");
    for id in &ids {
        browser.wait_for(&row(id)).await;
    }
    let rows = || async {
        browser
            .page()
            .find_all(Locator::Css("#transactions tbody tr[data-id]"))
            .await
            .expect("rows")
            .len()
    };

    // The list's short form of the second trip's id finds it alone.
    let wanted = &ids[1];
    let short = format!("{}…{}", &wanted[..8], &wanted[wanted.len() - 4..]);
    let search = browser.wait_for("#filter-search").await;
    search
        .send_keys(&format!("{short}\u{E007}"))
        .await
        .expect("search");
    browser.wait_for_text("#live", "live").await;
    eventually("only the trip searched for is listed", || async {
        (rows().await == 1).then_some(())
    })
    .await;
    browser.wait_for(&row(wanted)).await;
    browser.screenshot(shots, "console-search").await;

    // Other text is looked for in descriptions and participants'
    // endpoints: "FARO" finds the one trip, the steps service's address
    // all three; a text nothing holds, none.
    let text_search = |text: &str| format!("{console}/#/?search={text}");
    browser
        .page()
        .goto(&text_search("FARO"))
        .await
        .expect("search");
    eventually("only the trip to Faro is listed", || async {
        (rows().await == 1).then_some(())
    })
    .await;
    browser.wait_for(&row(wanted)).await;
    let address = steps.url.trim_start_matches("http://");
    browser
        .page()
        .goto(&text_search(address))
        .await
        .expect("search");
    for id in &ids {
        browser.wait_for(&row(id)).await;
    }
    browser
        .page()
        .goto(&text_search("nowhere-at-all"))
        .await
        .expect("search");
    browser
        .wait_for_text("#list-body", "No transaction matches.")
        .await;

    // A time range before any of them lists none; one from before them,
    // all three.
    browser
        .page()
        .goto(&format!("{console}/#/?before_ms={}", started_ms - 60_000))
        .await
        .expect("range");
    browser
        .wait_for_text("#list-body", "No transaction matches.")
        .await;
    browser
        .page()
        .goto(&format!("{console}/#/?after_ms={}", started_ms - 1_000))
        .await
        .expect("range");
    for id in &ids {
        browser.wait_for(&row(id)).await;
    }

    // A whole id, typed in capitals, opens its page; its timeline says how
    // long each change took.
    let search = browser.wait_for("#filter-search").await;
    search
        .send_keys(&format!("{}\u{E007}", ids[2].to_ascii_uppercase()))
        .await
        .expect("search");
    browser.wait_for_text("#txn-body", &ids[2]).await;
    // What the step was sent, unfolded on demand.
    browser
        .wait_for("tr.payloads details.payload summary")
        .await
        .click()
        .await
        .expect("unfold");
    browser
        .wait_for_text("tr.payloads", "action (2 bytes)")
        .await;
    browser.wait_for_text("tr.payloads pre", "ok").await;
    browser.wait_for_text("#timeline", " in)").await;
    browser.wait_for_text("#timeline", "completed").await;
    let timeline = browser
        .wait_for("#timeline")
        .await
        .text()
        .await
        .expect("text");
    let (cause, effect) = (timeline.find("succeeded"), timeline.find("completed"));
    assert!(
        cause.is_some() && cause < effect,
        "the step's success is shown before the saga's completion: {timeline}"
    );
    browser.screenshot(shots, "console-timeline").await;

    // The node goes away: the page says so.
    node.shutdown().await.expect("shutdown");
    browser.wait_for_text("#banner", "does not answer").await;
    assert!(
        browser
            .wait_for("main#main")
            .await
            .attr("class")
            .await
            .expect("class")
            .is_some_and(|class| class.contains("stale")),
        "what the page shows is marked stale"
    );
    browser.screenshot(shots, "console-node-gone").await;
    if let Some(client) = browser.client.as_ref() {
        let _ = client.clone().close().await;
    }
}

/// Two groups (DESIGN §11), the console on group g1's node: a saga stuck
/// in group g2 arrives live in g1's queue, labelled with its group, and
/// opens from there; with g2's node down the list says g2's transactions
/// are missing instead of leaving them out silently.
#[tokio::test]
async fn the_console_of_one_group_shows_every_groups_transactions_and_a_group_that_is_down() {
    use concord_coordinator::runtime::{RuntimeConfig, Sharding};
    use concord_coordinator::shard::{Group, ShardMap};

    let dir = tempfile::tempdir().expect("temp dir");
    let (addr1, addr2) = (
        support::processes::free_addr(),
        support::processes::free_addr(),
    );
    let group = |name: &str, addr: std::net::SocketAddr| Group {
        name: name.into(),
        nodes: vec![format!("http://{addr}")],
    };
    let map = ShardMap::split(16, vec![group("g1", addr1), group("g2", addr2)], 0).expect("a map");
    let start = |name: &str, addr, console| {
        let sharding = Sharding::new(map.clone(), name.into()).expect("a group");
        Node::start(NodeConfig {
            runtime: RuntimeConfig {
                sharding: Some(sharding),
                ..quick_config()
            },
            console,
            ..NodeConfig::new(addr, StoreLocation::DataDir(dir.path().join(name)))
        })
    };
    let loopback = std::net::SocketAddr::from(([127, 0, 0, 1], 0));
    let g1 = start("g1", addr1, Some(loopback)).await.expect("g1 starts");
    let g2 = start("g2", addr2, None).await.expect("g2 starts");
    let console = format!("http://{}", g1.console_addr().expect("a console"));
    let steps = StepParticipant::start(dir.path(), "steps").await;
    // A saga that went well in each group (keyless sagas stay in the group
    // of the node they reach).
    for node in [&g1, &g2] {
        let client = CoordinatorClient::connect(node.url()).expect("client");
        good_trip(format!("trip booked through {}", node.url()), &steps.url)
            .run(&client)
            .await
            .expect("saga");
    }

    // DESIGN §12: a node without an admin token has a read-only console,
    // and the console answers only requests addressed to it by a loopback
    // name (DNS rebinding: another site's name pointed at 127.0.0.1).
    let resolve = "/api/transactions/x/resolve";
    let body = r#"{"branch":"b","outcome":"committed","reason":"x","operator":"y"}"#;
    let refused = http_post(&console, resolve, "X-Concord-Console: 1\r\n", body).await;
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.contains("read-only"), "{refused}");
    let info = http_get_json(&console, "/api/info").await;
    assert_eq!(info["operator"], false, "{info}");
    let port = g1.console_addr().expect("a console").port();
    for (host, served) in [
        (format!("localhost:{port}"), true),
        (format!("127.0.0.1:{port}"), true),
        (format!("evil.example:{port}"), false),
        ("127.0.0.1.evil.example".to_string(), false),
    ] {
        let answer = http_to(&console, &host, "GET /api/info").await;
        assert_eq!(
            answer.starts_with("HTTP/1.1 200"),
            served,
            "{host}: {answer}"
        );
        if !served {
            assert!(answer.starts_with("HTTP/1.1 421"), "{host}: {answer}");
        }
    }

    let browser = Browser::start().await;
    browser.open(&console).await;
    browser.wait_for_text("#transactions", "g2").await;

    // While the page is open, a saga gets stuck in g2.
    let g2_client = CoordinatorClient::connect(g2.url()).expect("client");
    let stuck = stuck_trip("trip to Porto", &steps.url)
        .submit(&g2_client)
        .await
        .expect("saga")
        .transaction_id;
    let row = format!("#attention tr[data-id=\"{stuck}\"]");
    browser.wait_for(&row).await;
    browser.wait_for_text(&row, "g2").await;
    let shots = dir.path();
    browser.screenshot(shots, "console-groups-list").await;
    browser
        .wait_for(&format!("{row} a"))
        .await
        .click()
        .await
        .expect("open the saga");
    browser
        .wait_for_text("#parts tr[data-name=\"flight\"]", "compensating")
        .await;
    browser.wait_for_text(".facts", "g2 (shard ").await;
    browser
        .screenshot(shots, "console-groups-transaction")
        .await;

    // The chart counts g2's transactions too: a trip that ends there shows
    // in g1's console's tally.
    let ended = |stats: &serde_json::Value| -> u64 {
        stats["seconds"]
            .as_array()
            .expect("seconds")
            .iter()
            .map(|second| second["committed"].as_u64().unwrap_or(0))
            .sum()
    };
    let before = ended(&http_get_json(&console, "/api/stats").await);
    good_trip("a trip that ends in g2", &steps.url)
        .run(&g2_client)
        .await
        .expect("saga");
    eventually("g2's trip in g1's chart", || async {
        (ended(&http_get_json(&console, "/api/stats").await) > before).then_some(())
    })
    .await;

    // g2's node stops: g1's transactions are listed, and the page says g2's
    // are missing.
    g2.shutdown().await.expect("g2 stops");
    browser
        .page()
        .goto(&console)
        .await
        .expect("back to the list");
    browser
        .wait_for_text("#list-body", "Group g2 did not answer")
        .await;
    browser
        .wait_for_text("#attention-body", "Group g2 did not answer")
        .await;
    let text = browser
        .wait_for("#transactions")
        .await
        .text()
        .await
        .expect("the list's text");
    assert!(text.contains("g1"), "{text}");
    let g2_rows = browser
        .page()
        .find_all(Locator::Css(&format!(
            "#transactions tr[data-id=\"{stuck}\"]"
        )))
        .await
        .expect("find rows");
    assert!(g2_rows.is_empty(), "g2's saga listed with g2 down: {text}");
    browser.screenshot(shots, "console-groups-missing").await;

    if let Some(client) = browser.client.as_ref() {
        let _ = client.clone().close().await;
    }
    g1.shutdown().await.expect("shutdown");
}

/// `request_line` (`GET /path`) sent to the console at `base` with `Host:
/// host`, answered as text.
async fn http_to(base: &str, host: &str, request_line: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(base.trim_start_matches("http://"))
        .await
        .expect("connect to the console");
    let request = format!("{request_line} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}

/// A bare HTTP/1.1 POST, answered as text (status line, headers, body).
async fn http_post(base: &str, path: &str, headers: &str, body: &str) -> String {
    http("POST", base, path, headers, body).await
}

/// The JSON body of a GET of the console's API.
async fn http_get_json(base: &str, path: &str) -> serde_json::Value {
    let answer = http("GET", base, path, "", "").await;
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200"), "{answer}");
    serde_json::from_str(body).expect("JSON")
}

async fn http(method: &str, base: &str, path: &str, headers: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(host)
        .await
        .expect("connect to the console");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n\
         {headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.expect("read");
    answer
}
