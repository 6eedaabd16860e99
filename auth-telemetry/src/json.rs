//! `--log-format json`: one JSON object per line, flat. The fixed keys come first
//! (`timestamp`, `level`, `target`, `span`: the innermost span's name, `message`), then
//! the event's own fields, then the fields of every span the event happened in.
//!
//! tracing-subscriber's own JSON format nests span fields (`"span": {...}`, `"spans":
//! [...]`), even with `flatten_event(true)`; a log shipper indexes flat keys without a
//! mapping per nesting, and a call's `token_id` belongs next to its message. So the
//! event is formatted here, from the same parts: span fields are recorded by
//! [`JsonFields`] (as JSON objects, kept in each span's extensions), and the event's
//! fields are formatted by it too.
//!
//! When names collide, the fixed keys win over fields, an event's field over a span's,
//! and an inner span's over an outer one's: each key appears once.
use std::{collections::BTreeMap, fmt};

use serde::ser::{SerializeMap, Serializer as _};
use serde_json::Value;
use tracing::{Event, Level, Subscriber};
use tracing_log::NormalizeEvent;
use tracing_subscriber::{
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields,
        format::{JsonFields, Writer},
        time::{FormatTime, SystemTime},
    },
    registry::LookupSpan,
};

/// Keys every line may carry, which no field replaces.
const FIXED: [&str; 5] = ["timestamp", "level", "target", "span", "message"];

type Fields = BTreeMap<String, Value>;

/// The flat JSON event format (see the module documentation). Use it with
/// [`JsonFields`] as the field formatter, which [`crate::init`] does.
#[derive(Debug, Default, Clone, Copy)]
pub struct FlatJson;

impl<S> FormatEvent<S, JsonFields> for FlatJson
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, JsonFields>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        // A `log` record (tokio-postgres logs through `log`) carries its real target in
        // fields; this gives it back.
        let normalized = event.normalized_metadata();
        let meta = normalized.as_ref().unwrap_or_else(|| event.metadata());

        // The trace this event belongs to, when traces are on (before any span's
        // extensions are borrowed: reading the context may start the span).
        let trace = ctx.lookup_current().and_then(|current| {
            tracing::dispatcher::get_default(|dispatch| crate::otel::ids(&current.id(), dispatch))
        });
        // Outermost span first, so that an inner span's field of the same name wins.
        let mut span_fields = Fields::new();
        let mut span = None;
        if let Some(scope) = ctx.event_scope() {
            for entered in scope.from_root() {
                span = Some(entered.name());
                if let Some(fields) = entered.extensions().get::<FormattedFields<JsonFields>>() {
                    span_fields.extend(object(fields));
                }
            }
        }
        let mut formatted = String::new();
        ctx.format_fields(Writer::new(&mut formatted), event)?;
        let mut event_fields = object(&formatted);
        let message = event_fields.remove("message");
        if let Some((trace_id, span_id)) = trace {
            event_fields.insert("trace_id".into(), Value::String(trace_id));
            event_fields.insert("span_id".into(), Value::String(span_id));
        }

        let line = serialize(&Parts {
            level: *meta.level(),
            target: meta.target(),
            span,
            message: message.as_ref(),
            event_fields: &event_fields,
            span_fields: &span_fields,
        })?;
        writeln!(writer, "{line}")
    }
}

/// A line with only the fixed keys: what [`crate::say`] writes in JSON mode.
pub fn line(level: Level, target: &str, message: &str) -> String {
    let message = Value::from(message);
    serialize(&Parts {
        level,
        target,
        span: None,
        message: Some(&message),
        event_fields: &Fields::new(),
        span_fields: &Fields::new(),
    })
    // Serialising strings and JSON values into memory cannot fail; should it ever, the
    // message still goes out, as a JSON string.
    .unwrap_or_else(|_| message.to_string())
}

/// What one line is made of.
struct Parts<'a> {
    level: Level,
    target: &'a str,
    span: Option<&'a str>,
    message: Option<&'a Value>,
    event_fields: &'a Fields,
    span_fields: &'a Fields,
}

fn serialize(parts: &Parts<'_>) -> Result<String, fmt::Error> {
    let mut timestamp = String::new();
    SystemTime.format_time(&mut Writer::new(&mut timestamp))?;
    let mut out = Vec::with_capacity(256);
    let mut serializer = serde_json::Serializer::new(&mut out);
    let written = (|| {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("timestamp", &timestamp)?;
        map.serialize_entry("level", parts.level.as_str())?;
        map.serialize_entry("target", parts.target)?;
        if let Some(span) = parts.span {
            map.serialize_entry("span", span)?;
        }
        if let Some(message) = parts.message {
            map.serialize_entry("message", message)?;
        }
        let fixed = |key: &str| FIXED.contains(&key);
        for (key, value) in parts.event_fields {
            if !fixed(key) {
                map.serialize_entry(key, value)?;
            }
        }
        for (key, value) in parts.span_fields {
            if !fixed(key) && !parts.event_fields.contains_key(key) {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    })();
    written.map_err(|_| fmt::Error)?;
    String::from_utf8(out).map_err(|_| fmt::Error)
}

/// The fields of a `JsonFields` rendering; none when it is empty or not an object.
fn object(text: &str) -> Fields {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => map.into_iter().collect(),
        _ => Fields::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::fmt::MakeWriter;

    use super::*;

    /// Everything written, shared with the test.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    /// The JSON objects logged while `work` runs.
    fn logged(work: impl FnOnce()) -> Vec<serde_json::Map<String, Value>> {
        let captured = Captured::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(captured.clone())
            .with_max_level(tracing::Level::TRACE)
            .with_ansi(false)
            .fmt_fields(JsonFields::new())
            .event_format(FlatJson)
            .finish();
        tracing::subscriber::with_default(subscriber, work);
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        text.lines()
            .map(|line| match serde_json::from_str(line) {
                Ok(Value::Object(map)) => map,
                other => panic!("not a JSON object: {line:?} ({other:?})"),
            })
            .collect()
    }

    #[test]
    fn one_flat_object_per_event_with_the_span_fields_beside_the_event_fields() {
        let lines = logged(|| {
            let outer = tracing::info_span!("renew", token_id = "outer-id", peer = "10.0.0.1");
            let _outer = outer.enter();
            let inner = tracing::info_span!("lookup", token_id = tracing::field::Empty);
            let _inner = inner.enter();
            // Recorded after the span started, as the RPC handlers do.
            inner.record("token_id", "inner-id");
            tracing::warn!(renewed = true, "token renewed:\n\"quoted\"");
        });
        assert_eq!(lines.len(), 1, "{lines:?}");
        let line = &lines[0];
        assert_eq!(line["level"], "WARN");
        assert_eq!(line["message"], "token renewed:\n\"quoted\"");
        assert_eq!(line["span"], "lookup");
        assert_eq!(line["renewed"], true);
        assert_eq!(line["token_id"], "inner-id", "the inner span wins");
        assert_eq!(
            line["peer"], "10.0.0.1",
            "outer spans' fields are there too"
        );
        assert!(
            line["target"]
                .as_str()
                .unwrap()
                .starts_with("auth_telemetry")
        );
        assert!(line["timestamp"].as_str().unwrap().ends_with('Z'));
        let keys: Vec<&String> = line.keys().collect();
        assert!(
            keys.iter()
                .all(|k| !k.contains('.') && *k != "fields" && *k != "spans"),
            "flat: {keys:?}"
        );
    }

    #[test]
    fn a_field_never_replaces_a_fixed_key_and_an_event_field_beats_a_span_field() {
        let lines = logged(|| {
            let span = tracing::info_span!("call", level = "span-level", user = "span-user");
            let _span = span.enter();
            tracing::info!(target: "custom", user = "event-user", "hello");
            tracing::info!(count = 3_u64);
        });
        assert_eq!(lines[0]["level"], "INFO");
        assert_eq!(lines[0]["target"], "custom");
        assert_eq!(lines[0]["user"], "event-user");
        assert!(!lines[1].contains_key("message"), "{:?}", lines[1]);
        assert_eq!(lines[1]["count"], 3);
        assert_eq!(lines[1]["user"], "span-user");
    }

    #[test]
    fn an_event_outside_any_span_has_no_span_key() {
        let lines = logged(|| tracing::error!(error = %"boom", "failed"));
        assert_eq!(lines[0]["error"], "boom");
        assert!(!lines[0].contains_key("span"));
    }

    #[test]
    fn a_said_line_is_an_object_with_the_fixed_keys() {
        let text = line(Level::INFO, "auth_service", "pruned 3 tokens");
        let Value::Object(map) = serde_json::from_str(&text).unwrap() else {
            panic!("{text}")
        };
        assert_eq!(map["message"], "pruned 3 tokens");
        assert_eq!(map["level"], "INFO");
        assert_eq!(map["target"], "auth_service");
        assert_eq!(map.len(), 4, "{map:?}");
    }
}
