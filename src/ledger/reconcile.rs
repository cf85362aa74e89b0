//! Reconciliation's comparison: Square's payments against the ledger over a time window, as a
//! pure function (`billing::reconcile` fetches both sides and repairs).
//!
//! Matches each payment to the charge named by its
//! `reference_id` (paycron sends the charge id there). Reports: payments Square took that the
//! ledger lacks, ledger successes Square does not list, amount or currency mismatches, payments
//! naming a charge paycron does not know, and charges still pending. `--repair` records a
//! payment Square took for a still-pending charge through the engine's normal record path
//! (fenced, idempotent), so it can never double-record.

use crate::domain::{ChargeId, ChargeStatus};
use std::collections::HashMap;

use serde::Serialize;

use crate::domain::answer::ProviderPayment;
use crate::store::charges::ChargeRow;

/// One difference between Square and the ledger.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// missing_in_ledger | missing_at_square | amount_mismatch | currency_mismatch |
    /// unknown_charge | pending | refund_pending | refund_missing_in_ledger |
    /// refund_missing_at_square | refund_amount_mismatch.
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
    /// Refunds Square listed in the window.
    pub square_refunds: usize,
    /// Charges paycron created in the window.
    pub charges: usize,
    /// Differences.
    pub findings: Vec<Finding>,
    /// Payments recorded by `--repair`.
    pub repaired: usize,
}

/// Compares Square's payments in a window with the charges paycron holds (`window_charges`:
/// created in the window; `referenced`: the charges Square's payments name, whatever their
/// age). Returns the report and the payments Square took for charges still pending here, which
/// `--repair` records. Pure.
///
/// Long on purpose: one pass over Square's payments with one finding per kind of difference, each a few lines; the table of findings reads best in one place.
pub fn compare(
    payments: &[ProviderPayment],
    window_charges: &[ChargeRow],
    referenced: Vec<ChargeRow>,
) -> (Report, Vec<(ChargeRow, ProviderPayment)>) {
    let mut by_id: HashMap<ChargeId, ChargeRow> =
        referenced.into_iter().map(|c| (c.id, c)).collect();
    for c in window_charges {
        by_id.entry(c.id).or_insert_with(|| c.clone());
    }
    let mut report = Report {
        square_payments: payments.len(),
        charges: window_charges.len(),
        ..Report::default()
    };
    let square_ids: std::collections::HashSet<&str> = payments
        .iter()
        .filter(|p| p.taken)
        .map(ProviderPayment::id)
        .collect();
    let mut repairs: Vec<(ChargeRow, ProviderPayment)> = Vec::new();
    for p in payments.iter().filter(|p| p.taken) {
        let Some(id) = p.charge_id() else {
            continue; // not a paycron payment (e.g. a counter sale at the same location)
        };
        let Some(c) = by_id.get(&id) else {
            report.findings.push(Finding {
                kind: "unknown_charge",
                charge_id: Some(id),
                provider_payment_id: Some(p.id().to_owned()),
                square_amount_minor: Some(p.answer.amount_minor),
                ledger_amount_minor: None,
                detail: "Square took a payment naming a charge this database does not know".into(),
            });
            continue;
        };
        if c.money.minor() != p.answer.amount_minor {
            report.findings.push(Finding {
                kind: "amount_mismatch",
                charge_id: Some(c.id),
                provider_payment_id: Some(p.id().to_owned()),
                square_amount_minor: Some(p.answer.amount_minor),
                ledger_amount_minor: Some(c.money.minor()),
                detail: "amounts differ".into(),
            });
        }
        if c.money.currency().as_str() != p.answer.currency {
            report.findings.push(Finding {
                kind: "currency_mismatch",
                charge_id: Some(c.id),
                provider_payment_id: Some(p.id().to_owned()),
                square_amount_minor: Some(p.answer.amount_minor),
                ledger_amount_minor: Some(c.money.minor()),
                detail: format!(
                    "Square {} vs ledger {}",
                    p.answer.currency,
                    c.money.currency()
                ),
            });
        }
        if c.provider_payment_id.as_deref() != Some(p.id()) {
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
                provider_payment_id: Some(p.id().to_owned()),
                square_amount_minor: Some(p.answer.amount_minor),
                ledger_amount_minor: None,
                detail,
            });
        }
    }
    for c in window_charges {
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
    (report, repairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::answer::Answer;
    use crate::domain::{IdempotencyKey, Money, SubscriptionId};

    fn charge(status: ChargeStatus, payment: Option<&str>) -> ChargeRow {
        let sub = SubscriptionId::new();
        ChargeRow {
            id: ChargeId::new(),
            subscription_id: sub,
            period: 0,
            period_start: chrono::Utc::now(),
            attempt: 1,
            idempotency_key: IdempotencyKey::derive(sub, 0, 1).unwrap(),
            customer_id: "C1".parse().unwrap(),
            card_id: Some("ccof:c1".parse().unwrap()),
            money: Money::new(1000, "USD".parse().unwrap()).unwrap(),
            status,
            request_body: "{}".into(),
            request_fingerprint: String::new(),
            provider_payment_id: payment.map(str::to_owned),
            decline_code: None,
            sends: 0,
            created_at: chrono::Utc::now(),
            source: crate::store::charges::SOURCE_CARD_ON_FILE.into(),
        }
    }

    fn payment(id: &str, reference: &str, amount: i64) -> ProviderPayment {
        ProviderPayment {
            answer: Answer {
                payment_id: id.into(),
                status: "COMPLETED".into(),
                amount_minor: amount,
                currency: "USD".into(),
                customer_id: None,
                card_id: None,
                location_id: None,
                reference_id: Some(reference.into()),
            },
            taken: true,
            created_at: None,
        }
    }

    #[test]
    fn every_kind_of_difference_is_named_and_only_pending_ones_are_repaired() {
        let paid = charge(ChargeStatus::Succeeded, Some("P1"));
        let pending = charge(ChargeStatus::Pending, None);
        let lost = charge(ChargeStatus::Succeeded, Some("P9"));
        let payments = vec![
            payment("P1", &paid.id.to_string(), 1000),
            payment("P2", &ChargeId::new().to_string(), 1000),
            payment("P3", &pending.id.to_string(), 999),
        ];
        let (report, repairs) = compare(
            &payments,
            &[paid.clone(), pending.clone(), lost.clone()],
            vec![],
        );
        let mut kinds: Vec<&str> = report.findings.iter().map(|f| f.kind).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "amount_mismatch",
                "missing_at_square",
                "missing_in_ledger",
                "unknown_charge"
            ]
        );
        assert_eq!(repairs.len(), 1);
        assert_eq!(repairs[0].0.id, pending.id);
        assert_eq!((report.square_payments, report.charges), (3, 3));
    }
}
