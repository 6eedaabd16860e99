//! Durations as the flags take them (`30s`, `12h`, `7d`, `90d`), each kind with its upper
//! bound, and [`HumanDuration`], which shows a default the way a flag is written.
use std::{fmt, time::Duration};

/// Longest timer: `--db-timeout`, `--db-check-interval`, the transport's deadlines and
/// PING intervals, the grace periods, `--notify-interval`. PostgreSQL's
/// `statement_timeout` (which carries `--db-timeout`) stops at about 24.8 days, and a
/// call that waits more than an hour for its database is an outage, not a slow call.
pub(crate) const MAX_TIMER: Duration = Duration::from_secs(3600);
/// Longest token lifetime, renewal threshold or extension: far inside what timestamps
/// can represent, so that no expiry arithmetic can overflow (`never` exists for tokens
/// that should not expire).
pub(crate) const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 86400);

/// A duration flag whose default is a `Duration` constant of the settings it feeds
/// (`renewal::DEFAULT_THRESHOLD`, `cache::DEFAULT_TTL`, ...): clap shows a default
/// through `Display` (`default_value_t`), so the constant is stated once and shown as a
/// person types it. humantime's own `Display` would show 90 days as
/// `2months 29days 2h 52m 48s`; this one uses the largest unit that is exact (`90d`,
/// `5m`, `250ms`), which the flag's parser reads back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct HumanDuration(pub(crate) Duration);

impl HumanDuration {
    pub(crate) fn get(self) -> Duration {
        self.0
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [(u128, &str); 7] = [
            (86_400_000_000_000, "d"),
            (3_600_000_000_000, "h"),
            (60_000_000_000, "m"),
            (1_000_000_000, "s"),
            (1_000_000, "ms"),
            (1_000, "us"),
            (1, "ns"),
        ];
        let nanos = self.0.as_nanos();
        if nanos == 0 {
            return f.write_str("0s");
        }
        let (size, unit) = UNITS
            .into_iter()
            .find(|(size, _)| nanos.is_multiple_of(*size))
            .unwrap_or((1, "ns"));
        write!(f, "{}{unit}", nanos / size)
    }
}

/// `parse` for a flag of type [`HumanDuration`].
pub(crate) fn human(
    parse: fn(&str) -> Result<Duration, String>,
) -> impl Fn(&str) -> Result<HumanDuration, String> + Clone + Send + Sync + 'static {
    move |s| parse(s).map(HumanDuration)
}

/// Parses `3d`, `90d`, `1s`, `1h30m`, from longer than zero up to `max`.
pub(crate) fn parse_bounded(s: &str, max: Duration) -> Result<Duration, String> {
    let d = humantime::parse_duration(s.trim())
        .map_err(|e| format!("{e}: use a duration such as 30s, 12h, 7d or 90d"))?;
    if d.is_zero() {
        return Err("must be greater than zero".into());
    }
    if d > max {
        return Err(format!(
            "too long: at most {}",
            humantime::format_duration(max)
        ));
    }
    Ok(d)
}

/// A timer: a database wait, a deadline, an interval or a grace period, up to
/// [`MAX_TIMER`].
pub(crate) fn parse_timer(s: &str) -> Result<Duration, String> {
    parse_bounded(s, MAX_TIMER)
}

/// A token lifetime or renewal period, up to [`MAX_LIFETIME`].
pub(crate) fn parse_lifetime(s: &str) -> Result<Duration, String> {
    parse_bounded(s, MAX_LIFETIME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_in_human_form() {
        assert_eq!(
            parse_lifetime("3d").unwrap(),
            Duration::from_secs(3 * 86400)
        );
        assert_eq!(parse_timer("1s").unwrap(), Duration::from_secs(1));
        assert!(parse_lifetime("0s").is_err());
        assert!(parse_lifetime("soon").is_err());
        assert!(parse_timer("61m").unwrap_err().contains("at most 1h"));
    }

    #[test]
    fn a_default_is_shown_as_a_flag_is_written_and_reads_back() {
        for (d, shown) in [
            (Duration::from_secs(90 * 86400), "90d"),
            (Duration::from_secs(7 * 86400), "7d"),
            (Duration::from_secs(2 * 3600), "2h"),
            (Duration::from_secs(300), "5m"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_millis(250), "250ms"),
            (Duration::from_micros(1500), "1500us"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::ZERO, "0s"),
        ] {
            assert_eq!(HumanDuration(d).to_string(), shown);
            assert_eq!(humantime::parse_duration(shown).unwrap(), d, "{shown}");
        }
    }
}
