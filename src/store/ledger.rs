//! The ledger: one append-only entry per attempt outcome, with balanced double-entry
//! postings for money taken, and the export the contract fixes.
//!
//! The database refuses UPDATE, DELETE and TRUNCATE on these tables and checks at commit that
//! each entry's postings sum to zero; `UNIQUE (charge_id)` makes recording an outcome twice a
//! no-op.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::Result;
use super::charges::ChargeRow;

/// The account money taken from a customer's card sits in until Square pays it out.
pub const ACCOUNT_CLEARING: &str = "assets:square_clearing";
/// The revenue account credited by a successful charge.
pub const ACCOUNT_REVENUE: &str = "revenue:subscriptions";

/// Records resolved charges' outcomes (entries, and balanced postings for money taken) in
/// one statement; an outcome already recorded is skipped. Returns how many were new.
///
/// # Errors
/// [`super::StoreError`].
pub async fn record_many(
    conn: &mut PgConnection,
    charges: &[&ChargeRow],
    recorded_at: DateTime<Utc>,
) -> Result<usize> {
    if charges.is_empty() {
        return Ok(0);
    }
    macro_rules! col {
        ($f:ident) => {
            charges.iter().map(|c| c.$f.clone()).collect::<Vec<_>>()
        };
    }
    // One statement: the entries, and the postings for money taken (debit clearing, credit
    // revenue) built from the rows just inserted, never from a scan of the ledger.
    let (entries,): (i64,) = sqlx::query_as(
        "WITH e AS (
           INSERT INTO paycron.ledger_entries (charge_id, subscription_id, customer_id, period_start, attempt, status,
                  decline_code, amount_minor, currency, provider_payment_id, recorded_at)
           SELECT t.*, $11 FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::timestamptz[], $5::int[], $6::text[],
                  $7::text[], $8::bigint[], $9::text[], $10::text[])
                  AS t(charge_id, subscription_id, customer_id, period_start, attempt, status, decline_code,
                       amount_minor, currency, provider_payment_id)
           ON CONFLICT (charge_id, kind, refund_id, dispute_id) DO NOTHING
           RETURNING id, status, amount_minor, currency),
         p AS (
           INSERT INTO paycron.ledger_postings (entry_id, account, amount_minor, currency)
           SELECT e.id, a.account, a.sign * e.amount_minor, e.currency
             FROM e CROSS JOIN (VALUES ($12, 1), ($13, -1)) AS a(account, sign)
            WHERE e.status = 'succeeded')
         SELECT count(*) FROM e",
    )
    .bind(col!(id))
    .bind(col!(subscription_id))
    .bind(col!(customer_id))
    .bind(col!(period_start))
    .bind(col!(attempt))
    .bind(col!(status))
    .bind(col!(decline_code))
    .bind(charges.iter().map(|c| c.money.minor()).collect::<Vec<_>>())
    .bind(charges.iter().map(|c| c.money.currency()).collect::<Vec<_>>())
    .bind(col!(provider_payment_id))
    .bind(recorded_at)
    .bind(ACCOUNT_CLEARING)
    .bind(ACCOUNT_REVENUE)
    .fetch_one(conn)
    .await?;
    Ok(usize::try_from(entries).unwrap_or(0))
}

/// One line of `paycron ledger export`: the contract's keys, `kind`, and for money going back
/// the refund's or dispute's ids. A refund or dispute line carries its charge's keys
/// (`charge_id`, `period_start`, `attempt`, ...) and the payment it concerns.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct ExportRow {
    /// Charge id.
    pub charge_id: Uuid,
    /// Subscription id.
    pub subscription_id: Uuid,
    /// Square customer id.
    pub customer_id: String,
    /// RFC 3339 UTC.
    pub period_start: String,
    /// Attempt number.
    pub attempt: i32,
    /// succeeded | declined | failed | pending | needs_review.
    pub status: String,
    /// Decline code, if any.
    pub decline_code: Option<String>,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// Square payment id, if taken.
    pub provider_payment_id: Option<String>,
    /// RFC 3339 UTC: when the outcome was recorded (for pending: when the charge was written).
    pub recorded_at: String,
    /// charge | refund | dispute_hold | dispute_won | dispute_lost.
    pub kind: String,
    /// paycron's refund id (refund lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refund_id: Option<Uuid>,
    /// Square's refund id, once Square accepted it (refund lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider_refund_id: Option<String>,
    /// Square's dispute id (dispute lines).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispute_id: Option<String>,
}

/// Every charge attempt with its recorded outcome (or `pending`), in the order written.
///
/// # Errors
/// [`super::StoreError`].
pub async fn export(
    pool: &PgPool,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
) -> Result<Vec<ExportRow>> {
    const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";
    const DAY: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'";
    Ok(sqlx::query_as(sqlf!(
        "SELECT kind, charge_id, subscription_id, customer_id, period_start, attempt, status, decline_code,
                amount_minor, currency, provider_payment_id, recorded_at, refund_id, provider_refund_id, dispute_id
           FROM (
         SELECT 'charge' AS kind, c.id AS charge_id, c.subscription_id, c.customer_id,
                to_char(c.period_start AT TIME ZONE 'UTC', {DAY}) AS period_start,
                c.attempt, coalesce(e.status, CASE WHEN c.status = 'needs_review' THEN 'needs_review' ELSE 'pending' END) AS status,
                coalesce(e.decline_code, c.decline_code) AS decline_code,
                c.amount_minor, c.currency, e.provider_payment_id,
                to_char(coalesce(e.recorded_at, c.created_at) AT TIME ZONE 'UTC', {TS}) AS recorded_at,
                NULL::uuid AS refund_id, NULL::text AS provider_refund_id, NULL::text AS dispute_id,
                c.created_at AS sort_at, c.period_start AS sort_period, c.id::text AS sort_id,
                coalesce(e.recorded_at, c.created_at) AS at
           FROM paycron.charges c LEFT JOIN paycron.ledger_entries e ON e.charge_id = c.id AND e.kind = 'charge'
         UNION ALL
         SELECT 'refund', c.id, c.subscription_id, c.customer_id,
                to_char(c.period_start AT TIME ZONE 'UTC', {DAY}), c.attempt,
                coalesce(e.status, 'pending'), coalesce(e.decline_code, r.failure_code),
                r.amount_minor, r.currency, r.provider_payment_id,
                to_char(coalesce(e.recorded_at, r.created_at) AT TIME ZONE 'UTC', {TS}),
                r.id, r.provider_refund_id, NULL,
                r.created_at, c.period_start, r.id::text, coalesce(e.recorded_at, r.created_at)
           FROM paycron.refunds r JOIN paycron.charges c ON c.id = r.charge_id
           LEFT JOIN paycron.ledger_entries e ON e.refund_id = r.id
         UNION ALL
         SELECT e.kind, e.charge_id, e.subscription_id, e.customer_id,
                to_char(e.period_start AT TIME ZONE 'UTC', {DAY}), e.attempt, e.status, NULL,
                e.amount_minor, e.currency, d.provider_payment_id,
                to_char(e.recorded_at AT TIME ZONE 'UTC', {TS}),
                NULL, NULL, e.dispute_id,
                e.recorded_at, e.period_start, e.id::text, e.recorded_at
           FROM paycron.ledger_entries e JOIN paycron.disputes d ON d.id = e.dispute_id
          WHERE e.kind LIKE 'dispute%') lines
          WHERE ($1::timestamptz IS NULL OR at >= $1) AND ($2::timestamptz IS NULL OR at < $2)
          ORDER BY sort_at, sort_period, attempt, sort_id"
    ))
    .bind(since)
    .bind(until)
    .fetch_all(pool)
    .await?)
}

/// The Square payment ids of the ledger's successes (the exactly-once audit).
///
/// # Errors
/// [`super::StoreError`].
pub async fn success_payment_ids(pool: &PgPool) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar(
        "SELECT provider_payment_id FROM paycron.ledger_entries WHERE kind = 'charge' AND status = 'succeeded'",
    )
    .fetch_all(pool)
    .await?)
}

/// Sum of each account's postings by currency (they add up to zero overall).
///
/// # Errors
/// [`super::StoreError`].
pub async fn balances(pool: &PgPool) -> Result<Vec<(String, String, i64)>> {
    Ok(sqlx::query_as(
        "SELECT account, currency, sum(amount_minor)::int8 FROM paycron.ledger_postings GROUP BY 1, 2 ORDER BY 1, 2",
    )
    .fetch_all(pool)
    .await?)
}

/// One month of billing, by period start (UTC), for summaries.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct MonthRow {
    /// `YYYY-MM`.
    pub month: String,
    /// Currency.
    pub currency: String,
    /// Successful charges.
    pub succeeded: i64,
    /// Declined attempts.
    pub declined: i64,
    /// Failed attempts.
    pub failed: i64,
    /// Successes after at least one decline in the same period.
    pub recovered: i64,
    /// Subscriptions that dunning ended (unpaid or canceled) in this month's periods.
    pub ended: i64,
    /// Minor units taken.
    pub revenue_minor: i64,
    /// Minor units given back by completed refunds of this month's periods.
    pub refunded_minor: i64,
    /// Disputes opened (money held) against this month's periods.
    pub disputes: i64,
}

/// Monthly figures by period start.
///
/// # Errors
/// [`super::StoreError`].
pub async fn monthly(pool: &PgPool) -> Result<Vec<MonthRow>> {
    Ok(sqlx::query_as(
        "WITH m AS (
           SELECT to_char(e.period_start AT TIME ZONE 'UTC', 'YYYY-MM') AS month, e.currency, e.status, e.attempt, e.amount_minor, e.charge_id, e.kind
             FROM paycron.ledger_entries e)
         SELECT month, currency,
                count(*) FILTER (WHERE kind = 'charge' AND status = 'succeeded') AS succeeded,
                count(*) FILTER (WHERE kind = 'charge' AND status = 'declined') AS declined,
                count(*) FILTER (WHERE kind = 'charge' AND status = 'failed') AS failed,
                count(*) FILTER (WHERE kind = 'charge' AND status = 'succeeded' AND attempt > 1) AS recovered,
                (SELECT count(*) FROM paycron.events v JOIN paycron.charges c ON c.id = v.charge_id
                  WHERE v.type IN ('subscription_unpaid', 'subscription_canceled')
                    AND to_char(c.period_start AT TIME ZONE 'UTC', 'YYYY-MM') = m.month) AS ended,
                coalesce(sum(amount_minor) FILTER (WHERE kind = 'charge' AND status = 'succeeded'), 0)::int8 AS revenue_minor,
                coalesce(sum(amount_minor) FILTER (WHERE kind = 'refund' AND status = 'succeeded'), 0)::int8 AS refunded_minor,
                count(*) FILTER (WHERE kind = 'dispute_hold') AS disputes
           FROM m GROUP BY month, currency ORDER BY month, currency",
    )
    .fetch_all(pool)
    .await?)
}
