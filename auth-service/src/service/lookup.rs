//! `LookupCurrentToken`: "who am I" for the caller's own token.
use auth_api::v1::{LookupCurrentTokenRequest, LookupCurrentTokenResponse};
use tonic::{Request, Response};
use tracing::instrument;

use super::{AuthSvc, credentials};
use crate::error::Result;

// A DEBUG span: these are the hot path, and at the default INFO level a span per call
// costs more than the lookup itself; nothing inside logs at INFO.
#[instrument(level = "debug", skip_all, fields(token_id))]
pub(super) async fn handle(
    svc: &AuthSvc,
    request: Request<LookupCurrentTokenRequest>,
) -> Result<Response<LookupCurrentTokenResponse>> {
    let digest = credentials::bearer(&request, &svc.prefix)?;
    let response = svc
        .describe(&digest, |token, _| LookupCurrentTokenResponse {
            expires_at: auth_api::time::to_wire(token.expires_at),
            token_id: token.id.to_string(),
            user_id: token.user_id.to_owned(),
            name: token.name.to_owned(),
            scopes: token.scopes().map(str::to_owned).collect(),
        })
        .await?;
    Ok(Response::new(response))
}
