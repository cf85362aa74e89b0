//! The billing halt: what keeps a configuration mistake from reaching every customer.
//!
//! A configuration error (Square refusing the seller's location, currency, API version or the
//! request's shape) says nothing about the customer, and every other charge would get the same
//! answer. So the engine sends one charge at a time until Square has given one answer that
//! proves the configuration (a payment or a card decline); after [`HALT_AFTER`] configuration
//! errors in a row it halts billing: nothing more is sent or claimed, one ERROR line names the
//! setting to check, and `paycron_billing_halted` is 1. Readiness is untouched, so an
//! orchestrator does not restart the pod in a loop. After a backoff (30 s, doubling, at most
//! 30 min) a run probes with one charge; the first answer that proves the configuration
//! resumes billing by itself.
//!
//! Invariant: while the configuration is unproven, at most one charge is on its way to Square,
//! so a wrong setting costs at most [`HALT_AFTER`] calls per run and one per probe.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// Configuration errors in a row, with nothing proving the configuration in between, that
/// halt billing.
pub const HALT_AFTER: u32 = 3;
const MAX_BACKOFF: Duration = Duration::from_secs(30 * 60);

/// Why billing halted, for the log line and the run's error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Halt {
    /// Square's code, e.g. `INVALID_LOCATION` or `NOT_FOUND`.
    pub code: String,
    /// The request field Square named, if any.
    pub field: Option<String>,
    /// Square's detail.
    pub detail: String,
    /// The setting an operator should look at.
    pub setting: &'static str,
}

/// The halt state of one engine.
#[derive(Debug)]
pub struct Breaker {
    /// The first probe's wait.
    first_backoff: Duration,
    /// Square gave an answer that proves the configuration since the last configuration error.
    proven: bool,
    /// Configuration errors since the last proof.
    in_a_row: u32,
    /// Halted: why, until when, and the backoff used.
    halted: Option<(Halt, DateTime<Utc>, Duration)>,
    /// The backoff of the last halt (doubles while probes keep failing).
    last_backoff: Option<Duration>,
}

/// What an answer did to the breaker.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    /// Nothing worth a log line.
    None,
    /// Billing halted (or a probe failed and it halted again).
    Halted(Halt, Duration),
    /// A halted or probing engine got a proving answer: billing resumed.
    Resumed,
}

impl Breaker {
    /// A breaker whose first probe waits `first_backoff` (doubling, at most 30 minutes).
    pub fn new(first_backoff: Duration) -> Self {
        Breaker {
            first_backoff,
            proven: false,
            in_a_row: 0,
            halted: None,
            last_backoff: None,
        }
    }

    /// Whether charges may go to Square concurrently (the configuration is proven).
    pub fn proven(&self) -> bool {
        self.proven
    }

    /// Whether billing is halted (nothing may be sent or claimed).
    pub fn halted(&self) -> Option<&Halt> {
        self.halted.as_ref().map(|(h, _, _)| h)
    }

    /// At the start of a run: a halt whose backoff is over becomes a probe (one charge at a
    /// time, and one more configuration error halts again). True while still halted.
    pub fn still_halted(&mut self, now: DateTime<Utc>) -> bool {
        match &self.halted {
            Some((_, until, _)) if now < *until => true,
            Some(_) => {
                self.halted = None;
                self.proven = false;
                false
            }
            None => false,
        }
    }

    /// Square's answer proved the configuration: a payment, or a decline of the card.
    pub fn proved(&mut self) -> Change {
        let was = self.in_a_row >= HALT_AFTER || self.halted.is_some();
        self.proven = true;
        self.in_a_row = 0;
        self.halted = None;
        self.last_backoff = None;
        if was { Change::Resumed } else { Change::None }
    }

    /// Square refused the configuration.
    pub fn refused(&mut self, why: Halt, now: DateTime<Utc>) -> Change {
        self.proven = false;
        self.in_a_row = self.in_a_row.saturating_add(1);
        if self.in_a_row < HALT_AFTER || self.halted.is_some() {
            return Change::None;
        }
        let backoff = self
            .last_backoff
            .map(|b| (b * 2).min(MAX_BACKOFF.max(self.first_backoff)))
            .unwrap_or(self.first_backoff);
        self.last_backoff = Some(backoff);
        self.halted = Some((
            why.clone(),
            now + chrono::Duration::from_std(backoff).unwrap_or(chrono::Duration::MAX),
            backoff,
        ));
        Change::Halted(why, backoff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn why() -> Halt {
        Halt {
            code: "NOT_FOUND".into(),
            field: Some("location_id".into()),
            detail: "Location not found.".into(),
            setting: "SQUARE_LOCATION_ID",
        }
    }

    #[test]
    fn halts_after_three_in_a_row_and_probes_with_a_doubling_backoff() {
        let t0 = Utc::now();
        let mut b = Breaker::new(Duration::from_secs(30));
        assert!(!b.proven());
        assert_eq!(b.refused(why(), t0), Change::None);
        assert_eq!(b.refused(why(), t0), Change::None);
        assert_eq!(
            b.refused(why(), t0),
            Change::Halted(why(), Duration::from_secs(30))
        );
        assert!(b.halted().is_some());
        assert!(b.still_halted(t0 + chrono::Duration::seconds(10)));
        // The probe: one more refusal halts again, for twice as long.
        assert!(!b.still_halted(t0 + chrono::Duration::seconds(31)));
        assert!(!b.proven());
        assert_eq!(
            b.refused(why(), t0),
            Change::Halted(why(), Duration::from_secs(60))
        );
        assert!(!b.still_halted(t0 + chrono::Duration::seconds(61)));
        assert_eq!(b.proved(), Change::Resumed);
        assert!(b.proven() && b.halted().is_none());
        assert_eq!(b.proved(), Change::None);
    }

    #[test]
    fn a_proof_in_between_resets_the_count() {
        let t0 = Utc::now();
        let mut b = Breaker::new(Duration::from_secs(30));
        b.refused(why(), t0);
        b.refused(why(), t0);
        b.proved();
        assert_eq!(b.refused(why(), t0), Change::None);
        assert_eq!(b.refused(why(), t0), Change::None);
        assert!(b.halted().is_none());
    }
}
