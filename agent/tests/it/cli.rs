//! The `auth-agent` binary itself: exit codes, what `login` writes (and does not), the
//! config file's mode, the command round trip, and a clean stop on SIGTERM.
use std::{
    os::unix::fs::PermissionsExt,
    path::Path,
    process::{Output, Stdio},
    time::Duration,
};

use auth_agent::config::ConfigFile;
use auth_test_support::process;
use tokio::{io::AsyncWriteExt, process::Command};

use crate::{
    fake::{Fake, Rpc},
    support::{TempDir, token},
};

/// Runs the binary with a clean environment (no stray AUTH_AGENT_* from the caller),
/// `stdin` piped in, and `envs` set.
async fn agent(args: &[&str], stdin: &str, envs: &[(&str, &str)]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_auth-agent"))
        .args(args)
        .env_clear()
        .envs(envs.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test]
async fn login_with_a_rejected_token_writes_nothing() {
    let fake = Fake::new();
    fake.accept_only(&[], "TOKEN_UNKNOWN");
    let url = fake.serve_tcp().await;
    let dir = TempDir::new();
    let config = dir.join("sub/config");
    let config_arg = config.to_str().unwrap();

    let out = agent(
        &["login", "--server", &url, "--config", config_arg],
        &format!("{}\n", token("unknown")),
        &[],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("token rejected (TOKEN_UNKNOWN)") && stderr.contains("nothing was saved"),
        "{stderr}"
    );
    assert!(
        !dir.join("sub").exists(),
        "not even the directory was created"
    );
    assert_eq!(
        fake.rpcs(),
        [Rpc::Lookup],
        "login checks with LookupCurrentToken"
    );

    // Over an existing login, a rejected token leaves the file byte for byte.
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    let before = format!("server = \"{url}\"\ntoken = \"{}\"\n", token("kept"));
    std::fs::write(&config, &before).unwrap();
    let out = agent(&["login", "--config", config_arg], &token("unknown"), &[]).await;
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(std::fs::read_to_string(&config).unwrap(), before);
    assert_eq!(
        std::fs::read_dir(dir.join("sub")).unwrap().count(),
        1,
        "no temporary file left behind"
    );
}

#[tokio::test]
async fn login_refuses_what_is_not_a_token_without_sending_it() {
    let fake = Fake::new();
    let url = fake.serve_tcp().await;
    let dir = TempDir::new();
    let config = dir.join("config");

    let out = agent(
        &[
            "login",
            "--server",
            &url,
            "--config",
            config.to_str().unwrap(),
        ],
        "hunter2\n",
        &[],
    )
    .await;
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("TOKEN_MALFORMED"), "{stderr}");
    assert!(
        !stderr.contains("hunter2"),
        "the rejected input is not echoed: {stderr}"
    );
    assert!(
        fake.rpcs().is_empty(),
        "something that is not a token never leaves the machine"
    );
    assert!(!config.exists());
}

#[tokio::test]
async fn login_saves_to_the_xdg_config_readable_only_by_its_owner() {
    let fake = Fake::new();
    let url = fake.serve_tcp().await;
    let dir = TempDir::new();
    let xdg = dir.join("xdg");
    let tok = token("xdglogin");

    let out = agent(
        &["login", "--server", &url],
        &format!("{tok}\n"),
        &[("XDG_CONFIG_HOME", xdg.to_str().unwrap())],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(&format!("logged in to {url} as alice")),
        "{}",
        text(&out.stdout)
    );
    let config = xdg.join("auth-agent/config");
    assert_eq!(mode(&config), 0o600);
    assert_eq!(mode(&xdg.join("auth-agent")), 0o700);
    let saved = ConfigFile::parse(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(saved.server.as_deref(), Some(url.as_str()));
    assert_eq!(saved.token.unwrap().expose(), tok);
    assert_eq!(
        std::fs::read_dir(xdg.join("auth-agent")).unwrap().count(),
        1,
        "no temporary file left behind"
    );

    // HOME is the fallback when XDG_CONFIG_HOME is unset.
    let home = dir.join("home");
    let out = agent(
        &["login", "--server", &url],
        &tok,
        &[("HOME", home.to_str().unwrap())],
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(mode(&home.join(".config/auth-agent/config")), 0o600);
}

#[tokio::test]
async fn status_renew_and_logout_round_trip() {
    let fake = Fake::new();
    let url = fake.serve_tcp().await;
    let dir = TempDir::new();
    let config = dir.join("config");
    let cfg = config.to_str().unwrap();

    assert_eq!(
        agent(
            &["login", "--server", &url, "--config", cfg],
            &token("round"),
            &[]
        )
        .await
        .status
        .code(),
        Some(0)
    );
    // The server comes from the config from now on.
    let status = agent(&["status", "--config", cfg], "", &[]).await;
    let stdout = text(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status.stderr));
    for line in [
        format!("server:        {url}"),
        "user:          alice".into(),
        "token:         laptop".into(),
        "last renewal:  none recorded".into(),
    ] {
        assert!(stdout.contains(&line), "{line:?} in\n{stdout}");
    }
    assert!(
        stdout.contains("expires:") && stdout.contains("(in 89d 23h)"),
        "{stdout}"
    );

    let renew = agent(&["renew", "--config", cfg], "", &[]).await;
    assert_eq!(renew.status.code(), Some(0));
    assert!(
        text(&renew.stdout).starts_with("renewed: the token now expires at"),
        "{}",
        text(&renew.stdout)
    );
    assert_eq!(mode(&dir.join("state")), 0o600);
    let status = agent(&["status", "--config", cfg], "", &[]).await;
    assert!(
        text(&status.stdout).contains("ago), extended the expiry"),
        "{}",
        text(&status.stdout)
    );

    let logout = agent(&["logout", "--config", cfg], "", &[]).await;
    assert_eq!(logout.status.code(), Some(0), "{}", text(&logout.stderr));
    assert!(
        text(&logout.stdout).contains("token revoked at"),
        "{}",
        text(&logout.stdout)
    );
    let saved = ConfigFile::parse(&std::fs::read_to_string(&config).unwrap()).unwrap();
    assert_eq!(
        (saved.server.as_deref(), saved.token),
        (Some(url.as_str()), None)
    );
    assert_eq!(mode(&config), 0o600);
    assert_eq!(
        fake.rpcs(),
        [
            Rpc::Lookup,
            Rpc::Lookup,
            Rpc::Renew,
            Rpc::Lookup,
            Rpc::Revoke
        ]
    );

    let status = agent(&["status", "--config", cfg], "", &[]).await;
    assert_eq!(status.status.code(), Some(3));
    assert!(
        text(&status.stderr).contains(&format!("run `auth-agent login --config {cfg}`")),
        "{}",
        text(&status.stderr)
    );
}

#[tokio::test]
async fn status_exit_codes_separate_a_rejected_token_from_an_unreachable_server() {
    let fake = Fake::new();
    fake.accept_only(&[], "TOKEN_EXPIRED");
    let url = fake.serve_tcp().await;
    let dir = TempDir::new();
    let cfg = dir.join("config");
    let env = [("AUTH_AGENT_TOKEN", token("envtoken"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let rejected = agent(
        &[
            "status",
            "--server",
            &url,
            "--config",
            cfg.to_str().unwrap(),
        ],
        "",
        &env,
    )
    .await;
    assert_eq!(rejected.status.code(), Some(3));
    assert!(
        text(&rejected.stderr).contains("token rejected (TOKEN_EXPIRED): set AUTH_AGENT_TOKEN"),
        "{}",
        text(&rejected.stderr)
    );

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let down = agent(
        &[
            "status",
            "--server",
            &closed,
            "--config",
            cfg.to_str().unwrap(),
        ],
        "",
        &env,
    )
    .await;
    assert_eq!(down.status.code(), Some(1), "{}", text(&down.stderr));
    assert!(
        text(&down.stderr).contains("not a login problem"),
        "{}",
        text(&down.stderr)
    );

    let unconfigured = agent(&["status", "--config", cfg.to_str().unwrap()], "", &env).await;
    assert_eq!(unconfigured.status.code(), Some(2));
    assert!(
        text(&unconfigured.stderr).contains("--server"),
        "{}",
        text(&unconfigured.stderr)
    );
}

#[tokio::test]
async fn run_renews_first_and_stops_cleanly_on_sigterm() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let fake = Fake::new();
    let url = fake.serve_tcp().await;
    let dir = TempDir::new();
    let file = dir.join("token");
    std::fs::write(&file, token("sidecar")).unwrap();
    let state = dir.join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_auth-agent"))
        .args([
            "run",
            "--server",
            &url,
            "--state-file",
            state.to_str().unwrap(),
        ])
        .env_clear()
        .env("AUTH_AGENT_TOKEN_FILE", &file)
        .env("HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Read the log as it comes until the identity line, so SIGTERM lands after startup.
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    let started = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = stderr.next_line().await.unwrap() {
            let done = line.contains("authenticated as alice, token laptop expires at");
            log.push(line);
            if done {
                return;
            }
        }
        panic!("the agent exited before authenticating");
    });
    started
        .await
        .unwrap_or_else(|_| panic!("no identity line in:\n{}", log.join("\n")));
    assert_eq!(fake.rpcs(), [Rpc::Renew, Rpc::Lookup]);

    process::terminate(child.id().unwrap()).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    while let Some(line) = stderr.next_line().await.unwrap() {
        log.push(line);
    }
    let log = log.join("\n");
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("shutdown requested"), "{log}");
    assert!(!log.contains(&token("sidecar")[4..]), "{log}");
    assert_eq!(mode(&state), 0o600);
}

/// Reads `lines` until one contains `needle`, keeping every line in `log`.
async fn read_until(
    lines: &mut tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStderr>>,
    log: &mut Vec<String>,
    needle: &str,
) {
    let found = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains(needle);
            log.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no {needle:?} (exited or timed out) in:\n{}",
        log.join("\n")
    );
}

/// A fresh systemd install: `run` starts before anyone has logged in, with no server and
/// no token. It must wait (exit 2 would be final under RestartPreventExitStatus=2) and
/// recover once `login` writes the config, without a restart.
#[tokio::test]
async fn run_without_any_config_waits_for_login_and_recovers() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let fake = Fake::new();
    let url = fake.serve_tcp().await;
    let dir = TempDir::new();
    let config = dir.join("state-dir/config");
    let config_arg = config.to_str().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_auth-agent"))
        .args(["run", "--check-period", "100ms"])
        .env_clear()
        .env("AUTH_AGENT_CONFIG", &config)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    read_until(&mut stderr, &mut log, "no server configured").await;
    let fix = format!("auth-agent login --config {config_arg} --server http://HOST:PORT");
    assert!(log.last().unwrap().contains(&fix), "{}", log.join("\n"));
    assert!(log.last().unwrap().contains("WARN"), "{}", log.join("\n"));
    // That it waits rather than exits is proven below by the event itself: the same
    // process authenticates once `login` has run. (A check that it is still running
    // after a fixed sleep would pass as well if it exited a moment later.)

    let login = agent(
        &["login", "--config", config_arg, "--server", &url],
        &format!("{}\n", token("fresh")),
        &[],
    )
    .await;
    assert_eq!(login.status.code(), Some(0), "{}", text(&login.stderr));
    read_until(&mut stderr, &mut log, "authenticated as alice").await;

    process::terminate(child.id().unwrap()).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    let log = log.join("\n");
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(
        log.matches("no server configured").count(),
        1,
        "said once, not every check period:\n{log}"
    );
    // login's own lookup, then the daemon's preflight renewal and lookup.
    assert_eq!(fake.rpcs(), [Rpc::Lookup, Rpc::Renew, Rpc::Lookup]);
}

#[tokio::test]
async fn logout_keeps_the_token_while_the_server_cannot_revoke_it() {
    let fake = Fake::new();
    let url = fake.serve_tcp().await;
    let dir = TempDir::new();
    let config = dir.join("config");
    let cfg = config.to_str().unwrap();
    assert_eq!(
        agent(
            &["login", "--server", &url, "--config", cfg],
            &token("logout"),
            &[]
        )
        .await
        .status
        .code(),
        Some(0)
    );
    let before = std::fs::read_to_string(&config).unwrap();

    fake.revoke_always(crate::fake::fail(tonic::Status::unavailable(
        "database down",
    )));
    let out = agent(&["logout", "--config", cfg], "", &[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        before,
        "kept, so that logout can be retried"
    );

    // A token the server already refuses is simply forgotten.
    fake.revoke_always(crate::fake::fail(crate::fake::unauthenticated(
        "TOKEN_EXPIRED",
    )));
    let out = agent(&["logout", "--config", cfg], "", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("already refuses this token (TOKEN_EXPIRED)"),
        "{}",
        text(&out.stdout)
    );
    assert_eq!(
        ConfigFile::parse(&std::fs::read_to_string(&config).unwrap())
            .unwrap()
            .token,
        None
    );
}

/// `status` reads the last renewal from the state file: after `login` with a different
/// token, the previous token's renewal must not be shown as this one's.
#[tokio::test]
async fn login_with_a_different_token_resets_the_state_file() {
    use auth_agent::{SystemClock, Token, cmd};

    let fake = Fake::new();
    let url = fake.serve_tcp().await;
    let dir = TempDir::new();
    let mut context = cmd::Context::new(dir.join("config"));
    context.server = Some(url.parse().unwrap());
    let login = |tag: &str| cmd::login::login(&context, Token::parse(&token(tag)).unwrap());

    login("first").await.unwrap();
    cmd::renew::renew(&context, &SystemClock).await.unwrap();
    assert!(context.state_file.exists());
    login("first").await.unwrap();
    assert!(
        context.state_file.exists(),
        "the same token again keeps its history"
    );
    login("second").await.unwrap();
    assert!(
        !context.state_file.exists(),
        "the first token's renewal must not be reported for the second"
    );
    let status = cmd::status::status(&context, &SystemClock).await.unwrap();
    assert!(
        status.to_string().contains("last renewal:  none recorded"),
        "{status}"
    );
}

/// Runs the binary with its stdout or stderr (or both) already closed by the reader, as
/// `auth-agent status | head -0` does.
async fn with_closed(args: &[&str], envs: &[(&str, &str)], stdout: bool, stderr: bool) -> Output {
    let pipe = |closed: bool| {
        if closed {
            Stdio::piped()
        } else {
            Stdio::null()
        }
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_auth-agent"))
        .args(args)
        .env_clear()
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .stdout(pipe(stdout))
        .stderr(pipe(stderr))
        .spawn()
        .unwrap();
    // Dropping the read ends closes them: every write then fails with EPIPE.
    drop(child.stdout.take());
    drop(child.stderr.take());
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap();
    Output {
        status,
        stdout: Vec::new(),
        stderr: Vec::new(),
    }
}

#[tokio::test]
async fn a_closed_stdout_or_stderr_is_not_a_panic() {
    let fake = Fake::new();
    let url = fake.serve_tcp().await;
    let env = [("AUTH_AGENT_TOKEN", token("closedpipe"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // A report on a closed stdout: the command did its work, and says so by its code.
    let status = with_closed(
        &["status", "--server", &url, "--config", "/nonexistent/c"],
        &env,
        true,
        false,
    )
    .await;
    assert_eq!(status.status.code(), Some(0), "{:?}", status.status);
    // An error on a closed stderr: still the error's own exit code, not a panic (101).
    let failed = with_closed(
        &[
            "status",
            "--server",
            "http://127.0.0.1:1",
            "--config",
            "/nonexistent/c",
        ],
        &env,
        false,
        true,
    )
    .await;
    assert_eq!(failed.status.code(), Some(1), "{:?}", failed.status);
}

/// Each line as a JSON object; a line that is not one fails the test.
fn json_lines(text: &str) -> Vec<serde_json::Map<String, serde_json::Value>> {
    text.lines()
        .map(|line| match serde_json::from_str(line) {
            Ok(serde_json::Value::Object(map)) => map,
            _ => panic!("not a JSON object: {line:?}"),
        })
        .collect()
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_never_show_the_token() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let fake = Fake::new();
    let url = fake.serve_tcp().await;
    let dir = TempDir::new();
    let file = dir.join("token");
    let raw = token("jsonlogs");
    std::fs::write(&file, &raw).unwrap();
    let state = dir.join("state");
    let mut child = Command::new(env!("CARGO_BIN_EXE_auth-agent"))
        .args([
            "run",
            "--server",
            &url,
            "--state-file",
            state.to_str().unwrap(),
            "--log-format",
            "json",
        ])
        .env_clear()
        .env("AUTH_AGENT_TOKEN_FILE", &file)
        // Every line of every crate, h2's and hyper's included, to look for the token.
        .env("AUTH_AGENT_LOG", "trace")
        .env("HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    read_until(&mut stderr, &mut log, "authenticated as alice").await;
    process::terminate(child.id().unwrap()).unwrap();
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .unwrap()
        .unwrap();
    while let Some(line) = stderr.next_line().await.unwrap() {
        log.push(line);
    }
    let log = log.join("\n");
    assert_eq!(status.code(), Some(0), "{log}");

    let lines = json_lines(&log);
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line.contains_key(key), "{key} in {line:?}");
        }
    }
    let identity = lines
        .iter()
        .find(|l| {
            l.get("message")
                .and_then(|m| m.as_str())
                .is_some_and(|m| m.starts_with("authenticated as alice, token laptop"))
        })
        .unwrap_or_else(|| panic!("{log}"));
    assert_eq!(identity["level"], "INFO");
    assert!(
        lines.iter().any(|l| l["level"] == "TRACE"
            && l["target"]
                .as_str()
                .is_some_and(|t| t.starts_with("h2") || t.starts_with("hyper"))),
        "the capture saw h2/hyper trace events too"
    );
    assert!(!log.contains(&raw[4..]), "the token reached the log");
}

#[tokio::test]
async fn a_failed_command_says_why_in_json_too() {
    let dir = TempDir::new();
    let cfg = dir.join("config");
    let out = agent(
        &["status", "--config", cfg.to_str().unwrap()],
        "",
        &[("AUTH_AGENT_LOG_FORMAT", "json")],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let lines = json_lines(&text(&out.stderr));
    let last = lines.last().unwrap();
    assert_eq!(last["level"], "ERROR");
    assert_eq!(last["target"], "auth_agent");
    assert!(
        last["message"].as_str().unwrap().contains("--server"),
        "{last:?}"
    );
}

#[tokio::test]
async fn completions_need_no_config_and_name_the_real_commands() {
    for shell in ["bash", "zsh", "fish"] {
        // No HOME, no XDG_CONFIG_HOME, no server: nothing a config needs.
        let out = agent(&["completions", shell], "", &[]).await;
        let script = text(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", text(&out.stderr));
        for word in ["auth-agent", "login", "renew", "token-file", "health-addr"] {
            assert!(script.contains(word), "{shell}: no {word:?} in\n{script}");
        }
    }
}

/// One line of `status --output json` as an object.
fn status_json(out: &Output) -> serde_json::Map<String, serde_json::Value> {
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line: {stdout}");
    match serde_json::from_str(&stdout) {
        Ok(serde_json::Value::Object(map)) => map,
        _ => panic!("not a JSON object: {stdout}"),
    }
}

#[tokio::test]
async fn status_output_json_for_scripts_with_the_same_exit_codes() {
    let fake = Fake::new();
    let url = fake.serve_tcp().await;
    let dir = TempDir::new();
    let config = dir.join("config");
    let cfg = config.to_str().unwrap();
    let raw = token("jsonstatus");
    let login = agent(&["login", "--server", &url, "--config", cfg], &raw, &[]).await;
    assert_eq!(login.status.code(), Some(0), "{}", text(&login.stderr));

    // Before any renewal: who, which token, when it expires; no renewal recorded.
    let out = agent(&["status", "--config", cfg, "--output", "json"], "", &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        !text(&out.stdout).contains(&raw[4..]),
        "the token was printed"
    );
    let json = status_json(&out);
    assert_eq!(json["state"], "active");
    assert_eq!(json["server"], url.as_str());
    assert_eq!(json["user"], "alice");
    assert_eq!(json["token_name"], "laptop");
    assert_eq!(json["never_expires"], false);
    assert!(
        humantime::parse_rfc3339(json["expires_at"].as_str().unwrap()).is_ok(),
        "{json:?}"
    );
    assert_eq!(json["last_renewal_at"], serde_json::Value::Null);
    assert_eq!(json["next_renewal_at"], serde_json::Value::Null);
    assert_eq!(json["last_error_reason"], serde_json::Value::Null);

    // After a renewal: when it happened, and when the next one would extend the token.
    let renew = agent(&["renew", "--config", cfg], "", &[]).await;
    assert_eq!(renew.status.code(), Some(0), "{}", text(&renew.stderr));
    let json = status_json(&agent(&["status", "--config", cfg, "--output", "json"], "", &[]).await);
    assert_eq!(json["last_renewal_extended"], true);
    for key in ["last_renewal_at", "next_renewal_at"] {
        assert!(
            json[key]
                .as_str()
                .is_some_and(|t| humantime::parse_rfc3339(t).is_ok()),
            "{key}: {json:?}"
        );
    }
    // The text output is as it was.
    let plain = agent(&["status", "--config", cfg], "", &[]).await;
    assert!(text(&plain.stdout).starts_with(&format!("server:        {url}\n")));

    // Rejected: still one object, with the reason, and still exit 3 (the message on
    // stderr); the variable works as the flag does.
    fake.accept_only(&[], "TOKEN_REVOKED");
    let out = agent(
        &["status", "--config", cfg],
        "",
        &[("AUTH_AGENT_OUTPUT", "json")],
    )
    .await;
    assert_eq!(out.status.code(), Some(3), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("token rejected (TOKEN_REVOKED)"));
    let json = status_json(&out);
    assert_eq!(json["state"], "rejected");
    assert_eq!(json["last_error_reason"], "TOKEN_REVOKED");
    assert_eq!(json["user"], serde_json::Value::Null);
    assert!(
        json["last_renewal_at"].is_string(),
        "what the state file says: {json:?}"
    );

    // Unreachable: exit 1, the gRPC code as the reason.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let out = agent(
        &[
            "status", "--config", cfg, "--server", &closed, "--output", "json",
        ],
        "",
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let json = status_json(&out);
    assert_eq!(json["state"], "unreachable");
    assert_eq!(json["last_error_reason"], "UNAVAILABLE");
    assert_eq!(json["server"], closed.as_str());

    // A configuration error is a usage problem, not a status: nothing on stdout, exit 2.
    let unconfigured = dir.join("none");
    let out = agent(
        &[
            "status",
            "--config",
            unconfigured.to_str().unwrap(),
            "--output",
            "json",
        ],
        "",
        &[],
    )
    .await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));
}
