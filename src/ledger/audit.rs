//! The exactly-once audit (invariant 3 and 4), against Square's own record of the payments it
//! took: every payment names a charge paycron wrote (or is a first period paid at the counter,
//! recorded under its payment id), no subscription period was paid twice,
//! nothing is left pending, and the ledger's successes are exactly Square's payments, each
//! once. The demo prints it; the fault tests assert it.

use std::collections::{HashMap, HashSet};

use sqlx::PgPool;

use crate::domain::answer::ProviderPayment;
use crate::domain::{ChargeId, ChargeStatus};
use crate::store::{StoreError, charges, ledger};

/// What the audit found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Audit {
    /// Payments Square took.
    pub payments: usize,
    /// Successes in the ledger.
    pub ledger_successes: usize,
    /// Charges still pending.
    pub pending: i64,
    /// Distinct subscription periods paid.
    pub periods: usize,
    /// Every way the guarantee does not hold, in words; empty when it holds.
    pub problems: Vec<String>,
}

impl Audit {
    /// Exactly one payment per billed period, all of them in the ledger, nothing pending.
    pub fn is_exact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Audits the database against `taken`, the payments Square (or its simulator) took.
///
/// # Errors
/// [`StoreError`].
pub async fn exactly_once(pool: &PgPool, taken: &[ProviderPayment]) -> Result<Audit, StoreError> {
    let mut audit = Audit {
        payments: taken.len(),
        ..Audit::default()
    };
    audit.pending = charges::count_by_status(pool)
        .await?
        .into_iter()
        .find(|(s, _)| s == ChargeStatus::Pending.as_str())
        .map(|(_, n)| n)
        .unwrap_or(0);
    if audit.pending > 0 {
        audit
            .problems
            .push(format!("{} charge(s) still pending", audit.pending));
    }
    let named: Vec<ChargeId> = taken
        .iter()
        .filter_map(ProviderPayment::charge_id)
        .collect();
    let known: HashMap<ChargeId, (crate::domain::SubscriptionId, i32)> =
        charges::by_ids(pool, &named)
            .await?
            .into_iter()
            .map(|c| (c.id, (c.subscription_id, c.period)))
            .collect();
    let counter = charges::counter_payments(pool).await?;
    let mut periods = HashSet::new();
    for p in taken {
        let period = match p.charge_id() {
            Some(c) => known.get(&c),
            // A first period paid at the counter: Square's payment id is its charge's.
            None => counter.get(p.id()),
        };
        match period {
            None => audit
                .problems
                .push(format!("payment {} names no charge of paycron's", p.id())),
            Some(period) => {
                if !periods.insert(*period) {
                    audit.problems.push(format!(
                        "subscription {} period {} paid twice",
                        period.0, period.1
                    ));
                }
            }
        }
    }
    audit.periods = periods.len();
    let in_ledger = ledger::success_payment_ids(pool).await?;
    audit.ledger_successes = in_ledger.len();
    let ledger_set: HashSet<&str> = in_ledger.iter().map(String::as_str).collect();
    if ledger_set.len() != in_ledger.len() {
        audit
            .problems
            .push("a payment is in the ledger more than once".into());
    }
    let square_set: HashSet<&str> = taken.iter().map(ProviderPayment::id).collect();
    for missing in square_set.difference(&ledger_set) {
        audit.problems.push(format!(
            "payment {missing} taken at Square is not in the ledger"
        ));
    }
    for extra in ledger_set.difference(&square_set) {
        audit
            .problems
            .push(format!("ledger payment {extra} is not among Square's"));
    }
    Ok(audit)
}
