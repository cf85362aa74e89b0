//! Enrollments at the counter: written by `paycron.enroll()` (the CLI and the business's app
//! alike), found by the SHA-256 of their link's token, and moved by what Square confirms.
//!
//! Invariants, held by the database: a link's token is never stored; one enrollment per
//! subscription; the first period's sale is recorded once — under the enrollment's row lock,
//! fenced on `status = 'open'`, with the charge (source `counter`), its ledger entry and
//! postings, the subscription's position and the events in one transaction, and Square's
//! payment id unique across charges and enrollments; whatever brings a new card of the
//! customer completes a paid enrollment (a trigger on cards).

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::Result;
use super::charges::ChargeRow;
use super::events::{self, NewEvent};
use crate::domain::{ChargeId, CustomerId, IdempotencyKey, SubscriptionId};

/// What `paycron.enroll()` is asked for.
#[derive(Clone, Debug)]
pub struct EnrollPlan {
    /// Square customer (known to paycron).
    pub customer_id: String,
    /// Minor units per period.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// day | week | month | year.
    pub interval_unit: String,
    /// Units per period.
    pub interval_count: i32,
    /// The first period's start (now when `None`).
    pub anchor: Option<DateTime<Utc>>,
    /// IANA zone of the calendar.
    pub time_zone: String,
    /// Periods to bill in all (the first, paid at the counter, included).
    pub cycles: Option<i32>,
    /// The business's own reference (idempotent).
    pub external_ref: Option<String>,
    /// Bill no period starting at or after this instant.
    pub ends_at: Option<DateTime<Utc>>,
    /// How long the link may start the sale.
    pub expires_in: std::time::Duration,
    /// How long after the sale the card may take before `enrollment_card_missing`.
    pub card_wait: std::time::Duration,
    /// The clock (`None`: the database's).
    pub now: Option<DateTime<Utc>>,
}

/// A started enrollment: the token is shown once.
#[derive(Clone, Debug, Serialize)]
pub struct Started {
    /// The subscription awaiting its card.
    pub subscription_id: Uuid,
    /// The link's secret.
    #[serde(skip)]
    pub token: String,
    /// Until when the link may start the sale.
    pub expires_at: DateTime<Utc>,
}

/// Starts an enrollment through `paycron.enroll()`.
///
/// # Errors
/// [`super::StoreError`] (the function's refusals as `Rejected`/`NotFound`).
pub async fn enroll(pool: &PgPool, plan: &EnrollPlan) -> Result<Started> {
    let interval = |d: std::time::Duration| sqlx::postgres::types::PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    };
    let (subscription_id, token, expires_at): (Uuid, String, DateTime<Utc>) = sqlx::query_as(
        "SELECT subscription_id, token, expires_at
           FROM paycron.enroll($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(&plan.customer_id)
    .bind(plan.amount_minor)
    .bind(&plan.currency)
    .bind(&plan.interval_unit)
    .bind(plan.interval_count)
    .bind(plan.anchor)
    .bind(&plan.time_zone)
    .bind(plan.cycles)
    .bind(&plan.external_ref)
    .bind(plan.ends_at)
    .bind(interval(plan.expires_in))
    .bind(interval(plan.card_wait))
    .bind(plan.now)
    .fetch_one(pool)
    .await?;
    Ok(Started {
        subscription_id,
        token,
        expires_at,
    })
}

/// An enrollment with its plan and, once saved, its card.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct EnrollmentView {
    /// Id.
    pub id: Uuid,
    /// The subscription.
    pub subscription_id: Uuid,
    /// Square customer.
    pub customer_id: String,
    /// open | paid | completed | expired | canceled.
    pub status: String,
    /// Until when the link may start the sale.
    pub expires_at: DateTime<Utc>,
    /// When Square was last asked about it.
    pub checked_at: Option<DateTime<Utc>>,
    /// The last thing Point of Sale reported that was not a sale.
    pub last_error: Option<String>,
    /// The first period's charge, once paid.
    pub charge_id: Option<Uuid>,
    /// Square's payment of the first period.
    pub provider_payment_id: Option<String>,
    /// When the first period was paid.
    pub paid_at: Option<DateTime<Utc>>,
    /// When `enrollment_card_missing` was announced.
    pub card_missing_at: Option<DateTime<Utc>>,
    /// When the enrollment began.
    pub created_at: DateTime<Utc>,
    /// Cards the customer had before.
    pub known_cards: Vec<String>,
    /// Minor units per period.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// day | week | month | year.
    pub interval_unit: String,
    /// Units per period.
    pub interval_count: i32,
    /// The first period's start.
    pub anchor: DateTime<Utc>,
    /// IANA zone.
    pub time_zone: String,
    /// The subscription's status.
    pub subscription_status: String,
    /// When the next period is due.
    pub next_due_at: Option<DateTime<Utc>>,
    /// The card saved at the counter.
    pub card_id: Option<String>,
    /// Its brand.
    pub card_brand: Option<String>,
    /// Its last four digits.
    pub last_4: Option<String>,
}

const VIEW: &str = "SELECT e.id, e.subscription_id, e.customer_id, e.status, e.expires_at, e.checked_at,
        e.last_error, e.charge_id, e.provider_payment_id, e.paid_at, e.card_missing_at, e.created_at,
        e.known_cards, s.amount_minor, s.currency, s.interval_unit, s.interval_count, s.anchor,
        s.time_zone, s.status AS subscription_status, s.next_due_at, e.card_id, k.card_brand, k.last_4
   FROM paycron.enrollments e
   JOIN paycron.subscriptions s ON s.id = e.subscription_id
   LEFT JOIN paycron.cards k ON k.id = e.card_id";

/// The enrollment a link's token opens, if any.
///
/// # Errors
/// [`super::StoreError`].
pub async fn by_token(pool: &PgPool, token: &str) -> Result<Option<EnrollmentView>> {
    Ok(sqlx::query_as(sqlf!(
        "{VIEW} WHERE e.token_sha256 = sha256(convert_to($1, 'UTF8'))"
    ))
    .bind(token)
    .fetch_optional(pool)
    .await?)
}

/// One enrollment by id.
///
/// # Errors
/// [`super::StoreError`].
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<EnrollmentView>> {
    Ok(sqlx::query_as(sqlf!("{VIEW} WHERE e.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// Enrollments still waiting for their sale or their card, oldest first.
///
/// # Errors
/// [`super::StoreError`].
pub async fn waiting(pool: &PgPool) -> Result<Vec<EnrollmentView>> {
    Ok(sqlx::query_as(sqlf!(
        "{VIEW} WHERE e.status IN ('open', 'paid') ORDER BY e.created_at, e.id"
    ))
    .fetch_all(pool)
    .await?)
}

/// Every enrollment, newest first (`paycron enrollments list`).
///
/// # Errors
/// [`super::StoreError`].
pub async fn list(pool: &PgPool) -> Result<Vec<EnrollmentView>> {
    Ok(
        sqlx::query_as(sqlf!("{VIEW} ORDER BY e.created_at DESC, e.id DESC"))
            .fetch_all(pool)
            .await?,
    )
}

/// Claims the right to ask Square about an enrollment now: false when someone asked less than
/// `gap` ago (the page polls; Square is not asked once per reload).
///
/// # Errors
/// [`super::StoreError`].
pub async fn claim_check(pool: &PgPool, id: Uuid, gap: std::time::Duration) -> Result<bool> {
    let gap = sqlx::postgres::types::PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(gap.as_micros()).unwrap_or(i64::MAX),
    };
    Ok(sqlx::query_scalar::<_, bool>(
        "UPDATE paycron.enrollments SET checked_at = now()
          WHERE id = $1 AND (checked_at IS NULL OR checked_at <= now() - $2::interval)
         RETURNING true",
    )
    .bind(id)
    .bind(gap)
    .fetch_optional(pool)
    .await?
    .unwrap_or(false))
}

/// Notes what Point of Sale reported instead of a sale (an open enrollment only).
///
/// # Errors
/// [`super::StoreError`].
pub async fn set_error(pool: &PgPool, id: Uuid, code: &str) -> Result<()> {
    sqlx::query(
        "UPDATE paycron.enrollments SET last_error = $2, updated_at = now()
          WHERE id = $1 AND status = 'open'",
    )
    .bind(id)
    .bind(code)
    .execute(pool)
    .await?;
    Ok(())
}

/// A sale Square confirmed for an enrollment.
#[derive(Clone, Debug)]
pub struct ConfirmedSale {
    /// Square's payment id.
    pub payment_id: String,
    /// The order it pays, when known.
    pub order_id: Option<String>,
    /// How it was found: `order` (the callback's transaction id) or `payments` (ListPayments).
    pub found_by: &'static str,
    /// When Square took it.
    pub paid_at: DateTime<Utc>,
}

/// What recording a sale did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Recorded {
    /// Recorded now: the first period is paid (and `completed` when the card was already on
    /// file).
    Now {
        /// The charge.
        charge_id: Uuid,
        /// The card arrived first.
        completed: bool,
    },
    /// This payment was recorded before (a reloaded or repeated callback).
    Already,
    /// The enrollment is not open (paid by another payment, expired or canceled).
    Closed(String),
}

/// Records the first period as paid at the counter: the charge (source `counter`), its ledger
/// entry and postings through [`super::ledger::record_many`], the subscription's next period,
/// the enrollment as paid, `payment_succeeded` and `enrollment_paid`, and the card if it came
/// first — in one transaction, under the enrollment's row lock.
///
/// # Errors
/// [`super::StoreError`].
pub async fn record_sale(
    pool: &PgPool,
    id: Uuid,
    sale: &ConfirmedSale,
    next_due_at: DateTime<Utc>,
) -> Result<Recorded> {
    let mut tx = super::begin(pool).await?;
    let row: Option<(String, Option<String>, Uuid, String)> = sqlx::query_as(
        "SELECT status, provider_payment_id, subscription_id, customer_id
           FROM paycron.enrollments WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((status, recorded, subscription_id, customer)) = row else {
        return Ok(Recorded::Closed("unknown".into()));
    };
    if recorded.as_deref() == Some(sale.payment_id.as_str()) {
        return Ok(Recorded::Already);
    }
    if status != "open" {
        return Ok(Recorded::Closed(status));
    }
    let customer_id: CustomerId = customer
        .parse()
        .map_err(|e: crate::domain::ids::IdError| super::StoreError::Rejected(e.to_string()))?;
    let charge = insert_counter_charge(&mut tx, SubscriptionId(subscription_id), sale).await?;
    super::ledger::record_many(&mut tx, &[&charge], Utc::now()).await?;
    sqlx::query(
        "UPDATE paycron.subscriptions SET next_period = 1, next_attempt = 1, next_due_at = $2,
                updated_at = now()
          WHERE id = $1",
    )
    .bind(subscription_id)
    .bind(next_due_at)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE paycron.enrollments
            SET status = 'paid', charge_id = $2, provider_payment_id = $3, paid_at = $4,
                last_error = NULL, updated_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(charge.id.0)
    .bind(&sale.payment_id)
    .bind(sale.paid_at)
    .execute(&mut *tx)
    .await?;
    let payload = serde_json::json!({
        "charge_id": charge.id,
        "period_start": charge.period_start,
        "attempt": charge.attempt,
        "amount_minor": charge.money.minor(),
        "currency": charge.money.currency(),
        "provider_payment_id": sale.payment_id,
        "decline_code": null,
        "source": "counter",
    });
    let event = |kind: &'static str, payload: serde_json::Value| NewEvent {
        kind,
        subscription_id: Some(SubscriptionId(subscription_id)),
        customer_id: Some(customer_id.clone()),
        charge_id: Some(charge.id),
        payload,
    };
    events::emit_many(
        &mut tx,
        &[
            event("payment_succeeded", payload),
            event(
                "enrollment_paid",
                serde_json::json!({
                    "provider_payment_id": sale.payment_id,
                    "order_id": sale.order_id,
                    "found_by": sale.found_by,
                }),
            ),
        ],
    )
    .await?;
    let completed: bool = sqlx::query_scalar("SELECT paycron.complete_enrollment($1)")
        .bind(id)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Recorded::Now {
        charge_id: charge.id.0,
        completed,
    })
}

async fn insert_counter_charge(
    conn: &mut PgConnection,
    subscription: SubscriptionId,
    sale: &ConfirmedSale,
) -> Result<ChargeRow> {
    let key = IdempotencyKey::from_string(format!("{}-counter", subscription.0.simple()))
        .map_err(|e| super::StoreError::Rejected(e.to_string()))?;
    // What the counter charge rests on, kept as its "request": Square's ids, never a card.
    let body = serde_json::json!({
        "source": "counter",
        "payment_id": sale.payment_id,
        "order_id": sale.order_id,
        "found_by": sale.found_by,
    })
    .to_string();
    let fingerprint = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(body.as_bytes()))
    };
    Ok(sqlx::query_as(sqlf!(
        "INSERT INTO paycron.charges (id, subscription_id, period, period_start, attempt, idempotency_key,
                customer_id, card_id, amount_minor, currency, status, request_body, request_fingerprint,
                provider_payment_id, source, resolved_at)
         SELECT $1, s.id, 0, s.anchor, 1, $3, s.customer_id, NULL, s.amount_minor, s.currency,
                'succeeded', $4, $5, $6, 'counter', now()
           FROM paycron.subscriptions s WHERE s.id = $2
         RETURNING {}",
        super::charges::COLUMNS
    ))
    .bind(ChargeId::new().0)
    .bind(subscription.0)
    .bind(key.as_str())
    .bind(body)
    .bind(fingerprint)
    .bind(&sale.payment_id)
    .fetch_one(conn)
    .await?)
}

/// Expires unpaid links past their expiry and announces paid enrollments whose card is late:
/// `(expired, card_missing)`.
///
/// # Errors
/// [`super::StoreError`].
pub async fn sweep(pool: &PgPool, now: Option<DateTime<Utc>>) -> Result<(i32, i32)> {
    Ok(
        sqlx::query_as("SELECT expired, card_missing FROM paycron.sweep_enrollments($1)")
            .bind(now)
            .fetch_one(pool)
            .await?,
    )
}
