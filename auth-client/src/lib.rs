//! auth-client: the caller's side of `auth.v1`, so that a service in the mesh that is
//! not behind a proxy protects itself with one layer, answers hot tokens without a
//! network hop, and still hears of a revocation within milliseconds.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use auth_client::{AuthClient, AuthLayer, ClientOptions};
//! let client = AuthClient::connect_lazy(&"http://127.0.0.1:50051".parse()?, ClientOptions::default())?;
//! let layer = AuthLayer::new(client).require_scope("billing:write");
//! # let _ = layer;
//! # Ok(()) }
//! ```
//!
//! Modules, top-down (each uses only those below it):
//! - [`layer`]: [`AuthLayer`], the tower layer for tonic and axum services, and what a
//!   refused request gets back;
//! - [`client`]: [`AuthClient`], one method per call, under a deadline;
//! - [`cache`]: the local cache of `validate` answers, and the task that keeps it
//!   correct from the service's `WatchTokenInvalidations` stream;
//! - [`retry`]: which failures are retried, and when;
//! - [`transport`]: the server URL, the balanced channel, and TLS (in one module,
//!   `transport::tls`);
//! - [`outcome`]: what calls answer ([`Identity`], [`Rejection`], [`Unavailable`]) and
//!   the one mapping from a gRPC status.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod layer;

pub mod client;

pub mod cache;

pub mod retry;

pub mod transport;

pub mod outcome;

pub use cache::{CacheSettings, CacheState};
pub use client::{AuthClient, ClientOptions};
pub use layer::AuthLayer;
pub use outcome::{Identity, IdentityData, Outcome, Rejection, RenewOutcome, Unavailable};
pub use retry::RetryPolicy;
pub use transport::{ConfigError, ServerUrl, TlsFiles, Transport};
