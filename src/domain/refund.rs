//! Refunds and disputes as paycron reads Square's words: where a refund stands, and which money
//! movements a dispute's state means. Pure.
//!
//! A refund is `pending` until Square settles it; only `completed` is money given back. A
//! dispute (a chargeback) holds the disputed amount while it is open; won releases it, lost or
//! accepted turns it into a loss. An inquiry (`INQUIRY_*`) moves no money. Each movement is
//! recorded at most once per dispute, whatever order or number of webhooks arrives.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where one refund stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefundStatus {
    /// Written (maybe sent), or accepted by Square and not settled yet.
    Pending,
    /// The money went back to the card.
    Completed,
    /// Square (or the card's bank) rejected it.
    Rejected,
    /// It failed at Square, or Square refused the request.
    Failed,
}

impl RefundStatus {
    /// The status as stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::Completed => "completed",
            RefundStatus::Rejected => "rejected",
            RefundStatus::Failed => "failed",
        }
    }

    /// Square's `PaymentRefund.status` in paycron's terms; `None` for a status paycron does not
    /// know (left pending, looked at again later).
    pub fn from_square(status: &str) -> Option<Self> {
        match status {
            "PENDING" => Some(RefundStatus::Pending),
            "COMPLETED" => Some(RefundStatus::Completed),
            "REJECTED" => Some(RefundStatus::Rejected),
            "FAILED" => Some(RefundStatus::Failed),
            _ => None,
        }
    }

    /// Settled for good.
    pub fn is_final(&self) -> bool {
        *self != RefundStatus::Pending
    }
}

impl fmt::Display for RefundStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for RefundStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => RefundStatus::Pending,
            "completed" => RefundStatus::Completed,
            "rejected" => RefundStatus::Rejected,
            "failed" => RefundStatus::Failed,
            other => return Err(format!("unknown refund status {other:?}")),
        })
    }
}

/// A refund Square holds, as paycron reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderRefund {
    /// Square's refund id.
    pub id: String,
    /// Square's status, as sent (PENDING, COMPLETED, REJECTED, FAILED).
    pub status: String,
    /// The payment refunded.
    pub payment_id: Option<String>,
    /// Amount refunded, minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// When Square created it, if it said so readably.
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// A money movement a dispute causes, each recorded at most once per dispute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DisputeMovement {
    /// The bank holds the disputed amount (`dispute_hold`).
    Hold,
    /// The seller won: the held amount comes back (`dispute_won`).
    Won,
    /// The seller lost or accepted: the held amount is gone (`dispute_lost`).
    Lost,
}

impl DisputeMovement {
    /// The ledger entry's kind.
    pub fn kind(&self) -> &'static str {
        match self {
            DisputeMovement::Hold => "dispute_hold",
            DisputeMovement::Won => "dispute_won",
            DisputeMovement::Lost => "dispute_lost",
        }
    }
}

/// Whether a dispute in `state` is over.
pub fn dispute_closed(state: &str) -> bool {
    matches!(state, "WON" | "LOST" | "ACCEPTED" | "INQUIRY_CLOSED")
}

/// The movements a dispute now in `state` still needs, given those already recorded: a
/// chargeback holds money first; a closed one then releases or loses it. An inquiry moves
/// nothing, and neither does a state paycron does not know.
pub fn dispute_movements(state: &str, recorded: &[DisputeMovement]) -> Vec<DisputeMovement> {
    let wanted: &[DisputeMovement] = match state {
        "EVIDENCE_REQUIRED" | "PROCESSING" => &[DisputeMovement::Hold],
        "WON" => &[DisputeMovement::Hold, DisputeMovement::Won],
        "LOST" | "ACCEPTED" => &[DisputeMovement::Hold, DisputeMovement::Lost],
        _ => &[],
    };
    // Closed one way, never the other: a late WON after LOST (or the reverse) moves nothing.
    let closed = recorded
        .iter()
        .any(|m| matches!(m, DisputeMovement::Won | DisputeMovement::Lost));
    wanted
        .iter()
        .copied()
        .filter(|m| !recorded.contains(m))
        .filter(|m| !(closed && matches!(m, DisputeMovement::Won | DisputeMovement::Lost)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::DisputeMovement::{Hold, Lost, Won};
    use super::*;

    #[test]
    fn a_chargeback_holds_then_releases_or_loses_once() {
        assert_eq!(dispute_movements("EVIDENCE_REQUIRED", &[]), [Hold]);
        assert_eq!(dispute_movements("PROCESSING", &[Hold]), []);
        assert_eq!(dispute_movements("WON", &[Hold]), [Won]);
        assert_eq!(dispute_movements("LOST", &[Hold]), [Lost]);
        assert_eq!(dispute_movements("ACCEPTED", &[]), [Hold, Lost]);
        // Replays and late or contradictory states move nothing more.
        assert_eq!(dispute_movements("WON", &[Hold, Won]), []);
        assert_eq!(dispute_movements("LOST", &[Hold, Won]), []);
        assert_eq!(dispute_movements("EVIDENCE_REQUIRED", &[Hold, Lost]), []);
    }

    #[test]
    fn an_inquiry_moves_no_money() {
        for s in [
            "INQUIRY_EVIDENCE_REQUIRED",
            "INQUIRY_PROCESSING",
            "INQUIRY_CLOSED",
            "NEW_STATE",
        ] {
            assert_eq!(dispute_movements(s, &[]), [], "{s}");
        }
        assert!(dispute_closed("INQUIRY_CLOSED") && dispute_closed("ACCEPTED"));
        assert!(!dispute_closed("PROCESSING"));
    }

    #[test]
    fn squares_refund_statuses_map_and_unknown_ones_wait() {
        assert_eq!(
            RefundStatus::from_square("COMPLETED"),
            Some(RefundStatus::Completed)
        );
        assert_eq!(
            RefundStatus::from_square("PENDING"),
            Some(RefundStatus::Pending)
        );
        assert_eq!(RefundStatus::from_square("SOMETHING_NEW"), None);
        for s in ["pending", "completed", "rejected", "failed"] {
            assert_eq!(s.parse::<RefundStatus>().unwrap().as_str(), s);
        }
    }
}
