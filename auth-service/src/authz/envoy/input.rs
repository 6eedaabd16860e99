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
mod tests;
