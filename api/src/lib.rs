//! `auth-api`: the wire contract of `auth.v1`, shared by `auth-service`, `auth-client`
//! and `auth-agent` so that none restates it.
//!
//! Modules, top-down:
//! - [`v1`]: the generated messages, client and server (from `proto/auth/v1/auth.proto`,
//!   compiled by `build.rs` with the pure-Rust `protox`, so no system `protoc`);
//! - [`token`]: the token format (prefix, length, alphabet, checksum), its generation and
//!   the shape check both sides run before any network or database work;
//! - [`time`]: the one conversion between `google.protobuf.Timestamp` and `chrono`;
//! - [`challenge`]: the HTTP face of a refusal, the RFC 6750 `WWW-Authenticate`
//!   challenge and the JSON body with the reason (forward-auth and auth-client's layer).
#![forbid(unsafe_code)]

/// The `auth.v1` package: messages, the client and the server trait.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("auth.v1");
}

pub mod challenge;
pub mod time;
pub mod token;

pub use v1::ErrorReason;

/// Encoded `FileDescriptorSet` of every file in `proto/` and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("auth_descriptor");

/// The fully-qualified gRPC service name, as health checks and reflection report it.
pub const SERVICE_NAME: &str = "auth.v1.AuthService";

/// The `google.rpc.ErrorInfo.domain` of every error this API defines; its `reason` is
/// an [`ErrorReason`] name (`ErrorReason::as_str_name`).
pub const ERROR_DOMAIN: &str = "auth.v1";
