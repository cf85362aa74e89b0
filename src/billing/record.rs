//! Step 3 of the protocol: recording attempts' outcomes. A batch of outcomes is recorded in one
//! transaction with set-based statements — the charges' final status (fenced on our lease),
//! the ledger entries and postings, the subscriptions' next positions from the pure state
//! machine, and the events — so one commit (and one NOTIFY round) covers many charges. One log
//! line per outcome.
//!
//! Outcomes that leave the payment's fate open (transient until the deadline, unknown, key
//! reused) are logged and left pending for recovery; an authentication failure stops the run
//! after the rest of the batch is recorded.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use super::{BillingError, Engine, Result, Summary};
use crate::domain::answer::{Asked, differences};
use crate::domain::decline::suspect_setting;
use crate::domain::lifecycle::{self, Notice};
use crate::domain::subscription::AttemptOutcome;
use crate::domain::{CardId, ChargeId, ChargeStatus, CustomerId, SubscriptionId};
use crate::gateway::PaymentOutcome;
use crate::store::charges::{ChargeRow, OwnedResolution, resolve_many};
use crate::store::events::{NewEvent, emit_many};
use crate::store::subscriptions::{self, PositionUpdate, SubscriptionRow};
use crate::store::{StoreError, cards, ledger};

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

#[derive(Clone)]
struct Decided {
    resolution: OwnedResolution,
    /// What the lifecycle hears; `None` for a charge going to review (nothing moves).
    outcome: Option<AttemptOutcome>,
    duration_ms: u64,
}

impl Decided {
    /// Sends the charge to review instead: neither a success nor a decline.
    fn send_to_review(&mut self, reason: String) {
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
            let mut review = None;
            let (status, payment_id, code, category, attempt_outcome) = match outcome {
                PaymentOutcome::Succeeded { payment_id, answer } => {
                    // An operator's decision on a charge in review is not checked again.
                    if charge.status != ChargeStatus::NeedsReview {
                        let asked = Asked {
                            charge_id: charge.id,
                            money: charge.money,
                            customer_id: &charge.customer_id,
                            card_id: &charge.card_id,
                            location_id: self.location_id.as_deref(),
                        };
                        let diffs = differences(&asked, &answer);
                        if !diffs.is_empty() {
                            review = Some(format!(
                                "Square's payment {payment_id} does not match the charge: {}",
                                diffs.join("; ")
                            ));
                        }
                    }
                    (
                        ChargeStatus::Succeeded,
                        Some(payment_id),
                        None,
                        None,
                        AttemptOutcome::Succeeded,
                    )
                }
                PaymentOutcome::Declined {
                    code,
                    category,
                    hard,
                } => (
                    ChargeStatus::Declined,
                    None,
                    Some(code),
                    Some(category),
                    AttemptOutcome::Declined { hard },
                ),
                PaymentOutcome::Fatal { code, .. } => {
                    tracing::error!(subscription_id = %charge.subscription_id, charge_id = %charge.id, attempt = charge.attempt,
                        outcome = "unauthorized", code = %code, "Square rejected the access token; charge left pending");
                    summary.unresolved += 1;
                    unauthorized = Some(code);
                    continue;
                }
                PaymentOutcome::Voided => (
                    ChargeStatus::Failed,
                    None,
                    Some("REVIEWED_UNPAID".to_owned()),
                    None,
                    AttemptOutcome::Voided,
                ),
                PaymentOutcome::Misconfigured {
                    code,
                    category,
                    field,
                    detail,
                } => {
                    tracing::error!(
                        subscription_id = %charge.subscription_id, charge_id = %charge.id, attempt = charge.attempt,
                        outcome = "misconfigured", code = %code, field = field.as_deref().unwrap_or(""),
                        setting = suspect_setting(&code, field.as_deref()), %detail,
                        "Square refused the request for a configuration reason, not the customer's: no dunning step, tried again later"
                    );
                    (
                        ChargeStatus::Failed,
                        None,
                        Some(code),
                        Some(category),
                        AttemptOutcome::Misconfigured,
                    )
                }
                PaymentOutcome::Transient { reason, .. }
                | PaymentOutcome::Unknown { reason }
                | PaymentOutcome::KeyReused { detail: reason } => {
                    tracing::warn!(
                        subscription_id = %charge.subscription_id, charge_id = %charge.id, attempt = charge.attempt,
                        outcome = "pending", code = "", amount_minor = charge.money.minor(), currency = %charge.money.currency(),
                        duration_ms, %reason, "charge left pending for recovery"
                    );
                    summary.unresolved += 1;
                    metrics::counter!(crate::ops::metrics::CHARGES, "outcome" => "pending", "code" => "").increment(1);
                    deferred.push((
                        charge.id,
                        self.clock.now() + super::resend_backoff(charge.sends, self.config.lease),
                    ));
                    continue;
                }
                PaymentOutcome::Undecided { reason } => {
                    review = Some(reason);
                    (
                        ChargeStatus::NeedsReview,
                        None,
                        None,
                        None,
                        AttemptOutcome::Voided,
                    )
                }
            };
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
                outcome: Some(attempt_outcome),
                duration_ms,
            };
            if let Some(reason) = review {
                d.send_to_review(reason);
            }
            decided.push((charge, d));
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
            let resolved = loop {
                match self.record_decided(&mut decided, now).await {
                    Ok(r) => break r,
                    Err(BillingError::Store(e)) if is_retryable(&e) && tries < 3 => {
                        tries += 1;
                        tracing::warn!(error = %e, tries, "recording batch conflicted; retrying");
                    }
                    Err(e) => return Err(e),
                }
            };
            for (charge, d) in &decided {
                if !resolved.contains(&charge.id) {
                    summary.fenced += 1;
                    tracing::info!(subscription_id = %charge.subscription_id, charge_id = %charge.id, outcome = "fenced",
                        "charge was taken over by another worker; recording nothing");
                    continue;
                }
                let r = &d.resolution;
                if r.status == ChargeStatus::NeedsReview {
                    summary.needs_review += 1;
                    tracing::error!(
                        subscription_id = %charge.subscription_id, charge_id = %charge.id, attempt = charge.attempt,
                        outcome = "needs_review", provider_payment_id = r.review_payment_id.as_deref().unwrap_or(""),
                        reason = r.review_reason.as_deref().unwrap_or(""),
                        "charge needs review: neither recorded as paid nor declined, never re-sent; `paycron charges review`"
                    );
                    metrics::counter!(crate::ops::metrics::CHARGES, "outcome" => "needs_review", "code" => REVIEW_CODE)
                        .increment(1);
                    continue;
                }
                tracing::info!(
                    subscription_id = %charge.subscription_id,
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
                metrics::histogram!(crate::ops::metrics::CHARGE_SECONDS)
                    .record(d.duration_ms as f64 / 1000.0);
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
        }
        if let Some(code) = unauthorized {
            return Err(BillingError::Unauthorized { code });
        }
        Ok(summary)
    }

    /// Withdraws charges of ours that were never sent, closing their subscriptions' open
    /// charge: the subscriptions stay due for the next claim. Returns how many.
    pub(crate) async fn withdraw_unsent(&self, ids: &[ChargeId]) -> Result<u64> {
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let withdrawn = crate::store::charges::withdraw_unsent(&mut tx, self.owner, ids).await?;
        subscriptions::close_charges(&mut tx, &withdrawn).await?;
        tx.commit().await.map_err(StoreError::from)?;
        tracing::info!(
            withdrawn = withdrawn.len(),
            "charges never sent were withdrawn"
        );
        Ok(withdrawn.len() as u64)
    }

    /// The transaction: returns the ids this call resolved (the rest were fenced).
    async fn record_decided(
        &self,
        decided: &mut [(ChargeRow, Decided)],
        now: DateTime<Utc>,
    ) -> Result<Vec<ChargeId>> {
        let wall = self.clock.now();
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        // A payment id already recorded for another charge (or twice in this batch) cannot be
        // this charge's success: that charge goes to review, the rest of the batch is recorded.
        let paid: Vec<String> = decided
            .iter()
            .filter_map(|(_, d)| d.resolution.payment_id.clone())
            .collect();
        let recorded = crate::store::charges::payments_recorded(&mut tx, &paid).await?;
        let mut seen: HashMap<String, ChargeId> = HashMap::new();
        for (charge, d) in decided.iter_mut() {
            let Some(pid) = d.resolution.payment_id.clone() else {
                continue;
            };
            let other = recorded
                .get(&pid)
                .filter(|id| **id != charge.id)
                .or_else(|| seen.get(&pid))
                .copied();
            match other {
                Some(other) => d.send_to_review(format!(
                    "Square's payment {pid} is already recorded for charge {other}"
                )),
                None => {
                    seen.insert(pid, charge.id);
                }
            }
        }
        let resolutions: Vec<OwnedResolution> =
            decided.iter().map(|(_, d)| d.resolution.clone()).collect();
        let resolved = resolve_many(&mut tx, self.owner, &resolutions, wall).await?;
        if resolved.is_empty() {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(vec![]);
        }
        let (in_review, resolved): (Vec<ChargeRow>, Vec<ChargeRow>) = resolved
            .into_iter()
            .partition(|c| c.status == ChargeStatus::NeedsReview);
        let mut events = Vec::new();
        for c in &in_review {
            let r = decided
                .iter()
                .find(|(k, _)| k.id == c.id)
                .map(|(_, d)| &d.resolution);
            events.push(NewEvent {
                kind: "charge_needs_review",
                subscription_id: Some(c.subscription_id),
                customer_id: Some(c.customer_id.clone()),
                charge_id: Some(c.id),
                payload: serde_json::json!({
                    "charge_id": c.id,
                    "period_start": c.period_start,
                    "attempt": c.attempt,
                    "amount_minor": c.money.minor(),
                    "currency": c.money.currency(),
                    "provider_payment_id": r.and_then(|r| r.review_payment_id.clone()),
                    "reason": r.and_then(|r| r.review_reason.clone()),
                }),
            });
        }
        ledger::record_many(&mut tx, &resolved, wall).await?;
        let decided: &[(ChargeRow, Decided)] = decided;
        let by_id: HashMap<ChargeId, &(ChargeRow, Decided)> =
            decided.iter().map(|x| (x.0.id, x)).collect();
        let mut sub_ids: Vec<SubscriptionId> = resolved.iter().map(|c| c.subscription_id).collect();
        sub_ids.sort();
        sub_ids.dedup();
        let subs: HashMap<SubscriptionId, SubscriptionRow> =
            subscriptions::lock_many(&mut tx, &sub_ids)
                .await?
                .into_iter()
                .map(|s| (s.id, s))
                .collect();

        let hard_pairs: Vec<(CustomerId, CardId)> = resolved
            .iter()
            .filter(|c| {
                matches!(
                    by_id.get(&c.id).and_then(|x| x.1.outcome),
                    Some(AttemptOutcome::Declined { hard: true })
                )
            })
            .map(|c| (c.customer_id.clone(), c.card_id.clone()))
            .collect();
        let spares = cards::other_enabled_cards(&mut tx, &hard_pairs, now).await?;

        let mut updates = Vec::new();
        let mut stuck = Vec::new();
        for charge in &resolved {
            let (Some(sub), Some((_, d))) =
                (subs.get(&charge.subscription_id), by_id.get(&charge.id))
            else {
                continue;
            };
            let spare = spares
                .get(&(charge.customer_id.clone(), charge.card_id.clone()))
                .cloned();
            match self.transition(sub, charge, d, spare, now, &mut events) {
                Ok(Some(u)) => updates.push((sub.id, u)),
                Ok(None) => {}
                // The outcome is recorded; only this subscription cannot move on.
                Err(e) => stuck.push((sub.id, sub.customer_id.clone(), e.to_string())),
            }
        }
        for (id, customer, why) in &stuck {
            self.quarantine(&mut tx, *id, Some(customer), why).await?;
        }
        // The resolved charges are no longer open: the position update clears the marker; the
        // subscriptions whose position did not move are cleared on their own.
        let moved: std::collections::HashSet<SubscriptionId> =
            updates.iter().map(|(id, _)| *id).collect();
        let closed: Vec<(SubscriptionId, ChargeId)> = resolved
            .iter()
            .filter(|c| !moved.contains(&c.subscription_id))
            .map(|c| (c.subscription_id, c.id))
            .collect();
        subscriptions::close_charges(&mut tx, &closed).await?;
        subscriptions::set_positions(&mut tx, &updates).await?;
        emit_many(&mut tx, &events).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok(resolved.iter().chain(&in_review).map(|c| c.id).collect())
    }

    /// The subscription's next position after one recorded outcome (decided by the lifecycle),
    /// and the events it causes.
    fn transition(
        &self,
        sub: &SubscriptionRow,
        charge: &ChargeRow,
        d: &Decided,
        spare: Option<CardId>,
        now: DateTime<Utc>,
        events: &mut Vec<NewEvent>,
    ) -> Result<Option<PositionUpdate>> {
        let r = &d.resolution;
        let build = |reason: String| BillingError::Build {
            subscription: sub.id,
            reason,
        };
        let Some(outcome) = d.outcome else {
            return Ok(None);
        };
        let payload = serde_json::json!({
            "charge_id": charge.id,
            "period_start": charge.period_start,
            "attempt": charge.attempt,
            "amount_minor": charge.money.minor(),
            "currency": charge.money.currency(),
            "provider_payment_id": r.payment_id,
            "decline_code": r.code,
        });
        let mut emit = |kind: &'static str, payload: serde_json::Value| {
            events.push(NewEvent {
                kind,
                subscription_id: Some(sub.id),
                customer_id: Some(sub.customer_id.clone()),
                charge_id: Some(charge.id),
                payload,
            })
        };
        if r.expected == ChargeStatus::NeedsReview {
            emit(
                "charge_resolved",
                serde_json::json!({
                    "charge_id": charge.id,
                    "decision": if outcome == AttemptOutcome::Succeeded { "paid" } else { "unpaid" },
                    "provider_payment_id": r.payment_id,
                    "note": r.note,
                }),
            );
        }
        match outcome {
            AttemptOutcome::Succeeded => emit("payment_succeeded", payload.clone()),
            AttemptOutcome::Declined { .. } => emit("payment_declined", payload.clone()),
            // Nobody's card was at fault: nothing for the business to tell its customer.
            AttemptOutcome::Misconfigured | AttemptOutcome::Voided => {}
        }
        let period = u32::try_from(charge.period).map_err(|e| build(e.to_string()))?;
        let attempt = u32::try_from(charge.attempt).map_err(|e| build(e.to_string()))?;
        let decided = lifecycle::on_outcome(
            &sub.terms()?,
            &sub.state()?,
            period,
            attempt,
            outcome,
            &self.config.dunning,
            spare.is_some(),
            now,
        )
        .map_err(|e| build(e.to_string()))?;
        for n in &decided.notices {
            let body = match n {
                Notice::Unpaid | Notice::Canceled { .. } => serde_json::json!({
                    "reason": "dunning_exhausted", "decline_code": r.code
                }),
                _ => payload.clone(),
            };
            emit(n.kind(), body);
        }
        Ok(decided.state.map(|state| PositionUpdate {
            state,
            card_id: match (decided.switch_card, spare) {
                (true, Some(card)) => card,
                _ => sub.card_id.clone(),
            },
        }))
    }
}
