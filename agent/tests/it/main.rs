//! Integration tests of auth-agent, in one binary (each test binary links tonic, and the
//! end-to-end tests start their own PostgreSQL cluster):
//!
//! - against a scripted fake `AuthService` ([`fake`]): the daemon's call order and failure
//!   handling (real time, TCP), its schedule (paused time, in-memory transport, injected
//!   wall clock), the transport's keepalive, the health endpoint, and the binary's commands;
//! - [`e2e`]: against the real auth-service (started through `server::run` by
//!   `auth_test_support`) on a real, throwaway PostgreSQL, in-process and as the binary.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

mod cli;
mod e2e;
mod fake;
mod health;
mod ordering;
mod secrets;
mod support;
mod timing;
mod transport;
