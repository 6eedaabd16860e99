//! The parts of an ext_authz `CheckRequest` that the decision reads: the checked
//! request's `authorization` header and the route's `required_scope` extension, decoded
//! by prost into partial messages (below, in `wire`) whose `bytes` fields are slices of
//! the received buffer. Every other field is skipped unread.
//!
//! Why not envoy-types' `CheckRequest`: it decodes every header of the checked request
//! into a `HashMap<String, String>`, and that decoding was the largest single cost of a
//! Check (an eighth of the server's CPU under load, more than the whole decision). The
//! partial messages keep Envoy's field numbers (`external_auth.proto`,
//! `attribute_context.proto`, `base.proto`) and declare only the path to the two values,
//! maps as repeated entry messages (wire-identical), strings as `bytes`: no map, no copy,
//! no UTF-8 check.
//!
//! # Duplicates: protobuf's rules
//!
//! What is read is what the message holds by the encoding's own rules, as envoy-types
//! (or Envoy, or any protobuf library) decodes it: in a map (`headers`,
//! `context_extensions`) the last entry of a key wins; an embedded message that appears
//! twice (`attributes`, `request`, `http`, `header_map`) is one message, merged, so the
//! fields of both count; a repeated field (`header_map.headers`) keeps every element.
//! Map keys are compared exactly: `authorization` and `Authorization` are two keys, so two
//! values (Envoy lowercases every key).
//!
//! Why not refuse duplicates (fail closed): Envoy never sends one, and whoever can craft
//! a CheckRequest is a caller on `--validate-allow`, the proxy, which can put any one
//! `authorization` value it likes in it anyway: refusing duplicates stops no one. It
//! would cost a decision that depends on the encoding rather than on the message, so
//! that a re-encoding (a gRPC-aware hop between Envoy and this service, a replay from a
//! log) could change the answer, and a reader that no reference decoder can be tested
//! against. Two *values* in the decoded message are another matter: two `header_map`
//! headers, two keys that differ in case, or one in `headers` and one in `header_map`
//! stay `TOKEN_MALFORMED` ([`CheckInput::credential`]).
//!
//! More lenient than envoy-types, never less: strings are not checked for UTF-8, and
//! the fields not declared are skipped, not decoded, so some messages envoy-types
//! refuses are read here. Whatever envoy-types decodes is read here, as it reads it: the
//! tests (envoy-types' messages, duplicates and merged messages, arbitrary bytes) and
//! the `envoy_check` fuzz target compare the two.
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
    /// case: those in `attributes.request.http.headers` (one per distinct key), then
    /// those in `header_map`.
    pub authorization: Vec<Bytes>,
    /// `attributes.context_extensions["required_scope"]`.
    pub extension: Option<Bytes>,
    /// The checked request's W3C trace context (`traceparent`, `tracestate`), where
    /// Envoy puts the client's trace: the Check joins it.
    pub trace: Vec<(Bytes, Bytes)>,
}

/// The context extension read.
const EXTENSION: &[u8] = b"required_scope";

/// The path from a `CheckRequest` to the fields the decision reads, with Envoy's field
/// numbers, and nothing else: prost skips every other field without decoding it.
mod wire {
    use bytes::Bytes;

    /// `envoy.service.auth.v3.CheckRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct CheckRequest {
        #[prost(message, optional, tag = "1")]
        pub(crate) attributes: Option<AttributeContext>,
    }

    /// `envoy.service.auth.v3.AttributeContext`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct AttributeContext {
        #[prost(message, optional, tag = "4")]
        pub(crate) request: Option<Request>,
        /// `map<string, string> context_extensions`.
        #[prost(message, repeated, tag = "10")]
        pub(crate) context_extensions: Vec<Entry>,
    }

    /// `envoy.service.auth.v3.AttributeContext.Request`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct Request {
        #[prost(message, optional, tag = "2")]
        pub(crate) http: Option<HttpRequest>,
    }

    /// `envoy.service.auth.v3.AttributeContext.HttpRequest`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct HttpRequest {
        /// `map<string, string> headers`.
        #[prost(message, repeated, tag = "3")]
        pub(crate) headers: Vec<Entry>,
        /// Filled instead of `headers` when Envoy's `encode_raw_headers` is on.
        #[prost(message, optional, tag = "13")]
        pub(crate) header_map: Option<HeaderMap>,
    }

    /// `envoy.config.core.v3.HeaderMap`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct HeaderMap {
        #[prost(message, repeated, tag = "1")]
        pub(crate) headers: Vec<HeaderValue>,
    }

    /// `envoy.config.core.v3.HeaderValue`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub(crate) struct HeaderValue {
        #[prost(bytes = "bytes", tag = "1")]
        pub(crate) key: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        pub(crate) value: Bytes,
        #[prost(bytes = "bytes", tag = "3")]
        pub(crate) raw_value: Bytes,
    }

    impl HeaderValue {
        /// The value Envoy set: `raw_value` when `encode_raw_headers` is on, else `value`.
        pub(crate) fn into_value(self) -> Bytes {
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
        pub(crate) key: Bytes,
        #[prost(bytes = "bytes", tag = "2")]
        pub(crate) value: Bytes,
    }
}

/// The values of a protobuf map's entries whose key `wanted` accepts, as the decoded
/// map holds them: one per distinct key, its last entry's (in the order of the keys).
/// Without a map: the entries wanted are few, most often one.
fn map_values(entries: Vec<wire::Entry>, wanted: impl Fn(&[u8]) -> bool) -> Vec<Bytes> {
    let mut found: Vec<wire::Entry> = entries.into_iter().filter(|e| wanted(&e.key)).collect();
    // The latest first; a stable sort keeps that order within a key, and `dedup_by`
    // keeps the first of each run: the key's last entry.
    found.reverse();
    found.sort_by(|a, b| a.key.cmp(&b.key));
    found.dedup_by(|later, kept| later.key == kept.key);
    found.into_iter().map(|e| e.value).collect()
}

impl CheckInput {
    /// Reads `message` (an encoded `CheckRequest`). The values are slices of it.
    pub fn parse(message: &Bytes) -> Result<CheckInput, prost::DecodeError> {
        // Decoding from `Bytes` makes each `bytes` field a slice of it, not a copy.
        let request = wire::CheckRequest::decode(message.clone())?;
        let Some(attributes) = request.attributes else {
            return Ok(CheckInput::default());
        };
        let extension = map_values(attributes.context_extensions, |key| key == EXTENSION).pop();
        let http = attributes.request.and_then(|r| r.http).unwrap_or_default();
        let named = |key: &[u8]| key.eq_ignore_ascii_case(b"authorization");
        let traced = |key: &[u8]| {
            key.eq_ignore_ascii_case(b"traceparent") || key.eq_ignore_ascii_case(b"tracestate")
        };
        // The entries that matter, each kind apart, as the decoded map would hold them.
        let (mut auth_entries, mut trace_entries) = (Vec::new(), Vec::new());
        for entry in http.headers {
            if named(&entry.key) {
                auth_entries.push(entry);
            } else if traced(&entry.key) {
                trace_entries.push(entry);
            }
        }
        let trace_keys: Vec<Bytes> = {
            let mut keys: Vec<Bytes> = trace_entries.iter().map(|e| e.key.clone()).collect();
            keys.sort();
            keys.dedup();
            keys
        };
        let mut trace: Vec<(Bytes, Bytes)> = trace_keys
            .into_iter()
            .zip(map_values(trace_entries, |_| true))
            .collect();
        // From both forms: Envoy fills one, so a value in each is two headers.
        let mut authorization = map_values(auth_entries, |_| true);
        let header_map = http.header_map.unwrap_or_default().headers;
        for h in header_map {
            if named(&h.key) {
                authorization.push(h.into_value());
            } else if traced(&h.key) {
                let key = h.key.clone();
                trace.push((key, h.into_value()));
            }
        }
        Ok(CheckInput {
            authorization,
            extension,
            trace,
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
pub(crate) struct CheckCodec;

/// The request side of [`CheckCodec`].
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct CheckDecoder;

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
mod tests;
