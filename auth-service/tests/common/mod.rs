//! Helpers shared by the integration tests (the harness itself is `auth_service::testing`).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]
use std::time::{Duration, SystemTime};

use auth_api::v1::{
    LookupCurrentTokenRequest, RenewCurrentTokenRequest, RenewCurrentTokenResponse,
    ValidateTokenRequest, auth_service_client::AuthServiceClient,
};
use auth_service::{config::RenewalPolicy, db::Db, testing};
use tonic::{Code, Request, Status, transport::Channel};
use tonic_types::StatusExt;

pub const DAY: Duration = Duration::from_secs(86400);

pub fn authed<T>(message: T, token: &str) -> Request<T> {
    let mut r = Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    r
}

/// The ErrorInfo reason of an UNAUTHENTICATED status (panics on any other code).
pub fn reason(status: &Status) -> String {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .expect("ErrorInfo detail");
    assert_eq!(info.domain, "auth.v1");
    info.reason
}

pub fn to_system(t: &prost_types::Timestamp) -> SystemTime {
    SystemTime::try_from(*t).unwrap()
}

/// A fresh database and a server on it.
pub async fn server(policy: RenewalPolicy) -> (testing::TestServer, AuthServiceClient<Channel>) {
    let db = testing::test_db().await.unwrap();
    let server = testing::TestServer::start(db, testing::test_settings(policy))
        .await
        .unwrap();
    let client = server.client().await.unwrap();
    (server, client)
}

pub async fn renew(
    client: &mut AuthServiceClient<Channel>,
    token: &str,
) -> Result<RenewCurrentTokenResponse, Status> {
    client
        .renew_current_token(authed(RenewCurrentTokenRequest {}, token))
        .await
        .map(|r| r.into_inner())
}

pub async fn validate(client: &mut AuthServiceClient<Channel>, token: &str) -> Result<(), Status> {
    client
        .validate_token(ValidateTokenRequest {
            token: token.to_string(),
        })
        .await
        .map(|_| ())
}

pub async fn lookup(client: &mut AuthServiceClient<Channel>, token: &str) -> Result<(), Status> {
    client
        .lookup_current_token(authed(LookupCurrentTokenRequest {}, token))
        .await
        .map(|_| ())
}

/// A token whose expiry is `secs` from now (negative: already expired).
pub async fn token_expiring_in(db: &Db, secs: f64) -> (String, String) {
    let (id, raw) = testing::create_token(db, "alice", Some(90 * DAY))
        .await
        .unwrap();
    testing::set_expires_in(db, &id, secs).await.unwrap();
    (id, raw)
}

/// |a - b| in seconds.
pub fn gap(a: SystemTime, b: SystemTime) -> f64 {
    match a.duration_since(b) {
        Ok(d) => d.as_secs_f64(),
        Err(e) => e.duration().as_secs_f64(),
    }
}
