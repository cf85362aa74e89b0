//! The subscription lifecycle: one pure state machine from (state, event, clock) to (next state,
//! what to bill, what to announce). The engine (claim and record), the CLI and the SQL API apply
//! its decisions; none of them decides on its own.
//!
//! Three kinds of event move a subscription:
//!
//! - [`settle`]: the engine looks at a subscription whose due time has come (or the CLI right
//!   after a change). It applies what the business asked for (a resume's skip, a past anchor),
//!   bounds catch-up, completes or cancels at period end, and says which period and attempt to
//!   bill, if any.
//! - [`on_outcome`]: an attempt's outcome was recorded: next period, dunning retry or final
//!   state ([`super::subscription::after_outcome`] is the dunning policy).
//! - [`on_command`]: the business paused, resumed, canceled or changed the card, or Square
//!   updated the card. The SQL API functions implement the same table (a test checks every
//!   (status, command) pair against this one).
//!
//! Rules kept here:
//!
//! - Billing starts with the first period that begins at or after creation; a past anchor only
//!   sets the cycle (creation records `skip_before`, applied like a resume's).
//! - Periods that begin while paused are skipped; a resume bills next the first period that
//!   begins at or after the resume instant.
//! - Catch-up is bounded: more than `max_catch_up` periods due at once bills only the most
//!   recent that many, oldest first; the older ones are skipped for good and announced.
//! - Every decision moves the state forward or bills: [`settle`] of a due subscription either
//!   changes the state, or returns a bill for exactly the position it was given, so a caller
//!   can tell when a claim made no progress.

use chrono::{DateTime, Utc};

use super::schedule::{Calendar, ScheduleError};
use super::subscription::{
    AttemptOutcome, DunningPolicy, Position, SubscriptionStatus, Transition, after_outcome,
};

/// What a subscription agreed to: its calendar and limits. Never changed by the lifecycle.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Terms {
    /// The calendar (anchor, interval, zone).
    pub calendar: Calendar,
    /// Bill no period with an index at or above this (periods counted from the anchor).
    pub max_cycles: Option<u32>,
    /// Bill no period starting at or after this instant.
    pub ends_at: Option<DateTime<Utc>>,
    /// When the free trial ends (period 0 starts then).
    pub trial_ends_at: Option<DateTime<Utc>>,
}

/// Where a subscription stands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Status.
    pub status: SubscriptionStatus,
    /// The period to bill next (0-based).
    pub period: u32,
    /// The attempt number (1-based) of that period to make next.
    pub attempt: u32,
    /// Attempts of that period Square refused for a configuration reason (not dunning
    /// retries).
    pub uncounted: u32,
    /// When the next attempt is due (`None`: nothing more to bill).
    pub due: Option<DateTime<Utc>>,
    /// The first decline of the current period (dunning in progress when set).
    pub dunning_started_at: Option<DateTime<Utc>>,
    /// Cancel instead of billing the next period.
    pub cancel_at_period_end: bool,
    /// Periods starting before this instant are skipped (a resume, or creation with a past
    /// anchor); applied at the next [`settle`].
    pub skip_before: Option<DateTime<Utc>>,
}

/// Why periods were skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// More periods were due at once than catch-up allows.
    CatchUp,
}

impl SkipReason {
    /// As written in the `period_skipped` event.
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::CatchUp => "catch_up",
        }
    }
}

/// What the business hears about a decision (each becomes an event row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Notice {
    /// Periods `first..=last` will never be billed.
    PeriodsSkipped {
        /// First skipped period.
        first: u32,
        /// Last skipped period.
        last: u32,
        /// When the first one started.
        first_start: DateTime<Utc>,
        /// When the last one started.
        last_start: DateTime<Utc>,
        /// Why.
        reason: SkipReason,
    },
    /// All cycles billed, or the end date reached.
    Completed,
    /// Canceled; the reason is `requested`, `period_end` or `dunning_exhausted`.
    Canceled {
        /// Why.
        reason: &'static str,
    },
    /// A cancel at period end was scheduled.
    CancelScheduled,
    /// A cancel at period end was undone.
    CancelUnscheduled,
    /// Dunning ran out; nothing is billed until the card changes.
    Unpaid,
    /// The period's charge was declined; dunning retries are scheduled.
    PastDue,
    /// A period paid after a decline.
    Recovered,
    /// Paused by the business.
    Paused,
    /// Resumed by the business.
    Resumed,
    /// The business moved the subscription to another card.
    CardChanged,
}

impl Notice {
    /// The event type written for it.
    pub fn kind(&self) -> &'static str {
        match self {
            Notice::PeriodsSkipped { .. } => "period_skipped",
            Notice::Completed => "subscription_completed",
            Notice::Canceled { .. } => "subscription_canceled",
            Notice::CancelScheduled => "subscription_cancel_scheduled",
            Notice::CancelUnscheduled => "subscription_cancel_unscheduled",
            Notice::Unpaid => "subscription_unpaid",
            Notice::PastDue => "subscription_past_due",
            Notice::Recovered => "payment_recovered",
            Notice::Paused => "subscription_paused",
            Notice::Resumed => "subscription_resumed",
            Notice::CardChanged => "subscription_card_changed",
        }
    }
}

/// One attempt to make now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bill {
    /// The period.
    pub period: u32,
    /// The attempt number.
    pub attempt: u32,
    /// When the period started.
    pub period_start: DateTime<Utc>,
}

/// What [`settle`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settled {
    /// The state to store (equal to the input when nothing moved).
    pub state: State,
    /// The attempt to make now, for `state`'s position.
    pub bill: Option<Bill>,
    /// What to announce.
    pub notices: Vec<Notice>,
}

impl Settled {
    /// Whether the state differs from `before` (and must be written).
    pub fn moved(&self, before: &State) -> bool {
        &self.state != before
    }
}

/// The last period that has started at or before `now`, if any has.
fn last_started(cal: &Calendar, now: DateTime<Utc>) -> Result<Option<u32>, ScheduleError> {
    let first = cal.first_period_at_or_after(now)?;
    if cal.period_start(first)? == now {
        return Ok(Some(first));
    }
    Ok(first.checked_sub(1))
}

/// Brings a subscription's position up to `now` and says what to bill. Pure.
///
/// # Errors
/// [`ScheduleError::OutOfRange`] when a period leaves the calendar.
///
/// Long on purpose: the calendar walk of one subscription (skips, catch-up bound, completion), kept whole: its steps share the cursor.
pub fn settle(
    terms: &Terms,
    state: &State,
    now: DateTime<Utc>,
    max_catch_up: u32,
) -> Result<Settled, ScheduleError> {
    let mut s = state.clone();
    let mut notices = Vec::new();
    if !s.status.is_billable() {
        return Ok(Settled {
            state: s,
            bill: None,
            notices,
        });
    }
    let cal = &terms.calendar;
    if let Some(skip) = s.skip_before.take() {
        let first = cal.first_period_at_or_after(skip)?;
        if first > s.period {
            s.period = first;
            s.attempt = 1;
            s.uncounted = 0;
            s.dunning_started_at = None;
            if s.status == SubscriptionStatus::PastDue {
                s.status = SubscriptionStatus::Active;
            }
        }
        if s.dunning_started_at.is_none() {
            s.due = Some(cal.period_start(s.period)?);
        }
    }
    if s.due.is_none() {
        s.due = Some(cal.period_start(s.period)?);
    }
    let is_due = s.due.is_some_and(|d| d <= now);
    if s.cancel_at_period_end && s.dunning_started_at.is_none() && is_due {
        s.status = SubscriptionStatus::Canceled;
        s.due = None;
        notices.push(Notice::Canceled {
            reason: "period_end",
        });
        return Ok(Settled {
            state: s,
            bill: None,
            notices,
        });
    }
    // The common case answers with one calendar step: fewer than `max_catch_up` periods
    // behind means nothing to skip.
    if s.dunning_started_at.is_none()
        && is_due
        && cal.period_start(s.period.saturating_add(max_catch_up.max(1)))? <= now
        && let Some(last) = last_started(cal, now)?
        && last >= s.period
        && last - s.period >= max_catch_up.max(1)
    {
        let keep_from = last + 1 - max_catch_up.max(1);
        notices.push(Notice::PeriodsSkipped {
            first: s.period,
            last: keep_from - 1,
            first_start: cal.period_start(s.period)?,
            last_start: cal.period_start(keep_from - 1)?,
            reason: SkipReason::CatchUp,
        });
        s.period = keep_from;
        s.attempt = 1;
        s.uncounted = 0;
        s.due = Some(cal.period_start(keep_from)?);
    }
    let start = cal.period_start(s.period)?;
    if terms.max_cycles.is_some_and(|c| s.period >= c)
        || terms.ends_at.is_some_and(|end| start >= end)
    {
        s.status = SubscriptionStatus::Completed;
        s.due = None;
        s.dunning_started_at = None;
        notices.push(Notice::Completed);
        return Ok(Settled {
            state: s,
            bill: None,
            notices,
        });
    }
    let bill = s.due.filter(|d| *d <= now).map(|_| Bill {
        period: s.period,
        attempt: s.attempt,
        period_start: start,
    });
    Ok(Settled {
        state: s,
        bill,
        notices,
    })
}

/// What [`on_outcome`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The new state, when the attempt was the one the subscription waited for.
    pub state: Option<State>,
    /// Charge the customer's other enabled card from now on (after a hard decline).
    pub switch_card: bool,
    /// What to announce.
    pub notices: Vec<Notice>,
}

/// An attempt (`period`, `attempt`) ended with `outcome`. Only the attempt the subscription
/// waits for moves it; a paused, canceled or unpaid subscription keeps its status (a paid
/// period is settled, a decline starts no dunning). Pure.
///
/// # Errors
/// [`ScheduleError::OutOfRange`] when the next period leaves the calendar.
///
/// Long on purpose: the state machine's outcome table: one arm per outcome and status, kept whole so it can be checked against the README's table.
#[allow(clippy::too_many_arguments)]
pub fn on_outcome(
    terms: &Terms,
    state: &State,
    period: u32,
    attempt: u32,
    outcome: AttemptOutcome,
    policy: &DunningPolicy,
    has_other_card: bool,
    now: DateTime<Utc>,
) -> Result<Recorded, ScheduleError> {
    let mut notices = Vec::new();
    if outcome == AttemptOutcome::Succeeded
        && (state.status == SubscriptionStatus::PastDue || attempt > 1)
    {
        notices.push(Notice::Recovered);
    }
    if state.period != period || state.attempt != attempt {
        return Ok(Recorded {
            state: None,
            switch_card: false,
            notices,
        });
    }
    let billable = state.status.is_billable();
    let pos = Position {
        calendar: terms.calendar,
        period,
        attempt,
        dunning_started_at: state.dunning_started_at,
        uncounted: state.uncounted,
        max_cycles: terms.max_cycles,
        ends_at: terms.ends_at,
    };
    let transition = after_outcome(&pos, outcome, policy, has_other_card, now)?;
    let mut s = state.clone();
    let mut switch = false;
    match transition {
        Transition::NextPeriod {
            period,
            due,
            status,
        } => {
            s.period = period;
            s.attempt = 1;
            s.uncounted = 0;
            s.dunning_started_at = None;
            if billable {
                s.status = status;
                s.due = due;
                if status == SubscriptionStatus::Completed {
                    notices.push(Notice::Completed);
                }
            } else if state.status == SubscriptionStatus::Paused {
                s.due = due;
            } else {
                s.due = None;
            }
        }
        Transition::Postponed { attempt, due } => {
            s.attempt = attempt;
            s.uncounted += 1;
            if billable {
                s.due = Some(due);
            }
        }
        Transition::Retry { .. } | Transition::Exhausted { .. } if !billable => {
            s.attempt = attempt + 1;
        }
        Transition::Retry {
            attempt,
            due,
            switch_card,
            dunning_started_at,
        } => {
            if state.status != SubscriptionStatus::PastDue {
                notices.push(Notice::PastDue);
            }
            s.status = SubscriptionStatus::PastDue;
            s.attempt = attempt;
            s.due = Some(due);
            s.dunning_started_at = Some(dunning_started_at);
            switch = switch_card;
        }
        Transition::Exhausted { status } => {
            notices.push(if status == SubscriptionStatus::Canceled {
                Notice::Canceled {
                    reason: "dunning_exhausted",
                }
            } else {
                Notice::Unpaid
            });
            s.status = status;
            s.attempt = attempt + 1;
            s.due = None;
            s.dunning_started_at = state.dunning_started_at.or(Some(now));
        }
    }
    Ok(Recorded {
        state: Some(s),
        switch_card: switch,
        notices,
    })
}

/// What the business (or Square, for a card update) asks of a subscription.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Command {
    /// Stop billing; periods that begin while paused are skipped.
    Pause,
    /// Bill again from the first period that begins at or after now.
    Resume,
    /// Cancel now: nothing more is billed.
    CancelNow,
    /// Cancel instead of billing the next period (an unpaid period cancels now).
    CancelAtPeriodEnd,
    /// The business moved the subscription to another card.
    ChangeCard,
    /// Square updated the card (new expiry or number).
    CardUpdated,
    /// The business undid a cancel at period end: it bills on.
    Keep,
}

impl Command {
    /// Every command, for exhaustive checks.
    pub const ALL: [Command; 7] = [
        Command::Pause,
        Command::Resume,
        Command::CancelNow,
        Command::CancelAtPeriodEnd,
        Command::ChangeCard,
        Command::CardUpdated,
        Command::Keep,
    ];
}

/// What [`on_command`] decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Refused: the subscription's status does not allow it (the message names it).
    Refused(String),
    /// Nothing to do (already in the asked-for state); no event.
    Unchanged,
    /// The new state and what to announce.
    Changed(State, Vec<Notice>),
}

/// Applies a command at `now`. A resume or a revival makes the subscription due at `now`;
/// [`settle`] then moves it to the right period. Pure.
///
/// Long on purpose: the state machine's command table: one arm per command and status, kept whole so it can be checked against the README's table.
pub fn on_command(terms: &Terms, state: &State, cmd: Command, now: DateTime<Utc>) -> Decision {
    use SubscriptionStatus as S;
    let mut s = state.clone();
    let refuse = |what: &str| {
        Decision::Refused(format!("subscription is {}, {what}", state.status.as_str()))
    };
    match cmd {
        Command::Pause => match state.status {
            S::Paused => Decision::Unchanged,
            st if st.is_billable() => {
                s.status = S::Paused;
                Decision::Changed(s, vec![Notice::Paused])
            }
            _ => refuse("only an active, trialing or past-due subscription can be paused"),
        },
        Command::Resume => match state.status {
            S::Paused => {
                if state.dunning_started_at.is_some() {
                    // Dunning resumes where it stood.
                    s.status = S::PastDue;
                } else {
                    s.status = if terms.trial_ends_at.is_some_and(|t| t > now) {
                        S::Trialing
                    } else {
                        S::Active
                    };
                    s.skip_before = Some(now);
                    s.due = Some(now);
                }
                Decision::Changed(s, vec![Notice::Resumed])
            }
            st if st.is_billable() => Decision::Unchanged,
            _ => refuse("only a paused subscription can be resumed"),
        },
        Command::CancelNow => match state.status {
            S::Canceled | S::Completed => Decision::Unchanged,
            _ => {
                s.status = S::Canceled;
                s.due = None;
                Decision::Changed(
                    s,
                    vec![Notice::Canceled {
                        reason: "requested",
                    }],
                )
            }
        },
        Command::CancelAtPeriodEnd => match state.status {
            S::Canceled | S::Completed => Decision::Unchanged,
            S::Active | S::Trialing if state.cancel_at_period_end => Decision::Unchanged,
            S::Active | S::Trialing => {
                s.cancel_at_period_end = true;
                Decision::Changed(s, vec![Notice::CancelScheduled])
            }
            // Nothing paid to let run out: cancel now.
            _ => on_command(terms, state, Command::CancelNow, now),
        },
        Command::Keep => match state.status {
            S::Canceled | S::Completed => {
                refuse("a canceled or completed subscription cannot be kept")
            }
            _ if state.cancel_at_period_end => {
                s.cancel_at_period_end = false;
                Decision::Changed(s, vec![Notice::CancelUnscheduled])
            }
            _ => Decision::Unchanged,
        },
        Command::ChangeCard | Command::CardUpdated => {
            let notices = if cmd == Command::ChangeCard {
                vec![Notice::CardChanged]
            } else {
                vec![]
            };
            match state.status {
                S::Canceled | S::Completed if cmd == Command::ChangeCard => {
                    refuse("a canceled or completed subscription bills nothing")
                }
                S::AwaitingCard if cmd == Command::ChangeCard => refuse(
                    "its card is the one saved at the counter (any new card of the customer completes it)",
                ),
                S::Unpaid => {
                    // Revived: a fresh dunning for the new card, due now; catch-up bounds what
                    // the months it was unpaid can bill.
                    s.status = S::PastDue;
                    s.dunning_started_at = None;
                    s.due = Some(now);
                    Decision::Changed(s, notices)
                }
                S::PastDue => {
                    s.due = Some(now);
                    Decision::Changed(s, notices)
                }
                // The card changes (the caller writes it); the position does not.
                _ if cmd == Command::ChangeCard => Decision::Changed(s, notices),
                _ => Decision::Unchanged,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono_tz::Tz;

    fn t(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    fn terms(every: &str, anchor: &str) -> Terms {
        Terms {
            calendar: Calendar {
                anchor: t(anchor),
                interval: every.parse().unwrap(),
                zone: Tz::UTC,
            },
            max_cycles: None,
            ends_at: None,
            trial_ends_at: None,
        }
    }

    fn active(period: u32, due: &str) -> State {
        State {
            status: SubscriptionStatus::Active,
            period,
            attempt: 1,
            uncounted: 0,
            due: Some(t(due)),
            dunning_started_at: None,
            cancel_at_period_end: false,
            skip_before: None,
        }
    }

    #[test]
    fn past_anchor_bills_from_creation_not_back() {
        let terms = terms("1month", "2024-01-01T00:00:00Z");
        let mut s = active(0, "2026-11-26T10:00:00Z");
        s.skip_before = Some(t("2026-11-26T10:00:00Z"));
        let d = settle(&terms, &s, t("2026-11-26T10:00:00Z"), 3).unwrap();
        assert_eq!(d.bill, None);
        assert_eq!(d.state.period, 35);
        assert_eq!(d.state.due, Some(t("2026-12-01T00:00:00Z")));
        assert!(d.notices.is_empty());
    }

    #[test]
    fn catch_up_bills_the_most_recent_periods_only() {
        let terms = terms("1day", "2026-01-01T00:00:00Z");
        let s = active(0, "2026-01-01T00:00:00Z");
        let d = settle(&terms, &s, t("2026-01-10T12:00:00Z"), 3).unwrap();
        // Periods 0..=9 have started; 7, 8, 9 are billed, 0..=6 skipped.
        assert_eq!(d.state.period, 7);
        assert_eq!(d.bill.map(|b| b.period), Some(7));
        assert!(matches!(
            d.notices[..],
            [Notice::PeriodsSkipped {
                first: 0,
                last: 6,
                ..
            }]
        ));
        // Once there, nothing more is skipped.
        let again = settle(&terms, &d.state, t("2026-01-10T12:00:00Z"), 3).unwrap();
        assert_eq!(again.state, d.state);
    }

    #[test]
    fn resume_skips_periods_that_began_while_paused() {
        let terms = terms("1day", "2026-01-01T00:00:00Z");
        let mut s = active(1, "2026-01-02T00:00:00Z");
        s.status = SubscriptionStatus::Paused;
        let Decision::Changed(resumed, _) =
            on_command(&terms, &s, Command::Resume, t("2026-01-05T06:00:00Z"))
        else {
            panic!()
        };
        // Billing a day and an hour later: period 5 (Jan 6) is billed, and the state moved.
        let d = settle(&terms, &resumed, t("2026-01-06T07:00:00Z"), 3).unwrap();
        assert_eq!(d.state.period, 5);
        assert_eq!(d.state.skip_before, None);
        assert_eq!(d.bill.map(|b| b.period), Some(5));
    }

    #[test]
    fn every_due_settle_moves_or_bills_its_own_position() {
        let terms = terms("1week", "2026-01-01T00:00:00Z");
        let s = active(2, "2026-01-15T00:00:00Z");
        let d = settle(&terms, &s, t("2026-01-16T00:00:00Z"), 3).unwrap();
        assert!(!d.moved(&s));
        assert_eq!(
            d.bill,
            Some(Bill {
                period: 2,
                attempt: 1,
                period_start: t("2026-01-15T00:00:00Z")
            })
        );
    }
}
