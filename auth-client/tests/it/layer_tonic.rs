//! AuthLayer on a tonic service, in front of the real auth-service: the same cases as
//! over HTTP, answered as gRPC statuses with the service's own `ErrorInfo`.
//!
//! The protected service is a stand-in implementing `auth.v1.AuthService` (its
//! generated code is at hand): its `LookupCurrentToken` answers with the Identity the
//! layer put in the request's extensions.
use std::{net::SocketAddr, time::Duration};

use auth_api::v1::{
    LookupCurrentTokenRequest, LookupCurrentTokenResponse, RenewCurrentTokenRequest,
    RenewCurrentTokenResponse, RevokeCurrentTokenRequest, RevokeCurrentTokenResponse,
    ValidateTokenRequest, ValidateTokenResponse, WatchTokenInvalidationsRequest,
    WatchTokenInvalidationsResponse,
    auth_service_client::AuthServiceClient,
    auth_service_server::{AuthService, AuthServiceServer},
};
use auth_client::{AuthClient, AuthLayer, Identity};
use auth_test_support::{
    cluster,
    fixtures::{set_revoked_ago, token_expiring_in},
    grpc::authed,
    server::TestServer,
};
use tonic::{Code, Request, Response, Status, transport::Server};
use tonic_types::StatusExt;
use tower::Layer;

use crate::{client_of, serving, token_with, warm};

/// A protected service: says who the layer let in.
struct Protected;

#[tonic::async_trait]
impl AuthService for Protected {
    async fn lookup_current_token(
        &self,
        request: Request<LookupCurrentTokenRequest>,
    ) -> Result<Response<LookupCurrentTokenResponse>, Status> {
        let id = request
            .extensions()
            .get::<Identity>()
            .ok_or_else(|| Status::internal("no Identity: the layer did not run"))?;
        Ok(Response::new(LookupCurrentTokenResponse {
            token_id: id.token_id.clone(),
            user_id: id.user_id.clone(),
            name: id.name.clone(),
            scopes: id.scopes.clone(),
            expires_at: None,
        }))
    }

    async fn renew_current_token(
        &self,
        _: Request<RenewCurrentTokenRequest>,
    ) -> Result<Response<RenewCurrentTokenResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn validate_token(
        &self,
        _: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }

    async fn revoke_current_token(
        &self,
        _: Request<RevokeCurrentTokenRequest>,
    ) -> Result<Response<RevokeCurrentTokenResponse>, Status> {
        Err(Status::unimplemented("not here"))
    }

    type WatchTokenInvalidationsStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<WatchTokenInvalidationsResponse, Status>> + Send,
        >,
    >;

    async fn watch_token_invalidations(
        &self,
        _: Request<WatchTokenInvalidationsRequest>,
    ) -> Result<Response<Self::WatchTokenInvalidationsStream>, Status> {
        Err(Status::unimplemented("not here"))
    }
}

/// The protected service on a port of its own, requiring `scopes`.
async fn protected_server(client: AuthClient, scopes: &[&str]) -> SocketAddr {
    let mut auth = AuthLayer::new(client);
    for scope in scopes {
        auth = auth.require_scope(*scope);
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tokio::spawn(
        Server::builder()
            .add_service(auth.layer(AuthServiceServer::new(Protected)))
            .serve_with_incoming(incoming),
    );
    addr
}

/// Calls the protected service with `token` (or none).
async fn call(addr: SocketAddr, token: Option<&str>) -> Result<String, Status> {
    let mut client = AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let request = match token {
        Some(token) => authed(LookupCurrentTokenRequest {}, token),
        None => Request::new(LookupCurrentTokenRequest {}),
    };
    let id = client.lookup_current_token(request).await?.into_inner();
    Ok(format!("{} {}", id.user_id, id.scopes.join(",")))
}

/// The code and the `auth.v1` ErrorInfo reason of a refusal.
fn refusal(status: &Status) -> (Code, String) {
    let info = status.get_error_details().error_info().cloned();
    let reason = info
        .filter(|i| i.domain == auth_api::ERROR_DOMAIN)
        .map(|i| i.reason)
        .unwrap_or_default();
    (status.code(), reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_tokens_pass_with_their_identity_and_bad_ones_get_the_service_s_errors() {
    let server = TestServer::start(
        cluster::test_db().await.unwrap(),
        auth_test_support::server::settings(Default::default()),
    )
    .await
    .unwrap();
    let client = client_of(&server);
    let open = protected_server(client.clone(), &[]).await;
    let billing = protected_server(client.clone(), &["billing:write"]).await;
    let reader = token_with(&server.db, "alice", &["read"]).await;
    let biller = token_with(&server.db, "bob", &["read", "billing:write"]).await;

    assert_eq!(call(open, Some(&reader)).await.unwrap(), "alice read");
    assert_eq!(
        call(billing, Some(&biller)).await.unwrap(),
        "bob read,billing:write"
    );
    warm(&client, &reader).await;
    assert_eq!(call(open, Some(&reader)).await.unwrap(), "alice read");

    let denied = call(billing, Some(&reader)).await.unwrap_err();
    assert_eq!(
        refusal(&denied),
        (Code::PermissionDenied, "INSUFFICIENT_SCOPE".into())
    );
    let scope = denied.get_error_details().error_info().cloned().unwrap();
    assert_eq!(scope.metadata["scope"], "billing:write");

    let unknown = auth_service::token::generate(&Default::default()).unwrap();
    let (_, expired) = token_expiring_in(&server.db, -60.0).await;
    let (revoked_id, revoked) = token_expiring_in(&server.db, 86400.0).await;
    set_revoked_ago(&server.db, revoked_id, 5.0).await.unwrap();
    assert_eq!(
        refusal(&call(open, None).await.unwrap_err()),
        (Code::Unauthenticated, "MISSING_CREDENTIALS".into())
    );
    for (token, want) in [
        ("pat_nope", "TOKEN_MALFORMED"),
        (unknown.expose(), "TOKEN_UNKNOWN"),
        (expired.as_str(), "TOKEN_EXPIRED"),
        (revoked.as_str(), "TOKEN_REVOKED"),
    ] {
        let status = call(open, Some(token)).await.unwrap_err();
        assert_eq!(refusal(&status), (Code::Unauthenticated, want.into()));
        let status = call(billing, Some(token)).await.unwrap_err();
        assert_eq!(refusal(&status), (Code::Unauthenticated, want.into()));
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_is_unavailable_for_an_uncached_token_never_unauthenticated() {
    let (server, cluster) = TestServer::on_own_cluster("client-outage-grpc")
        .await
        .unwrap();
    let client = client_of(&server);
    let open = protected_server(client.clone(), &[]).await;
    let cached = token_with(&server.db, "alice", &["read"]).await;
    let uncached = token_with(&server.db, "bob", &["read"]).await;
    warm(&client, &cached).await;
    serving(&client).await;

    let cluster = cluster::stop(cluster).await.unwrap();
    crate::wait_until("the cache stops serving", Duration::from_secs(10), || {
        !client.cache_state().unwrap().serving
    })
    .await;
    let status = call(open, Some(&uncached)).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(status.get_error_details().retry_info().is_some());
    assert_eq!(call(open, Some(&cached)).await.unwrap(), "alice read");
    drop(cluster);
    server.shutdown().await.unwrap();
}
