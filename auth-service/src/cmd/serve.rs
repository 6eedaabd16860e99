//! `auth-service serve`: bind, open the database, run the server until shutdown, then
//! close the pool and stop the embedded cluster last.
use super::database::{self, Role, Schema};
use crate::{
    config::{DbSettings, ServeSettings},
    error::{Error, Result},
    server::{self, Listeners},
    transport,
};

pub(crate) async fn serve(
    db: &DbSettings,
    settings: ServeSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    // The connection cap, not the default soft limit of 1024 descriptors, should be
    // what bounds the server.
    if let Some(limit) = transport::raise_fd_limit() {
        tracing::debug!(open_files = limit, "open-file limit");
    }
    if settings.transport.tls.is_none() && !settings.listen.ip().is_loopback() {
        tracing::warn!(
            listen = %settings.listen,
            "TLS is off on a non-loopback address: tokens cross the network in clear unless a \
             mesh sidecar provides mTLS (set --tls-cert and --tls-key)"
        );
    }
    let listeners = Listeners::bind(settings.listen, settings.http_listen).await?;
    // The bound addresses, not the configured ones: with port 0 the kernel picks them,
    // and scripts and tests read them from these lines.
    let addr = listeners
        .grpc
        .local_addr()
        .map_err(|e| Error::Config(format!("--listen {}: {e}", settings.listen)))?;
    let http = listeners.http.as_ref().and_then(|l| l.local_addr().ok());
    // With --no-migrate a separate `auth-service migrate` (a role with DDL rights) owns
    // the schema; serve only checks that it is the one this binary needs.
    let schema = if settings.no_migrate {
        Schema::Check
    } else {
        Schema::Migrate
    };
    let layout = database::Layout {
        outside_pools: settings.connections_outside_pools(),
        session: settings.database_listen.clone(),
    };
    let opened = database::open(db, Role::Server, schema, layout).await?;
    if let Some(http) = http {
        tracing::info!(%http, "HTTP port listening (/metrics, /healthz, /readyz)");
    }
    tracing::info!(%addr, "auth-service listening");
    let served = server::run(listeners, opened.db.clone(), settings, shutdown).await;
    let closed = opened.close(Role::Server).await;
    served.and(closed)
}
