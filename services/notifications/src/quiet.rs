//! Quiet hours: a daily local-time window in which reminders wait. Crisis
//! alerts never consult them.
//!
//! A window is `[start, end)` in wall-clock time of an IANA time zone; an
//! end before the start crosses midnight ("22:00"–"07:00"). On DST days the
//! wall clock decides: a window end that the clocks skip (e.g. 02:30 on a
//! spring-forward night) ends at the first instant after the gap, and an end
//! that happens twice (fall back) ends at its first occurrence.

use std::fmt;
use std::str::FromStr;
use std::time::SystemTime;

use chrono::{DateTime, Duration as Span, LocalResult, NaiveDate, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// A wall-clock time of day, "HH:MM".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ClockTime(NaiveTime);

/// Why a clock time or time zone does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuietError {
    /// Not "HH:MM".
    #[error("must be a 24-hour time \"HH:MM\", e.g. \"21:30\"")]
    BadTime,
    /// Not an IANA zone.
    #[error("must be an IANA time zone such as \"America/New_York\" or \"UTC\"")]
    BadZone,
    /// Only one end given.
    #[error("set both quiet_hours_start and quiet_hours_end, or neither")]
    HalfWindow,
}

impl FromStr for ClockTime {
    type Err = QuietError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (hours, minutes) = text.split_once(':').ok_or(QuietError::BadTime)?;
        if hours.len() != 2 || minutes.len() != 2 {
            return Err(QuietError::BadTime);
        }
        let hours: u32 = hours.parse().map_err(|_| QuietError::BadTime)?;
        let minutes: u32 = minutes.parse().map_err(|_| QuietError::BadTime)?;
        NaiveTime::from_hms_opt(hours, minutes, 0).map(Self).ok_or(QuietError::BadTime)
    }
}

impl fmt::Display for ClockTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.0.hour(), self.0.minute())
    }
}

/// Parses an IANA time zone name.
pub fn parse_zone(name: &str) -> Result<Tz, QuietError> {
    name.parse::<Tz>().map_err(|_| QuietError::BadZone)
}

/// A daily quiet window in a time zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuietHours {
    /// When quiet begins.
    pub start: ClockTime,
    /// When quiet ends.
    pub end: ClockTime,
    /// Whose wall clock.
    pub zone: Tz,
}

impl QuietHours {
    /// A window from its text form; `None` when both ends are empty.
    pub fn parse(start: &str, end: &str, zone: Tz) -> Result<Option<Self>, QuietError> {
        match (start.trim(), end.trim()) {
            ("", "") => Ok(None),
            ("", _) | (_, "") => Err(QuietError::HalfWindow),
            (start, end) => Ok(Some(Self { start: start.parse()?, end: end.parse()?, zone })),
        }
    }

    /// Whether `at` falls inside the window.
    pub fn contains(&self, at: SystemTime) -> bool {
        let local = DateTime::<Utc>::from(at).with_timezone(&self.zone).time();
        let (start, end) = (self.start.0, self.end.0);
        if start == end {
            // An empty window: "21:00"–"21:00" means no quiet hours.
            return false;
        }
        if start < end { start <= local && local < end } else { local >= start || local < end }
    }

    /// The earliest instant at or after `at` that is outside the window.
    pub fn next_allowed(&self, at: SystemTime) -> SystemTime {
        if !self.contains(at) {
            return at;
        }
        let local = DateTime::<Utc>::from(at).with_timezone(&self.zone);
        let today = local.date_naive();
        // The window ends today, or tomorrow when it crossed midnight and
        // started today.
        let ends_today = local.time() < self.end.0;
        let end_date = if ends_today { today } else { today.succ_opt().unwrap_or(today) };
        let end = self.first_instant_at_or_after(end_date, self.end.0);
        // An end that DST moved before `at` (cannot happen for sane zones)
        // must not send a reminder into the past of the window.
        end.max(at)
    }

    /// The first real instant whose wall-clock reading in the zone is
    /// `time` on `date`, or the first instant after a DST gap that skips it.
    fn first_instant_at_or_after(&self, date: NaiveDate, time: NaiveTime) -> SystemTime {
        let wall = date.and_time(time);
        match self.zone.from_local_datetime(&wall) {
            LocalResult::Single(at) => at.with_timezone(&Utc).into(),
            LocalResult::Ambiguous(earliest, _) => earliest.with_timezone(&Utc).into(),
            LocalResult::None => {
                // In a gap: walk forward a minute at a time until the wall
                // clock exists again (gaps are at most a few hours).
                let mut probe = wall;
                for _ in 0..(6 * 60) {
                    probe += Span::minutes(1);
                    if let Some(at) = self.zone.from_local_datetime(&probe).earliest() {
                        return at.with_timezone(&Utc).into();
                    }
                }
                // No zone has a six-hour gap; treat the wall time as UTC.
                Utc.from_utc_datetime(&wall).into()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> SystemTime {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc).into()
    }

    fn window(start: &str, end: &str, zone: &str) -> QuietHours {
        QuietHours::parse(start, end, parse_zone(zone).unwrap()).unwrap().unwrap()
    }

    #[test]
    fn clock_times_parse_strictly() {
        assert_eq!("07:05".parse::<ClockTime>().unwrap().to_string(), "07:05");
        assert_eq!("23:59".parse::<ClockTime>().unwrap().to_string(), "23:59");
        for bad in ["7:05", "24:00", "12:60", "1200", "ab:cd", "", "12:00:00"] {
            assert_eq!(bad.parse::<ClockTime>(), Err(QuietError::BadTime), "{bad}");
        }
        assert_eq!(QuietHours::parse("22:00", "", Tz::UTC), Err(QuietError::HalfWindow));
        assert_eq!(QuietHours::parse("", "", Tz::UTC), Ok(None));
        assert!(parse_zone("Mars/Olympus").is_err());
    }

    #[test]
    fn a_window_across_midnight() {
        let quiet = window("22:00", "07:00", "Europe/Berlin");
        // Berlin is UTC+1 in January.
        assert!(quiet.contains(utc("2026-01-10T21:30:00Z")), "22:30 local");
        assert!(quiet.contains(utc("2026-01-10T02:00:00Z")), "03:00 local");
        assert!(!quiet.contains(utc("2026-01-10T06:00:00Z")), "07:00 local is the end, outside");
        assert!(!quiet.contains(utc("2026-01-10T12:00:00Z")), "13:00 local");
        // Before midnight: the window ends tomorrow at 07:00 local.
        assert_eq!(quiet.next_allowed(utc("2026-01-10T21:30:00Z")), utc("2026-01-11T06:00:00Z"));
        // After midnight: it ends today.
        assert_eq!(quiet.next_allowed(utc("2026-01-11T02:00:00Z")), utc("2026-01-11T06:00:00Z"));
        // Outside: now.
        assert_eq!(quiet.next_allowed(utc("2026-01-10T12:00:00Z")), utc("2026-01-10T12:00:00Z"));
    }

    #[test]
    fn a_window_within_one_day_and_an_empty_one() {
        let quiet = window("12:00", "13:00", "UTC");
        assert!(quiet.contains(utc("2026-03-01T12:30:00Z")));
        assert!(!quiet.contains(utc("2026-03-01T13:00:00Z")));
        assert_eq!(quiet.next_allowed(utc("2026-03-01T12:30:00Z")), utc("2026-03-01T13:00:00Z"));
        let none = window("09:00", "09:00", "UTC");
        assert!(!none.contains(utc("2026-03-01T09:00:00Z")));
    }

    #[test]
    fn the_wall_clock_decides_across_dst() {
        // New York: EST (UTC-5) until 2026-03-08 02:00, then EDT (UTC-4).
        let quiet = window("21:00", "08:00", "America/New_York");
        // 23:00 EST on the 7th: quiet until 08:00 EDT on the 8th = 12:00 UTC,
        // not 13:00 UTC as a fixed offset would say.
        assert!(quiet.contains(utc("2026-03-08T04:00:00Z")));
        assert_eq!(quiet.next_allowed(utc("2026-03-08T04:00:00Z")), utc("2026-03-08T12:00:00Z"));
        // The same local hours in summer are an hour earlier in UTC.
        assert!(quiet.contains(utc("2026-07-01T01:30:00Z")), "21:30 EDT");
        assert!(!quiet.contains(utc("2026-07-01T00:30:00Z")), "20:30 EDT");
    }

    #[test]
    fn an_end_skipped_by_spring_forward_ends_after_the_gap() {
        // 02:30 does not exist in New York on 2026-03-08: clocks go 01:59 EST -> 03:00 EDT.
        let quiet = window("23:00", "02:30", "America/New_York");
        let at = utc("2026-03-08T05:00:00Z"); // 00:00 EST
        assert!(quiet.contains(at));
        // The first instant after the gap is 03:00 EDT = 07:00 UTC.
        assert_eq!(quiet.next_allowed(at), utc("2026-03-08T07:00:00Z"));
    }

    #[test]
    fn an_end_repeated_by_fall_back_ends_at_its_first_occurrence() {
        // 01:30 happens twice in New York on 2026-11-01 (EDT, then EST).
        let quiet = window("23:00", "01:30", "America/New_York");
        let at = utc("2026-11-01T04:00:00Z"); // 00:00 EDT
        assert!(quiet.contains(at));
        assert_eq!(quiet.next_allowed(at), utc("2026-11-01T05:30:00Z"), "01:30 EDT");
    }
}
