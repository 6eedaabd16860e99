//! The `auth-service` binary as a person uses it: token commands, flags, the
//! embedded default with `serve`, clean shutdown, and no token in any output.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Output, Stdio},
    sync::mpsc::Receiver,
    time::Duration,
};

use auth_api::v1::{
    RenewCurrentTokenRequest, ValidateTokenRequest, auth_service_client::AuthServiceClient,
};
use auth_test_support::{cluster, grpc::*, process};

pub(crate) fn run(args: &[&str]) -> Output {
    crate::service().args(args).output().unwrap()
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

async fn db_url() -> String {
    cluster::conninfo(&cluster::fresh_database().await.unwrap())
}

#[tokio::test]
async fn token_create_prints_only_the_token_and_list_never_shows_it() {
    let url = db_url().await;
    let out = run(&[
        "token",
        "create",
        "--user",
        "alice",
        "--name",
        "ci",
        "--scope",
        "read",
        "--scope",
        "write",
        "--database-url",
        &url,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "stdout is the token alone: {stdout:?}");
    let token = lines[0];
    assert!(token.starts_with("pat_") && token.len() == 40, "{token}");
    assert!(
        !text(&out.stderr).contains(token),
        "stderr never repeats the token"
    );
    assert!(text(&out.stderr).contains("shown only once"));

    // Flags before the subcommand work too.
    let list = run(&["--database-url", &url, "token", "list", "--user", "alice"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    let listing = text(&list.stdout);
    assert!(
        listing.contains("alice") && listing.contains("read,write") && listing.contains("active"),
        "{listing}"
    );
    assert!(listing.contains(&token[..8]), "display prefix shown");
    assert!(!listing.contains(&token[8..]), "never the secret");

    let id = listing
        .lines()
        .nth(1)
        .unwrap()
        .split('\t')
        .next()
        .unwrap()
        .to_string();
    let revoke = run(&["token", "revoke", &id, "--database-url", &url]);
    assert!(revoke.status.success(), "{}", text(&revoke.stderr));
    assert!(text(&run(&["token", "list", "--database-url", &url]).stdout).contains("revoked"));
    let twice = run(&["token", "revoke", &id, "--database-url", &url]);
    assert!(!twice.status.success());
    assert!(
        text(&twice.stderr).contains("already revoked"),
        "{}",
        text(&twice.stderr)
    );
}

#[tokio::test]
async fn never_expiring_tokens_and_bad_input() {
    let url = db_url().await;
    let out = run(&[
        "token",
        "create",
        "--user",
        "svc",
        "--expires-in",
        "never",
        "--database-url",
        &url,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&run(&["token", "list", "--database-url", &url]).stdout).contains("never"));

    let cases: [&[&str]; 5] = [
        &["token", "create", "--user", "a", "--expires-in", "soon"],
        &["token", "create", "--user", "a", "--expires-in", "0s"],
        &["token", "create", "--user", ""],
        &["token", "revoke", "not-a-uuid"],
        &["token", "revoke", "00000000-0000-0000-0000-000000000000"],
    ];
    for args in cases {
        let out = crate::service()
            .args(args)
            .args(["--database-url", &url])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(!text(&out.stderr).trim().is_empty(), "{args:?} says why");
        assert!(out.stdout.is_empty(), "{args:?} prints nothing on stdout");
    }
    let none = run(&["token", "list", "--database-url", &url]);
    assert_eq!(
        text(&none.stdout).lines().count(),
        2,
        "the failed commands created nothing"
    );

    let wrong = run(&["serve", "--no-such-flag"]);
    assert_eq!(wrong.status.code(), Some(2));
    assert!(text(&wrong.stderr).contains("--no-such-flag"));
}

#[tokio::test]
async fn a_missing_database_is_a_clear_error() {
    let dir = cluster::scratch_dir("missing");
    let url = format!(
        "host={} port=5432 user=postgres dbname=postgres connect_timeout=2",
        dir.display()
    );
    let out = run(&["token", "list", "--database-url", &url]);
    assert_eq!(out.status.code(), Some(1), "a runtime failure: retried");
    let err = text(&out.stderr);
    assert!(
        err.contains("database unavailable: cannot connect") && err.contains("--database-url"),
        "{err}"
    );
}

pub(crate) fn spawn_serve(args: &[&str]) -> Child {
    crate::service()
        .arg("serve")
        .args(args)
        // Every log line there is, to prove none of them carries the token.
        .env("AUTH_SERVICE_LOG", "trace")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Drains the child's stderr on a thread (a full pipe would block the server's
/// logging) into a channel, which closes when the child closes its stderr (exits).
pub(crate) fn stderr_lines(child: &mut Child) -> Receiver<String> {
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The address in serve's "auth-service listening addr=..." line, if `line` is it.
pub(crate) fn listening_addr(line: &str) -> Option<String> {
    line.contains("auth-service listening")
        .then(|| line.split("addr=").nth(1))
        .flatten()
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
}

/// Waits for the "listening" line. Returns the address it names (serve is started on
/// port 0, so the kernel picks a free one), the lines so far, and the channel of the
/// rest.
pub(crate) fn wait_listening(child: &mut Child) -> (String, Vec<String>, Receiver<String>) {
    let rx = stderr_lines(child);
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(60)) {
        let addr = listening_addr(&line);
        seen.push(line);
        if let Some(addr) = addr {
            return (addr, seen, rx);
        }
    }
    panic!("serve did not start:\n{}", seen.join("\n"));
}

pub(crate) fn terminate(child: &mut Child) -> std::process::ExitStatus {
    process::terminate(child.id()).unwrap();
    for _ in 0..300 {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    panic!("serve did not stop on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_on_the_embedded_default_then_sigterm_stops_everything() {
    let dir = cluster::scratch_dir("embedded");
    let data = dir.to_str().unwrap();
    let mut serve = spawn_serve(&["--data-dir", data, "--listen", "127.0.0.1:0"]);
    let (listen, mut log, rest) = wait_listening(&mut serve);

    // The Docker HEALTHCHECK command sees it serving (the database probe has passed
    // by the time the first health report is read, or soon after).
    let mut healthy = run(&["healthcheck", "--addr", &listen]);
    for _ in 0..50 {
        if healthy.status.success() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        healthy = run(&["healthcheck", "--addr", &listen]);
    }
    assert!(healthy.status.success(), "{}", text(&healthy.stderr));
    assert_eq!(text(&healthy.stdout).trim(), "SERVING");

    // `token create` against the same data dir while serve runs.
    let created = run(&[
        "token",
        "create",
        "--user",
        "bob",
        "--expires-in",
        "3d",
        "--data-dir",
        data,
    ]);
    assert!(created.status.success(), "{}", text(&created.stderr));
    let token = text(&created.stdout).trim().to_string();

    let mut client = AuthServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let renewed = client
        .renew_current_token(authed(RenewCurrentTokenRequest {}, &token))
        .await
        .unwrap();
    assert!(
        renewed.into_inner().renewed,
        "3 days left: inside the 7-day window"
    );
    client
        .validate_token(ValidateTokenRequest {
            token: token.clone(),
        })
        .await
        .unwrap();
    let mut typo = token.clone();
    typo.replace_range(12..13, if &token[12..13] == "Z" { "Y" } else { "Z" });
    assert_eq!(
        reason(
            &client
                .validate_token(ValidateTokenRequest {
                    token: typo.clone()
                })
                .await
                .unwrap_err()
        ),
        "TOKEN_MALFORMED"
    );

    let status = terminate(&mut serve);
    assert!(status.success(), "clean exit on SIGTERM: {status:?}");
    let down = run(&["healthcheck", "--addr", &listen]);
    assert!(!down.status.success() && text(&down.stderr).contains("unhealthy"));
    log.extend(rest.iter());
    let stdout = {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut serve.stdout.take().unwrap(), &mut s).unwrap();
        s
    };
    let all = log.join("\n") + &stdout;
    assert!(
        all.contains("token renewed"),
        "the trace log is real:\n{all}"
    );
    assert!(
        all.contains("embedded PostgreSQL stopped"),
        "the cluster is stopped last:\n{all}"
    );
    for secret in [&token[8..], &typo[8..]] {
        assert!(!all.contains(secret), "a token reached the log");
    }
    // The cluster really is down: the socket is gone.
    assert!(
        !dir.join("pgdata/.s.PGSQL.5432").exists()
            || std::fs::read_link(dir.join("pgdata")).is_ok()
    );

    // Data is kept between runs: the same token works after a restart.
    let mut serve = spawn_serve(&["--data-dir", data, "--listen", "127.0.0.1:0"]);
    let (listen, _seen, _rest) = wait_listening(&mut serve);
    let mut client = AuthServiceClient::connect(format!("http://{listen}"))
        .await
        .unwrap();
    let again = client
        .renew_current_token(authed(RenewCurrentTokenRequest {}, &token))
        .await
        .unwrap();
    assert!(
        !again.into_inner().renewed,
        "already extended in the first run"
    );
    assert!(terminate(&mut serve).success());
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_adopts_a_cluster_left_running_and_stops_it() {
    // A cluster left running, as after a crash (or started by a `token` command).
    let dir = cluster::scratch_dir("leftover");
    let data = dir.to_str().unwrap().to_string();
    let leftover = tokio::task::spawn_blocking({
        let dir = dir.clone();
        move || {
            let mut c = auth_service::embedded::Cluster::start(&dir, None, &cluster::options())?;
            c.disown();
            Ok::<_, auth_service::Error>(c)
        }
    })
    .await
    .unwrap()
    .unwrap();
    assert!(leftover.is_running());

    let mut serve = spawn_serve(&["--data-dir", &data, "--listen", "127.0.0.1:0"]);
    let (_listen, _seen, _rest) = wait_listening(&mut serve);
    // A one-shot command while serve runs leaves the cluster alone.
    let list = run(&["token", "list", "--data-dir", &data]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert!(leftover.is_running());
    assert!(terminate(&mut serve).success());
    assert!(
        !leftover.is_running(),
        "serve stopped the cluster it adopted"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn help_never_shows_a_database_password_from_the_environment() {
    let out = crate::service()
        .arg("--help")
        .env("AUTH_SERVICE_DATABASE_URL", "postgres://u:S3cret@h/db")
        .output()
        .unwrap();
    let help = text(&out.stdout) + &text(&out.stderr);
    assert!(help.contains("--database-url"), "{help}");
    assert!(!help.contains("S3cret"), "{help}");
    let sub = crate::service()
        .args(["token", "list", "--help"])
        .env("AUTH_SERVICE_DATABASE_URL", "postgres://u:S3cret@h/db")
        .output()
        .unwrap();
    assert!(!text(&sub.stdout).contains("S3cret"));
}

#[test]
fn completions_need_no_database_and_name_the_real_commands() {
    for shell in ["bash", "zsh", "fish"] {
        // A database that cannot be reached and a prefix that is not valid: neither is
        // looked at.
        let out = crate::service()
            .args(["completions", shell])
            .env(
                "AUTH_SERVICE_DATABASE_URL",
                "postgres://nobody@127.0.0.1:1/none",
            )
            .env("AUTH_SERVICE_TOKEN_PREFIX", "not a prefix!")
            .output()
            .unwrap();
        let script = text(&out.stdout);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        assert!(out.stderr.is_empty(), "{shell}: {}", text(&out.stderr));
        for word in [
            "auth-service",
            "serve",
            "healthcheck",
            "prune",
            "notify-webhook",
        ] {
            assert!(script.contains(word), "{shell}: no {word:?} in\n{script}");
        }
    }
}

#[tokio::test]
async fn a_wrong_password_says_so_and_never_shows_the_password() {
    // A cluster of its own, where one role must give a password (scram), over TCP.
    let cluster = cluster::Guarded::start("password").await.unwrap();
    let (admin, task) = cluster::connect(&cluster.client_config("postgres"))
        .await
        .unwrap();
    admin
        .batch_execute("CREATE ROLE pwuser LOGIN PASSWORD 'right-password'")
        .await
        .unwrap();
    let hba = cluster.pgdata().join("pg_hba.conf");
    let rules = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("local all pwuser scram-sha-256\n{rules}")).unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
    drop(admin);
    let _ = task.await;
    let url = format!(
        "host={} port=5432 user=pwuser password=Wr0ngS3cret dbname=postgres",
        cluster.pgdata().display()
    );
    let out = run(&["token", "list", "--database-url", &url]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "restarting cannot fix a password"
    );
    let err = text(&out.stderr);
    assert!(err.contains("password authentication failed"), "{err}");
    assert!(!err.contains("Wr0ngS3cret"), "{err}");
}

#[tokio::test]
async fn a_scope_proxies_could_not_carry_is_refused_and_nothing_is_created() {
    let url = db_url().await;
    // Proxies require scopes space-separated and receive them comma-separated.
    for scope in ["billing read", "say\"hi\"", "back\\slash", ""] {
        let out = run(&[
            "token",
            "create",
            "--user",
            "alice",
            "--name",
            "ci",
            "--scope",
            scope,
            "--database-url",
            &url,
        ]);
        assert!(!out.status.success(), "{scope:?} was accepted");
        assert!(
            text(&out.stderr).contains("--scope"),
            "{}",
            text(&out.stderr)
        );
        assert!(out.stdout.is_empty(), "no token printed for {scope:?}");
    }
    let list = run(&["--database-url", &url, "token", "list", "--user", "alice"]);
    assert!(list.status.success(), "{}", text(&list.stderr));
    assert_eq!(
        text(&list.stdout).lines().count(),
        1,
        "only the header: {}",
        text(&list.stdout)
    );
}

#[tokio::test]
async fn an_allow_list_without_client_certificates_is_a_startup_error() {
    let url = db_url().await;
    let out = run(&[
        "serve",
        "--database-url",
        &url,
        "--listen",
        "127.0.0.1:0",
        "--validate-allow",
        "spiffe://cluster.local/ns/mesh/sa/billing",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("needs --tls-client-ca"),
        "{}",
        text(&out.stderr)
    );
}

/// What `serve` with `args` logs up to the moment it reaches the database.
async fn startup_log(args: &[&str]) -> Vec<String> {
    let (_served, _addr, log) = crate::attack::serve(args, None);
    let started = std::time::Instant::now();
    let mut lines: Vec<String> = Vec::new();
    while !lines.iter().any(|l| l.contains("database reachable")) {
        lines.extend(log.try_iter());
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{}",
            lines.join("\n")
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_on_a_non_loopback_address_warns_once() {
    let url = db_url().await;
    let lines = startup_log(&["--database-url", &url, "--listen", "0.0.0.0:0"]).await;
    let warnings = lines
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("tokens cross the network in clear"))
        .count();
    assert_eq!(warnings, 1, "{}", lines.join("\n"));
    // On loopback (the default setup) there is no such warning.
    let lines = startup_log(&["--database-url", &url]).await;
    assert!(
        !lines.iter().any(|l| l.contains("in clear")),
        "{}",
        lines.join("\n")
    );
}
