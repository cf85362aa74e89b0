//! Disputes and the webhooks Square sends about them and about refunds, on demand: a test or
//! the demo opens a dispute on a payment and moves it through Square's states; each step bumps
//! the dispute's `version` and yields the notification body Square would POST
//! (`dispute.created`, `dispute.state.updated`, `refund.updated`), in the spec's shape.

use chrono::Utc;

use super::{SimState, rfc3339};

/// One simulated dispute.
#[derive(Clone, Debug)]
pub struct SimDispute {
    /// Square's dispute id.
    pub id: String,
    /// The payment disputed.
    pub payment_id: String,
    /// Current `DisputeState`.
    pub state: String,
    /// Square's version, bumped by every change.
    pub version: i64,
    /// Disputed amount.
    pub amount: i64,
    /// Currency.
    pub currency: String,
    /// When it was opened (RFC 3339).
    pub created_at: String,
}

impl SimState {
    /// Opens a dispute on `payment_id` (EVIDENCE_REQUIRED, the whole amount); returns the
    /// dispute's id and the `dispute.created` notification. `None` for an unknown payment.
    pub fn open_dispute(&mut self, payment_id: &str) -> Option<(String, String)> {
        let p = self
            .by_id
            .get(payment_id)
            .map(|&i| self.payments[i].clone())?;
        self.next_id += 1;
        let d = SimDispute {
            id: format!("SIMDISPUTE{:010}", self.next_id),
            payment_id: payment_id.to_owned(),
            state: "EVIDENCE_REQUIRED".into(),
            version: 1,
            amount: p.amount_money.amount,
            currency: p.amount_money.currency.clone(),
            created_at: rfc3339(Utc::now() + self.clock_offset),
        };
        let body = self.dispute_notification("dispute.created", &d);
        let id = d.id.clone();
        self.disputes.push(d);
        Some((id, body))
    }

    /// Moves a dispute to `state` (e.g. PROCESSING, WON, LOST); returns the
    /// `dispute.state.updated` notification. `None` for an unknown dispute.
    pub fn move_dispute(&mut self, id: &str, state: &str) -> Option<String> {
        let i = self.disputes.iter().position(|d| d.id == id)?;
        self.disputes[i].state = state.to_owned();
        self.disputes[i].version += 1;
        let d = self.disputes[i].clone();
        Some(self.dispute_notification("dispute.state.updated", &d))
    }

    /// The `refund.updated` notification for a refund as it stands now. `None` if unknown.
    pub fn refund_notification(&mut self, refund_id: &str) -> Option<String> {
        let r = self.refunds.iter().find(|r| r.id == refund_id)?.clone();
        self.next_id += 1;
        Some(
            serde_json::json!({
                "merchant_id": "SIMMERCHANT",
                "type": "refund.updated",
                "event_id": format!("sim-event-{}", self.next_id),
                "created_at": rfc3339(Utc::now() + self.clock_offset),
                "data": {"type": "refund", "id": r.id, "object": {"refund": r}},
            })
            .to_string(),
        )
    }

    fn dispute_notification(&mut self, kind: &str, d: &SimDispute) -> String {
        self.next_id += 1;
        let now = rfc3339(Utc::now() + self.clock_offset);
        serde_json::json!({
            "merchant_id": "SIMMERCHANT",
            "location_id": self.config.location_id,
            "type": kind,
            "event_id": format!("sim-event-{}", self.next_id),
            "created_at": now,
            "data": {"type": "dispute", "id": d.id, "object": {"dispute": {
                "id": d.id,
                "amount_money": {"amount": d.amount, "currency": d.currency},
                "card_brand": "VISA",
                "created_at": d.created_at,
                "disputed_payment": {"payment_id": d.payment_id},
                "due_at": rfc3339(Utc::now() + self.clock_offset + chrono::Duration::days(14)),
                "location_id": self.config.location_id,
                "reason": "NOT_AS_DESCRIBED",
                "reported_at": now,
                "state": d.state,
                "updated_at": now,
                "version": d.version,
            }}},
        })
        .to_string()
    }
}
