//! Disputes (chargebacks) Square reports, and the money they move.
//!
//! One row per dispute, moved forward only by a newer Square `version` (an older webhook is
//! recorded and ignored). Each money movement — the bank holding the amount, the seller winning
//! it back, or losing it — is one ledger entry per dispute and kind (a unique index), with
//! balanced postings, so a replayed or reordered webhook can never book money twice.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::Result;
use crate::domain::ChargeId;
use crate::domain::refund::DisputeMovement;

/// Money the bank holds while a dispute is open.
pub const ACCOUNT_HELD: &str = "assets:held_in_dispute";
/// Money lost to a chargeback.
pub const ACCOUNT_CHARGEBACKS: &str = "expenses:chargebacks";

/// What Square says a dispute is now.
#[derive(Clone, Debug)]
pub struct DisputeReport {
    /// Square's dispute id.
    pub id: String,
    /// The payment disputed.
    pub provider_payment_id: String,
    /// Square's `DisputeState`.
    pub state: String,
    /// Square's `DisputeReason`.
    pub reason: Option<String>,
    /// Disputed amount, minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// When the seller must answer by.
    pub due_at: Option<DateTime<Utc>>,
    /// Square's version of the dispute.
    pub version: Option<i64>,
}

/// A dispute as stored.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct DisputeRow {
    /// Square's dispute id.
    pub id: String,
    /// The paycron charge the disputed payment paid, if it is one.
    pub charge_id: Option<ChargeId>,
    /// The payment disputed.
    pub provider_payment_id: String,
    /// Square's state.
    pub state: String,
    /// Square's reason.
    pub reason: Option<String>,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// Answer by.
    pub due_at: Option<DateTime<Utc>>,
    /// Square's version.
    pub version: Option<i64>,
    /// First reported.
    pub opened_at: DateTime<Utc>,
}

/// What applying a report changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Applied {
    /// First time paycron hears of it.
    Opened,
    /// Moved from the given state.
    Moved {
        /// The state before.
        from: String,
    },
    /// Square said something older (or the same) already: nothing changed.
    Stale,
}

/// Writes `report` unless it is older than what is stored; locks the row for the caller's
/// transaction either way.
///
/// # Errors
/// [`super::StoreError`].
pub async fn apply(
    conn: &mut PgConnection,
    report: &DisputeReport,
    at: DateTime<Utc>,
) -> Result<(Applied, DisputeRow)> {
    let before: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT state, version FROM paycron.disputes WHERE id = $1 FOR UPDATE")
            .bind(&report.id)
            .fetch_optional(&mut *conn)
            .await?;
    let applied = match &before {
        None => Applied::Opened,
        Some((_, Some(v))) if report.version.is_some_and(|new| new <= *v) => Applied::Stale,
        Some((from, _)) => Applied::Moved { from: from.clone() },
    };
    if applied != Applied::Stale {
        sqlx::query(
            "INSERT INTO paycron.disputes (id, charge_id, provider_payment_id, state, reason, amount_minor,
                                           currency, due_at, version, opened_at, updated_at)
             VALUES ($1, (SELECT id FROM paycron.charges WHERE provider_payment_id = $2), $2, $3, $4, $5,
                     $6, $7, $8, $9, $9)
             ON CONFLICT (id) DO UPDATE SET state = EXCLUDED.state, reason = EXCLUDED.reason,
                    amount_minor = EXCLUDED.amount_minor, due_at = EXCLUDED.due_at,
                    version = EXCLUDED.version, updated_at = EXCLUDED.updated_at",
        )
        .bind(&report.id)
        .bind(&report.provider_payment_id)
        .bind(&report.state)
        .bind(&report.reason)
        .bind(report.amount_minor)
        .bind(&report.currency)
        .bind(report.due_at)
        .bind(report.version)
        .bind(at)
        .execute(&mut *conn)
        .await?;
    }
    let row = sqlx::query_as(
        "SELECT id, charge_id, provider_payment_id, state, reason, amount_minor, currency, due_at, version, opened_at
           FROM paycron.disputes WHERE id = $1",
    )
    .bind(&report.id)
    .fetch_one(&mut *conn)
    .await?;
    Ok((applied, row))
}

/// The money movements already booked for a dispute.
///
/// # Errors
/// [`super::StoreError`].
pub async fn movements(conn: &mut PgConnection, id: &str) -> Result<Vec<DisputeMovement>> {
    let kinds: Vec<String> =
        sqlx::query_scalar("SELECT kind FROM paycron.ledger_entries WHERE dispute_id = $1")
            .bind(id)
            .fetch_all(conn)
            .await?;
    Ok(kinds
        .iter()
        .filter_map(|k| match k.as_str() {
            "dispute_hold" => Some(DisputeMovement::Hold),
            "dispute_won" => Some(DisputeMovement::Won),
            "dispute_lost" => Some(DisputeMovement::Lost),
            _ => None,
        })
        .collect())
}

/// Books one movement of a dispute of a paycron charge: the ledger entry and its balanced
/// postings. False when it was booked already.
///
/// # Errors
/// [`super::StoreError`].
pub async fn book(
    conn: &mut PgConnection,
    dispute: &DisputeRow,
    charge: ChargeId,
    movement: DisputeMovement,
    at: DateTime<Utc>,
) -> Result<bool> {
    let (debit, credit) = match movement {
        DisputeMovement::Hold => (ACCOUNT_HELD, super::ledger::ACCOUNT_CLEARING),
        DisputeMovement::Won => (super::ledger::ACCOUNT_CLEARING, ACCOUNT_HELD),
        DisputeMovement::Lost => (ACCOUNT_CHARGEBACKS, ACCOUNT_HELD),
    };
    let (booked,): (i64,) = sqlx::query_as(
        "WITH e AS (
           INSERT INTO paycron.ledger_entries (kind, charge_id, dispute_id, subscription_id, customer_id,
                  period_start, attempt, status, amount_minor, currency, recorded_at)
           SELECT $1, c.id, $2, c.subscription_id, c.customer_id, c.period_start, c.attempt, 'succeeded',
                  $3, $4, $5
             FROM paycron.charges c WHERE c.id = $6
           ON CONFLICT (dispute_id, kind) WHERE dispute_id IS NOT NULL DO NOTHING
           RETURNING id, amount_minor, currency),
         p AS (
           INSERT INTO paycron.ledger_postings (entry_id, account, amount_minor, currency)
           SELECT e.id, a.account, a.sign * e.amount_minor, e.currency
             FROM e CROSS JOIN (VALUES ($7, 1), ($8, -1)) AS a(account, sign))
         SELECT count(*) FROM e",
    )
    .bind(movement.kind())
    .bind(&dispute.id)
    .bind(dispute.amount_minor)
    .bind(&dispute.currency)
    .bind(at)
    .bind(charge)
    .bind(debit)
    .bind(credit)
    .fetch_one(conn)
    .await?;
    Ok(booked == 1)
}

/// Disputes not closed yet, the soonest due first.
///
/// # Errors
/// [`super::StoreError`].
pub async fn open(pool: &PgPool) -> Result<Vec<DisputeRow>> {
    Ok(sqlx::query_as(
        "SELECT id, charge_id, provider_payment_id, state, reason, amount_minor, currency, due_at, version, opened_at
           FROM paycron.disputes WHERE state NOT IN ('WON', 'LOST', 'ACCEPTED', 'INQUIRY_CLOSED')
          ORDER BY due_at NULLS LAST, opened_at, id",
    )
    .fetch_all(pool)
    .await?)
}
