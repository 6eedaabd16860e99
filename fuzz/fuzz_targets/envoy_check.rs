//! Fuzzes the ext_authz request reader (`CheckInput::parse`) with arbitrary bytes: it
//! must never panic, its values must be slices of the received buffer, and wherever
//! envoy-types' own decoder reads the bytes as a CheckRequest, the reader must read them
//! the same way (the `authorization` values and the `required_scope` extension, by
//! protobuf's merge rules), and the same again from envoy-types' re-encoding of them.
#![no_main]

use auth_service::authz::envoy::CheckInput;
use bytes::Bytes;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use libfuzzer_sys::fuzz_target;
use prost::Message;

/// What the reader must find in a CheckRequest decoded by envoy-types, the values
/// sorted (a map has no order; the adapter refuses more than one whatever the order).
fn expected(r: CheckRequest) -> CheckInput {
    let attributes = r.attributes.unwrap_or_default();
    let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
    let named = |key: &str| key.eq_ignore_ascii_case("authorization");
    let mut authorization: Vec<Bytes> = http
        .headers
        .into_iter()
        .filter(|(k, _)| named(k))
        .map(|(_, v)| Bytes::from(v))
        .collect();
    let header_map = http.header_map.unwrap_or_default().headers;
    authorization.extend(header_map.into_iter().filter(|h| named(&h.key)).map(|h| {
        if h.raw_value.is_empty() {
            Bytes::from(h.value)
        } else {
            Bytes::from(h.raw_value)
        }
    }));
    authorization.sort();
    let extension = attributes
        .context_extensions
        .get("required_scope")
        .map(|v| Bytes::from(v.clone()));
    CheckInput {
        authorization,
        extension,
        // The trace headers are not what this target checks.
        trace: Vec::new(),
    }
}

fn sorted(mut input: CheckInput) -> CheckInput {
    input.authorization.sort();
    input.trace.clear();
    input
}

fuzz_target!(|data: &[u8]| {
    let message = Bytes::copy_from_slice(data);
    let here = CheckInput::parse(&message);
    if let Ok(input) = &here {
        // What the adapter asks of it.
        let _ = input.credential();
        let _ = input.required_scope();
        let whole = message.as_ptr_range();
        for value in input.authorization.iter().chain(&input.extension) {
            let part = value.as_ptr_range();
            assert!(
                value.is_empty() || (whole.start <= part.start && part.end <= whole.end),
                "a value copied out of the message"
            );
        }
    }
    let Ok(envoy) = CheckRequest::decode(data) else {
        return;
    };
    let here = match here {
        Ok(input) => sorted(input),
        Err(e) => panic!("envoy-types decodes what the reader refuses: {e}"),
    };
    let again = CheckInput::parse(&Bytes::from(envoy.encode_to_vec()))
        .map(sorted)
        .map_err(|e| e.to_string());
    assert_eq!(here, expected(envoy));
    assert_eq!(again.as_ref(), Ok(&here), "the same message, encoded again");
});
