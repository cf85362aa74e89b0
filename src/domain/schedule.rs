//! The billing calendar: when period *n* of a subscription starts.
//!
//! A subscription bills every N days, weeks, months or years from an anchor instant, in its own
//! IANA time zone, at the anchor's local time of day. Rules this module keeps:
//!
//! - Period *n* is computed from (anchor, n) alone, never from period n-1, so a clamped month
//!   never drags later months: anchor Jan 31 gives Feb 28 (29 in leap years), Mar 31, Apr 30.
//! - Months and years keep the anchor's day of month, clamped to the month's last day.
//! - Days and weeks count calendar days in the subscription's zone, so the local time of day
//!   survives DST changes.
//! - A local time that falls in a DST gap (it never happens on the wall) resolves to the
//!   instant the clocks would show it had the old offset stayed, i.e. shifted forward by the
//!   gap's length (02:30 on a spring-forward night in New York bills at 03:30 EDT).
//! - A local time that happens twice (DST overlap) resolves to the earlier instant.
//!
//! Everything here is pure: no clock, no I/O.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

/// The most periods of one unit in an interval (`1000day` is fine, `1001day` is refused).
pub const MAX_INTERVAL_COUNT: u32 = 1000;

/// Why an interval or a zone was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ScheduleError {
    /// `--every` did not parse.
    #[error(
        "interval {0:?} is not N followed by day, week, month or year with N from 1 to {MAX_INTERVAL_COUNT} (e.g. 1month, 2week, 30day)"
    )]
    Interval(String),
    /// Not an IANA zone name.
    #[error("time zone {0:?} is not a known IANA zone (e.g. UTC, America/New_York, Europe/Paris)")]
    Zone(String),
    /// A period so far out that it leaves chrono's range.
    #[error("period {0} is out of the calendar's range")]
    OutOfRange(u32),
}

/// The unit of a billing interval.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IntervalUnit {
    /// Calendar days in the subscription's zone.
    Day,
    /// Seven calendar days.
    Week,
    /// Calendar months, day clamped to the month's end.
    Month,
    /// Calendar years (Feb 29 clamps to Feb 28).
    Year,
}

impl IntervalUnit {
    /// The unit's name as stored and printed.
    pub fn as_str(&self) -> &'static str {
        match self {
            IntervalUnit::Day => "day",
            IntervalUnit::Week => "week",
            IntervalUnit::Month => "month",
            IntervalUnit::Year => "year",
        }
    }
}

impl FromStr for IntervalUnit {
    type Err = ScheduleError;
    fn from_str(s: &str) -> Result<Self, ScheduleError> {
        match s {
            "day" => Ok(IntervalUnit::Day),
            "week" => Ok(IntervalUnit::Week),
            "month" => Ok(IntervalUnit::Month),
            "year" => Ok(IntervalUnit::Year),
            _ => Err(ScheduleError::Interval(s.to_owned())),
        }
    }
}

/// Every `count` `unit`s.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Interval {
    /// The unit.
    pub unit: IntervalUnit,
    /// How many units, 1..=[`MAX_INTERVAL_COUNT`].
    pub count: u32,
}

impl Interval {
    /// Builds an interval, refusing a count of 0 or above the maximum.
    ///
    /// # Errors
    /// [`ScheduleError::Interval`].
    pub fn new(unit: IntervalUnit, count: u32) -> Result<Self, ScheduleError> {
        if count == 0 || count > MAX_INTERVAL_COUNT {
            return Err(ScheduleError::Interval(format!("{count}{}", unit.as_str())));
        }
        Ok(Interval { unit, count })
    }
}

impl FromStr for Interval {
    type Err = ScheduleError;
    /// `Nday`, `Nweek`, `Nmonth` or `Nyear` (a trailing `s` is accepted: `3months`).
    fn from_str(s: &str) -> Result<Self, ScheduleError> {
        let bad = || ScheduleError::Interval(s.to_owned());
        let t = s.trim().to_ascii_lowercase();
        let split = t.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (num, unit) = t.split_at(split);
        if num.is_empty() || num.len() > 4 {
            return Err(bad());
        }
        let count: u32 = num.parse().map_err(|_| bad())?;
        let unit = unit.strip_suffix('s').unwrap_or(unit);
        let unit: IntervalUnit = unit.parse().map_err(|_| bad())?;
        Interval::new(unit, count).map_err(|_| bad())
    }
}

impl fmt::Display for Interval {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.count, self.unit.as_str())
    }
}

/// Parses an IANA zone name.
///
/// # Errors
/// [`ScheduleError::Zone`].
pub fn parse_zone(name: &str) -> Result<Tz, ScheduleError> {
    name.trim()
        .parse::<Tz>()
        .map_err(|_| ScheduleError::Zone(name.to_owned()))
}

/// A subscription's calendar: anchor, interval and zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Calendar {
    /// The instant of period 0.
    pub anchor: DateTime<Utc>,
    /// The billing interval.
    pub interval: Interval,
    /// The zone whose wall clock the calendar follows.
    pub zone: Tz,
}

impl Calendar {
    /// A calendar from the terms as stored: `unit` (`day` … `year`), `count`, the IANA `zone`.
    ///
    /// # Errors
    /// [`ScheduleError::Interval`] or [`ScheduleError::Zone`].
    pub fn from_stored(
        anchor: DateTime<Utc>,
        unit: &str,
        count: i32,
        zone: &str,
    ) -> Result<Self, ScheduleError> {
        let count =
            u32::try_from(count).map_err(|_| ScheduleError::Interval(format!("{count}{unit}")))?;
        Ok(Calendar {
            anchor,
            interval: Interval::new(unit.parse()?, count)?,
            zone: parse_zone(zone)?,
        })
    }

    /// The instant period `n` (0-based) starts. Period 0 starts at the anchor itself.
    ///
    /// # Errors
    /// [`ScheduleError::OutOfRange`] for periods beyond chrono's calendar.
    pub fn period_start(&self, n: u32) -> Result<DateTime<Utc>, ScheduleError> {
        if n == 0 {
            return Ok(self.anchor);
        }
        let local = self.anchor.with_timezone(&self.zone).naive_local();
        let steps = i64::from(n) * i64::from(self.interval.count);
        let target = match self.interval.unit {
            IntervalUnit::Day => local
                .checked_add_signed(Duration::try_days(steps).ok_or(ScheduleError::OutOfRange(n))?),
            IntervalUnit::Week => local.checked_add_signed(
                Duration::try_days(steps * 7).ok_or(ScheduleError::OutOfRange(n))?,
            ),
            IntervalUnit::Month => add_months_clamped(local, steps),
            IntervalUnit::Year => add_months_clamped(local, steps * 12),
        }
        .ok_or(ScheduleError::OutOfRange(n))?;
        Ok(resolve_local(self.zone, target))
    }

    /// The first period whose start is at or after `instant`.
    ///
    /// # Errors
    /// [`ScheduleError::OutOfRange`].
    pub fn first_period_at_or_after(&self, instant: DateTime<Utc>) -> Result<u32, ScheduleError> {
        if instant <= self.anchor {
            return Ok(0);
        }
        // Estimate from the average length of a unit, then walk to the exact answer.
        let approx_days = match self.interval.unit {
            IntervalUnit::Day => 1.0,
            IntervalUnit::Week => 7.0,
            IntervalUnit::Month => 30.436_875,
            IntervalUnit::Year => 365.2425,
        } * f64::from(self.interval.count);
        let elapsed_days = (instant - self.anchor).num_seconds() as f64 / 86_400.0;
        let mut n = ((elapsed_days / approx_days).floor() as i64 - 1)
            .clamp(0, i64::from(u32::MAX - 1)) as u32;
        while n > 0 && self.period_start(n)? >= instant {
            n -= 1;
        }
        while self.period_start(n)? < instant {
            n = n.checked_add(1).ok_or(ScheduleError::OutOfRange(n))?;
        }
        Ok(n)
    }
}

fn days_in_month(year: i32, month: u32) -> u32 {
    let (ny, nm) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .and_then(|d| d.pred_opt())
        .map(|d| d.day())
        .unwrap_or(28)
}

fn add_months_clamped(local: NaiveDateTime, months: i64) -> Option<NaiveDateTime> {
    let total = i64::from(local.year()) * 12 + i64::from(local.month0()) + months;
    let year = i32::try_from(total.div_euclid(12)).ok()?;
    let month = u32::try_from(total.rem_euclid(12)).ok()? + 1;
    let day = local.day().min(days_in_month(year, month));
    NaiveDate::from_ymd_opt(year, month, day).map(|d| d.and_time(local.time()))
}

/// Turns a wall-clock time in `zone` into one instant, by the module's DST rules.
pub fn resolve_local(zone: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    match zone.from_local_datetime(&local) {
        LocalResult::Single(t) => t.with_timezone(&Utc),
        LocalResult::Ambiguous(earliest, _) => earliest.with_timezone(&Utc),
        LocalResult::None => {
            // In a gap: keep the offset in force before it, which moves the time forward by
            // the gap's length. Look back far enough to leave any real-world gap.
            for hours in [3, 6, 12, 25, 49] {
                if let Some(before) = zone
                    .from_local_datetime(&(local - Duration::hours(hours)))
                    .earliest()
                {
                    let offset = chrono::Offset::fix(before.offset());
                    return Utc.from_utc_datetime(&(local - offset));
                }
            }
            Utc.from_utc_datetime(&local)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn parses_intervals() {
        assert_eq!(
            "1month".parse::<Interval>().unwrap(),
            Interval {
                unit: IntervalUnit::Month,
                count: 1
            }
        );
        assert_eq!("2weeks".parse::<Interval>().unwrap().count, 2);
        assert_eq!("30day".parse::<Interval>().unwrap().unit, IntervalUnit::Day);
        for bad in [
            "0month",
            "1fortnight",
            "month",
            "",
            "-1month",
            "1.5month",
            "1001day",
            "99999year",
        ] {
            assert!(bad.parse::<Interval>().is_err(), "{bad}");
        }
    }

    #[test]
    fn month_end_clamps_without_drift() {
        let cal = Calendar {
            anchor: utc("2023-01-31T10:00:00Z"),
            interval: "1month".parse().unwrap(),
            zone: Tz::UTC,
        };
        let got: Vec<String> = (0..5)
            .map(|n| cal.period_start(n).unwrap().format("%Y-%m-%d").to_string())
            .collect();
        assert_eq!(
            got,
            [
                "2023-01-31",
                "2023-02-28",
                "2023-03-31",
                "2023-04-30",
                "2023-05-31"
            ]
        );
        let leap = Calendar {
            anchor: utc("2024-01-31T10:00:00Z"),
            ..cal
        };
        assert_eq!(leap.period_start(1).unwrap(), utc("2024-02-29T10:00:00Z"));
    }

    #[test]
    fn keeps_local_time_across_dst() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 09:00 EST on Jan 15 → 09:00 EDT on Apr 15.
        let cal = Calendar {
            anchor: utc("2024-01-15T14:00:00Z"),
            interval: "1month".parse().unwrap(),
            zone: ny,
        };
        assert_eq!(cal.period_start(3).unwrap(), utc("2024-04-15T13:00:00Z"));
        let weekly = Calendar {
            interval: "1week".parse().unwrap(),
            anchor: utc("2024-03-04T14:00:00Z"),
            zone: ny,
        };
        assert_eq!(weekly.period_start(1).unwrap(), utc("2024-03-11T13:00:00Z"));
    }

    #[test]
    fn dst_gap_and_overlap() {
        let ny: Tz = "America/New_York".parse().unwrap();
        // 02:30 local on 2024-02-10; a month later is 2024-03-10 02:30, inside the gap.
        let cal = Calendar {
            anchor: utc("2024-02-10T07:30:00Z"),
            interval: "1month".parse().unwrap(),
            zone: ny,
        };
        assert_eq!(cal.period_start(1).unwrap(), utc("2024-03-10T07:30:00Z")); // 03:30 EDT
        // 01:30 local on 2024-10-03; a month later 2024-11-03 01:30 happens twice: the first.
        let cal = Calendar {
            anchor: utc("2024-10-03T05:30:00Z"),
            interval: "1month".parse().unwrap(),
            zone: ny,
        };
        assert_eq!(cal.period_start(1).unwrap(), utc("2024-11-03T05:30:00Z")); // 01:30 EDT
    }

    #[test]
    fn first_period_at_or_after() {
        let cal = Calendar {
            anchor: utc("2024-01-31T00:00:00Z"),
            interval: "1month".parse().unwrap(),
            zone: Tz::UTC,
        };
        assert_eq!(
            cal.first_period_at_or_after(utc("2023-01-01T00:00:00Z"))
                .unwrap(),
            0
        );
        assert_eq!(
            cal.first_period_at_or_after(utc("2024-02-29T00:00:00Z"))
                .unwrap(),
            1
        );
        assert_eq!(
            cal.first_period_at_or_after(utc("2024-02-29T00:00:01Z"))
                .unwrap(),
            2
        );
        assert_eq!(
            cal.first_period_at_or_after(utc("2034-02-28T00:00:00Z"))
                .unwrap(),
            121
        );
        assert_eq!(
            cal.first_period_at_or_after(utc("2034-02-28T00:00:01Z"))
                .unwrap(),
            122
        );
    }
}
