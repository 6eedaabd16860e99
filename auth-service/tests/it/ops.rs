//! Operating the binary: `--output json`, `token prune`, `--log-format json`, exit codes
//! and `serve --no-migrate`, each through the real binary on a real PostgreSQL.

use std::{
    collections::BTreeSet,
    process::{Child, Command, Output, Stdio},
    sync::mpsc::Receiver,
    time::{Duration, Instant},
};

use auth_api::v1::{
    RenewCurrentTokenRequest, ValidateTokenRequest, auth_service_client::AuthServiceClient,
};
use auth_service::{
    db::Db,
    token::{self, Prefix},
};
use auth_test_support::{cluster, fixtures, grpc::*};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::cli::{stderr_lines, terminate, text};

const DAY: f64 = 86_400.0;

/// The binary with the words of `line` as arguments, `--database-url` (when given) from
/// its variable (a conninfo string has spaces), none of the caller's own settings, and
/// `envs`.
fn command(line: &str, url: Option<&str>, envs: &[(&str, &str)]) -> Command {
    let mut cmd = crate::service();
    cmd.args(line.split_whitespace());
    if let Some(url) = url {
        cmd.env("AUTH_SERVICE_DATABASE_URL", url);
    }
    cmd.envs(envs.iter().copied());
    cmd
}

fn run(line: &str, url: Option<&str>, envs: &[(&str, &str)]) -> Output {
    command(line, url, envs).output().unwrap()
}

/// A fresh, migrated database: its `--database-url` and a handle for fixtures.
struct Fresh {
    config: tokio_postgres::Config,
    url: String,
    db: Db,
}

async fn fresh() -> Fresh {
    let config = cluster::fresh_database().await.unwrap();
    Fresh {
        url: cluster::conninfo(&config),
        db: Db::new(config.clone(), 4, Duration::from_secs(5)).unwrap(),
        config,
    }
}

impl Fresh {
    /// Runs `line` against this database.
    fn run(&self, line: &str, envs: &[(&str, &str)]) -> Output {
        run(line, Some(&self.url), envs)
    }
}

/// stdout as one JSON document.
fn stdout_json(out: &Output) -> Value {
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    assert_eq!(stdout.lines().count(), 1, "one line of JSON: {stdout:?}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout:?}"))
}

/// Each line as a JSON object; a line that is not one fails the test.
fn objects<S: AsRef<str>>(lines: &[S]) -> Vec<Map<String, Value>> {
    lines
        .iter()
        .map(|line| match serde_json::from_str(line.as_ref()) {
            Ok(Value::Object(map)) => map,
            _ => panic!("not a JSON object: {:?}", line.as_ref()),
        })
        .collect()
}

fn keys(object: &Map<String, Value>) -> BTreeSet<&str> {
    object.keys().map(String::as_str).collect()
}

/// The stored hash of `raw`, in hex: what must never be printed either.
fn hash_hex(raw: &str) -> String {
    token::parse(&Prefix::default(), raw)
        .unwrap()
        .hash
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn is_rfc3339(value: &Value) -> bool {
    value
        .as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok() && s.ends_with('Z'))
}

#[tokio::test]
async fn token_commands_print_json_without_secrets_or_hashes() {
    let f = fresh().await;
    let empty = f.run("token list --output json", &[]);
    assert_eq!(stdout_json(&empty), Value::Array(vec![]));

    let created = f.run(
        "token create --user alice --name ci --scope read --scope write --expires-in 3d \
         --output json",
        &[],
    );
    let created = stdout_json(&created);
    let created = created.as_object().unwrap();
    assert_eq!(keys(created), BTreeSet::from(["id", "token", "expires_at"]));
    let alice = created["token"].as_str().unwrap().to_owned();
    assert!(alice.starts_with("pat_") && alice.len() == 40, "{alice}");
    let alice_id: Uuid = created["id"].as_str().unwrap().parse().unwrap();
    assert!(is_rfc3339(&created["expires_at"]), "{created:?}");

    // The variable does what the flag does; a token that never expires has a null expiry.
    let never = f.run(
        "token create --user svc --expires-in never",
        &[("AUTH_SERVICE_OUTPUT", "json")],
    );
    let never = stdout_json(&never);
    assert_eq!(never["expires_at"], Value::Null);
    let svc = never["token"].as_str().unwrap().to_owned();

    // One revoked through the command (its JSON answer), one expired by the clock.
    let (bob_id, bob) = fixtures::create_token(&f.db, "bob", Some(Duration::from_secs(86400)))
        .await
        .unwrap();
    let revoked = f.run(&format!("token revoke {bob_id} --output json"), &[]);
    let revoked = stdout_json(&revoked);
    assert_eq!(revoked["id"], bob_id.to_string());
    assert!(is_rfc3339(&revoked["revoked_at"]), "{revoked}");
    let (carol_id, carol) = fixtures::token_expiring_in(&f.db, -60.0).await;

    let list = f.run("token list --output json", &[]);
    let listing = text(&list.stdout);
    let all = stdout_json(&list);
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 4, "{all:?}");
    let by_id = |id: Uuid| {
        all.iter()
            .find(|t| t["id"] == id.to_string())
            .unwrap_or_else(|| panic!("{id} in {all:?}"))
            .as_object()
            .unwrap()
    };
    let expected_keys = BTreeSet::from([
        "id",
        "user_id",
        "name",
        "display_prefix",
        "scopes",
        "created_at",
        "expires_at",
        "revoked_at",
        "last_used_at",
        "status",
    ]);
    for t in all {
        assert_eq!(keys(t.as_object().unwrap()), expected_keys, "{t}");
        assert!(is_rfc3339(&t["created_at"]), "{t}");
    }
    let a = by_id(alice_id);
    assert_eq!(a["user_id"], "alice");
    assert_eq!(a["name"], "ci");
    assert_eq!(a["display_prefix"], alice[..8]);
    assert_eq!(a["scopes"], serde_json::json!(["read", "write"]));
    assert_eq!(a["expires_at"], created["expires_at"]);
    assert_eq!(a["revoked_at"], Value::Null);
    assert_eq!(a["last_used_at"], Value::Null);
    assert_eq!(a["status"], "active");
    let s = all.iter().find(|t| t["user_id"] == "svc").unwrap();
    assert_eq!(s["status"], "active");
    assert_eq!(s["expires_at"], Value::Null);
    assert_eq!(s["scopes"], serde_json::json!([]));
    let b = by_id(bob_id);
    assert_eq!(b["status"], "revoked");
    assert_eq!(b["revoked_at"], revoked["revoked_at"]);
    assert_eq!(by_id(carol_id)["status"], "expired");
    for raw in [&alice, &svc, &bob, &carol] {
        assert!(!listing.contains(&raw[8..]), "a secret in {listing}");
        assert!(!listing.contains(&hash_hex(raw)), "a hash in {listing}");
    }

    // --user filters, and the default output is still the table people read.
    let bobs = f.run("token list --user bob --output json", &[]);
    assert_eq!(stdout_json(&bobs).as_array().unwrap().len(), 1);
    let table = f.run("token list", &[]);
    assert!(text(&table.stdout).starts_with("ID\tUSER\tNAME\tPREFIX\t"));
}

/// The tokens of every kind prune must tell apart; returns (kept, pruned) ids.
async fn tokens_of_every_age(db: &Db) -> (Vec<Uuid>, Vec<Uuid>) {
    let create = |user: &'static str, lifetime: Option<u64>| async move {
        fixtures::create_token(db, user, lifetime.map(Duration::from_secs))
            .await
            .unwrap()
            .0
    };
    let live = create("live", Some(90 * 86400)).await;
    let never = create("never", None).await;
    let expired_recently = create("expired-recently", Some(86400)).await;
    fixtures::set_expires_in(db, expired_recently, -10.0 * DAY)
        .await
        .unwrap();
    let revoked_recently = create("revoked-recently", Some(90 * 86400)).await;
    fixtures::set_revoked_ago(db, revoked_recently, 10.0 * DAY)
        .await
        .unwrap();

    let expired_long_ago = create("expired-long-ago", Some(86400)).await;
    fixtures::set_expires_in(db, expired_long_ago, -100.0 * DAY)
        .await
        .unwrap();
    // Revoked long ago, though its expiry is still ahead.
    let revoked_long_ago = create("revoked-long-ago", Some(90 * 86400)).await;
    fixtures::set_revoked_ago(db, revoked_long_ago, 100.0 * DAY)
        .await
        .unwrap();
    // Never expiring, but revoked long ago: dead all the same.
    let never_revoked = create("never-revoked", None).await;
    fixtures::set_revoked_ago(db, never_revoked, 100.0 * DAY)
        .await
        .unwrap();
    (
        vec![live, never, expired_recently, revoked_recently],
        vec![expired_long_ago, revoked_long_ago, never_revoked],
    )
}

fn sorted(mut ids: Vec<Uuid>) -> Vec<Uuid> {
    ids.sort();
    ids
}

#[tokio::test]
async fn prune_deletes_only_long_dead_tokens_and_their_audit_rows() {
    let f = fresh().await;
    let (kept, pruned) = tokens_of_every_age(&f.db).await;
    for id in &pruned {
        assert!(!fixtures::events(&f.db, *id).await.unwrap().is_empty());
    }

    let out = f.run("token prune --older-than 90d", &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pruned 3 tokens\n");
    assert_eq!(
        fixtures::token_ids(&f.db).await.unwrap(),
        sorted(kept.clone())
    );
    for id in &pruned {
        assert!(
            fixtures::events(&f.db, *id).await.unwrap().is_empty(),
            "audit rows of {id} go too"
        );
    }
    for id in &kept {
        assert_eq!(fixtures::event_kinds(&f.db, *id).await.unwrap(), ["create"]);
    }
    assert_eq!(
        fixtures::event_count(&f.db).await.unwrap(),
        kept.len() as i64
    );

    // Nothing more to do: a second run prunes nothing, and says so in JSON.
    let again = f.run("token prune --older-than 90d --output json", &[]);
    assert_eq!(stdout_json(&again), serde_json::json!({"pruned": 0}));

    // A shorter horizon takes the recently dead, and never a live or never-expiring one.
    let shorter = f.run(
        "token prune --output json",
        &[("AUTH_SERVICE_PRUNE_OLDER_THAN", "5d")],
    );
    assert_eq!(stdout_json(&shorter), serde_json::json!({"pruned": 2}));
    assert_eq!(
        fixtures::token_ids(&f.db).await.unwrap(),
        sorted(kept[..2].to_vec())
    );

    // The horizon is bounded like every lifetime, and required.
    for bad in ["--older-than 0s", "--older-than 36501d", ""] {
        let out = f.run(&format!("token prune {bad}"), &[]);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", text(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_prunes_both_succeed_and_their_counts_add_up() {
    let f = fresh().await;
    let (kept, pruned) = tokens_of_every_age(&f.db).await;
    // Enough for several batches each.
    fixtures::insert_dead_tokens(&f.db, 2500, 100.0 * DAY)
        .await
        .unwrap();
    let dead = 2500 + pruned.len() as u64;

    // Both prunes wait behind a lock on the audit table, then start together, so that
    // they really do race for the same rows on every run.
    let gate = fixtures::AuditLock::take(&f.config).await.unwrap();
    // The wait at the gate must not count against the statement timeout.
    let prune = "token prune --older-than 90d --output json --db-timeout 60s";
    let spawn = || {
        command(prune, Some(&f.url), &[])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (first, second) = (spawn(), spawn());
    let started = Instant::now();
    while fixtures::lock_waiters(&f.db).await.unwrap() < 2 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the prunes never queued"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    gate.release().await.unwrap();

    let counts: Vec<u64> = [first, second]
        .into_iter()
        .map(|child| {
            let out = child.wait_with_output().unwrap();
            stdout_json(&out)["pruned"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(counts.iter().sum::<u64>(), dead, "{counts:?}");
    assert_eq!(
        fixtures::token_ids(&f.db).await.unwrap(),
        sorted(kept.clone())
    );
    assert_eq!(
        fixtures::event_count(&f.db).await.unwrap(),
        kept.len() as i64
    );
}

#[tokio::test]
async fn token_commands_need_no_ddl_rights_on_a_current_schema() {
    // The prune CronJob runs as the runtime role, which may not create tables.
    let f = fresh().await;
    let (kept, _) = tokens_of_every_age(&f.db).await;
    let runtime = cluster::conninfo(&fixtures::runtime_role(&f.config).await.unwrap());
    let out = run("token prune --older-than 90d", Some(&runtime), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "pruned 3 tokens\n");
    assert_eq!(fixtures::token_ids(&f.db).await.unwrap(), sorted(kept));

    // `migrate` needs the rights it lacks: a runtime failure, not a usage error.
    let empty = cluster::empty_database().await.unwrap();
    let runtime = cluster::conninfo(&fixtures::runtime_role(&empty).await.unwrap());
    let migrate = run("migrate", Some(&runtime), &[]);
    assert_eq!(migrate.status.code(), Some(1), "{}", text(&migrate.stderr));
    assert!(
        text(&migrate.stderr).contains("permission denied"),
        "{}",
        text(&migrate.stderr)
    );
}

/// A `serve` child that gets SIGTERM if a failed assertion unwinds past it.
struct Serving(Child);

impl Drop for Serving {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = terminate(&mut self.0);
        }
    }
}

/// Waits for the JSON line of `serve` that says where it listens; returns the address
/// and every line read so far.
fn wait_listening_json(lines: &Receiver<String>) -> (String, Vec<String>) {
    let mut seen = Vec::new();
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(60)) {
        let addr = serde_json::from_str::<Value>(&line).ok().and_then(|v| {
            (v["message"] == "auth-service listening")
                .then(|| v["addr"].as_str().map(str::to_owned))
        });
        seen.push(line);
        if let Some(Some(addr)) = addr {
            return (addr, seen);
        }
    }
    panic!("serve did not start:\n{}", seen.join("\n"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_flat_object_per_line_and_never_show_a_token() {
    let f = fresh().await;
    let (id, raw) = fixtures::token_expiring_in(&f.db, 3.0 * DAY).await;
    let mut serve = Serving(
        command(
            "serve --listen 127.0.0.1:0 --log-format json",
            Some(&f.url),
            // Every log line there is, to prove none of them carries the token.
            &[("AUTH_SERVICE_LOG", "trace")],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let rest = stderr_lines(&mut serve.0);
    let (addr, mut log) = wait_listening_json(&rest);

    let mut client = AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let renewed = client
        .renew_current_token(authed(RenewCurrentTokenRequest {}, &raw))
        .await
        .unwrap();
    assert!(renewed.into_inner().renewed);
    client
        .validate_token(ValidateTokenRequest { token: raw.clone() })
        .await
        .unwrap();
    let mut typo = raw.clone();
    typo.replace_range(12..13, if &raw[12..13] == "Z" { "Y" } else { "Z" });
    let refused = client
        .validate_token(ValidateTokenRequest {
            token: typo.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(reason(&refused), "TOKEN_MALFORMED");
    drop(client);

    let status = terminate(&mut serve.0);
    assert!(status.success(), "{status:?}");
    log.extend(rest.iter());
    let lines = objects(&log);
    for line in &lines {
        for key in ["timestamp", "level", "target"] {
            assert!(line.contains_key(key), "{key} in {line:?}");
        }
        assert!(
            !line.contains_key("fields") && !line.contains_key("spans"),
            "flat: {line:?}"
        );
    }
    // The renewal's line carries its span's fields beside its own.
    let renewal = lines
        .iter()
        .find(|l| l.get("message").and_then(Value::as_str) == Some("token renewed"))
        .unwrap_or_else(|| panic!("no renewal line in {log:?}"));
    assert_eq!(renewal["level"], "INFO");
    assert_eq!(renewal["token_id"], id.to_string(), "{renewal:?}");
    assert_eq!(renewal["renewed"], true, "{renewal:?}");
    assert!(
        renewal["caller"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
    );
    assert!(
        lines.iter().any(|l| l["level"] == "TRACE"),
        "the trace log is real"
    );
    let all = log.join("\n");
    for secret in [&raw[8..], &typo[8..]] {
        assert!(!all.contains(secret), "a token reached the log");
    }
}

/// mimalloc backs its arenas with transparent huge pages where the kernel offers them;
/// `serve` opts out, so that its heap is not rounded up to 2 MiB pages (see main.rs).
#[tokio::test]
async fn serve_runs_without_transparent_huge_pages() {
    let f = fresh().await;
    let mut serve = Serving(
        command(
            "serve --listen 127.0.0.1:0 --log-format json",
            Some(&f.url),
            &[],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap(),
    );
    let rest = stderr_lines(&mut serve.0);
    wait_listening_json(&rest);
    let thp = |pid: u32| {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("THP_enabled:"))
            .map(|v| v.trim().to_owned())
            .unwrap_or_else(|| panic!("no THP_enabled line (Linux 5.0 has it):\n{status}"))
    };
    assert_eq!(thp(serve.0.id()), "0", "the service runs with THP allowed");
    // The flag is inherited: the test's own process must still have THP allowed, or the
    // service's 0 above proves nothing.
    assert_eq!(
        thp(std::process::id()),
        "1",
        "this test runs with THP disabled"
    );
    let status = terminate(&mut serve.0);
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn the_service_reads_rust_log_after_its_own_variable() {
    let f = fresh().await;
    let list = "token list --log-format json";
    // RUST_LOG alone is honoured: tokio-postgres's `log` records show, with their own
    // target, as JSON lines.
    let traced = f.run(list, &[("RUST_LOG", "trace")]);
    assert!(traced.status.success(), "{}", text(&traced.stderr));
    let stderr = text(&traced.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let lines = objects(&lines);
    assert!(
        lines
            .iter()
            .any(|l| l["target"].as_str().unwrap().starts_with("tokio_postgres")),
        "{stderr}"
    );
    // AUTH_SERVICE_LOG comes first.
    let quiet = f.run(list, &[("RUST_LOG", "trace"), ("AUTH_SERVICE_LOG", "warn")]);
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty(), "{}", text(&quiet.stderr));
}

#[tokio::test]
async fn configuration_errors_exit_2_and_runtime_failures_exit_1() {
    let f = fresh().await;
    let missing = cluster::scratch_dir("no-server");
    let unreachable = format!(
        "host={} port=5432 user=postgres dbname=postgres connect_timeout=2",
        missing.display()
    );
    let mut nowhere = f.config.clone();
    nowhere.dbname("no_such_database");
    let nowhere = cluster::conninfo(&nowhere);

    let (nowhere, unreachable) = (Some(nowhere.as_str()), Some(unreachable.as_str()));
    let cases = [
        // A usage error (clap), and settings that cannot work.
        ("token prune", None, 2, "--older-than"),
        (
            "serve --renew-threshold 90d --renew-extension 7d",
            None,
            2,
            "--renew-threshold",
        ),
        (
            "token list --db-max-connections 1",
            None,
            2,
            "--db-max-connections",
        ),
        (
            "token create --user \u{7}",
            Some(f.url.as_str()),
            2,
            "--user",
        ),
        (
            "token list --database-url-file /nonexistent/url",
            None,
            2,
            "--database-url-file",
        ),
        // A database that does not exist will not appear by restarting.
        ("token list", nowhere, 2, "does not exist"),
        // A database that does not answer may answer later.
        ("token list", unreachable, 1, "database unavailable"),
        ("migrate", unreachable, 1, "--database-url"),
        (
            "serve --listen 127.0.0.1:0",
            unreachable,
            1,
            "cannot connect",
        ),
        // Nothing listens there: unhealthy, which Docker expects as 1.
        ("healthcheck --addr 127.0.0.1:9", None, 1, "unhealthy"),
    ];
    for (line, url, code, says) in cases {
        let out = run(line, url, &[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{line}: {stderr}");
        assert!(
            stderr.contains(says),
            "{line} should say {says:?}: {stderr}"
        );
        assert!(out.stdout.is_empty(), "{line}");
    }

    // In JSON mode the last word is a JSON object too, at ERROR.
    let out = run(
        "token list",
        unreachable,
        &[("AUTH_SERVICE_LOG_FORMAT", "json")],
    );
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    let last = objects(&lines).pop().unwrap();
    assert_eq!(last["level"], "ERROR", "{stderr}");
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .starts_with("database unavailable"),
        "{stderr}"
    );
}

/// Docker and systemd read a `HEALTHCHECK` exit status of 2 as something else than
/// "unhealthy": every failure of `healthcheck` is 1. It asks the server, which has its
/// own database settings, so the database flags it inherits from the environment (the
/// server's) neither fail it nor change its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthcheck_exits_1_for_every_failure_and_reads_no_database_settings() {
    let server = auth_test_support::server::TestServer::fresh(Default::default())
        .await
        .unwrap();
    let serving = server.addr.to_string();
    // Its database probe has passed: SERVING from now on.
    wait_for_health(
        &format!("http://{serving}"),
        tonic_health::pb::health_check_response::ServingStatus::Serving,
    )
    .await;
    let settings: [(&str, &[(&str, &str)]); 4] = [
        ("--database-url-file /nonexistent/url", &[]),
        (
            "",
            &[("AUTH_SERVICE_DATABASE_URL_FILE", "/nonexistent/url")],
        ),
        (
            "",
            &[(
                "AUTH_SERVICE_DATABASE_URL",
                "postgres://db.internal/auth?sslmode=maybe",
            )],
        ),
        ("--db-max-connections 1", &[]),
    ];
    for (flags, envs) in settings {
        let up = run(&format!("healthcheck --addr {serving} {flags}"), None, envs);
        assert_eq!(
            up.status.code(),
            Some(0),
            "{flags} {envs:?}: {}",
            text(&up.stderr)
        );
        assert_eq!(text(&up.stdout).trim(), "SERVING");
        // Nothing listens there: unhealthy, 1, whatever the database settings say.
        let down = run(
            &format!("healthcheck --addr 127.0.0.1:9 {flags}"),
            None,
            envs,
        );
        let stderr = text(&down.stderr);
        assert_eq!(down.status.code(), Some(1), "{flags} {envs:?}: {stderr}");
        assert!(stderr.contains("unhealthy"), "{stderr}");
    }
    // An unreadable certificate file is unhealthy too.
    let out = run(
        &format!("healthcheck --addr {serving} --ca-file /nonexistent/ca.pem"),
        None,
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_no_migrate_refuses_an_unmigrated_database_and_serves_a_migrated_one() {
    let empty = cluster::empty_database().await.unwrap();
    let url = cluster::conninfo(&empty);
    let serve = "serve --listen 127.0.0.1:0 --no-migrate";
    for (line, envs) in [
        (serve, &[][..]),
        (
            "serve --listen 127.0.0.1:0",
            &[("AUTH_SERVICE_NO_MIGRATE", "true")][..],
        ),
    ] {
        let out = run(line, Some(&url), envs);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(
            stderr.contains("no auth-service schema") && stderr.contains("`auth-service migrate`"),
            "{stderr}"
        );
    }
    let db = Db::new(empty.clone(), 2, Duration::from_secs(5)).unwrap();
    assert_eq!(
        db.applied_migrations().await.unwrap(),
        None,
        "--no-migrate changed nothing"
    );

    let migrated = run("migrate", Some(&url), &[]);
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    let mut serving = Serving(
        command(serve, Some(&url), &[])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (addr, _, _rest) = crate::cli::wait_listening(&mut serving.0);
    let (_, raw) = fixtures::token_expiring_in(&db, 30.0 * DAY).await;
    let mut client = AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .validate_token(ValidateTokenRequest { token: raw })
        .await
        .unwrap();
    assert!(terminate(&mut serving.0).success());

    // A newer release migrated the database: this one still starts (a rollback), and
    // says so.
    fixtures::record_migration(&db, 999, "from_the_future")
        .await
        .unwrap();
    let mut serving = Serving(
        command(serve, Some(&url), &[])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let (_, seen, _rest) = crate::cli::wait_listening(&mut serving.0);
    assert!(
        seen.iter()
            .any(|l| l.contains("WARN") && l.contains("V999__from_the_future")),
        "{seen:?}"
    );
    assert!(terminate(&mut serving.0).success());
}
