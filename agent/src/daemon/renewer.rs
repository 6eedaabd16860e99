//! The renewal loop of `auth-agent run`: preflight, identity, then renewals on a
//! computed wall-clock schedule; warnings for rejected tokens, backoff for the rest.
use std::{path::PathBuf, sync::Arc, time::Duration, time::SystemTime};

use auth_client::Unavailable;
use tonic::Code;
use tracing::{Instrument, Span, field::Empty, info, warn};

use super::{RunOptions, memory::Memory};
use crate::{
    client::{self, Client, Identity, RenewOutcome, Transport},
    clock::{self, Clock},
    error::{AgentError, RejectReason, code_name},
    health::{AgentState, Health},
    schedule::{self, Schedule},
    server_url::ServerUrl,
    source::TokenSource,
    state::{self, State},
    timefmt,
    token::Token,
};

/// How the last attempt went, which decides the next deadline.
enum Attempt {
    Success(RenewOutcome),
    Rejected,
    Failed,
}

pub(super) struct Daemon {
    client: Client,
    /// True when the daemon made the channel itself, and so may replace it.
    pub(super) dialled: bool,
    source: TokenSource,
    server: ServerUrl,
    clock: Arc<dyn Clock>,
    health: Health,
    schedule: Schedule,
    preflight_timeout: Duration,
    request_timeout: Duration,
    check_period: Duration,
    state_file: Option<PathBuf>,
    transport: Transport,
    /// Consecutive failed attempts, of any kind: the backoff exponent.
    failures: u32,
    /// What has been seen and said already.
    memory: Memory,
}

impl Daemon {
    pub(super) fn new(
        opts: RunOptions,
        server: ServerUrl,
        client: Client,
        clock: Arc<dyn Clock>,
    ) -> Self {
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
            transport: opts.transport,
            failures: 0,
            memory: Memory::default(),
        }
    }

    /// Never returns: `run` ends it by dropping it at shutdown.
    pub(super) async fn run_loop(&mut self) {
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
                && self.memory.needs_identity(token)
                && !self.identify(token).await
            {
                last = Attempt::Rejected;
            }
        }
    }

    /// One renewal with a freshly read token: the root span of a trace of its own
    /// (exported with `--otlp-endpoint`), whose context goes with the call, so that
    /// the service's span is its child.
    async fn renew(&mut self, timeout: Duration) -> (Attempt, Option<Token>) {
        let span = attempt_span();
        self.attempt(timeout, &span).instrument(span.clone()).await
    }

    async fn attempt(&mut self, timeout: Duration, span: &Span) -> (Attempt, Option<Token>) {
        let token = match self.source.load().await {
            Ok(token) => token,
            Err(err) => {
                span.record("otel.status_code", "ERROR");
                return (self.on_rejected(&err, None), None);
            }
        };
        let result = self.client.renew(&token, timeout).await;
        let code = match &result {
            Ok(Ok(_)) => Code::Ok,
            Ok(Err(_)) => Code::Unauthenticated,
            Err(outage) => outage.code(),
        };
        span.record("rpc.grpc.status_code", code as i32);
        if code != Code::Ok {
            span.record("otel.status_code", "ERROR");
        }
        let attempt = match result {
            Ok(Ok(outcome)) => {
                span.record("auth.token.renewed", outcome.renewed);
                self.on_success(&outcome).await;
                Attempt::Success(outcome)
            }
            Ok(Err(rejection)) => {
                span.record("auth.error.reason", rejection.as_str());
                let err = AgentError::rejected(&rejection, &self.source.fix());
                self.on_rejected(&err, Some(token.clone()))
            }
            Err(outage) => {
                self.on_failed(&outage, &AgentError::retry_later(&outage), &token);
                Attempt::Failed
            }
        };
        (attempt, Some(token))
    }

    /// A renewal failure that is not a login problem (outage, timeout, transport).
    fn on_failed(&mut self, outage: &Unavailable, err: &AgentError, token: &Token) {
        self.failures = self.failures.saturating_add(1);
        warn!(code = code_name(outage.code()), "renewal failed: {err}");
        self.redial_after(outage);
        // Only the token that was rejected is known to be bad. A different one that meets
        // an outage is presumed good: the wait stops treating it as new every check
        // period and backs off, and the state is "retrying" (ready), as for any outage.
        let still_rejected = self.memory.failed(token);
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
        if let Some(reason) = self.memory.accepted() {
            info!(reason = %reason, "token accepted again: recovered from {reason}");
        }
        match outcome.expires_at {
            None if self.memory.first_never_expires() => {
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
            && self.memory.should_warn_unrenewable(at, now)
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
    fn redial_after(&mut self, outage: &Unavailable) {
        if outage.code() != Code::DeadlineExceeded || !self.dialled {
            return;
        }
        if let Ok(client) = client::connect_lazy(&self.server, &self.transport) {
            self.client = client;
        }
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
        self.memory.rejected(reason, token);
    }

    /// `LookupCurrentToken` and the "authenticated as" line. False when the token is
    /// rejected; a transient failure is retried after the next successful renewal.
    async fn identify(&mut self, token: &Token) -> bool {
        match self.client.lookup(token, self.request_timeout).await {
            Ok(Ok(identity)) => {
                self.log_identity(&identity);
                self.memory.identified(token);
                true
            }
            Ok(Err(rejection)) => {
                let err = AgentError::rejected(&rejection, &self.source.fix());
                self.mark_rejected(&err, Some(token.clone()));
                false
            }
            Err(outage) => {
                let err = AgentError::retry_later(&outage);
                warn!(
                    code = code_name(outage.code()),
                    "identity lookup failed: {err}; it is retried after the next successful renewal"
                );
                self.redial_after(&outage);
                true
            }
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
            if !self.memory.is_rejected() {
                continue;
            }
            if let Ok(token) = self.source.load().await
                && self.memory.is_replacement(&token)
            {
                info!("the {} has a new token: retrying now", self.source);
                return;
            }
        }
    }
}

/// A renewal attempt's span: a new trace (no parent), shaped as OpenTelemetry's RPC
/// conventions name a gRPC client call. DEBUG, so that the log lines stay as they are;
/// the exporter takes the agent's spans whatever the log level.
fn attempt_span() -> Span {
    tracing::debug_span!(
        target: "auth_agent",
        parent: None,
        "renewal attempt",
        otel.name = "auth.v1.AuthService/RenewCurrentToken",
        otel.kind = "client",
        otel.status_code = Empty,
        rpc.system = "grpc",
        rpc.service = "auth.v1.AuthService",
        rpc.method = "RenewCurrentToken",
        rpc.grpc.status_code = Empty,
        auth.token.renewed = Empty,
        auth.error.reason = Empty,
    )
}
