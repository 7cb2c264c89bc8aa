//! Event timestamps: RFC 3339 with `Z` or an offset, or with no offset at all (then read as UTC).
//! Everything inside the engine is microseconds since the Unix epoch, UTC.

use chrono::{DateTime, NaiveDateTime};

pub const MICROS_PER_MINUTE: i64 = 60_000_000;
pub const MINUTES_PER_DAY: i64 = 1440;

/// Parses `2026-11-23T10:00:00Z`, `2026-11-23T11:00:00.5+01:00` or `2026-11-23T10:00:00` (UTC).
pub fn parse_rfc3339_micros(text: &str) -> Option<i64> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.timestamp_micros());
    }
    // No offset: CloudEvents producers that omit it mean UTC.
    for format in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = NaiveDateTime::parse_from_str(text, format) {
            return Some(t.and_utc().timestamp_micros());
        }
    }
    None
}

/// The minute (since the epoch) that holds `micros`; floors for times before 1970 too.
pub fn minute_of(micros: i64) -> i64 {
    micros.div_euclid(MICROS_PER_MINUTE)
}

pub fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_795_428_000_000_000; // 2026-11-23T10:00:00Z

    #[test]
    fn accepts_utc_offsets_and_naive_times() {
        assert_eq!(parse_rfc3339_micros("2026-11-23T10:00:00Z"), Some(T0));
        assert_eq!(parse_rfc3339_micros("2026-11-23T11:00:00+01:00"), Some(T0));
        assert_eq!(parse_rfc3339_micros("2026-11-23T05:30:00-04:30"), Some(T0));
        assert_eq!(parse_rfc3339_micros("2026-11-23T10:00:00"), Some(T0));
        assert_eq!(parse_rfc3339_micros("2026-11-23T10:00:00.000123Z"), Some(T0 + 123));
        assert_eq!(parse_rfc3339_micros("2026-11-23t10:00:00z"), Some(T0));
    }

    #[test]
    fn rejects_what_is_not_a_timestamp() {
        for bad in ["", "yesterday", "2026-11-23", "2026-13-01T00:00:00Z", "2026-11-23T25:00:00Z", "1700000000"] {
            assert_eq!(parse_rfc3339_micros(bad), None, "{bad}");
        }
    }

    #[test]
    fn minutes_floor_before_the_epoch() {
        assert_eq!(minute_of(0), 0);
        assert_eq!(minute_of(-1), -1);
        assert_eq!(minute_of(MICROS_PER_MINUTE), 1);
    }
}
