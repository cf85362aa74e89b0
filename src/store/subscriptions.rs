//! Subscriptions: creation and management through the `paycron.*` SQL API functions, reading
//! for the CLI, and the engine's claim of due subscriptions (`FOR UPDATE SKIP LOCKED`) and
//! position updates.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::{Result, StoreError};
use crate::domain::lifecycle::{State, Terms};
use crate::domain::schedule::{Calendar, Interval};
use crate::domain::{CardId, ChargeId, CustomerId, Money, SubscriptionId, SubscriptionStatus};

/// A new subscription as the CLI or an application asks for it.
#[derive(Clone, Debug)]
pub struct NewSubscription {
    /// Square customer id.
    pub customer_id: CustomerId,
    /// Card id; default the customer's most recently updated enabled card.
    pub card_id: Option<CardId>,
    /// Amount per period.
    pub money: Money,
    /// Billing interval.
    pub interval: Interval,
    /// Period 0's instant; default now.
    pub anchor: Option<DateTime<Utc>>,
    /// IANA zone.
    pub time_zone: String,
    /// Number of periods to bill.
    pub cycles: Option<i32>,
    /// Free days before the first charge.
    pub trial_days: i32,
    /// The caller's idempotency reference.
    pub external_ref: Option<String>,
    /// Bill no period starting at or after this instant.
    pub ends_at: Option<DateTime<Utc>>,
}

/// A stored subscription.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct SubscriptionRow {
    /// Id.
    pub id: SubscriptionId,
    /// Square customer id.
    pub customer_id: CustomerId,
    /// Square card id charged (none while awaiting the card saved at the counter).
    pub card_id: Option<CardId>,
    /// Amount per period (`amount_minor`, `currency`).
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub money: Money,
    /// day | week | month | year.
    pub interval_unit: String,
    /// Units per period.
    pub interval_count: i32,
    /// Period 0's start.
    pub anchor: DateTime<Utc>,
    /// IANA zone of the calendar.
    pub time_zone: String,
    /// Status.
    pub status: SubscriptionStatus,
    /// When the trial ends.
    pub trial_ends_at: Option<DateTime<Utc>>,
    /// Periods to bill in all.
    pub max_cycles: Option<i32>,
    /// No period starts at or after this.
    pub ends_at: Option<DateTime<Utc>>,
    /// Cancel instead of billing the next period.
    pub cancel_at_period_end: bool,
    /// Next period to bill.
    pub next_period: i32,
    /// Next attempt number for that period.
    pub next_attempt: i32,
    /// When it is due.
    pub next_due_at: Option<DateTime<Utc>>,
    /// First decline of the current period.
    pub dunning_started_at: Option<DateTime<Utc>>,
    /// Periods starting before this are skipped.
    pub skip_before: Option<DateTime<Utc>>,
    /// Attempts of the current period Square refused for a configuration reason.
    pub uncounted_attempts: i32,
    /// Why the engine quarantined it (it is not billed until released).
    pub needs_attention: Option<String>,
    /// The caller's reference.
    pub external_ref: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last written.
    pub updated_at: DateTime<Utc>,
    /// Canceled.
    pub canceled_at: Option<DateTime<Utc>>,
}

impl SubscriptionRow {
    /// The subscription's calendar.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] if the stored interval or zone does not parse.
    pub fn calendar(&self) -> Result<Calendar> {
        Calendar::from_stored(
            self.anchor,
            &self.interval_unit,
            self.interval_count,
            &self.time_zone,
        )
        .map_err(|e| StoreError::Corrupt {
            table: "subscriptions",
            reason: format!("{}: {e}", self.id),
        })
    }

    /// What the subscription agreed to, for the lifecycle.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] if a stored value is out of the domain's range.
    pub fn terms(&self) -> Result<Terms> {
        Ok(Terms {
            calendar: self.calendar()?,
            max_cycles: self
                .max_cycles
                .map(|c| u32::try_from(c).map_err(|e| self.corrupt(e)))
                .transpose()?,
            ends_at: self.ends_at,
            trial_ends_at: self.trial_ends_at,
        })
    }

    /// Where the subscription stands, for the lifecycle.
    ///
    /// # Errors
    /// [`StoreError::Corrupt`] if a stored value is out of the domain's range.
    pub fn state(&self) -> Result<State> {
        Ok(State {
            status: self.status,
            period: u32::try_from(self.next_period).map_err(|e| self.corrupt(e))?,
            attempt: u32::try_from(self.next_attempt).map_err(|e| self.corrupt(e))?,
            uncounted: u32::try_from(self.uncounted_attempts).map_err(|e| self.corrupt(e))?,
            due: self.next_due_at,
            dunning_started_at: self.dunning_started_at,
            cancel_at_period_end: self.cancel_at_period_end,
            skip_before: self.skip_before,
        })
    }

    fn corrupt(&self, e: impl std::fmt::Display) -> StoreError {
        StoreError::Corrupt {
            table: "subscriptions",
            reason: format!("{}: {e}", self.id),
        }
    }
}

const COLUMNS: &str = "id, customer_id, card_id, amount_minor, currency, interval_unit, interval_count, anchor, time_zone,
    status, trial_ends_at, max_cycles, ends_at, cancel_at_period_end, next_period, next_attempt, next_due_at,
    dunning_started_at, skip_before, uncounted_attempts, needs_attention, external_ref, created_at, updated_at, canceled_at";

/// Creates a subscription through `paycron.create_subscription`.
///
/// # Errors
/// [`StoreError::Rejected`] / [`StoreError::NotFound`] with the SQL function's message.
pub async fn create(
    conn: &mut PgConnection,
    new: &NewSubscription,
    now: Option<DateTime<Utc>>,
) -> Result<SubscriptionId> {
    Ok(sqlx::query_scalar(
        "SELECT paycron.create_subscription($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&new.customer_id)
    .bind(new.money.minor())
    .bind(new.money.currency())
    .bind(new.interval.unit.as_str())
    .bind(new.interval.count as i32)
    .bind(&new.card_id)
    .bind(new.anchor)
    .bind(&new.time_zone)
    .bind(new.cycles)
    .bind(new.trial_days)
    .bind(&new.external_ref)
    .bind(new.ends_at)
    .bind(now)
    .fetch_one(conn)
    .await?)
}

/// All subscriptions, oldest first.
///
/// # Errors
/// [`StoreError`].
pub async fn list(pool: &PgPool) -> Result<Vec<SubscriptionRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.subscriptions ORDER BY created_at, id"
    ))
    .fetch_all(pool)
    .await?)
}

/// One subscription.
///
/// # Errors
/// [`StoreError::NotFound`].
pub async fn get(conn: &mut PgConnection, id: SubscriptionId) -> Result<SubscriptionRow> {
    sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.subscriptions WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("subscription {id} is unknown")))
}

/// The database's clock (the transaction's start), which the SQL API uses when no test clock
/// is given.
///
/// # Errors
/// [`StoreError`].
pub async fn db_now(conn: &mut PgConnection) -> Result<DateTime<Utc>> {
    Ok(sqlx::query_scalar("SELECT now()").fetch_one(conn).await?)
}

/// The management actions of the SQL API.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    /// `paycron.pause_subscription`.
    Pause,
    /// `paycron.resume_subscription`.
    Resume,
    /// `paycron.cancel_subscription(id, false)`.
    CancelNow,
    /// `paycron.cancel_subscription(id, true)`.
    CancelAtPeriodEnd,
    /// `paycron.keep_subscription`: undoes a cancel at period end.
    Keep,
}

/// Runs a management action; returns the function's one-word result.
///
/// # Errors
/// [`StoreError::Rejected`] / [`StoreError::NotFound`].
pub async fn act(
    conn: &mut PgConnection,
    id: SubscriptionId,
    action: Action,
    now: Option<DateTime<Utc>>,
) -> Result<String> {
    let q = match action {
        Action::Pause => sqlx::query_scalar("SELECT paycron.pause_subscription($1, $2)"),
        Action::Resume => sqlx::query_scalar("SELECT paycron.resume_subscription($1, $2)"),
        Action::CancelNow => {
            sqlx::query_scalar("SELECT paycron.cancel_subscription($1, false, $2)")
        }
        Action::CancelAtPeriodEnd => {
            sqlx::query_scalar("SELECT paycron.cancel_subscription($1, true, $2)")
        }
        Action::Keep => sqlx::query_scalar("SELECT paycron.keep_subscription($1, $2)"),
    };
    Ok(q.bind(id).bind(now).fetch_one(conn).await?)
}

/// Moves a subscription to another card through `paycron.change_card`.
///
/// # Errors
/// [`StoreError::Rejected`] / [`StoreError::NotFound`].
pub async fn change_card(
    conn: &mut PgConnection,
    id: SubscriptionId,
    card_id: &CardId,
    now: Option<DateTime<Utc>>,
) -> Result<String> {
    Ok(sqlx::query_scalar("SELECT paycron.change_card($1, $2, $3)")
        .bind(id)
        .bind(card_id)
        .bind(now)
        .fetch_one(conn)
        .await?)
}

/// Which subscriptions a claim takes, in what order, and how it locks them ($1 now, $2 limit,
/// $3 excluded, $4/$5 the keyset): shared by [`claim_due`] and its slow path [`claim_due_ids`],
/// which must lock exactly the rows the claim would have read.
const CLAIMABLE: &str = "WHERE s.status IN ('trialing', 'active', 'past_due') AND s.next_due_at <= $1
            AND (s.next_due_at, s.id) > (coalesce($4, '-infinity'), coalesce($5, '00000000-0000-0000-0000-000000000000'))
            AND s.open_charge_id IS NULL AND s.needs_attention IS NULL AND s.id <> ALL($3)
          ORDER BY s.next_due_at, s.id
          LIMIT $2
          FOR UPDATE OF s SKIP LOCKED";

/// A subscription [`claim_due`] locked, with its card's health.
#[derive(Debug, sqlx::FromRow)]
pub struct ClaimedRow {
    /// The subscription as locked.
    #[sqlx(flatten)]
    pub row: SubscriptionRow,
    /// Whether its card is one paycron knows (saved at Square and synced).
    card_known: bool,
    /// The card is neither disabled nor forgotten.
    card_usable: Option<bool>,
    card_exp_month: Option<i32>,
    card_exp_year: Option<i32>,
}

impl ClaimedRow {
    /// The card's (usable, expiry month, expiry year), when paycron knows the card.
    pub fn card_health(&self) -> Option<(bool, Option<i32>, Option<i32>)> {
        self.card_known.then(|| {
            (
                self.card_usable.unwrap_or(false),
                self.card_exp_month,
                self.card_exp_year,
            )
        })
    }
}

/// Locks up to `limit` subscriptions due at `now` that have no open charge, oldest due first
/// and past `after` in that order (due time, id) when given, skipping rows another worker
/// holds and the `excluded` ones (set aside by this pass), and reads each one's card's health
/// with it.
///
/// The rows are only locked here: the claim's first write to each is the one that moves it or
/// opens its charge (a second write to a row in one transaction would check its foreign keys
/// again, and a hand-edited row would then fail the whole claim instead of being quarantined).
///
/// # Errors
/// [`StoreError`].
pub async fn claim_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
    excluded: &[SubscriptionId],
    after: Option<(DateTime<Utc>, SubscriptionId)>,
) -> Result<Vec<ClaimedRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {}, c.id IS NOT NULL AS card_known, c.enabled AND NOT c.forgotten AS card_usable,
                c.exp_month AS card_exp_month, c.exp_year AS card_exp_year
            FROM paycron.subscriptions s LEFT JOIN paycron.cards c ON c.id = s.card_id
         {CLAIMABLE}",
        super::qualified(COLUMNS, "s")
    ))
    .bind(now)
    .bind(limit)
    .bind(excluded)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .fetch_all(conn)
    .await?)
}

/// The subscriptions [`claim_due`] would take at `now`, read without locking (a dry run).
///
/// # Errors
/// [`StoreError`].
pub async fn peek_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<SubscriptionRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.subscriptions s
          WHERE s.status IN ('trialing', 'active', 'past_due') AND s.next_due_at <= $1
            AND s.open_charge_id IS NULL AND s.needs_attention IS NULL
          ORDER BY s.next_due_at, s.id
          LIMIT $2"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// The ids of the subscriptions [`claim_due`] would lock, locked the same way, without reading
/// the rows: the slow path that finds a row that cannot be read.
///
/// # Errors
/// [`StoreError`].
pub async fn claim_due_ids(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    limit: i64,
    excluded: &[SubscriptionId],
    after: Option<(DateTime<Utc>, SubscriptionId)>,
) -> Result<Vec<SubscriptionId>> {
    Ok(sqlx::query_scalar(sqlf!(
        "SELECT s.id FROM paycron.subscriptions s {CLAIMABLE}"
    ))
    .bind(now)
    .bind(limit)
    .bind(excluded)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .fetch_all(conn)
    .await?)
}

/// Quarantines a subscription the engine cannot read or move: it is claimed no more until
/// [`release`]. Returns whether it was not already quarantined.
///
/// # Errors
/// [`StoreError`].
pub async fn quarantine(conn: &mut PgConnection, id: SubscriptionId, reason: &str) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE paycron.subscriptions SET needs_attention = $2, updated_at = now()
          WHERE id = $1 AND needs_attention IS NULL",
    )
    .bind(id)
    .bind(reason)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Releases a quarantined subscription (the operator fixed it); false when it was not
/// quarantined.
///
/// # Errors
/// [`StoreError`].
pub async fn release(conn: &mut PgConnection, id: SubscriptionId) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE paycron.subscriptions SET needs_attention = NULL, updated_at = now()
          WHERE id = $1 AND needs_attention IS NOT NULL",
    )
    .bind(id)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Locks one subscription for an update by the engine.
///
/// # Errors
/// [`StoreError::NotFound`].
pub async fn lock(conn: &mut PgConnection, id: SubscriptionId) -> Result<SubscriptionRow> {
    sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.subscriptions WHERE id = $1 FOR UPDATE"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?
    .ok_or_else(|| StoreError::NotFound(format!("subscription {id} is unknown")))
}

/// A subscription's new lifecycle state and the card it is charged on.
#[derive(Clone, Debug)]
pub struct PositionUpdate {
    /// The lifecycle state to store.
    pub state: State,
    /// Card to charge (none while awaiting the card saved at the counter).
    pub card_id: Option<CardId>,
}

fn position_params(p: &PositionUpdate) -> Result<(i32, i32, i32)> {
    let int = |v: u32| {
        i32::try_from(v)
            .map_err(|e| StoreError::Rejected(format!("position {v} out of range: {e}")))
    };
    Ok((
        int(p.state.period)?,
        int(p.state.attempt)?,
        int(p.state.uncounted)?,
    ))
}

/// Writes a new billing position (the open charge marker is left alone).
///
/// # Errors
/// [`StoreError`].
pub async fn set_position(
    conn: &mut PgConnection,
    id: SubscriptionId,
    p: &PositionUpdate,
) -> Result<()> {
    let (period, attempt, uncounted) = position_params(p)?;
    sqlx::query(
        "UPDATE paycron.subscriptions
            SET status = $2, card_id = $3, next_period = $4, next_attempt = $5, next_due_at = $6,
                dunning_started_at = $7, skip_before = $8, cancel_at_period_end = $9,
                uncounted_attempts = $10,
                canceled_at = CASE WHEN $2 = 'canceled' THEN coalesce(canceled_at, now()) ELSE canceled_at END,
                -- A price waiting for its period takes over once the subscription reaches it.
                amount_minor = CASE WHEN $4 >= pending_from_period THEN pending_amount_minor ELSE amount_minor END,
                currency = CASE WHEN $4 >= pending_from_period THEN pending_currency ELSE currency END,
                pending_amount_minor = CASE WHEN $4 >= pending_from_period THEN NULL ELSE pending_amount_minor END,
                pending_currency = CASE WHEN $4 >= pending_from_period THEN NULL ELSE pending_currency END,
                pending_from_period = CASE WHEN $4 >= pending_from_period THEN NULL ELSE pending_from_period END,
                updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(p.state.status)
    .bind(&p.card_id)
    .bind(period)
    .bind(attempt)
    .bind(p.state.due)
    .bind(p.state.dunning_started_at)
    .bind(p.state.skip_before)
    .bind(p.state.cancel_at_period_end)
    .bind(uncounted)
    .execute(conn)
    .await?;
    Ok(())
}

/// Subscriptions due at `now` (for metrics and summaries).
///
/// # Errors
/// [`StoreError`].
pub async fn count_due(pool: &PgPool, now: DateTime<Utc>) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM paycron.subscriptions
          WHERE status IN ('trialing', 'active', 'past_due') AND next_due_at <= $1",
    )
    .bind(now)
    .fetch_one(pool)
    .await?)
}

/// Subscriptions by status.
///
/// # Errors
/// [`StoreError`].
pub async fn count_by_status(pool: &PgPool) -> Result<Vec<(String, i64)>> {
    Ok(sqlx::query_as("SELECT status, count(*) FROM paycron.subscriptions GROUP BY status ORDER BY count(*) DESC, status")
        .fetch_all(pool)
        .await?)
}

/// Locks the given subscriptions in id order (a fixed order, so concurrent recorders never
/// deadlock on each other).
///
/// # Errors
/// [`StoreError`].
pub async fn lock_many(
    conn: &mut PgConnection,
    ids: &[SubscriptionId],
) -> Result<Vec<SubscriptionRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.subscriptions WHERE id = ANY($1) ORDER BY id FOR UPDATE"
    ))
    .bind(ids)
    .fetch_all(conn)
    .await?)
}

/// Writes many billing positions in one statement and clears their open charge.
///
/// # Errors
/// [`StoreError`].
pub async fn set_positions(
    conn: &mut PgConnection,
    updates: &[(SubscriptionId, PositionUpdate)],
) -> Result<()> {
    if updates.is_empty() {
        return Ok(());
    }
    let mut periods = Vec::with_capacity(updates.len());
    let mut attempts = Vec::with_capacity(updates.len());
    let mut uncounted = Vec::with_capacity(updates.len());
    for (_, u) in updates {
        let (p, a, n) = position_params(u)?;
        periods.push(p);
        attempts.push(a);
        uncounted.push(n);
    }
    macro_rules! col {
        ($($f:tt)+) => {
            updates
                .iter()
                .map(|(_, u)| u.$($f)+.clone())
                .collect::<Vec<_>>()
        };
    }
    sqlx::query(
        "UPDATE paycron.subscriptions s
            SET status = u.status, card_id = u.card_id, next_period = u.next_period, next_attempt = u.next_attempt,
                next_due_at = u.next_due_at, dunning_started_at = u.dunning_started_at,
                skip_before = u.skip_before, uncounted_attempts = u.uncounted,
                canceled_at = CASE WHEN u.status = 'canceled' THEN coalesce(s.canceled_at, now()) ELSE s.canceled_at END,
                open_charge_id = NULL,
                -- A price waiting for its period takes over once the subscription reaches it.
                amount_minor = CASE WHEN u.next_period >= s.pending_from_period THEN s.pending_amount_minor ELSE s.amount_minor END,
                currency = CASE WHEN u.next_period >= s.pending_from_period THEN s.pending_currency ELSE s.currency END,
                pending_amount_minor = CASE WHEN u.next_period >= s.pending_from_period THEN NULL ELSE s.pending_amount_minor END,
                pending_currency = CASE WHEN u.next_period >= s.pending_from_period THEN NULL ELSE s.pending_currency END,
                pending_from_period = CASE WHEN u.next_period >= s.pending_from_period THEN NULL ELSE s.pending_from_period END,
                updated_at = now()
           FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::int[], $5::int[], $6::timestamptz[], $7::timestamptz[], $8::timestamptz[], $9::int[])
                AS u(id, status, card_id, next_period, next_attempt, next_due_at, dunning_started_at, skip_before, uncounted)
          WHERE s.id = u.id",
    )
    .bind(updates.iter().map(|(id, _)| *id).collect::<Vec<_>>())
    .bind(col!(state.status))
    .bind(col!(card_id))
    .bind(periods)
    .bind(attempts)
    .bind(col!(state.due))
    .bind(col!(state.dunning_started_at))
    .bind(col!(state.skip_before))
    .bind(uncounted)
    .execute(conn)
    .await?;
    Ok(())
}

/// Subscriptions due at `now` and the oldest due time among them (metrics).
///
/// # Errors
/// [`StoreError`].
pub async fn due_stats(pool: &PgPool, now: DateTime<Utc>) -> Result<(i64, Option<DateTime<Utc>>)> {
    Ok(sqlx::query_as(
        "SELECT count(*), min(next_due_at) FROM paycron.subscriptions
          WHERE status IN ('trialing', 'active', 'past_due') AND next_due_at <= $1",
    )
    .bind(now)
    .fetch_one(pool)
    .await?)
}

/// Clears the open charge of subscriptions whose charge was resolved or withdrawn, given as
/// (subscription, charge) pairs (found by primary key).
///
/// # Errors
/// [`StoreError`].
pub async fn close_charges(
    conn: &mut PgConnection,
    pairs: &[(SubscriptionId, ChargeId)],
) -> Result<()> {
    if pairs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE paycron.subscriptions s SET open_charge_id = NULL
           FROM UNNEST($1::uuid[], $2::uuid[]) AS t(sub, charge)
          WHERE s.id = t.sub AND s.open_charge_id = t.charge",
    )
    .bind(pairs.iter().map(|p| p.0).collect::<Vec<_>>())
    .bind(pairs.iter().map(|p| p.1).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}

/// What `paycron.subscription()` (the app's read function) says about a subscription, as JSON
/// (the CLI prints the same fields the business's app reads).
///
/// # Errors
/// [`super::StoreError`].
pub async fn app_view(
    conn: &mut PgConnection,
    id: SubscriptionId,
) -> Result<Option<serde_json::Value>> {
    Ok(
        sqlx::query_scalar("SELECT to_jsonb(s) FROM paycron.subscription($1) s")
            .bind(id)
            .fetch_optional(conn)
            .await?,
    )
}

/// Changes a subscription's price from the next period that begins after `now` (or the
/// database's clock) through `paycron.change_price`; returns its status.
///
/// # Errors
/// [`StoreError::Rejected`] / [`StoreError::NotFound`].
pub async fn change_price(
    conn: &mut PgConnection,
    id: SubscriptionId,
    money: Money,
    now: Option<DateTime<Utc>>,
) -> Result<String> {
    Ok(
        sqlx::query_scalar("SELECT paycron.change_price($1, $2, $3, 'next_period', $4)")
            .bind(id)
            .bind(money.minor())
            .bind(money.currency())
            .bind(now)
            .fetch_one(conn)
            .await?,
    )
}
