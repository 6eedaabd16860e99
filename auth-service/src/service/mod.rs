//! The `auth.v1.AuthService` implementation: one module per RPC, each thin (check
//! input, call the database module, build the response).
use auth_api::v1::{
    LookupCurrentTokenRequest, LookupCurrentTokenResponse, RenewCurrentTokenRequest,
    RenewCurrentTokenResponse, RevokeCurrentTokenRequest, RevokeCurrentTokenResponse,
    ValidateTokenRequest, ValidateTokenResponse, auth_service_server::AuthService,
};
use tonic::{Request, Response, Status};

use crate::{
    db::{Db, TokenInfo},
    last_used::Toucher,
    renewal::RenewalPolicy,
    token::{Prefix, TokenDigest},
};

pub mod credentials;
mod lookup;
mod renew;
mod revoke;
mod validate;

/// Shared state of the RPC handlers.
pub struct AuthSvc {
    db: Db,
    policy: RenewalPolicy,
    prefix: Prefix,
    toucher: Toucher,
}

impl AuthSvc {
    /// What Validate and Lookup share: the token's description, recorded on the
    /// request's span and stamped as used.
    async fn describe(&self, digest: &TokenDigest) -> crate::error::Result<TokenInfo> {
        let info = self.db.lookup(digest).await?;
        tracing::Span::current().record("token_id", tracing::field::display(info.id));
        self.toucher.touch(info.id);
        Ok(info)
    }

    pub fn new(db: Db, policy: RenewalPolicy, prefix: Prefix, toucher: Toucher) -> Self {
        AuthSvc {
            db,
            policy,
            prefix,
            toucher,
        }
    }
}

#[tonic::async_trait]
impl AuthService for AuthSvc {
    async fn renew_current_token(
        &self,
        request: Request<RenewCurrentTokenRequest>,
    ) -> Result<Response<RenewCurrentTokenResponse>, Status> {
        renew::handle(self, request).await.map_err(Status::from)
    }

    async fn validate_token(
        &self,
        request: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        validate::handle(self, request).await.map_err(Status::from)
    }

    async fn lookup_current_token(
        &self,
        request: Request<LookupCurrentTokenRequest>,
    ) -> Result<Response<LookupCurrentTokenResponse>, Status> {
        lookup::handle(self, request).await.map_err(Status::from)
    }

    async fn revoke_current_token(
        &self,
        request: Request<RevokeCurrentTokenRequest>,
    ) -> Result<Response<RevokeCurrentTokenResponse>, Status> {
        revoke::handle(self, request).await.map_err(Status::from)
    }
}
