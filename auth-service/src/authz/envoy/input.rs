//! The parts of an ext_authz `CheckRequest` that the decision reads: the checked
//! request's `authorization` header and the route's `required_scope` extension, decoded
//! by prost into partial messages (below, in [`wire`]) whose `bytes` fields are slices of
//! the received buffer. Every other field is skipped unread.
//!
//! Why not envoy-types' `CheckRequest`: it decodes every header of the checked request
//! into a `HashMap<String, String>`, and that decoding was the largest single cost of a
//! Check (an eighth of the server's CPU under load, more than the whole decision). The
//! partial messages keep Envoy's field numbers (`external_auth.proto`,
//! `attribute_context.proto`, `base.proto`) and declare only the path to the two values,
//! maps as repeated entry messages (wire-identical), strings as `bytes`: no map, no copy,
//! no UTF-8 check. Tests encode envoy-types' messages, and arbitrary bytes, and read them
//! here.
use bytes::{Buf, Bytes};
use prost::Message;
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder},
};

use crate::error::Error;

/// What a Check reads from its request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckInput {
    /// Every value of the checked request's `authorization` header, the key in any
    /// case: those in `attributes.request.http.headers`, then those in `header_map`.
    pub authorization: Vec<Bytes>,
    /// `attributes.context_extensions[key]` for the one key asked for (the last, as a
    /// protobuf map keeps it).
    pub extension: Option<Bytes>,
}

/// The context extension read (see `envoy::REQUIRED_SCOPE`).
const EXTENSION: &[u8] = b"required_scope";

/// The path from a `CheckRequest` to the fields the decision reads, with Envoy's field
/// numbers, and nothing else: prost skips every other field without decoding it.
mod wire {
    use bytes::Bytes;

    /// `envoy.service.auth.v3.CheckRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct CheckRequest {
        #[prost(message, optional, tag = "1")]
        pub attributes: Option<AttributeContext>,
    }

    /// `envoy.service.auth.v3.AttributeContext`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct AttributeContext {
        #[prost(message, optional, tag = "4")]
        pub request: Option<Request>,
        /// `map<string, string> context_extensions`.
        #[prost(message, repeated, tag = "10")]
        pub context_extensions: Vec<Entry>,
    }

    /// `envoy.service.auth.v3.AttributeContext.Request`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Request {
        #[prost(message, optional, tag = "2")]
        pub http: Option<HttpRequest>,
    }

    /// `envoy.service.auth.v3.AttributeContext.HttpRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HttpRequest {
        /// `map<string, string> headers`.
        #[prost(message, repeated, tag = "3")]
        pub headers: Vec<Entry>,
        /// Filled instead of `headers` when Envoy's `encode_raw_headers` is on.
        #[prost(message, optional, tag = "13")]
        pub header_map: Option<HeaderMap>,
    }

    /// `envoy.config.core.v3.HeaderMap`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HeaderMap {
        #[prost(message, repeated, tag = "1")]
        pub headers: Vec<HeaderValue>,
    }

    /// `envoy.config.core.v3.HeaderValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct HeaderValue {
        #[prost(bytes = "bytes", tag = "1")]
        pub key: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        pub value: Bytes,
        #[prost(bytes = "bytes", tag = "3")]
        pub raw_value: Bytes,
    }

    impl HeaderValue {
        /// The value Envoy set: `raw_value` when `encode_raw_headers` is on, else `value`.
        pub fn into_value(self) -> Bytes {
            if self.raw_value.is_empty() {
                self.value
            } else {
                self.raw_value
            }
        }
    }

    /// The entry message of a `map<string, string>`, as the protobuf encoding defines
    /// it.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct Entry {
        #[prost(bytes = "bytes", tag = "1")]
        pub key: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        pub value: Bytes,
    }
}

impl CheckInput {
    /// Reads `message` (an encoded `CheckRequest`). The values are slices of it.
    pub fn parse(message: &Bytes) -> Result<CheckInput, prost::DecodeError> {
        // Decoding from `Bytes` makes each `bytes` field a slice of it, not a copy.
        let request = wire::CheckRequest::decode(message.clone())?;
        let Some(attributes) = request.attributes else {
            return Ok(CheckInput::default());
        };
        let extension = attributes
            .context_extensions
            .into_iter()
            // The last entry of the key, as a protobuf map keeps it.
            .rfind(|e| e.key == EXTENSION)
            .map(|e| e.value);
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let named = |key: &[u8]| key.eq_ignore_ascii_case(b"authorization");
        // From both forms: Envoy fills one, so a value in each is two headers.
        let mut authorization: Vec<Bytes> = http
            .headers
            .into_iter()
            .filter(|e| named(&e.key))
            .map(|e| e.value)
            .collect();
        let header_map = http.header_map.unwrap_or_default().headers;
        authorization.extend(
            header_map
                .into_iter()
                .filter(|h| named(&h.key))
                .map(wire::HeaderValue::into_value),
        );
        Ok(CheckInput {
            authorization,
            extension,
        })
    }

    /// The one `authorization` value presented (`None`: none). More than one (two
    /// headers, or one in `headers` and one in `header_map`) is `TOKEN_MALFORMED`:
    /// which one the upstream would read is not ours to guess.
    pub fn credential(&self) -> Result<Option<&[u8]>, Error> {
        match &self.authorization[..] {
            [] => Ok(None),
            [value] => Ok(Some(value)),
            _ => Err(Error::TokenMalformed(
                "the request has more than one `authorization` header: send exactly one".into(),
            )),
        }
    }

    /// The required-scope extension as text. A value that is not UTF-8 names no scope a
    /// token could hold: it stays unsatisfiable (U+FFFD), never empty.
    pub fn required_scope(&self) -> Option<String> {
        self.extension
            .as_ref()
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }
}

/// tonic's codec for Check: requests read into [`CheckInput`], responses encoded by
/// prost as usual.
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckCodec;

/// The request side of [`CheckCodec`].
#[derive(Debug, Default, Clone, Copy)]
pub struct CheckDecoder;

impl Decoder for CheckDecoder {
    type Item = CheckInput;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<CheckInput>, Status> {
        // The whole message, as one buffer shared with tonic's (no copy).
        let message = buf.copy_to_bytes(buf.remaining());
        CheckInput::parse(&message)
            .map(Some)
            .map_err(|e| Status::internal(format!("cannot decode the CheckRequest: {e}")))
    }
}

type ResponseCodec = tonic_prost::ProstCodec<
    envoy_types::ext_authz::v3::pb::CheckResponse,
    envoy_types::ext_authz::v3::pb::CheckResponse,
>;

impl Codec for CheckCodec {
    type Encode = envoy_types::ext_authz::v3::pb::CheckResponse;
    type Decode = CheckInput;
    type Encoder = tonic_prost::ProstEncoder<Self::Encode>;
    type Decoder = CheckDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        ResponseCodec::default().encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        CheckDecoder
    }
}

#[cfg(test)]
mod tests {
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
}
