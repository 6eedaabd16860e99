//! `auth-agent run`: the daemon that makes sure a token never silently expires.
//!
//! The order is the contract (issue 3):
//! 1. preflight: one `RenewCurrentToken` before any other authenticated call, with its
//!    own timeout;
//! 2. the first other call, `LookupCurrentToken`, logged as "authenticated as …";
//! 3. the renewal loop, until the shutdown future completes.
//!
//! A rejected token (`UNAUTHENTICATED`) is a WARN that names the reason and the fix, on
//! every attempt, until the token source holds a good token again; any other failure is
//! retried with capped backoff and never called a login problem.
use std::{
    future::Future,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
    time::SystemTime,
};

use tokio::{net::TcpListener, sync::oneshot};
use tonic::{Code, Status, transport::Channel};
use tracing::{info, warn};

use crate::{
    client::{Client, Identity, RenewOutcome, SERVER_ENV, ServerUrl},
    clock::{self, Clock},
    config,
    error::{AgentError, code_name},
    health::{AgentState, Health},
    http,
    schedule::{self, Schedule},
    state::{self, State},
    timefmt,
    token::{RejectReason, Token, TokenSource},
};

/// Default timeout of the preflight renewal.
pub const DEFAULT_PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default timeout of every later call.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Default longest sleep before the wall clock is looked at again (see [`crate::clock`]).
pub const DEFAULT_CHECK_PERIOD: Duration = Duration::from_secs(60);

/// Where the daemon finds its server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerSource {
    /// Given up front (`--server`/`AUTH_AGENT_SERVER`, or by an embedding program).
    Fixed(ServerUrl),
    /// The one `auth-agent login` saves in this config file. Until there is one, the
    /// daemon waits, re-reading the file every check period: a fresh install starts
    /// before anyone has logged in, and must not exit (systemd would not restart it).
    Saved {
        /// The config file.
        config: PathBuf,
        /// True when the path is not the default, so the fix must name it.
        explicit: bool,
    },
}

/// Everything `run` needs. Build with [`RunOptions::new`] and adjust the public fields.
#[derive(Debug)]
pub struct RunOptions {
    /// The server, for connecting and for messages.
    pub server: ServerSource,
    /// Where the token comes from; re-read on every attempt.
    pub token_source: TokenSource,
    /// A ready channel to use instead of dialling `server` (tests, custom transports).
    pub channel: Option<Channel>,
    /// Timeout of the preflight renewal (default 15 s).
    pub preflight_timeout: Duration,
    /// Timeout of every later call (default 15 s).
    pub request_timeout: Duration,
    /// Renewal interval, backoff and jitter.
    pub schedule: Schedule,
    /// Longest sleep before the wall clock is checked again (default 60 s).
    pub check_period: Duration,
    /// Where to record the last renewal for `status`; `None` records nothing.
    pub state_file: Option<PathBuf>,
    /// The observable state; keep a clone to watch it.
    pub health: Health,
    /// Serve `/healthz`, `/readyz` and `/metrics` on this listener.
    pub health_listener: Option<TcpListener>,
}

impl RunOptions {
    /// Options with every default, for a given server.
    pub fn new(server: ServerUrl, token_source: TokenSource) -> Self {
        Self::with_server(ServerSource::Fixed(server), token_source)
    }

    /// Options with every default, for a server from `server`.
    pub fn with_server(server: ServerSource, token_source: TokenSource) -> Self {
        RunOptions {
            server,
            token_source,
            channel: None,
            preflight_timeout: DEFAULT_PREFLIGHT_TIMEOUT,
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            schedule: Schedule::default(),
            check_period: DEFAULT_CHECK_PERIOD,
            state_file: None,
            health: Health::new(),
            health_listener: None,
        }
    }
}

/// Runs the daemon until `shutdown` completes, then stops the health endpoint and returns.
///
/// Only a configuration error ends it early (e.g. an `https://` `--server` in a build
/// without TLS); an unreachable server, a rejected token or no server saved yet never
/// does, because the agent must be running to notice when they are fixed.
pub async fn run(
    mut opts: RunOptions,
    clock: Arc<dyn Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    // A given server is checked now, so that a bad one is an exit, not a wait.
    let target = match (&opts.server, opts.channel.take()) {
        (ServerSource::Fixed(server), Some(channel)) => Target::Ready {
            server: server.clone(),
            channel,
            dialled: false,
        },
        (ServerSource::Fixed(server), None) => Target::Ready {
            server: server.clone(),
            channel: server.connect_lazy()?,
            dialled: true,
        },
        (ServerSource::Saved { config, explicit }, channel) => Target::Saved {
            config: config.clone(),
            explicit: *explicit,
            channel,
        },
    };
    let health = opts.health.clone();
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http_task = opts.health_listener.take().map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            info!(%addr, "health endpoint listening on http://{addr} (/healthz, /readyz, /metrics)");
        }
        let stopped = async move {
            let _ = http_stopped.await;
        };
        tokio::spawn(http::serve(listener, health.clone(), clock.clone(), stopped))
    });

    tokio::pin!(shutdown);
    tokio::select! {
        // Shutdown wins over an attempt that is due at the same moment.
        biased;
        () = &mut shutdown => info!("shutdown requested: stopping"),
        () = start(opts, target, clock) => {}
    }
    health.update(|s| s.state = AgentState::Stopped);
    let _ = stop_http.send(());
    if let Some(task) = http_task {
        let _ = task.await;
    }
    Ok(())
}

/// What the daemon talks to, as far as `run` could tell before starting.
enum Target {
    /// A known server and a channel to it; `dialled` when `run` made the channel (and so
    /// may make a fresh one), not when it was given.
    Ready {
        server: ServerUrl,
        channel: Channel,
        dialled: bool,
    },
    /// The server `login` saves in `config`, perhaps not there yet; `channel` overrides
    /// the one dialled once it is (tests, custom transports).
    Saved {
        config: PathBuf,
        explicit: bool,
        channel: Option<Channel>,
    },
}

/// Finds the server (waiting for `login` to save one if need be), then runs the daemon.
/// Never returns: `run` ends it by dropping it at shutdown.
async fn start(opts: RunOptions, target: Target, clock: Arc<dyn Clock>) {
    let (server, channel, dialled) = match target {
        Target::Ready {
            server,
            channel,
            dialled,
        } => (server, channel, dialled),
        Target::Saved {
            config,
            explicit,
            channel: given,
        } => {
            let (server, channel) =
                wait_for_server(&config, explicit, opts.check_period, &opts.health).await;
            match given {
                Some(given) => (server, given, false),
                None => (server, channel, true),
            }
        }
    };
    let mut daemon = Daemon::new(opts, server, Client::new(channel), clock);
    daemon.dialled = dialled;
    daemon.run_loop().await;
}

/// Re-reads the config file every check period until it names a usable server. Meanwhile
/// the agent is unauthenticated (`NO_SERVER`), and says once per distinct problem what
/// fixes it: `auth-agent login` with `--server`, which saves server and token together.
async fn wait_for_server(
    config: &Path,
    explicit: bool,
    check_period: Duration,
    health: &Health,
) -> (ServerUrl, Channel) {
    let fix = if explicit {
        format!(
            "run `auth-agent login --config {} --server http://HOST:PORT` (as the user the agent \
             runs as), or set {SERVER_ENV} and restart",
            config.display()
        )
    } else {
        format!("run `auth-agent login --server http://HOST:PORT`, or set {SERVER_ENV} and restart")
    };
    let mut said: Option<String> = None;
    loop {
        let problem = match config::saved_server(config).await {
            Ok(Some(server)) => match server.connect_lazy() {
                Ok(channel) => {
                    if said.is_some() {
                        info!(%server, "{} now names a server: starting", config.display());
                    }
                    return (server, channel);
                }
                Err(err) => err.to_string(),
            },
            Ok(None) => format!("no server saved in {}", config.display()),
            Err(err) => err.to_string(),
        };
        if said.as_deref() != Some(problem.as_str()) {
            warn!(
                reason = NO_SERVER,
                "no server configured ({problem}): {fix}; waiting, {} is re-read every {}",
                config.display(),
                humantime::format_duration(check_period)
            );
            health.update(|s| {
                s.state = AgentState::Unauthenticated;
                s.reject_reason = Some(NO_SERVER.to_owned());
            });
            said = Some(problem);
        }
        tokio::time::sleep(check_period.max(Duration::from_millis(1))).await;
    }
}

/// The `/readyz` reason while no server is known.
const NO_SERVER: &str = "NO_SERVER";

/// How the last attempt went, which decides the next deadline.
enum Attempt {
    Success(RenewOutcome),
    Rejected,
    Failed,
}

/// The token that was rejected (`None`: there was none), so that a change is noticed.
struct Rejected {
    reason: RejectReason,
    token: Option<Token>,
}

struct Daemon {
    client: Client,
    /// True when the daemon made the channel itself, and so may replace it.
    dialled: bool,
    source: TokenSource,
    server: ServerUrl,
    clock: Arc<dyn Clock>,
    health: Health,
    schedule: Schedule,
    preflight_timeout: Duration,
    request_timeout: Duration,
    check_period: Duration,
    state_file: Option<PathBuf>,
    /// Consecutive failed attempts, of any kind: the backoff exponent.
    failures: u32,
    rejected: Option<Rejected>,
    /// Why the token was last rejected, when a different token has since met only
    /// outages: "token accepted again" still names it once one is accepted.
    recovering_from: Option<RejectReason>,
    /// The token whose identity was last looked up and logged.
    identified: Option<Token>,
    said_never_expires: bool,
    /// The expiry last warned about as unrenewable, and whether the final warning is done.
    warned_unrenewable: Option<(SystemTime, bool)>,
}

impl Daemon {
    fn new(opts: RunOptions, server: ServerUrl, client: Client, clock: Arc<dyn Clock>) -> Self {
        Daemon {
            client,
            dialled: false,
            source: opts.token_source,
            server,
            clock,
            health: opts.health,
            schedule: opts.schedule,
            preflight_timeout: opts.preflight_timeout,
            request_timeout: opts.request_timeout,
            // A zero period would make the wait loop spin.
            check_period: opts.check_period.max(Duration::from_millis(1)),
            state_file: opts.state_file,
            failures: 0,
            rejected: None,
            recovering_from: None,
            identified: None,
            said_never_expires: false,
            warned_unrenewable: None,
        }
    }

    /// Never returns: `run` ends it by dropping it at shutdown.
    async fn run_loop(&mut self) {
        info!(server = %self.server, source = %self.source, "starting: preflight renewal");
        let (mut last, token) = self.renew(self.preflight_timeout).await;
        // A rejected preflight skips the lookup: it would fail for the same reason and
        // only repeat the warning. The lookup runs once a token is accepted.
        if let (Attempt::Success(_) | Attempt::Failed, Some(token)) = (&last, &token)
            && !self.identify(token).await
        {
            last = Attempt::Rejected;
        }
        loop {
            let next = self.next_deadline(&last);
            self.health.update(|s| s.next_attempt_at = Some(next));
            self.wait_until(next).await;
            let (attempt, token) = self.renew(self.request_timeout).await;
            last = attempt;
            if let (Attempt::Success(_), Some(token)) = (&last, &token)
                && self.identified.as_ref() != Some(token)
                && !self.identify(token).await
            {
                last = Attempt::Rejected;
            }
        }
    }

    /// One renewal with a freshly read token.
    async fn renew(&mut self, timeout: Duration) -> (Attempt, Option<Token>) {
        let token = match self.source.load().await {
            Ok(token) => token,
            Err(err) => return (self.on_rejected(&err, None), None),
        };
        let result = self.client.renew(&token, timeout).await;
        let attempt = match result {
            Ok(outcome) => {
                self.on_success(&outcome).await;
                Attempt::Success(outcome)
            }
            Err(status) => match AgentError::from_status(&status, &self.source) {
                err if err.is_rejection() => self.on_rejected(&err, Some(token.clone())),
                err => {
                    self.on_failed(&status, &err, &token);
                    Attempt::Failed
                }
            },
        };
        (attempt, Some(token))
    }

    /// A renewal failure that is not a login problem (outage, timeout, transport).
    fn on_failed(&mut self, status: &Status, err: &AgentError, token: &Token) {
        self.failures = self.failures.saturating_add(1);
        warn!(code = code_name(status.code()), "renewal failed: {err}");
        self.redial_after(status);
        // Only the token that was rejected is known to be bad. A different one (a new
        // login, a rotated Secret) that meets an outage is presumed good: the marker goes,
        // so the wait stops treating it as new every check period and backs off, and the
        // state is "retrying" (ready), as for any outage.
        let still_rejected = self
            .rejected
            .as_ref()
            .is_some_and(|r| r.token.as_ref() == Some(token));
        if !still_rejected && let Some(previous) = self.rejected.take() {
            self.recovering_from = Some(previous.reason);
        }
        self.health.update(|s| {
            s.attempts.error += 1;
            if !still_rejected {
                s.state = AgentState::Retrying;
                s.reject_reason = None;
            }
        });
    }

    async fn on_success(&mut self, outcome: &RenewOutcome) {
        let now = self.clock.now();
        self.failures = 0;
        let recovered = self.rejected.take().map(|r| r.reason);
        if let Some(reason) = recovered.or(self.recovering_from.take()) {
            info!(reason = %reason, "token accepted again: recovered from {reason}");
        }
        match outcome.expires_at {
            None if !self.said_never_expires => {
                self.said_never_expires = true;
                info!(
                    "token never expires: no renewals needed (it is still checked every {})",
                    timefmt::approx(self.schedule.interval)
                );
            }
            None => {}
            Some(at) if outcome.renewed => {
                info!(
                    "token renewed: it now expires at {} ({})",
                    timefmt::rfc3339(at),
                    timefmt::relative(at, now)
                );
            }
            Some(at) => {
                info!(
                    "token valid until {} ({}); not due for renewal yet",
                    timefmt::rfc3339(at),
                    timefmt::relative(at, now)
                );
            }
        }
        if let (Some(at), None) = (outcome.expires_at, outcome.next_renewal_at)
            && self.should_warn_unrenewable(at, now)
        {
            warn!(
                "token has reached its maximum lifetime and cannot be renewed: it expires at {} ({}); \
                 create a new token before then, and {}",
                timefmt::rfc3339(at),
                timefmt::relative(at, now),
                self.source.fix()
            );
        }
        self.health.update(|s| {
            s.state = AgentState::Ready;
            s.reject_reason = None;
            s.expires_at = outcome.expires_at;
            s.never_expires = outcome.expires_at.is_none();
            s.last_success_at = Some(now);
            if outcome.renewed {
                s.attempts.renewed += 1
            } else {
                s.attempts.unchanged += 1
            }
        });
        if let Some(path) = &self.state_file
            && let Err(err) = state::store(path, &State::after(now, outcome)).await
        {
            warn!("cannot record the renewal for `auth-agent status`: {err}");
        }
    }

    /// After a timeout, the next call gets a new connection. tonic's channel reconnects by
    /// itself only once the connection is known to be broken; a call that timed out may
    /// have gone into a connection that is dead but not yet detected (after a suspend, or
    /// dropped by a NAT), and the next call would be multiplexed onto it and hang too.
    /// The keepalive pings would close it eventually; this does not wait for them.
    fn redial_after(&mut self, status: &Status) {
        if status.code() != Code::DeadlineExceeded || !self.dialled {
            return;
        }
        if let Ok(channel) = self.server.connect_lazy() {
            self.client = Client::new(channel);
        }
    }

    /// Whether to warn that the token expiring at `expires_at` cannot be renewed: when
    /// first seen, and once more at the final check ([`schedule::FINAL_NOTICE`] before
    /// expiry), while the token still works.
    fn should_warn_unrenewable(&mut self, expires_at: SystemTime, now: SystemTime) -> bool {
        let in_final_notice = expires_at
            .duration_since(now)
            .map_or(true, |left| left <= schedule::FINAL_NOTICE);
        let due = match self.warned_unrenewable {
            Some((at, final_done)) if at == expires_at => in_final_notice && !final_done,
            _ => true,
        };
        if due {
            self.warned_unrenewable = Some((expires_at, in_final_notice));
        }
        due
    }

    /// A renewal attempt without a usable token: the login warning, the unauthenticated
    /// state, and one `rejected` attempt.
    fn on_rejected(&mut self, err: &AgentError, token: Option<Token>) -> Attempt {
        self.mark_rejected(err, token);
        self.health.update(|s| s.attempts.rejected += 1);
        Attempt::Rejected
    }

    /// Logs the login warning and enters the unauthenticated state. Counts no attempt:
    /// a lookup rejected after a successful renewal was counted by its renewal result.
    fn mark_rejected(&mut self, err: &AgentError, token: Option<Token>) {
        let reason = match err {
            AgentError::Reauthenticate { reason, .. } => reason.clone(),
            _ => RejectReason::Other("UNAUTHENTICATED".to_owned()),
        };
        self.failures = self.failures.saturating_add(1);
        // The one message an operator must not miss: reason and exact fix, every attempt.
        warn!(reason = %reason, "{err}");
        self.health.update(|s| {
            s.state = AgentState::Unauthenticated;
            s.reject_reason = Some(reason.to_string());
        });
        self.recovering_from = None;
        self.rejected = Some(Rejected { reason, token });
    }

    /// `LookupCurrentToken` and the "authenticated as" line. False when the token is
    /// rejected; a transient failure is retried after the next successful renewal.
    async fn identify(&mut self, token: &Token) -> bool {
        match self.client.lookup(token, self.request_timeout).await {
            Ok(identity) => {
                self.log_identity(&identity);
                self.identified = Some(token.clone());
                true
            }
            Err(status) => match AgentError::from_status(&status, &self.source) {
                err if err.is_rejection() => {
                    self.mark_rejected(&err, Some(token.clone()));
                    false
                }
                err => {
                    warn!(
                        code = code_name(status.code()),
                        "identity lookup failed: {err}; it is retried after the next successful renewal"
                    );
                    self.redial_after(&status);
                    true
                }
            },
        }
    }

    fn log_identity(&self, id: &Identity) {
        let expiry = match id.expires_at {
            Some(at) => format!("expires at {}", timefmt::rfc3339(at)),
            None => "never expires".to_owned(),
        };
        info!(user = %id.user_id, token_id = %id.token_id, "authenticated as {}, token {} {expiry}", id.user_id, id.name);
        self.health.update(|s| {
            s.user_id = Some(id.user_id.clone());
            s.token_name = Some(id.name.clone());
        });
    }

    fn next_deadline(&self, last: &Attempt) -> SystemTime {
        let now = self.clock.now();
        let u = schedule::random_unit();
        let (next, what) = match last {
            Attempt::Success(outcome) => (
                self.schedule.after_success(now, outcome, u),
                "next renewal check",
            ),
            Attempt::Rejected | Attempt::Failed => (
                self.schedule.after_failure(now, self.failures, u),
                "retrying",
            ),
        };
        info!(
            "{what} at {} ({})",
            timefmt::rfc3339(next),
            timefmt::relative(next, now)
        );
        next
    }

    /// Sleeps until the wall clock reaches `deadline`, looking at it every check period
    /// (see [`crate::clock`]). While the token is rejected it also re-reads the token
    /// source at each look, so that a `login` or a rotated Secret takes effect within a
    /// check period instead of after up to an hour of backoff.
    async fn wait_until(&mut self, deadline: SystemTime) {
        while let Some(left) = clock::remaining(self.clock.now(), deadline) {
            tokio::time::sleep(left.min(self.check_period)).await;
            let Some(rejected) = &self.rejected else {
                continue;
            };
            if let Ok(token) = self.source.load().await
                && rejected.token.as_ref() != Some(&token)
            {
                info!("the {} has a new token: retrying now", self.source);
                return;
            }
        }
    }
}
