//! `auth-service serve`: bind, open the database, run the server until shutdown, then
//! close the pool and stop the embedded cluster last.
use tokio::net::TcpListener;

use super::database::{self, Role};
use crate::{
    config::{DbSettings, ServeSettings},
    error::{Error, Result},
    server,
};

pub async fn serve(
    db: &DbSettings,
    settings: ServeSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let listener = TcpListener::bind(settings.listen).await.map_err(|e| {
        Error::Config(format!(
            "cannot listen on {} (--listen / AUTH_SERVICE_LISTEN): {e}",
            settings.listen
        ))
    })?;
    // The bound address, not the configured one: with port 0 the kernel picks it, and
    // scripts and tests read it from this line.
    let addr = listener
        .local_addr()
        .map_err(|e| Error::Config(format!("--listen {}: {e}", settings.listen)))?;
    let opened = database::open(db, Role::Server).await?;
    tracing::info!(%addr, "auth-service listening");
    let served = server::run(listener, opened.db.clone(), settings, shutdown).await;
    let closed = opened.close(Role::Server).await;
    served.and(closed)
}
