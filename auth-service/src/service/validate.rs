//! `ValidateToken`: a service in the mesh asks whether a token it was handed is good.
use auth_api::v1::{ValidateTokenRequest, ValidateTokenResponse};
use tonic::{Request, Response};
use tracing::instrument;

use super::{AuthSvc, timestamp};
use crate::{error::Result, token};

#[instrument(skip_all, fields(token_id))]
pub(super) async fn handle(
    svc: &AuthSvc,
    request: Request<ValidateTokenRequest>,
) -> Result<Response<ValidateTokenResponse>> {
    let digest = token::parse(&svc.prefix, &request.get_ref().token)?;
    let info = svc.db.lookup(&digest).await?;
    tracing::Span::current().record("token_id", info.id.as_str());
    svc.toucher.touch(&info.id);
    Ok(Response::new(ValidateTokenResponse {
        expires_at: timestamp(info.expires_at),
        token_id: info.id,
        user_id: info.user_id,
        name: info.name,
        scopes: info.scopes,
    }))
}
