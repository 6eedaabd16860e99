//! `LookupCurrentToken`: "who am I" for the caller's own token.
use auth_api::v1::{LookupCurrentTokenRequest, LookupCurrentTokenResponse};
use tonic::{Request, Response};
use tracing::instrument;

use super::{AuthSvc, credentials, timestamp};
use crate::error::Result;

#[instrument(skip_all, fields(token_id))]
pub(super) async fn handle(
    svc: &AuthSvc,
    request: Request<LookupCurrentTokenRequest>,
) -> Result<Response<LookupCurrentTokenResponse>> {
    let digest = credentials::bearer(&request, &svc.prefix)?;
    let info = svc.describe(&digest).await?;
    Ok(Response::new(LookupCurrentTokenResponse {
        expires_at: timestamp(info.expires_at),
        token_id: info.id,
        user_id: info.user_id,
        name: info.name,
        scopes: info.scopes,
    }))
}
