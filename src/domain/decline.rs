//! How Square's errors are classified, by whose fault they are: the card's (a decline, soft or
//! hard), nobody's (transient), or the seller's setup and the request's (configuration).
//!
//! Square's HTTP status for a decline is undocumented (400 or 402), so classification reads
//! `errors[].category`, `errors[].code` and `errors[].field` only.
//!
//! - `PAYMENT_METHOD_ERROR` is a decline except `TEMPORARY_ERROR` (retried with the same key)
//!   and `INVALID_LOCATION`, which names the seller's location, not the card.
//! - `API_ERROR`, `RATE_LIMIT_ERROR` and `EXTERNAL_VENDOR_ERROR` are transient.
//! - `AUTHENTICATION_ERROR` is the token.
//! - `INVALID_REQUEST_ERROR` is the request's shape or the seller's setup — a configuration
//!   error — except what names the one card or customer charged (card data, a card or customer
//!   Square no longer has), which is a hard decline of that card.
//! - Anything unknown is a configuration error, never a decline: an answer paycron does not
//!   understand must not move a customer through dunning.

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
    /// The seller's setup or the request is wrong (location, currency, API version, request
    /// shape, or an error paycron does not know): no customer is at fault, and every charge
    /// would get the same answer until an operator fixes it.
    Configuration,
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
    "MANUALLY_ENTERED_PAYMENT_NOT_SUPPORTED",
    "PAN_FAILURE",
];

/// The request fields that name the one card and customer charged: an invalid-request error
/// about them is that card's problem, not the configuration's.
const CARD_FIELDS: &[&str] = &["source_id", "customer_id"];

/// Classifies one Square error by its category and code (no field known).
pub fn classify(category: &str, code: &str) -> ErrorClass {
    classify_field(category, code, None)
}

/// Classifies one Square error by its category, code and the field it names.
pub fn classify_field(category: &str, code: &str, field: Option<&str>) -> ErrorClass {
    match category {
        "PAYMENT_METHOD_ERROR" => match code {
            "TEMPORARY_ERROR" => ErrorClass::Transient,
            "INVALID_LOCATION" => ErrorClass::Configuration,
            _ => ErrorClass::Declined {
                hard: HARD_DECLINE_CODES.contains(&code),
            },
        },
        "API_ERROR" | "RATE_LIMIT_ERROR" | "EXTERNAL_VENDOR_ERROR" => ErrorClass::Transient,
        "AUTHENTICATION_ERROR" => ErrorClass::Authentication,
        "INVALID_REQUEST_ERROR" => match code {
            "IDEMPOTENCY_KEY_REUSED" => ErrorClass::KeyReused,
            // Square timed out or saw a concurrent request with this key: same key again.
            "REQUEST_TIMEOUT" | "CONFLICT" => ErrorClass::Transient,
            // A card-data problem surfaced as an invalid request: the card is unusable.
            "INVALID_CARD_DATA" | "CARD_PRESENCE_REQUIRED" | "CUSTOMER_NOT_FOUND" => {
                ErrorClass::Declined { hard: true }
            }
            // The card or customer charged is gone or does not match: that card's problem.
            "NOT_FOUND" | "GONE" | "INVALID_VALUE" | "INVALID_CARD"
                if field.is_some_and(|f| CARD_FIELDS.contains(&f)) =>
            {
                ErrorClass::Declined { hard: true }
            }
            _ => ErrorClass::Configuration,
        },
        _ => ErrorClass::Configuration,
    }
}

/// The setting an operator should look at for a configuration error, when one is likely.
pub fn suspect_setting(code: &str, field: Option<&str>) -> &'static str {
    match (code, field) {
        ("INVALID_LOCATION", _) | (_, Some("location_id")) => "SQUARE_LOCATION_ID",
        (
            "UNSUPPORTED_CURRENCY"
            | "CURRENCY_MISMATCH"
            | "INVALID_CURRENCY"
            | "INVALID_CURRENCY_FOR_LOCATION",
            _,
        )
        | (_, Some("amount_money.currency")) => "the subscription currency vs SQUARE_LOCATION_ID",
        ("CARD_PROCESSING_NOT_ENABLED" | "MERCHANT_SUBSCRIPTION_NOT_FOUND", _) => {
            "the Square account behind SQUARE_ACCESS_TOKEN"
        }
        ("API_VERSION_INCOMPATIBLE" | "INVALID_SQUARE_VERSION_FORMAT", _) => {
            "the pinned Square-Version"
        }
        _ => "SQUARE_LOCATION_ID, SQUARE_ENVIRONMENT and SQUARE_BASE_URL",
    }
}

/// One error of a Square answer: category, code and the field it names.
pub type SquareError = (String, String, Option<String>);

/// Picks the error that decides a response carrying several (Square may send e.g.
/// `GENERIC_DECLINE` with `CVV_FAILURE`): a decline wins over anything else, a transient error
/// over a fatal one, so a payment is never written off while a retry could still decide it.
pub fn decisive(errors: &[SquareError]) -> Option<(&SquareError, ErrorClass)> {
    let rank = |c: &ErrorClass| match c {
        ErrorClass::KeyReused => 0,
        ErrorClass::Declined { .. } => 1,
        ErrorClass::Transient => 2,
        ErrorClass::Authentication => 3,
        ErrorClass::Configuration => 4,
    };
    errors
        .iter()
        .map(|e| (e, classify_field(&e.0, &e.1, e.2.as_deref())))
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
            ErrorClass::Configuration
        );
        assert_eq!(
            classify_field("INVALID_REQUEST_ERROR", "NOT_FOUND", Some("source_id")),
            ErrorClass::Declined { hard: true }
        );
        assert_eq!(
            classify_field("INVALID_REQUEST_ERROR", "NOT_FOUND", Some("location_id")),
            ErrorClass::Configuration
        );
        assert_eq!(
            classify("PAYMENT_METHOD_ERROR", "INVALID_LOCATION"),
            ErrorClass::Configuration
        );
        assert_eq!(
            classify("SOMETHING_NEW", "CARD_DECLINED"),
            ErrorClass::Configuration,
            "an unknown category is never a decline"
        );
        assert_eq!(
            suspect_setting("INVALID_LOCATION", None),
            "SQUARE_LOCATION_ID"
        );
    }

    #[test]
    fn decline_wins() {
        let e = |c: &str, k: &str| (c.to_owned(), k.to_owned(), None);
        let errs = vec![
            e("PAYMENT_METHOD_ERROR", "CVV_FAILURE"),
            e("PAYMENT_METHOD_ERROR", "GENERIC_DECLINE"),
        ];
        assert_eq!(decisive(&errs).unwrap().0.1, "CVV_FAILURE");
        let errs = vec![
            e("INVALID_REQUEST_ERROR", "BAD_REQUEST"),
            e("API_ERROR", "SERVICE_UNAVAILABLE"),
        ];
        assert_eq!(decisive(&errs).unwrap().1, ErrorClass::Transient);
    }
}
