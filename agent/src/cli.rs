//! Command-line flags (clap derive, each also settable by an `AUTH_AGENT_*` variable),
//! validated once into the typed [`Context`] and [`RunOptions`] the commands take, and
//! [`execute`], which runs a parsed command line.
use std::{
    ffi::OsString,
    fmt::Display,
    io::{self, Write},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};

use crate::{
    client::{TlsFiles, Transport},
    clock::SystemClock,
    cmd::{self, Context, status::StatusJson},
    config::{self, CONFIG_ENV},
    daemon::{RunOptions, ServerSource},
    error::AgentError,
    schedule::Schedule,
    server_url::SERVER_ENV,
    source::{TOKEN_ENV, TokenSource},
    state::{self, STATE_ENV},
    telemetry::LogFormat,
    token::Token,
};

/// Runs the parsed command line, printing reports to stdout.
pub async fn execute(cli: Cli) -> Result<(), AgentError> {
    // Before the context: a completion script needs no config file and no server.
    if let Command::Completions(args) = &cli.command {
        completions(args.shell);
        return Ok(());
    }
    let context = cli.global.context()?;
    match cli.command {
        Command::Login => {
            // Know where to send it before asking someone to paste a secret.
            context.server().await?;
            let token = cmd::login::read_token(&context.token_source)?;
            print(cmd::login::login(&context, token).await?);
        }
        Command::Run(args) => {
            let mut opts = args.options(&context)?;
            // With --server given, what `login` saved still says how to reach it.
            if context.server.is_some()
                && let Ok((_, transport)) = context.endpoint().await
            {
                opts.transport = transport;
            }
            cmd::run::run(opts, args.health_addr, cmd::run::shutdown_signal()).await?;
        }
        Command::Status(args) => {
            let report = cmd::status::status(&context, &SystemClock).await;
            match (args.output, report) {
                (Output::Text, report) => print(report?),
                (Output::Json, Ok(report)) => print(StatusJson::from_report(&report)),
                // A rejected token or an unreachable server is a status too: printed,
                // and still the exit code (and the message on stderr) it always was.
                (Output::Json, Err(err)) => {
                    if let Some(json) = StatusJson::from_error(&context, &err).await {
                        print(json);
                    }
                    return Err(err);
                }
            }
        }
        Command::Renew => print(cmd::renew::renew(&context, &SystemClock).await?),
        Command::Logout => print(cmd::logout::logout(&context).await?),
        Command::Completions(_) => {}
    }
    Ok(())
}

/// Prints the completion script for `shell` on stdout. Built in memory first:
/// clap_complete panics on a failed write, and a closed stdout is not an error of ours.
fn completions(shell: clap_complete::Shell) {
    use clap::CommandFactory;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "auth-agent", &mut script);
    let mut stdout = io::stdout().lock();
    let _ = stdout.write_all(&script).and_then(|()| stdout.flush());
}

/// A report on stdout. Unlike `println!`, it cannot panic when stdout is closed
/// (`auth-agent status | head -0`): the command already did its work, and a reader that
/// went away is not an error of ours.
pub fn print(report: impl Display) {
    let _ = writeln!(io::stdout(), "{report}");
}

/// `auth-agent`: keeps a personal access token renewed against `auth.v1.AuthService`.
#[derive(Debug, Parser)]
#[command(name = "auth-agent", version, about, long_about = None)]
pub struct Cli {
    /// Flags every subcommand accepts.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check a token (read from stdin, or --token-file) with the server, then save it and
    /// the server in the config file (mode 0600). A rejected token is not saved.
    Login,
    /// Run the daemon: renew at start, then on a schedule, until SIGINT or SIGTERM.
    Run(Box<RunArgs>),
    /// Show the server, user, token name, expiry and last renewal. Exits 3 when the token
    /// is rejected, 1 when the server cannot be reached.
    Status(StatusArgs),
    /// Renew the token once, now, and print the result (for cron and for people).
    Renew,
    /// Revoke the token on the server and remove it from the config file.
    Logout,
    /// Print a shell completion script on stdout, e.g. `auth-agent completions bash >
    /// /etc/bash_completion.d/auth-agent`. Needs no config file and no server.
    Completions(CompletionsArgs),
}

/// Flags of `auth-agent status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// What status prints on stdout: text for people, or one JSON object for scripts
    /// (also for a rejected token or an unreachable server, with the same exit codes)
    #[arg(long, env = "AUTH_AGENT_OUTPUT", value_enum, default_value_t = Output::Text)]
    pub output: Output,
}

/// The shape of `status`'s report on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned lines for people.
    Text,
    /// One JSON object on one line (never the token).
    Json,
}

/// What `completions` prints.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell the script is for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Flags accepted by every subcommand.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Config file written by `login`
    /// [default: $XDG_CONFIG_HOME/auth-agent/config, else ~/.config/auth-agent/config]
    #[arg(long, global = true, env = CONFIG_ENV, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Server URL, http://HOST:PORT or https://HOST:PORT [default: the one saved by `login`]
    #[arg(long, global = true, env = SERVER_ENV, value_name = "URL")]
    pub server: Option<String>,
    /// Read the token from this file, re-read on every attempt (e.g. a Kubernetes Secret
    /// mount). Takes precedence over AUTH_AGENT_TOKEN and the config file.
    #[arg(
        long,
        global = true,
        env = "AUTH_AGENT_TOKEN_FILE",
        value_name = "PATH"
    )]
    pub token_file: Option<PathBuf>,
    /// File recording the last renewal, for `status` [default: `state` next to the config]
    #[arg(long, global = true, env = STATE_ENV, value_name = "PATH")]
    pub state_file: Option<PathBuf>,
    /// CA certificates to trust for an https:// server [default: the system's roots;
    /// `login` saves it]
    #[arg(long, global = true, env = "AUTH_AGENT_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Client certificate for a server that requires one (mTLS), re-read on every
    /// reconnect [`login` saves it]
    #[arg(
        long,
        global = true,
        env = "AUTH_AGENT_CLIENT_CERT",
        value_name = "FILE",
        requires = "client_key"
    )]
    pub client_cert: Option<PathBuf>,
    /// Private key of --client-cert
    #[arg(
        long,
        global = true,
        env = "AUTH_AGENT_CLIENT_KEY",
        value_name = "FILE",
        requires = "client_cert"
    )]
    pub client_key: Option<PathBuf>,
    /// Timeout of each call (the preflight renewal of `run` has its own)
    #[arg(long, global = true, env = "AUTH_AGENT_REQUEST_TIMEOUT", value_name = "DURATION",
          default_value = "15s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Log lines on stderr: text, or one flat JSON object per line for log shippers
    #[arg(long, global = true, env = "AUTH_AGENT_LOG_FORMAT", value_enum,
          default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// Flags of `auth-agent run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Timeout of the preflight renewal at start
    #[arg(long, env = "AUTH_AGENT_PREFLIGHT_TIMEOUT", value_name = "DURATION",
          default_value = "15s", value_parser = humantime::parse_duration)]
    pub preflight_timeout: Duration,
    /// Longest time between renewals (the server's next_renewal_at is used when sooner)
    #[arg(long, env = "AUTH_AGENT_INTERVAL", value_name = "DURATION",
          default_value = "3d", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// First retry delay after a failure; doubles on each further failure
    #[arg(long, env = "AUTH_AGENT_BACKOFF_INITIAL", value_name = "DURATION",
          default_value = "30s", value_parser = humantime::parse_duration)]
    pub backoff_initial: Duration,
    /// Cap on the retry delay
    #[arg(long, env = "AUTH_AGENT_BACKOFF_MAX", value_name = "DURATION",
          default_value = "1h", value_parser = humantime::parse_duration)]
    pub backoff_max: Duration,
    /// Longest sleep before the wall clock is checked again (catches up after a suspend)
    #[arg(long, env = "AUTH_AGENT_CHECK_PERIOD", value_name = "DURATION",
          default_value = "60s", value_parser = humantime::parse_duration)]
    pub check_period: Duration,
    /// Serve /healthz, /readyz and /metrics on this address, e.g. 127.0.0.1:9464 [default: off]
    #[arg(long, env = "AUTH_AGENT_HEALTH_ADDR", value_name = "ADDR")]
    pub health_addr: Option<SocketAddr>,
    /// Traces: a root span per renewal attempt, its context sent to the service.
    #[command(flatten)]
    pub otel: auth_telemetry::otel::OtelArgs,
}

impl GlobalArgs {
    /// Resolves the flags into a [`Context`]: default paths, the server, the token source.
    pub fn context(&self) -> Result<Context, AgentError> {
        let (config_path, config_explicit) = match &self.config {
            Some(path) => (path.clone(), true),
            None => (config::default_path()?, false),
        };
        let server = self
            .server
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(str::parse)
            .transpose()?;
        // The token itself is deliberately not a flag: a command line is readable by every
        // user through /proc and `ps`. It can only come from the environment (or a file).
        let token_source = token_source(
            self.token_file
                .clone()
                .filter(|p| !p.as_os_str().is_empty()),
            std::env::var_os(TOKEN_ENV),
            config_path.clone(),
            config_explicit,
        );
        let state_file = self
            .state_file
            .clone()
            .unwrap_or_else(|| state::default_path(&config_path));
        bounded("--request-timeout", self.request_timeout, MAX_TIMEOUT)?;
        Ok(Context {
            config_path,
            config_explicit,
            server,
            token_source,
            state_file,
            request_timeout: self.request_timeout,
            channel: None,
            transport: Transport {
                tls: TlsFiles {
                    ca_file: self.ca_file.clone(),
                    client_cert: self.client_cert.clone(),
                    client_key: self.client_key.clone(),
                },
                ..Transport::default()
            },
        })
    }
}

/// The token source by precedence: `--token-file`/`AUTH_AGENT_TOKEN_FILE`, then
/// `AUTH_AGENT_TOKEN` (an empty one counts as unset), then the config file.
pub fn token_source(
    token_file: Option<PathBuf>,
    env_token: Option<OsString>,
    config_path: PathBuf,
    explicit: bool,
) -> TokenSource {
    if let Some(path) = token_file {
        return TokenSource::File(path);
    }
    match env_token.filter(|v| !v.is_empty()) {
        Some(value) => TokenSource::Env(value.to_str().and_then(|v| Token::parse(v).ok())),
        None => TokenSource::Config {
            path: config_path,
            explicit,
        },
    }
}

impl RunArgs {
    /// Builds the daemon's options. Without `--server`, the daemon uses the server that
    /// `login` saved in the config file, and waits for one if there is none yet.
    pub fn options(&self, context: &Context) -> Result<RunOptions, AgentError> {
        bounded("--preflight-timeout", self.preflight_timeout, MAX_TIMEOUT)?;
        bounded("--interval", self.interval, MAX_INTERVAL)?;
        bounded("--backoff-initial", self.backoff_initial, MAX_BACKOFF)?;
        bounded("--backoff-max", self.backoff_max, MAX_BACKOFF)?;
        bounded("--check-period", self.check_period, MAX_CHECK_PERIOD)?;
        if self.backoff_max < self.backoff_initial {
            return Err(AgentError::FixConfig(format!(
                "--backoff-max ({}) is shorter than --backoff-initial ({})",
                humantime::format_duration(self.backoff_max),
                humantime::format_duration(self.backoff_initial)
            )));
        }
        let server = match &context.server {
            Some(server) => ServerSource::Fixed(server.clone()),
            None => ServerSource::Saved {
                config: context.config_path.clone(),
                explicit: context.config_explicit,
            },
        };
        let mut opts = RunOptions::with_server(server, context.token_source.clone());
        opts.preflight_timeout = self.preflight_timeout;
        opts.request_timeout = context.request_timeout;
        opts.schedule = Schedule {
            interval: self.interval,
            backoff_initial: self.backoff_initial,
            backoff_max: self.backoff_max,
            ..Schedule::default()
        };
        opts.check_period = self.check_period;
        opts.state_file = Some(context.state_file.clone());
        opts.channel = context.channel.clone();
        opts.transport = context.transport.clone();
        Ok(opts)
    }
}

/// Longest `--interval`: a token checked less than yearly is as good as unwatched.
pub const MAX_INTERVAL: Duration = Duration::from_secs(365 * 86_400);
/// Longest `--backoff-initial` and `--backoff-max`.
pub const MAX_BACKOFF: Duration = Duration::from_secs(7 * 86_400);
/// Longest `--request-timeout` and `--preflight-timeout`.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Longest `--check-period`: it bounds how late a renewal is after a suspend.
pub const MAX_CHECK_PERIOD: Duration = Duration::from_secs(3600);

/// Checks that `value` is longer than zero and at most `max`. The upper bounds keep
/// every deadline representable (a `SystemTime` plus `300000000000y` overflows) and catch
/// a unit typo (`--check-period 60d`) before it silently disables the agent.
fn bounded(flag: &str, value: Duration, max: Duration) -> Result<(), AgentError> {
    if value.is_zero() {
        return Err(AgentError::FixConfig(format!(
            "{flag} must be longer than zero"
        )));
    }
    if value > max {
        return Err(AgentError::FixConfig(format!(
            "{flag} ({}) is too long: at most {}",
            humantime::format_duration(value),
            humantime::format_duration(max)
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn clap_definition_is_valid() {
        Cli::command().debug_assert();
    }

    #[test]
    fn token_source_precedence_is_file_then_env_then_config() {
        let token = auth_api::token::generate(&Default::default()).unwrap();
        let config = PathBuf::from("/c/config");
        let file = token_source(
            Some("/s/token".into()),
            Some(token.clone().into()),
            config.clone(),
            false,
        );
        assert_eq!(file, TokenSource::File("/s/token".into()));
        let env = token_source(None, Some(token.clone().into()), config.clone(), false);
        assert_eq!(env, TokenSource::Env(Some(Token::parse(&token).unwrap())));
        let from_config = token_source(None, Some("".into()), config.clone(), true);
        assert_eq!(
            from_config,
            TokenSource::Config {
                path: config,
                explicit: true
            }
        );
    }

    /// The command line without its environment variables: what a developer's shell
    /// exports (AUTH_AGENT_INTERVAL, ...) must not change what these tests see.
    fn parse<I: IntoIterator<Item = T>, T: Into<std::ffi::OsString> + Clone>(
        args: I,
    ) -> Result<Cli, clap::Error> {
        use clap::FromArgMatches;
        fn without_env(command: clap::Command) -> clap::Command {
            command
                .mut_args(|arg| arg.env(None::<&str>))
                .mut_subcommands(without_env)
        }
        Cli::from_arg_matches(&without_env(Cli::command()).try_get_matches_from(args)?)
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = parse([
            "auth-agent",
            "status",
            "--server",
            "http://h:1",
            "--config",
            "/x",
        ])
        .unwrap();
        assert_eq!(cli.global.server.as_deref(), Some("http://h:1"));
        assert_eq!(cli.global.config, Some(PathBuf::from("/x")));
    }

    #[test]
    fn run_flags_are_validated_with_the_flag_named() {
        let cli = parse([
            "auth-agent",
            "--config",
            "/x",
            "run",
            "--backoff-initial",
            "2h",
        ])
        .unwrap();
        let Command::Run(args) = &cli.command else {
            panic!("not run")
        };
        let context = cli.global.context().unwrap();
        let err = args.options(&context).unwrap_err();
        assert!(err.to_string().contains("--backoff-max"), "{err}");
    }

    #[test]
    fn durations_are_bounded_with_the_flag_named() {
        for (flag, value) in [
            ("--interval", "300000000000y"),
            ("--interval", "366d"),
            ("--backoff-max", "8d"),
            ("--backoff-initial", "8d"),
            ("--check-period", "2h"),
            ("--preflight-timeout", "61m"),
            ("--request-timeout", "2h"),
        ] {
            let mut args = vec!["auth-agent", "--config", "/x", "run", flag, value];
            if flag == "--backoff-initial" {
                args.extend(["--backoff-max", "7d"]);
            }
            let cli = parse(&args).unwrap();
            let Command::Run(run) = &cli.command else {
                panic!("not run")
            };
            let err = cli
                .global
                .context()
                .and_then(|context| run.options(&context))
                .unwrap_err();
            assert!(matches!(err, AgentError::FixConfig(_)), "{flag}: {err:?}");
            assert!(
                err.to_string().starts_with(&format!("{flag} ("))
                    && err.to_string().contains("at most"),
                "{flag} {value}: {err}"
            );
        }
        let cli = parse([
            "auth-agent",
            "--config",
            "/x",
            "run",
            "--interval",
            "365d",
            "--backoff-max",
            "7d",
            "--check-period",
            "1h",
        ])
        .unwrap();
        let Command::Run(run) = &cli.command else {
            panic!("not run")
        };
        assert!(run.options(&cli.global.context().unwrap()).is_ok());
    }

    #[test]
    fn the_help_never_shows_a_token_value() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("--token-file"));
        assert!(
            !help.contains("--token "),
            "the token itself must not be a flag"
        );
    }
}
