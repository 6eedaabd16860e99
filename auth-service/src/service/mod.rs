//! The `auth.v1.AuthService` implementation: one module per RPC, each thin (check
//! input, call the cache or the database, build the response).
use std::sync::Arc;

use auth_api::v1::{
    LookupCurrentTokenRequest, LookupCurrentTokenResponse, RenewCurrentTokenRequest,
    RenewCurrentTokenResponse, RevokeCurrentTokenRequest, RevokeCurrentTokenResponse,
    ValidateTokenRequest, ValidateTokenResponse, WatchTokenInvalidationsRequest,
    auth_service_server::AuthService,
};
use chrono::{DateTime, Utc};
use tonic::{Request, Response, Status};
use uuid::Uuid;

use crate::{
    admission::{DbAdmission, FailureThrottle},
    cache::{Entry, Loaded, TokenCache, TokenView, flight::Flights},
    db::{Db, Renewal},
    error::{Error, Result},
    last_used::Toucher,
    metrics::Metrics,
    renewal::RenewalPolicy,
    token::{Prefix, TokenDigest},
};

pub mod credentials;
mod lookup;
mod renew;
mod revoke;
mod validate;
pub(crate) mod watch;

/// Shared state of the RPC handlers.
pub(crate) struct AuthSvc {
    db: Db,
    cache: Arc<TokenCache>,
    metrics: Arc<Metrics>,
    policy: RenewalPolicy,
    prefix: Prefix,
    toucher: Toucher,
    throttle: Arc<FailureThrottle>,
    admission: DbAdmission,
    validate_allow: Arc<[String]>,
    /// Renewals and revocations of one token in flight in this process, which later
    /// ones wait for instead of queueing their own statement.
    renewals: Flights<Renewal>,
    revocations: Flights<(Uuid, DateTime<Utc>)>,
    /// Turns true when the server begins to shut down (ends the watch streams).
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// Most callers waiting for one token's coalesced renewal (or revocation), and for all
/// tokens': a fleet of daemons sharing a token that all start at once is answered, and
/// memory stays bounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalesceLimits {
    pub per_token: usize,
    pub total: usize,
}

impl Default for CoalesceLimits {
    fn default() -> Self {
        CoalesceLimits {
            per_token: 10_000,
            total: 100_000,
        }
    }
}

/// What the handlers need besides the database and the renewal rules.
pub(crate) struct Shared {
    pub(crate) cache: Arc<TokenCache>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) toucher: Toucher,
    pub(crate) throttle: Arc<FailureThrottle>,
    pub(crate) admission: DbAdmission,
    /// Callers allowed to validate; empty: anyone.
    pub(crate) validate_allow: Arc<[String]>,
    pub(crate) coalesce: CoalesceLimits,
    /// Turns true when the server begins to shut down.
    pub(crate) stopping: tokio::sync::watch::Receiver<bool>,
}

impl AuthSvc {
    pub(crate) fn new(db: Db, policy: RenewalPolicy, prefix: Prefix, shared: Shared) -> Self {
        AuthSvc {
            db,
            cache: shared.cache,
            metrics: shared.metrics,
            policy,
            prefix,
            toucher: shared.toucher,
            throttle: shared.throttle,
            admission: shared.admission,
            validate_allow: shared.validate_allow,
            renewals: Flights::bounded(shared.coalesce.per_token, shared.coalesce.total),
            revocations: Flights::bounded(shared.coalesce.per_token, shared.coalesce.total),
            stopping: shared.stopping,
        }
    }

    pub(crate) fn prefix(&self) -> &Prefix {
        &self.prefix
    }

    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Callers allowed to validate (ValidateToken and the proxy adapters); empty: anyone.
    pub(crate) fn validate_allow(&self) -> &[String] {
        &self.validate_allow
    }

    /// A self-service call (the caller's own token): refused while its peer is over
    /// the failed-credential budget, and counted against it when its credentials fail.
    async fn self_service<T>(
        &self,
        peer: Option<std::net::IpAddr>,
        call: impl Future<Output = Result<T>>,
    ) -> std::result::Result<T, Status> {
        self.throttle.check(peer).map_err(|e| self.status(e))?;
        call.await.map_err(|e| {
            if e.reason().is_some() {
                self.throttle.failed(peer);
            }
            self.status(e)
        })
    }

    /// What Validate and Lookup share: the live token, from the cache or (on a miss)
    /// the database, turned into a response by `respond`, which is also given the
    /// database's clock at this moment (the clock the token was judged on). The token
    /// is recorded on the request's span and stamped as used.
    pub(crate) async fn describe<R>(
        &self,
        digest: &TokenDigest,
        respond: impl FnOnce(&TokenView<'_>, DateTime<Utc>) -> R,
    ) -> Result<R> {
        let Loaded { entry, cached } = self
            .cache
            .get_or_load(&digest.hash, || async {
                let found = self.db.lookup(digest).await?;
                // Unknown, revoked and expired answers are cached too, so that a flood
                // of bad tokens does not reach the database.
                Ok(Entry::new(
                    found.record.as_ref(),
                    found.db_now,
                    self.cache.local_now(),
                ))
            })
            .await?;
        let local_now = self.cache.local_now();
        let db_now = entry.db_now(local_now);
        let token = entry.judge(db_now)?;
        tracing::Span::current().record("token_id", tracing::field::display(token.id));
        // A cached entry remembers its own last stamp (lock-free, and no second map of
        // every token); an uncached answer goes through the toucher's own memory.
        if !cached {
            self.toucher.touch(token.id);
        } else if entry.should_touch(local_now.timestamp()) {
            self.toucher.send(token.id);
        }
        Ok(respond(&token, db_now))
    }

    /// The status for an error, counting credential rejections and shed work.
    pub(crate) fn status(&self, error: Error) -> Status {
        if let Some(reason) = error.reason() {
            self.metrics.rejected(reason);
        }
        if let Error::Overloaded { shed, .. } = &error {
            self.metrics.shed(*shed);
        }
        Status::from(error)
    }
}

#[tonic::async_trait]
impl AuthService for AuthSvc {
    async fn renew_current_token(
        &self,
        request: Request<RenewCurrentTokenRequest>,
    ) -> Result<Response<RenewCurrentTokenResponse>, Status> {
        let peer = credentials::peer_addr(&request).map(|a| a.ip());
        self.self_service(peer, renew::handle(self, request)).await
    }

    async fn validate_token(
        &self,
        request: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        validate::handle(self, request)
            .await
            .map_err(|e| self.status(e))
    }

    async fn lookup_current_token(
        &self,
        request: Request<LookupCurrentTokenRequest>,
    ) -> Result<Response<LookupCurrentTokenResponse>, Status> {
        let peer = credentials::peer_addr(&request).map(|a| a.ip());
        self.self_service(peer, lookup::handle(self, request)).await
    }

    async fn revoke_current_token(
        &self,
        request: Request<RevokeCurrentTokenRequest>,
    ) -> Result<Response<RevokeCurrentTokenResponse>, Status> {
        let peer = credentials::peer_addr(&request).map(|a| a.ip());
        self.self_service(peer, revoke::handle(self, request)).await
    }

    type WatchTokenInvalidationsStream = watch::WatchStream;

    async fn watch_token_invalidations(
        &self,
        request: Request<WatchTokenInvalidationsRequest>,
    ) -> Result<Response<Self::WatchTokenInvalidationsStream>, Status> {
        watch::handle(self, request).map_err(|e| self.status(e))
    }
}
