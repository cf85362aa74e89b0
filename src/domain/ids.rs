//! Identifiers: Square's customer and card ids, paycron's own ids, and idempotency keys.
//!
//! Invariant 1 (no card data) starts here: a Square id that looks like a primary account
//! number — 13 to 19 digits passing the Luhn check, with or without spaces or dashes — is
//! refused before it can reach the database. Idempotency keys are derived deterministically
//! from (subscription, period, attempt) and always fit Square's 45-character limit.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Square's limit on `CreatePayment.idempotency_key`.
pub const IDEMPOTENCY_KEY_MAX: usize = 45;

/// Why an identifier was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdError {
    /// Empty after trimming.
    #[error("{what} is empty")]
    Empty {
        /// Which id.
        what: &'static str,
    },
    /// Longer than Square allows.
    #[error("{what} is longer than {max} characters")]
    TooLong {
        /// Which id.
        what: &'static str,
        /// The limit.
        max: usize,
    },
    /// Contains whitespace or control characters.
    #[error("{what} {value:?} contains whitespace or control characters")]
    BadCharacters {
        /// Which id.
        what: &'static str,
        /// The value as given.
        value: String,
    },
    /// Looks like a card number (the value itself is never echoed).
    #[error(
        "{what} looks like a card number (13-19 digits passing the Luhn check); paycron stores only Square ids, never card numbers"
    )]
    CardNumber {
        /// Which id.
        what: &'static str,
    },
    /// Not a UUID.
    #[error("{what} {value:?} is not a valid id (expected a UUID)")]
    NotUuid {
        /// Which id.
        what: &'static str,
        /// The value as given.
        value: String,
    },
}

/// True when `text` could be a primary account number: 13-19 digits (spaces and dashes
/// ignored) that pass the Luhn check.
pub fn looks_like_card_number(text: &str) -> bool {
    let digits: Vec<u32> = text
        .chars()
        .filter(|c| !matches!(c, ' ' | '-'))
        .map(|c| c.to_digit(10))
        .collect::<Option<Vec<_>>>()
        .unwrap_or_default();
    if !(13..=19).contains(&digits.len()) {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 { x - 9 } else { x }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

/// True when any maximal run of digits inside `text` (spaces and dashes removed) is a card
/// number. A run longer than 19 digits is not a card number.
pub fn contains_card_number(text: &str) -> bool {
    if looks_like_card_number(text) {
        return true;
    }
    let cleaned: String = text.chars().filter(|c| !matches!(c, ' ' | '-')).collect();
    cleaned
        .split(|c: char| !c.is_ascii_digit())
        .any(looks_like_card_number)
}

fn check_square_id(what: &'static str, value: &str, max: usize) -> Result<String, IdError> {
    let v = value.trim();
    if v.is_empty() {
        return Err(IdError::Empty { what });
    }
    if contains_card_number(v) {
        return Err(IdError::CardNumber { what });
    }
    if v.chars().count() > max {
        return Err(IdError::TooLong { what, max });
    }
    if v.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(IdError::BadCharacters {
            what,
            value: v.to_owned(),
        });
    }
    Ok(v.to_owned())
}

macro_rules! square_id {
    ($(#[$doc:meta])* $name:ident, $what:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Wraps an id read back from storage, whose schema already checked it.
            pub fn from_stored(stored: String) -> Self {
                $name(stored)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                check_square_id($what, s, $max).map($name)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                s.parse()
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

square_id!(
    /// A Square customer id (`Customer.id`, at most 191 characters).
    CustomerId,
    "customer_id",
    191
);
square_id!(
    /// A Square card-on-file id (`Card.id`, e.g. `ccof:uIbfJXhXETSP197M3GB`, at most 64 characters).
    CardId,
    "card_id",
    64
);

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $what:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id (UUIDv7).
            pub fn new() -> Self {
                $name(Uuid::now_v7())
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                $name(id)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Uuid::parse_str(s.trim()).map($name).map_err(|_| IdError::NotUuid {
                    what: $what,
                    value: s.to_owned(),
                })
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{}({})", stringify!($name), self.0)
            }
        }
    };
}

uuid_id!(
    /// paycron's id for a subscription.
    SubscriptionId,
    "subscription id"
);
uuid_id!(
    /// paycron's id for one refund asked of Square (its idempotency key derives from it).
    RefundId,
    "refund id"
);
uuid_id!(
    /// paycron's id for one charge attempt; sent to Square as `reference_id` (36 ≤ 40 characters).
    ChargeId,
    "charge id"
);

/// The idempotency key of one charge attempt.
///
/// `<subscription uuid, 32 hex>-<period>-<attempt>`: deterministic, so that any process that
/// re-drives the attempt sends the same key, and at most 45 characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// The key for `attempt` (1-based) at billing period `period` (0-based) of `subscription`.
    ///
    /// # Errors
    /// [`IdError::TooLong`] if period and attempt are so large the key would pass 45 characters
    /// (period 99,999 and attempt 999 still fit).
    pub fn derive(
        subscription: SubscriptionId,
        period: u32,
        attempt: u32,
    ) -> Result<Self, IdError> {
        let key = format!("{}-{period}-{attempt}", subscription.0.simple());
        Self::from_string(key)
    }

    /// Wraps a key read back from storage, checking Square's limit.
    ///
    /// # Errors
    /// [`IdError::Empty`] or [`IdError::TooLong`].
    pub fn from_string(key: String) -> Result<Self, IdError> {
        if key.is_empty() {
            return Err(IdError::Empty {
                what: "idempotency key",
            });
        }
        if key.len() > IDEMPOTENCY_KEY_MAX {
            return Err(IdError::TooLong {
                what: "idempotency key",
                max: IDEMPOTENCY_KEY_MAX,
            });
        }
        Ok(IdempotencyKey(key))
    }

    /// The key as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Wraps a key read back from storage, whose schema already checked its length.
    pub fn from_stored(stored: String) -> Self {
        IdempotencyKey(stored)
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdempotencyKey({})", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luhn() {
        assert!(looks_like_card_number("4111111111111111"));
        assert!(looks_like_card_number("4111 1111 1111 1111"));
        assert!(
            looks_like_card_number("5409-8890-0000-9029")
                || !looks_like_card_number("5409889000009028")
        );
        assert!(!looks_like_card_number("4111111111111112"));
        assert!(!looks_like_card_number("411111111111"));
        assert!(!looks_like_card_number("ccof:uIbfJXhXETSP197M3GB"));
    }

    #[test]
    fn square_ids_refuse_card_numbers() {
        assert!("ccof:uIbfJXhXETSP197M3GB".parse::<CardId>().is_ok());
        assert_eq!(
            "4111111111111111".parse::<CardId>(),
            Err(IdError::CardNumber { what: "card_id" })
        );
        assert_eq!(
            "ccof:4111111111111111".parse::<CardId>(),
            Err(IdError::CardNumber { what: "card_id" })
        );
        assert!(" ".parse::<CustomerId>().is_err());
        assert!("a b".parse::<CustomerId>().is_err());
        let msg = "4111111111111111"
            .parse::<CardId>()
            .unwrap_err()
            .to_string();
        assert!(!msg.contains("4111"), "the number is never echoed: {msg}");
    }

    #[test]
    fn keys_fit_square() {
        let s = SubscriptionId::new();
        let k = IdempotencyKey::derive(s, 99_999, 999).unwrap();
        assert!(k.as_str().len() <= IDEMPOTENCY_KEY_MAX);
        assert_eq!(k, IdempotencyKey::derive(s, 99_999, 999).unwrap());
        assert_ne!(k, IdempotencyKey::derive(s, 99_999, 998).unwrap());
        assert!(IdempotencyKey::derive(s, u32::MAX, u32::MAX).is_err());
    }
}
