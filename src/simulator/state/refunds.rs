//! RefundPayment, GetPaymentRefund and ListPaymentRefunds as Square answers them: the same
//! idempotency rules as CreatePayment (a repeated key with the same body gets the first answer,
//! with another body `IDEMPOTENCY_KEY_REUSED`), Square's checks (the payment exists and took
//! money, the currency is the payment's, the amount is positive and at most what is left after
//! the refunds not rejected or failed), and asynchronous completion: a refund is `PENDING` when
//! created and settles (`COMPLETED`, or `REJECTED` under the `reject_refunds` fault) the first
//! time it is read afterwards, or when a test calls [`SimState::settle_refunds`].

use chrono::Utc;

use std::sync::Arc;

use super::{Answer, Reply, SimState, error, not_json, rfc3339};
use crate::gateway::wire::{self, PaymentRefund};

impl SimState {
    /// `POST /v2/refunds`.
    pub fn refund_payment(&mut self, raw: &str) -> Arc<Answer> {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(raw) else {
            return Arc::new(not_json().into());
        };
        let key = value
            .get("idempotency_key")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_owned();
        if key.is_empty() || key.chars().count() > 45 {
            return Arc::new(Answer::from(error(
                400,
                "INVALID_REQUEST_ERROR",
                if key.is_empty() {
                    "MISSING_REQUIRED_PARAMETER"
                } else {
                    "VALUE_TOO_LONG"
                },
                "idempotency_key must be 1 to 45 characters.",
                Some("idempotency_key"),
            )));
        }
        let slot = format!("refund:{key}");
        if let Some(answer) = self.replay(&slot, raw) {
            return answer;
        }
        let reply = self.make_refund(&value);
        if reply.status == 200 {
            return self.remember(slot, raw, reply.into());
        }
        Arc::new(reply.into())
    }

    fn make_refund(&mut self, value: &serde_json::Value) -> Reply {
        let req: wire::RefundPaymentRequest = match serde_json::from_value(value.clone()) {
            Ok(r) => r,
            Err(e) => {
                return error(
                    400,
                    "INVALID_REQUEST_ERROR",
                    "BAD_REQUEST",
                    &e.to_string(),
                    None,
                );
            }
        };
        let Some(payment) = self
            .by_id
            .get(&req.payment_id)
            .map(|&i| self.payments[i].clone())
        else {
            return error(
                404,
                "INVALID_REQUEST_ERROR",
                "NOT_FOUND",
                "Payment not found.",
                Some("payment_id"),
            );
        };
        if !payment.taken() {
            return error(
                400,
                "REFUND_ERROR",
                "PAYMENT_NOT_REFUNDABLE",
                "The payment took no money.",
                Some("payment_id"),
            );
        }
        if req.amount_money.currency != payment.amount_money.currency {
            return error(
                400,
                "INVALID_REQUEST_ERROR",
                "INVALID_VALUE",
                "The currency does not match the payment's.",
                Some("amount_money.currency"),
            );
        }
        let left = payment.amount_money.amount - self.refunded(&req.payment_id);
        if req.amount_money.amount <= 0 || req.amount_money.amount > left {
            return error(
                400,
                "REFUND_ERROR",
                "REFUND_AMOUNT_INVALID",
                &format!(
                    "The refund amount must be between 1 and {left}, what is left of the payment."
                ),
                Some("amount_money.amount"),
            );
        }
        let now = rfc3339(Utc::now() + self.clock_offset);
        self.next_id += 1;
        let refund = PaymentRefund {
            id: format!("SIMREFUND{:012}", self.next_id),
            status: Some("PENDING".into()),
            location_id: payment.location_id.clone(),
            amount_money: req.amount_money,
            payment_id: Some(req.payment_id),
            reason: req.reason,
            created_at: Some(now.clone()),
            updated_at: Some(now),
        };
        self.refunds.push(refund.clone());
        Reply {
            status: 200,
            body: serde_json::json!({ "refund": refund }),
        }
    }

    /// What the refunds of a payment that are not rejected or failed add up to.
    fn refunded(&self, payment_id: &str) -> i64 {
        self.refunds
            .iter()
            .filter(|r| r.payment_id.as_deref() == Some(payment_id))
            .filter(|r| !matches!(r.status.as_deref(), Some("REJECTED" | "FAILED")))
            .map(|r| r.amount_money.amount)
            .sum()
    }

    /// Settles every pending refund (what Square does on its own a little later).
    pub fn settle_refunds(&mut self) {
        let outcome = if self.faults.reject_refunds {
            "REJECTED"
        } else {
            "COMPLETED"
        };
        let now = rfc3339(Utc::now() + self.clock_offset);
        for r in &mut self.refunds {
            if r.status.as_deref() == Some("PENDING") {
                r.status = Some(outcome.into());
                r.updated_at = Some(now.clone());
            }
        }
    }

    /// `GET /v2/refunds/{id}` (reading settles what was pending).
    pub fn get_refund(&mut self, id: &str) -> Reply {
        self.settle_refunds();
        match self.refunds.iter().find(|r| r.id == id) {
            Some(r) => Reply {
                status: 200,
                body: serde_json::json!({ "refund": r }),
            },
            None => error(
                404,
                "INVALID_REQUEST_ERROR",
                "NOT_FOUND",
                "Refund not found.",
                None,
            ),
        }
    }

    /// `GET /v2/refunds` created in `[begin, end)`, oldest first, 100 a page (reading settles
    /// what was pending).
    pub fn list_refunds(
        &mut self,
        begin: Option<&str>,
        end: Option<&str>,
        cursor: Option<&str>,
    ) -> Reply {
        self.settle_refunds();
        let start = match super::parse_cursor(cursor) {
            Ok(s) => s,
            Err(reply) => return reply,
        };
        let parse = |s: Option<&str>| s.map(chrono::DateTime::parse_from_rfc3339).transpose();
        let (Ok(b), Ok(e)) = (parse(begin), parse(end)) else {
            return error(
                400,
                "INVALID_REQUEST_ERROR",
                "INVALID_TIME",
                "Invalid time.",
                Some("begin_time"),
            );
        };
        let matching: Vec<&PaymentRefund> = self
            .refunds
            .iter()
            .filter(|r| {
                let t = r
                    .created_at
                    .as_deref()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                b.is_none_or(|b| t.is_some_and(|t| t >= b))
                    && e.is_none_or(|e| t.is_some_and(|t| t < e))
            })
            .collect();
        let total = matching.len();
        let page: Vec<&PaymentRefund> = matching.into_iter().skip(start).take(100).collect();
        let mut body = serde_json::json!({});
        if !page.is_empty() {
            body["refunds"] = serde_json::to_value(&page).unwrap_or_default();
        }
        if start + 100 < total {
            body["cursor"] = (start + 100).to_string().into();
        }
        Reply { status: 200, body }
    }

    /// Every refund made, in order.
    pub fn refunds(&self) -> &[PaymentRefund] {
        &self.refunds
    }
}
