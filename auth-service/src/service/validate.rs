//! `ValidateToken`: a service in the mesh asks whether a token it was handed is good.
use auth_api::v1::{ValidateTokenRequest, ValidateTokenResponse};
use tonic::{Request, Response};
use tracing::instrument;

use super::{AuthSvc, credentials};
use crate::{
    error::{Error, Result},
    token,
};

// A DEBUG span: these are the hot path, and at the default INFO level a span per call
// costs more than the lookup itself; nothing inside logs at INFO.
#[instrument(level = "debug", skip_all, fields(token_id))]
pub(super) async fn handle(
    svc: &AuthSvc,
    request: Request<ValidateTokenRequest>,
) -> Result<Response<ValidateTokenResponse>> {
    credentials::authorize_validate(&request, &svc.validate_allow)?;
    let token = &request.get_ref().token;
    if token.is_empty() {
        return Err(Error::MissingCredentials(
            "the request's `token` field is empty: put the token to check there".into(),
        ));
    }
    let digest = token::parse(&svc.prefix, token)?;
    let response = svc
        .describe(&digest, |token, db_now| ValidateTokenResponse {
            expires_at: auth_api::time::to_wire(token.expires_at),
            token_id: token.id.to_string(),
            user_id: token.user_id.to_owned(),
            name: token.name.to_owned(),
            scopes: token.scopes().map(str::to_owned).collect(),
            server_time: Some(auth_api::time::to_timestamp(db_now)),
        })
        .await?;
    Ok(Response::new(response))
}
