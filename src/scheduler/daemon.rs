//! `paycron run`: the long-lived worker.
//!
//! tokio-cron-scheduler ticks the jobs of the schedule files on UTC cron expressions. A tick
//! never overlaps its job's previous run (it is skipped and counted); singleton tasks take a
//! Postgres advisory lock and claim the tick in `paycron.task_runs`, so across any number of
//! replicas each runs once per tick; bill-due and recover run on every replica, safely, because
//! claims use `SKIP LOCKED` and leases.
//!
//! Shutdown: the first SIGTERM or SIGINT turns readiness false, stops the ticks and cancels the
//! engines — no new claims, no new sends, charges never sent are withdrawn — then waits for
//! in-flight charges to be recorded, up to the drain timeout. A second signal exits at once;
//! leases and the liveness lock make that safe.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::FutureExt;
use std::time::{Duration, Instant};

use chrono::{DurationRound, Utc};
use tokio_cron_scheduler::{Job, JobScheduler};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use super::{JobSpec, TaskKind};
use crate::app::App;
use crate::billing::{Engine, sync};
use crate::gateway::PaymentGateway;
use crate::ops::metrics as m;
use crate::ops::server::{self, OpsState};
use crate::store::{subscriptions, tasks};

/// Why the daemon could not run.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The ops server's address is taken or invalid.
    #[error("PAYCRON_OPS_ADDR {addr}: cannot listen: {reason}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        reason: String,
    },
    /// The scheduler failed.
    #[error("scheduler: {0}")]
    Scheduler(String),
    /// The engine could not start.
    #[error(transparent)]
    Billing(#[from] crate::billing::BillingError),
    /// A second signal during the drain: left at once.
    #[error("aborted during the drain; leases let another worker finish what was in flight")]
    Aborted,
    /// The drain timeout passed with work still in flight.
    #[error(
        "drain timeout of {0:?} passed with work in flight; leases let another worker finish it"
    )]
    DrainTimeout(Duration),
}

struct Ctx {
    app: App,
    // bill-due's progress, read by /healthz.
    progress: Option<Arc<server::Progress>>,
    engine: Engine,
    gateway: Arc<dyn PaymentGateway>,
    owner: Uuid,
    cancel: CancellationToken,
    tracker: TaskTracker,
    running: HashMap<String, AtomicBool>,
    http: reqwest::Client,
}

impl Ctx {
    fn tick(self: &Arc<Self>, job: &JobSpec) {
        if self.cancel.is_cancelled() {
            return;
        }
        let Some(flag) = self.running.get(&job.name) else {
            return;
        };
        if flag.swap(true, Ordering::SeqCst) {
            tracing::info!(job = %job.name, task = %job.task, "previous run still going; tick skipped");
            metrics::counter!(m::TASK_RUNS, "task" => job.task.as_str(), "result" => "skipped")
                .increment(1);
            return;
        }
        let ctx = self.clone();
        let job = job.clone();
        let tick = Utc::now()
            .duration_trunc(chrono::Duration::seconds(1))
            .unwrap_or_else(|_| Utc::now());
        self.tracker.spawn(async move {
            // A panic inside a task is caught here: logged with the task's name, counted, and
            // the task runs again at its next tick (the flag is cleared whatever happened).
            let ran = std::panic::AssertUnwindSafe(ctx.run_task(&job, tick))
                .catch_unwind()
                .await;
            if let Err(panic) = ran {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "non-string panic".into());
                tracing::error!(job = %job.name, task = %job.task, panic = %what, "task panicked; it runs again at its next tick");
                metrics::counter!(m::TASK_RUNS, "task" => job.task.as_str(), "result" => "panic")
                    .increment(1);
            }
            if let Some(flag) = ctx.running.get(&job.name) {
                flag.store(false, Ordering::SeqCst);
            }
        });
    }

    /// Long on purpose: one tick of one task (singleton lock, run, record, metrics), which share the guard and the timer.
    async fn run_task(&self, job: &JobSpec, tick: chrono::DateTime<Utc>) {
        let started = Instant::now();
        let task = job.task.as_str();
        let guard = if job.task.singleton() {
            match tasks::claim_singleton(&self.app.pool, task, tick, self.owner).await {
                Ok(Some(g)) => Some(g),
                Ok(None) => {
                    tracing::debug!(job = %job.name, task, "another replica runs this tick; skipped");
                    metrics::counter!(m::TASK_RUNS, "task" => task, "result" => "skipped")
                        .increment(1);
                    return;
                }
                Err(e) => {
                    tracing::error!(job = %job.name, task, error = %e, "cannot claim singleton task");
                    metrics::counter!(m::TASK_RUNS, "task" => task, "result" => "error")
                        .increment(1);
                    return;
                }
            }
        } else {
            None
        };
        let now = Utc::now();
        let ms = || started.elapsed().as_millis() as u64;
        // The run's counts, as logged: kept as the task's last result for `paycron status`.
        let mut summary = serde_json::Value::Null;
        let name = job.name.as_str();
        // One line per run with its counts as fields; a run that found nothing to do is DEBUG,
        // so an idle daemon does not write a line per tick.
        macro_rules! ran {
            ($idle:expr, $($k:ident = $v:expr),* $(,)?) => {
                summary = serde_json::json!({ $(stringify!($k): $v),* });
                if $idle {
                    tracing::debug!(job = name, task, $($k = $v),*, duration_ms = ms(), "task run")
                } else {
                    tracing::info!(job = name, task, $($k = $v),*, duration_ms = ms(), "task run")
                }
            };
        }
        let result: Result<(), String> = match job.task {
            TaskKind::BillDue => self
                .engine
                .bill_due(now)
                .await
                .map(|s| {
                    ran!(
                        s.attempted == 0 && s.advanced_without_charge == 0 && s.withdrawn == 0,
                        run_id = s.run_id.map(|r| r.to_string()).unwrap_or_default(),
                        attempted = s.attempted,
                        succeeded = s.succeeded,
                        declined = s.declined,
                        failed = s.failed,
                        unresolved = s.unresolved,
                        needs_review = s.needs_review,
                        quarantined = s.quarantined,
                        withdrawn = s.withdrawn,
                        advanced = s.advanced_without_charge
                    );
                })
                .map_err(|e| e.to_string()),
            TaskKind::Recover => self
                .engine
                .recover(now)
                .await
                .map(|s| {
                    ran!(
                        s.attempted == 0,
                        run_id = s.run_id.map(|r| r.to_string()).unwrap_or_default(),
                        attempted = s.attempted,
                        succeeded = s.succeeded,
                        declined = s.declined,
                        unresolved = s.unresolved
                    );
                })
                .map_err(|e| e.to_string()),
            TaskKind::DeliverWebhooks => crate::outbound::deliver_due(
                &self.app.pool,
                &self.http,
                &self.app.config.webhook_delivery,
                now,
            )
            .await
            .map(|s| {
                ran!(
                    s.fanned_out == 0 && s.delivered == 0 && s.retrying == 0 && s.failed == 0,
                    fanned_out = s.fanned_out,
                    delivered = s.delivered,
                    retrying = s.retrying,
                    failed = s.failed
                );
            })
            .map_err(|e| e.to_string()),
            TaskKind::Enrollments => self
                .app
                .counter(self.gateway.clone())
                .sweep()
                .await
                .map(|(expired, card_missing, checked)| {
                    ran!(
                        expired == 0 && card_missing == 0 && checked == 0,
                        expired = expired,
                        card_missing = card_missing,
                        checked = checked
                    );
                })
                .map_err(|e| e.to_string()),
            TaskKind::Reconcile => crate::billing::reconcile::reconcile(
                &self.app.pool,
                self.gateway.as_ref(),
                None,
                now - chrono::Duration::days(3),
                now,
            )
            .await
            .map_err(|e| e.to_string())
            .and_then(|r| {
                ran!(
                    false,
                    square_payments = r.square_payments,
                    square_refunds = r.square_refunds,
                    charges = r.charges,
                    findings = r.findings.len()
                );
                if r.findings.is_empty() {
                    Ok(())
                } else {
                    Err(format!(
                        "{} difference(s) between Square and the ledger",
                        r.findings.len()
                    ))
                }
            }),
            TaskKind::SyncCards => sync::sync_cards(&self.app.pool, self.gateway.as_ref())
                .await
                .map(|t| {
                    ran!(
                        false,
                        customers = t.customers,
                        cards = t.cards,
                        cards_changed = t.cards_changed
                    );
                })
                .map_err(|e| e.to_string()),
        };
        if let Some(g) = guard
            && let Err(e) = g.release().await
        {
            tracing::warn!(task, error = %e, "cannot release singleton lock; it ends with the connection");
        }
        if job.task == TaskKind::BillDue
            && let Ok((due, oldest)) = subscriptions::due_stats(&self.app.pool, Utc::now()).await
        {
            metrics::gauge!(m::DUE).set(due as f64);
            let age = oldest
                .map(|t| (Utc::now() - t).num_seconds().max(0) as f64)
                .unwrap_or(0.0);
            metrics::gauge!(m::OLDEST_DUE).set(age);
        }
        let seconds = started.elapsed().as_secs_f64();
        metrics::histogram!(m::TASK_SECONDS, "task" => task).record(seconds);
        let finished_at = Utc::now();
        let record = tasks::TaskResult {
            task: task.to_owned(),
            job: job.name.clone(),
            owner: self.owner,
            started_at: now,
            finished_at,
            ok: result.is_ok(),
            error: result.as_ref().err().cloned(),
            summary: if summary.is_null() {
                serde_json::json!({})
            } else {
                summary
            },
            runs: 1,
            failures: i64::from(result.is_err()),
            last_ok_at: result.is_ok().then_some(finished_at),
        };
        if let Err(e) = tasks::record_result(&self.app.pool, &record).await {
            tracing::warn!(task, error = %e, "cannot record the task's result for `paycron status`");
        }
        match result {
            Ok(()) => {
                if job.task == TaskKind::BillDue
                    && let Some(p) = &self.progress
                {
                    p.completed();
                }
                metrics::counter!(m::TASK_RUNS, "task" => task, "result" => "ok").increment(1);
                metrics::gauge!(m::TASK_LAST_SUCCESS, "task" => task)
                    .set(Utc::now().timestamp() as f64);
            }
            Err(error) => {
                metrics::counter!(m::TASK_RUNS, "task" => task, "result" => "error").increment(1);
                tracing::error!(job = %job.name, task, %error, duration_ms = (seconds * 1000.0) as u64, "task run failed");
            }
        }
    }
}

/// Enrollment at the counter, when `PAYCRON_PUBLIC_URL` says where its pages are reached.
pub fn counter(app: &App, gateway: &Arc<dyn PaymentGateway>) -> Option<crate::enroll::Counter> {
    app.config
        .enrollment
        .public_url
        .as_ref()
        .map(|_| app.counter(gateway.clone()))
}

/// Runs the daemon until `shutdown.drain` is cancelled, then drains (until
/// `shutdown.abort`, or the drain timeout).
///
/// # Errors
/// [`DaemonError`].
///
/// Long on purpose: the daemon's life in order (start, tick, drain, stop); each step is a few lines and they share the tracker and the tokens.
pub async fn run(
    app: App,
    gateway: Arc<dyn PaymentGateway>,
    jobs: Vec<JobSpec>,
    drain: Duration,
    shutdown: crate::ops::shutdown::Shutdown,
) -> Result<(), DaemonError> {
    let handle = m::install();
    let draining = Arc::new(AtomicBool::new(false));
    let stop_server = CancellationToken::new();
    let addr = app.config.ops_addr;
    let progress = jobs
        .iter()
        .filter(|j| j.enabled && j.task == TaskKind::BillDue)
        .filter_map(|j| crate::scheduler::interval(&j.cron))
        .min()
        .map(|every| {
            Arc::new(server::Progress::new(
                every,
                app.config.health_stale_intervals,
            ))
        });
    let server = server::serve_split(
        addr,
        app.config.webhook_addr,
        OpsState {
            pool: app.pool.clone(),
            metrics: handle,
            draining: draining.clone(),
            webhooks: crate::ops::square_webhooks::WebhookState {
                pool: app.pool.clone(),
                key: app.config.square.webhook_signature_key.clone(),
                url: app.config.square.webhook_notification_url.clone(),
                dispute_lost_cancels: app.config.billing.dispute_lost_cancels,
            },
            webhook_path: app.config.webhook_path.clone(),
            ready: Arc::new(AtomicBool::new(false)),
            progress: progress.clone(),
            enroll: counter(&app, &gateway),
        },
        stop_server.clone(),
    )
    .await
    .map_err(|e| DaemonError::Bind {
        addr: match app.config.webhook_addr {
            Some(w) => format!("{addr} or PAYCRON_WEBHOOK_ADDR {w}"),
            None => addr.to_string(),
        },
        reason: e.to_string(),
    })?;

    let cancel = CancellationToken::new();
    let app_webhook_cfg = app.config.webhook_delivery.clone();
    let engine = app
        .engine(gateway.clone())
        .await?
        .with_cancel(cancel.clone());
    let owner = engine.owner();
    let ctx = Arc::new(Ctx {
        running: jobs
            .iter()
            .map(|j| (j.name.clone(), AtomicBool::new(false)))
            .collect(),
        app,
        progress,
        engine,
        gateway,
        owner,
        cancel: cancel.clone(),
        tracker: TaskTracker::new(),
        http: crate::outbound::client(&app_webhook_cfg)
            .map_err(|e| DaemonError::Scheduler(format!("webhook client: {e}")))?,
    });
    let mut sched = JobScheduler::new()
        .await
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    for job in jobs.iter().filter(|j| j.enabled) {
        let ctx2 = ctx.clone();
        let spec = job.clone();
        let cron_job = Job::new_async(job.cron.as_str(), move |_id, _lock| {
            ctx2.tick(&spec);
            Box::pin(async {})
        })
        .map_err(|e| DaemonError::Scheduler(format!("{}: {e}", job.origin)))?;
        sched
            .add(cron_job)
            .await
            .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    }
    sched
        .start()
        .await
        .map_err(|e| DaemonError::Scheduler(e.to_string()))?;
    tracing::info!(
        ops_addr = %addr,
        owner = %owner,
        jobs = %jobs.iter().filter(|j| j.enabled).map(|j| format!("{}({})", j.name, j.cron)).collect::<Vec<_>>().join(", "),
        "paycron daemon started"
    );

    shutdown.drain.cancelled().await;
    tracing::info!(
        drain_timeout_s = drain.as_secs(),
        "shutting down: readiness off, no new claims, draining in-flight charges"
    );
    draining.store(true, Ordering::SeqCst);
    cancel.cancel();
    let _ = sched.shutdown().await;
    ctx.tracker.close();
    let drained = tokio::select! {
        _ = ctx.tracker.wait() => true,
        _ = tokio::time::sleep(drain) => false,
        () = shutdown.abort.cancelled() => {
            tracing::warn!("aborted: leaving at once; leases let another worker finish");
            stop_server.cancel();
            return Err(DaemonError::Aborted);
        }
    };
    stop_server.cancel();
    let _ = server.await;
    if drained {
        tracing::info!("drained; bye");
        Ok(())
    } else {
        Err(DaemonError::DrainTimeout(drain))
    }
}
