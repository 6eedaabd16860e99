//! auth-service: personal access tokens over PostgreSQL, served over gRPC.
//!
//! Modules, top-down (each uses only those below it):
//! - [`cmd`]: the subcommands (`serve`, `token`, `migrate`, `healthcheck`);
//! - [`server`]: `run(listeners, db, settings, shutdown)`, the gRPC server and its tasks;
//! - [`config`]: clap flags, each also an environment variable, validated into settings;
//! - [`http`]: the HTTP side port (`/metrics`, `/healthz`, `/readyz`, forward-auth);
//! - [`authz`]: the proxy adapters (Envoy ext_authz, HTTP forward-auth), over `service`;
//! - [`service`]: one module per `auth.v1` RPC, thin over the cache and the database;
//! - [`admission`]: what is refused at once (failed-credential throttle, shed DB work);
//! - [`health`], [`last_used`], [`notify`]: the background tasks (database probe,
//!   `last_used_at`, expiry webhooks), watched by [`tasks`];
//! - [`cache`]: the in-process token cache and the listener that invalidates it;
//! - [`metrics`]: the Prometheus metrics and the gRPC layer that counts every call;
//! - [`transport`]: accepting connections: limits, handshake deadline, TLS, identity;
//! - [`db`]: the pool, migrations and every SQL statement;
//! - [`renewal`]: the renewal and liveness rules, pure functions;
//! - [`token`]: issuing tokens and hashing presented ones (the format is `auth_api`'s);
//! - [`embedded`]: the private PostgreSQL cluster of the default mode;
//! - [`error`]: the one error type and its mapping to gRPC status codes;
//! - [`telemetry`]: logging and traces setup;
//! - [`trace`]: the spans of a call (server, cache, database, webhook), W3C context in.
#![forbid(unsafe_code)]

pub mod authz;
pub mod cmd;
pub mod config;
pub(crate) mod http;
pub mod server;
pub mod service;
pub(crate) mod transport;

pub(crate) mod admission;
pub(crate) mod health;
pub(crate) mod last_used;
pub mod notify;
pub(crate) mod tasks;

pub mod cache;
pub mod metrics;

pub mod renewal;
pub mod token;

pub mod db;
pub mod embedded;

pub mod error;
pub mod telemetry;
pub(crate) mod trace;

pub use error::Error;
