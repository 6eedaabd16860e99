//! Integration tests of auth-agent against a scripted fake `AuthService`: the daemon's
//! call order and failure handling (real time, TCP), its schedule (paused time, in-memory
//! transport, injected wall clock), the health endpoint, and the binary's commands.
//!
//! One test binary with modules, rather than one per file: each links tonic, and the
//! machine building this has two cores.

mod cli;
mod fake;
mod health;
mod ordering;
mod secrets;
mod support;
mod timing;
