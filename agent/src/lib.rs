//! auth-agent: keeps a personal access token alive by renewing it against `auth.v1.AuthService`.
//!
//! The binary (`main.rs`) only parses flags and calls into this library, so that tests,
//! including the end-to-end tests against the real service, drive the same code:
//!
//! - [`daemon::run`] is the `auth-agent run` loop: preflight renew, identity lookup, then
//!   a wall-clock renewal schedule until the shutdown future completes.
//! - [`cmd`] holds one module per one-shot command (`login`, `status`, `renew`, `logout`).
//! - [`schedule`] is pure: next deadline after a success, capped backoff with jitter.
//! - [`clock`] is the injectable wall clock; [`health`] and [`http`] the observability side.
//!
//! Layout follows mini-redis: one file per command, a thin binary, `run(…, shutdown)`.
#![deny(clippy::unwrap_used, clippy::expect_used)]
#![warn(missing_docs)]

pub mod cli;
pub mod client;
pub mod clock;
pub mod cmd;
pub mod config;
pub mod daemon;
pub mod error;
pub mod files;
pub mod health;
pub mod http;
pub mod schedule;
pub mod state;
pub mod telemetry;
pub mod timefmt;
pub mod token;

pub use client::{Client, Identity, RenewOutcome, ServerUrl};
pub use clock::{Clock, OffsetClock, SystemClock};
pub use daemon::{RunOptions, ServerSource, run};
pub use error::AgentError;
pub use health::{AgentState, Health, Snapshot};
pub use schedule::Schedule;
pub use token::{RejectReason, Token, TokenSource};
