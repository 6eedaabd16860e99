//! [`AuthClient`]: the calls of `auth.v1`, each under a deadline with the retry policy,
//! their answers mapped once ([`crate::outcome::classify`]), and `validate` answered
//! from the local cache when it may be.
use std::{
    sync::Arc,
    time::{Duration, SystemTime},
};

use auth_api::v1::{
    LookupCurrentTokenRequest, RenewCurrentTokenRequest, RevokeCurrentTokenRequest,
    ValidateTokenRequest, ValidateTokenResponse, auth_service_client::AuthServiceClient,
};
use tonic::{
    Request, Status,
    metadata::{AsciiMetadataValue, MetadataValue},
};

use crate::{
    cache::{self, CacheSettings, CacheState, LocalCache, watch},
    outcome::{Identity, IdentityData, Outcome, Rejection, RenewOutcome, Unavailable, classify},
    retry::{self, RetryPolicy},
    transport::{self, ConfigError, GrpcChannel, ServerUrl, Transport},
};

/// The default deadline of a call, retries included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(2);

/// How an [`AuthClient`] connects, retries and caches. Every field has a default.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// Timeouts, keepalives and the TLS files (for `https://`).
    pub transport: Transport,
    /// Which failures are retried, and how soon.
    pub retry: RetryPolicy,
    /// The deadline of each call, retries included ([`DEFAULT_DEADLINE`]).
    pub deadline: Duration,
    /// The local cache of `validate` answers, kept correct by the service's
    /// invalidation stream; `None`: every `validate` asks the service, and no stream
    /// is opened.
    pub cache: Option<CacheSettings>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            transport: Transport::default(),
            retry: RetryPolicy::default(),
            deadline: DEFAULT_DEADLINE,
            cache: Some(CacheSettings::default()),
        }
    }
}

struct Inner {
    grpc: AuthServiceClient<GrpcChannel>,
    retry: RetryPolicy,
    cache: Option<Arc<LocalCache>>,
    /// Ends the invalidation watcher with the last clone of the client.
    _watch: Option<watch::Stop>,
}

/// A client of `auth.v1.AuthService`. Cheap to clone: clones share the connections,
/// the cache and its invalidation stream.
#[derive(Clone)]
pub struct AuthClient {
    inner: Arc<Inner>,
    deadline: Duration,
}

impl std::fmt::Debug for AuthClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthClient")
            .field("deadline", &self.deadline)
            .field("cached", &self.inner.cache.is_some())
            .finish_non_exhaustive()
    }
}

impl AuthClient {
    /// A client of the service at `server`, over one balanced channel to every address
    /// its name resolves to, connecting on first use. With a cache, the invalidation
    /// stream runs on a thread of its own, with a connection of its own. Needs a tokio
    /// runtime.
    pub fn connect_lazy(
        server: &ServerUrl,
        options: ClientOptions,
    ) -> Result<AuthClient, ConfigError> {
        let channel = transport::connect_lazy(server, &options.transport)?;
        let (cache, stop) = match options.cache {
            None => (None, None),
            Some(settings) => {
                let cache = Arc::new(LocalCache::new(settings));
                let (server, transport) = (server.clone(), options.transport.clone());
                let fallback = channel.clone();
                // The watcher's own channel, made on its own runtime.
                let stop = watch::spawn_isolated(
                    move || transport::connect_lazy(&server, &transport).unwrap_or(fallback),
                    cache.clone(),
                )
                .map_err(|e| ConfigError::Io(e.to_string()))?;
                (Some(cache), Some(stop))
            }
        };
        Ok(AuthClient::assemble(channel, options, cache, stop))
    }

    /// A client over a channel made elsewhere (an in-memory one in tests, say). With a
    /// cache, the invalidation stream runs on the current runtime, over this channel.
    pub fn with_channel(channel: tonic::transport::Channel, options: ClientOptions) -> AuthClient {
        let channel = transport::boxed(channel);
        let (cache, stop) = match options.cache {
            None => (None, None),
            Some(settings) => {
                let cache = Arc::new(LocalCache::new(settings));
                let stop = watch::spawn(channel.clone(), cache.clone());
                (Some(cache), Some(stop))
            }
        };
        AuthClient::assemble(channel, options, cache, stop)
    }

    fn assemble(
        channel: GrpcChannel,
        options: ClientOptions,
        cache: Option<Arc<LocalCache>>,
        stop: Option<watch::Stop>,
    ) -> AuthClient {
        AuthClient {
            inner: Arc::new(Inner {
                grpc: AuthServiceClient::new(channel),
                retry: options.retry,
                cache,
                _watch: stop,
            }),
            deadline: options.deadline,
        }
    }

    /// The same client with another deadline for its calls.
    pub fn with_deadline(&self, deadline: Duration) -> AuthClient {
        AuthClient {
            inner: self.inner.clone(),
            deadline,
        }
    }

    /// The deadline of each call, retries included.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// What the cache is doing (`None`: the client has no cache).
    pub fn cache_state(&self) -> Option<CacheState> {
        self.inner.cache.as_ref().map(|c| c.state())
    }

    /// The answer for `token` from the cache alone, if it may give one now (`None`: ask
    /// with [`AuthClient::validate`]). Synchronous: the layer's fast path.
    pub fn cached(&self, token: &str) -> Option<Result<Identity, Rejection>> {
        self.inner.cache.as_ref()?.get(&cache::key(token))
    }

    /// `ValidateToken`: who `token` belongs to, from the cache when it may answer, else
    /// from the service (concurrent calls for one token share one request). A token
    /// that is not even shaped like one is refused here, without a request.
    pub async fn validate(&self, token: &str) -> Outcome<Identity> {
        // A hit first: a key found in the cache is the hash of a token that was
        // checked before it was asked about.
        if let Some(answer) = self.cached(token) {
            return Ok(answer);
        }
        self.validate_uncached(token).await
    }

    /// `validate` once the cache could not answer: the shape check, then the service,
    /// one request per token however many ask at once.
    pub(crate) async fn validate_uncached(&self, token: &str) -> Outcome<Identity> {
        if let Err(malformed) = auth_api::token::check_any(token) {
            return Ok(Err(Rejection::from(&malformed)));
        }
        let Some(cache) = &self.inner.cache else {
            return Ok(self
                .validate_remote(token)
                .await?
                .map(|(identity, _)| identity));
        };
        let key = cache::key(token);
        let outcome = cache
            .flights
            .run(key, cache.flight_age(), || async {
                let ticket = cache.ticket();
                let asked_at = SystemTime::now();
                let answer = self.validate_remote(token).await?;
                match &answer {
                    Ok((identity, server_now)) => {
                        let offset = server_now.map_or(0, |now| cache::offset_us(now, asked_at));
                        cache.insert(ticket, key, Ok(identity.clone()), offset);
                    }
                    // Judged by the database: cached, so that a flood of bad tokens does
                    // not reach the service (a creation invalidates an unknown token).
                    Err(
                        rejection @ (Rejection::TokenUnknown
                        | Rejection::TokenExpired
                        | Rejection::TokenRevoked),
                    ) => {
                        cache.insert(ticket, key, Err(rejection.clone()), 0);
                    }
                    Err(_) => {}
                }
                Ok(answer.map(|(identity, _)| identity))
            })
            .await;
        match outcome {
            Err(unavailable) => cache.grace(&key).ok_or(unavailable),
            answer => answer,
        }
    }

    /// `ValidateToken` on the service: the identity and the service's clock.
    async fn validate_remote(&self, token: &str) -> Outcome<(Identity, Option<SystemTime>)> {
        let answer = self
            .call(|mut grpc, left| async move {
                let mut request = Request::new(ValidateTokenRequest {
                    token: token.to_owned(),
                });
                request.set_timeout(left);
                #[cfg(feature = "opentelemetry")]
                propagate(request.metadata_mut());
                grpc.validate_token(request).await
            })
            .await?;
        let r: ValidateTokenResponse = match answer {
            Ok(r) => r,
            Err(rejection) => return Ok(Err(rejection)),
        };
        let identity = Identity::new(IdentityData {
            token_id: r.token_id,
            user_id: r.user_id,
            name: r.name,
            scopes: r.scopes,
            expires_at: time(r.expires_at)?,
        });
        Ok(Ok((identity, time(r.server_time)?)))
    }

    /// `LookupCurrentToken`: who am I, for the caller's own token.
    pub async fn lookup_current(&self, token: &str) -> Outcome<Identity> {
        if let Err(malformed) = auth_api::token::check_any(token) {
            return Ok(Err(Rejection::from(&malformed)));
        }
        let bearer = bearer(token);
        let answer = self
            .call(|mut grpc, left| {
                let request = authorized(LookupCurrentTokenRequest {}, &bearer, left);
                async move { grpc.lookup_current_token(request).await }
            })
            .await?;
        let r = match answer {
            Ok(r) => r,
            Err(rejection) => return Ok(Err(rejection)),
        };
        Ok(Ok(Identity::new(IdentityData {
            token_id: r.token_id,
            user_id: r.user_id,
            name: r.name,
            scopes: r.scopes,
            expires_at: time(r.expires_at)?,
        })))
    }

    /// `RenewCurrentToken`: extends the caller's own token in place when it is due.
    pub async fn renew_current(&self, token: &str) -> Outcome<RenewOutcome> {
        if let Err(malformed) = auth_api::token::check_any(token) {
            return Ok(Err(Rejection::from(&malformed)));
        }
        let bearer = bearer(token);
        let answer = self
            .call(|mut grpc, left| {
                let request = authorized(RenewCurrentTokenRequest {}, &bearer, left);
                async move { grpc.renew_current_token(request).await }
            })
            .await?;
        let r = match answer {
            Ok(r) => r,
            Err(rejection) => return Ok(Err(rejection)),
        };
        if let (true, Some(cache)) = (r.renewed, &self.inner.cache) {
            // The stream says so too; this replica's caller need not wait for it.
            cache.invalidate(&[cache::key(token)]);
        }
        Ok(Ok(RenewOutcome {
            expires_at: time(r.expires_at)?,
            renewed: r.renewed,
            next_renewal_at: time(r.next_renewal_at)?,
        }))
    }

    /// `RevokeCurrentToken`: log out. Returns when the service says it was revoked.
    /// After an outage that was retried, the token may already be revoked by the
    /// attempt that seemed to fail: that answers `TokenRevoked`.
    pub async fn revoke_current(&self, token: &str) -> Outcome<Option<SystemTime>> {
        if let Err(malformed) = auth_api::token::check_any(token) {
            return Ok(Err(Rejection::from(&malformed)));
        }
        let bearer = bearer(token);
        let answer = self
            .call(|mut grpc, left| {
                let request = authorized(RevokeCurrentTokenRequest {}, &bearer, left);
                async move { grpc.revoke_current_token(request).await }
            })
            .await?;
        let r = match answer {
            Ok(r) => r,
            Err(rejection) => return Ok(Err(rejection)),
        };
        if let Some(cache) = &self.inner.cache {
            cache.invalidate(&[cache::key(token)]);
        }
        Ok(Ok(time(r.revoked_at)?))
    }

    /// One call under the deadline and the retry policy; its status mapped.
    async fn call<T, F, Fut>(&self, call: F) -> Outcome<T>
    where
        F: Fn(AuthServiceClient<GrpcChannel>, Duration) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let answered = retry::run(&self.inner.retry, self.deadline, |left| {
            call(self.inner.grpc.clone(), left)
        })
        .await;
        match answered {
            Ok(response) => Ok(Ok(response.into_inner())),
            Err(status) => classify(&status).map(Err),
        }
    }
}

/// `Bearer <token>` as metadata, marked sensitive so that HTTP/2 header compression
/// never indexes it and its `Debug` output is redacted.
fn bearer(token: &str) -> AsciiMetadataValue {
    // A checked token is a prefix plus base62, always a valid header value; the
    // fallback only exists to avoid a panic path.
    let mut value = MetadataValue::try_from(format!("Bearer {token}"))
        .unwrap_or_else(|_| MetadataValue::from_static("Bearer invalid"));
    value.set_sensitive(true);
    value
}

fn authorized<T>(message: T, bearer: &AsciiMetadataValue, left: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request
        .metadata_mut()
        .insert("authorization", bearer.clone());
    // Tells the server the deadline (`grpc-timeout`) so it can give up when we have.
    request.set_timeout(left);
    #[cfg(feature = "opentelemetry")]
    propagate(request.metadata_mut());
    request
}

/// Writes the trace context of the current `tracing` span into `metadata`
/// (`traceparent`, `tracestate`), through the global propagator: nothing when the
/// program set none, or when no span is being traced.
#[cfg(feature = "opentelemetry")]
fn propagate(metadata: &mut tonic::metadata::MetadataMap) {
    use opentelemetry::propagation::Injector;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    struct Metadata<'a>(&'a mut tonic::metadata::MetadataMap);
    impl Injector for Metadata<'_> {
        fn set(&mut self, key: &str, value: String) {
            if let (Ok(key), Ok(value)) = (
                tonic::metadata::MetadataKey::from_bytes(key.as_bytes()),
                AsciiMetadataValue::try_from(value),
            ) {
                self.0.insert(key, value);
            }
        }
    }
    let cx = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| {
        p.inject_context(&cx, &mut Metadata(metadata));
    });
}

/// A wire timestamp as a `SystemTime`; an error when it is not one.
fn time(timestamp: Option<prost_types::Timestamp>) -> Result<Option<SystemTime>, Unavailable> {
    timestamp
        .map(|ts| {
            auth_api::time::from_timestamp(&ts)
                .map(SystemTime::from)
                .ok_or_else(|| {
                    Unavailable::new(
                        tonic::Code::Internal,
                        "the service sent an invalid timestamp",
                    )
                })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn invalid_timestamps_are_an_outage_not_a_panic() {
        let bad = prost_types::Timestamp {
            seconds: i64::MAX,
            nanos: 0,
        };
        assert_eq!(time(Some(bad)).unwrap_err().code(), tonic::Code::Internal);
        assert_eq!(time(None).unwrap(), None);
    }

    #[test]
    fn the_bearer_is_sensitive_and_redacted() {
        let value = bearer("pat_secret");
        assert!(value.is_sensitive());
        assert!(!format!("{value:?}").contains("secret"));
    }

    #[tokio::test]
    async fn what_is_not_a_token_is_refused_without_a_request() {
        // A channel to nowhere: any request would fail as unavailable.
        let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:9").connect_lazy();
        let client = AuthClient::with_channel(channel, ClientOptions::default());
        assert_eq!(
            client.validate("").await,
            Ok(Err(Rejection::MissingCredentials))
        );
        assert_eq!(
            client.validate("hunter2").await,
            Ok(Err(Rejection::TokenMalformed))
        );
        assert_eq!(
            client.lookup_current("pat_x").await,
            Ok(Err(Rejection::TokenMalformed))
        );
    }
}
