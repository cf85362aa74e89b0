//! Work commands: `run` (the daemon), `run-once` and `sync-cards`.

use std::time::Instant;

use chrono::{DateTime, Utc};

use super::{CommandError, Result};
use crate::app::App;
use crate::billing::{Summary, sync};

/// The tasks `run-once --task` accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// Charge everything due.
    BillDue,
    /// Finish charges left pending by a dead or stuck worker.
    Recover,
    /// Pull customers and cards from Square.
    SyncCards,
    /// Square's payments of the last 30 days against the ledger.
    Reconcile,
    /// Send due outbound webhook deliveries.
    DeliverWebhooks,
    /// Expire unpaid enrollment links, announce late cards, look for lost sales and cards.
    Enrollments,
    /// recover, bill-due, then deliver-webhooks.
    All,
}

/// Parses `--now`, refusing a future instant against Square production.
///
/// # Errors
/// [`CommandError::BadInput`].
pub fn parse_now(app: &App, now: Option<&str>) -> Result<DateTime<Utc>> {
    let Some(v) = now else { return Ok(Utc::now()) };
    let t = DateTime::parse_from_rfc3339(v.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            CommandError::BadInput(format!("--now: {v:?} is not an RFC 3339 time: {e}"))
        })?;
    if app.config.square.is_production() && t > Utc::now() + chrono::Duration::minutes(1) {
        return Err(CommandError::BadInput(format!(
            "--now: {v} is in the future; a test clock is refused against Square production (SQUARE_ENVIRONMENT=production)"
        )));
    }
    Ok(t)
}

/// Clears a progress bar however the command ends.
struct ClearOnDrop(std::sync::Arc<crate::ops::progress::Progress>);

impl Drop for ClearOnDrop {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// Keeps a run-once task's outcome as the task's last result (`paycron status`), as the
/// daemon does; a failure to keep it is logged, never the command's failure.
async fn remember<T>(
    app: &App,
    task: &str,
    started_at: DateTime<Utc>,
    outcome: &Result<T>,
    summary: serde_json::Value,
) {
    let finished_at = Utc::now();
    let r = crate::store::tasks::TaskResult {
        task: task.to_owned(),
        job: format!("run-once {task}"),
        owner: uuid::Uuid::new_v4(),
        started_at,
        finished_at,
        ok: outcome.is_ok(),
        error: outcome.as_ref().err().map(ToString::to_string),
        summary,
        runs: 1,
        failures: i64::from(outcome.is_err()),
        last_ok_at: outcome.is_ok().then_some(finished_at),
    };
    if let Err(e) = crate::store::tasks::record_result(&app.pool, &r).await {
        tracing::warn!(task, error = %e, "cannot record the task's result for `paycron status`");
    }
}

fn summary_json(s: &Summary) -> serde_json::Value {
    serde_json::json!({
        "run_id": s.run_id, "attempted": s.attempted, "succeeded": s.succeeded, "declined": s.declined,
        "failed": s.failed, "unresolved": s.unresolved, "needs_review": s.needs_review,
        "quarantined": s.quarantined,
    })
}

fn log_summary(task: &str, s: &Summary, started: Instant) {
    let revenue: Vec<String> = s.revenue.iter().map(|(c, v)| format!("{v} {c}")).collect();
    tracing::info!(
        task,
        run_id = s.run_id.map(|r| r.to_string()).unwrap_or_default(),
        attempted = s.attempted,
        succeeded = s.succeeded,
        declined = s.declined,
        failed = s.failed,
        unresolved = s.unresolved,
        needs_review = s.needs_review,
        quarantined = s.quarantined,
        fenced = s.fenced,
        advanced = s.advanced_without_charge,
        revenue_minor = %revenue.join(", "),
        duration_ms = started.elapsed().as_millis() as u64,
        "run summary"
    );
}

/// `sync-cards`.
///
/// # Errors
/// [`CommandError`].
pub async fn sync_cards(app: &App) -> Result<()> {
    let gateway = app.square()?;
    let guard = sync_lock(app).await?;
    let progress = crate::ops::progress::Progress::new("cards", 0, app.config.progress_every);
    let result = sync::sync_cards_with(&app.pool, gateway.as_ref(), &|n| progress.inc(n)).await;
    progress.finish();
    release(guard).await;
    result?;
    Ok(())
}

/// The lock the daemon's sync-cards ticks take: one sync at a time across every process.
async fn sync_lock(app: &App) -> Result<crate::store::tasks::SingletonGuard> {
    crate::store::tasks::lock_task(&app.pool, "sync-cards")
        .await?
        .ok_or_else(|| {
            CommandError::Failed(
                "sync-cards is already running in another process (a daemon or another sync-cards); it resumes from where any stopped run left off, so wait for it to finish".into(),
            )
        })
}

async fn release(guard: crate::store::tasks::SingletonGuard) {
    if let Err(e) = guard.release().await {
        tracing::warn!(error = %e, "cannot release the sync-cards lock; it ends with the connection");
    }
}

/// `run-once` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct RunOnceArgs {
    /// Which task.
    #[arg(long, value_enum, default_value = "all")]
    pub task: Task,
    /// The clock to bill at (RFC 3339); refused in the future against Square production.
    #[arg(long)]
    pub now: Option<String>,
    /// Show what bill-due would charge now (at most 1,000), writing and sending nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format of --dry-run.
    #[arg(long, value_enum, default_value = "text")]
    pub format: super::Format,
}

/// `run-once`: all due work of `task` as of `now`, then exit (1 when some charge errored or is
/// left unresolved).
///
/// # Errors
/// [`CommandError`].
pub async fn run_once(
    app: &App,
    args: RunOnceArgs,
    shutdown: crate::ops::shutdown::Shutdown,
) -> Result<()> {
    let task = args.task;
    let now = parse_now(app, args.now.as_deref())?;
    if args.dry_run {
        return match task {
            Task::BillDue | Task::All => dry_run(app, now, args.format).await,
            Task::Recover => dry_run_recover(app, args.format).await,
            _ => Err(CommandError::BadInput(
                "--dry-run: bill-due and recover have a dry run (--task bill-due, recover or all)"
                    .into(),
            )),
        };
    }
    if task == Task::DeliverWebhooks {
        return super::webhooks::deliver_due(app).await;
    }
    let gateway = app.square()?;
    if task == Task::Reconcile {
        let at = Utc::now();
        let outcome = super::ledger::reconcile(app, super::ledger::ReconcileArgs::default()).await;
        remember(app, "reconcile", at, &outcome, serde_json::json!({})).await;
        return outcome;
    }
    if task == Task::Enrollments {
        let started = Instant::now();
        let (expired, card_missing, checked) = app
            .counter(gateway)
            .sweep()
            .await
            .map_err(|e| CommandError::Failed(e.to_string()))?;
        tracing::info!(
            task = "enrollments",
            expired,
            card_missing,
            checked,
            duration_ms = started.elapsed().as_millis() as u64,
            "run summary"
        );
        return Ok(());
    }
    if task == Task::SyncCards {
        let started = Instant::now();
        let guard = sync_lock(app).await?;
        let result = sync::sync_cards(&app.pool, gateway.as_ref()).await;
        release(guard).await;
        let t = result?;
        tracing::info!(
            task = "sync-cards",
            customers = t.customers,
            cards = t.cards,
            duration_ms = started.elapsed().as_millis() as u64,
            "run summary"
        );
        return Ok(());
    }
    // A drain (SIGTERM: a CronJob pod evicted) stops claiming and sending; what is in flight
    // finishes. An abort (a second signal) leaves at once: leases make that safe.
    let cancel = shutdown.drain.clone();
    let (due, _) = crate::store::subscriptions::due_stats(&app.pool, now).await?;
    let progress = std::sync::Arc::new(crate::ops::progress::Progress::new(
        "charges",
        u64::try_from(due).unwrap_or(0),
        app.config.progress_every,
    ));
    let counter = progress.clone();
    let engine = std::sync::Arc::new(
        app.engine(gateway)
            .await?
            .with_cancel(cancel)
            .with_progress(std::sync::Arc::new(move |n| counter.inc(n))),
    );
    let _clear = ClearOnDrop(progress);
    tokio::select! {
        r = run_tasks(app, &engine, task, now) => r,
        () = shutdown.abort.cancelled() => Err(CommandError::Failed(
            "aborted by a second signal; leases let the next run finish what was in flight".into(),
        )),
    }
}

async fn run_tasks(
    app: &App,
    engine: &std::sync::Arc<crate::billing::Engine>,
    task: Task,
    now: chrono::DateTime<Utc>,
) -> Result<()> {
    let mut total = Summary::default();
    if matches!(task, Task::Recover | Task::All) {
        let started = Instant::now();
        let at = Utc::now();
        let outcome = engine.recover(now).await.map_err(CommandError::from);
        let counts = outcome.as_ref().map(summary_json).unwrap_or_default();
        remember(app, "recover", at, &outcome, counts).await;
        let s = outcome?;
        log_summary("recover", &s, started);
        total = s;
    }
    if matches!(task, Task::BillDue | Task::All) {
        let started = Instant::now();
        let at = Utc::now();
        let outcome = engine
            .bill_due_on_workers(now)
            .await
            .map_err(CommandError::from);
        let counts = outcome.as_ref().map(summary_json).unwrap_or_default();
        remember(app, "bill-due", at, &outcome, counts).await;
        let s = outcome?;
        log_summary("bill-due", &s, started);
        total.failed += s.failed;
        total.unresolved += s.unresolved;
        total.needs_review += s.needs_review;
        total.quarantined += s.quarantined;
    }
    if task == Task::All {
        // Webhook delivery has its own failures (recorded per delivery); it never fails billing.
        if let Err(e) = super::webhooks::deliver_due(app).await {
            tracing::warn!(error = %e, "webhook delivery did not run");
        }
    }
    if total.has_errors() {
        return Err(CommandError::Failed(format!(
            "{} charge(s) failed, {} left pending for recovery, {} in review (`paycron charges review`), {} subscription(s) quarantined (`paycron subscription list`)",
            total.failed, total.unresolved, total.needs_review, total.quarantined
        )));
    }
    Ok(())
}

/// `run`: the daemon, with the schedules of `PAYCRON_SCHEDULES`.
///
/// # Errors
/// [`CommandError`]: a bad schedule file exits 2 naming file and line.
pub async fn daemon(
    config: crate::config::Config,
    shutdown: crate::ops::shutdown::Shutdown,
) -> Result<()> {
    tracing::info!(
        schedules = %crate::scheduler::source(config.schedules.as_deref()),
        "schedules in use"
    );
    let jobs = crate::scheduler::resolve(config.schedules.as_deref())
        .map_err(|e| CommandError::BadInput(format!("PAYCRON_SCHEDULES: {e}")))?;
    let drain = config.drain_timeout;
    let app = App::build(config).await?;
    let gateway = app.square()?;
    crate::scheduler::daemon::run(app, gateway, jobs, drain, shutdown).await?;
    Ok(())
}

/// `run-once --dry-run`: what bill-due would charge at `now`, and the total per currency.
async fn dry_run(app: &App, now: DateTime<Utc>, format: super::Format) -> Result<()> {
    let engine = app.engine(app.square()?).await?;
    let would = engine.dry_run(now, 1_000).await?;
    super::print_rows(&would, format, |rows| {
        let mut totals: std::collections::BTreeMap<&str, i64> = Default::default();
        for r in rows {
            if r.card_problem.is_none() {
                *totals.entry(r.currency.as_str()).or_default() += r.amount_minor;
            }
        }
        let mut text = super::table(
            &[
                "SUBSCRIPTION",
                "CUSTOMER",
                "CARD",
                "PERIOD",
                "ATTEMPT",
                "AMOUNT",
                "CARD CHECK",
            ],
            rows.iter()
                .map(|r| {
                    vec![
                        r.subscription_id.to_string(),
                        r.customer_id.to_string(),
                        r.card_id.to_string(),
                        format!("{} ({})", r.period, r.period_start.date_naive()),
                        r.attempt.to_string(),
                        format!("{} {}", r.amount_minor, r.currency),
                        r.card_problem.clone().unwrap_or_else(|| "ok".into()),
                    ]
                })
                .collect(),
        );
        let sum: Vec<String> = totals.iter().map(|(c, v)| format!("{v} {c}")).collect();
        text.push_str(&format!(
            "dry run: {} charge(s) would be sent{}; nothing was written or sent\n",
            rows.iter().filter(|r| r.card_problem.is_none()).count(),
            if sum.is_empty() {
                String::new()
            } else {
                format!(", {} in minor units", sum.join(", "))
            }
        ));
        text
    })
}

/// `run-once --task recover --dry-run`: the pending charges recovery would re-drive.
async fn dry_run_recover(app: &App, format: super::Format) -> Result<()> {
    let engine = app.engine(app.square()?).await?;
    let would = engine.dry_run_recover(1_000).await?;
    super::print_rows(&would, format, |rows| {
        let mut text = super::table(
            &[
                "CHARGE",
                "SUBSCRIPTION",
                "CUSTOMER",
                "PERIOD",
                "ATTEMPT",
                "AMOUNT",
                "SENDS",
                "WOULD",
            ],
            rows.iter()
                .map(|r| {
                    vec![
                        r.charge_id.to_string(),
                        r.subscription_id.to_string(),
                        r.customer_id.to_string(),
                        r.period.to_string(),
                        r.attempt.to_string(),
                        format!("{} {}", r.amount_minor, r.currency),
                        r.sends.to_string(),
                        r.action.to_owned(),
                    ]
                })
                .collect(),
        );
        text.push_str(&format!(
            "dry run: {} pending charge(s) would be recovered; nothing was taken or sent\n",
            rows.len()
        ));
        text
    })
}
