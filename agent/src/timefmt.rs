//! Times and durations as people read them in logs and command output.
use std::time::{Duration, SystemTime};

/// RFC 3339 in UTC to the second, e.g. `2027-02-27T10:00:00Z`.
pub fn rfc3339(at: SystemTime) -> String {
    humantime::format_rfc3339_seconds(at).to_string()
}

/// A duration rounded to its two largest units, e.g. `89d 23h`, `5h 3m`, `42s`.
pub(crate) fn approx(d: Duration) -> String {
    let secs = d.as_secs();
    let (days, hours, mins, secs) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (days, hours, mins) {
        (0, 0, 0) => format!("{secs}s"),
        (0, 0, _) => format!("{mins}m {secs}s"),
        (0, _, _) => format!("{hours}h {mins}m"),
        _ => format!("{days}d {hours}h"),
    }
}

/// `in 3d 2h` for a time ahead of `now`, `5m 0s ago` for one behind it.
pub(crate) fn relative(at: SystemTime, now: SystemTime) -> String {
    match at.duration_since(now) {
        Ok(ahead) => format!("in {}", approx(ahead)),
        Err(behind) => format!("{} ago", approx(behind.duration())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn approximates_to_two_units() {
        assert_eq!(approx(Duration::from_secs(42)), "42s");
        assert_eq!(approx(Duration::from_secs(3 * 60 + 5)), "3m 5s");
        assert_eq!(approx(Duration::from_secs(5 * 3600 + 3 * 60 + 59)), "5h 3m");
        assert_eq!(approx(Duration::from_secs(90 * 86_400 - 1)), "89d 23h");
    }

    #[test]
    fn relative_says_which_side_of_now() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(relative(now + Duration::from_secs(60), now), "in 1m 0s");
        assert_eq!(relative(now - Duration::from_secs(7200), now), "2h 0m ago");
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00Z");
    }
}
