//! `run(listener, ...)`: serves auth.v1, health and reflection until `shutdown`
//! resolves, then drains in-flight calls and joins the background tasks.
use std::{future::Future, time::Duration};

use auth_api::v1::auth_service_server::AuthServiceServer;
use tokio::{net::TcpListener, sync::watch};
use tonic::transport::{Server, server::TcpIncoming};
use tonic_health::ServingStatus;

use crate::{
    config::ServeSettings,
    db::Db,
    error::{Error, Result},
    health, last_used,
    service::AuthSvc,
};

/// Requests are tiny; anything larger is refused before it is decoded.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// Metadata above this is refused by HTTP/2 before any handler runs.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;

pub async fn run(
    listener: TcpListener,
    db: Db,
    settings: ServeSettings,
    shutdown: impl Future<Output = ()>,
) -> Result<()> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    health::set(&reporter, ServingStatus::NotServing).await;
    let reflection_v1 = reflection()
        .build_v1()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;
    // grpcurl 1.8 and older ask for v1alpha.
    let reflection_v1alpha = reflection()
        .build_v1alpha()
        .map_err(|e| Error::Internal(format!("reflection: {e}")))?;

    let (toucher, touch_task) = last_used::spawn(db.clone());
    let auth = AuthServiceServer::new(AuthSvc::new(
        db.clone(),
        settings.policy,
        settings.prefix,
        toucher,
    ))
    .max_decoding_message_size(MAX_REQUEST_BYTES);

    let (stop_tx, stop_rx) = watch::channel(false);
    let monitor = tokio::spawn(health::monitor(
        db.dedicated()?,
        reporter.clone(),
        settings.db_check_interval,
        stop_rx,
    ));

    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let drain_signal = async {
        shutdown.await;
        tracing::info!("shutting down: NOT_SERVING, draining calls");
        let _ = stop_tx.send(true);
        health::set(&reporter, ServingStatus::NotServing).await;
    };
    let served = Server::builder()
        .http2_max_header_list_size(MAX_HEADER_LIST_BYTES)
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth)
        .serve_with_incoming_shutdown(incoming, drain_signal)
        .await;
    // The router (and with it the last Toucher) is gone: the writer flushes and ends.
    let _ = monitor.await;
    let _ = touch_task.await;
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
