//! Reconciliation: Square's payments against the ledger over a time window.
//!
//! Pages ListPayments over `[since, until)` and matches each payment to the charge named by its
//! `reference_id` (paycron sends the charge id there). Reports: payments Square took that the
//! ledger lacks, ledger successes Square does not list, amount or currency mismatches, payments
//! naming a charge paycron does not know, and charges still pending. `--repair` records a
//! payment Square took for a still-pending charge through the engine's normal record path
//! (fenced, idempotent), so it can never double-record.

use crate::domain::{ChargeId, ChargeStatus};
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::billing::{BillingError, Engine};
use crate::gateway::{PaymentGateway, wire};
use crate::store::charges::{self, ChargeRow};

/// One difference between Square and the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// missing_in_ledger | missing_at_square | amount_mismatch | currency_mismatch |
    /// unknown_charge | pending.
    pub kind: &'static str,
    /// The paycron charge, when known.
    pub charge_id: Option<ChargeId>,
    /// Square's payment id, when known.
    pub provider_payment_id: Option<String>,
    /// Amount at Square (minor units).
    pub square_amount_minor: Option<i64>,
    /// Amount in the ledger (minor units).
    pub ledger_amount_minor: Option<i64>,
    /// What to do about it.
    pub detail: String,
}

/// The result of a reconciliation.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Payments Square listed in the window.
    pub square_payments: usize,
    /// Charges paycron created in the window.
    pub charges: usize,
    /// Differences.
    pub findings: Vec<Finding>,
    /// Payments recorded by `--repair`.
    pub repaired: usize,
}

async fn list_window(
    gateway: &dyn PaymentGateway,
    since: DateTime<Utc>,
    until: DateTime<Utc>,
) -> Result<Vec<wire::Payment>, BillingError> {
    let (b, e) = (since.to_rfc3339(), until.to_rfc3339());
    let mut cursor: Option<String> = None;
    let mut all = Vec::new();
    loop {
        let page = gateway.list_payments(&b, &e, cursor.as_deref()).await?;
        all.extend(page.items);
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => return Ok(all),
        }
    }
}

fn taken(p: &wire::Payment) -> bool {
    p.status == "COMPLETED" || p.status == "APPROVED"
}

/// Compares Square and the ledger over `[since, until)`; with `repair`, records payments
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
    let payments = list_window(gateway, since, until).await?;
    let window_charges = charges::in_window(pool, since, until).await?;
    let referenced: Vec<ChargeId> = payments
        .iter()
        .filter_map(|p| p.reference_id.as_deref().and_then(|r| r.parse().ok()))
        .collect();
    let mut by_id: HashMap<ChargeId, ChargeRow> = charges::by_ids(pool, &referenced)
        .await?
        .into_iter()
        .map(|c| (c.id, c))
        .collect();
    for c in &window_charges {
        by_id.entry(c.id).or_insert_with(|| c.clone());
    }
    let mut report = Report {
        square_payments: payments.len(),
        charges: window_charges.len(),
        ..Report::default()
    };
    let square_ids: std::collections::HashSet<&str> = payments
        .iter()
        .filter(|p| taken(p))
        .map(|p| p.id.as_str())
        .collect();
    let mut repairs: Vec<(ChargeRow, wire::Payment)> = Vec::new();
    for p in payments.iter().filter(|p| taken(p)) {
        let Some(id) = p
            .reference_id
            .as_deref()
            .and_then(|r| r.parse::<ChargeId>().ok())
        else {
            continue; // not a paycron payment (e.g. a counter sale at the same location)
        };
        let Some(c) = by_id.get(&id) else {
            report.findings.push(Finding {
                kind: "unknown_charge",
                charge_id: Some(id),
                provider_payment_id: Some(p.id.clone()),
                square_amount_minor: Some(p.amount_money.amount),
                ledger_amount_minor: None,
                detail: "Square took a payment naming a charge this database does not know".into(),
            });
            continue;
        };
        if c.money.minor() != p.amount_money.amount {
            report.findings.push(Finding {
                kind: "amount_mismatch",
                charge_id: Some(c.id),
                provider_payment_id: Some(p.id.clone()),
                square_amount_minor: Some(p.amount_money.amount),
                ledger_amount_minor: Some(c.money.minor()),
                detail: "amounts differ".into(),
            });
        }
        if c.money.currency().as_str() != p.amount_money.currency {
            report.findings.push(Finding {
                kind: "currency_mismatch",
                charge_id: Some(c.id),
                provider_payment_id: Some(p.id.clone()),
                square_amount_minor: Some(p.amount_money.amount),
                ledger_amount_minor: Some(c.money.minor()),
                detail: format!(
                    "Square {} vs ledger {}",
                    p.amount_money.currency,
                    c.money.currency()
                ),
            });
        }
        if c.provider_payment_id.as_deref() != Some(p.id.as_str()) {
            let detail = match c.status {
                ChargeStatus::Pending => {
                    "taken at Square, charge still pending: `reconcile --repair` records it"
                        .to_owned()
                }
                other => format!(
                    "taken at Square but the charge is recorded as {other}; refund or investigate"
                ),
            };
            if c.status == ChargeStatus::Pending {
                repairs.push((c.clone(), p.clone()));
            }
            report.findings.push(Finding {
                kind: "missing_in_ledger",
                charge_id: Some(c.id),
                provider_payment_id: Some(p.id.clone()),
                square_amount_minor: Some(p.amount_money.amount),
                ledger_amount_minor: None,
                detail,
            });
        }
    }
    for c in &window_charges {
        match c.status {
            ChargeStatus::Succeeded => {
                let pid = c.provider_payment_id.as_deref().unwrap_or("");
                if !square_ids.contains(pid) {
                    report.findings.push(Finding {
                        kind: "missing_at_square",
                        charge_id: Some(c.id),
                        provider_payment_id: c.provider_payment_id.clone(),
                        square_amount_minor: None,
                        ledger_amount_minor: Some(c.money.minor()),
                        detail:
                            "recorded as succeeded but not among Square's payments in the window"
                                .into(),
                    });
                }
            }
            ChargeStatus::Pending if !repairs.iter().any(|(r, _)| r.id == c.id) => {
                report.findings.push(Finding {
                    kind: "pending",
                    charge_id: Some(c.id),
                    provider_payment_id: None,
                    square_amount_minor: None,
                    ledger_amount_minor: Some(c.money.minor()),
                    detail: "still pending: `run-once --task recover` finishes it".into(),
                })
            }
            _ => {}
        }
    }
    if let Some(engine) = engine {
        for (c, p) in repairs {
            if engine.repair(&c, &p).await? {
                report.repaired += 1;
            }
        }
    }
    Ok(report)
}
