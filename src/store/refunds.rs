//! Refunds: one row per refund asked of Square, written by `paycron.refund_charge()` (the CLI
//! and the business's app alike) before any call, with its key and its exact RefundPayment body.
//!
//! The database holds the cap (the refunds of a charge that are not rejected or failed never add
//! up to more than it, decided under the charge's row lock), what a refund asked for never
//! changes, and a settled refund never moves again. Settling writes the status, the ledger entry
//! (balanced postings for money given back) and the event in one transaction, fenced on
//! `status = 'pending'`, so a settlement recorded twice is a no-op.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::Result;
use crate::domain::refund::RefundStatus;
use crate::domain::{ChargeId, CustomerId, RefundId, SubscriptionId};

/// The account a refund debits (revenue given back).
pub const ACCOUNT_REFUNDS: &str = "revenue:refunds";

/// A refund with what its charge says about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RefundRow {
    /// paycron's id.
    pub id: RefundId,
    /// The charge refunded.
    pub charge_id: ChargeId,
    /// Its subscription.
    pub subscription_id: SubscriptionId,
    /// Its customer.
    pub customer_id: CustomerId,
    /// The Square payment refunded.
    pub provider_payment_id: String,
    /// The key sent to Square.
    pub idempotency_key: String,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// Why, as sent to Square.
    pub reason: Option<String>,
    /// Where it stands.
    pub status: RefundStatus,
    /// Square's refund id, once Square accepted it.
    pub provider_refund_id: Option<String>,
    /// Square's error code when it was refused.
    pub failure_code: Option<String>,
    /// The exact body sent (and re-sent).
    #[serde(skip)]
    pub request_body: String,
    /// Sends so far.
    pub sends: i32,
    /// When it was asked for.
    pub created_at: DateTime<Utc>,
}

const COLUMNS: &str = "r.id, r.charge_id, c.subscription_id, c.customer_id, r.provider_payment_id, \
     r.idempotency_key, r.amount_minor, r.currency, r.reason, r.status, r.provider_refund_id, \
     r.failure_code, r.request_body, r.sends, r.created_at";

/// What the caller asks: a refund of `charge`, `amount_minor` (default: what is left), why, and
/// whether the subscription is canceled with it (`now` / `at_period_end`).
#[derive(Clone, Debug, Default)]
pub struct NewRefund {
    /// The charge.
    pub charge_id: Option<ChargeId>,
    /// Minor units; `None`: all that is left.
    pub amount_minor: Option<i64>,
    /// Sent to Square as `reason`.
    pub reason: Option<String>,
    /// `now` or `at_period_end`.
    pub cancel: Option<&'static str>,
}

/// Writes a refund through `paycron.refund_charge()` in the caller's transaction.
///
/// # Errors
/// [`super::StoreError::Rejected`] when the charge did not succeed or the amount is more than
/// what is left (nothing written), [`super::StoreError::NotFound`] for an unknown charge.
pub async fn create(
    conn: &mut PgConnection,
    charge: ChargeId,
    new: &NewRefund,
) -> Result<RefundId> {
    let id: Uuid = sqlx::query_scalar("SELECT paycron.refund_charge($1, $2, $3, $4)")
        .bind(charge)
        .bind(new.amount_minor)
        .bind(new.reason.as_deref())
        .bind(new.cancel)
        .fetch_one(conn)
        .await?;
    Ok(RefundId(id))
}

/// One refund.
///
/// # Errors
/// [`super::StoreError`].
pub async fn get(conn: &mut PgConnection, id: RefundId) -> Result<Option<RefundRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.refunds r JOIN paycron.charges c ON c.id = r.charge_id WHERE r.id = $1"
    ))
    .bind(id)
    .fetch_optional(conn)
    .await?)
}

/// The refund Square knows as `provider_refund_id`.
///
/// # Errors
/// [`super::StoreError`].
pub async fn by_provider_id(
    conn: &mut PgConnection,
    provider_refund_id: &str,
) -> Result<Option<RefundRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.refunds r JOIN paycron.charges c ON c.id = r.charge_id
          WHERE r.provider_refund_id = $1"
    ))
    .bind(provider_refund_id)
    .fetch_optional(conn)
    .await?)
}

/// Leases pending refunds nobody is working on (never leased, or the lease ran out) to
/// `owner`, oldest first; with `only`, that refund alone. A refund Square accepted and has not
/// settled is among them: it is looked up, never re-sent.
///
/// # Errors
/// [`super::StoreError`].
pub async fn claim(
    conn: &mut PgConnection,
    wall_now: DateTime<Utc>,
    owner: Uuid,
    locked_until: DateTime<Utc>,
    limit: i64,
    only: Option<RefundId>,
) -> Result<Vec<RefundRow>> {
    Ok(sqlx::query_as(sqlf!(
        "WITH open AS (
           SELECT id FROM paycron.refunds
            WHERE status = 'pending' AND (locked_until IS NULL OR locked_until < $1)
              AND ($5::uuid IS NULL OR id = $5)
            ORDER BY created_at, id
            LIMIT $4
            FOR UPDATE SKIP LOCKED),
         leased AS (
           UPDATE paycron.refunds r SET lease_owner = $2, locked_until = $3
             FROM open WHERE r.id = open.id
           RETURNING r.*)
         SELECT {} FROM leased r JOIN paycron.charges c ON c.id = r.charge_id
          ORDER BY r.created_at, r.id",
        COLUMNS
    ))
    .bind(wall_now)
    .bind(owner)
    .bind(locked_until)
    .bind(limit)
    .bind(only)
    .fetch_all(conn)
    .await?)
}

/// Counts a send of a leased refund (before the call, so a crash mid-call still counts).
///
/// # Errors
/// [`super::StoreError`].
pub async fn count_send(conn: &mut PgConnection, id: RefundId, owner: Uuid) -> Result<()> {
    sqlx::query(
        "UPDATE paycron.refunds SET sends = sends + 1 WHERE id = $1 AND lease_owner = $2 AND status = 'pending'",
    )
    .bind(id)
    .bind(owner)
    .execute(conn)
    .await?;
    Ok(())
}

/// Keeps a refund pending, leased until `until` (an undecided answer, or Square's PENDING),
/// noting Square's refund id when it gave one.
///
/// # Errors
/// [`super::StoreError`].
pub async fn defer(
    conn: &mut PgConnection,
    id: RefundId,
    provider_refund_id: Option<&str>,
    until: DateTime<Utc>,
) -> Result<()> {
    sqlx::query(
        "UPDATE paycron.refunds SET locked_until = $3,
                provider_refund_id = coalesce(provider_refund_id, $2)
          WHERE id = $1 AND status = 'pending'",
    )
    .bind(id)
    .bind(provider_refund_id)
    .bind(until)
    .execute(conn)
    .await?;
    Ok(())
}

/// Settles a pending refund for good: its status, Square's id, the ledger entry (with
/// postings when the money went back) and the `refund_succeeded` / `refund_failed` event, in
/// the caller's transaction. False when it was settled already (nothing written).
///
/// # Errors
/// [`super::StoreError`].
pub async fn settle(
    conn: &mut PgConnection,
    id: RefundId,
    status: RefundStatus,
    provider_refund_id: Option<&str>,
    failure_code: Option<&str>,
    at: DateTime<Utc>,
) -> Result<bool> {
    debug_assert!(status.is_final());
    let settled: Option<RefundRow> = sqlx::query_as(sqlf!(
        "WITH r AS (
           UPDATE paycron.refunds SET status = $2, provider_refund_id = coalesce(provider_refund_id, $3),
                  failure_code = $4, resolved_at = $5, lease_owner = NULL, locked_until = NULL
            WHERE id = $1 AND status = 'pending'
           RETURNING *)
         SELECT {COLUMNS} FROM r JOIN paycron.charges c ON c.id = r.charge_id"
    ))
    .bind(id)
    .bind(status)
    .bind(provider_refund_id)
    .bind(failure_code)
    .bind(at)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = settled else {
        return Ok(false);
    };
    let succeeded = status == RefundStatus::Completed;
    sqlx::query(
        "WITH e AS (
           INSERT INTO paycron.ledger_entries (kind, charge_id, refund_id, subscription_id, customer_id,
                  period_start, attempt, status, decline_code, amount_minor, currency, provider_refund_id, recorded_at)
           SELECT 'refund', c.id, $1, c.subscription_id, c.customer_id, c.period_start, c.attempt,
                  CASE WHEN $2 THEN 'succeeded' ELSE 'failed' END, $3, $4, $5,
                  CASE WHEN $2 THEN $6 END, $7
             FROM paycron.charges c WHERE c.id = $8
           RETURNING id, status, amount_minor, currency)
         INSERT INTO paycron.ledger_postings (entry_id, account, amount_minor, currency)
         SELECT e.id, a.account, a.sign * e.amount_minor, e.currency
           FROM e CROSS JOIN (VALUES ($9, 1), ($10, -1)) AS a(account, sign)
          WHERE e.status = 'succeeded'",
    )
    .bind(r.id)
    .bind(succeeded)
    .bind(failure_code.or(if succeeded { None } else { Some(status.as_str()) }))
    .bind(r.amount_minor)
    .bind(&r.currency)
    .bind(r.provider_refund_id.as_deref())
    .bind(at)
    .bind(r.charge_id)
    .bind(ACCOUNT_REFUNDS)
    .bind(super::ledger::ACCOUNT_CLEARING)
    .execute(&mut *conn)
    .await?;
    super::events::emit(
        conn,
        if succeeded {
            "refund_succeeded"
        } else {
            "refund_failed"
        },
        Some(r.subscription_id.0),
        Some(r.customer_id.as_str()),
        Some(r.charge_id.0),
        serde_json::json!({
            "refund_id": r.id,
            "charge_id": r.charge_id,
            "amount_minor": r.amount_minor,
            "currency": r.currency,
            "status": status,
            "provider_payment_id": r.provider_payment_id,
            "provider_refund_id": r.provider_refund_id,
            "failure_code": failure_code,
            "reason": r.reason,
        }),
    )
    .await?;
    Ok(true)
}

/// Refunds, newest first (at most `limit`).
///
/// # Errors
/// [`super::StoreError`].
pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<RefundRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.refunds r JOIN paycron.charges c ON c.id = r.charge_id
          ORDER BY r.created_at DESC, r.id DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Refunds of the given Square payments (for reconciliation and lookups).
///
/// # Errors
/// [`super::StoreError`].
pub async fn of_payments(pool: &PgPool, payment_ids: &[String]) -> Result<Vec<RefundRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.refunds r JOIN paycron.charges c ON c.id = r.charge_id
          WHERE r.provider_payment_id = ANY($1) ORDER BY r.created_at, r.id"
    ))
    .bind(payment_ids)
    .fetch_all(pool)
    .await?)
}

/// The oldest pending refund of `payment_id` for `amount_minor` that Square's id was never
/// noted for (its answer was lost): the one a webhook about such a refund settles.
///
/// # Errors
/// [`super::StoreError`].
pub async fn unmatched(
    conn: &mut PgConnection,
    payment_id: &str,
    amount_minor: i64,
) -> Result<Option<RefundRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.refunds r JOIN paycron.charges c ON c.id = r.charge_id
          WHERE r.provider_payment_id = $1 AND r.amount_minor = $2 AND r.status = 'pending'
            AND r.provider_refund_id IS NULL
          ORDER BY r.created_at, r.id LIMIT 1 FOR UPDATE OF r"
    ))
    .bind(payment_id)
    .bind(amount_minor)
    .fetch_optional(conn)
    .await?)
}

/// Refunds asked for in `[since, until)`.
///
/// # Errors
/// [`super::StoreError`].
pub async fn in_window(
    pool: &PgPool,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<RefundRow>> {
    Ok(sqlx::query_as(sqlf!(
        "SELECT {COLUMNS} FROM paycron.refunds r JOIN paycron.charges c ON c.id = r.charge_id
          WHERE r.created_at >= $1 AND r.created_at < $2 ORDER BY r.created_at, r.id"
    ))
    .bind(since)
    .bind(until)
    .fetch_all(pool)
    .await?)
}
