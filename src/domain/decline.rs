//! How Square's errors are classified: decline (soft or hard), transient, or fatal.
//!
//! Square's HTTP status for a decline is undocumented (400 or 402), so classification reads
//! `errors[].category` and `errors[].code` only. `PAYMENT_METHOD_ERROR` is a decline except
//! `TEMPORARY_ERROR`, which Square says is safe to retry with the same key. `API_ERROR` and
//! `RATE_LIMIT_ERROR` are transient. Authentication and invalid-request errors are fatal: a
//! configuration problem, or a request that can never succeed as sent.

use serde::{Deserialize, Serialize};

/// What to do about an error Square returned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorClass {
    /// The card was declined. `hard` declines are not retried on the same card.
    Declined {
        /// Whether retrying the same card is pointless.
        hard: bool,
    },
    /// Retry with the same idempotency key and the identical body.
    Transient,
    /// The request used a key already used for a different body: a payment may exist.
    /// Never recorded as a failure; left for recovery and reconciliation.
    KeyReused,
    /// The access token was refused: stop, nothing will work.
    Authentication,
    /// The request can never succeed as sent (bad id, unknown customer, configuration).
    Invalid,
}

/// Decline codes after which charging the same card again is pointless: the card itself is
/// bad, expired or unusable for card-not-present payments. Everything else in
/// `PAYMENT_METHOD_ERROR` is soft (funds, limits, a generic issuer refusal) and goes to dunning.
pub const HARD_DECLINE_CODES: &[&str] = &[
    "BAD_EXPIRATION",
    "CARD_EXPIRED",
    "CARD_NOT_SUPPORTED",
    "CARD_DECLINED_VERIFICATION_REQUIRED",
    "CARD_TOKEN_EXPIRED",
    "CARD_TOKEN_USED",
    "CHIP_INSERTION_REQUIRED",
    "EXPIRATION_FAILURE",
    "INVALID_ACCOUNT",
    "INVALID_CARD",
    "INVALID_CARD_DATA",
    "INVALID_EXPIRATION",
    "INVALID_LOCATION",
    "MANUALLY_ENTERED_PAYMENT_NOT_SUPPORTED",
    "PAN_FAILURE",
];

/// Classifies one Square error by its category and code.
pub fn classify(category: &str, code: &str) -> ErrorClass {
    match category {
        "PAYMENT_METHOD_ERROR" if code == "TEMPORARY_ERROR" => ErrorClass::Transient,
        "PAYMENT_METHOD_ERROR" => ErrorClass::Declined {
            hard: HARD_DECLINE_CODES.contains(&code),
        },
        "API_ERROR" | "RATE_LIMIT_ERROR" | "EXTERNAL_VENDOR_ERROR" => ErrorClass::Transient,
        "AUTHENTICATION_ERROR" => ErrorClass::Authentication,
        "INVALID_REQUEST_ERROR" => match code {
            "IDEMPOTENCY_KEY_REUSED" => ErrorClass::KeyReused,
            // Square timed out or saw a concurrent request with this key: same key again.
            "REQUEST_TIMEOUT" | "CONFLICT" => ErrorClass::Transient,
            // A card-data problem surfaced as an invalid request: the card is unusable.
            "INVALID_CARD_DATA" | "CARD_PRESENCE_REQUIRED" => ErrorClass::Declined { hard: true },
            _ => ErrorClass::Invalid,
        },
        _ => ErrorClass::Invalid,
    }
}

/// Picks the error that decides a response carrying several (Square may send e.g.
/// `GENERIC_DECLINE` with `CVV_FAILURE`): a decline wins over anything else, a transient error
/// over a fatal one, so a payment is never written off while a retry could still decide it.
pub fn decisive(errors: &[(String, String)]) -> Option<(&(String, String), ErrorClass)> {
    let rank = |c: &ErrorClass| match c {
        ErrorClass::KeyReused => 0,
        ErrorClass::Declined { .. } => 1,
        ErrorClass::Transient => 2,
        ErrorClass::Authentication => 3,
        ErrorClass::Invalid => 4,
    };
    errors
        .iter()
        .map(|e| (e, classify(&e.0, &e.1)))
        .min_by_key(|(_, c)| rank(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        assert_eq!(
            classify("PAYMENT_METHOD_ERROR", "INSUFFICIENT_FUNDS"),
            ErrorClass::Declined { hard: false }
        );
        assert_eq!(
            classify("PAYMENT_METHOD_ERROR", "GENERIC_DECLINE"),
            ErrorClass::Declined { hard: false }
        );
        assert_eq!(
            classify("PAYMENT_METHOD_ERROR", "CARD_EXPIRED"),
            ErrorClass::Declined { hard: true }
        );
        assert_eq!(
            classify("PAYMENT_METHOD_ERROR", "TEMPORARY_ERROR"),
            ErrorClass::Transient
        );
        assert_eq!(
            classify("API_ERROR", "INTERNAL_SERVER_ERROR"),
            ErrorClass::Transient
        );
        assert_eq!(
            classify("RATE_LIMIT_ERROR", "RATE_LIMITED"),
            ErrorClass::Transient
        );
        assert_eq!(
            classify("AUTHENTICATION_ERROR", "UNAUTHORIZED"),
            ErrorClass::Authentication
        );
        assert_eq!(
            classify("INVALID_REQUEST_ERROR", "IDEMPOTENCY_KEY_REUSED"),
            ErrorClass::KeyReused
        );
        assert_eq!(
            classify("INVALID_REQUEST_ERROR", "NOT_FOUND"),
            ErrorClass::Invalid
        );
    }

    #[test]
    fn decline_wins() {
        let errs = vec![
            ("PAYMENT_METHOD_ERROR".to_owned(), "CVV_FAILURE".to_owned()),
            (
                "PAYMENT_METHOD_ERROR".to_owned(),
                "GENERIC_DECLINE".to_owned(),
            ),
        ];
        assert_eq!(decisive(&errs).unwrap().0.1, "CVV_FAILURE");
        let errs = vec![
            ("INVALID_REQUEST_ERROR".to_owned(), "BAD_REQUEST".to_owned()),
            ("API_ERROR".to_owned(), "SERVICE_UNAVAILABLE".to_owned()),
        ];
        assert_eq!(decisive(&errs).unwrap().1, ErrorClass::Transient);
    }
}
