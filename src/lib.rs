//! Generated code for the `auth.v1` gRPC API, shared by `auth-service` and `auth-agent`.
//!
//! `build.rs` compiles `proto/` with the pure-Rust `protox` compiler, so no system
//! `protoc` is needed; the encoded descriptor set is exported for server reflection.
#![deny(clippy::unwrap_used, clippy::expect_used)]

/// The `auth.v1` package: messages, the client and the server trait.
pub mod v1 {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("auth.v1");
}

/// Encoded `FileDescriptorSet` of every file in `proto/` and its imports, for reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("auth_descriptor");

/// The fully-qualified gRPC service name, as health checks and reflection report it.
pub const SERVICE_NAME: &str = "auth.v1.AuthService";
