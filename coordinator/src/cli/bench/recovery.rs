//! `concord bench --recovery N`: how fast a coordinator serves, and
//! finishes, a log left with N transactions decided and none ended.

use super::*;

/// `--recovery N`: N transactions left COMMITTING by a "crash", then a
/// coordinator started on them (issue 6: serving within 1 s, all finished
/// within 30 s for N = 100,000).
pub(super) async fn recovery(args: &BenchArgs, count: u64) -> anyhow::Result<()> {
    let stop = CancellationToken::new();
    let dir = tempfile::tempdir().context("creating a temp dir")?;
    let mut participant_urls = args.participant_urls.clone();
    let mut servers = Vec::new();
    if participant_urls.is_empty() {
        for _ in 0..args.participants {
            let (url, task) = start_no_op(&stop, NoOp::default()).await?;
            participant_urls.push(url);
            servers.push(task);
        }
    }
    let location = match args.database_urls.first() {
        Some(url) => StoreLocation::Url(url.clone()),
        None => StoreLocation::DataDir(dir.path().join("coordinator")),
    };
    // The "crash": a log with every transaction decided and none ended.
    let written = Instant::now();
    {
        let store: Box<dyn crate::store::Store> = match &location {
            StoreLocation::DataDir(path) => {
                Box::new(crate::store::sqlite::SqliteStore::open_dir(path).await?)
            }
            StoreLocation::Url(url) if url.starts_with("sqlite:") => {
                Box::new(crate::store::sqlite::SqliteStore::open_url(url).await?)
            }
            StoreLocation::Url(url) => {
                Box::new(crate::store::postgres::PostgresStore::open_url(url).await?)
            }
        };
        let mut left = count;
        while left > 0 {
            let chunk = left.min(2_000);
            let mut records = Vec::new();
            for _ in 0..chunk {
                let id = TxnId::mint();
                records.push(Record::Begun {
                    id,
                    created_at_ms: now_ms(),
                    deadline_ms: now_ms() + 3_600_000,
                    idempotency_key: None,
                    request_digest: None,
                    description: None,
                });
                for (idx, url) in participant_urls.iter().enumerate() {
                    records.push(Record::Enlisted {
                        id,
                        idx: u32::try_from(idx).unwrap_or(u32::MAX),
                        name: format!("b{idx}"),
                        participant: url.clone(),
                        payload: Vec::new(),
                    });
                }
                records.push(Record::Decided {
                    id,
                    at_ms: now_ms(),
                });
            }
            store.append(&records).await?;
            left -= chunk;
        }
        // On a shared store the writer is a node of its own: leaving hands
        // what it wrote to the coordinator started next, at once.
        if let Some(cluster) = store.cluster() {
            cluster.leave().await?;
        }
    }
    if !args.json {
        eprintln!(
            "wrote {count} unfinished transactions in {:.1} s; starting the coordinator",
            written.elapsed().as_secs_f64()
        );
    }
    let started = Instant::now();
    let node = Node::start(NodeConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        store: location,
        runtime: RuntimeConfig::default(),
        limits: Limits::default(),
        node_name: None,
        lease: crate::node::DEFAULT_LEASE,
        access: Default::default(),
        console: None,
    })
    .await
    .context("starting the coordinator")?;
    let serving = started.elapsed();
    // Answering a request proves it serves while the backlog drains.
    let mut client = CoordinatorClient::new(channel(&node.url())?);
    let probe = Instant::now();
    client
        .list_transactions(pb::ListTransactionsRequest {
            page_size: 1,
            ..Default::default()
        })
        .await?;
    let first_answer = serving + probe.elapsed();
    // Finished when the log holds no unfinished transaction (the backlog is
    // loaded in the background, so memory alone cannot tell).
    loop {
        let unfinished = client
            .list_transactions(pb::ListTransactionsRequest {
                page_size: 1,
                states: vec![
                    pb::TransactionState::Active.into(),
                    pb::TransactionState::Preparing.into(),
                    pb::TransactionState::Committing.into(),
                    pb::TransactionState::Aborting.into(),
                ],
                ..Default::default()
            })
            .await?
            .into_inner()
            .transactions;
        if unfinished.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let done = started.elapsed();
    node.shutdown().await?;
    stop.cancel();
    for server in servers {
        let _ = server.await;
    }
    if args.json {
        println!(
            "{{\"workload\":\"recovery\",\"participants\":{},\"transactions\":{count},\"serving_after_ms\":{:.1},\"first_answer_after_ms\":{:.1},\"all_finished_after_ms\":{:.1},\"peak_rss_bytes\":{}}}",
            participant_urls.len(),
            serving.as_secs_f64() * 1e3,
            first_answer.as_secs_f64() * 1e3,
            done.as_secs_f64() * 1e3,
            peak_rss_bytes(),
        );
    } else {
        println!(
            "recovery of {count} transactions: serving after {:.0} ms, first answer after {:.0} ms, all finished after {:.1} s; peak RSS {:.1} MiB",
            serving.as_secs_f64() * 1e3,
            first_answer.as_secs_f64() * 1e3,
            done.as_secs_f64(),
            peak_rss_bytes() as f64 / (1024.0 * 1024.0)
        );
    }
    Ok(())
}
