//! `paycron demo`: the whole system on one machine with no configuration — the embedded
//! Postgres cluster, the built-in Square simulator seeded with a realistic mix of cards
//! (approvals, soft declines that dunning recovers, soft declines that never recover, hard
//! declines with and without a spare card), and months of billing stepped day by day with the
//! test clock. It prints a monthly summary and proves invariant 3 against the simulator's
//! own record of payments.
//!
//! The demo works in its own database, `paycron_demo`, recreated on every run, so it runs again
//! cleanly in the same directory and never touches the default `paycron` database.

use std::net::SocketAddr;
use std::time::Instant;

use chrono::{DateTime, Duration, Utc};
use secrecy::SecretString;

use crate::app::App;
use crate::billing::{Engine, Summary, sync};
use crate::commands::{CommandError, Result, table};
use crate::config::Config;
use crate::domain::money::format_minor;
use crate::domain::{CardId, Currency, CustomerId, Interval, Money, SubscriptionId};
use crate::simulator::{SimConfig, Simulator};
use crate::store::embedded::{self, ClusterOptions, LocalCluster};
use crate::store::subscriptions::{self, Action, NewSubscription};
use crate::store::{self, StoreError, ledger};

const DEMO_DATABASE: &str = "paycron_demo";
const ZONES: [&str; 4] = ["America/New_York", "Europe/Paris", "UTC", "Asia/Tokyo"];
const PRICES: [i64; 3] = [900, 1900, 4900];

/// `paycron demo` flags.
#[derive(Clone, Copy, Debug, clap::Args)]
pub struct DemoArgs {
    /// Customers the simulator seeds.
    #[arg(long, default_value_t = 300)]
    pub customers: usize,
    /// Months of billing to step through.
    #[arg(long, default_value_t = 6)]
    pub months: u32,
}

/// Runs the demo.
///
/// # Errors
/// [`CommandError`] when the embedded cluster or the simulator cannot start.
pub async fn run(config: Config, args: DemoArgs) -> Result<()> {
    let DemoArgs { customers, months } = args;
    if customers == 0 || customers > 100_000 {
        return Err(CommandError::BadInput(format!(
            "--customers: {customers} is not between 1 and 100000"
        )));
    }
    if months == 0 || months > 120 {
        return Err(CommandError::BadInput(format!(
            "--months: {months} is not between 1 and 120"
        )));
    }
    let wall = Instant::now();
    let (cluster, sim, app) = start(config, customers).await?;
    let gateway = app.square()?;
    crate::out!(
        "paycron demo: {customers} customers, {months} months of billing, embedded Postgres ({}), simulated Square at {}",
        cluster.data_dir().display(),
        sim.base_url()
    )?;
    let synced = sync::sync_cards(&app.pool, gateway.as_ref()).await?;
    crate::out!(
        "synced {} customers and {} cards from Square",
        synced.customers,
        synced.cards
    )?;
    let start: DateTime<Utc> = "2027-01-01T00:00:00Z"
        .parse()
        .map_err(|e| CommandError::Failed(format!("{e}")))?;
    let mut ids = subscribe(&app, start).await?;
    ids.extend(enroll_at_counter(&app, &sim, gateway.clone(), start).await?);
    let engine = app.engine(gateway).await?;
    let total = bill(&app, &engine, &ids, start, months).await?;
    money_back(&app, &engine, &sim).await?;
    print_months(&app).await?;

    // Invariant 3, proven against the simulator's own record.
    let taken: Vec<crate::domain::answer::ProviderPayment> =
        sim.with(|st| st.completed().iter().map(Into::into).collect());
    let audit = crate::ledger::audit::exactly_once(&app.pool, &taken).await?;
    crate::out!(
        "check: {} payments taken at Square, {} successes in the ledger, {} pending: {}",
        audit.payments,
        audit.ledger_successes,
        audit.pending,
        if audit.is_exact() {
            "exactly one payment per billed period".to_owned()
        } else {
            format!("MISMATCH ({})", audit.problems.join("; "))
        }
    )?;
    crate::out!(
        "done in {:.1}s; explore it with: DATABASE_URL=\"$(paycron db url --database {})\" paycron ledger export --format jsonl\nthe embedded Postgres keeps running for that; `paycron db stop` stops it",
        wall.elapsed().as_secs_f64(),
        DEMO_DATABASE
    )?;
    tracing::info!(
        attempted = total.attempted,
        succeeded = total.succeeded,
        declined = total.declined,
        unresolved = total.unresolved,
        "demo summary"
    );
    sim.shutdown().await;
    if !audit.is_exact() {
        return Err(CommandError::Failed(
            "the ledger does not match the simulator's payments".into(),
        ));
    }
    Ok(())
}

/// The embedded cluster with a fresh demo database, the simulator seeded with `customers`,
/// and an app wired to both.
async fn start(config: Config, customers: usize) -> Result<(LocalCluster, Simulator, App)> {
    let home = config.home.clone();
    let cluster =
        tokio::task::spawn_blocking(move || -> std::result::Result<LocalCluster, StoreError> {
            let c = LocalCluster::new(&home, ClusterOptions::default())?;
            c.ensure_running()?;
            Ok(c)
        })
        .await
        .map_err(|e| CommandError::Failed(format!("start-up task failed: {e}")))??;
    let url = cluster.url(DEMO_DATABASE);
    let opts = store::connect_options(&url)?;
    embedded::recreate_database(&opts, DEMO_DATABASE).await?;
    let pool = store::open_pool(opts, 48).await?;

    let sim = Simulator::start(
        SimConfig {
            customers,
            ..SimConfig::default()
        },
        SocketAddr::from(([127, 0, 0, 1], 0)),
    )
    .await
    .map_err(|e| CommandError::Failed(format!("cannot start the simulator: {e}")))?;
    let mut cfg = config;
    cfg.square.base_url = Some(sim.base_url());
    cfg.square.access_token = Some(SecretString::from("demo-token".to_owned()));
    cfg.square.location_id = None;
    cfg.square.rate_limit_per_sec = 100_000;
    let app = App::from_pool(cfg, pool);
    Ok((cluster, sim, app))
}

/// One monthly subscription per synced customer, on its primary card; returns their ids.
async fn subscribe(app: &App, start: DateTime<Utc>) -> Result<Vec<SubscriptionId>> {
    let usd: Currency = "USD"
        .parse()
        .map_err(|e| CommandError::Failed(format!("{e}")))?;
    let interval: Interval = "1month"
        .parse()
        .map_err(|e| CommandError::Failed(format!("{e}")))?;
    let list = store::cards::list_customers(&app.pool).await?;
    let mut ids = Vec::with_capacity(list.len());
    // Bill each customer's primary card; the simulator gives a few customers a spare (`-b`).
    let all_cards = store::cards::list_cards(&app.pool).await?;
    let mut conn = app.pool.acquire().await.map_err(StoreError::from)?;
    for (i, c) in list.iter().enumerate() {
        let anchor = start + Duration::days((i % 28) as i64) + Duration::hours(9 + (i % 5) as i64);
        let new = NewSubscription {
            customer_id: CustomerId::from_stored(c.id.clone()),
            card_id: None,
            money: Money::new(PRICES[i % PRICES.len()], usd)
                .map_err(|e| CommandError::Failed(format!("{e}")))?,
            interval,
            anchor: Some(anchor),
            time_zone: ZONES[i % ZONES.len()].into(),
            cycles: None,
            trial_days: if i % 10 == 3 { 14 } else { 0 },
            external_ref: Some(format!("demo-{i}")),
            ends_at: None,
        };
        let card = all_cards
            .iter()
            .find(|k| k.customer_id == c.id && !k.id.ends_with("-b"))
            .map(|k| CardId::from_stored(k.id.clone()));
        let new = NewSubscription {
            card_id: card,
            ..new
        };
        ids.push(subscriptions::create(&mut conn, &new, Some(start)).await?);
    }
    drop(conn);
    crate::out!(
        "created {} monthly subscriptions (9.00, 19.00 and 49.00 USD; four time zones; some with trials)",
        ids.len()
    )?;

    Ok(ids)
}

/// A few customers sign up at the counter, through the same routes the daemon serves: the
/// enrollment link, Square Point of Sale (played by the simulator) taking the first month and
/// saving the card, the callback confirmed with Square, and `card.created` signed and received.
async fn enroll_at_counter(
    app: &App,
    sim: &Simulator,
    gateway: std::sync::Arc<dyn crate::gateway::PaymentGateway>,
    start: DateTime<Utc>,
) -> Result<Vec<SubscriptionId>> {
    use crate::enroll::{Counter, Customer};
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
        .await
        .map_err(|e| CommandError::Failed(format!("cannot serve the enrollment pages: {e}")))?;
    let addr = listener
        .local_addr()
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    let public = format!("http://{addr}");
    let hook = format!("{public}/webhooks/square");
    let key = uuid::Uuid::new_v4().simple().to_string();
    let mut config = app.config.enrollment.clone();
    config.public_url = Some(public.clone());
    config.application_id = Some(crate::simulator::state::APPLICATION_ID.into());
    config.business_name = "paycron demo gym".into();
    let counter = Counter::new(app.pool.clone(), gateway, config, None);
    let state = crate::ops::server::OpsState {
        pool: app.pool.clone(),
        metrics: crate::ops::metrics::install(),
        draining: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false)),
        webhooks: crate::ops::square_webhooks::WebhookState {
            pool: app.pool.clone(),
            key: Some(SecretString::from(key.clone())),
            url: Some(hook.clone()),
            dispute_lost_cancels: app.config.billing.dispute_lost_cancels,
        },
        webhook_path: "/webhooks/square".into(),
        ready: std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true)),
        progress: None,
        enroll: Some(counter.clone()),
    };
    let stop = tokio_util::sync::CancellationToken::new();
    let server = crate::ops::server::serve_router(
        listener,
        crate::ops::server::webhook_router(&state),
        stop.clone(),
    );
    sim.with(|st| st.notify = Some((hook, key)));
    let http = reqwest::Client::new();
    let mut ids = Vec::new();
    for (i, (given, family)) in [("Ada", "Lovelace"), ("Alan", "Turing"), ("Grace", "Hopper")]
        .into_iter()
        .enumerate()
    {
        let enrolled = counter
            .start(
                Customer::New(crate::gateway::NewCustomer {
                    idempotency_key: format!("paycron-demo-counter-{i}"),
                    given_name: Some(given.into()),
                    family_name: Some(family.into()),
                    email: None,
                    phone: None,
                }),
                store::enrollments::EnrollPlan {
                    customer_id: String::new(),
                    amount_minor: PRICES[i % PRICES.len()],
                    currency: "USD".into(),
                    interval_unit: "month".into(),
                    interval_count: 1,
                    anchor: Some(start + Duration::days(3 + i as i64) + Duration::hours(17)),
                    time_zone: ZONES[0].into(),
                    cycles: None,
                    external_ref: Some(format!("demo-counter-{i}")),
                    ends_at: None,
                    expires_in: std::time::Duration::from_secs(3600),
                    card_wait: std::time::Duration::from_secs(900),
                    now: None,
                },
            )
            .await
            .map_err(|e| CommandError::Failed(format!("enrollment: {e}")))?;
        let token = enrolled.link.rsplit('/').next().unwrap_or_default();
        let view = store::enrollments::by_token(&app.pool, token)
            .await?
            .ok_or_else(|| CommandError::Failed("enrollment not found".into()))?;
        let launch = counter
            .launch(&view, token)
            .ok_or_else(|| CommandError::Failed("enrollment is not configured".into()))?;
        // The counter's phone: iOS for some, Android for others; POS returns to the callback.
        let url = if i % 2 == 0 {
            crate::domain::pos::ios_url(&launch)
        } else {
            crate::domain::pos::android_url(&launch, &enrolled.link)
        };
        let mut pos = reqwest::Url::parse(&format!("{}/_sim/pos/launch", sim.base_url()))
            .map_err(|e| CommandError::Failed(e.to_string()))?;
        pos.query_pairs_mut().append_pair("url", &url);
        let page = http
            .get(pos)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .map_err(|e| CommandError::Failed(format!("simulated Point of Sale: {e}")))?;
        drop(page);
        let done = store::enrollments::by_token(&app.pool, token).await?;
        if done.as_ref().map(|d| d.status.as_str()) != Some("completed") {
            return Err(CommandError::Failed(format!(
                "enrollment of {given} {family} did not complete"
            )));
        }
        ids.push(SubscriptionId(enrolled.subscription_id));
    }
    stop.cancel();
    let _ = server.await;
    crate::out!(
        "enrolled {} customers at the counter: first month paid in Square Point of Sale, card saved there, billed on file after",
        ids.len()
    )?;
    Ok(ids)
}

/// Steps the clock six hours at a time through `months`, recovering and billing at each step;
/// a few customers cancel at period end after two months.
async fn bill(
    app: &App,
    engine: &Engine,
    ids: &[SubscriptionId],
    start: DateTime<Utc>,
    months: u32,
) -> Result<Summary> {
    let mut total = Summary::default();
    let end = start
        .checked_add_months(chrono::Months::new(months))
        .ok_or_else(|| CommandError::BadInput(format!("--months: {months} is out of range")))?
        - Duration::seconds(1);
    let mut now = start;
    let cancel_day = start + Duration::days(60);
    let mut canceled = false;
    let steps = u64::try_from((end - start).num_hours() / 6 + 1).unwrap_or(0);
    let progress = crate::ops::progress::Progress::new(
        "demo: six-hour steps",
        steps,
        app.config.progress_every,
    );
    while now <= end {
        progress.inc(1);
        total.merge(&engine.recover(now).await?);
        total.merge(&engine.bill_due(now).await?);
        if !canceled && now >= cancel_day {
            // A few customers cancel at the end of the period they paid for.
            let mut conn = app.pool.acquire().await.map_err(StoreError::from)?;
            for id in ids.iter().step_by(40) {
                let _ =
                    subscriptions::act(&mut conn, *id, Action::CancelAtPeriodEnd, Some(now)).await;
            }
            canceled = true;
        }
        now += Duration::hours(6);
    }
    progress.finish();

    Ok(total)
}

/// A few customers get money back (two partial refunds, one full) and one opens a dispute,
/// as Square would tell it: the refunds settle and the dispute arrives through the same
/// webhook handling the daemon runs.
async fn money_back(app: &App, engine: &Engine, sim: &Simulator) -> Result<()> {
    // Every charge of the demo database (written seconds ago, by the wall clock).
    let since = Utc::now() - Duration::days(1);
    let mut paid: Vec<_> =
        store::charges::in_window(&app.pool, since, Utc::now() + Duration::days(1))
            .await?
            .into_iter()
            .filter(|c| c.status == crate::domain::ChargeStatus::Succeeded)
            .collect();
    // The same customers every run (the simulator's are seeded).
    paid.sort_by(|a, b| (&a.customer_id, a.period).cmp(&(&b.customer_id, b.period)));
    let paid: Vec<_> = paid.into_iter().step_by(97).take(4).collect();
    let hooks = crate::ops::square_webhooks::WebhookState {
        pool: app.pool.clone(),
        key: None,
        url: None,
        dispute_lost_cancels: app.config.billing.dispute_lost_cancels,
    };
    let mut refunded = 0;
    for (i, c) in paid.iter().take(3).enumerate() {
        let new = store::refunds::NewRefund {
            charge_id: Some(c.id),
            amount_minor: (i < 2).then(|| c.money.minor() / 2),
            reason: Some(
                if i < 2 {
                    "goodwill credit"
                } else {
                    "canceled within the first week"
                }
                .into(),
            ),
            cancel: (i == 2).then_some("now"),
        };
        let mut tx = app.pool.begin().await.map_err(StoreError::from)?;
        store::refunds::create(&mut tx, c.id, &new).await?;
        tx.commit().await.map_err(StoreError::from)?;
        refunded += 1;
    }
    engine.drive_refunds(None).await?;
    // Square settles them and says so.
    let notes: Vec<String> = sim.with(|st| {
        st.settle_refunds();
        let ids: Vec<String> = st.refunds().iter().map(|r| r.id.clone()).collect();
        ids.iter()
            .filter_map(|id| st.refund_notification(id))
            .collect()
    });
    let mut dispute = None;
    if let Some(c) = paid.get(3)
        && let Some(payment) = c.provider_payment_id.as_deref()
    {
        dispute = sim.with(|st| st.open_dispute(payment));
    }
    for body in notes.iter().chain(dispute.as_ref().map(|(_, b)| b)) {
        let payload: serde_json::Value = serde_json::from_str(body)
            .map_err(|e| CommandError::Failed(format!("simulator notification: {e}")))?;
        crate::ops::square_webhooks::apply_trusted(&hooks, &payload).await?;
    }
    crate::out!(
        "money back: {refunded} refunds (two partial, one in full with its subscription canceled), {} dispute opened",
        usize::from(dispute.is_some())
    )?;
    Ok(())
}

/// The month-by-month table and the subscriptions' statuses.
async fn print_months(app: &App) -> Result<()> {
    let usd: Currency = "USD"
        .parse()
        .map_err(|e| CommandError::Failed(format!("{e}")))?;
    let rows = ledger::monthly(&app.pool).await?;
    let money = |minor: i64, cur: &str| format_minor(minor, cur.parse().unwrap_or(usd));
    let mut lines: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.month.clone(),
                r.succeeded.to_string(),
                r.declined.to_string(),
                r.recovered.to_string(),
                r.ended.to_string(),
                money(r.revenue_minor, &r.currency),
                money(r.refunded_minor, &r.currency),
                r.disputes.to_string(),
            ]
        })
        .collect();
    let sum = |f: fn(&ledger::MonthRow) -> i64| rows.iter().map(f).sum::<i64>();
    lines.push(vec![
        "TOTAL".into(),
        sum(|r| r.succeeded).to_string(),
        sum(|r| r.declined).to_string(),
        sum(|r| r.recovered).to_string(),
        sum(|r| r.ended).to_string(),
        format_minor(sum(|r| r.revenue_minor), usd),
        format_minor(sum(|r| r.refunded_minor), usd),
        sum(|r| r.disputes).to_string(),
    ]);
    crate::out!()?;
    let months = table(
        &[
            "MONTH",
            "CHARGED",
            "DECLINED",
            "RECOVERED",
            "DUNNING ENDED",
            "REVENUE",
            "REFUNDED",
            "DISPUTES",
        ],
        lines,
    );
    crate::out!("{}", months.trim_end())?;
    let statuses = subscriptions::count_by_status(&app.pool).await?;
    crate::out!(
        "\nsubscriptions now: {}",
        statuses
            .iter()
            .map(|(s, n)| format!("{s} {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    )?;

    Ok(())
}
