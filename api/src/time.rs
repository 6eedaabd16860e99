//! The one place where wire timestamps (`google.protobuf.Timestamp`) and `chrono` times
//! meet. Both crates convert through here, so rounding and range rules cannot drift.
use chrono::{DateTime, Utc};
use prost_types::Timestamp;

/// A time as it goes on the wire (nanosecond precision is kept).
pub fn to_timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    }
}

/// An optional time as it goes on the wire (`None`: the field is unset).
pub fn to_wire(t: Option<DateTime<Utc>>) -> Option<Timestamp> {
    t.map(to_timestamp)
}

/// A wire timestamp as a time; `None` when it is outside what `chrono` represents or
/// its nanoseconds are out of range (the peer sent garbage).
pub fn from_timestamp(ts: &Timestamp) -> Option<DateTime<Utc>> {
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_nanoseconds() {
        let t = DateTime::from_timestamp(1_900_000_000, 123_456_789).unwrap();
        assert_eq!(from_timestamp(&to_timestamp(t)), Some(t));
        assert_eq!(to_wire(None), None);
    }

    #[test]
    fn garbage_is_refused_not_wrapped() {
        let bad_nanos = Timestamp {
            seconds: 0,
            nanos: -1,
        };
        assert_eq!(from_timestamp(&bad_nanos), None);
        let far = Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(from_timestamp(&far), None);
    }
}
