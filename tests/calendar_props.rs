//! Property tests of the billing calendar (pure domain code, no database).

use chrono::{DateTime, Datelike, Duration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use paycron::domain::schedule::{Calendar, Interval, IntervalUnit};
use proptest::prelude::*;

const ZONES: [&str; 6] = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Sydney",
    "America/Santiago",
    "Asia/Kolkata",
];

fn days_in_month(y: i32, m: u32) -> u32 {
    let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
    NaiveDate::from_ymd_opt(ny, nm, 1)
        .unwrap()
        .pred_opt()
        .unwrap()
        .day()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Monthly calendars anchored on days 28-31: every period lands in its own month, on the
    /// anchor day clamped to the month's end, at the anchor's wall-clock time when it exists.
    #[test]
    fn month_end_anchors_clamp_and_never_skip(
        year in 2020i32..2031, month in 1u32..=12, day in 28u32..=31, hour in 0u32..24,
        minute in 0u32..60, zone_ix in 0usize..ZONES.len(), count in 1u32..=3, yearly in any::<bool>(),
    ) {
        let zone: Tz = ZONES[zone_ix].parse().unwrap();
        let day = day.min(days_in_month(year, month));
        let local = NaiveDate::from_ymd_opt(year, month, day).unwrap().and_hms_opt(hour, minute, 0).unwrap();
        let anchor = paycron::domain::schedule::resolve_local(zone, local);
        let unit = if yearly { IntervalUnit::Year } else { IntervalUnit::Month };
        let cal = Calendar { anchor, interval: Interval::new(unit, count).unwrap(), zone };
        let anchor_local = anchor.with_timezone(&zone);
        let mut prev: Option<DateTime<Utc>> = None;
        for n in 0..40u32 {
            let start = cal.period_start(n).unwrap();
            let l = start.with_timezone(&zone);
            let months = i64::from(n) * i64::from(count) * if yearly { 12 } else { 1 };
            let total = i64::from(anchor_local.year()) * 12 + i64::from(anchor_local.month0()) + months;
            let (ey, em) = ((total.div_euclid(12)) as i32, (total.rem_euclid(12)) as u32 + 1);
            // The wall-clock date is the anchor day clamped — or, if that local time fell in a
            // DST gap, at most one day later (the gap shifts forward).
            let expect_day = anchor_local.day().min(days_in_month(ey, em));
            let expected = NaiveDate::from_ymd_opt(ey, em, expect_day).unwrap();
            let got = l.date_naive();
            prop_assert!(got == expected || got == expected.succ_opt().unwrap(), "n={n}: {got} vs {expected}");
            if got == expected && l.hour() == anchor_local.hour() {
                prop_assert_eq!(l.minute(), anchor_local.minute());
            }
            if let Some(p) = prev {
                prop_assert!(start > p, "strictly increasing: {p} then {start}");
            }
            prev = Some(start);
        }
    }

    /// Daily and weekly calendars keep the local time of day across DST and never repeat or
    /// skip a day.
    #[test]
    fn days_and_weeks_keep_local_time(
        start_day in 0i64..3000, hour in 0u32..24, zone_ix in 0usize..ZONES.len(), weekly in any::<bool>(), count in 1u32..=3,
    ) {
        let zone: Tz = ZONES[zone_ix].parse().unwrap();
        let base = Utc.with_ymd_and_hms(2020, 1, 1, 0, 0, 0).unwrap() + Duration::days(start_day);
        let local = base.with_timezone(&zone).date_naive().and_hms_opt(hour, 30, 0).unwrap();
        let anchor = paycron::domain::schedule::resolve_local(zone, local);
        let unit = if weekly { IntervalUnit::Week } else { IntervalUnit::Day };
        let cal = Calendar { anchor, interval: Interval::new(unit, count).unwrap(), zone };
        let step = i64::from(count) * if weekly { 7 } else { 1 };
        let anchor_date = anchor.with_timezone(&zone).date_naive();
        let mut prev = anchor;
        for n in 1..60u32 {
            let s = cal.period_start(n).unwrap();
            let l = s.with_timezone(&zone);
            let expected = anchor_date + Duration::days(step * i64::from(n));
            prop_assert!(l.date_naive() == expected || l.date_naive() == expected.succ_opt().unwrap(), "n={n}");
            prop_assert!(s > prev);
            prev = s;
        }
    }

    /// `first_period_at_or_after` agrees with a linear scan.
    #[test]
    fn first_period_matches_a_scan(offset_days in 0i64..2000, day in 1u32..=31, zone_ix in 0usize..ZONES.len()) {
        let zone: Tz = ZONES[zone_ix].parse().unwrap();
        let day = day.min(28);
        let anchor = paycron::domain::schedule::resolve_local(zone, NaiveDate::from_ymd_opt(2021, 1, day).unwrap().and_hms_opt(9, 0, 0).unwrap());
        let cal = Calendar { anchor, interval: "1month".parse().unwrap(), zone };
        let t = anchor + Duration::days(offset_days) + Duration::minutes(7);
        let got = cal.first_period_at_or_after(t).unwrap();
        let scan = (0..).find(|&n| cal.period_start(n).unwrap() >= t).unwrap();
        prop_assert_eq!(got, scan);
    }
}

#[test]
fn leap_years_for_every_anchor_day() {
    for day in 28..=31 {
        for year in [2023, 2024] {
            let anchor = Utc.with_ymd_and_hms(year, 1, day, 12, 0, 0).unwrap();
            let cal = Calendar {
                anchor,
                interval: "1month".parse().unwrap(),
                zone: Tz::UTC,
            };
            let feb = cal.period_start(1).unwrap();
            let expect = if year == 2024 { 29 } else { 28 };
            assert_eq!(
                (feb.month(), feb.day()),
                (2, expect.min(day)),
                "{year}-01-{day}"
            );
            assert_eq!(
                cal.period_start(2).unwrap().day(),
                day.min(31),
                "March keeps the anchor day"
            );
        }
    }
    // Feb 29 yearly: Feb 28 in common years, Feb 29 again in leap years.
    let cal = Calendar {
        anchor: Utc.with_ymd_and_hms(2024, 2, 29, 0, 0, 0).unwrap(),
        interval: "1year".parse().unwrap(),
        zone: Tz::UTC,
    };
    assert_eq!(cal.period_start(1).unwrap().day(), 28);
    assert_eq!(cal.period_start(4).unwrap().day(), 29);
}
