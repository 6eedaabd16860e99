//! Prometheus metrics (prometheus-client), named after the grpc-ecosystem conventions so
//! that existing Grafana dashboards work, plus the service's own `auth_*` families.
//!
//! No label carries a token, a token id or a user id, and every label takes one of a
//! fixed set of values (unknown gRPC methods are folded into `unknown`), so a client
//! cannot grow the metric set.
use auth_api::ErrorReason;
use std::{sync::atomic::AtomicU64, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::Registry,
};

pub(crate) mod grpc;

/// Buckets of `grpc_server_handling_seconds`: from 100 µs (a cached validation) to 10 s
/// (past the default database timeout).
const HANDLING_BUCKETS: [f64; 15] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

/// `grpc_type`, `grpc_service`, `grpc_method`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GrpcLabels {
    pub(crate) grpc_type: &'static str,
    pub(crate) grpc_service: &'static str,
    pub(crate) grpc_method: &'static str,
}

/// [`GrpcLabels`] and `grpc_code` (as grpc-go spells it: `OK`, `Unauthenticated`, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct GrpcCodeLabels {
    pub(crate) grpc_type: &'static str,
    pub(crate) grpc_service: &'static str,
    pub(crate) grpc_method: &'static str,
    pub(crate) grpc_code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ReasonLabel {
    pub(crate) reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub(crate) result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TaskLabel {
    pub(crate) task: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct CauseLabel {
    pub(crate) cause: &'static str,
}

/// `http_route`, `http_request_method`, `http_response_status_code`, as OpenTelemetry's
/// HTTP server metric names them.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct HttpLabels {
    pub(crate) http_route: &'static str,
    pub(crate) http_request_method: &'static str,
    pub(crate) http_response_status_code: u16,
}

/// `adapter` and `decision`, for `auth_authz_decisions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DecisionLabels {
    pub(crate) adapter: &'static str,
    pub(crate) decision: &'static str,
}

/// How one expiry-notice delivery attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NoticeResult {
    Sent,
    /// Failed; it will be tried again.
    Retried,
    /// Failed for the last time: given up.
    Failed,
}

/// Which proxy adapter decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Adapter {
    ExtAuthz,
    ForwardAuth,
}

/// What a proxy adapter answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// The request may pass.
    Allow,
    /// A credential problem (401).
    Unauthenticated,
    /// A required scope is missing (403).
    Forbidden,
    /// The asking proxy is not allowed to ask.
    CallerNotAllowed,
    /// No answer: the database is unavailable (or a bug).
    Unavailable,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StateLabel {
    pub(crate) state: &'static str,
}

type HistogramFamily = Family<GrpcLabels, Histogram, fn() -> Histogram>;

fn handling_histogram() -> Histogram {
    Histogram::new(HANDLING_BUCKETS)
}

/// How a renewal ended, for `auth_token_renewals_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RenewalResult {
    /// This call extended the expiry.
    Renewed,
    /// The token did not need extending.
    Noop,
    /// A concurrent call extended it first.
    LostRace,
    /// Answered from a concurrent renewal of the same token in this process.
    Coalesced,
}

/// Why a cache entry left, for `auth_cache_evictions_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Eviction {
    /// A change notification (or this replica's own renew or revoke).
    Notify,
    /// The change listener was lost: everything goes.
    Flush,
    /// Older than `--cache-ttl`.
    Ttl,
    /// Over `--cache-capacity`.
    Capacity,
}

/// Why a lookup went to the database although the cache is on, for
/// `auth_cache_bypasses_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Bypass {
    /// The listening connection is down (or not yet listening).
    NotListening,
    /// The newest heard heartbeat is older than `--cache-max-staleness`.
    Stale,
}

/// The database connections at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct DbState {
    /// The exclusive request pool.
    pub pool: deadpool_postgres::Status,
    /// Every session the replica holds open: pools, probe, LISTEN, heartbeat.
    pub open_connections: usize,
    /// `--db-max-connections`.
    pub max_connections: usize,
}

/// The cache and its listener at scrape time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CacheState {
    pub(crate) enabled: bool,
    pub(crate) entries: u64,
    pub(crate) listening: bool,
    /// Now minus the send time of the newest heard heartbeat (none heard on this
    /// connection: since the process started).
    pub(crate) lag: Duration,
    /// Since the newest heartbeat was heard (or the connection began listening; never:
    /// since the process started).
    pub(crate) since_heard: Duration,
    /// The LISTEN and heartbeat connections open now.
    pub(crate) connections: usize,
    /// The entries' estimated bytes (each at least its share of the count bound).
    pub(crate) bytes: u64,
}

/// Buckets of `auth_cache_heartbeat_delay_seconds`: from 100 µs to past the default
/// bound of 250 ms.
const HEARTBEAT_BUCKETS: [f64; 12] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

type FloatGauge = Gauge<f64, AtomicU64>;

/// The handles of one known gRPC method, resolved once: the hot path then increments
/// them without hashing labels or taking the family's lock.
struct MethodHandles {
    labels: GrpcLabels,
    started: Counter,
    seconds: Histogram,
}

/// Every metric the service exports, and the registry that encodes them.
pub struct Metrics {
    registry: Registry,
    methods: Vec<MethodHandles>,
    cache_hits: Counter,
    cache_misses: Counter,
    grpc_started: Family<GrpcLabels, Counter>,
    grpc_handled: Family<GrpcCodeLabels, Counter>,
    grpc_seconds: HistogramFamily,
    rejections: Family<ReasonLabel, Counter>,
    renewals: Family<ResultLabel, Counter>,
    authz_decisions: Family<DecisionLabels, Counter>,
    notices: Family<ResultLabel, Counter>,
    notify_scans: Family<ResultLabel, Counter>,
    tls_reloads: Family<ResultLabel, Counter>,
    cache_requests: Family<ResultLabel, Counter>,
    cache_entries: Gauge,
    cache_bytes: Gauge,
    cache_evictions: Family<CauseLabel, Counter>,
    cache_bypass_stale: Counter,
    cache_bypass_not_listening: Counter,
    cache_listening: Gauge,
    listener_lag: FloatGauge,
    heartbeat_age: FloatGauge,
    heartbeat_delay: Histogram,
    pool_connections: Family<StateLabel, Gauge>,
    pool_waiting: Gauge,
    pool_max: Gauge,
    db_connections: Gauge,
    db_max_connections: Gauge,
    db_up: Gauge,
    shed: Family<CauseLabel, Counter>,
    http_seconds: Family<HttpLabels, Histogram, fn() -> Histogram>,
    task_failures: Family<TaskLabel, Counter>,
    otel_dropped: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let m = Metrics {
            methods: Vec::new(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            grpc_started: Family::default(),
            grpc_handled: Family::default(),
            grpc_seconds: Family::new_with_constructor(handling_histogram),
            rejections: Family::default(),
            renewals: Family::default(),
            authz_decisions: Family::default(),
            notices: Family::default(),
            notify_scans: Family::default(),
            tls_reloads: Family::default(),
            cache_requests: Family::default(),
            cache_entries: Gauge::default(),
            cache_bytes: Gauge::default(),
            cache_evictions: Family::default(),
            cache_bypass_stale: Counter::default(),
            cache_bypass_not_listening: Counter::default(),
            cache_listening: Gauge::default(),
            listener_lag: FloatGauge::default(),
            heartbeat_age: FloatGauge::default(),
            heartbeat_delay: Histogram::new(HEARTBEAT_BUCKETS),
            pool_connections: Family::default(),
            pool_waiting: Gauge::default(),
            pool_max: Gauge::default(),
            db_connections: Gauge::default(),
            db_max_connections: Gauge::default(),
            db_up: Gauge::default(),
            shed: Family::default(),
            http_seconds: Family::new_with_constructor(handling_histogram),
            task_failures: Family::default(),
            otel_dropped: Counter::default(),
            registry: Registry::default(),
        };
        registry.register(
            "grpc_server_started",
            "Total number of RPCs started on the server",
            m.grpc_started.clone(),
        );
        registry.register(
            "grpc_server_handled",
            "Total number of RPCs completed on the server, regardless of success or failure",
            m.grpc_handled.clone(),
        );
        registry.register(
            "grpc_server_handling_seconds",
            "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server",
            m.grpc_seconds.clone(),
        );
        registry.register(
            "auth_token_rejections",
            "Credentials refused, by ErrorInfo reason",
            m.rejections.clone(),
        );
        registry.register(
            "auth_token_renewals",
            "RenewCurrentToken calls that reached the database, by result",
            m.renewals.clone(),
        );
        registry.register(
            "auth_authz_decisions",
            "Answers of the proxy adapters (ext_authz Check, forward-auth), by decision",
            m.authz_decisions.clone(),
        );
        registry.register(
            "auth_notify_deliveries",
            "Expiry-notice webhook attempts, by result (sent, retried, failed: given up)",
            m.notices.clone(),
        );
        registry.register(
            "auth_notify_scans",
            "Expiry-notice scans for due tokens, counted once each has claimed what was due \
             and started its deliveries, by result (ok, failed: the database did not answer)",
            m.notify_scans.clone(),
        );
        registry.register(
            "auth_tls_reloads",
            "Reloads of the gRPC port's TLS files (SIGHUP or a change on disk), by result \
             (reloaded, refused: unreadable or a key that does not match; the previous \
             certificate stays in use)",
            m.tls_reloads.clone(),
        );
        registry.register(
            "auth_cache_requests",
            "Token lookups answered from the in-process cache (hit) or the database (miss)",
            m.cache_requests.clone(),
        );
        registry.register(
            "auth_cache_entries",
            "Token lookups held in the in-process cache",
            m.cache_entries.clone(),
        );
        registry.register(
            "auth_cache_bytes",
            "The cached entries' estimated bytes, as --cache-max-bytes counts them (each \
             entry at least its share of --cache-capacity)",
            m.cache_bytes.clone(),
        );
        registry.register(
            "auth_cache_evictions",
            "Cache entries removed, by cause",
            m.cache_evictions.clone(),
        );
        let bypasses = Family::<CauseLabel, Counter>::default();
        registry.register(
            "auth_cache_bypasses",
            "Lookups that went to the database although the cache is on, by cause: the \
             listener is down (not_listening) or its newest heartbeat is older than \
             --cache-max-staleness (stale)",
            bypasses.clone(),
        );
        registry.register(
            "auth_cache_listening",
            "1 while the change listener is listening (entries may be served once a \
             heartbeat is heard), 0 otherwise",
            m.cache_listening.clone(),
        );
        registry.register_with_unit(
            "auth_cache_listener_lag",
            "Now minus the send time of the newest heartbeat the change listener heard \
             (none heard on this connection: since the process started); entries are served only while it is below \
             --cache-max-staleness",
            prometheus_client::registry::Unit::Seconds,
            m.listener_lag.clone(),
        );
        registry.register_with_unit(
            "auth_cache_heartbeat_age",
            "Time since the change listener last heard a heartbeat (or began listening)",
            prometheus_client::registry::Unit::Seconds,
            m.heartbeat_age.clone(),
        );
        registry.register_with_unit(
            "auth_cache_heartbeat_delay",
            "From sending a heartbeat NOTIFY to hearing it on the listening connection",
            prometheus_client::registry::Unit::Seconds,
            m.heartbeat_delay.clone(),
        );
        registry.register(
            "auth_db_pool_connections",
            "Pooled database connections, by state",
            m.pool_connections.clone(),
        );
        registry.register(
            "auth_db_pool_waiting",
            "Calls waiting for a pooled database connection",
            m.pool_waiting.clone(),
        );
        registry.register(
            "auth_db_pool_max_connections",
            "Most connections of the exclusive request pool",
            m.pool_max.clone(),
        );
        registry.register(
            "auth_db_connections",
            "PostgreSQL sessions this replica holds open, of every kind (pools, health \
             probe, LISTEN, heartbeat)",
            m.db_connections.clone(),
        );
        registry.register(
            "auth_db_max_connections",
            "The most sessions this replica opens (--db-max-connections)",
            m.db_max_connections.clone(),
        );
        registry.register_with_unit(
            "http_server_request_duration",
            "Requests on the HTTP port (forward-auth, metrics, probes), by route, method and \
             status, from the request to the response's head",
            prometheus_client::registry::Unit::Seconds,
            m.http_seconds.clone(),
        );
        registry.register(
            "auth_background_task_failures",
            "Background tasks that panicked or ended while the server was not stopping, by \
             task",
            m.task_failures.clone(),
        );
        for task in [
            "token-change listener",
            "health monitor",
            "last-used writer",
            "expiry notifier",
        ] {
            let _ = m.task_failures.get_or_create(&TaskLabel { task });
        }
        registry.register(
            "auth_otel_spans_dropped",
            "Spans lost on the way to the trace collector (in batches it refused or never \
             answered)",
            m.otel_dropped.clone(),
        );
        registry.register(
            "auth_db_shed",
            "Calls refused at once with UNAVAILABLE and a retry delay instead of queued, by \
             cause: the pool's queue is full (queue), the token has --db-max-per-token \
             operations in flight (token), too many calls wait for one token's coalesced \
             answer (waiters)",
            m.shed.clone(),
        );
        registry.register(
            "auth_db_up",
            "1 while the database answers the health probe, 0 otherwise",
            m.db_up.clone(),
        );
        registry.register_collector(Box::new(auth_telemetry::process::ProcessMetrics));
        registry.register(
            "auth_build",
            "The running build",
            Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
        );
        // Every series of the bounded families from the start, at 0: rules and
        // dashboards see them before the first event (and `rate()` has a baseline).
        for reason in [
            ErrorReason::MissingCredentials,
            ErrorReason::TokenMalformed,
            ErrorReason::TokenUnknown,
            ErrorReason::TokenExpired,
            ErrorReason::TokenRevoked,
        ] {
            let _ = m.rejections.get_or_create(&ReasonLabel {
                reason: reason.as_str_name(),
            });
        }
        for result in ["renewed", "noop", "lost_race", "coalesced"] {
            let _ = m.renewals.get_or_create(&ResultLabel { result });
        }
        for result in ["sent", "retried", "failed"] {
            let _ = m.notices.get_or_create(&ResultLabel { result });
        }
        for cause in ["notify", "flush", "ttl", "capacity"] {
            let _ = m.cache_evictions.get_or_create(&CauseLabel { cause });
        }
        for cause in ["queue", "token", "waiters"] {
            let _ = m.shed.get_or_create(&CauseLabel { cause });
        }
        for adapter in ["ext_authz", "forward_auth"] {
            for decision in [
                "allow",
                "unauthenticated",
                "forbidden",
                "caller_not_allowed",
                "unavailable",
            ] {
                let _ = m
                    .authz_decisions
                    .get_or_create(&DecisionLabels { adapter, decision });
            }
        }
        let methods = grpc::methods()
            .map(|labels| MethodHandles {
                started: m.grpc_started.get_or_create_owned(&labels),
                seconds: m.grpc_seconds.get_or_create_owned(&labels),
                labels,
            })
            .collect();
        let cache_hits = m
            .cache_requests
            .get_or_create_owned(&ResultLabel { result: "hit" });
        let cache_misses = m
            .cache_requests
            .get_or_create_owned(&ResultLabel { result: "miss" });
        Metrics {
            registry,
            methods,
            cache_hits,
            cache_misses,
            cache_bypass_stale: bypasses.get_or_create_owned(&CauseLabel { cause: "stale" }),
            cache_bypass_not_listening: bypasses.get_or_create_owned(&CauseLabel {
                cause: "not_listening",
            }),
            ..m
        }
    }

    /// Registers the database's statement latency (see [`crate::db::StatementSeconds`])
    /// as `auth_db_statement_duration_seconds{statement}`.
    pub(crate) fn register_db(&mut self, db: &crate::db::Db) {
        self.register_statements(db.statement_seconds().clone());
        self.registry.register(
            "auth_db_lookups",
            "Tokens looked up in the database on cache misses (a batched statement counts \
             each distinct token it read)",
            db.lookups().clone(),
        );
    }

    /// Registers the statement histograms alone (tests of the database layer).
    pub fn register_statements(&mut self, family: crate::db::StatementSeconds) {
        self.registry.register_with_unit(
            "auth_db_statement_duration",
            "Database statements, from sending one to its last row, by statement name",
            prometheus_client::registry::Unit::Seconds,
            family,
        );
    }

    /// An RPC to the method numbered `method` (see [`grpc::method`]) started.
    pub(crate) fn grpc_started(&self, method: usize) {
        if let Some(m) = self.methods.get(method) {
            m.started.inc();
        }
    }

    /// An RPC to the method numbered `method` finished with `code` after `seconds`.
    pub(crate) fn grpc_handled(&self, method: usize, code: &'static str, seconds: f64) {
        let Some(m) = self.methods.get(method) else {
            return;
        };
        self.grpc_handled
            .get_or_create(&GrpcCodeLabels {
                grpc_type: m.labels.grpc_type,
                grpc_service: m.labels.grpc_service,
                grpc_method: m.labels.grpc_method,
                grpc_code: code,
            })
            .inc();
        m.seconds.observe(seconds);
    }

    /// A credential was refused.
    pub(crate) fn rejected(&self, reason: ErrorReason) {
        self.rejections
            .get_or_create(&ReasonLabel {
                reason: reason.as_str_name(),
            })
            .inc();
    }

    pub(crate) fn renewal(&self, result: RenewalResult) {
        let result = match result {
            RenewalResult::Renewed => "renewed",
            RenewalResult::Noop => "noop",
            RenewalResult::LostRace => "lost_race",
            RenewalResult::Coalesced => "coalesced",
        };
        self.renewals.get_or_create(&ResultLabel { result }).inc();
    }

    /// A proxy adapter answered.
    pub(crate) fn authz_decision(&self, adapter: Adapter, decision: Decision) {
        let adapter = match adapter {
            Adapter::ExtAuthz => "ext_authz",
            Adapter::ForwardAuth => "forward_auth",
        };
        let decision = match decision {
            Decision::Allow => "allow",
            Decision::Unauthenticated => "unauthenticated",
            Decision::Forbidden => "forbidden",
            Decision::CallerNotAllowed => "caller_not_allowed",
            Decision::Unavailable => "unavailable",
        };
        self.authz_decisions
            .get_or_create(&DecisionLabels { adapter, decision })
            .inc();
    }

    /// An expiry-notice delivery attempt ended.
    pub(crate) fn notice(&self, result: NoticeResult) {
        let result = match result {
            NoticeResult::Sent => "sent",
            NoticeResult::Retried => "retried",
            NoticeResult::Failed => "failed",
        };
        self.notices.get_or_create(&ResultLabel { result }).inc();
    }

    /// An expiry-notice scan ended (`ok`: its claimed notices are on their way).
    pub(crate) fn notify_scan(&self, ok: bool) {
        let result = if ok { "ok" } else { "failed" };
        self.notify_scans
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// The TLS files were read again (`reloaded`: new handshakes use them).
    pub(crate) fn tls_reload(&self, reloaded: bool) {
        let result = if reloaded { "reloaded" } else { "refused" };
        self.tls_reloads
            .get_or_create(&ResultLabel { result })
            .inc();
    }

    /// A cache lookup (`hit`: answered from memory).
    pub(crate) fn cache_request(&self, hit: bool) {
        if hit {
            self.cache_hits.inc();
        } else {
            self.cache_misses.inc();
        }
    }

    /// A lookup bypassed the cache.
    pub(crate) fn cache_bypassed(&self, cause: Bypass) {
        match cause {
            Bypass::Stale => self.cache_bypass_stale.inc(),
            Bypass::NotListening => self.cache_bypass_not_listening.inc(),
        };
    }

    /// A heartbeat was heard `delay` after it was sent.
    pub(crate) fn heartbeat_delay(&self, delay: Duration) {
        self.heartbeat_delay.observe(delay.as_secs_f64());
    }

    /// `n` entries left the cache for `cause`.
    pub(crate) fn evicted(&self, cause: Eviction, n: u64) {
        let cause = match cause {
            Eviction::Notify => "notify",
            Eviction::Flush => "flush",
            Eviction::Ttl => "ttl",
            Eviction::Capacity => "capacity",
        };
        self.cache_evictions
            .get_or_create(&CauseLabel { cause })
            .inc_by(n);
    }

    /// A request on the HTTP port was answered.
    pub(crate) fn http_request(
        &self,
        route: &'static str,
        method: &http::Method,
        status: http::StatusCode,
        took: Duration,
    ) {
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::POST => "POST",
            http::Method::HEAD => "HEAD",
            http::Method::PUT => "PUT",
            http::Method::DELETE => "DELETE",
            http::Method::OPTIONS => "OPTIONS",
            http::Method::PATCH => "PATCH",
            _ => "_OTHER",
        };
        self.http_seconds
            .get_or_create(&HttpLabels {
                http_route: route,
                http_request_method: method,
                http_response_status_code: status.as_u16(),
            })
            .observe(took.as_secs_f64());
    }

    /// A background task failed.
    pub(crate) fn task_failed(&self, task: &'static str) {
        self.task_failures.get_or_create(&TaskLabel { task }).inc();
    }

    /// The trace exporter has lost `total` spans so far.
    pub(crate) fn otel_dropped(&self, total: u64) {
        let counted = self.otel_dropped.get();
        if total > counted {
            self.otel_dropped.inc_by(total - counted);
        }
    }

    /// A call was shed.
    pub(crate) fn shed(&self, cause: crate::error::Shed) {
        self.shed
            .get_or_create(&CauseLabel {
                cause: cause.as_str(),
            })
            .inc();
    }

    /// The health probe's verdict.
    pub(crate) fn db_up(&self, up: bool) {
        self.db_up.set(i64::from(up));
    }

    /// Sets the gauges that are read at scrape time, then encodes everything in the
    /// OpenMetrics text format.
    pub fn encode(&self, db: &DbState, cache: &CacheState) -> String {
        let pool = &db.pool;
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.pool_max.set(gauge(pool.max_size));
        self.db_connections.set(gauge(db.open_connections));
        self.db_max_connections.set(gauge(db.max_connections));
        let in_use = pool.size.saturating_sub(pool.available);
        self.pool_connections
            .get_or_create(&StateLabel { state: "idle" })
            .set(i64::try_from(pool.available).unwrap_or(i64::MAX));
        self.pool_connections
            .get_or_create(&StateLabel { state: "in_use" })
            .set(i64::try_from(in_use).unwrap_or(i64::MAX));
        self.pool_waiting
            .set(i64::try_from(pool.waiting).unwrap_or(i64::MAX));
        self.cache_entries
            .set(i64::try_from(cache.entries).unwrap_or(i64::MAX));
        self.cache_listening.set(i64::from(cache.listening));
        self.cache_bytes
            .set(i64::try_from(cache.bytes).unwrap_or(i64::MAX));
        self.listener_lag.set(cache.lag.as_secs_f64());
        self.heartbeat_age.set(cache.since_heard.as_secs_f64());
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(size: usize, available: usize, waiting: usize) -> DbState {
        DbState {
            pool: deadpool_postgres::Status {
                max_size: 16,
                size,
                available,
                waiting,
            },
            open_connections: 9,
            max_connections: 12,
        }
    }

    #[test]
    fn names_follow_the_grpc_ecosystem_conventions() {
        let m = Metrics::new();
        let validate = grpc::method("/auth.v1.AuthService/ValidateToken");
        m.grpc_started(validate);
        m.grpc_handled(validate, "Unauthenticated", 0.0003);
        m.rejected(ErrorReason::TokenRevoked);
        m.renewal(RenewalResult::LostRace);
        m.cache_request(true);
        m.evicted(Eviction::Flush, 3);
        m.db_up(true);
        let cache = CacheState {
            enabled: true,
            entries: 7,
            listening: true,
            lag: Duration::from_millis(30),
            since_heard: Duration::from_secs(2),
            connections: 2,
            bytes: 4096,
        };
        m.cache_bypassed(Bypass::NotListening);
        m.heartbeat_delay(Duration::from_micros(700));
        let text = m.encode(&pool(4, 1, 2), &cache);
        for line in [
            r#"grpc_server_started_total{grpc_type="unary",grpc_service="auth.v1.AuthService",grpc_method="ValidateToken"} 1"#,
            r#"grpc_server_handled_total{grpc_type="unary",grpc_service="auth.v1.AuthService",grpc_method="ValidateToken",grpc_code="Unauthenticated"} 1"#,
            r#"grpc_server_handling_seconds_bucket{le="0.0005",grpc_type="unary",grpc_service="auth.v1.AuthService",grpc_method="ValidateToken"} 1"#,
            r#"auth_token_rejections_total{reason="TOKEN_REVOKED"} 1"#,
            r#"auth_token_renewals_total{result="lost_race"} 1"#,
            r#"auth_cache_requests_total{result="hit"} 1"#,
            r#"auth_cache_evictions_total{cause="flush"} 3"#,
            r#"auth_cache_entries 7"#,
            r#"auth_cache_bytes 4096"#,
            r#"auth_cache_bypasses_total{cause="not_listening"} 1"#,
            r#"auth_cache_bypasses_total{cause="stale"} 0"#,
            r#"auth_cache_listening 1"#,
            r#"auth_cache_listener_lag_seconds 0.03"#,
            r#"auth_cache_heartbeat_age_seconds 2.0"#,
            r#"auth_cache_heartbeat_delay_seconds_bucket{le="0.001"} 1"#,
            r#"auth_db_pool_connections{state="idle"} 1"#,
            r#"auth_db_pool_connections{state="in_use"} 3"#,
            r#"auth_db_pool_waiting 2"#,
            r#"auth_db_up 1"#,
            r#"auth_db_connections 9"#,
            r#"auth_db_max_connections 12"#,
            r#"auth_db_pool_max_connections 16"#,
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line}\n{text}");
        }
        assert!(text.contains("auth_build_info{version=\""), "{text}");
        assert!(text.ends_with("# EOF\n"));
    }
}
