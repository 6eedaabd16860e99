//! `WatchTokenInvalidations`: the cache's change feed, relayed to a caller that caches
//! ValidateToken answers itself (auth-client), so that its cache obeys the same rules as
//! ours.
//!
//! - **Same order as our cache.** Each stream relays the feed of [`TokenCache`] in
//!   order, so a heartbeat relayed on it proves every change committed before that
//!   heartbeat was sent has been relayed before it.
//! - **Heartbeats.** One per heartbeat the listener hears (every 100 ms by default), and
//!   one whenever none was sent for [`KEEPALIVE`], whatever else was. Each says whether the server
//!   hears every change and how old its knowledge is (`lag`, from the newest heartbeat
//!   relayed on this stream, never from one still queued behind unrelayed changes).
//! - **Never skip.** A stream that falls behind the feed is told to flush.
//! - **Moving.** When the connection gets its GOAWAY (`--max-connection-age`), the
//!   heartbeats say `reconnect`, and the stream goes on until the client drops it or the
//!   grace period cuts it. At shutdown the stream ends (OK): the client opens one
//!   elsewhere.
use std::{pin::Pin, sync::Arc, time::Duration};

use auth_api::v1::{
    CacheFlush, TokenInvalidations, WatchHeartbeat, WatchTokenInvalidationsRequest,
    WatchTokenInvalidationsResponse, watch_token_invalidations_response::Event as WireEvent,
};
use tokio::sync::{broadcast, mpsc, watch};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

use super::{AuthSvc, credentials};
use crate::{
    cache::{TokenCache, feed::Event},
    error::Result,
    transport::http2::GoingAway,
};

/// A heartbeat goes out at least this often.
pub(crate) const KEEPALIVE: Duration = Duration::from_millis(250);
/// Most token hashes in one message.
const MAX_BATCH: usize = 512;
/// Messages queued for the client before the relay waits (and, if it waits long, falls
/// behind the feed and makes the client flush).
const QUEUE: usize = 16;

/// The stream of one watcher.
pub(crate) type WatchStream =
    Pin<Box<dyn Stream<Item = Result<WatchTokenInvalidationsResponse, Status>> + Send>>;

pub(super) fn handle(
    svc: &AuthSvc,
    request: Request<WatchTokenInvalidationsRequest>,
) -> Result<Response<WatchStream>> {
    credentials::authorize_validate(&request, svc.validate_allow())?;
    let going = request.extensions().get::<GoingAway>().map(|g| g.0.clone());
    let relay = Relay {
        events: svc.cache.subscribe(),
        cache: svc.cache.clone(),
        relayed_us: None,
        beat_due: tokio::time::Instant::now(),
    };
    let (tx, rx) = mpsc::channel(QUEUE);
    tokio::spawn(relay.run(tx, going, svc.stopping.clone()));
    Ok(Response::new(Box::pin(
        tokio_stream::wrappers::ReceiverStream::new(rx),
    )))
}

struct Relay {
    events: broadcast::Receiver<Event>,
    cache: Arc<TokenCache>,
    /// The send time of the newest heartbeat relayed on this stream since the last
    /// reset or loss; `None`: this stream cannot vouch for anything yet.
    relayed_us: Option<u64>,
    /// When the next heartbeat is due if none goes out before.
    beat_due: tokio::time::Instant,
}

type Out = mpsc::Sender<Result<WatchTokenInvalidationsResponse, Status>>;

impl Relay {
    async fn run(
        mut self,
        tx: Out,
        going: Option<watch::Receiver<bool>>,
        mut stopping: watch::Receiver<bool>,
    ) {
        let mut going = going.unwrap_or_else(|| watch::channel(false).1);
        let mut reconnect = *going.borrow_and_update();
        // A first heartbeat at once: the client learns the bound and that it is heard.
        if !self.send(&tx, self.heartbeat(reconnect)).await {
            return;
        }
        let mut pending: Option<std::result::Result<Event, broadcast::error::RecvError>> = None;
        loop {
            let due = self.beat_due;
            let next = match pending.take() {
                Some(next) => next,
                None => tokio::select! {
                    next = self.events.recv() => next,
                    () = tokio::time::sleep_until(due) => {
                        if !self.send(&tx, self.heartbeat(reconnect)).await {
                            return;
                        }
                        continue;
                    }
                    Ok(()) = going.changed(), if !reconnect => {
                        reconnect = *going.borrow_and_update();
                        if !self.send(&tx, self.heartbeat(reconnect)).await {
                            return;
                        }
                        continue;
                    }
                    // Ended with OK, not UNAVAILABLE: the watcher opens a stream elsewhere,
                    // and a rolling restart does not count as an outage in the metrics.
                    true = stopped(&mut stopping) => return,
                    () = tx.closed() => return,
                },
            };
            let event = match next {
                Ok(Event::Changed(key)) => {
                    let mut batch = vec![key.to_vec()];
                    while batch.len() < MAX_BATCH {
                        match self.events.try_recv() {
                            Ok(Event::Changed(key)) => batch.push(key.to_vec()),
                            Err(broadcast::error::TryRecvError::Empty) => break,
                            Ok(other) => {
                                pending = Some(Ok(other));
                                break;
                            }
                            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                                pending = Some(Err(broadcast::error::RecvError::Lagged(n)));
                                break;
                            }
                            Err(broadcast::error::TryRecvError::Closed) => {
                                pending = Some(Err(broadcast::error::RecvError::Closed));
                                break;
                            }
                        }
                    }
                    WireEvent::Invalidated(TokenInvalidations {
                        token_sha256: batch,
                    })
                }
                Ok(Event::Heard(sent_us)) => {
                    self.relayed_us = Some(self.relayed_us.map_or(sent_us, |r| r.max(sent_us)));
                    self.heartbeat(reconnect)
                }
                Ok(Event::Lost) => {
                    self.relayed_us = None;
                    self.heartbeat(reconnect)
                }
                Ok(Event::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    // Everything before this point may be incomplete: the client
                    // forgets it, and this stream vouches for nothing until the next
                    // heartbeat is relayed.
                    self.relayed_us = None;
                    WireEvent::Flush(CacheFlush {})
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            if !self.send(&tx, event).await {
                return;
            }
        }
    }

    /// A heartbeat as of now, vouching only for what this stream has relayed.
    fn heartbeat(&self, reconnect: bool) -> WireEvent {
        let to_wire = |d: Duration| prost_types::Duration {
            seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
            nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
        };
        let lag = self
            .relayed_us
            .filter(|_| self.cache.listening())
            .map(|sent| Duration::from_micros(self.cache.clock_us().saturating_sub(sent)));
        WireEvent::Heartbeat(WatchHeartbeat {
            current: lag.is_some(),
            lag: lag.map(to_wire),
            max_staleness: Some(to_wire(self.cache.max_staleness())),
            reconnect,
        })
    }

    /// Queues `event` for the client; false once the client has gone.
    async fn send(&mut self, tx: &Out, event: WireEvent) -> bool {
        if matches!(event, WireEvent::Heartbeat(_)) {
            self.beat_due = tokio::time::Instant::now() + KEEPALIVE;
        }
        let message = WatchTokenInvalidationsResponse { event: Some(event) };
        tx.send(Ok(message)).await.is_ok()
    }
}

/// Whether the server began to shut down (false: it can no longer say).
async fn stopped(stopping: &mut watch::Receiver<bool>) -> bool {
    stopping.wait_for(|s| *s).await.is_ok()
}
