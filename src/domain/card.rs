//! The order of what Square says about a card. Webhooks arrive late, twice and out of order,
//! and sync-cards reads a list that may be older than the last webhook: a card's stored state
//! only moves forward in Square's card `version`, or, when either side has no version, in the
//! time Square said it. Pure.

use chrono::{DateTime, Utc};

/// When a statement about a card was true at Square.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CardStamp {
    /// Square's `Card.version`, when given.
    pub version: Option<i64>,
    /// The event's `created_at` (or the time of the listing), when known.
    pub at: Option<DateTime<Utc>>,
}

/// True when `incoming` says nothing newer than what is stored: it is recorded and ignored.
pub fn is_stale(stored: CardStamp, incoming: CardStamp) -> bool {
    match (stored.version, incoming.version) {
        (Some(have), Some(new)) => new <= have,
        _ => match (stored.at, incoming.at) {
            (Some(have), Some(new)) => new < have,
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Option<DateTime<Utc>> {
        Some(s.parse().unwrap())
    }

    #[test]
    fn versions_decide_and_times_break_the_rest() {
        let v = |version, t: &str| CardStamp { version, at: at(t) };
        let stored = v(Some(5), "2027-01-02T00:00:00Z");
        assert!(
            is_stale(stored, v(Some(4), "2027-01-03T00:00:00Z")),
            "older version, later delivery"
        );
        assert!(
            is_stale(stored, v(Some(5), "2027-01-03T00:00:00Z")),
            "same version"
        );
        assert!(
            !is_stale(stored, v(Some(6), "2027-01-01T00:00:00Z")),
            "newer version"
        );
        assert!(
            is_stale(stored, v(None, "2027-01-01T00:00:00Z")),
            "no version: older time"
        );
        assert!(!is_stale(stored, v(None, "2027-01-02T00:00:01Z")));
        let legacy = CardStamp {
            version: None,
            at: None,
        };
        assert!(!is_stale(legacy, v(Some(1), "2027-01-01T00:00:00Z")));
    }
}
