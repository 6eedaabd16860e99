//! `ValidateToken`: a service in the mesh asks whether a token it was handed is good.
use auth_api::v1::{ValidateTokenRequest, ValidateTokenResponse};
use tonic::{Request, Response};
use tracing::instrument;

use super::AuthSvc;
use crate::{
    error::{Error, Result},
    token,
};

#[instrument(skip_all, fields(token_id))]
pub(super) async fn handle(
    svc: &AuthSvc,
    request: Request<ValidateTokenRequest>,
) -> Result<Response<ValidateTokenResponse>> {
    let token = &request.get_ref().token;
    if token.is_empty() {
        return Err(Error::MissingCredentials(
            "the request's `token` field is empty: put the token to check there".into(),
        ));
    }
    let digest = token::parse(&svc.prefix, token)?;
    let response = svc
        .describe(&digest, |record| ValidateTokenResponse {
            expires_at: auth_api::time::to_wire(record.expires_at),
            token_id: record.id.to_string(),
            user_id: record.user_id.clone(),
            name: record.name.clone(),
            scopes: record.scopes.clone(),
        })
        .await?;
    Ok(Response::new(response))
}
