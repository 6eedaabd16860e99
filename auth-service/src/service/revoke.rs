//! `RevokeCurrentToken`: the caller's own token revokes itself (log out).
use auth_api::v1::{RevokeCurrentTokenRequest, RevokeCurrentTokenResponse};
use tonic::{Request, Response};
use tracing::instrument;

use super::{AuthSvc, credentials};
use crate::error::Result;

#[instrument(skip_all, fields(token_id))]
pub(super) async fn handle(
    svc: &AuthSvc,
    request: Request<RevokeCurrentTokenRequest>,
) -> Result<Response<RevokeCurrentTokenResponse>> {
    let digest = credentials::bearer(&request, &svc.prefix)?;
    let caller = credentials::caller(&request);
    // Concurrent revocations of one token share one statement and its answer.
    let (revoked, _led) = svc
        .revocations
        .run(&digest.hash, std::time::Duration::MAX, || async {
            let _admitted = svc
                .admission
                .admit(digest.hash, svc.db.pool().status().waiting)?;
            svc.db.revoke_by_hash(&digest, &caller).await
        })
        .await;
    let (token_id, revoked_at) = revoked?;
    svc.cache.evict(&digest.hash);
    tracing::Span::current().record("token_id", tracing::field::display(token_id));
    tracing::info!(%caller, "token revoked by its holder");
    Ok(Response::new(RevokeCurrentTokenResponse {
        revoked_at: Some(auth_api::time::to_timestamp(revoked_at)),
    }))
}
