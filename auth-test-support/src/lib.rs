//! Test support for the workspace, used only as a dev-dependency (and by the benchmark
//! binary), so that none of it, and none of its SQL, ships in a release binary.
//!
//! Modules, top-down:
//! - [`server`]: the real `auth-service` server started through `server::run` on an
//!   already bound port-0 listener, and stopped again;
//! - [`agent`]: the real agent daemon started through `auth_agent::run`, and stopped;
//! - [`grpc`]: client-side helpers (bearer metadata, the ErrorInfo reason, calls);
//! - [`http`]: a minimal HTTP/1.1 client for the side ports;
//! - [`webhook`]: a real HTTP receiver for the expiry webhooks, recording what arrives;
//! - [`otlp`]: a real OTLP trace receiver, recording the spans exported to it;
//! - [`nginx`]: a real nginx on loopback from a generated configuration, and an echo
//!   upstream;
//! - [`pgbouncer`]: a real PgBouncer in transaction pooling mode in front of a test
//!   cluster;
//! - [`fixtures`]: tokens made and altered directly in the database, and what tests
//!   read back (expiry, audit trail, last use, row locks), with their test-only SQL;
//! - [`certs`]: a CA and server and client certificates made in the test (rcgen);
//! - [`ha`]: a throwaway primary and its streaming standby (`pg_basebackup -R`), to stop
//!   the one and promote the other;
//! - [`proxy`]: a TCP front for a server's Unix socket that can go silent, as a
//!   vanished machine does;
//! - [`process`]: a child process's CPU time, and a limit on its open files;
//! - [`cluster`]: one throwaway PostgreSQL cluster per test process (`initdb
//!   --no-sync`, no fsync), and a fresh database per test cloned from a migrated template;
//! - [`docs`]: `docs/configuration.md` generated from both binaries' clap definitions
//!   (its test fails on drift), and a check of the Markdown pages' links.
//! - `workspace` (tests only): every member takes the workspace's lints, and every
//!   crate root forbids `unsafe` but the one named exception.
// Test code, used only by tests and the benchmark tools: a failed unwrap is a failed
// test. Its `unsafe` is allowed only at its two process hooks (`cluster`, `process`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

pub mod agent;
pub mod grpc;
pub mod http;
pub mod nginx;
pub mod otlp;
pub mod pgbouncer;
pub mod server;
pub mod webhook;

pub mod fixtures;

pub mod certs;
pub mod ha;
pub mod process;
pub mod proxy;

pub mod cluster;

pub mod docs;

#[cfg(test)]
mod workspace;

/// Result type of the helpers: any error, with its message.
pub type Result<T, E = Box<dyn std::error::Error + Send + Sync>> = std::result::Result<T, E>;
