//! The `auth.v1.AuthService` implementation: one module per RPC, each thin (check
//! input, call the database module, build the response).
use std::time::SystemTime;

use auth_api::v1::{
    LookupCurrentTokenRequest, LookupCurrentTokenResponse, RenewCurrentTokenRequest,
    RenewCurrentTokenResponse, RevokeCurrentTokenRequest, RevokeCurrentTokenResponse,
    ValidateTokenRequest, ValidateTokenResponse, auth_service_server::AuthService,
};
use tonic::{Request, Response, Status};

use crate::{config::RenewalPolicy, db::Db, last_used::Toucher, token::Prefix};

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
    pub fn new(db: Db, policy: RenewalPolicy, prefix: Prefix, toucher: Toucher) -> Self {
        AuthSvc {
            db,
            policy,
            prefix,
            toucher,
        }
    }
}

fn timestamp(t: Option<SystemTime>) -> Option<prost_types::Timestamp> {
    t.map(prost_types::Timestamp::from)
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
