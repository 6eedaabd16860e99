//! The task that keeps a `WatchTokenInvalidations` stream open and applies it to the
//! [`LocalCache`].
//!
//! - **Applied as read.** Invalidations and flushes are applied the moment they are
//!   read; a heartbeat moves the cache's proven knowledge to `receipt - lag`.
//! - **Silence is loss.** A stream that sends nothing for [`SILENCE_LIMIT`] (the
//!   service sends something every 250 ms at most), ends or fails is dropped: the cache
//!   stops serving, and a new stream is opened, with backoff, from an empty cache.
//! - **Make before break.** When the service says `reconnect` (its connection is being
//!   aged out), a second stream is opened while the first is still read. Once the new
//!   one is current and the old one has proven every change committed before the new
//!   one was open, the old one is dropped, and the cache is never emptied: every change
//!   arrived on one of the two.
//! - **Isolation.** [`spawn_isolated`] runs all of this, with a connection of its own, on
//!   a thread of its own with a current-thread runtime, so that a saturated
//!   application runtime cannot delay an eviction or make a late heartbeat look fresh.
use std::{future::Future, pin::Pin, sync::Arc, time::Duration};

use auth_api::v1::{
    WatchTokenInvalidationsRequest, WatchTokenInvalidationsResponse,
    auth_service_client::AuthServiceClient, watch_token_invalidations_response::Event,
};
use tokio::sync::oneshot;
use tonic::{Code, Status, Streaming};

use super::{Key, LocalCache};
use crate::{
    outcome::code_name,
    retry::{RetryPolicy, unit},
    transport::GrpcChannel,
};

/// How long a stream may stay silent before it is presumed dead.
pub const SILENCE_LIMIT: Duration = Duration::from_secs(2);

/// The waits between attempts to open a stream: 100 ms doubling to 5 s.
const REOPEN: RetryPolicy = RetryPolicy {
    retry_unavailable: true,
    initial_backoff: Duration::from_millis(100),
    max_backoff: Duration::from_secs(5),
    jitter: 0.2,
    max_transparent: 0,
};

/// Ends the task when dropped (held by the client).
pub(crate) struct Stop {
    _sender: oneshot::Sender<()>,
}

/// Runs the task on the current runtime, over `channel`.
pub(crate) fn spawn(channel: GrpcChannel, cache: Arc<LocalCache>) -> Stop {
    let (stop, stopped) = oneshot::channel();
    tokio::spawn(run(channel, cache, stopped));
    Stop { _sender: stop }
}

/// Runs the task on a thread of its own, over a channel that `connect` makes there.
pub(crate) fn spawn_isolated(
    connect: impl FnOnce() -> GrpcChannel + Send + 'static,
    cache: Arc<LocalCache>,
) -> std::io::Result<Stop> {
    let (stop, stopped) = oneshot::channel();
    // The thread logs where its creator logs, scoped subscriber or global.
    let dispatch = tracing::dispatcher::get_default(Clone::clone);
    std::thread::Builder::new()
        .name("auth-client-watch".into())
        .spawn(move || {
            let _logging = tracing::dispatcher::set_default(&dispatch);
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(async move { run(connect(), cache, stopped).await }),
                Err(error) => {
                    tracing::error!(%error, "cannot start the invalidation watcher: the cache stays off");
                }
            }
        })?;
    Ok(Stop { _sender: stop })
}

type Client = AuthServiceClient<GrpcChannel>;
type Opening = Pin<
    Box<dyn Future<Output = Result<Streaming<WatchTokenInvalidationsResponse>, Status>> + Send>,
>;

async fn open(mut client: Client) -> Result<Streaming<WatchTokenInvalidationsResponse>, Status> {
    let response = client
        .watch_token_invalidations(WatchTokenInvalidationsRequest {})
        .await?;
    Ok(response.into_inner())
}

async fn run(channel: GrpcChannel, cache: Arc<LocalCache>, mut stopped: oneshot::Receiver<()>) {
    let client = AuthServiceClient::new(channel);
    let mut failures = 0u32;
    // Said once per distinct problem, not once per attempt.
    let mut said: Option<String> = None;
    loop {
        let opened = tokio::select! {
            opened = open(client.clone()) => opened,
            _ = &mut stopped => return,
        };
        match opened {
            Ok(stream) => {
                // Whatever changed between the last stream and this one was not heard.
                cache.flush();
                failures = 0;
                if said.take().is_some() {
                    tracing::info!("watching token invalidations again: the cache is back on");
                } else {
                    tracing::debug!("watching token invalidations: the cache is on");
                }
                let why = tokio::select! {
                    why = follow(&client, stream, &cache) => why,
                    _ = &mut stopped => return,
                };
                cache.lost();
                tracing::warn!(error = %why, "token invalidation stream lost: asking the service until it is back");
                said = Some(why);
            }
            Err(status) => {
                cache.lost();
                let why = match status.code() {
                    Code::PermissionDenied => format!(
                        "{}: this caller is not on the service's --validate-allow list, so it \
                         can neither watch nor validate",
                        status.message()
                    ),
                    code => format!("{}: {}", code_name(code), status.message()),
                };
                if said.as_deref() != Some(why.as_str()) {
                    tracing::warn!(error = %why, "cannot watch token invalidations: asking the service for every token");
                    said = Some(why);
                }
            }
        }
        let wait = REOPEN.backoff(failures, unit());
        failures = failures.saturating_add(1);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = &mut stopped => return,
        }
        cache.expire_grace();
    }
}

/// A stream opened while another is still read, and whether it is current yet.
struct Next {
    stream: Streaming<WatchTokenInvalidationsResponse>,
    opened_us: u64,
    current: bool,
}

/// Which stream a message came on.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Active,
    Next,
}

/// Reads `active` (and, while moving, its successor) until it ends; returns why.
async fn follow(
    client: &Client,
    mut active: Streaming<WatchTokenInvalidationsResponse>,
    cache: &LocalCache,
) -> String {
    let mut next: Option<Next> = None;
    let mut opening: Option<Opening> = None;
    loop {
        tokio::select! {
            read = tokio::time::timeout(SILENCE_LIMIT, active.message()) => {
                let ended = match read {
                    Err(_) => format!("silent for {SILENCE_LIMIT:?}"),
                    Ok(Err(status)) => format!("{}: {}", code_name(status.code()), status.message()),
                    Ok(Ok(None)) => "the service ended it".to_owned(),
                    Ok(Ok(Some(message))) => {
                        if apply(cache, message, Role::Active) && next.is_none() && opening.is_none() {
                            opening = Some(Box::pin(open(client.clone())));
                        }
                        continue;
                    }
                };
                match next.take() {
                    // Moving already: carry on with the new stream, but what fell
                    // between the two is not proven: start empty.
                    Some(n) => {
                        tracing::debug!(why = %ended, "the old invalidation stream ended before the move");
                        cache.flush();
                        active = n.stream;
                    }
                    None => return ended,
                }
            }
            opened = async { match opening.as_mut() { Some(o) => o.await, None => std::future::pending().await } } => {
                opening = None;
                match opened {
                    Ok(stream) => next = Some(Next { stream, opened_us: cache.now_us(), current: false }),
                    Err(status) => tracing::debug!(code = code_name(status.code()), "cannot open the next invalidation stream yet"),
                }
            }
            read = async { match next.as_mut() { Some(n) => n.stream.message().await, None => std::future::pending().await } } => {
                match read {
                    Ok(Some(message)) => {
                        let vouches = matches!(&message.event, Some(Event::Heartbeat(h)) if h.current);
                        apply(cache, message, Role::Next);
                        if let Some(n) = next.as_mut() {
                            n.current |= vouches;
                        }
                    }
                    // The new one failed: keep the old, and try again when told.
                    Ok(None) | Err(_) => next = None,
                }
            }
        }
        if let Some(n) = &next
            && n.current
            && cache.known_us() >= n.opened_us
            && let Some(n) = next.take()
        {
            tracing::debug!("moved to a new invalidation stream");
            active = n.stream;
        }
    }
}

/// Applies one message; returns whether the service asked the client to reconnect.
fn apply(cache: &LocalCache, message: WatchTokenInvalidationsResponse, role: Role) -> bool {
    match message.event {
        Some(Event::Invalidated(changed)) => {
            let keys: Vec<Key> = changed
                .token_sha256
                .iter()
                .filter_map(|hash| Key::try_from(hash.as_slice()).ok())
                .collect();
            if keys.len() != changed.token_sha256.len() {
                // Not a SHA-256: something is wrong with the service; forget everything.
                tracing::warn!(
                    "the invalidation stream sent a hash that is not 32 bytes: flushing"
                );
                cache.flush();
            }
            cache.invalidate(&keys);
            false
        }
        Some(Event::Flush(_)) => {
            cache.flush();
            false
        }
        Some(Event::Heartbeat(beat)) => {
            if role == Role::Active {
                let lag = beat.lag.map_or(Duration::ZERO, duration);
                let bound = beat.max_staleness.map(duration);
                cache.heartbeat(beat.current, lag, bound);
            }
            beat.reconnect
        }
        None => false,
    }
}

/// A wire duration as a `Duration` (negative: zero).
fn duration(d: prost_types::Duration) -> Duration {
    let secs = u64::try_from(d.seconds).unwrap_or(0);
    let nanos = u32::try_from(d.nanos).unwrap_or(0);
    Duration::new(secs, 0).saturating_add(Duration::from_nanos(u64::from(nanos)))
}
