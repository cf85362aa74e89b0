//! `subscription create|list|show|change-card|pause|resume|cancel|release`.
//!
//! Input is parsed into domain types first (one clear line naming the field on a bad value),
//! then written through the `paycron.*` SQL functions in one transaction, so a bad input
//! writes nothing.

use chrono::{DateTime, Utc};

use super::{CommandError, Format, Result, print_rows, table};
use crate::app::App;
use crate::domain::money::format_minor;
use crate::domain::schedule::parse_zone;
use crate::domain::{CardId, Currency, CustomerId, Interval, Money, SubscriptionId};
use crate::store::StoreError;
use crate::store::subscriptions::{self, Action, NewSubscription, SubscriptionRow};

/// `paycron subscription ...`.
#[derive(clap::Subcommand)]
pub enum SubscriptionCmd {
    /// Create a subscription; prints its id.
    Create(Box<CreateArgs>),
    /// List subscriptions.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Show one subscription.
    Show {
        /// Subscription id.
        id: String,
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Move a subscription to another of the customer's cards (an unpaid one is billed again).
    ChangeCard {
        /// Subscription id.
        id: String,
        /// The new card id.
        #[arg(long)]
        card: String,
        /// Test clock, RFC 3339 (refused against Square production).
        #[arg(long)]
        now: Option<String>,
    },
    /// Pause billing (periods that begin while paused are skipped).
    Pause {
        /// Subscription id.
        id: String,
        /// Test clock, RFC 3339 (refused against Square production).
        #[arg(long)]
        now: Option<String>,
    },
    /// Resume billing from the first period that begins at or after now.
    Resume {
        /// Subscription id.
        id: String,
        /// Test clock, RFC 3339 (refused against Square production).
        #[arg(long)]
        now: Option<String>,
    },
    /// Cancel now, or at the end of the paid period.
    Cancel {
        /// Subscription id.
        id: String,
        /// Let the current paid period run out.
        #[arg(long)]
        at_period_end: bool,
        /// Test clock, RFC 3339 (refused against Square production).
        #[arg(long)]
        now: Option<String>,
    },
    /// Undo a cancel at period end: the subscription bills on.
    Keep {
        /// Subscription id.
        id: String,
        /// Test clock, RFC 3339 (refused against Square production).
        #[arg(long)]
        now: Option<String>,
    },
    /// A new price from the next period that begins after now (no proration).
    ChangePrice {
        /// Subscription id.
        id: String,
        /// New amount per period in minor units.
        #[arg(long, allow_hyphen_values = true)]
        amount: String,
        /// New currency (default: the current one).
        #[arg(long)]
        currency: Option<String>,
        /// Test clock, RFC 3339 (refused against Square production).
        #[arg(long)]
        now: Option<String>,
    },
    /// Bill a quarantined subscription again, once its row is fixed.
    Release {
        /// Subscription id.
        id: String,
    },
}

impl SubscriptionCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`CommandError`].
    pub async fn execute(self, app: &App) -> Result<()> {
        match self {
            SubscriptionCmd::Create(args) => create_subscription(app, &args).await.map(|_| ()),
            SubscriptionCmd::List { format } => list_subscriptions(app, format).await,
            SubscriptionCmd::Show { id, format } => show_subscription(app, &id, format).await,
            SubscriptionCmd::Release { id } => release(app, &id).await,
            SubscriptionCmd::Keep { id, now } => act(app, &id, Action::Keep, now.as_deref()).await,
            SubscriptionCmd::ChangePrice {
                id,
                amount,
                currency,
                now,
            } => change_price(app, &id, &amount, currency.as_deref(), now.as_deref()).await,
            SubscriptionCmd::ChangeCard { id, card, now } => {
                change_card(app, &id, &card, now.as_deref()).await
            }
            SubscriptionCmd::Pause { id, now } => {
                act(app, &id, Action::Pause, now.as_deref()).await
            }
            SubscriptionCmd::Resume { id, now } => {
                act(app, &id, Action::Resume, now.as_deref()).await
            }
            SubscriptionCmd::Cancel {
                id,
                at_period_end,
                now,
            } => {
                let action = if at_period_end {
                    Action::CancelAtPeriodEnd
                } else {
                    Action::CancelNow
                };
                act(app, &id, action, now.as_deref()).await
            }
        }
    }
}

/// Raw `subscription create` arguments, as typed; validated by [`parse_create`].
#[derive(Clone, Debug, Default, clap::Args)]
pub struct CreateArgs {
    /// Square customer id.
    #[arg(long)]
    pub customer: String,
    /// Amount per period in minor units (1999 = 19.99 USD).
    #[arg(long, allow_hyphen_values = true)]
    pub amount: String,
    /// ISO 4217 currency.
    #[arg(long)]
    pub currency: String,
    /// Nday, Nweek, Nmonth or Nyear.
    #[arg(long)]
    pub every: String,
    /// Card id (default: the customer's most recently updated enabled card).
    #[arg(long)]
    pub card: Option<String>,
    /// First billing instant, RFC 3339 (default: now).
    #[arg(long)]
    pub anchor: Option<String>,
    /// IANA time zone of the calendar (default UTC).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Bill this many periods, then complete.
    #[arg(long)]
    pub cycles: Option<String>,
    /// Free days before the first charge.
    #[arg(long)]
    pub trial_days: Option<String>,
    /// Your own reference: creating again with it and the same terms returns the same
    /// subscription; with other terms it is refused.
    #[arg(long)]
    pub external_ref: Option<String>,
    /// Bill no period starting at or after this instant (RFC 3339).
    #[arg(long)]
    pub ends_at: Option<String>,
    /// Test clock, RFC 3339 (refused against Square production).
    #[arg(long)]
    pub now: Option<String>,
}

fn bad(flag: &str, e: impl std::fmt::Display) -> CommandError {
    CommandError::BadInput(format!("{flag}: {e}"))
}

fn parse_time(flag: &str, v: &str) -> Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(v.trim())
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            bad(
                flag,
                format!("{v:?} is not an RFC 3339 time (e.g. 2026-01-31T09:00:00Z): {e}"),
            )
        })
}

/// Validates `subscription create` arguments into a [`NewSubscription`].
///
/// # Errors
/// [`CommandError::BadInput`] naming the flag.
pub fn parse_create(a: &CreateArgs) -> Result<NewSubscription> {
    let customer: CustomerId = a.customer.parse().map_err(|e| bad("--customer", e))?;
    let currency: Currency = a
        .currency
        .trim()
        .parse()
        .map_err(|e| bad("--currency", e))?;
    let money = Money::parse_minor(&a.amount, currency).map_err(|e| bad("--amount", e))?;
    let interval: Interval = a.every.parse().map_err(|e| bad("--every", e))?;
    let card = a
        .card
        .as_deref()
        .map(|c| c.parse::<CardId>().map_err(|e| bad("--card", e)))
        .transpose()?;
    let anchor = a
        .anchor
        .as_deref()
        .map(|v| parse_time("--anchor", v))
        .transpose()?;
    let tz = a.timezone.as_deref().unwrap_or("UTC");
    parse_zone(tz).map_err(|e| bad("--timezone", e))?;
    let count = |flag: &str, v: &str, lo: i32, hi: i32| -> Result<i32> {
        match v.trim().parse::<i32>() {
            Ok(n) if (lo..=hi).contains(&n) => Ok(n),
            _ => Err(bad(
                flag,
                format!("{v:?} is not a whole number from {lo} to {hi}"),
            )),
        }
    };
    let cycles = a
        .cycles
        .as_deref()
        .map(|v| count("--cycles", v, 1, 100_000))
        .transpose()?;
    let trial_days = a
        .trial_days
        .as_deref()
        .map(|v| count("--trial-days", v, 0, 3650))
        .transpose()?
        .unwrap_or(0);
    let ends_at = a
        .ends_at
        .as_deref()
        .map(|v| parse_time("--ends-at", v))
        .transpose()?;
    Ok(NewSubscription {
        customer_id: customer,
        card_id: card,
        money,
        interval,
        anchor,
        time_zone: tz.trim().to_owned(),
        cycles,
        trial_days,
        external_ref: a.external_ref.clone(),
        ends_at,
    })
}

/// `subscription create`: prints the new id.
///
/// # Errors
/// [`CommandError`].
pub async fn create_subscription(app: &App, args: &CreateArgs) -> Result<SubscriptionId> {
    let new = parse_create(args)?;
    let now = test_clock(app, args.now.as_deref())?;
    let mut tx = app.pool.begin().await.map_err(StoreError::from)?;
    let id = subscriptions::create(&mut tx, &new, now).await?;
    settle(app, &mut tx, id, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    crate::out!("{id}")?;
    Ok(id)
}

/// `--now` of a management command: a test clock, refused against Square production (a
/// back- or forward-dated pause or resume would skip or bill real periods). `None`: the
/// database's clock.
///
/// # Errors
/// [`CommandError::BadInput`].
pub fn test_clock(app: &App, now: Option<&str>) -> Result<Option<DateTime<Utc>>> {
    let Some(v) = now else { return Ok(None) };
    if app.config.square.is_production() {
        return Err(CommandError::BadInput(format!(
            "--now: {v}: a test clock is refused against Square production (SQUARE_ENVIRONMENT=production)"
        )));
    }
    parse_time("--now", v).map(Some)
}

/// Brings a changed subscription's position up to the clock in the caller's transaction.
async fn settle(
    app: &App,
    conn: &mut sqlx::PgConnection,
    id: SubscriptionId,
    now: Option<DateTime<Utc>>,
) -> Result<()> {
    let now = match now {
        Some(t) => t,
        None => subscriptions::db_now(conn).await?,
    };
    crate::billing::settle_subscription(conn, id, now, app.config.billing.max_catch_up_periods)
        .await
        .map_err(|e| CommandError::Failed(e.to_string()))?;
    Ok(())
}

fn subscription_table(rows: &[SubscriptionRow]) -> String {
    table(
        &[
            "SUBSCRIPTION",
            "CUSTOMER",
            "AMOUNT",
            "EVERY",
            "STATUS",
            "NEXT DUE",
        ],
        rows.iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    r.customer_id.to_string(),
                    format_minor(r.money.minor(), r.money.currency()),
                    format!("{}{}", r.interval_count, r.interval_unit),
                    match r.needs_attention {
                        Some(_) => format!("{} (quarantined)", r.status),
                        None => r.status.to_string(),
                    },
                    r.next_due_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into()),
                ]
            })
            .collect(),
    )
}

/// `subscription list`.
///
/// # Errors
/// [`CommandError`].
pub async fn list_subscriptions(app: &App, format: Format) -> Result<()> {
    let rows = subscriptions::list(&app.pool).await?;
    print_rows(&rows, format, subscription_table)
}

fn parse_id(id: &str) -> Result<SubscriptionId> {
    id.parse::<SubscriptionId>()
        .map_err(|e| CommandError::BadInput(e.to_string()))
}

/// `subscription show ID`.
///
/// # Errors
/// [`CommandError`].
pub async fn show_subscription(app: &App, id: &str, format: Format) -> Result<()> {
    let id = parse_id(id)?;
    let mut conn = app.pool.acquire().await.map_err(StoreError::from)?;
    let row = subscriptions::get(&mut conn, id).await?;
    let history = crate::store::events::for_subscription(&mut conn, id, SHOW_EVENTS).await?;
    let mut v = serde_json::to_value(&row).map_err(|e| CommandError::Io(e.to_string()))?;
    // Everything the app's `paycron.subscription()` answers, too (card display fields, the
    // current period, the dunning step), without changing the keys already shown.
    if let (Some(obj), Some(serde_json::Value::Object(app))) = (
        v.as_object_mut(),
        subscriptions::app_view(&mut conn, id).await?,
    ) {
        for (k, val) in app {
            obj.entry(k).or_insert(val);
        }
    }
    match format {
        Format::Text => {
            if let Some(obj) = v.as_object() {
                for (k, val) in obj {
                    let shown = match val {
                        serde_json::Value::String(s) => s.clone(),
                        serde_json::Value::Null => "-".into(),
                        other => other.to_string(),
                    };
                    crate::out!("{k:<22} {shown}")?;
                }
            }
            crate::out!()?;
            crate::out!("history (latest {SHOW_EVENTS} events, oldest first):")?;
            for e in &history {
                crate::out!(
                    "  {} #{:<8} {:<26} {}",
                    e.created_at
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    e.id,
                    e.kind,
                    event_summary(&e.kind, &e.payload)
                )?;
            }
            Ok(())
        }
        Format::Json | Format::Jsonl => {
            if let Some(obj) = v.as_object_mut() {
                obj.insert(
                    "events".into(),
                    serde_json::to_value(&history).map_err(|e| CommandError::Io(e.to_string()))?,
                );
            }
            crate::out!(
                "{}",
                serde_json::to_string_pretty(&v).map_err(|e| CommandError::Io(e.to_string()))?
            )?;
            Ok(())
        }
    }
}

/// How many of a subscription's events `subscription show` prints.
const SHOW_EVENTS: i64 = 50;

/// One event in words, for `subscription show`.
fn event_summary(kind: &str, p: &serde_json::Value) -> String {
    let s = |k: &str| match &p[k] {
        serde_json::Value::Null => String::new(),
        serde_json::Value::String(v) => v.clone(),
        other => other.to_string(),
    };
    match kind {
        "period_skipped" => format!(
            "{} period(s) {}..{} ({} .. {}) never billed: {}",
            s("periods"),
            s("first_period"),
            s("last_period"),
            s("first_period_start"),
            s("last_period_start"),
            s("reason")
        ),
        "payment_succeeded" | "payment_declined" => {
            let code = s("decline_code");
            format!(
                "attempt {} for the period of {}: {} {}{}",
                s("attempt"),
                s("period_start"),
                s("amount_minor"),
                s("currency"),
                if code.is_empty() {
                    String::new()
                } else {
                    format!(" ({code})")
                }
            )
        }
        _ => {
            let reason = s("reason");
            if reason.is_empty() {
                String::new()
            } else {
                reason
            }
        }
    }
}

/// `subscription release ID`: bills a quarantined subscription again, once the engine can
/// read and move it.
///
/// # Errors
/// [`CommandError::BadInput`] (exit 2) when it is not quarantined or still cannot be read.
pub async fn release(app: &App, id: &str) -> Result<()> {
    let id = parse_id(id)?;
    let mut tx = app.pool.begin().await.map_err(StoreError::from)?;
    let row = subscriptions::lock(&mut tx, id).await.map_err(|e| {
        if e.is_unreadable_row() {
            CommandError::BadInput(format!("subscription {id} still cannot be read: {e}"))
        } else {
            e.into()
        }
    })?;
    if row.needs_attention.is_none() {
        return Err(CommandError::BadInput(format!(
            "subscription {id} is not quarantined"
        )));
    }
    let now = subscriptions::db_now(&mut tx).await?;
    let terms = row.terms().and_then(|t| Ok((t, row.state()?)));
    let check = terms.map_err(|e| e.to_string()).and_then(|(t, s)| {
        crate::domain::lifecycle::settle(&t, &s, now, app.config.billing.max_catch_up_periods)
            .map_err(|e| e.to_string())
    });
    if let Err(why) = check {
        return Err(CommandError::BadInput(format!(
            "subscription {id} still cannot be billed: {why}"
        )));
    }
    subscriptions::release(&mut tx, id).await?;
    tx.commit().await.map_err(StoreError::from)?;
    crate::out!("{id} released")?;
    Ok(())
}

/// `subscription change-card ID --card CARD`.
///
/// # Errors
/// [`CommandError`].
pub async fn change_card(app: &App, id: &str, card: &str, now: Option<&str>) -> Result<()> {
    let id = parse_id(id)?;
    let card: CardId = card.parse().map_err(|e| bad("--card", e))?;
    let now = test_clock(app, now)?;
    let mut tx = app.pool.begin().await.map_err(StoreError::from)?;
    let result = subscriptions::change_card(&mut tx, id, &card, now).await?;
    settle(app, &mut tx, id, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    crate::out!("{id} {result}")?;
    Ok(())
}

/// `subscription pause|resume|cancel ID`.
///
/// # Errors
/// [`CommandError`].
pub async fn act(app: &App, id: &str, action: Action, now: Option<&str>) -> Result<()> {
    let id = parse_id(id)?;
    let now = test_clock(app, now)?;
    let mut tx = app.pool.begin().await.map_err(StoreError::from)?;
    let result = subscriptions::act(&mut tx, id, action, now).await?;
    if matches!(action, Action::Resume) {
        settle(app, &mut tx, id, now).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    crate::out!("{id} {result}")?;
    Ok(())
}

/// `subscription change-price ID --amount MINOR [--currency CUR]`: prints the id and status.
///
/// # Errors
/// [`CommandError`].
pub async fn change_price(
    app: &App,
    id: &str,
    amount: &str,
    currency: Option<&str>,
    now: Option<&str>,
) -> Result<()> {
    let id = parse_id(id)?;
    let now = test_clock(app, now)?;
    let mut tx = app.pool.begin().await.map_err(StoreError::from)?;
    let current = subscriptions::get(&mut tx, id).await?;
    let currency: Currency = match currency {
        Some(c) => c.parse().map_err(|e| bad("--currency", e))?,
        None => current.money.currency(),
    };
    let minor: i64 = amount.trim().parse().map_err(|_| {
        bad(
            "--amount",
            format!("{amount:?} is not a whole number of minor units"),
        )
    })?;
    let money = Money::new(minor, currency).map_err(|e| bad("--amount", e))?;
    let result = subscriptions::change_price(&mut tx, id, money, now).await?;
    tx.commit().await.map_err(StoreError::from)?;
    crate::out!("{id} {result}")?;
    Ok(())
}
