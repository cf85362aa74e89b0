//! The overview `paycron status` prints: where billing stands, in one read-only statement.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::Result;

/// How paycron is doing.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct Overview {
    /// Subscriptions by status, e.g. `{"active": 255, "unpaid": 36}`.
    pub subscriptions: serde_json::Value,
    /// Subscriptions due now.
    pub due_now: i64,
    /// When the longest-waiting due subscription fell due.
    pub oldest_due_at: Option<DateTime<Utc>>,
    /// Falling due within the next hour.
    pub due_next_hour: i64,
    /// Falling due within the next day.
    pub due_next_day: i64,
    /// The newest migration applied to this database.
    pub schema_version: Option<i64>,
    /// Subscriptions set aside until an operator releases them.
    pub quarantined: i64,
    /// Charges written and not yet answered (in flight, or waiting for recovery).
    pub charges_pending: i64,
    /// Charges waiting for an operator (`charges review`).
    pub charges_in_review: i64,
    /// When a charge outcome was last recorded.
    pub last_charge_recorded_at: Option<DateTime<Utc>>,
    /// When sync-cards last ran (daemon).
    pub last_sync_cards_at: Option<DateTime<Utc>>,
    /// When reconcile last ran (daemon).
    pub last_reconcile_at: Option<DateTime<Utc>>,
    /// Outbound webhook deliveries waiting.
    pub webhook_backlog: i64,
    /// When the oldest of them was created.
    pub webhook_oldest_pending_at: Option<DateTime<Utc>>,
    /// Refunds not settled yet.
    pub refunds_pending: i64,
    /// Disputes not closed.
    pub disputes_open: i64,
    /// The soonest an open dispute must be answered.
    pub next_dispute_due_at: Option<DateTime<Utc>>,
    /// Enrollments at the counter whose sale has not happened yet (links still valid).
    pub enrollments_open: i64,
    /// Enrollments paid at the counter whose saved card has not come.
    pub enrollments_awaiting_card: i64,
    /// Of those, the ones past their wait (`enrollment_card_missing` announced).
    pub enrollments_card_missing: i64,
}

/// The overview as of `now`.
///
/// # Errors
/// [`super::StoreError`].
pub async fn overview(pool: &PgPool, now: DateTime<Utc>) -> Result<Overview> {
    Ok(sqlx::query_as(
        "SELECT
           (SELECT coalesce(jsonb_object_agg(status, n), '{}'::jsonb)
              FROM (SELECT status, count(*) AS n FROM paycron.subscriptions GROUP BY status) s) AS subscriptions,
           (SELECT count(*) FROM paycron.subscriptions
             WHERE status IN ('trialing', 'active', 'past_due') AND next_due_at <= $1) AS due_now,
           (SELECT min(next_due_at) FROM paycron.subscriptions
             WHERE status IN ('trialing', 'active', 'past_due') AND next_due_at <= $1) AS oldest_due_at,
           (SELECT count(*) FROM paycron.subscriptions WHERE status IN ('trialing', 'active', 'past_due')
               AND next_due_at > $1 AND next_due_at <= $1 + interval '1 hour') AS due_next_hour,
           (SELECT count(*) FROM paycron.subscriptions WHERE status IN ('trialing', 'active', 'past_due')
               AND next_due_at > $1 AND next_due_at <= $1 + interval '1 day') AS due_next_day,
           (SELECT max(version) FROM public._sqlx_migrations WHERE success) AS schema_version,
           (SELECT count(*) FROM paycron.subscriptions WHERE needs_attention IS NOT NULL) AS quarantined,
           (SELECT count(*) FROM paycron.charges WHERE status = 'pending') AS charges_pending,
           (SELECT count(*) FROM paycron.charges WHERE status = 'needs_review') AS charges_in_review,
           (SELECT max(recorded_at) FROM paycron.ledger_entries WHERE kind = 'charge') AS last_charge_recorded_at,
           (SELECT max(started_at) FROM paycron.task_runs WHERE task = 'sync-cards') AS last_sync_cards_at,
           (SELECT max(started_at) FROM paycron.task_runs WHERE task = 'reconcile') AS last_reconcile_at,
           (SELECT count(*) FROM paycron.webhook_deliveries WHERE status = 'pending') AS webhook_backlog,
           (SELECT min(created_at) FROM paycron.webhook_deliveries WHERE status = 'pending') AS webhook_oldest_pending_at,
           (SELECT count(*) FROM paycron.refunds WHERE status = 'pending') AS refunds_pending,
           (SELECT count(*) FROM paycron.disputes
             WHERE state NOT IN ('WON', 'LOST', 'ACCEPTED', 'INQUIRY_CLOSED')) AS disputes_open,
           (SELECT min(due_at) FROM paycron.disputes
             WHERE state NOT IN ('WON', 'LOST', 'ACCEPTED', 'INQUIRY_CLOSED')) AS next_dispute_due_at,
           (SELECT count(*) FROM paycron.enrollments WHERE status = 'open' AND expires_at > $1) AS enrollments_open,
           (SELECT count(*) FROM paycron.enrollments WHERE status = 'paid') AS enrollments_awaiting_card,
           (SELECT count(*) FROM paycron.enrollments WHERE status = 'paid' AND card_missing_at IS NOT NULL)
             AS enrollments_card_missing",
    )
    .bind(now)
    .fetch_one(pool)
    .await?)
}
