//! The one transaction that records a batch of decided outcomes: the charges' final status
//! (fenced on this worker's lease), the ledger entries and postings, the subscriptions' next
//! positions from the pure state machine, and the events, with set-based statements so one
//! commit covers many charges.
//!
//! A payment id already recorded for another charge (or twice in the batch) cannot be a
//! success: that charge goes to review and the rest is recorded. A subscription the state
//! machine cannot move is quarantined; its charge's outcome is recorded all the same.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::record::Decided;
use super::{BillingError, Engine, Result};
use crate::domain::lifecycle::{self, Notice};
use crate::domain::subscription::AttemptOutcome;
use crate::domain::{CardId, ChargeId, ChargeStatus, CustomerId, SubscriptionId};
use crate::store::charges::{ChargeRow, OwnedResolution, resolve_many};
use crate::store::events::{NewEvent, emit_many};
use crate::store::subscriptions::{self, PositionUpdate, SubscriptionRow};
use crate::store::{StoreError, cards, ledger};

impl Engine {
    /// The transaction: returns the ids this call resolved (the rest were fenced), and the
    /// business's `external_ref` of their subscriptions (for the charge log lines).
    ///
    /// A payment id already recorded for another charge is looked up only when
    /// `look_up_payments`: a first try leaves it to the unique index (whose violation the
    /// caller retries with the lookup), sparing every batch a probe per payment for what a
    /// misbehaving provider alone causes. A payment id twice in the batch is found either way.
    pub(super) async fn record_decided(
        &self,
        decided: &mut [(ChargeRow, Decided)],
        now: DateTime<Utc>,
        look_up_payments: bool,
    ) -> Result<(Vec<ChargeId>, HashMap<SubscriptionId, String>)> {
        let wall = self.clock.now();
        let mut tx = crate::store::begin_batch(&self.pool).await?;
        let recorded = if look_up_payments {
            let paid: Vec<String> = decided
                .iter()
                .filter_map(|(_, d)| d.resolution.payment_id.clone())
                .collect();
            crate::store::charges::payments_recorded(&mut tx, &paid).await?
        } else {
            HashMap::new()
        };
        review_reused_payments(decided, &recorded);
        let resolutions: Vec<OwnedResolution> =
            decided.iter().map(|(_, d)| d.resolution.clone()).collect();
        let ids: HashSet<ChargeId> = resolve_many(&mut tx, self.owner, &resolutions, wall)
            .await?
            .into_iter()
            .collect();
        if ids.is_empty() {
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok((vec![], HashMap::new()));
        }
        for (charge, d) in decided.iter_mut() {
            if ids.contains(&charge.id) {
                d.resolution.apply(charge);
            }
        }
        let decided: &[(ChargeRow, Decided)] = decided;
        let (in_review, resolved): (Vec<&ChargeRow>, Vec<&ChargeRow>) = decided
            .iter()
            .map(|(c, _)| c)
            .filter(|c| ids.contains(&c.id))
            .partition(|c| c.status == ChargeStatus::NeedsReview);
        let mut events = review_events(&in_review, decided);
        ledger::record_many(&mut tx, &resolved, wall).await?;
        let refs = self
            .move_subscriptions(&mut tx, &resolved, decided, now, &mut events)
            .await?;
        emit_many(&mut tx, &events).await?;
        tx.commit().await.map_err(StoreError::from)?;
        Ok((
            resolved.iter().chain(&in_review).map(|c| c.id).collect(),
            refs,
        ))
    }

    /// Moves each resolved charge's subscription by the lifecycle (a hard decline may fall back
    /// to the customer's other card), quarantines the ones that cannot move, and closes every
    /// resolved charge's open marker. Returns the subscriptions' `external_ref`s.
    async fn move_subscriptions(
        &self,
        tx: &mut PgConnection,
        resolved: &[&ChargeRow],
        decided: &[(ChargeRow, Decided)],
        now: DateTime<Utc>,
        events: &mut Vec<NewEvent>,
    ) -> Result<HashMap<SubscriptionId, String>> {
        let by_id: HashMap<ChargeId, &(ChargeRow, Decided)> =
            decided.iter().map(|x| (x.0.id, x)).collect();
        let mut sub_ids: Vec<SubscriptionId> = resolved.iter().map(|c| c.subscription_id).collect();
        sub_ids.sort();
        sub_ids.dedup();
        let subs: HashMap<SubscriptionId, SubscriptionRow> = subscriptions::lock_many(tx, &sub_ids)
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
            .filter_map(|c| Some((c.customer_id.clone(), c.card_id.clone()?)))
            .collect();
        let spares = cards::other_enabled_cards(tx, &hard_pairs, now).await?;

        let mut updates = Vec::new();
        let mut stuck = Vec::new();
        for charge in resolved {
            let (Some(sub), Some((_, d))) =
                (subs.get(&charge.subscription_id), by_id.get(&charge.id))
            else {
                continue;
            };
            let spare = charge
                .card_id
                .clone()
                .and_then(|card| spares.get(&(charge.customer_id.clone(), card)).cloned());
            match self.transition(sub, charge, d, spare, now, events) {
                Ok(Some(u)) => updates.push((sub.id, u)),
                Ok(None) => {}
                // The outcome is recorded; only this subscription cannot move on.
                Err(e) => stuck.push((sub.id, sub.customer_id.clone(), e.to_string())),
            }
        }
        for (id, customer, why) in &stuck {
            self.quarantine(tx, *id, Some(customer), why).await?;
        }
        // The resolved charges are no longer open: the position update clears the marker; the
        // subscriptions whose position did not move are cleared on their own.
        let moved: HashSet<SubscriptionId> = updates.iter().map(|(id, _)| *id).collect();
        let closed: Vec<(SubscriptionId, ChargeId)> = resolved
            .iter()
            .filter(|c| !moved.contains(&c.subscription_id))
            .map(|c| (c.subscription_id, c.id))
            .collect();
        subscriptions::close_charges(tx, &closed).await?;
        subscriptions::set_positions(tx, &updates).await?;
        Ok(subs
            .into_iter()
            .filter_map(|(id, s)| Some((id, s.external_ref?)))
            .collect())
    }

    /// The subscription's next position after one recorded outcome (decided by the lifecycle),
    /// and the events it causes.
    ///
    /// Long on purpose: one outcome's move: events, the lifecycle's decision, notices; split, the payload would be rebuilt in three places.
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
                (true, Some(card)) => Some(card),
                _ => sub.card_id.clone(),
            },
        }))
    }
}

/// Sends to review every success whose payment id is already recorded for another charge, or
/// claimed twice in this batch: one payment cannot pay two charges.
fn review_reused_payments(
    decided: &mut [(ChargeRow, Decided)],
    recorded: &HashMap<String, ChargeId>,
) {
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
}

/// One `charge_needs_review` event per charge that went to review.
fn review_events(in_review: &[&ChargeRow], decided: &[(ChargeRow, Decided)]) -> Vec<NewEvent> {
    in_review
        .iter()
        .map(|c| {
            let r = decided
                .iter()
                .find(|(k, _)| k.id == c.id)
                .map(|(_, d)| &d.resolution);
            NewEvent {
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
            }
        })
        .collect()
}
