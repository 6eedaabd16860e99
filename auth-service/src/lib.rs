//! auth-service: personal access tokens over PostgreSQL, served over gRPC.
//!
//! Layout: `config` (flags), `token` (format, checksum, hash), `db` (every SQL
//! statement and the pool), `embedded` (the private PostgreSQL cluster of the default
//! mode), `service` (one module per RPC), `server` (`run(listener, ...)`), `cli`
//! (`serve`, `token`, `migrate`, `healthcheck`), `health` and `last_used` (the
//! background tasks), `testing` (the harness the tests and the benchmark share).
#![deny(clippy::unwrap_used, clippy::expect_used)]

pub mod cli;
pub mod config;
pub mod db;
pub mod embedded;
pub mod error;
pub mod health;
pub mod last_used;
pub mod server;
pub mod service;
pub mod telemetry;
pub mod testing;
pub mod token;

pub use error::Error;
