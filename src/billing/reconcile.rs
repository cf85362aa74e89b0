//! Reconciliation's fetching and repair: pages Square's ListPayments over a window, reads the
//! charges of the window and those Square's payments name, compares them with the pure
//! [`crate::ledger::reconcile::compare`], and with `--repair` records a payment Square took for
//! a still-pending charge through the engine's normal record path (fenced, idempotent). Refunds
//! are reconciled the same way: ListPaymentRefunds against paycron's refunds.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{BillingError, Engine};
use crate::domain::ChargeId;
use crate::domain::answer::ProviderPayment;
use crate::gateway::PaymentGateway;
use crate::ledger::reconcile::{Report, compare};
use crate::ledger::refunds::{RefundRepair, compare_refunds};
use crate::store::{charges, refunds};

/// Every page of a cursor-driven list, gathered.
async fn all_pages<T, F, Fut>(what: &'static str, mut page: F) -> Result<Vec<T>, BillingError>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: std::future::Future<Output = crate::gateway::Result<crate::gateway::Page<T>>>,
{
    let mut cursor: Option<String> = None;
    let mut all = Vec::new();
    let started = std::time::Instant::now();
    let mut logged = started;
    let mut pages = 0u64;
    loop {
        let p = page(cursor.take()).await?;
        all.extend(p.items);
        pages += 1;
        // A long listing (a busy seller's month) shows it is moving.
        if logged.elapsed() >= std::time::Duration::from_secs(10) {
            logged = std::time::Instant::now();
            tracing::info!(
                listing = what,
                pages,
                items = all.len(),
                items_per_s =
                    (all.len() as f64 / started.elapsed().as_secs_f64().max(0.001)).round(),
                "reconcile progress"
            );
        }
        match p.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(all),
        }
    }
}

/// Compares Square and the ledger over `[since, until)`; with `engine`, records payments
/// Square took for still-pending charges.
///
/// # Errors
/// [`BillingError`] when Square or the database fails.
pub async fn reconcile(
    pool: &PgPool,
    gateway: &dyn PaymentGateway,
    engine: Option<&Engine>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Report, BillingError> {
    let payments: Vec<ProviderPayment> = all_pages("payments", |cursor| async move {
        gateway.list_payments(since, until, cursor.as_deref()).await
    })
    .await?;
    let window_charges = charges::in_window(pool, since, until).await?;
    let referenced: Vec<ChargeId> = payments
        .iter()
        .filter_map(ProviderPayment::charge_id)
        .collect();
    let referenced = charges::by_ids(pool, &referenced).await?;
    let (mut report, repairs) = compare(&payments, &window_charges, referenced);
    if let Some(engine) = engine {
        for (c, p) in repairs {
            if engine.repair(&c, &p).await? {
                report.repaired += 1;
            }
        }
    }
    reconcile_refunds(pool, gateway, engine, since, until, &mut report).await?;
    Ok(report)
}

/// Square's refunds of the window against paycron's (see [`compare_refunds`]), findings added
/// to `report`; with `engine`, the repairs applied through the normal settle path.
async fn reconcile_refunds(
    pool: &PgPool,
    gateway: &dyn PaymentGateway,
    engine: Option<&Engine>,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
    report: &mut Report,
) -> Result<(), BillingError> {
    let square = all_pages("refunds", |cursor| async move {
        gateway.list_refunds(since, until, cursor.as_deref()).await
    })
    .await?;
    let named: Vec<String> = square.iter().filter_map(|r| r.payment_id.clone()).collect();
    let charges = charges::ids_by_payment(pool, &named).await?;
    let mut local = refunds::in_window(pool, since, until).await?;
    for r in refunds::of_payments(pool, &named).await? {
        if !local.iter().any(|l| l.id == r.id) {
            local.push(r);
        }
    }
    report.square_refunds = square.len();
    let (findings, repairs) = compare_refunds(&square, &local, &charges);
    report.findings.extend(findings);
    if let Some(engine) = engine {
        for repair in repairs {
            let done = match repair {
                RefundRepair::Settle { refund, found } => {
                    engine.repair_refund(&refund, found).await?
                }
                RefundRepair::Record { charge_id, found } => {
                    engine.record_found_refund(charge_id, &found).await?
                }
            };
            report.repaired += usize::from(done);
        }
    }
    Ok(())
}
