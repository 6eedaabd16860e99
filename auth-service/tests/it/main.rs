//! Integration tests of auth-service against the real server (started through
//! `server::run` by `auth_test_support`) and a real, throwaway PostgreSQL: one database
//! per test.
//!
//! One test binary with modules: each binary links tonic and starts its own cluster,
//! so twelve binaries cost twelve links and twelve clusters.
#![allow(clippy::unwrap_used, clippy::expect_used)]
#![forbid(unsafe_code)]

mod attack;
mod budget;
mod cache;
mod cli;
mod concurrency;
mod embedded;
mod errors;
mod ext_authz;
mod failover;
mod forward_auth;
mod http_port;
mod lookup;
mod notify;
mod ops;
mod outage;
mod pgbouncer;
mod pgtls;
mod rebalance;
mod renew;
mod robust;
mod staleness;
mod tls;
mod traces;
mod validate;

use auth_api::v1::auth_service_client::AuthServiceClient;
use auth_service::renewal::RenewalPolicy;
use auth_test_support::server::TestServer;
use tonic::transport::Channel;

/// The auth-service binary, with an environment of the test's own.
fn service() -> std::process::Command {
    auth_test_support::process::clean(env!("CARGO_BIN_EXE_auth-service"))
}

/// A fresh database, the server on it, and a client.
async fn start(policy: RenewalPolicy) -> (TestServer, AuthServiceClient<Channel>) {
    let server = TestServer::fresh(policy).await.unwrap();
    let client = server.client().await.unwrap();
    (server, client)
}
