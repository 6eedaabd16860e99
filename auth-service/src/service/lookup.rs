//! `LookupCurrentToken`: "who am I" for the caller's own token.
use auth_api::v1::{LookupCurrentTokenRequest, LookupCurrentTokenResponse};
use tonic::{Request, Response};
use tracing::instrument;

use super::{AuthSvc, credentials};
use crate::error::Result;

#[instrument(skip_all, fields(token_id))]
pub(super) async fn handle(
    svc: &AuthSvc,
    request: Request<LookupCurrentTokenRequest>,
) -> Result<Response<LookupCurrentTokenResponse>> {
    let digest = credentials::bearer(&request, &svc.prefix)?;
    let info = svc.describe(&digest).await?;
    Ok(Response::new(LookupCurrentTokenResponse {
        expires_at: auth_api::time::to_wire(info.expires_at),
        token_id: info.id.to_string(),
        user_id: info.user_id,
        name: info.name,
        scopes: info.scopes,
    }))
}
