//! Windows: which `[start, end)` a minute belongs to, for minute, hour, day or month windows in a time
//! zone (day and month boundaries are local midnights; DST gaps start the window at the first instant
//! that exists). Windows are clipped to the query's `[from, to)`.

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, TimeZone, Timelike};
use chrono_tz::Tz;

use crate::ingest::time::MICROS_PER_MINUTE;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSize {
    Minute,
    Hour,
    Day,
    Month,
}

impl WindowSize {
    pub fn name(self) -> &'static str {
        match self {
            WindowSize::Minute => "minute",
            WindowSize::Hour => "hour",
            WindowSize::Day => "day",
            WindowSize::Month => "month",
        }
    }

    pub fn parse(s: &str) -> Option<WindowSize> {
        Some(match s {
            "minute" => WindowSize::Minute,
            "hour" => WindowSize::Hour,
            "day" => WindowSize::Day,
            "month" => WindowSize::Month,
            _ => return None,
        })
    }
}

pub struct Windower {
    size: Option<WindowSize>,
    tz: Tz,
    from_us: i64,
    to_us: i64,
    /// The last window handed out: consecutive minutes mostly fall into it.
    last: (i64, i64),
}

impl Windower {
    pub fn new(size: Option<WindowSize>, tz: Tz, from_us: i64, to_us: i64) -> Self {
        Windower { size, tz, from_us, to_us, last: (0, 0) }
    }

    /// The clipped window holding the minute that starts at `t_us`.
    pub fn window(&mut self, t_us: i64) -> (i64, i64) {
        if t_us >= self.last.0 && t_us < self.last.1 {
            return self.last;
        }
        let (start, end) = match self.size {
            None => (self.from_us, self.to_us),
            Some(WindowSize::Minute) => (t_us, t_us + MICROS_PER_MINUTE),
            Some(size) => self.local_window(size, t_us),
        };
        self.last = (start.max(self.from_us), end.min(self.to_us));
        self.last
    }

    fn local_window(&self, size: WindowSize, t_us: i64) -> (i64, i64) {
        let local = DateTime::from_timestamp_micros(t_us).expect("in range").with_timezone(&self.tz).naive_local();
        let date = local.date();
        let (start, next): (NaiveDateTime, NaiveDateTime) = match size {
            WindowSize::Hour => {
                let s = date.and_hms_opt(local.hour(), 0, 0).unwrap();
                (s, s + Duration::hours(1))
            }
            WindowSize::Day => {
                let s = date.and_hms_opt(0, 0, 0).unwrap();
                (s, s + Duration::days(1))
            }
            WindowSize::Month => {
                let first = NaiveDate::from_ymd_opt(date.year(), date.month(), 1).unwrap();
                let next = if date.month() == 12 {
                    NaiveDate::from_ymd_opt(date.year() + 1, 1, 1)
                } else {
                    NaiveDate::from_ymd_opt(date.year(), date.month() + 1, 1)
                }
                .unwrap();
                (first.and_hms_opt(0, 0, 0).unwrap(), next.and_hms_opt(0, 0, 0).unwrap())
            }
            WindowSize::Minute => unreachable!("minutes need no time zone"),
        };
        (self.instant(start), self.instant(next))
    }

    /// The UTC instant of a local wall time; in a DST gap, the first instant after it.
    fn instant(&self, local: NaiveDateTime) -> i64 {
        let mut probe = local;
        for _ in 0..16 {
            if let Some(t) = self.tz.from_local_datetime(&probe).earliest() {
                return t.timestamp_micros();
            }
            probe += Duration::minutes(15);
        }
        self.tz.from_utc_datetime(&local).timestamp_micros()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(s: &str) -> i64 {
        DateTime::parse_from_rfc3339(s).unwrap().timestamp_micros()
    }

    #[test]
    fn day_windows_follow_local_midnight() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        let mut w = Windower::new(Some(WindowSize::Day), tz, us("2026-01-01T00:00:00Z"), us("2027-01-01T00:00:00Z"));
        assert_eq!(w.window(us("2026-11-23T23:30:00Z")), (us("2026-11-23T23:00:00Z"), us("2026-11-24T23:00:00Z")));
        // The day DST starts in Paris lasts 23 hours.
        assert_eq!(w.window(us("2026-03-29T12:00:00Z")), (us("2026-03-28T23:00:00Z"), us("2026-03-29T22:00:00Z")));
    }

    #[test]
    fn month_windows_and_clipping() {
        let tz: Tz = "UTC".parse().unwrap();
        let mut w = Windower::new(Some(WindowSize::Month), tz, us("2026-11-15T00:00:00Z"), us("2027-01-10T00:00:00Z"));
        assert_eq!(w.window(us("2026-11-20T00:00:00Z")), (us("2026-11-15T00:00:00Z"), us("2026-12-01T00:00:00Z")));
        assert_eq!(w.window(us("2026-12-31T23:59:00Z")), (us("2026-12-01T00:00:00Z"), us("2027-01-01T00:00:00Z")));
        assert_eq!(w.window(us("2027-01-05T00:00:00Z")), (us("2027-01-01T00:00:00Z"), us("2027-01-10T00:00:00Z")));
    }

    #[test]
    fn hour_windows_in_half_hour_zones() {
        let tz: Tz = "Asia/Kolkata".parse().unwrap();
        let mut w = Windower::new(Some(WindowSize::Hour), tz, 0, i64::MAX);
        assert_eq!(w.window(us("2026-11-23T10:45:00Z")), (us("2026-11-23T10:30:00Z"), us("2026-11-23T11:30:00Z")));
    }

    #[test]
    fn midnight_in_a_dst_gap_starts_at_the_first_real_instant() {
        // Santiago skipped 2026-09-06 00:00-01:00 local.
        let tz: Tz = "America/Santiago".parse().unwrap();
        let mut w = Windower::new(Some(WindowSize::Day), tz, 0, i64::MAX);
        let (start, end) = w.window(us("2026-09-06T12:00:00Z"));
        assert_eq!(start, us("2026-09-06T04:00:00Z"));
        assert_eq!(end, us("2026-09-07T03:00:00Z"));
    }
}
