//! The reader against envoy-types: its messages encoded, read here, compared; and
//! arbitrary bytes, never a panic.
#![allow(clippy::unwrap_used, clippy::expect_used)]
use auth_api::ErrorReason;
use envoy_types::pb::envoy::{
    config::core::v3::{HeaderMap, HeaderValue},
    service::auth::v3::{
        AttributeContext, CheckRequest,
        attribute_context::{HttpRequest, Request},
    },
};
use proptest::prelude::*;
use prost::Message;

use super::*;

fn full(
    headers: &[(String, String)],
    raw: &[(String, Vec<u8>)],
    ext: &[(String, String)],
) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "req-1".into(),
                    method: "POST".into(),
                    path: "/billing?x=1".into(),
                    body: "ignored".into(),
                    size: 7,
                    headers: headers.iter().cloned().collect(),
                    header_map: (!raw.is_empty()).then(|| HeaderMap {
                        headers: raw
                            .iter()
                            .map(|(k, v)| HeaderValue {
                                key: k.clone(),
                                value: String::new(),
                                raw_value: v.clone(),
                            })
                            .collect(),
                    }),
                    ..Default::default()
                }),
                time: Some(Default::default()),
            }),
            context_extensions: ext.iter().cloned().collect(),
            ..Default::default()
        }),
    }
}

fn read(r: &CheckRequest) -> CheckInput {
    CheckInput::parse(&Bytes::from(r.encode_to_vec())).unwrap()
}

fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn reads_what_envoy_types_encodes() {
    let r = full(
        &s(&[
            ("accept", "*/*"),
            ("authorization", "Bearer pat_x"),
            ("x-a", "b"),
        ]),
        &[],
        &s(&[("required_scope", "billing:read repo"), ("other", "x")]),
    );
    let input = read(&r);
    assert_eq!(input.authorization, [Bytes::from_static(b"Bearer pat_x")]);
    assert_eq!(input.required_scope().as_deref(), Some("billing:read repo"));
    assert_eq!(read(&CheckRequest::default()), CheckInput::default());
}

/// Whether `part` lies inside `whole`'s memory: a slice of it, not a copy.
fn within(whole: &Bytes, part: &Bytes) -> bool {
    let range = whole.as_ptr_range();
    !part.is_empty() && range.start <= part.as_ptr() && part.as_ptr_range().end <= range.end
}

#[test]
fn the_values_are_slices_of_the_received_buffer() {
    let r = full(
        &s(&[("authorization", "Bearer pat_x")]),
        &[],
        &s(&[("required_scope", "repo")]),
    );
    let message = Bytes::from(r.encode_to_vec());
    let input = CheckInput::parse(&message).unwrap();
    assert!(within(&message, &input.authorization[0]));
    assert!(within(&message, input.extension.as_ref().unwrap()));
    let raw = full(&[], &[("authorization".into(), b"Bearer y".to_vec())], &[]);
    let message = Bytes::from(raw.encode_to_vec());
    let input = CheckInput::parse(&message).unwrap();
    assert!(within(&message, &input.authorization[0]));
}

#[test]
fn the_raw_header_map_in_any_case_and_twice() {
    let raw = |pairs: &[(&str, &[u8])]| -> Vec<(String, Vec<u8>)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_vec()))
            .collect()
    };
    let input = read(&full(&[], &raw(&[("Authorization", b"Bearer \xff")]), &[]));
    assert_eq!(input.authorization, [Bytes::from_static(b"Bearer \xff")]);
    let twice = read(&full(
        &[],
        &raw(&[
            ("authorization", b"Bearer a"),
            ("authorization", b"Bearer b"),
        ]),
        &[],
    ));
    assert_eq!(twice.authorization.len(), 2);
    let upper = read(&full(&s(&[("AUTHORIZATION", "Bearer c")]), &[], &[]));
    assert_eq!(upper.authorization, [Bytes::from_static(b"Bearer c")]);
    // A value in `value` (not `raw_value`) is read too.
    let mut r = full(&[], &raw(&[("authorization", b"")]), &[]);
    let http = r
        .attributes
        .as_mut()
        .unwrap()
        .request
        .as_mut()
        .unwrap()
        .http
        .as_mut()
        .unwrap();
    http.header_map.as_mut().unwrap().headers[0].value = "Bearer d".into();
    assert_eq!(read(&r).authorization, [Bytes::from_static(b"Bearer d")]);
}

#[test]
fn none_one_or_more_authorization_values() {
    let input = |values: &[&'static str]| CheckInput {
        authorization: values
            .iter()
            .map(|v| Bytes::from_static(v.as_bytes()))
            .collect(),
        extension: None,
    };
    assert_eq!(input(&[]).credential().unwrap(), None);
    assert_eq!(
        input(&["Bearer a"]).credential().unwrap(),
        Some(&b"Bearer a"[..])
    );
    let two = input(&["Bearer a", "Bearer a"]).credential().unwrap_err();
    assert_eq!(two.reason(), Some(ErrorReason::TokenMalformed));
}

/// Envoy fills `headers`, or `header_map` when `encode_raw_headers` is on, never
/// both: an `authorization` in each is two sources, refused whichever holds the
/// good token (it was allowed one way round and denied the other).
#[test]
fn an_authorization_in_headers_and_in_header_map_is_two_either_way() {
    let (good, unknown) = ("Bearer pat_good", "Bearer pat_unknown");
    for (in_headers, in_header_map) in [(good, unknown), (unknown, good)] {
        let input = read(&full(
            &s(&[("authorization", in_headers)]),
            &[("authorization".into(), in_header_map.as_bytes().to_vec())],
            &[],
        ));
        let mut values = input.authorization.clone();
        values.sort();
        assert_eq!(values, [Bytes::from(good), Bytes::from(unknown)]);
        let refused = input.credential().unwrap_err();
        assert_eq!(refused.reason(), Some(ErrorReason::TokenMalformed));
    }
}

#[test]
fn truncated_or_garbled_input_is_an_error_not_a_panic() {
    let bytes = full(&s(&[("authorization", "Bearer x")]), &[], &[]).encode_to_vec();
    for cut in 0..bytes.len() {
        let _ = CheckInput::parse(&Bytes::copy_from_slice(&bytes[..cut]));
    }
    assert!(CheckInput::parse(&Bytes::from_static(&[0x0a, 0x05, 0x01])).is_err());
    assert!(
        CheckInput::parse(&Bytes::from_static(&[0x0b])).is_err(),
        "an unterminated group"
    );
}

proptest! {
    /// Whatever headers and extensions envoy-types encodes, the walk finds exactly
    /// the `authorization` header and the `required_scope` extension.
    #[test]
    fn agrees_with_envoy_types(
        headers in proptest::collection::hash_map("[a-zA-Z-]{1,12}", ".{0,40}", 0..12),
        auth in proptest::option::of(".{0,60}"),
        scope in proptest::option::of(".{0,30}"),
        extra in proptest::collection::hash_map("[a-z_]{1,12}", ".{0,20}", 0..4),
    ) {
        let mut headers: Vec<(String, String)> = headers
            .into_iter()
            .filter(|(k, _)| !k.eq_ignore_ascii_case("authorization"))
            .collect();
        if let Some(a) = &auth {
            headers.push(("authorization".into(), a.clone()));
        }
        let mut ext: Vec<(String, String)> =
            extra.into_iter().filter(|(k, _)| k != "required_scope").collect();
        if let Some(sc) = &scope {
            ext.push(("required_scope".into(), sc.clone()));
        }
        let input = read(&full(&headers, &[], &ext));
        let want: Vec<Bytes> = auth.iter().map(|a| Bytes::from(a.clone())).collect();
        prop_assert_eq!(&input.authorization, &want);
        prop_assert_eq!(input.required_scope(), scope);
    }

    /// Arbitrary bytes never panic.
    #[test]
    fn any_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let _ = CheckInput::parse(&Bytes::from(bytes));
    }
}
