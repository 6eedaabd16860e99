//! `run(listeners, db, settings, shutdown)`: serves auth.v1, Envoy's ext_authz, health
//! and reflection (and the HTTP side port) until `shutdown` resolves, then drains in-flight calls and joins
//! the background tasks.
use std::{future::Future, net::SocketAddr, sync::Arc};

use auth_api::v1::auth_service_server::AuthServiceServer;
use tokio::{net::TcpListener, sync::watch};
use tonic_health::ServingStatus;

use crate::{
    admission::{DbAdmission, FailureThrottle},
    authz::{
        envoy::{AuthorizationServer, ExtAuthz},
        forward::ForwardAuth,
    },
    cache::{self, TokenCache},
    config::ServeSettings,
    db::Db,
    error::{Error, Result},
    health::{self, Health},
    http::{self, HttpState},
    last_used,
    metrics::{Metrics, grpc::GrpcMetricsLayer},
    notify,
    service::{AuthSvc, Shared},
    tasks,
    transport::{self, tls},
};

/// Requests are tiny; anything larger is refused before it is decoded.
const MAX_REQUEST_BYTES: usize = 16 * 1024;
/// An ext_authz CheckRequest carries every header of the checked request: Envoy's own
/// header limit (60 KiB by default) plus the request's attributes.
const MAX_CHECK_BYTES: usize = 256 * 1024;
/// Metadata above this is refused by HTTP/2 before any handler runs.
const MAX_HEADER_LIST_BYTES: u32 = 16 * 1024;
/// HTTP/2 flow-control windows: the most request bytes a peer can send ahead of the
/// handler, per stream and per connection.
const STREAM_WINDOW_BYTES: u32 = 64 * 1024;
const CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;

/// How long startup waits for the cache's first heartbeat before it decides that the
/// LISTEN connection hears nothing.
const FIRST_HEARTBEAT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// The bound sockets the server answers on.
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// The HTTP side port (`/metrics`, `/healthz`, `/readyz`), when configured.
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// Binds `grpc` and, when given, `http`; errors name the flag.
    pub(crate) async fn bind(grpc: SocketAddr, http: Option<SocketAddr>) -> Result<Listeners> {
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
    let mut metrics = Metrics::new();
    metrics.register_db(&db);
    let metrics = Arc::new(metrics);
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
    let (tasks, mut failures) = tasks::Watch::new(stop_rx.clone());
    let cache = Arc::new(TokenCache::new(settings.cache, metrics.clone()));
    let change_listener = match cache.enabled() {
        true => Some(
            cache::listener::spawn(
                listen_target(&settings, &db),
                db.target().clone(),
                cache.clone(),
                settings.cache,
                stop_rx.clone(),
            )
            .map_err(|e| Error::Internal(format!("starting the token-change listener: {e}")))?,
        ),
        false => None,
    };
    // A LISTEN connection that hears nothing (a transaction-pooling PgBouncer in front
    // of it) would leave the cache off for ever, silently: the server stops and says
    // which flag fixes it. Checked while serving (from the database meanwhile), so that
    // startup is not held up by it.
    let listens = change_listener.is_some();
    // Without the listener the cache stays off for good: its loss stops the replica.
    let change_listener = change_listener
        .map(|listener| tasks.future("token-change listener", true, listener.join()));
    let deaf = async {
        if listens
            && let Err(why) = cache::listener::hears_itself(&cache, FIRST_HEARTBEAT_WAIT).await
        {
            return why;
        }
        std::future::pending().await
    };
    let refused = std::sync::Mutex::new(None::<String>);
    let (writer_stop, writer_stopped) = tokio::sync::oneshot::channel::<()>();
    let (toucher, touch_task) = last_used::spawn(db.clone(), async move {
        let _ = writer_stopped.await;
    });
    let touch_task = tasks.task("last-used writer", false, touch_task);
    let throttle = Arc::new(FailureThrottle::new(settings.auth_failure_limit));
    let throttle_clean_up = tokio::spawn({
        let (throttle, mut stop) = (throttle.clone(), stop_rx.clone());
        async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => throttle.clean_up(),
                    _ = stop.changed() => return,
                }
            }
        }
    });
    let svc = Arc::new(AuthSvc::new(
        db.clone(),
        settings.policy,
        settings.prefix,
        Shared {
            cache: cache.clone(),
            metrics: metrics.clone(),
            toucher,
            throttle: throttle.clone(),
            admission: DbAdmission::new(settings.db_max_per_token, settings.db_max_waiting),
            validate_allow: settings.validate_allow.clone().into(),
            coalesce: settings.coalesce,
            stopping: stop_rx.clone(),
        },
    ));
    let auth =
        AuthServiceServer::from_arc(svc.clone()).max_decoding_message_size(MAX_REQUEST_BYTES);
    let ext_authz = AuthorizationServer::new(ExtAuthz::new(svc.clone()), MAX_CHECK_BYTES);

    let notifier = match settings.notify.clone() {
        Some(notify) => Some(tasks.task(
            "expiry notifier",
            false,
            notify::spawn(db.clone(), notify, metrics.clone(), stop_rx.clone())?,
        )),
        None => None,
    };
    let probe = db.dedicated()?;
    // Without the monitor, health and readiness would freeze at their last answer.
    let monitor = tasks.task(
        "health monitor",
        true,
        tokio::spawn(health::monitor(
            probe.clone(),
            health.clone(),
            settings.db_check_interval,
            db.trouble(),
            stop_rx.clone(),
        )),
    );
    // Both ports' connection caps, together below the open-file limit.
    let (grpc_cap, http_cap) = transport::connection_caps(
        settings.transport.max_connections,
        listeners
            .http
            .as_ref()
            .map(|_| settings.http.max_connections),
    );
    // The HTTP port outlives the gRPC drain, so that /readyz says 503 meanwhile.
    let (http_stop, http_stopped) = tokio::sync::oneshot::channel::<()>();
    let http_task = listeners.http.map(|listener| {
        let state = HttpState {
            metrics: metrics.clone(),
            cache: cache.clone(),
            db: db.clone(),
            probe: probe.clone(),
            max_connections: settings.db_max_connections,
            traces: settings.traces.clone(),
            health: health.clone(),
            forward_auth: ForwardAuth {
                svc: svc.clone(),
                access: Arc::new(settings.forward_auth.clone()),
            },
        };
        let limits = transport::http1::Http1Settings {
            header_timeout: settings.http.header_timeout,
            request_timeout: settings.transport.request_timeout,
        };
        tokio::spawn(http::serve(
            listener,
            state,
            transport::Accept::http(&settings.transport, http_cap.unwrap_or(1)),
            limits,
            async move {
                let _ = http_stopped.await;
            },
        ))
    });

    let tls = match &settings.transport.tls {
        Some(files) => Some(Arc::new(tls::Reloader::load(files, metrics.clone())?)),
        None => None,
    };
    let tls_watch = tls
        .clone()
        .map(|tls| tls.watch(settings.transport.tls_poll, stop_rx.clone()));
    let incoming = transport::incoming(
        listeners.grpc,
        transport::Accept::grpc(&settings.transport, grpc_cap, tls),
        stop_rx.clone(),
    );
    let (draining, drain_started) = tokio::sync::oneshot::channel::<()>();
    let lost = std::sync::Mutex::new(None::<String>);
    let drain_signal = async {
        tokio::pin!(shutdown);
        tokio::pin!(deaf);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                why = &mut deaf => {
                    tracing::error!(error = %why, "stopping");
                    if let Ok(mut refused) = refused.lock() {
                        *refused = Some(why);
                    }
                    break;
                }
                Some(failure) = failures.recv() => {
                    tracing::error!(
                        task = failure.task,
                        error = %failure.why,
                        critical = failure.critical,
                        "background task failed"
                    );
                    metrics.task_failed(failure.task);
                    if failure.critical {
                        if let Ok(mut lost) = lost.lock() {
                            *lost = Some(format!("the {} failed ({})", failure.task, failure.why));
                        }
                        break;
                    }
                }
            }
        }
        tracing::info!("shutting down: NOT_SERVING, draining calls");
        let _ = stop_tx.send(true);
        health.set(ServingStatus::NotServing).await;
        let _ = draining.send(());
    };
    let t = &settings.transport;
    let routes = tonic::service::Routes::new(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(auth)
        .add_service(ext_authz)
        .prepare();
    let service = tower::ServiceBuilder::new()
        .layer(GrpcMetricsLayer::new(metrics.clone()))
        .service(routes);
    let serving = transport::http2::serve(
        incoming,
        service,
        transport::http2::Http2Settings {
            max_concurrent_streams: t.max_concurrent_streams,
            // A request's data beyond this waits for the handler: a peer cannot park
            // more than a window's worth of bytes per stream, or per connection, in our
            // memory.
            stream_window: STREAM_WINDOW_BYTES,
            connection_window: CONNECTION_WINDOW_BYTES,
            max_header_list: MAX_HEADER_LIST_BYTES,
            keepalive_interval: t.keepalive_interval,
            keepalive_timeout: t.keepalive_timeout,
            max_age: t.max_connection_age,
            age_grace: t.max_connection_age_grace,
            request_timeout: t.request_timeout,
        },
        drain_signal,
    );
    // Draining waits for every call in flight; one that never finishes must not keep
    // the process alive: after the grace period the rest are dropped (cancelled).
    let grace = settings.shutdown_grace;
    let grace_over = async {
        if drain_started.await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        () = serving => {}
        () = grace_over => {
            tracing::warn!(grace = ?grace, "shutdown grace period over: cancelling the calls still in flight");
        }
    }
    // The spans of the calls go out within the grace, whatever the collector does.
    if let Some(traces) = settings.traces.clone() {
        let flushed = tokio::task::spawn_blocking(move || traces.shutdown(grace));
        let _ = tokio::time::timeout(grace, flushed).await;
    }
    // The calls are done (or cancelled): the writer flushes what is queued and ends.
    let _ = writer_stop.send(());
    let _ = monitor.await;
    let _ = touch_task.await;
    if let Some(listener) = change_listener {
        let _ = listener.await;
    }
    let _ = throttle_clean_up.await;
    if let Some(task) = notifier {
        let _ = task.await;
    }
    if let Some(task) = tls_watch {
        let _ = task.await;
    }
    let _ = http_stop.send(());
    if let Some(task) = http_task {
        let _ = task.await;
    }
    if let Some(why) = refused.lock().ok().and_then(|mut r| r.take()) {
        return Err(Error::Config(why));
    }
    if let Some(why) = lost.lock().ok().and_then(|mut l| l.take()) {
        return Err(Error::Runtime(format!("stopped: {why}")));
    }
    Ok(())
}

/// Where the LISTEN connection goes: `--database-listen-url`, else the pool's database;
/// named as the pool's sessions are.
fn listen_target(settings: &ServeSettings, db: &Db) -> crate::db::Target {
    let mut target = settings
        .database_listen
        .clone()
        .unwrap_or_else(|| db.target().clone());
    if let Some(name) = db.config().get_application_name() {
        target.config.application_name(name);
    }
    target
}

/// Reflection over our API, health, and `google.rpc` (so grpcurl can print the
/// `ErrorInfo` detail of an error instead of raw bytes).
fn reflection() -> tonic_reflection::server::Builder<'static> {
    tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(auth_api::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(crate::authz::envoy::FILE_DESCRIPTOR_SET)
}
