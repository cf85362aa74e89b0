//! `paycron bench`: bills N due subscriptions against the simulator (run as a separate
//! process, so the figures are paycron's own) at a chosen latency and concurrency, and prints
//! `bench: charges=N seconds=S charges_per_sec=R cpu_s=C peak_rss_mb=M p50_ms=P p99_ms=Q` as its
//! last line (the percentiles are of each charge's time from its claim to its record).
//!
//! It works in its own database, `paycron_bench`, recreated each run, on the embedded cluster
//! (or on the server of `DATABASE_URL`). `cpu_s` and `peak_rss_mb` are this process's
//! (user + system time, VmHWM); Postgres and the simulator are separate processes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::Utc;
use secrecy::{ExposeSecret, SecretString};

use crate::app::App;
use crate::commands::{CommandError, Result};
use crate::config::Config;
use crate::store::embedded::{self, ClusterOptions, LocalCluster};
use crate::store::{self, StoreError};

const BENCH_DATABASE: &str = "paycron_bench";

/// Benchmark parameters.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct BenchArgs {
    /// Subscriptions seeded.
    #[arg(long, default_value_t = 100_000)]
    pub subscriptions: i64,
    /// Of them, how many are due now (default: all); the rest fall due over the next weeks, so
    /// the claim's cost can be measured against the rows that are not due.
    #[arg(long)]
    pub due: Option<i64>,
    /// Simulated Square latency per request, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// The simulated latency varies uniformly by up to this much either way, milliseconds.
    #[arg(long, default_value_t = 0)]
    pub jitter_ms: u64,
    /// paycron's own limit on requests to Square per second (`SQUARE_RATE_LIMIT_PER_SEC`); none when
    /// absent.
    #[arg(long)]
    pub rate_limit: Option<u32>,
    /// The simulated Square's rate limit: requests beyond this many a second are answered 429.
    #[arg(long)]
    pub sim_rate_limit: Option<u64>,
    /// Bill with this many `paycron run-once --task bill-due` processes side by side on the
    /// same database instead of in this process (replicas; `cpu_s` and `peak_rss_mb` are then
    /// their sum and their largest).
    #[arg(long)]
    pub replicas: Option<u32>,
    /// Charges in flight.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Subscriptions claimed per transaction.
    #[arg(long, default_value_t = 1000)]
    pub batch_size: u32,
}

struct Sim(Child);

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This process's CPU seconds (user + system).
fn cpu_seconds() -> f64 {
    crate::ops::process::cpu_seconds("self").unwrap_or(0.0)
}

/// Peak resident memory (VmHWM) of `pid`, MiB.
fn peak_rss_mb(pid: &str) -> f64 {
    crate::ops::process::memory_bytes(pid, "VmHWM").map_or(0.0, |b| b / (1024.0 * 1024.0))
}

/// What the simulator counted (zeros and unknowns when it cannot say: the figures are
/// informative, the run's result stands on the ledger).
struct SimStats {
    rate_limited: u64,
    payments: Option<u64>,
}

async fn sim_stats(base_url: &str) -> SimStats {
    let stats = async {
        reqwest::get(format!("{base_url}/_sim/stats"))
            .await?
            .json::<serde_json::Value>()
            .await
    };
    let v = stats.await.unwrap_or_default();
    SimStats {
        rate_limited: v["rate_limited"].as_u64().unwrap_or(0),
        payments: v["payments"].as_u64(),
    }
}

/// Runs `n` `paycron run-once --task bill-due` processes on the bench database and the
/// simulator, side by side, and waits for all. Returns their CPU seconds (summed) and the
/// largest peak RSS, sampled from /proc while they run.
async fn run_replicas(n: u32, db_url: &str, sim_url: &str, args: &BenchArgs) -> Result<(f64, f64)> {
    let exe = std::env::current_exe().map_err(|e| CommandError::Io(e.to_string()))?;
    let mut workers = Vec::new();
    for _ in 0..n {
        let child = tokio::process::Command::new(&exe)
            .args(["run-once", "--task", "bill-due"])
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("DATABASE_URL", db_url)
            .env("SQUARE_BASE_URL", sim_url)
            .env("SQUARE_ACCESS_TOKEN", "bench-token")
            .env(
                "SQUARE_RATE_LIMIT_PER_SEC",
                args.rate_limit.unwrap_or(1_000_000).to_string(),
            )
            .env("SQUARE_REQUEST_TIMEOUT_MS", "30000")
            .env("PAYCRON_CONCURRENCY", args.concurrency.to_string())
            .env("PAYCRON_BATCH_SIZE", args.batch_size.to_string())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| CommandError::Io(format!("cannot start a replica: {e}")))?;
        workers.push(child);
    }
    let mut usage: Vec<(f64, f64)> = vec![(0.0, 0.0); workers.len()];
    let mut running = workers.len();
    while running > 0 {
        running = 0;
        for (i, w) in workers.iter_mut().enumerate() {
            match w.try_wait() {
                Ok(None) => {
                    running += 1;
                    if let Some(pid) = w.id().map(|p| p.to_string())
                        && let Some(cpu) = crate::ops::process::cpu_seconds(&pid)
                    {
                        usage[i] = (cpu, peak_rss_mb(&pid));
                    }
                }
                Ok(Some(status)) if !status.success() => {
                    return Err(CommandError::Failed(format!(
                        "bench: a replica exited with {status}"
                    )));
                }
                Ok(Some(_)) => {}
                Err(e) => return Err(CommandError::Io(e.to_string())),
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((
        usage.iter().map(|u| u.0).sum(),
        usage.iter().map(|u| u.1).fold(0.0, f64::max),
    ))
}

/// Runs the benchmark.
///
/// # Errors
/// [`CommandError`].
///
/// Long on purpose: one benchmark script: seed, run, measure, print; the steps share the timers.
pub async fn run(config: Config, args: BenchArgs) -> Result<()> {
    if args.subscriptions <= 0 || args.concurrency == 0 || args.batch_size == 0 {
        return Err(CommandError::BadInput(
            "--subscriptions, --concurrency and --batch-size must be positive".into(),
        ));
    }
    let due = args.due.unwrap_or(args.subscriptions);
    if due <= 0 || due > args.subscriptions {
        return Err(CommandError::BadInput(format!(
            "--due: {due} is not between 1 and --subscriptions ({})",
            args.subscriptions
        )));
    }
    let url = match &config.database_url {
        Some(u) => {
            let mut parsed = reqwest::Url::parse(u.expose_secret())
                .map_err(|_| StoreError::BadUrl("unparseable".into()))?;
            parsed.set_path(&format!("/{BENCH_DATABASE}"));
            parsed.to_string()
        }
        None => {
            let home = config.home.clone();
            let cluster = tokio::task::spawn_blocking(
                move || -> std::result::Result<LocalCluster, StoreError> {
                    let c = LocalCluster::new(&home, ClusterOptions::default())?;
                    c.ensure_running()?;
                    Ok(c)
                },
            )
            .await
            .map_err(|e| CommandError::Failed(format!("start-up task failed: {e}")))??;
            cluster.url(BENCH_DATABASE)
        }
    };
    let opts = store::connect_options(&url)?;
    embedded::recreate_database(&opts, BENCH_DATABASE).await?;
    let pool = store::open_pool(opts, (args.concurrency as u32 + 8).min(200)).await?;

    let exe = std::env::current_exe().map_err(|e| CommandError::Io(e.to_string()))?;
    let mut child = Command::new(exe)
        .args([
            "simulator",
            "--port",
            "0",
            "--customers",
            "0",
            "--accept-unknown-cards",
            "--latency-ms",
        ])
        .arg(args.latency_ms.to_string())
        .args(["--jitter-ms", &args.jitter_ms.to_string()])
        .args([
            "--rate-limit",
            &args.sim_rate_limit.unwrap_or(0).to_string(),
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| CommandError::Io(format!("cannot start the simulator: {e}")))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| CommandError::Io("simulator has no stdout".into()))?;
    let sim = Sim(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| CommandError::Io(format!("simulator did not start: {e}")))?;
    let base_url = line.trim().to_owned();
    if !base_url.starts_with("http://") {
        return Err(CommandError::Failed(
            "the simulator did not print its URL".into(),
        ));
    }

    let now = Utc::now();
    let seed_started = Instant::now();
    crate::store::fixtures::bulk_seed(
        &pool,
        args.subscriptions,
        due,
        now - chrono::Duration::minutes(1),
    )
    .await?;
    eprintln!(
        "bench: seeded {} subscriptions ({due} due) in {:.1}s; billing at latency {} ms, concurrency {}",
        args.subscriptions,
        seed_started.elapsed().as_secs_f64(),
        args.latency_ms,
        args.concurrency
    );

    let mut cfg = config;
    cfg.square.base_url = Some(base_url.clone());
    cfg.square.access_token = Some(SecretString::from("bench-token".to_owned()));
    cfg.square.location_id = None;
    cfg.square.rate_limit_per_sec = args.rate_limit.unwrap_or(1_000_000);
    cfg.square.request_timeout = Duration::from_secs(30);
    cfg.billing.concurrency = args.concurrency;
    cfg.billing.batch_size = args.batch_size;
    let app = App::from_pool(cfg, pool);
    let progress = std::sync::Arc::new(crate::ops::progress::Progress::new(
        "bench",
        due as u64,
        app.config.progress_every,
    ));

    let cpu0 = cpu_seconds();
    let started = Instant::now();
    let (succeeded, cpu, rss) = match args.replicas {
        None => {
            let counter = progress.clone();
            let engine = std::sync::Arc::new(
                app.engine(app.square()?)
                    .await?
                    .with_progress(std::sync::Arc::new(move |n| counter.inc(n))),
            );
            let summary = engine.bill_due_on_workers(now).await?;
            if summary.unresolved > 0 {
                return Err(CommandError::Failed(format!(
                    "bench: {} charges left unresolved",
                    summary.unresolved
                )));
            }
            (summary.succeeded, cpu_seconds() - cpu0, peak_rss_mb("self"))
        }
        Some(n) => {
            let (cpu, rss) = run_replicas(n, &url, &base_url, &args).await?;
            let succeeded = crate::store::fixtures::succeeded_charges(&app.pool).await?;
            (succeeded, cpu, rss)
        }
    };
    progress.finish();
    let seconds = started.elapsed().as_secs_f64();
    let stats = sim_stats(&base_url).await;
    drop(sim);
    // Exactly once, by both counts: paycron's ledger and the payments the simulator took.
    if succeeded != due as u64 || stats.payments.is_some_and(|p| p != due as u64) {
        return Err(CommandError::Failed(format!(
            "bench: {succeeded} of {due} charges succeeded, the simulator took {} payments",
            stats.payments.map_or("?".to_owned(), |p| p.to_string())
        )));
    }
    let sim_429 = stats.rate_limited;
    let rate = succeeded as f64 / seconds;
    if let Some(limit) = args.rate_limit {
        eprintln!(
            "bench: {:.1} % of the configured rate ({limit}/s)",
            100.0 * rate / f64::from(limit)
        );
    }
    let (p50, p99) = crate::store::fixtures::claim_to_record_ms(&app.pool).await?;
    if args.latency_ms > 0 {
        let processes = f64::from(args.replicas.unwrap_or(1));
        let ideal = processes * args.concurrency as f64 * 1000.0 / args.latency_ms as f64;
        eprintln!(
            "bench: {:.0} % of concurrency/latency ({ideal:.0} charges/s)",
            100.0 * rate / ideal
        );
    }
    crate::out!(
        "bench: charges={succeeded} seconds={seconds:.2} charges_per_sec={rate:.0} cpu_s={cpu:.2} peak_rss_mb={rss:.1} p50_ms={p50:.0} p99_ms={p99:.0} sim_429={sim_429}"
    )?;
    Ok(())
}
