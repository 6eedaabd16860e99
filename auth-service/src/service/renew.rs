//! `RenewCurrentToken`: extend the caller's own token in place.
use auth_api::{
    time::to_wire,
    v1::{RenewCurrentTokenRequest, RenewCurrentTokenResponse},
};
use tonic::{Request, Response};
use tracing::instrument;

use super::{AuthSvc, credentials};
use crate::{error::Result, metrics::RenewalResult};

#[instrument(skip_all, fields(token_id, renewed))]
pub(super) async fn handle(
    svc: &AuthSvc,
    request: Request<RenewCurrentTokenRequest>,
) -> Result<Response<RenewCurrentTokenResponse>> {
    let digest = credentials::bearer(&request, &svc.prefix)?;
    let caller = credentials::caller(&request);
    // Concurrent renewals of one token share one statement: the first runs it, the
    // others wait for its answer and report the expiry it left, not renewed by them.
    let (renewal, led) = svc
        .renewals
        .run(&digest.hash, std::time::Duration::MAX, || async {
            let _admitted = svc
                .admission
                .admit(digest.hash, svc.db.pool().status().waiting)?;
            svc.db.renew(&digest, &svc.policy, &caller).await
        })
        .await;
    let mut renewal = renewal?;
    if led {
        svc.metrics
            .renewal(match (renewal.renewed, renewal.lost_race) {
                (true, _) => RenewalResult::Renewed,
                (false, true) => RenewalResult::LostRace,
                (false, false) => RenewalResult::Noop,
            });
    } else {
        renewal.renewed = false;
        svc.metrics.renewal(RenewalResult::Coalesced);
    }
    if renewal.renewed {
        // This replica answers with the new expiry at once; the others hear of it from
        // the change notification.
        svc.cache.evict(&digest.hash);
    }
    let span = tracing::Span::current();
    span.record("token_id", tracing::field::display(renewal.token_id));
    span.record("renewed", renewal.renewed);
    if renewal.renewed {
        tracing::info!(%caller, "token renewed");
    }
    svc.toucher.touch(renewal.token_id);
    Ok(Response::new(RenewCurrentTokenResponse {
        expires_at: to_wire(renewal.expires_at),
        renewed: renewal.renewed,
        next_renewal_at: to_wire(renewal.next_renewal_at),
    }))
}
