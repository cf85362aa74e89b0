//! Work commands: `sync-cards`, `run-once`, `ledger export`, `events tail`, `simulator`.

use std::net::SocketAddr;
use std::time::Instant;

use chrono::{DateTime, Utc};

use super::{CommandError, Format, Result};
use crate::app::App;
use crate::billing::{Summary, sync};
use crate::simulator::{Faults, SimConfig, Simulator};
use crate::store::{StoreError, events};

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

fn log_summary(task: &str, s: &Summary, started: Instant) {
    let revenue: Vec<String> = s.revenue.iter().map(|(c, v)| format!("{v} {c}")).collect();
    tracing::info!(
        task,
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
    sync::sync_cards(&app.pool, gateway.as_ref()).await?;
    Ok(())
}

/// `run-once`: all due work of `task` as of `now`, then exit (1 when some charge errored or is
/// left unresolved).
///
/// # Errors
/// [`CommandError`].
pub async fn run_once(
    app: &App,
    task: Task,
    now: Option<&str>,
    shutdown: crate::ops::shutdown::Shutdown,
) -> Result<()> {
    let now = parse_now(app, now)?;
    if task == Task::DeliverWebhooks {
        return deliver_webhooks(app).await;
    }
    let gateway = app.square()?;
    if task == Task::Reconcile {
        return reconcile(app, None, None, false, Format::Text).await;
    }
    if task == Task::SyncCards {
        let started = Instant::now();
        let t = sync::sync_cards(&app.pool, gateway.as_ref()).await?;
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
    let engine = app.engine(gateway).await?.with_cancel(cancel);
    tokio::select! {
        r = run_tasks(app, &engine, task, now) => r,
        () = shutdown.abort.cancelled() => Err(CommandError::Failed(
            "aborted by a second signal; leases let the next run finish what was in flight".into(),
        )),
    }
}

async fn run_tasks(
    app: &App,
    engine: &crate::billing::Engine,
    task: Task,
    now: chrono::DateTime<Utc>,
) -> Result<()> {
    let mut total = Summary::default();
    if matches!(task, Task::Recover | Task::All) {
        let started = Instant::now();
        let s = engine.recover(now).await?;
        log_summary("recover", &s, started);
        total = s;
    }
    if matches!(task, Task::BillDue | Task::All) {
        let started = Instant::now();
        let s = engine.bill_due(now).await?;
        log_summary("bill-due", &s, started);
        total.failed += s.failed;
        total.unresolved += s.unresolved;
        total.needs_review += s.needs_review;
        total.quarantined += s.quarantined;
    }
    if task == Task::All {
        // Webhook delivery has its own failures (recorded per delivery); it never fails billing.
        if let Err(e) = deliver_webhooks(app).await {
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

/// `ledger export --format jsonl`.
///
/// # Errors
/// [`CommandError`].
pub async fn ledger_export(app: &App, format: Format) -> Result<()> {
    if format != Format::Jsonl {
        return Err(CommandError::BadInput(
            "--format: ledger export supports jsonl".into(),
        ));
    }
    let mut out = std::io::stdout().lock();
    crate::ledger::export_jsonl(&app.pool, &mut out).await?;
    Ok(())
}

/// `events tail [--after ID] [--follow]`.
///
/// # Errors
/// [`CommandError`].
pub async fn events_tail(
    app: &App,
    after: i64,
    follow: bool,
    format: Format,
    shutdown: crate::ops::shutdown::Shutdown,
) -> Result<()> {
    let mut last = after;
    let mut listener = if follow {
        let mut l = sqlx::postgres::PgListener::connect_with(&app.pool)
            .await
            .map_err(StoreError::from)?;
        l.listen("paycron_events").await.map_err(StoreError::from)?;
        Some(l)
    } else {
        None
    };
    loop {
        let rows = events::after(&app.pool, last, 1000).await?;
        for f in &rows {
            let r = &f.event;
            match format {
                Format::Text => println!(
                    "{:>8}  {}  {:<28} {}  {}",
                    f.position,
                    r.created_at.to_rfc3339(),
                    r.kind,
                    r.subscription_id.map(|s| s.to_string()).unwrap_or_default(),
                    r.payload
                ),
                _ => println!(
                    "{}",
                    serde_json::to_string(f).map_err(|e| CommandError::Io(e.to_string()))?
                ),
            }
            last = f.position;
        }
        if rows.len() == 1000 {
            continue;
        }
        match listener.as_mut() {
            None => return Ok(()),
            Some(l) => {
                // A notification says an event committed; an event held back behind a
                // transaction still in progress gets its position later, so look again
                // every second as well.
                tokio::select! {
                    n = l.recv() => { n.map_err(StoreError::from)?; }
                    () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
                    () = shutdown.drain.cancelled() => return Ok(()),
                }
            }
        }
    }
}

/// `simulator --port P`: serves until Ctrl-C or SIGTERM.
///
/// # Errors
/// [`CommandError`].
pub async fn simulator(
    port: u16,
    config: SimConfig,
    shutdown: crate::ops::shutdown::Shutdown,
) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let sim = Simulator::start(config.clone(), addr).await.map_err(|e| {
        CommandError::BadInput(format!("--port {port}: cannot listen on {addr}: {e}"))
    })?;
    tracing::info!(url = %sim.base_url(), customers = config.customers, "Square simulator listening");
    println!("{}", sim.base_url());
    shutdown.drain.cancelled().await;
    sim.shutdown().await;
    Ok(())
}

/// Fault flags of `paycron simulator`, validated into [`Faults`].
///
/// # Errors
/// [`CommandError::BadInput`] naming the flag.
pub fn faults(
    latency_ms: u64,
    error_5xx_rate: f64,
    rate_429_rate: f64,
    retry_after_secs: Option<u64>,
    lose_response_rate: f64,
) -> Result<Faults> {
    for (flag, v) in [
        ("--error-5xx-rate", error_5xx_rate),
        ("--rate-429-rate", rate_429_rate),
        ("--lose-response-rate", lose_response_rate),
    ] {
        if !(0.0..=1.0).contains(&v) {
            return Err(CommandError::BadInput(format!(
                "{flag}: {v} is not between 0 and 1"
            )));
        }
    }
    Ok(Faults {
        latency_ms,
        error_5xx_rate,
        rate_429_rate,
        retry_after_secs,
        lose_response_rate,
        ..Faults::default()
    })
}

/// `run`: the daemon, with the schedules of `PAYCRON_SCHEDULES`.
///
/// # Errors
/// [`CommandError`]: a bad schedule file exits 2 naming file and line.
pub async fn daemon(
    config: crate::config::Config,
    shutdown: crate::ops::shutdown::Shutdown,
) -> Result<()> {
    let jobs = crate::scheduler::load(&config.schedules)
        .map_err(|e| CommandError::BadInput(format!("PAYCRON_SCHEDULES: {e}")))?;
    let drain = config.drain_timeout;
    let app = App::build(config).await?;
    let gateway = app.square()?;
    crate::scheduler::daemon::run(app, gateway, jobs, drain, shutdown).await?;
    Ok(())
}

/// `reconcile [--since] [--until] [--repair]`: Square's payments vs the ledger. Exit 0 when
/// everything matches, 1 on any difference (after repairs, what is left).
///
/// # Errors
/// [`CommandError`].
pub async fn reconcile(
    app: &App,
    since: Option<&str>,
    until: Option<&str>,
    repair: bool,
    format: Format,
) -> Result<()> {
    let parse = |flag: &str, v: Option<&str>, default: DateTime<Utc>| -> Result<DateTime<Utc>> {
        match v {
            None => Ok(default),
            Some(v) => DateTime::parse_from_rfc3339(v.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    CommandError::BadInput(format!("{flag}: {v:?} is not an RFC 3339 time: {e}"))
                }),
        }
    };
    let until = parse("--until", until, Utc::now())?;
    let since = parse("--since", since, until - chrono::Duration::days(30))?;
    if since >= until {
        return Err(CommandError::BadInput(
            "--since must be before --until".into(),
        ));
    }
    let gateway = app.square()?;
    let engine = if repair {
        Some(app.engine(gateway.clone()).await?)
    } else {
        None
    };
    let mut report = crate::billing::reconcile::reconcile(
        &app.pool,
        gateway.as_ref(),
        engine.as_ref(),
        since,
        until,
    )
    .await?;
    if report.repaired > 0 {
        let repaired = report.repaired;
        report =
            crate::billing::reconcile::reconcile(&app.pool, gateway.as_ref(), None, since, until)
                .await?;
        report.repaired = repaired;
    }
    super::print_rows(&report.findings, format, |rows| {
        super::table(
            &[
                "KIND",
                "CHARGE",
                "SQUARE PAYMENT",
                "SQUARE",
                "LEDGER",
                "DETAIL",
            ],
            rows.iter()
                .map(|f| {
                    vec![
                        f.kind.to_owned(),
                        f.charge_id.map(|c| c.to_string()).unwrap_or_default(),
                        f.provider_payment_id.clone().unwrap_or_default(),
                        f.square_amount_minor
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                        f.ledger_amount_minor
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                        f.detail.clone(),
                    ]
                })
                .collect(),
        )
    })?;
    tracing::info!(
        since = %since.to_rfc3339(),
        until = %until.to_rfc3339(),
        square_payments = report.square_payments,
        charges = report.charges,
        findings = report.findings.len(),
        repaired = report.repaired,
        "reconcile summary"
    );
    if report.findings.is_empty() {
        if format == Format::Text {
            println!(
                "reconciled: {} Square payments, {} charges, no differences",
                report.square_payments, report.charges
            );
        }
        Ok(())
    } else {
        Err(CommandError::Failed(format!(
            "{} difference(s) between Square and the ledger",
            report.findings.len()
        )))
    }
}

/// A secret from a file (`-`: standard input), without its trailing newline.
fn read_secret_file(flag: &str, path: &std::path::Path) -> Result<String> {
    let text = if path.as_os_str() == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(|e| CommandError::BadInput(format!("{flag} -: {e}")))?;
        s
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| CommandError::BadInput(format!("{flag} {}: {e}", path.display())))?
    };
    let secret = text.trim_end_matches(['\r', '\n']).to_owned();
    if secret.is_empty() {
        return Err(CommandError::BadInput(format!("{flag}: the file is empty")));
    }
    Ok(secret)
}

async fn deliver_webhooks(app: &App) -> Result<()> {
    let started = Instant::now();
    let http = crate::outbound::client(&app.config.webhook_delivery)
        .map_err(|e| CommandError::Failed(format!("webhook client: {e}")))?;
    let s =
        crate::outbound::deliver_due(&app.pool, &http, &app.config.webhook_delivery, Utc::now())
            .await?;
    tracing::info!(
        task = "deliver-webhooks",
        fanned_out = s.fanned_out,
        delivered = s.delivered,
        retrying = s.retrying,
        failed = s.failed,
        duration_ms = started.elapsed().as_millis() as u64,
        "run summary"
    );
    Ok(())
}

/// `webhooks add --url URL [--secret S]`: prints the endpoint id and its signing secret.
///
/// # Errors
/// [`CommandError`].
pub async fn webhooks_add(
    app: &App,
    url: &str,
    secret_file: Option<&std::path::Path>,
) -> Result<()> {
    let secret = match secret_file {
        Some(path) => {
            let s = read_secret_file("--secret-file", path)?;
            if s.len() < 16 {
                return Err(CommandError::BadInput(
                    "--secret-file: the secret needs at least 16 characters".into(),
                ));
            }
            s
        }
        None => format!("whsec_{}", uuid::Uuid::new_v4().simple()),
    };
    if let Some(why) = crate::outbound::refuse_destination(url, &app.config.webhook_delivery) {
        return Err(CommandError::BadInput(format!("--url {url:?}: {why}")));
    }
    let id = crate::store::outbound::add_endpoint(&app.pool, url, &secret).await?;
    println!("{id} {secret}");
    Ok(())
}

/// `webhooks list`.
///
/// # Errors
/// [`CommandError`].
pub async fn webhooks_list(app: &App, format: Format) -> Result<()> {
    let rows = crate::store::outbound::endpoints(&app.pool).await?;
    super::print_rows(&rows, format, |rows| {
        super::table(
            &["ENDPOINT", "URL", "ENABLED", "AFTER EVENT"],
            rows.iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.url.clone(),
                        r.enabled.to_string(),
                        r.last_position.to_string(),
                    ]
                })
                .collect(),
        )
    })
}

/// `webhooks deliveries`.
///
/// # Errors
/// [`CommandError`].
pub async fn webhooks_deliveries(app: &App, format: Format) -> Result<()> {
    let rows = crate::store::outbound::deliveries(&app.pool, 500).await?;
    super::print_rows(&rows, format, |rows| {
        super::table(
            &[
                "DELIVERY", "EVENT", "TYPE", "STATUS", "ATTEMPTS", "LAST", "NEXT",
            ],
            rows.iter()
                .map(|r| {
                    vec![
                        r.id.to_string(),
                        r.event_id.to_string(),
                        r.event_type.clone(),
                        r.status.clone(),
                        r.attempts.to_string(),
                        r.last_status
                            .map(|s| s.to_string())
                            .or_else(|| r.last_error.clone())
                            .unwrap_or_default(),
                        r.next_attempt_at.to_rfc3339(),
                    ]
                })
                .collect(),
        )
    })
}

/// `webhooks verify --secret S --signature HEADER --body-file F`: what a receiver checks.
///
/// # Errors
/// [`CommandError::Failed`] (exit 1) when the signature does not verify.
pub fn webhooks_verify(
    secret_file: &std::path::Path,
    header: &str,
    body_file: &std::path::Path,
) -> Result<()> {
    let secret = read_secret_file("--secret-file", secret_file)?;
    let body = std::fs::read(body_file)
        .map_err(|e| CommandError::BadInput(format!("{}: {e}", body_file.display())))?;
    crate::outbound::verify(
        &secret,
        header,
        &body,
        crate::outbound::DEFAULT_TOLERANCE,
        Utc::now(),
    )
    .map_err(|e| CommandError::Failed(e.to_string()))?;
    println!("valid");
    Ok(())
}
