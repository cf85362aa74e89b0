//! Reconciliation of money going back: Square's refunds (ListPaymentRefunds) against the
//! refunds paycron holds, as a pure comparison. `billing::reconcile` fetches both sides and,
//! with `--repair`, applies what this returns through the normal settle path.
//!
//! Findings: `refund_pending` (Square settled a refund still pending here: repaired by settling
//! it), `refund_missing_in_ledger` (Square refunded a paycron payment and paycron holds no such
//! refund, e.g. one made in Square's dashboard: repaired by recording it against its charge,
//! under the database's cap), `refund_missing_at_square` (completed here, not among Square's
//! refunds of the window) and `refund_amount_mismatch`.

use std::collections::{HashMap, HashSet};

use super::reconcile::Finding;
use crate::domain::ChargeId;
use crate::domain::refund::{ProviderRefund, RefundStatus};
use crate::store::refunds::RefundRow;

/// What `--repair` does about one finding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundRepair {
    /// Settle a refund of paycron's that Square settled.
    Settle {
        /// The refund here.
        refund: Box<RefundRow>,
        /// Square's refund.
        found: ProviderRefund,
    },
    /// Record a refund Square made of a paycron payment that paycron does not hold.
    Record {
        /// The charge the payment paid.
        charge_id: ChargeId,
        /// Square's refund.
        found: ProviderRefund,
    },
}

/// Compares `square` (Square's refunds of the window) with `local` (paycron's refunds of the
/// window and of the payments Square's refunds name); `charges` maps paycron's payment ids to
/// their charges (a refund of any other payment is not paycron's business). Pure.
///
/// Long on purpose: one pass over Square's refunds and one over paycron's, a finding per kind
/// of difference; the table of findings reads best in one place.
pub fn compare_refunds(
    square: &[ProviderRefund],
    local: &[RefundRow],
    charges: &HashMap<String, ChargeId>,
) -> (Vec<Finding>, Vec<RefundRepair>) {
    let mut findings = Vec::new();
    let mut repairs = Vec::new();
    let by_square_id: HashMap<&str, &RefundRow> = local
        .iter()
        .filter_map(|r| r.provider_refund_id.as_deref().map(|id| (id, r)))
        .collect();
    let mut matched_unnamed: HashSet<&str> = HashSet::new();
    for s in square {
        let Some(payment) = s.payment_id.as_deref() else {
            continue;
        };
        let Some(&charge_id) = charges.get(payment) else {
            continue; // not a paycron payment
        };
        let finding = |kind: &'static str, ledger: Option<i64>, detail: String| Finding {
            kind,
            charge_id: Some(charge_id),
            provider_payment_id: Some(payment.to_owned()),
            square_amount_minor: Some(s.amount_minor),
            ledger_amount_minor: ledger,
            detail,
        };
        let completed = RefundStatus::from_square(&s.status) == Some(RefundStatus::Completed);
        // Square's id, or a pending refund of the same payment and amount whose answer was lost.
        let mine = by_square_id.get(s.id.as_str()).copied().or_else(|| {
            local.iter().find(|r| {
                r.provider_refund_id.is_none()
                    && r.status == RefundStatus::Pending
                    && r.provider_payment_id == payment
                    && r.amount_minor == s.amount_minor
                    && !matched_unnamed.contains(r.idempotency_key.as_str())
            })
        });
        match mine {
            Some(r) => {
                if r.provider_refund_id.is_none() {
                    matched_unnamed.insert(r.idempotency_key.as_str());
                }
                if r.amount_minor != s.amount_minor || r.currency != s.currency {
                    findings.push(finding(
                        "refund_amount_mismatch",
                        Some(r.amount_minor),
                        format!("refund {}: Square's {} differs", r.id, s.id),
                    ));
                } else if completed && r.status == RefundStatus::Pending {
                    findings.push(finding(
                        "refund_pending",
                        Some(r.amount_minor),
                        format!(
                            "refund {} completed at Square ({}) but pending here: `reconcile --repair` settles it",
                            r.id, s.id
                        ),
                    ));
                    repairs.push(RefundRepair::Settle {
                        refund: Box::new(r.clone()),
                        found: s.clone(),
                    });
                }
            }
            None if completed => {
                findings.push(finding(
                    "refund_missing_in_ledger",
                    None,
                    format!(
                        "Square refunded {} ({}) and paycron holds no such refund: `reconcile --repair` records it",
                        payment, s.id
                    ),
                ));
                repairs.push(RefundRepair::Record {
                    charge_id,
                    found: s.clone(),
                });
            }
            None => {}
        }
    }
    let square_ids: HashSet<&str> = square.iter().map(|s| s.id.as_str()).collect();
    for r in local {
        if r.status == RefundStatus::Completed
            && r.provider_refund_id
                .as_deref()
                .is_some_and(|id| !square_ids.contains(id))
        {
            findings.push(Finding {
                kind: "refund_missing_at_square",
                charge_id: Some(r.charge_id),
                provider_payment_id: Some(r.provider_payment_id.clone()),
                square_amount_minor: None,
                ledger_amount_minor: Some(r.amount_minor),
                detail: format!(
                    "refund {} is completed here but not among Square's refunds of the window",
                    r.id
                ),
            });
        }
    }
    (findings, repairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RefundId;

    fn local(status: RefundStatus, square_id: Option<&str>, amount: i64) -> RefundRow {
        RefundRow {
            id: RefundId::new(),
            charge_id: ChargeId(uuid::Uuid::nil()),
            subscription_id: crate::domain::SubscriptionId::new(),
            customer_id: "C1".parse().unwrap(),
            provider_payment_id: "P1".into(),
            idempotency_key: format!("k-{}", uuid::Uuid::new_v4().simple()),
            amount_minor: amount,
            currency: "USD".into(),
            reason: None,
            status,
            provider_refund_id: square_id.map(str::to_owned),
            failure_code: None,
            request_body: "{}".into(),
            sends: 1,
            created_at: chrono::Utc::now(),
        }
    }

    fn square(id: &str, payment: &str, status: &str, amount: i64) -> ProviderRefund {
        ProviderRefund {
            id: id.into(),
            status: status.into(),
            payment_id: Some(payment.into()),
            amount_minor: amount,
            currency: "USD".into(),
            created_at: None,
        }
    }

    #[test]
    fn every_kind_of_refund_difference_is_named_and_only_the_right_ones_repaired() {
        let charges = HashMap::from([("P1".to_owned(), ChargeId(uuid::Uuid::nil()))]);
        let settled_here = local(RefundStatus::Completed, Some("R1"), 100);
        let pending_here = local(RefundStatus::Pending, Some("R2"), 200);
        let lost_answer = local(RefundStatus::Pending, None, 300);
        let gone = local(RefundStatus::Completed, Some("R9"), 50);
        let (findings, repairs) = compare_refunds(
            &[
                square("R1", "P1", "COMPLETED", 100),
                square("R2", "P1", "COMPLETED", 200),
                square("R3", "P1", "COMPLETED", 300),
                square("R4", "P1", "COMPLETED", 400),
                square("R5", "OTHER", "COMPLETED", 500),
                square("R6", "P1", "PENDING", 10),
            ],
            &[
                settled_here,
                pending_here.clone(),
                lost_answer.clone(),
                gone,
            ],
            &charges,
        );
        let mut kinds: Vec<&str> = findings.iter().map(|f| f.kind).collect();
        kinds.sort();
        assert_eq!(
            kinds,
            [
                "refund_missing_at_square",
                "refund_missing_in_ledger",
                "refund_pending",
                "refund_pending"
            ]
        );
        assert_eq!(repairs.len(), 3);
        assert!(repairs.iter().any(
            |r| matches!(r, RefundRepair::Settle { refund, .. } if refund.id == pending_here.id)
        ));
        assert!(repairs.iter().any(
            |r| matches!(r, RefundRepair::Settle { refund, found } if refund.id == lost_answer.id && found.id == "R3")
        ));
        assert!(
            repairs
                .iter()
                .any(|r| matches!(r, RefundRepair::Record { found, .. } if found.id == "R4"))
        );
    }
}
