//! Step 3 of the protocol: recording one attempt's outcome in one transaction — the charge's
//! final status (fenced on our lease), the ledger entry and postings, the subscription's next
//! position from the pure state machine, and the events. One log line per outcome.

use std::time::Instant;

use chrono::{DateTime, Utc};

use super::{BillingError, Engine, Result, Summary};
use crate::domain::subscription::{AttemptOutcome, Position, Transition, after_outcome};
use crate::gateway::PaymentOutcome;
use crate::store::charges::{self, ChargeRow, Resolution};
use crate::store::subscriptions::{self, PositionUpdate};
use crate::store::{StoreError, cards, events, ledger};

impl Engine {
    /// Records `outcome` for `charge`. Outcomes that leave the payment's fate open are logged
    /// and left pending.
    pub(crate) async fn record(
        &self,
        charge: &ChargeRow,
        outcome: &PaymentOutcome,
        now: DateTime<Utc>,
        started: Instant,
    ) -> Result<Summary> {
        let duration_ms = started.elapsed().as_millis() as u64;
        let (resolution, attempt_outcome) = match outcome {
            PaymentOutcome::Succeeded { payment_id, .. } => (
                Resolution {
                    status: "succeeded",
                    payment_id: Some(payment_id),
                    code: None,
                    category: None,
                },
                AttemptOutcome::Succeeded,
            ),
            PaymentOutcome::Declined {
                code,
                category,
                hard,
            } => (
                Resolution {
                    status: "declined",
                    payment_id: None,
                    code: Some(code),
                    category: Some(category),
                },
                AttemptOutcome::Declined { hard: *hard },
            ),
            PaymentOutcome::Fatal { code, category, .. } if category == "AUTHENTICATION_ERROR" => {
                tracing::error!(subscription_id = %charge.subscription_id, charge_id = %charge.id, attempt = charge.attempt,
                    outcome = "unauthorized", code = %code, "Square rejected the access token; charge left pending");
                return Err(BillingError::Unauthorized { code: code.clone() });
            }
            PaymentOutcome::Fatal {
                code,
                category,
                detail,
            } => {
                tracing::warn!(subscription_id = %charge.subscription_id, charge_id = %charge.id, %detail, "Square refused the request");
                (
                    Resolution {
                        status: "failed",
                        payment_id: None,
                        code: Some(code),
                        category: Some(category),
                    },
                    // A request Square can never accept for this card: treat the card as unusable.
                    AttemptOutcome::Declined { hard: true },
                )
            }
            PaymentOutcome::Transient { reason, .. }
            | PaymentOutcome::Unknown { reason }
            | PaymentOutcome::KeyReused { detail: reason } => {
                let kind = match outcome {
                    PaymentOutcome::Transient { .. } => "transient",
                    PaymentOutcome::Unknown { .. } => "unknown",
                    _ => "key_reused",
                };
                tracing::warn!(
                    subscription_id = %charge.subscription_id, charge_id = %charge.id, attempt = charge.attempt,
                    outcome = kind, code = "", amount_minor = charge.amount_minor, currency = %charge.currency,
                    duration_ms, %reason, "charge left pending for recovery"
                );
                return Ok(Summary {
                    attempted: 1,
                    unresolved: 1,
                    ..Summary::default()
                });
            }
        };

        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let Some(resolved) =
            charges::resolve(&mut tx, charge.id, self.owner, &resolution, Utc::now()).await?
        else {
            tx.rollback().await.map_err(StoreError::from)?;
            tracing::info!(subscription_id = %charge.subscription_id, charge_id = %charge.id, outcome = "fenced",
                "charge was taken over by another worker; recording nothing");
            return Ok(Summary {
                fenced: 1,
                ..Summary::default()
            });
        };
        ledger::record(&mut tx, &resolved, Utc::now()).await?;
        let sub = subscriptions::lock(&mut tx, charge.subscription_id).await?;
        let was_past_due = sub.status == "past_due" || charge.attempt > 1;
        let billable = matches!(sub.status.as_str(), "active" | "trialing" | "past_due");
        let same_position = sub.next_period == charge.period && sub.next_attempt == charge.attempt;
        let payload = serde_json::json!({
            "charge_id": charge.id,
            "period_start": charge.period_start,
            "attempt": charge.attempt,
            "amount_minor": charge.amount_minor,
            "currency": charge.currency,
            "provider_payment_id": resolution.payment_id,
            "decline_code": resolution.code,
        });
        let sid = Some(sub.id);
        let cust = Some(sub.customer_id.as_str());
        match attempt_outcome {
            AttemptOutcome::Succeeded => {
                events::emit(
                    &mut tx,
                    "payment_succeeded",
                    sid,
                    cust,
                    Some(charge.id),
                    payload.clone(),
                )
                .await?;
                if was_past_due {
                    events::emit(
                        &mut tx,
                        "payment_recovered",
                        sid,
                        cust,
                        Some(charge.id),
                        payload.clone(),
                    )
                    .await?;
                }
            }
            AttemptOutcome::Declined { .. } => {
                events::emit(
                    &mut tx,
                    "payment_declined",
                    sid,
                    cust,
                    Some(charge.id),
                    payload.clone(),
                )
                .await?;
            }
        }
        if same_position {
            let cal = sub.calendar()?;
            let pos = Position {
                calendar: cal,
                period: charge.period as u32,
                attempt: charge.attempt as u32,
                dunning_started_at: sub.dunning_started_at,
                max_cycles: sub.max_cycles.map(|c| c as u32),
                ends_at: sub.ends_at,
            };
            let other_card = if matches!(attempt_outcome, AttemptOutcome::Declined { hard: true }) {
                cards::other_enabled_card(&mut tx, &sub.customer_id, &charge.card_id).await?
            } else {
                None
            };
            let transition = after_outcome(
                &pos,
                attempt_outcome,
                &self.config.dunning,
                other_card.is_some(),
                now,
            )
            .map_err(|e| BillingError::Build {
                subscription: sub.id,
                reason: e.to_string(),
            })?;
            let update = match transition {
                Transition::NextPeriod {
                    period,
                    due,
                    status,
                } => PositionUpdate {
                    status: if billable
                        || status.as_str() == "completed" && sub.status != "canceled"
                    {
                        status.as_str().to_owned()
                    } else {
                        sub.status.clone()
                    },
                    card_id: sub.card_id.clone(),
                    next_period: period as i32,
                    next_attempt: 1,
                    next_due_at: if billable || sub.status == "paused" {
                        due
                    } else {
                        None
                    },
                    dunning_started_at: None,
                    clear_skip: false,
                },
                Transition::Retry { .. } | Transition::Exhausted { .. } if !billable => {
                    PositionUpdate {
                        status: sub.status.clone(),
                        card_id: sub.card_id.clone(),
                        next_period: sub.next_period,
                        next_attempt: charge.attempt + 1,
                        next_due_at: sub.next_due_at,
                        dunning_started_at: sub.dunning_started_at,
                        clear_skip: false,
                    }
                }
                Transition::Retry {
                    attempt,
                    due,
                    switch_card,
                    dunning_started_at,
                } => {
                    if sub.status != "past_due" {
                        events::emit(
                            &mut tx,
                            "subscription_past_due",
                            sid,
                            cust,
                            Some(charge.id),
                            payload.clone(),
                        )
                        .await?;
                    }
                    PositionUpdate {
                        status: "past_due".into(),
                        card_id: if switch_card {
                            other_card.clone().unwrap_or_else(|| sub.card_id.clone())
                        } else {
                            sub.card_id.clone()
                        },
                        next_period: sub.next_period,
                        next_attempt: attempt as i32,
                        next_due_at: Some(due),
                        dunning_started_at: Some(dunning_started_at),
                        clear_skip: false,
                    }
                }
                Transition::Exhausted { status } => {
                    let kind = if status.as_str() == "canceled" {
                        "subscription_canceled"
                    } else {
                        "subscription_unpaid"
                    };
                    events::emit(&mut tx, kind, sid, cust, Some(charge.id), serde_json::json!({"reason": "dunning_exhausted", "decline_code": resolution.code})).await?;
                    PositionUpdate {
                        status: status.as_str().to_owned(),
                        card_id: sub.card_id.clone(),
                        next_period: sub.next_period,
                        next_attempt: charge.attempt + 1,
                        next_due_at: None,
                        dunning_started_at: sub.dunning_started_at.or(Some(now)),
                        clear_skip: false,
                    }
                }
            };
            subscriptions::set_position(&mut tx, sub.id, &update).await?;
        }
        tx.commit().await.map_err(StoreError::from)?;

        let code = resolution.code.unwrap_or("");
        tracing::info!(
            subscription_id = %charge.subscription_id,
            charge_id = %charge.id,
            attempt = charge.attempt,
            outcome = resolution.status,
            code,
            amount_minor = charge.amount_minor,
            currency = %charge.currency,
            duration_ms,
            provider_payment_id = resolution.payment_id.unwrap_or(""),
            "charge"
        );
        let mut s = Summary {
            attempted: 1,
            ..Summary::default()
        };
        match resolution.status {
            "succeeded" => {
                s.succeeded = 1;
                s.revenue
                    .insert(charge.currency.clone(), charge.amount_minor);
            }
            "declined" => s.declined = 1,
            _ => s.failed = 1,
        }
        Ok(s)
    }
}
