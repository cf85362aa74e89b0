//! The subscription state machine and the dunning policy.
//!
//! Given where a subscription stands and the outcome of one charge attempt, [`after_outcome`]
//! says what comes next: the next period and its due time, a dunning retry (always a new
//! attempt, so a new idempotency key), or a final state. Pure: the caller passes `now`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::schedule::{Calendar, ScheduleError};

/// Where a subscription stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStatus {
    /// Enrolled at the counter: the first period is paid (or about to be) in Square Point of
    /// Sale and the card the customer saves there is not on file yet; nothing is billed.
    AwaitingCard,
    /// In its free trial; the first charge is due when the trial ends.
    Trialing,
    /// Paid up; the next period bills when due.
    Active,
    /// The current period's charge was declined; dunning retries are scheduled.
    PastDue,
    /// Paused by the business: nothing is billed; periods during the pause are skipped.
    Paused,
    /// Dunning ran out (final state `unpaid`): nothing is billed until the card changes.
    Unpaid,
    /// Canceled: nothing more is billed, ever.
    Canceled,
    /// All its cycles are billed, or its end date has passed.
    Completed,
}

impl SubscriptionStatus {
    /// Every status, for exhaustive checks.
    pub const ALL: [SubscriptionStatus; 8] = [
        SubscriptionStatus::AwaitingCard,
        SubscriptionStatus::Trialing,
        SubscriptionStatus::Active,
        SubscriptionStatus::PastDue,
        SubscriptionStatus::Paused,
        SubscriptionStatus::Unpaid,
        SubscriptionStatus::Canceled,
        SubscriptionStatus::Completed,
    ];

    /// Whether periods fall due and are billed in this status.
    pub fn is_billable(&self) -> bool {
        matches!(
            self,
            SubscriptionStatus::Trialing | SubscriptionStatus::Active | SubscriptionStatus::PastDue
        )
    }

    /// The status as stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            SubscriptionStatus::AwaitingCard => "awaiting_card",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Paused => "paused",
            SubscriptionStatus::Unpaid => "unpaid",
            SubscriptionStatus::Canceled => "canceled",
            SubscriptionStatus::Completed => "completed",
        }
    }
}

impl FromStr for SubscriptionStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "awaiting_card" => SubscriptionStatus::AwaitingCard,
            "trialing" => SubscriptionStatus::Trialing,
            "active" => SubscriptionStatus::Active,
            "past_due" => SubscriptionStatus::PastDue,
            "paused" => SubscriptionStatus::Paused,
            "unpaid" => SubscriptionStatus::Unpaid,
            "canceled" => SubscriptionStatus::Canceled,
            "completed" => SubscriptionStatus::Completed,
            other => return Err(format!("unknown subscription status {other:?}")),
        })
    }
}

impl fmt::Display for SubscriptionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one charge attempt stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChargeStatus {
    /// The durable charge: written before any call, resolved exactly once.
    Pending,
    /// Square took the money.
    Succeeded,
    /// The card was declined (or refused by paycron's own card check).
    Declined,
    /// Square refused the request itself.
    Failed,
    /// Square's answer did not match the charge (or could not be recorded): neither a
    /// success nor a decline, never re-sent; an operator decides (`charges resolve`).
    NeedsReview,
}

impl ChargeStatus {
    /// The status as stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            ChargeStatus::Pending => "pending",
            ChargeStatus::Succeeded => "succeeded",
            ChargeStatus::Declined => "declined",
            ChargeStatus::Failed => "failed",
            ChargeStatus::NeedsReview => "needs_review",
        }
    }
}

impl FromStr for ChargeStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => ChargeStatus::Pending,
            "succeeded" => ChargeStatus::Succeeded,
            "declined" => ChargeStatus::Declined,
            "failed" => ChargeStatus::Failed,
            "needs_review" => ChargeStatus::NeedsReview,
            other => return Err(format!("unknown charge status {other:?}")),
        })
    }
}

impl fmt::Display for ChargeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where dunning leaves a subscription when its retries run out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalState {
    /// Keep the subscription but bill nothing until the card changes.
    Unpaid,
    /// Cancel it.
    Canceled,
}

impl FromStr for FinalState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "unpaid" => Ok(FinalState::Unpaid),
            "canceled" => Ok(FinalState::Canceled),
            other => Err(format!("{other:?} is not unpaid or canceled")),
        }
    }
}

/// How declines are retried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DunningPolicy {
    /// Retry offsets in days, counted from the period's first declined attempt
    /// (default 1, 3, 5, 7: four retries within a week).
    pub retry_days: Vec<u32>,
    /// The state once the retries are used up (default `unpaid`).
    pub final_state: FinalState,
    /// After a hard decline, try the customer's other enabled card (default true).
    pub fallback_card: bool,
}

impl Default for DunningPolicy {
    fn default() -> Self {
        DunningPolicy {
            retry_days: vec![1, 3, 5, 7],
            final_state: FinalState::Unpaid,
            fallback_card: true,
        }
    }
}

/// What the engine knows about a subscription when an attempt's outcome arrives.
#[derive(Clone, Debug)]
pub struct Position {
    /// The calendar.
    pub calendar: Calendar,
    /// The period the attempt was for.
    pub period: u32,
    /// The attempt number (1-based) within the period.
    pub attempt: u32,
    /// When the period's first decline happened (`None` before any decline).
    pub dunning_started_at: Option<DateTime<Utc>>,
    /// Attempts of the period Square refused for a configuration reason: they used a key but
    /// no dunning retry.
    pub uncounted: u32,
    /// Bill at most this many periods.
    pub max_cycles: Option<u32>,
    /// Bill no period starting at or after this instant.
    pub ends_at: Option<DateTime<Utc>>,
}

/// The outcome of one attempt, as far as the schedule cares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttemptOutcome {
    /// Money taken.
    Succeeded,
    /// Declined (or refused as unusable); `hard` means the card should not be retried.
    Declined {
        /// Whether the same card is pointless to retry.
        hard: bool,
    },
    /// Square refused the seller's setup or the request: no customer is at fault. The period is
    /// tried again later under a new key, without a dunning step.
    Misconfigured,
    /// An operator decided that an attempt in review took no money: the period is tried again
    /// at once under a new key, without a dunning step.
    Voided,
}

/// How long a subscription waits before its period is tried again after the `n`th (1-based)
/// configuration error in a row: a minute, doubling, at most six hours. The engine halts
/// billing long before that matters; this keeps a single odd subscription (a currency its
/// location cannot take) from being sent at every run.
pub fn misconfigured_backoff(n: u32) -> Duration {
    Duration::minutes(1i64 << n.saturating_sub(1).min(9)).min(Duration::hours(6))
}

/// What to do with the subscription next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// The period is settled: bill `period` next, at `due` (`None`: nothing more to bill).
    NextPeriod {
        /// The next period to bill.
        period: u32,
        /// When it is due.
        due: Option<DateTime<Utc>>,
        /// The status now.
        status: SubscriptionStatus,
    },
    /// Try the same period again as attempt `attempt` at `due`.
    Retry {
        /// The next attempt number.
        attempt: u32,
        /// When.
        due: DateTime<Utc>,
        /// Whether to switch to the customer's other enabled card (after a hard decline).
        switch_card: bool,
        /// When the period's dunning started.
        dunning_started_at: DateTime<Utc>,
    },
    /// Square refused the request for a configuration reason: try the period again as
    /// attempt `attempt` at `due`, status and dunning untouched.
    Postponed {
        /// The next attempt number.
        attempt: u32,
        /// When.
        due: DateTime<Utc>,
    },
    /// Dunning is over without payment.
    Exhausted {
        /// The final status.
        status: SubscriptionStatus,
    },
}

/// Decides the transition after an attempt.
///
/// `has_other_card` says whether the customer has another enabled card to fall back to.
///
/// # Errors
/// [`ScheduleError::OutOfRange`] if the next period leaves the calendar.
pub fn after_outcome(
    pos: &Position,
    outcome: AttemptOutcome,
    policy: &DunningPolicy,
    has_other_card: bool,
    now: DateTime<Utc>,
) -> Result<Transition, ScheduleError> {
    match outcome {
        AttemptOutcome::Succeeded => {
            let next = pos.period + 1;
            let due = pos.calendar.period_start(next)?;
            let done = pos.max_cycles.is_some_and(|c| next >= c)
                || pos.ends_at.is_some_and(|end| due >= end);
            Ok(if done {
                Transition::NextPeriod {
                    period: next,
                    due: None,
                    status: SubscriptionStatus::Completed,
                }
            } else {
                Transition::NextPeriod {
                    period: next,
                    due: Some(due),
                    status: SubscriptionStatus::Active,
                }
            })
        }
        AttemptOutcome::Misconfigured => Ok(Transition::Postponed {
            attempt: pos.attempt + 1,
            due: now + misconfigured_backoff(pos.uncounted + 1),
        }),
        AttemptOutcome::Voided => Ok(Transition::Postponed {
            attempt: pos.attempt + 1,
            due: now,
        }),
        AttemptOutcome::Declined { hard } => {
            let started = pos.dunning_started_at.unwrap_or(now);
            let fallback = hard && policy.fallback_card && has_other_card;
            if hard && !fallback {
                return Ok(exhausted(policy));
            }
            // The other card is tried at once only after the period's first decline: a card
            // that declines for good right after a fallback waits for the dunning schedule, so
            // no path retries "now" twice in a row, and two bad cards cannot loop.
            if fallback && pos.dunning_started_at.is_none() {
                return Ok(Transition::Retry {
                    attempt: pos.attempt + 1,
                    due: now,
                    switch_card: true,
                    dunning_started_at: started,
                });
            }
            // Retries already used in this period: attempts so far minus the first and minus
            // those Square refused for a configuration reason. A fallback counts as a retry.
            let used = usize::try_from(pos.attempt.saturating_sub(1 + pos.uncounted))
                .unwrap_or(usize::MAX);
            match policy.retry_days.get(used) {
                Some(&days) => {
                    let due = (started + Duration::days(i64::from(days))).max(now);
                    Ok(Transition::Retry {
                        attempt: pos.attempt + 1,
                        due,
                        switch_card: fallback,
                        dunning_started_at: started,
                    })
                }
                None => Ok(exhausted(policy)),
            }
        }
    }
}

fn exhausted(policy: &DunningPolicy) -> Transition {
    Transition::Exhausted {
        status: match policy.final_state {
            FinalState::Unpaid => SubscriptionStatus::Unpaid,
            FinalState::Canceled => SubscriptionStatus::Canceled,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Tz;

    fn pos(attempt: u32, started: Option<DateTime<Utc>>) -> Position {
        Position {
            calendar: Calendar {
                anchor: "2025-01-31T12:00:00Z".parse().unwrap(),
                interval: "1month".parse().unwrap(),
                zone: Tz::UTC,
            },
            period: 0,
            attempt,
            dunning_started_at: started,
            uncounted: 0,
            max_cycles: None,
            ends_at: None,
        }
    }

    #[test]
    fn success_advances() {
        let now: DateTime<Utc> = "2025-01-31T12:00:05Z".parse().unwrap();
        let t = after_outcome(
            &pos(1, None),
            AttemptOutcome::Succeeded,
            &DunningPolicy::default(),
            false,
            now,
        )
        .unwrap();
        assert_eq!(
            t,
            Transition::NextPeriod {
                period: 1,
                due: Some("2025-02-28T12:00:00Z".parse().unwrap()),
                status: SubscriptionStatus::Active
            }
        );
        let mut p = pos(1, None);
        p.max_cycles = Some(1);
        let t = after_outcome(
            &p,
            AttemptOutcome::Succeeded,
            &DunningPolicy::default(),
            false,
            now,
        )
        .unwrap();
        assert!(matches!(
            t,
            Transition::NextPeriod {
                due: None,
                status: SubscriptionStatus::Completed,
                ..
            }
        ));
    }

    #[test]
    fn soft_declines_follow_the_schedule_then_exhaust() {
        let policy = DunningPolicy::default();
        let start: DateTime<Utc> = "2025-01-31T12:00:00Z".parse().unwrap();
        let mut dues = vec![];
        let mut attempt = 1;
        let mut started = None;
        loop {
            let now = dues.last().copied().unwrap_or(start);
            match after_outcome(
                &pos(attempt, started),
                AttemptOutcome::Declined { hard: false },
                &policy,
                false,
                now,
            )
            .unwrap()
            {
                Transition::Retry {
                    attempt: a,
                    due,
                    dunning_started_at,
                    ..
                } => {
                    attempt = a;
                    started = Some(dunning_started_at);
                    dues.push(due);
                }
                Transition::Exhausted { status } => {
                    assert_eq!(status, SubscriptionStatus::Unpaid);
                    break;
                }
                other => panic!("{other:?}"),
            }
        }
        let days: Vec<i64> = dues.iter().map(|d| (*d - start).num_days()).collect();
        assert_eq!(days, [1, 3, 5, 7]);
    }

    #[test]
    fn two_hard_declining_cards_never_retry_now_twice_and_exhaust() {
        let policy = DunningPolicy::default();
        let start: DateTime<Utc> = "2025-01-31T12:00:00Z".parse().unwrap();
        let (mut attempt, mut started, mut now) = (1, None, start);
        let mut sends = 0;
        let mut at_once = 0;
        loop {
            sends += 1;
            assert!(sends < 20, "unbounded");
            match after_outcome(
                &pos(attempt, started),
                AttemptOutcome::Declined { hard: true },
                &policy,
                true,
                now,
            )
            .unwrap()
            {
                Transition::Retry {
                    attempt: a,
                    due,
                    dunning_started_at,
                    switch_card,
                } => {
                    assert!(switch_card);
                    if due == now {
                        at_once += 1;
                    }
                    attempt = a;
                    started = Some(dunning_started_at);
                    now = due;
                }
                Transition::Exhausted { .. } => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(at_once, 1, "only the first fallback is at once");
        assert_eq!(sends, 5, "the first try and the four scheduled retries");
    }

    #[test]
    fn a_configuration_error_postpones_without_using_a_retry() {
        let policy = DunningPolicy::default();
        let now: DateTime<Utc> = "2025-02-01T12:00:00Z".parse().unwrap();
        let t = after_outcome(
            &pos(1, None),
            AttemptOutcome::Misconfigured,
            &policy,
            true,
            now,
        )
        .unwrap();
        assert_eq!(
            t,
            Transition::Postponed {
                attempt: 2,
                due: now + Duration::minutes(1)
            }
        );
        // Two uncounted attempts later, the first decline still gets the first retry (1 day).
        let mut p = pos(3, None);
        p.uncounted = 2;
        let t = after_outcome(
            &p,
            AttemptOutcome::Declined { hard: false },
            &policy,
            false,
            now,
        )
        .unwrap();
        assert!(matches!(t, Transition::Retry { due, .. } if due == now + Duration::days(1)));
        assert_eq!(misconfigured_backoff(3), Duration::minutes(4));
        assert_eq!(misconfigured_backoff(40), Duration::hours(6));
    }

    #[test]
    fn hard_decline_falls_back_or_ends() {
        let now = Utc::now();
        let policy = DunningPolicy {
            final_state: FinalState::Canceled,
            ..DunningPolicy::default()
        };
        let t = after_outcome(
            &pos(1, None),
            AttemptOutcome::Declined { hard: true },
            &policy,
            true,
            now,
        )
        .unwrap();
        assert!(matches!(
            t,
            Transition::Retry {
                attempt: 2,
                switch_card: true,
                ..
            }
        ));
        let t = after_outcome(
            &pos(1, None),
            AttemptOutcome::Declined { hard: true },
            &policy,
            false,
            now,
        )
        .unwrap();
        assert_eq!(
            t,
            Transition::Exhausted {
                status: SubscriptionStatus::Canceled
            }
        );
    }
}
