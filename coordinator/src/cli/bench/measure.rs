//! How the bench measures: clients driven for a time or a count, their
//! latencies merged; the disk's fsync latency; this process's peak memory.

use super::*;

/// Latencies in microseconds, merged from every client, and when each
/// transaction finished.
pub(super) struct Stats {
    pub(super) micros: Vec<u64>,
    /// Milliseconds from the start at which each transaction finished, in
    /// no particular order.
    pub(super) finished_ms: Vec<u32>,
    pub(super) errors: u64,
    pub(super) elapsed: Duration,
}

impl Stats {
    pub(super) fn percentile_ms(&self, p: f64) -> f64 {
        if self.micros.is_empty() {
            return 0.0;
        }
        let at = ((self.micros.len() as f64 - 1.0) * p).round() as usize;
        self.micros[at.min(self.micros.len() - 1)] as f64 / 1000.0
    }

    pub(super) fn throughput(&self) -> f64 {
        self.micros.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Transactions finished in each whole second of the run.
    pub(super) fn per_second(&self) -> Vec<u64> {
        let seconds = usize::try_from(self.elapsed.as_secs()).unwrap_or(0).max(1);
        let mut counts = vec![0u64; seconds];
        for at in &self.finished_ms {
            if let Some(count) = counts.get_mut(*at as usize / 1000) {
                *count += 1;
            }
        }
        counts
    }
}

/// Runs `op` from `clients` tasks until the duration or count is reached.
pub(super) async fn drive<F, Fut>(
    clients: u64,
    duration: Duration,
    limit: Option<u64>,
    progress: bool,
    op: F,
) -> Stats
where
    F: Fn(u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Status>> + Send,
{
    let op = Arc::new(op);
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let (op, done, stop) = (Arc::clone(&op), Arc::clone(&done), Arc::clone(&stop));
        tasks.push(tokio::spawn(async move {
            let mut micros = Vec::new();
            let mut finished_ms = Vec::new();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) && started.elapsed() < duration {
                if let Some(limit) = limit
                    && done.fetch_add(1, Ordering::Relaxed) >= limit
                {
                    break;
                }
                let at = Instant::now();
                match op(client).await {
                    Ok(()) => {
                        micros.push(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX));
                        finished_ms
                            .push(u32::try_from(started.elapsed().as_millis()).unwrap_or(u32::MAX));
                        if limit.is_none() {
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => errors += 1,
                }
            }
            (micros, finished_ms, errors)
        }));
    }
    let reporter = progress.then(|| {
        let (done, stop) = (Arc::clone(&done), Arc::clone(&stop));
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprintln!(
                    "  {:>5.1}s  {now:>9} transactions  {:>8}/s",
                    started.elapsed().as_secs_f64(),
                    now - last
                );
                last = now;
            }
        })
    });
    let mut stats = Stats {
        micros: Vec::new(),
        finished_ms: Vec::new(),
        errors: 0,
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        if let Ok((micros, finished_ms, errors)) = task.await {
            stats.micros.extend(micros);
            stats.finished_ms.extend(finished_ms);
            stats.errors += errors;
        }
    }
    stats.elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    if let Some(reporter) = reporter {
        reporter.abort();
    }
    stats.micros.sort_unstable();
    stats
}

/// The median fsync latency of the disk holding `dir`, in microseconds.
pub(super) fn fsync_p50_us(dir: &std::path::Path) -> anyhow::Result<u64> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let mut samples = Vec::with_capacity(100);
    for _ in 0..100 {
        file.write_all(&[0u8; 512])?;
        let at = Instant::now();
        file.sync_all()?;
        samples.push(u64::try_from(at.elapsed().as_micros()).unwrap_or(u64::MAX));
    }
    std::fs::remove_file(&path)?;
    samples.sort_unstable();
    Ok(samples[samples.len() / 2])
}

/// Peak resident memory of this process, from /proc (0 where unknown).
pub(super) fn peak_rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|line| line.starts_with("VmHWM:"))
                .and_then(|line| line.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}
