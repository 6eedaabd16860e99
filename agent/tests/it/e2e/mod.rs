//! End-to-end tests of auth-agent against the real auth-service (started through its
//! `server::run` by `auth_test_support`) on a real, throwaway PostgreSQL: one database
//! per test, the agent in-process through `auth_agent::run` and as the real binary.
//! Every test also checks that the token never shows up in what was captured.

mod harness;
mod keepalive;
mod login;
mod metrics;
mod rejected;
mod startup;
mod tls;
mod traces;
