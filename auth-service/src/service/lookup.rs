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
    let response = svc
        .describe(&digest, |record| LookupCurrentTokenResponse {
            expires_at: auth_api::time::to_wire(record.expires_at),
            token_id: record.id.to_string(),
            user_id: record.user_id.clone(),
            name: record.name.clone(),
            scopes: record.scopes.clone(),
        })
        .await?;
    Ok(Response::new(response))
}
