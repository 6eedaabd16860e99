//! auth-agent: keeps a personal access token alive by renewing it against
//! `auth.v1.AuthService`. The binary (`main.rs`) only parses flags and calls
//! [`cli::execute`], so tests, including the end-to-end tests against the real service,
//! drive the same code.
//!
//! Modules, top-down (each uses only those below it):
//! - [`cli`]: flags and variables, validated into a [`cmd::Context`] or [`RunOptions`];
//! - [`cmd`]: one module per command (`login`, `run`, `status`, `renew`, `logout`);
//! - [`daemon`]: the `run` loop: preflight renew, identity, wall-clock schedule;
//! - [`http`], [`health`]: the `/healthz`, `/readyz`, `/metrics` endpoint and the state
//!   it reports;
//! - [`schedule`]: when to renew next, from a renewal's outcome;
//! - [`source`], [`config`], [`state`]: where the token comes from, the config file
//!   `login` writes, and the last-renewal file `status` reads;
//! - [`client`]: the agent's calls, over auth-client (its channel, TLS, status mapping
//!   and retry policy);
//! - [`server_url`], [`token`]: the server URL and the token as checked values;
//! - [`error`]: the one error type (what to do next, from auth-client's answers) and the
//!   rejection reasons;
//! - [`clock`], [`timefmt`], [`files`], [`telemetry`]: plain helpers (the injectable
//!   wall clock, time formatting, private files, logging setup).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod cli;
pub mod cmd;
pub(crate) mod daemon;

pub mod health;
pub(crate) mod http;

pub(crate) mod schedule;

pub mod config;
pub(crate) mod source;
pub(crate) mod state;

pub mod client;

pub(crate) mod server_url;
pub(crate) mod token;

pub(crate) mod error;

pub(crate) mod clock;
pub(crate) mod files;
pub mod telemetry;
pub mod timefmt;

pub use client::{Client, TlsFiles, Transport};
pub use clock::{Clock, OffsetClock, SystemClock};
pub use daemon::{RunOptions, ServerSource, run};
pub use error::{AgentError, RejectReason};
pub use health::{AgentState, Health, Snapshot};
pub use schedule::Schedule;
pub use server_url::ServerUrl;
pub use source::TokenSource;
pub use token::Token;
