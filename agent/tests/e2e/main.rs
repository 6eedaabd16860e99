//! End-to-end tests of auth-agent against the real auth-service (started through its
//! `server::run` by `auth_service::testing`) on a real, throwaway PostgreSQL: one
//! database per test, the agent in-process through `auth_agent::run` and as the real
//! binary. Every test also checks that the token never shows up in what was captured.
//!
//! One test binary with modules, like `tests/agent`: each test binary links tonic and
//! starts its own PostgreSQL cluster, and the machine building this has two cores.

mod harness;
mod keepalive;
mod login;
mod rejected;
mod startup;
// The log capture and temporary directories of the fake-server tests, shared rather than
// copied; not every helper there is needed here.
#[allow(dead_code)]
#[path = "../agent/support.rs"]
mod support;
