//! When a recurring item falls due: every N days at the same local time of
//! day in the patient's time zone.
//!
//! A daily PHQ-9 set for 09:00 in Madrid stays at 09:00 Madrid time across
//! the change to and from summer time (23 or 25 hours apart on those days),
//! rather than drifting to 08:00 or 10:00 as steps of 24 hours would. A
//! local time that does not exist on a day (skipped by a change to summer
//! time) falls due at the first local time after the gap; a local time that
//! occurs twice (the change back) falls due at its first occurrence.
//!
//! Checkins (what is due, what was missed) and notifications (reminders) ask
//! this one type, so they always agree on an occurrence.

use std::time::SystemTime;

use chrono::{DateTime, Days, LocalResult, NaiveDateTime, TimeZone, Utc};
use chrono_tz::Tz;
use tandem_proto::careplans::v1 as plans;

const SECONDS_PER_DAY: i64 = 24 * 3600;

/// A recurrence in a time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    starts_at: SystemTime,
    every_days: u32,
    ends_at: Option<SystemTime>,
    zone: Tz,
}

impl Schedule {
    /// Every `every_days` days (at least 1) from `starts_at`, at its local
    /// time of day in `zone`, with no occurrence after `ends_at`.
    pub fn new(starts_at: SystemTime, every_days: u32, ends_at: Option<SystemTime>, zone: Tz) -> Self {
        Self { starts_at, every_days: every_days.max(1), ends_at, zone }
    }

    /// A care plan's recurrence in the patient's time zone; `None` without a
    /// valid start.
    pub fn of(recurrence: &plans::Recurrence, zone: Tz) -> Option<Self> {
        let starts_at = SystemTime::try_from(recurrence.starts_at?).ok()?;
        let ends_at = recurrence.ends_at.and_then(|end| SystemTime::try_from(end).ok());
        Some(Self::new(starts_at, recurrence.every_days, ends_at, zone))
    }

    /// The period between occurrences, in days.
    pub fn every_days(&self) -> u32 {
        self.every_days
    }

    /// Parses an IANA zone name; an empty or unknown one means UTC (a patient
    /// projected before their time zone was known).
    pub fn zone(name: &str) -> Tz {
        name.parse().unwrap_or(Tz::UTC)
    }

    /// The `k`-th occurrence (the first is 0), ignoring `ends_at`.
    pub fn nth(&self, k: u32) -> Option<SystemTime> {
        let start = DateTime::<Utc>::from(self.starts_at).with_timezone(&self.zone);
        let days = u64::from(k).checked_mul(u64::from(self.every_days))?;
        let local = start.date_naive().checked_add_days(Days::new(days))?.and_time(start.time());
        self.resolve(local).map(SystemTime::from)
    }

    /// The latest occurrence at or before `now` with its index, or `None`
    /// before the first one and after `ends_at`.
    pub fn latest(&self, now: SystemTime) -> Option<(u32, SystemTime)> {
        let since = DateTime::<Utc>::from(now).signed_duration_since(DateTime::<Utc>::from(self.starts_at));
        if since.num_seconds() < 0 {
            return None;
        }
        // Local days differ from 24 hours by at most a few hours, so the
        // estimate from elapsed time is off by at most one occurrence.
        let period = SECONDS_PER_DAY * i64::from(self.every_days);
        let estimate = u32::try_from(since.num_seconds() / period).ok()?;
        let mut k = estimate.saturating_add(1);
        let found = loop {
            if let Some(at) = self.nth(k)
                && at <= now
            {
                break Some((k, at));
            }
            if k == 0 || k + 2 < estimate {
                break None;
            }
            k -= 1;
        }?;
        if self.ends_at.is_some_and(|end| found.1 > end) {
            return None;
        }
        Some(found)
    }

    /// The latest occurrence at or before `now` and the one after it.
    pub fn current_and_next(&self, now: SystemTime) -> Option<(SystemTime, SystemTime)> {
        let (k, current) = self.latest(now)?;
        Some((current, self.nth(k.checked_add(1)?)?))
    }

    /// Up to `count` occurrences at or before `now`, latest first.
    pub fn recent(&self, now: SystemTime, count: u32) -> Vec<SystemTime> {
        let Some((k, _)) = self.latest(now) else { return Vec::new() };
        (0..count).filter_map(|back| k.checked_sub(back)).filter_map(|k| self.nth(k)).collect()
    }

    fn resolve(&self, local: NaiveDateTime) -> Option<DateTime<Tz>> {
        match self.zone.from_local_datetime(&local) {
            LocalResult::Single(at) => Some(at),
            LocalResult::Ambiguous(first, _) => Some(first),
            // In a gap: the first local time after it (gaps are at most a
            // few hours; step in quarter hours, the finest any zone uses).
            LocalResult::None => (1..=16)
                .filter_map(|quarter| local.checked_add_signed(chrono::Duration::minutes(15 * quarter)))
                .find_map(|later| self.zone.from_local_datetime(&later).earliest()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{Datelike, Timelike};
    use proptest::prelude::*;

    use super::*;

    fn at(zone: Tz, y: i32, m: u32, d: u32, h: u32, min: u32) -> SystemTime {
        zone.with_ymd_and_hms(y, m, d, h, min, 0).earliest().unwrap().into()
    }

    fn local(zone: Tz, time: SystemTime) -> NaiveDateTime {
        DateTime::<Utc>::from(time).with_timezone(&zone).naive_local()
    }

    #[test]
    fn a_daily_item_keeps_its_local_time_across_both_dst_changes() {
        let madrid = chrono_tz::Europe::Madrid;
        // 2026: summer time from 29 March, winter time from 25 October.
        let schedule = Schedule::new(at(madrid, 2026, 3, 27, 9, 0), 1, None, madrid);
        for k in 0..240 {
            let occurrence = local(madrid, schedule.nth(k).unwrap());
            assert_eq!((occurrence.hour(), occurrence.minute()), (9, 0), "occurrence {k}");
        }
        // The day summer time starts is 23 hours long.
        let gap = schedule.nth(2).unwrap().duration_since(schedule.nth(1).unwrap()).unwrap();
        assert_eq!(gap, Duration::from_secs(23 * 3600));
    }

    #[test]
    fn a_local_time_skipped_by_summer_time_falls_due_just_after_the_gap() {
        let new_york = chrono_tz::America::New_York;
        // 02:30 does not exist on 8 March 2026 in New York.
        let schedule = Schedule::new(at(new_york, 2026, 3, 6, 2, 30), 1, None, new_york);
        let skipped = local(new_york, schedule.nth(2).unwrap());
        assert_eq!((skipped.day(), skipped.hour(), skipped.minute()), (8, 3, 0));
        let after = local(new_york, schedule.nth(3).unwrap());
        assert_eq!((after.day(), after.hour(), after.minute()), (9, 2, 30));
    }

    #[test]
    fn nothing_is_due_before_the_start_or_after_the_end() {
        let zone = chrono_tz::Europe::London;
        let start = at(zone, 2026, 1, 1, 8, 0);
        let end = at(zone, 2026, 1, 10, 0, 0);
        let schedule = Schedule::new(start, 3, Some(end), zone);
        assert_eq!(schedule.latest(start - Duration::from_secs(1)), None);
        assert_eq!(schedule.latest(start), Some((0, start)));
        assert_eq!(schedule.latest(at(zone, 2026, 1, 9, 12, 0)).map(|(k, _)| k), Some(2));
        // The occurrence on the 10th at 08:00 is after the end.
        assert_eq!(schedule.latest(at(zone, 2026, 1, 11, 0, 0)), None);
    }

    const ZONES: [Tz; 6] = [
        chrono_tz::Europe::Madrid,
        chrono_tz::America::New_York,
        chrono_tz::America::Santiago,
        chrono_tz::Australia::Lord_Howe,
        chrono_tz::Asia::Kolkata,
        chrono_tz::UTC,
    ];

    proptest! {
        #[test]
        fn occurrences_keep_their_local_time_and_latest_brackets_now(
            zone in prop::sample::select(&ZONES[..]),
            start_secs in 1_704_067_200i64..1_830_297_600, // 2024 to 2027
            every_days in 1u32..15,
            k in 0u32..400,
            offset in 0u64..(14 * 24 * 3600),
        ) {
            let start = SystemTime::UNIX_EPOCH + Duration::from_secs(start_secs as u64);
            let schedule = Schedule::new(start, every_days, None, zone);
            let this = schedule.nth(k).unwrap();
            let next = schedule.nth(k + 1).unwrap();
            prop_assert!(next > this);
            // Same local time of day as the start, unless that time did not
            // exist that day (then within the gap after it).
            let want = local(zone, start).time();
            let got = local(zone, this).time();
            let shift = got.signed_duration_since(want).num_minutes();
            prop_assert!((0..=180).contains(&shift), "shifted {shift} minutes");
            if shift != 0 {
                prop_assert!(zone.from_local_datetime(&local(zone, this).date().and_time(want)).earliest().is_none());
            }
            // A moment between two occurrences belongs to the earlier one.
            let now = this + Duration::from_secs(offset % next.duration_since(this).unwrap().as_secs().max(1));
            prop_assert_eq!(schedule.latest(now), Some((k, this)));
            prop_assert_eq!(schedule.current_and_next(now), Some((this, next)));
        }
    }
}
