//! `auth-agent run`: the daemon that makes sure a token never silently expires.
//!
//! The order is the contract:
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
};

use tokio::{net::TcpListener, sync::oneshot};
use tonic::transport::Channel;
use tracing::{info, warn};

mod memory;
mod renewer;

use renewer::Daemon;

use crate::{
    client::{self, Client, Transport},
    clock::Clock,
    config,
    error::AgentError,
    health::{AgentState, Health},
    http,
    schedule::Schedule,
    server_url::{SERVER_ENV, ServerUrl},
    source::TokenSource,
};

/// Default timeout of the preflight renewal.
pub(crate) const DEFAULT_PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(15);
/// Default timeout of every later call.
pub(crate) const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Default longest sleep before the wall clock is looked at again (see [`crate::clock`]).
pub(crate) const DEFAULT_CHECK_PERIOD: Duration = Duration::from_secs(60);

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
    pub(crate) server: ServerSource,
    /// Where the token comes from; re-read on every attempt.
    pub(crate) token_source: TokenSource,
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
    pub(crate) state_file: Option<PathBuf>,
    /// The observable state; keep a clone to watch it.
    pub health: Health,
    /// Serve `/healthz`, `/readyz` and `/metrics` on this listener.
    pub health_listener: Option<TcpListener>,
    /// Transport settings of the channel to the server (connect timeout, keepalives).
    pub(crate) transport: Transport,
}

impl RunOptions {
    /// Options with every default, for a given server.
    pub fn new(server: ServerUrl, token_source: TokenSource) -> Self {
        Self::with_server(ServerSource::Fixed(server), token_source)
    }

    /// Options with every default, for a server from `server`.
    pub(crate) fn with_server(server: ServerSource, token_source: TokenSource) -> Self {
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
            transport: Transport::default(),
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
            client: Client::new(channel),
            dialled: false,
        },
        (ServerSource::Fixed(server), None) => Target::Ready {
            server: server.clone(),
            client: client::connect_lazy(server, &opts.transport)?,
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
    /// A known server and a client of it; `dialled` when `run` made its channel (and so
    /// may make a fresh one), not when it was given.
    Ready {
        server: ServerUrl,
        client: Client,
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
async fn start(mut opts: RunOptions, target: Target, clock: Arc<dyn Clock>) {
    let (server, client, dialled) = match target {
        Target::Ready {
            server,
            client,
            dialled,
        } => (server, client, dialled),
        Target::Saved {
            config,
            explicit,
            channel: given,
        } => {
            let (server, transport, client) = wait_for_server(
                &config,
                explicit,
                opts.check_period,
                &opts.health,
                &opts.transport,
            )
            .await;
            // A redial after a timeout reaches the server the same way.
            opts.transport = transport;
            match given {
                Some(given) => (server, Client::new(given), false),
                None => (server, client, true),
            }
        }
    };
    let mut daemon = Daemon::new(opts, server, client, clock);
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
    transport: &Transport,
) -> (ServerUrl, Transport, Client) {
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
            Ok(Some((server, saved_tls))) => {
                let mut transport = transport.clone();
                transport.tls = transport.tls.or(&saved_tls);
                match client::connect_lazy(&server, &transport) {
                    Ok(client) => {
                        if said.is_some() {
                            info!(%server, "{} now names a server: starting", config.display());
                        }
                        return (server, transport, client);
                    }
                    Err(err) => err.to_string(),
                }
            }
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
