//! What an attempt's outcome means for its charge, before anything is written: a status to
//! record (a success whose answer does not match the charge goes to review), a later re-send
//! of the same request (no decisive answer), or a refused token. The outcomes that record
//! nothing are logged here, once each.

use chrono::{DateTime, Utc};

use super::Engine;
use crate::domain::ChargeStatus;
use crate::domain::answer::{Asked, differences};
use crate::domain::decline::suspect_setting;
use crate::domain::subscription::AttemptOutcome;
use crate::gateway::PaymentOutcome;
use crate::store::charges::ChargeRow;

/// An outcome, sorted.
pub(super) enum Classified {
    /// A status to record.
    Decided {
        status: ChargeStatus,
        payment_id: Option<String>,
        code: Option<String>,
        category: Option<String>,
        outcome: AttemptOutcome,
        review: Option<String>,
    },
    /// No decisive answer: the same request again after this instant.
    Deferred(DateTime<Utc>),
    /// The access token was refused.
    Unauthorized(String),
}

impl Engine {
    /// What an outcome means for its charge: a status to record (and whether the answer sends
    /// it to review), a later retry of the same request, or a refused token. Logs the outcomes
    /// that record nothing.
    ///
    /// Long on purpose: one match arm per payment outcome; the table of what each means reads best whole.
    pub(super) fn classify(
        &self,
        charge: &ChargeRow,
        outcome: PaymentOutcome,
        duration_ms: u64,
    ) -> Classified {
        let decided = |status, payment_id, code, category, outcome| Classified::Decided {
            status,
            payment_id,
            code,
            category,
            outcome,
            review: None,
        };
        match outcome {
            PaymentOutcome::Succeeded { payment_id, answer } => {
                // An operator's decision on a charge in review is not checked again.
                let mut review = None;
                if charge.status != ChargeStatus::NeedsReview {
                    let asked = Asked {
                        charge_id: charge.id,
                        money: charge.money,
                        customer_id: &charge.customer_id,
                        card_id: charge.card_id.as_ref(),
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
                Classified::Decided {
                    status: ChargeStatus::Succeeded,
                    payment_id: Some(payment_id),
                    code: None,
                    category: None,
                    outcome: AttemptOutcome::Succeeded,
                    review,
                }
            }
            PaymentOutcome::Declined {
                code,
                category,
                hard,
            } => decided(
                ChargeStatus::Declined,
                None,
                Some(code),
                Some(category),
                AttemptOutcome::Declined { hard },
            ),
            PaymentOutcome::Fatal { code, .. } => {
                tracing::error!(subscription_id = %charge.subscription_id, customer_id = %charge.customer_id, charge_id = %charge.id, attempt = charge.attempt,
                    outcome = "unauthorized", code = %code, "Square rejected the access token; charge left pending");
                Classified::Unauthorized(code)
            }
            PaymentOutcome::Voided => decided(
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
                    subscription_id = %charge.subscription_id, customer_id = %charge.customer_id, charge_id = %charge.id, attempt = charge.attempt,
                    outcome = "misconfigured", code = %code, field = field.as_deref().unwrap_or(""),
                    setting = suspect_setting(&code, field.as_deref()), %detail,
                    "Square refused the request for a configuration reason, not the customer's: no dunning step, tried again later"
                );
                decided(
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
                    subscription_id = %charge.subscription_id, customer_id = %charge.customer_id, charge_id = %charge.id, attempt = charge.attempt,
                    outcome = "pending", code = "", amount_minor = charge.money.minor(), currency = %charge.money.currency(),
                    duration_ms, %reason, "charge left pending for recovery"
                );
                metrics::counter!(crate::ops::metrics::CHARGES, "outcome" => "pending", "code" => "").increment(1);
                Classified::Deferred(
                    self.clock.now() + super::resend_backoff(charge.sends, self.config.lease),
                )
            }
            PaymentOutcome::Undecided { reason } => Classified::Decided {
                status: ChargeStatus::NeedsReview,
                payment_id: None,
                code: None,
                category: None,
                outcome: AttemptOutcome::Voided,
                review: Some(reason),
            },
        }
    }
}
