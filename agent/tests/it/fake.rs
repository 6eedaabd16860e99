//! A scripted, in-process `auth.v1.AuthService`: it records every call in order (with the
//! bearer token and the time) and answers from per-RPC queues, then from a steady reply.
//! It serves on 127.0.0.1:0 for real-time tests, or in memory for paused-time tests.
use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use auth_agent::{Clock, SystemClock};
use auth_api::v1::{
    LookupCurrentTokenRequest, LookupCurrentTokenResponse, RenewCurrentTokenRequest,
    RenewCurrentTokenResponse, RevokeCurrentTokenRequest, RevokeCurrentTokenResponse,
    ValidateTokenRequest, ValidateTokenResponse, WatchTokenInvalidationsRequest,
    WatchTokenInvalidationsResponse,
    auth_service_server::{AuthService, AuthServiceServer},
};
use hyper_util::rt::TokioIo;
use tokio::sync::{mpsc, watch};
use tonic::{
    Code, Request, Response, Status,
    transport::{Channel, Endpoint, Server, Uri},
};
use tonic_types::{ErrorDetails, StatusExt};

pub const DAY: Duration = Duration::from_secs(86_400);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    Renew,
    Lookup,
    Revoke,
    Validate,
}

#[derive(Debug, Clone)]
pub struct Call {
    pub rpc: Rpc,
    /// The bearer token, as sent.
    pub token: Option<String>,
    /// Tokio time (paused in the timing tests).
    pub at: tokio::time::Instant,
    /// The fake's wall clock.
    pub wall: SystemTime,
}

/// An answer, computed at call time from the fake's wall clock.
pub type Responder<T> = Arc<dyn Fn(SystemTime) -> Result<T, Status> + Send + Sync>;

struct Queue<T> {
    next: VecDeque<Responder<T>>,
    steady: Responder<T>,
}

impl<T> Queue<T> {
    fn take(&mut self) -> Responder<T> {
        self.next.pop_front().unwrap_or_else(|| self.steady.clone())
    }
}

struct Inner {
    clock: Arc<dyn Clock>,
    calls: Mutex<Vec<Call>>,
    count: watch::Sender<usize>,
    renew: Mutex<Queue<RenewCurrentTokenResponse>>,
    lookup: Mutex<Queue<LookupCurrentTokenResponse>>,
    revoke: Mutex<Queue<RevokeCurrentTokenResponse>>,
    /// When set, any other token is refused with the paired reason.
    accepted: Mutex<Option<(HashSet<String>, &'static str)>>,
}

#[derive(Clone)]
pub struct Fake(Arc<Inner>);

impl Fake {
    /// A server that renews (90 days, next renewal at 83) and identifies everyone as alice.
    pub fn new() -> Fake {
        Fake::with_clock(Arc::new(SystemClock))
    }

    pub fn with_clock(clock: Arc<dyn Clock>) -> Fake {
        Fake(Arc::new(Inner {
            clock,
            calls: Mutex::new(Vec::new()),
            count: watch::Sender::new(0),
            renew: Mutex::new(Queue {
                next: VecDeque::new(),
                steady: renewed(90 * DAY, Some(83 * DAY)),
            }),
            lookup: Mutex::new(Queue {
                next: VecDeque::new(),
                steady: identity("alice", "laptop", Some(90 * DAY)),
            }),
            revoke: Mutex::new(Queue {
                next: VecDeque::new(),
                steady: Arc::new(|now| {
                    Ok(RevokeCurrentTokenResponse {
                        revoked_at: Some(now.into()),
                    })
                }),
            }),
            accepted: Mutex::new(None),
        }))
    }

    /// Answers the next renewals with these, in order.
    pub fn renew_then(
        &self,
        replies: impl IntoIterator<Item = Responder<RenewCurrentTokenResponse>>,
    ) {
        self.0.renew.lock().unwrap().next.extend(replies);
    }

    /// Answers every renewal (after the queued ones) with this.
    pub fn renew_always(&self, reply: Responder<RenewCurrentTokenResponse>) {
        self.0.renew.lock().unwrap().steady = reply;
    }

    pub fn lookup_always(&self, reply: Responder<LookupCurrentTokenResponse>) {
        self.0.lookup.lock().unwrap().steady = reply;
    }

    pub fn revoke_always(&self, reply: Responder<RevokeCurrentTokenResponse>) {
        self.0.revoke.lock().unwrap().steady = reply;
    }

    /// Accepts only `tokens`; every other call fails UNAUTHENTICATED with `reason`.
    pub fn accept_only(&self, tokens: &[&str], reason: &'static str) {
        *self.0.accepted.lock().unwrap() =
            Some((tokens.iter().map(|t| t.to_string()).collect(), reason));
    }

    pub fn calls(&self) -> Vec<Call> {
        self.0.calls.lock().unwrap().clone()
    }

    pub fn rpcs(&self) -> Vec<Rpc> {
        self.calls().iter().map(|c| c.rpc).collect()
    }

    /// Waits until at least `n` calls have arrived.
    pub async fn wait_for_calls(&self, n: usize) -> Vec<Call> {
        let mut count = self.0.count.subscribe();
        count.wait_for(|c| *c >= n).await.unwrap();
        self.calls()
    }

    /// Serves on 127.0.0.1:0; returns the URL.
    pub async fn serve_tcp(&self) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let service = AuthServiceServer::new(self.clone());
        tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        format!("http://{addr}")
    }

    /// Serves over in-memory pipes; returns a channel to it. Under paused time this is
    /// what keeps calls deterministic: nothing waits on the I/O driver, so tokio never
    /// auto-advances the clock while a call is in flight.
    pub fn serve_in_memory(&self) -> Channel {
        let (tx, rx) = mpsc::channel::<std::io::Result<tokio::io::DuplexStream>>(8);
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let service = AuthServiceServer::new(self.clone());
        tokio::spawn(
            Server::builder()
                .add_service(service)
                .serve_with_incoming(incoming),
        );
        Endpoint::from_static("http://fake.in-memory").connect_with_connector_lazy(
            tower::service_fn(move |_: Uri| {
                let tx = tx.clone();
                async move {
                    let (client, server) = tokio::io::duplex(64 * 1024);
                    tx.send(Ok(server))
                        .await
                        .map_err(|_| std::io::Error::other("fake server stopped"))?;
                    Ok::<_, std::io::Error>(TokioIo::new(client))
                }
            }),
        )
    }

    fn record<T>(&self, rpc: Rpc, request: &Request<T>) -> Result<(), Status> {
        let token = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        let call = Call {
            rpc,
            token: token.clone(),
            at: tokio::time::Instant::now(),
            wall: self.0.clock.now(),
        };
        self.0.calls.lock().unwrap().push(call);
        self.0.count.send_modify(|c| *c += 1);
        let Some(token) = token else {
            return Err(unauthenticated("MISSING_CREDENTIALS"));
        };
        match &*self.0.accepted.lock().unwrap() {
            Some((tokens, reason)) if !tokens.contains(&token) => Err(unauthenticated(reason)),
            _ => Ok(()),
        }
    }
}

#[tonic::async_trait]
impl AuthService for Fake {
    async fn renew_current_token(
        &self,
        request: Request<RenewCurrentTokenRequest>,
    ) -> Result<Response<RenewCurrentTokenResponse>, Status> {
        self.record(Rpc::Renew, &request)?;
        let reply = self.0.renew.lock().unwrap().take();
        reply(self.0.clock.now()).map(Response::new)
    }

    async fn validate_token(
        &self,
        request: Request<ValidateTokenRequest>,
    ) -> Result<Response<ValidateTokenResponse>, Status> {
        self.record(Rpc::Validate, &request)?;
        Err(Status::unimplemented("the agent never validates"))
    }

    async fn lookup_current_token(
        &self,
        request: Request<LookupCurrentTokenRequest>,
    ) -> Result<Response<LookupCurrentTokenResponse>, Status> {
        self.record(Rpc::Lookup, &request)?;
        let reply = self.0.lookup.lock().unwrap().take();
        reply(self.0.clock.now()).map(Response::new)
    }

    async fn revoke_current_token(
        &self,
        request: Request<RevokeCurrentTokenRequest>,
    ) -> Result<Response<RevokeCurrentTokenResponse>, Status> {
        self.record(Rpc::Revoke, &request)?;
        let reply = self.0.revoke.lock().unwrap().take();
        reply(self.0.clock.now()).map(Response::new)
    }

    type WatchTokenInvalidationsStream = std::pin::Pin<
        Box<
            dyn tokio_stream::Stream<Item = Result<WatchTokenInvalidationsResponse, Status>> + Send,
        >,
    >;

    async fn watch_token_invalidations(
        &self,
        _request: Request<WatchTokenInvalidationsRequest>,
    ) -> Result<Response<Self::WatchTokenInvalidationsStream>, Status> {
        Err(Status::unimplemented("the agent never watches"))
    }
}

/// UNAUTHENTICATED with the service's ErrorInfo.
pub fn unauthenticated(reason: &str) -> Status {
    let details = ErrorDetails::with_error_info(reason, "auth.v1", HashMap::new());
    Status::with_error_details(
        Code::Unauthenticated,
        format!("token refused: {reason}"),
        details,
    )
}

/// Always fails with `status`.
pub fn fail<T>(status: Status) -> Responder<T> {
    Arc::new(move |_| Err(status.clone()))
}

/// A renewal that extended the expiry to now + `expires_in`.
pub fn renewed(
    expires_in: Duration,
    next_in: Option<Duration>,
) -> Responder<RenewCurrentTokenResponse> {
    renew_answer(Some(expires_in), true, next_in)
}

/// A renewal that was a no-op.
pub fn not_renewed(
    expires_in: Duration,
    next_in: Option<Duration>,
) -> Responder<RenewCurrentTokenResponse> {
    renew_answer(Some(expires_in), false, next_in)
}

/// A token that never expires.
pub fn never_expires() -> Responder<RenewCurrentTokenResponse> {
    renew_answer(None, false, None)
}

fn renew_answer(
    expires_in: Option<Duration>,
    renewed: bool,
    next_in: Option<Duration>,
) -> Responder<RenewCurrentTokenResponse> {
    Arc::new(move |now| {
        Ok(RenewCurrentTokenResponse {
            expires_at: expires_in.map(|d| (now + d).into()),
            renewed,
            next_renewal_at: next_in.map(|d| (now + d).into()),
        })
    })
}

pub fn identity(
    user: &'static str,
    name: &'static str,
    expires_in: Option<Duration>,
) -> Responder<LookupCurrentTokenResponse> {
    Arc::new(move |now| {
        Ok(LookupCurrentTokenResponse {
            token_id: "7d3f0c1e-0000-4000-8000-000000000001".into(),
            user_id: user.into(),
            name: name.into(),
            scopes: vec!["read".into()],
            expires_at: expires_in.map(|d| (now + d).into()),
        })
    })
}
