//! Step 3 of the protocol: recording attempts' outcomes. Each outcome is classified
//! (`outcome`), the decided ones are written in one transaction (`commit`), and each gets one log
//! line with its ids and the metrics.
//!
//! Outcomes that leave the payment's fate open (transient until the deadline, unknown, key
//! reused) are logged and left pending for recovery; an authentication failure stops the run
//! after the rest of the batch is recorded.

use chrono::{DateTime, Utc};

use super::outcome::Classified;
use super::{BillingError, Engine, Result, Summary};
use crate::domain::subscription::AttemptOutcome;
use crate::domain::{ChargeId, ChargeStatus};
use crate::gateway::PaymentOutcome;
use crate::store::charges::{ChargeRow, OwnedResolution};
use crate::store::{StoreError, subscriptions};

/// One attempt and what Square said; `None` when it was never sent (shutdown came first).
pub(crate) struct Attempted {
    pub charge: ChargeRow,
    pub outcome: Option<PaymentOutcome>,
    pub duration_ms: u64,
    /// An operator's note, for a decision on a charge in review.
    pub note: Option<String>,
}

impl Attempted {
    /// A payment Square is known to have taken for `charge` (found by lookup or reconcile).
    pub fn found_at_square(
        charge: &ChargeRow,
        payment: &crate::domain::answer::ProviderPayment,
    ) -> Self {
        Attempted {
            charge: charge.clone(),
            outcome: Some(PaymentOutcome::taken(payment)),
            duration_ms: 0,
            note: None,
        }
    }
}

/// The one log line and the metrics of a charge whose outcome was just recorded (or fenced:
/// another worker took it over), added to `summary`.
fn report_recorded(
    charge: &ChargeRow,
    d: &Decided,
    recorded: bool,
    external_ref: Option<&str>,
    summary: &mut Summary,
) {
    let run_id = super::run_id().map(|r| r.to_string()).unwrap_or_default();
    let external_ref = external_ref.unwrap_or("");
    if !recorded {
        summary.fenced += 1;
        tracing::info!(subscription_id = %charge.subscription_id, customer_id = %charge.customer_id, external_ref, run_id, charge_id = %charge.id, outcome = "fenced",
            "charge was taken over by another worker; recording nothing");
        return;
    }
    let r = &d.resolution;
    if r.status == ChargeStatus::NeedsReview {
        summary.needs_review += 1;
        tracing::error!(
            subscription_id = %charge.subscription_id, customer_id = %charge.customer_id, external_ref, run_id, charge_id = %charge.id, attempt = charge.attempt,
            outcome = "needs_review", provider_payment_id = r.review_payment_id.as_deref().unwrap_or(""),
            reason = r.review_reason.as_deref().unwrap_or(""),
            "charge needs review: neither recorded as paid nor declined, never re-sent; `paycron charges review`"
        );
        metrics::counter!(crate::ops::metrics::CHARGES, "outcome" => "needs_review", "code" => REVIEW_CODE)
            .increment(1);
        return;
    }
    tracing::info!(
        subscription_id = %charge.subscription_id,
        customer_id = %charge.customer_id,
        external_ref,
        run_id,
        charge_id = %charge.id,
        attempt = charge.attempt,
        outcome = %r.status,
        code = r.code.as_deref().unwrap_or(""),
        amount_minor = charge.money.minor(),
        currency = %charge.money.currency(),
        duration_ms = d.duration_ms,
        provider_payment_id = r.payment_id.as_deref().unwrap_or(""),
        "charge"
    );
    metrics::counter!(crate::ops::metrics::CHARGES, "outcome" => r.status.as_str(), "code" => r.code.clone().unwrap_or_default())
        .increment(1);
    metrics::histogram!(crate::ops::metrics::CHARGE_SECONDS).record(d.duration_ms as f64 / 1000.0);
    match r.status {
        ChargeStatus::Succeeded => {
            summary.succeeded += 1;
            *summary
                .revenue
                .entry(charge.money.currency().as_str().to_owned())
                .or_default() += charge.money.minor();
        }
        ChargeStatus::Declined => summary.declined += 1,
        _ => summary.failed += 1,
    }
}

#[derive(Clone)]
pub(super) struct Decided {
    pub(super) resolution: OwnedResolution,
    /// What the lifecycle hears; `None` for a charge going to review (nothing moves).
    pub(super) outcome: Option<AttemptOutcome>,
    pub(super) duration_ms: u64,
}

impl Decided {
    /// Sends the charge to review instead: neither a success nor a decline.
    pub(super) fn send_to_review(&mut self, reason: String) {
        let r = &mut self.resolution;
        r.review_payment_id = r.payment_id.take().or(r.review_payment_id.take());
        r.status = ChargeStatus::NeedsReview;
        r.code = Some(REVIEW_CODE.to_owned());
        r.category = None;
        r.review_reason = Some(reason);
        self.outcome = None;
    }
}

/// The code a charge in review carries.
const REVIEW_CODE: &str = "NEEDS_REVIEW";

/// Deadlocks and serialization failures are retried; so is a unique violation, which means a
/// payment id was recorded concurrently by another charge: the retry finds it and sends this
/// one to review.
fn is_retryable(e: &StoreError) -> bool {
    matches!(e, StoreError::Db(sqlx::Error::Database(d)) if matches!(d.code().as_deref(), Some("40P01") | Some("40001") | Some("23505")))
}

impl Engine {
    /// Records a batch of outcomes.
    ///
    /// Long on purpose: sorts a batch into its four fates and records them; the loop and the writes share the batch.
    pub(crate) async fn record_batch(
        &self,
        items: Vec<Attempted>,
        now: DateTime<Utc>,
    ) -> Result<Summary> {
        let mut summary = Summary::default();
        let mut unauthorized: Option<String> = None;
        let mut decided: Vec<(ChargeRow, Decided)> = Vec::with_capacity(items.len());
        let mut unsent = Vec::new();
        let mut deferred = Vec::new();
        for Attempted {
            charge,
            outcome,
            duration_ms,
            note,
        } in items
        {
            let Some(outcome) = outcome else {
                unsent.push(charge.id);
                continue;
            };
            summary.attempted += 1;
            match self.classify(&charge, outcome, duration_ms) {
                Classified::Unauthorized(code) => {
                    summary.unresolved += 1;
                    unauthorized = Some(code);
                }
                Classified::Deferred(until) => {
                    summary.unresolved += 1;
                    deferred.push((charge.id, until));
                }
                Classified::Decided {
                    status,
                    payment_id,
                    code,
                    category,
                    outcome,
                    review,
                } => {
                    let mut d = Decided {
                        resolution: OwnedResolution {
                            id: charge.id,
                            expected: charge.status,
                            status,
                            payment_id,
                            code,
                            category,
                            review_reason: None,
                            review_payment_id: None,
                            note,
                        },
                        outcome: Some(outcome),
                        duration_ms,
                    };
                    if let Some(reason) = review {
                        d.send_to_review(reason);
                    }
                    decided.push((charge, d));
                }
            }
        }
        if !unsent.is_empty() {
            summary.withdrawn = self.withdraw_unsent(&unsent).await?;
        }
        if !deferred.is_empty() {
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            crate::store::charges::defer(&mut conn, self.owner, &deferred).await?;
        }
        if !decided.is_empty() {
            let mut tries = 0;
            let (resolved, refs) = loop {
                match self.record_decided(&mut decided, now, tries > 0).await {
                    Ok(r) => break r,
                    Err(BillingError::Store(e)) if is_retryable(&e) && tries < 3 => {
                        tries += 1;
                        tracing::warn!(error = %e, tries, "recording batch conflicted; retrying");
                    }
                    Err(e) => return Err(e),
                }
            };
            for (charge, d) in &decided {
                report_recorded(
                    charge,
                    d,
                    resolved.contains(&charge.id),
                    refs.get(&charge.subscription_id).map(String::as_str),
                    &mut summary,
                );
            }
        }
        if let Some(code) = unauthorized {
            return Err(BillingError::Unauthorized { code });
        }
        if let Some(progress) = &self.progress {
            progress(summary.attempted);
        }
        Ok(summary)
    }

    /// Withdraws charges of ours that were never sent, closing their subscriptions' open
    /// charge: the subscriptions stay due for the next claim. Returns how many.
    pub(crate) async fn withdraw_unsent(&self, ids: &[ChargeId]) -> Result<u64> {
        let mut tx = crate::store::begin(&self.pool).await?;
        let withdrawn = crate::store::charges::withdraw_unsent(&mut tx, self.owner, ids).await?;
        subscriptions::close_charges(&mut tx, &withdrawn).await?;
        tx.commit().await.map_err(StoreError::from)?;
        tracing::info!(
            withdrawn = withdrawn.len(),
            "charges never sent were withdrawn"
        );
        Ok(withdrawn.len() as u64)
    }
}
