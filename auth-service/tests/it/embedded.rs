//! The embedded cluster shared by processes started together on one data directory:
//! first runs of `serve` and `token create`, two `serve`s, and a `token` command
//! racing a starting `serve`. Real processes, a few trials each, because every race
//! has several interleavings and one run sees only one of them.

use std::{
    path::Path,
    process::{Child, ExitStatus, Output, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError},
    time::{Duration, Instant},
};

use auth_api::v1::{ValidateTokenRequest, auth_service_client::AuthServiceClient};
use auth_test_support::{cluster, grpc::wait_for_health, process};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::cli::{listening_addr, run, stderr_lines, terminate, text};

const TRIALS: usize = 3;

/// A child process that gets SIGTERM, as from an operator, if a failed assertion
/// unwinds past it: a failed trial leaves no server or cluster running.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = process::terminate(self.0.id());
            for _ in 0..300 {
                if !matches!(self.0.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.0.kill();
        }
    }
}

/// `serve` on port 0, probing the database every second so that a lost cluster shows
/// as NOT_SERVING within the test.
fn spawn_serve(data: &str) -> Running {
    Running(crate::cli::spawn_serve(&[
        "--data-dir",
        data,
        "--listen",
        "127.0.0.1:0",
        "--db-check-interval",
        "1s",
    ]))
}

fn spawn_token_create(data: &str) -> Running {
    Running(
        crate::service()
            .args(["token", "create", "--user", "race", "--expires-in", "3d"])
            .args(["--data-dir", data])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    )
}

/// Waits until `limit` after `started` for a one-shot command to exit. Its output is
/// a few lines, so the pipes never fill while it runs.
fn finish(child: &mut Running, started: Instant, limit: Duration) -> Output {
    let child = &mut child.0;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "still running {limit:?} after it started:\n{}",
                read_all(&mut child.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Output {
        status,
        stdout: read_all(&mut child.stdout).into_bytes(),
        stderr: read_all(&mut child.stderr).into_bytes(),
    }
}

fn read_all(pipe: &mut Option<impl std::io::Read>) -> String {
    let mut s = String::new();
    if let Some(pipe) = pipe {
        let _ = pipe.read_to_string(&mut s);
    }
    s
}

/// How a `serve` came out of its startup.
enum Startup {
    /// Listening on this address; the rest of its log keeps draining into `_log`.
    Listening {
        addr: String,
        _log: Receiver<String>,
    },
    Exited {
        status: ExitStatus,
        log: Vec<String>,
    },
}

fn startup(child: &mut Child) -> Startup {
    let rx = stderr_lines(child);
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => match listening_addr(&line) {
                Some(addr) => return Startup::Listening { addr, _log: rx },
                None => seen.push(line),
            },
            // Its stderr closed: it has exited, or is about to.
            Err(RecvTimeoutError::Disconnected) => {
                return Startup::Exited {
                    status: child.wait().unwrap(),
                    log: seen,
                };
            }
            Err(RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                panic!(
                    "serve neither listened nor exited in 60 s:\n{}",
                    seen.join("\n")
                );
            }
        }
    }
}

/// Whether the cluster under `dir` accepts a connection on its socket.
async fn cluster_answers(dir: &Path) -> bool {
    let mut config = tokio_postgres::Config::new();
    config
        .host_path(dir.join("pgdata"))
        .port(5432)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(Duration::from_secs(2));
    cluster::connect(&config).await.is_ok()
}

/// The serve at `addr` answers from the database: a token it has never seen is a
/// cache miss, so an OK here is a round trip to the cluster.
async fn validates(addr: &str, token: &str) {
    wait_for_health(&format!("http://{addr}"), ServingStatus::Serving).await;
    let mut client = AuthServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    client
        .validate_token(ValidateTokenRequest {
            token: token.to_string(),
        })
        .await
        .unwrap();
}

fn create_token(data: &str) -> String {
    let out = run(&["token", "create", "--user", "later", "--data-dir", data]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_token_create_started_together_on_a_fresh_data_dir() {
    for trial in 0..TRIALS {
        let dir = cluster::scratch_dir("first");
        let data = dir.to_str().unwrap();
        let started = Instant::now();
        let mut serve = spawn_serve(data);
        let mut token_cmd = spawn_token_create(data);
        let serving = startup(&mut serve.0);
        let out = finish(&mut token_cmd, started, Duration::from_secs(60));
        assert!(
            out.status.success(),
            "trial {trial}: token create failed: {}",
            text(&out.stderr)
        );
        let token = text(&out.stdout).trim().to_string();
        let Startup::Listening { addr, .. } = serving else {
            panic!("trial {trial}: serve did not start: {}", describe(serving));
        };
        validates(&addr, &token).await;
        assert!(terminate(&mut serve.0).success(), "trial {trial}");
        assert!(
            !cluster_answers(&dir).await,
            "trial {trial}: serve stops the cluster on exit"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_serves_started_together_one_serves_and_the_other_refuses() {
    for trial in 0..TRIALS {
        let dir = cluster::scratch_dir("twin");
        let data = dir.to_str().unwrap();
        let started = Instant::now();
        let mut first = spawn_serve(data);
        let mut second = spawn_serve(data);
        // Watched side by side, to learn when each one listened or exited.
        let outcomes = std::thread::scope(|s| {
            let (a, b) = (&mut first.0, &mut second.0);
            let a = s.spawn(move || (startup(a), started.elapsed()));
            let b = s.spawn(move || (startup(b), started.elapsed()));
            [a.join().unwrap(), b.join().unwrap()]
        });
        let (mut winner, addr, listened_at, loser_status, loser_log, refused_at) = match outcomes {
            [
                (Startup::Listening { addr, .. }, listened_at),
                (Startup::Exited { status, log }, refused_at),
            ] => (first, addr, listened_at, status, log, refused_at),
            [
                (Startup::Exited { status, log }, refused_at),
                (Startup::Listening { addr, .. }, listened_at),
            ] => (second, addr, listened_at, status, log, refused_at),
            [(a, _), (b, _)] => {
                panic!(
                    "trial {trial}: exactly one serve should start:\nfirst: {}\nsecond: {}",
                    describe(a),
                    describe(b)
                );
            }
        };
        let loser_log = loser_log.join("\n");
        assert!(!loser_status.success(), "trial {trial}: {loser_log}");
        assert!(
            refused_at < listened_at,
            "trial {trial}: the second serve refuses at once ({refused_at:?}), \
             not after the first one's initdb ({listened_at:?})"
        );
        assert!(
            loser_log.contains(&format!("pid {}", winner.0.id())),
            "trial {trial}: the refusal names the serve that holds the data dir:\n{loser_log}"
        );
        // The refused serve stopped nothing: the winner still reaches its database.
        validates(&addr, &create_token(data)).await;
        assert!(terminate(&mut winner.0).success(), "trial {trial}");
        assert!(!cluster_answers(&dir).await, "trial {trial}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_command_racing_a_starting_serve_leaves_it_serving() {
    let dir = cluster::scratch_dir("race");
    let data = dir.to_str().unwrap();
    // An initialised, stopped cluster: the race is about starting and stopping it.
    let migrated = run(&["migrate", "--data-dir", data]);
    assert!(migrated.status.success(), "{}", text(&migrated.stderr));
    assert!(!cluster_answers(&dir).await);
    // How much earlier the token command starts than serve: together, and a little
    // earlier, so that serve arrives while the token command starts, uses or stops
    // the cluster (the command takes about 0.4 s here).
    for (trial, lead_ms) in [0, 100, 200].into_iter().enumerate() {
        let started = Instant::now();
        let mut token_cmd = spawn_token_create(data);
        std::thread::sleep(Duration::from_millis(lead_ms));
        let mut serve = spawn_serve(data);
        let serving = startup(&mut serve.0);
        let out = finish(&mut token_cmd, started, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "trial {trial}: token create failed: {}",
            text(&out.stderr)
        );
        let Startup::Listening { addr, .. } = serving else {
            panic!("trial {trial}: serve did not start: {}", describe(serving));
        };
        let token = text(&out.stdout).trim().to_string();
        validates(&addr, &token).await;
        assert!(
            cluster_answers(&dir).await,
            "trial {trial}: the token command left the cluster to serve"
        );
        validates(&addr, &create_token(data)).await;
        assert!(terminate(&mut serve.0).success(), "trial {trial}");
        assert!(
            !cluster_answers(&dir).await,
            "trial {trial}: serve stops the cluster it adopted"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn describe(startup: Startup) -> String {
    match startup {
        Startup::Listening { addr, .. } => format!("listening on {addr}"),
        Startup::Exited { status, log } => format!("exited ({status}):\n{}", log.join("\n")),
    }
}

/// Exit 2 tells systemd not to restart the service (`RestartPreventExitStatus=2`), so
/// only what the operator must change exits 2. A write that fails for want of disk, or
/// an initdb that failed for want of disk, exits 1: a restart may work once space is
/// freed. Stand-in server programs (shell scripts) make the failures; `/dev/full`
/// answers every write with ENOSPC, as a full disk does.
#[test]
fn the_embedded_cluster_exits_2_only_for_what_the_operator_must_change() {
    use std::os::unix::fs::PermissionsExt;
    let dir = cluster::scratch_dir("embedded-exit");
    std::fs::create_dir_all(&dir).unwrap();
    // Readable by the cluster's user, which runs the programs when we are root.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let bindir = |name: &str, initdb: &str| {
        let bin = dir.join(name);
        std::fs::create_dir_all(&bin).unwrap();
        for (program, script) in [
            ("initdb", initdb),
            ("pg_ctl", "#!/bin/sh\nexit 1\n"),
            ("postgres", "#!/bin/sh\nexit 1\n"),
        ] {
            let path = bin.join(program);
            std::fs::write(&path, script).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        bin.to_str().unwrap().to_owned()
    };
    // initdb makes a cluster whose settings file is /dev/full: auth-service's own write
    // of it fails with ENOSPC.
    let full = bindir(
        "full",
        "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = -D ] && dir=$2; shift; done\n\
         echo 15 > \"$dir/PG_VERSION\" && : > \"$dir/postgresql.conf\" && \
         ln -s /dev/full \"$dir/auth-service.conf\"\n",
    );
    // initdb itself fails for want of disk.
    let no_space = bindir(
        "no-space",
        "#!/bin/sh\necho 'initdb: error: could not write to file \"base/1/1259\": \
         No space left on device' >&2\nexit 1\n",
    );
    let a_file = dir.join("a-file");
    std::fs::write(&a_file, "").unwrap();
    let data = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    let cases = [
        (data("full"), full.clone(), 1, "No space left on device"),
        (data("no-space"), no_space, 1, "initdb failed"),
        // A --data-dir that cannot be a directory, and server programs that are not
        // there: the operator's to change.
        (
            a_file.join("data").to_str().unwrap().to_owned(),
            full,
            2,
            "cannot create --data-dir",
        ),
        (data("no-programs"), data("nonexistent"), 2, "--pg-bindir"),
    ];
    for (data_dir, bin, code, says) in cases {
        let out = run(&[
            "token",
            "list",
            "--data-dir",
            &data_dir,
            "--pg-bindir",
            &bin,
        ]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{data_dir} {bin}: {stderr}");
        assert!(stderr.contains(says), "{data_dir} {bin}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
