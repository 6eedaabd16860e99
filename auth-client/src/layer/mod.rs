//! [`AuthLayer`]: a tower layer that admits a request only with a valid bearer token
//! (and the scopes the route requires), for tonic servers and for axum or hyper
//! services alike.
//!
//! The token is validated through the [`AuthClient`] (so from its cache when it may
//! be); the caller's [`Identity`] goes into the request's extensions, where a tonic
//! handler finds it with `request.extensions().get::<Identity>()` and an axum one with
//! `Extension<Identity>`. A refused request never reaches the service: it gets the
//! answer of [`respond`], gRPC or HTTP by its `content-type`.
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
};

use bytes::Bytes;
use futures_util::{TryFutureExt, future};
use http_body_util::{Either, Full};
use tower::{Layer, Service};

use crate::{
    client::AuthClient,
    outcome::{Identity, Rejection},
};

pub mod bearer;
pub mod respond;

/// Admits requests with a valid token holding every required scope.
///
/// ```no_run
/// # async fn demo(client: auth_client::AuthClient) {
/// use auth_client::AuthLayer;
/// let auth = AuthLayer::new(client);
/// let billing = auth.clone().require_scope("billing:write");
/// # let _ = (auth, billing);
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct AuthLayer {
    client: AuthClient,
    required: Arc<[String]>,
}

impl AuthLayer {
    /// Admits any valid token.
    pub fn new(client: AuthClient) -> AuthLayer {
        AuthLayer {
            client,
            required: Arc::from([]),
        }
    }

    /// Also requires `scope` (every scope required this way must be held).
    pub fn require_scope(self, scope: impl Into<String>) -> AuthLayer {
        let mut required = self.required.to_vec();
        required.push(scope.into());
        AuthLayer {
            client: self.client,
            required: required.into(),
        }
    }
}

impl<S> Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            shared: Arc::new(Shared {
                client: self.client.clone(),
                required: self.required.clone(),
            }),
        }
    }
}

/// The service [`AuthLayer`] wraps around another.
#[derive(Clone, Debug)]
pub struct Authenticated<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// What every request of one protected service needs.
#[derive(Debug)]
struct Shared {
    client: AuthClient,
    required: Arc<[String]>,
}

/// A protected tonic service keeps its name, so that it can be added to a server as it
/// was: `Server::builder().add_service(layer.layer(MyServer::new(svc)))`, each service
/// with its own required scopes.
impl<S: tonic::server::NamedService> tonic::server::NamedService for Authenticated<S> {
    const NAME: &'static str = S::NAME;
}

/// The response body: the service's, or a refusal's.
pub type AuthBody<B> = Either<B, Full<Bytes>>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// An outage fails every request the same way: one line a second says it.
static OUTAGE_LOG: Every = Every::new();

/// At most one `due()` a second, across threads.
struct Every {
    last_secs: AtomicU64,
}

impl Every {
    const fn new() -> Every {
        Every {
            last_secs: AtomicU64::new(0),
        }
    }

    fn due(&self) -> bool {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let last = self.last_secs.load(Ordering::Relaxed);
        now > last
            && self
                .last_secs
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}

/// The future of a protected call: the service's own (admitted from the cache, without
/// an allocation or a clone of the service), a refusal ready at once, or a check that
/// has to ask the service first.
pub type ResponseFuture<F, B, E> = future::Either<
    future::MapOk<F, fn(http::Response<B>) -> http::Response<AuthBody<B>>>,
    future::Either<
        future::Ready<Result<http::Response<AuthBody<B>>, E>>,
        BoxFuture<Result<http::Response<AuthBody<B>>, E>>,
    >,
>;

fn admitted<B>(response: http::Response<B>) -> http::Response<AuthBody<B>> {
    response.map(Either::Left)
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Authenticated<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    ReqBody: Send + 'static,
{
    type Response = http::Response<AuthBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let grpc = respond::is_grpc(request.headers());
        // What can be decided now is: no token, or one the cache answers.
        let decided = match bearer::bearer(request.headers()) {
            Err(rejection) => Some(Err(rejection)),
            Ok(token) => self.shared.client.cached(token),
        };
        match decided {
            Some(Ok(identity)) => match refuse_scopes(&identity, &self.shared.required) {
                None => {
                    request.extensions_mut().insert(identity);
                    let call = self.inner.call(request);
                    future::Either::Left(call.map_ok(admitted as fn(_) -> _))
                }
                Some(rejection) => ready(respond::rejected(grpc, &rejection)),
            },
            Some(Err(rejection)) => ready(refused(grpc, &rejection)),
            None => future::Either::Right(future::Either::Right(self.ask(request, grpc))),
        }
    }
}

impl<S> Authenticated<S> {
    /// The slow path: the cache could not answer, so the service is asked.
    fn ask<ReqBody, ResBody>(
        &mut self,
        mut request: http::Request<ReqBody>,
        grpc: bool,
    ) -> BoxFuture<Result<http::Response<AuthBody<ResBody>>, S::Error>>
    where
        S: Service<http::Request<ReqBody>, Response = http::Response<ResBody>>
            + Clone
            + Send
            + 'static,
        S::Future: Send + 'static,
        ReqBody: Send + 'static,
    {
        // The clone is the one that was not polled ready: keep the ready one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        Box::pin(async move {
            let verdict = match bearer::bearer(request.headers()) {
                Err(rejection) => Ok(Err(rejection)),
                Ok(token) => shared.client.validate_uncached(token).await,
            };
            let refusal = match verdict {
                Ok(Ok(identity)) => match refuse_scopes(&identity, &shared.required) {
                    None => {
                        request.extensions_mut().insert(identity);
                        return inner.call(request).await.map(admitted);
                    }
                    Some(rejection) => respond::rejected(grpc, &rejection),
                },
                Ok(Err(rejection)) => refused(grpc, &rejection),
                Err(outage) => {
                    if OUTAGE_LOG.due() {
                        tracing::warn!(error = %outage, "requests refused: their tokens cannot be checked (said at most once a second)");
                    }
                    respond::unavailable(grpc, &outage)
                }
            };
            Ok(refusal.map(Either::Right))
        })
    }
}

/// `InsufficientScope` for a live token without every required scope.
fn refuse_scopes(identity: &Identity, required: &[String]) -> Option<Rejection> {
    let missing = identity.missing_scopes(required);
    (!missing.is_empty()).then_some(Rejection::InsufficientScope { missing })
}

fn refused(grpc: bool, rejection: &Rejection) -> respond::Refusal {
    tracing::debug!(reason = rejection.as_str(), "request refused");
    respond::rejected(grpc, rejection)
}

fn ready<F, B, E>(refusal: respond::Refusal) -> ResponseFuture<F, B, E> {
    future::Either::Right(future::Either::Left(future::ready(Ok(
        refusal.map(Either::Right)
    ))))
}
