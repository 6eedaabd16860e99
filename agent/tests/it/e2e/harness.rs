//! The pieces every e2e test uses: the real service on a fresh database, the agent
//! in-process or as a child process (its output drained on threads), bounded waits, and
//! the check that a token never leaked.
use std::{
    io::{BufRead, BufReader, Read},
    path::Path,
    process::{Child, ExitStatus, Output, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant, SystemTime},
};

use auth_agent::{
    Clock, RunOptions, Token, TokenSource,
    cmd::{self, Context, login::LoginReport},
};
use auth_service::{db::Db, renewal::RenewalPolicy};
use auth_test_support::{agent::RunningAgent, fixtures, process, server::TestServer};
use tokio::io::AsyncWriteExt;
use uuid::Uuid;

pub const DAY: Duration = Duration::from_secs(86_400);
pub const HOUR: Duration = Duration::from_secs(3600);
pub use auth_test_support::agent::PROMPTLY;
/// How often the waits below look again.
const POLL: Duration = Duration::from_millis(20);

/// The real auth-service on a database of its own.
pub struct Service {
    server: TestServer,
}

impl Service {
    pub fn from(server: TestServer) -> Service {
        Service { server }
    }

    pub async fn start(policy: RenewalPolicy) -> Service {
        let server = TestServer::fresh(policy).await.unwrap();
        Service { server }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn db(&self) -> &Db {
        &self.server.db
    }

    /// The service's `/metrics` page.
    pub async fn metrics(&self) -> String {
        self.server.http_get("/metrics").await.unwrap().1
    }

    /// A token of alice's (named `test`) that expires `secs` from now by the database
    /// clock (negative: already expired). Returns (id, raw token).
    pub async fn token_expiring_in(&self, secs: f64) -> (Uuid, String) {
        fixtures::token_expiring_in(self.db(), secs).await
    }

    pub async fn set_expires_in(&self, id: &Uuid, secs: f64) {
        fixtures::set_expires_in(self.db(), *id, secs)
            .await
            .unwrap();
    }

    /// The stored expiry (the token must have one) and the database clock.
    pub async fn expiry(&self, id: &Uuid) -> (SystemTime, SystemTime) {
        let (stored, db_now) = fixtures::stored_expiry(self.db(), *id).await.unwrap();
        (
            stored.expect("the token has an expiry").into(),
            db_now.into(),
        )
    }

    /// The kinds of the token's audit events, oldest first.
    pub async fn event_kinds(&self, id: &Uuid) -> Vec<String> {
        fixtures::event_kinds(self.db(), *id).await.unwrap()
    }

    pub async fn revoke(&self, id: &Uuid) {
        self.db().revoke_by_id(*id, "test").await.unwrap();
    }

    pub async fn shutdown(self) {
        self.server.shutdown().await.unwrap();
    }
}

/// How far apart two times are, whichever comes first.
pub fn gap(a: SystemTime, b: SystemTime) -> Duration {
    a.duration_since(b).unwrap_or_else(|e| e.duration())
}

/// Fails if the secret part of any of `tokens` is in `text`. The failure message shows
/// the text with the token replaced, so that the report does not leak it further.
pub fn assert_no_token(what: &str, text: &str, tokens: &[&str]) {
    for token in tokens {
        let secret = token.split_once('_').map_or(*token, |(_, secret)| secret);
        assert!(
            !text.contains(secret),
            "a token leaked into {what}:\n{}",
            text.replace(secret, "<LEAKED TOKEN>")
        );
    }
}

/// `auth-agent login` through the library, against `service`, saving to `config`.
pub async fn login(service: &Service, config: &Path, raw: &str) -> LoginReport {
    let mut context = Context::new(config.to_owned());
    context.server = Some(service.url().parse().unwrap());
    cmd::login::login(&context, Token::parse(raw).unwrap())
        .await
        .unwrap()
}

/// Daemon options reading the token from `config` (as `run --config` does), looking at
/// the clock and the token source every 20 ms so that a clock jump or a new login is
/// noticed at once; everything else at its default.
pub fn options(service: &Service, config: &Path) -> RunOptions {
    let mut opts = RunOptions::new(
        service.url().parse().unwrap(),
        TokenSource::Config {
            path: config.to_owned(),
            explicit: true,
        },
    );
    opts.check_period = POLL;
    opts
}

/// The daemon running in this test's runtime, through `auth_agent::run`.
pub fn spawn_agent(opts: RunOptions, clock: Arc<dyn Clock>) -> RunningAgent {
    auth_test_support::agent::spawn(opts, clock)
}

/// Runs a one-shot `auth-agent` command to completion: a clean environment with HOME at
/// `home`, `stdin` piped in, stdout and stderr collected (concurrently, so neither pipe
/// can fill up and block the child).
pub async fn command(args: &[&str], stdin: &str, home: &Path) -> Output {
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_auth-agent"))
        .args(args)
        .env_clear()
        .env("HOME", home)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // A command that fails before reading stdin closes it; that is its exit code's story.
    let _ = input.write_all(stdin.as_bytes()).await;
    drop(input);
    tokio::time::timeout(PROMPTLY, child.wait_with_output())
        .await
        .expect("the command finishes promptly")
        .unwrap()
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Lines read from a child's pipe by a thread of their own.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    /// Reads `pipe` to its end on a new thread. A child that writes to a pipe nobody reads
    /// blocks once the pipe is full, so every pipe of a long-running child is drained.
    fn drain(pipe: impl Read + Send + 'static) -> (Lines, thread::JoinHandle<()>) {
        let lines = Lines::default();
        let sink = lines.clone();
        let reader = thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            let mut line = Vec::new();
            // Bytes, not `lines()`: a line that is not UTF-8 must not stop the draining.
            while matches!(pipe.read_until(b'\n', &mut line), Ok(n) if n > 0) {
                let text = String::from_utf8_lossy(&line).trim_end().to_owned();
                sink.0.lock().unwrap().push(text);
                line.clear();
            }
        });
        (lines, reader)
    }

    pub fn text(&self) -> String {
        self.0.lock().unwrap().join("\n")
    }

    fn find(&self, needle: &str) -> Option<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }
}

/// A long-running `auth-agent` child (e.g. `run`), killed if the test ends without
/// stopping it.
pub struct Process {
    child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
    readers: Vec<thread::JoinHandle<()>>,
    started: Instant,
}

impl Process {
    /// Starts the binary with a clean environment (HOME at `home`, plus `envs`).
    pub fn spawn(args: &[&str], envs: &[(&str, &str)], home: &Path) -> Process {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_auth-agent"))
            .args(args)
            .env_clear()
            .env("HOME", home)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let started = Instant::now();
        let (stdout, out_reader) = Lines::drain(child.stdout.take().unwrap());
        let (stderr, err_reader) = Lines::drain(child.stderr.take().unwrap());
        Process {
            child,
            stdout,
            stderr,
            readers: vec![out_reader, err_reader],
            started,
        }
    }

    /// Waits (at most `limit` after the start) for a stderr line containing `needle`;
    /// returns it and how long after the start it was seen. Polls with tokio sleeps, so
    /// the in-process server keeps serving meanwhile.
    pub async fn wait_for_line(&mut self, needle: &str, limit: Duration) -> (String, Duration) {
        loop {
            if let Some(line) = self.stderr.find(needle) {
                return (line, self.started.elapsed());
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // Its last lines may still be in the reader's hands.
                self.join_readers();
                if let Some(line) = self.stderr.find(needle) {
                    return (line, self.started.elapsed());
                }
                panic!(
                    "auth-agent exited ({status}) without logging {needle:?}:\n{}",
                    self.stderr.text()
                );
            }
            assert!(
                self.started.elapsed() < limit,
                "no {needle:?} within {limit:?}:\n{}",
                self.stderr.text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits (at most `limit`) for the child to exit by itself; its status once both
    /// pipes are read to the end.
    pub async fn exit(&mut self, limit: Duration) -> ExitStatus {
        let asked = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                asked.elapsed() < limit,
                "auth-agent did not exit within {limit:?}:\n{}",
                self.stderr.text()
            );
            tokio::time::sleep(POLL).await;
        };
        self.join_readers();
        status
    }

    /// Sends SIGTERM and waits (at most [`PROMPTLY`]) for the exit; returns its status
    /// once both pipes are read to the end.
    pub async fn terminate(&mut self) -> ExitStatus {
        process::terminate(self.child.id()).unwrap();
        let asked = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(
                asked.elapsed() < PROMPTLY,
                "auth-agent did not stop within {PROMPTLY:?} of SIGTERM:\n{}",
                self.stderr.text()
            );
            tokio::time::sleep(POLL).await;
        };
        self.join_readers();
        status
    }

    /// The child has exited, so its pipes are at their end: the readers finish at once.
    fn join_readers(&mut self) {
        for reader in self.readers.drain(..) {
            reader.join().unwrap();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
