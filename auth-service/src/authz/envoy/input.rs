//! The parts of an ext_authz `CheckRequest` that the decision reads: the checked
//! request's `authorization` header and the route's `required_scope` extension, found
//! by walking the protobuf wire format of the received message and kept as slices of
//! it. Every other field is skipped unread.
//!
//! Why not envoy-types' `CheckRequest`: it decodes every header of the checked request
//! into a `HashMap<String, String>`, and that decoding was the largest single cost of a
//! Check (an eighth of the server's CPU under load, more than the whole decision).
//! Field numbers are Envoy's (`external_auth.proto`, `attribute_context.proto`,
//! `base.proto`); tests encode envoy-types' messages, and arbitrary bytes, and read
//! them here.
use bytes::{Buf, Bytes};
use prost::encoding::{WireType, decode_key, decode_varint};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder},
};

/// What a Check reads from its request.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct CheckInput {
    /// Every value of the checked request's `authorization` header (from
    /// `attributes.request.http.headers`, else from `header_map`; the key in any case).
    pub authorization: Vec<Bytes>,
    /// `attributes.context_extensions[key]` for the one key asked for (the last, as a
    /// protobuf map keeps it).
    pub extension: Option<Bytes>,
}

/// The context extension read (see `envoy::REQUIRED_SCOPE`).
const EXTENSION: &[u8] = b"required_scope";

// Field numbers.
const CHECK_ATTRIBUTES: u32 = 1;
const ATTRIBUTES_REQUEST: u32 = 4;
const ATTRIBUTES_CONTEXT_EXTENSIONS: u32 = 10;
const REQUEST_HTTP: u32 = 2;
const HTTP_HEADERS: u32 = 3;
const HTTP_HEADER_MAP: u32 = 13;
const HEADER_MAP_HEADERS: u32 = 1;
const ENTRY_KEY: u32 = 1;
const ENTRY_VALUE: u32 = 2;
const HEADER_VALUE_RAW: u32 = 3;

/// A message that is not a well-formed protobuf encoding.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Malformed(String);

impl From<prost::DecodeError> for Malformed {
    fn from(e: prost::DecodeError) -> Self {
        Malformed(e.to_string())
    }
}

fn malformed(what: &str) -> Malformed {
    Malformed(what.to_owned())
}

/// Calls `f(field number, bytes)` for each length-delimited field of `message`, and
/// skips the others. Groups (deprecated, never in these messages) are refused.
fn walk<'a>(
    mut message: &'a [u8],
    mut f: impl FnMut(u32, &'a [u8]) -> Result<(), Malformed>,
) -> Result<(), Malformed> {
    while message.has_remaining() {
        let (tag, wire) = decode_key(&mut message)?;
        match wire {
            WireType::Varint => {
                decode_varint(&mut message)?;
            }
            WireType::SixtyFourBit | WireType::ThirtyTwoBit => {
                let n = if wire == WireType::SixtyFourBit { 8 } else { 4 };
                if message.len() < n {
                    return Err(malformed("buffer underflow"));
                }
                message.advance(n);
            }
            WireType::LengthDelimited => {
                let len = usize::try_from(decode_varint(&mut message)?)
                    .map_err(|_| malformed("length overflow"))?;
                if message.len() < len {
                    return Err(malformed("buffer underflow"));
                }
                let (field, rest) = message.split_at(len);
                message = rest;
                f(tag, field)?;
            }
            WireType::StartGroup | WireType::EndGroup => {
                return Err(malformed("groups are not supported"));
            }
        }
    }
    Ok(())
}

/// The fields `key_field` and `value_field` of a small message (a map entry, a
/// HeaderValue); the last occurrence of each, as protobuf merges them.
fn pair<'a>(
    entry: &'a [u8],
    key_field: u32,
    value_fields: &[u32],
) -> Result<(&'a [u8], &'a [u8]), Malformed> {
    let (mut key, mut value, mut rank): (&'a [u8], &'a [u8], usize) = (&[], &[], 0);
    walk(entry, |tag, bytes| {
        if tag == key_field {
            key = bytes;
        } else if let Some(i) = value_fields.iter().position(|f| *f == tag) {
            // A later field in `value_fields` wins over an earlier one when non-empty
            // (`raw_value` over `value`).
            if i >= rank && (i == 0 || !bytes.is_empty()) {
                value = bytes;
                rank = i;
            }
        }
        Ok(())
    })?;
    Ok((key, value))
}

impl CheckInput {
    /// Reads `message` (an encoded `CheckRequest`).
    pub fn parse(message: &Bytes) -> Result<CheckInput, Malformed> {
        let named = |key: &[u8]| key.eq_ignore_ascii_case(b"authorization");
        let mut headers = Vec::new();
        let mut raw_headers = Vec::new();
        let mut extension = None;
        walk(message, |tag, attributes| {
            if tag != CHECK_ATTRIBUTES {
                return Ok(());
            }
            walk(attributes, |tag, field| match tag {
                ATTRIBUTES_CONTEXT_EXTENSIONS => {
                    let (key, value) = pair(field, ENTRY_KEY, &[ENTRY_VALUE])?;
                    if key == EXTENSION {
                        extension = Some(message.slice_ref(value));
                    }
                    Ok(())
                }
                ATTRIBUTES_REQUEST => walk(field, |tag, http| {
                    if tag != REQUEST_HTTP {
                        return Ok(());
                    }
                    walk(http, |tag, field| match tag {
                        HTTP_HEADERS => {
                            let (key, value) = pair(field, ENTRY_KEY, &[ENTRY_VALUE])?;
                            if named(key) {
                                headers.push(message.slice_ref(value));
                            }
                            Ok(())
                        }
                        HTTP_HEADER_MAP => walk(field, |tag, header| {
                            if tag == HEADER_MAP_HEADERS {
                                let (key, value) =
                                    pair(header, ENTRY_KEY, &[ENTRY_VALUE, HEADER_VALUE_RAW])?;
                                if named(key) {
                                    raw_headers.push(message.slice_ref(value));
                                }
                            }
                            Ok(())
                        }),
                        _ => Ok(()),
                    })
                }),
                _ => Ok(()),
            })
        })?;
        Ok(CheckInput {
            authorization: if headers.is_empty() {
                raw_headers
            } else {
                headers
            },
            extension,
        })
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
    fn truncated_or_garbled_input_is_an_error_not_a_panic() {
        let bytes = full(&s(&[("authorization", "Bearer x")]), &[], &[]).encode_to_vec();
        for cut in 0..bytes.len() {
            let _ = CheckInput::parse(&Bytes::copy_from_slice(&bytes[..cut]));
        }
        assert!(CheckInput::parse(&Bytes::from_static(&[0x0a, 0x05, 0x01])).is_err());
        assert!(
            CheckInput::parse(&Bytes::from_static(&[0x0b])).is_err(),
            "a group"
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
