//! `run(listeners, db, settings, shutdown)`: serves auth.v1, health and reflection (and
//! the HTTP side port) until `shutdown` resolves, then drains in-flight calls and joins
//! the background tasks.
use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use auth_api::v1::auth_service_server::AuthServiceServer;
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;

use crate::{
    cache::{self, TokenCache},
    config::ServeSettings,
    db::Db,
    error::{Error, Result},
    health::{self, Health},
    http::{self, HttpState},
    last_used,
    metrics::{Metrics, grpc::GrpcMetricsLayer},
    service::{AuthSvc, Shared},
};

/// Requests are tiny; anything larger is refused before it is decoded.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Metadata above this is refused by HTTP/2 before any handler runs.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

/// The bound sockets the server answers on.
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// The HTTP side port (`/metrics`, `/healthz`, `/readyz`), when configured.
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// Binds `grpc` and, when given, `http`; errors name the flag.
    pub async fn bind(grpc: SocketAddr, http: Option<SocketAddr>) -> Result<Listeners> {
        let grpc = TcpListener::bind(grpc).await.map_err(|e| {
            Error::Config(format!(
                "cannot listen on {grpc} (--listen / AUTH_SERVICE_LISTEN): {e}"
            ))
        })?;
        let http = match http {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|e| {
                Error::Config(format!(
                    "cannot listen on {addr} (--http-listen / AUTH_SERVICE_HTTP_LISTEN): {e}"
                ))
            })?),
            None => None,
        };
        Ok(Listeners { grpc, http })
    }
}

pub async fn run(
    listeners: Listeners,
    db: Db,
    settings: ServeSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let metrics = Arc::new(Metrics::new());
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let health = Health::new(reporter, metrics.clone()).await;
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    // grpcurl 1.8 and older ask for v1alpha.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

    let (stop_tx, stop_rx) = watch::channel(false);
    let cache = Arc::new(TokenCache::new(settings.cache, metrics.clone()));
    let change_listener = cache
        .enabled()
        .then(|| cache::listener::spawn(db.config().clone(), cache.clone(), stop_rx.clone()));
    let (toucher, touch_task) = last_used::spawn(db.clone());
    let auth = AuthServiceServer::new(AuthSvc::new(
        db.clone(),
        settings.policy,
        settings.prefix,
        Shared {
            cache: cache.clone(),
            metrics: metrics.clone(),
            toucher,
        },
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES);

    let monitor = tokio::spawn(health::monitor(
        db.dedicated()?,
        health.clone(),
        settings.db_check_interval,
        stop_rx.clone(),
    ));
    // The HTTP port outlives the gRPC drain, so that /readyz says 503 meanwhile.
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = listeners.http.map(|listener| {
        let state = HttpState {
            metrics: metrics.clone(),
            cache: cache.clone(),
            db: db.clone(),
            health: health.clone(),
        };
        tokio::spawn(http::serve(listener, state, async move {
            let _ = http_stopped.await;
        }))
    });

    let incoming = TcpIncoming::from(listeners.grpc).with_nodelay(Some(true));
    let drain_signal = async {
        shutdown.await;
        tracing::info!("shutting down: NOT_SERVING, draining calls");
        let _ = stop_tx.send(true);
        health.set(ServingStatus::NotServing).await;
    };
    let served = Server::builder()
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .layer(GrpcMetricsLayer::new(metrics.clone()))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth)
        .serve_with_incoming_shutdown(incoming, drain_signal)
        .await;
    // The router (and with it the last Toucher) is gone: the writer flushes and ends.
    let _ = monitor.await;
    let _ = touch_task.await;
    if let Some(task) = change_listener {
        let _ = task.await;
    }
    let _ = http_stop.send(());
    if let Some(task) = http_task {
        let _ = task.await;
    }
    served.map_err(|e| Error::Internal(format!("gRPC server: {e}")))
}

/// Reflection over our API, health, and `google.rpc` (so grpcurl can print the
/// `ErrorInfo` detail of an error instead of raw bytes).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(auth_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
}
