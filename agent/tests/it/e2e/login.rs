//! `auth-agent login` with a token the real service refuses (revoked, expired, unknown,
//! mistyped): exit 3 with the server's reason, and nothing written, neither a new config
//! file nor a change to an existing one; the service's records are left alone too.
use std::path::Path;

use auth_service::{renewal::RenewalPolicy, token::Prefix};
use auth_test_support::{cluster, fixtures, server};

use crate::{
    e2e::harness::{Service, assert_no_token, command, text},
    support::TempDir,
};

/// `token` with one character of its random part changed: still shaped like a token, but
/// its checksum no longer matches (the agent refuses it without sending it).
fn mistyped(token: &str) -> String {
    let mut bytes = token.as_bytes().to_vec();
    bytes[10] = if bytes[10] == b'x' { b'y' } else { b'x' };
    String::from_utf8(bytes).unwrap()
}

fn files_in(dir: &Path) -> usize {
    std::fs::read_dir(dir).unwrap().count()
}

#[tokio::test]
async fn login_with_a_refused_token_writes_nothing_and_says_why() {
    let service = Service::start(RenewalPolicy::default()).await;
    let url = service.url();
    let (revoked_id, revoked) = service.token_expiring_in(30.0 * 86_400.0).await;
    service.revoke(&revoked_id).await;
    let (expired_id, expired) = service.token_expiring_in(-60.0).await;
    let unknown = auth_service::token::generate(&Prefix::default())
        .unwrap()
        .expose()
        .to_owned();
    let (good_id, good) = service.token_expiring_in(30.0 * 86_400.0).await;
    let typo = mistyped(&good);
    let (revoked_before, _) = service.expiry(&revoked_id).await;
    let (expired_before, _) = service.expiry(&expired_id).await;

    // An existing login, to be left exactly as it is.
    let dir = TempDir::new();
    let kept = dir.join("kept/config");
    let kept_arg = kept.to_str().unwrap();
    let out = command(
        &["login", "--server", &url, "--config", kept_arg],
        &good,
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let before = std::fs::read(&kept).unwrap();

    // The server refuses the first three; the agent itself refuses the typo (its
    // checksum fails), before sending it anywhere.
    for (token, reason, why) in [
        (
            &revoked,
            "TOKEN_REVOKED",
            "token rejected (TOKEN_REVOKED): nothing was saved",
        ),
        (
            &expired,
            "TOKEN_EXPIRED",
            "token rejected (TOKEN_EXPIRED): nothing was saved",
        ),
        (
            &unknown,
            "TOKEN_UNKNOWN",
            "token rejected (TOKEN_UNKNOWN): nothing was saved",
        ),
        (
            &typo,
            "TOKEN_MALFORMED",
            "no usable token (TOKEN_MALFORMED: that is not a token: checksum mismatch): nothing was saved",
        ),
    ] {
        let fresh = dir.join(&format!("fresh-{reason}/config"));
        let out = command(
            &[
                "login",
                "--server",
                &url,
                "--config",
                fresh.to_str().unwrap(),
            ],
            &format!("{token}\n"),
            dir.path(),
        )
        .await;
        let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
        assert_eq!(out.status.code(), Some(3), "{reason}: {stderr}");
        assert!(stderr.contains(why), "{reason}: {stderr}");
        assert_eq!(stdout, "", "{reason}");
        assert!(
            !fresh.parent().unwrap().exists(),
            "{reason}: not even the directory was created"
        );
        for output in [&stdout, &stderr] {
            assert_no_token(reason, output, &[token, &good]);
        }

        // Over the existing login (the server now comes from it).
        let out = command(&["login", "--config", kept_arg], token, dir.path()).await;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{reason}: {stderr}");
        assert!(stderr.contains(why), "{reason}: {stderr}");
        assert_eq!(std::fs::read(&kept).unwrap(), before, "{reason}");
        assert_eq!(
            files_in(kept.parent().unwrap()),
            1,
            "{reason}: no temporary file left behind"
        );
        assert_no_token(reason, &stderr, &[token, &good]);
    }

    // Login only looked: no token was extended, revoked or otherwise recorded.
    assert_eq!(service.expiry(&revoked_id).await.0, revoked_before);
    assert_eq!(service.expiry(&expired_id).await.0, expired_before);
    assert_eq!(service.event_kinds(&revoked_id).await, ["create", "revoke"]);
    assert_eq!(service.event_kinds(&expired_id).await, ["create"]);
    assert_eq!(service.event_kinds(&good_id).await, ["create"]);
    service.shutdown().await;
}

#[tokio::test]
async fn a_service_with_another_token_prefix_works_with_the_agent_unconfigured() {
    // `--token-prefix svc_` on the service; nothing on the agent.
    let prefix = Prefix::new("svc_").unwrap();
    let mut settings = server::settings(RenewalPolicy::default());
    settings.prefix = prefix.clone();
    let db = cluster::test_db().await.unwrap();
    let service = Service::from(
        auth_test_support::server::TestServer::start(db, settings)
            .await
            .unwrap(),
    );
    let (_, svc_token) = fixtures::create_token_with_prefix(
        service.db(),
        "robot",
        Some(std::time::Duration::from_secs(30 * 86400)),
        &prefix,
    )
    .await
    .unwrap();
    assert!(svc_token.starts_with("svc_"));
    let dir = TempDir::new();
    let config = dir.join("config");
    let out = command(
        &[
            "login",
            "--server",
            &service.url(),
            "--config",
            config.to_str().unwrap(),
        ],
        &svc_token,
        dir.path(),
    )
    .await;
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("as robot"),
        "{}",
        text(&out.stdout)
    );
    let renewed = command(
        &["renew", "--config", config.to_str().unwrap()],
        "",
        dir.path(),
    )
    .await;
    assert_eq!(renewed.status.code(), Some(0), "{}", text(&renewed.stderr));
    assert_no_token(
        "output",
        &(text(&out.stdout) + &text(&out.stderr)),
        &[&svc_token],
    );
    service.shutdown().await;
}
