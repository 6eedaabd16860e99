//! ValidateToken, LookupCurrentToken and RevokeCurrentToken against a real server.

use std::time::Duration;

use auth_api::v1::{LookupCurrentTokenRequest, RevokeCurrentTokenRequest, ValidateTokenRequest};
use auth_service::renewal::RenewalPolicy;
use auth_test_support::{
    fixtures::{self, token_expiring_in},
    grpc::*,
};
use tonic::Code;

#[tokio::test]
async fn validate_returns_the_owner_and_scopes() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (id, token) = fixtures::create_token(&server.db, "alice", Some(10 * DAY))
        .await
        .unwrap();
    let r = client
        .validate_token(ValidateTokenRequest {
            token: token.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.token_id, id.to_string());
    assert_eq!(r.user_id, "alice");
    assert_eq!(r.name, "test");
    assert_eq!(r.scopes, ["read"]);
    let stored = fixtures::stored_expiry(&server.db, id).await.unwrap().0;
    assert_eq!(Some(to_time(r.expires_at.as_ref().unwrap())), stored);

    let me = client
        .lookup_current_token(authed(LookupCurrentTokenRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (me.token_id, me.user_id, me.scopes),
        (
            id.to_string(),
            "alice".to_string(),
            vec!["read".to_string()]
        )
    );
}

#[tokio::test]
async fn validate_and_lookup_reject_each_bad_token_with_its_reason() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (_, expired) = token_expiring_in(&server.db, -1.0).await;
    let (revoked_id, revoked) = token_expiring_in(&server.db, 86400.0).await;
    server.db.revoke_by_id(revoked_id, "test").await.unwrap();
    let unknown = auth_service::token::generate(&Default::default())
        .unwrap()
        .expose()
        .to_string();
    let cases = [
        (expired.as_str(), "TOKEN_EXPIRED"),
        (revoked.as_str(), "TOKEN_REVOKED"),
        (unknown.as_str(), "TOKEN_UNKNOWN"),
        ("pat_garbage", "TOKEN_MALFORMED"),
        ("pat_'; DROP TABLE tokens; --", "TOKEN_MALFORMED"),
        ("", "MISSING_CREDENTIALS"),
    ];
    for (token, expected) in cases {
        assert_eq!(
            reason(&validate(&mut client, token).await.unwrap_err()),
            expected,
            "validate {token:?}"
        );
        if !token.is_empty() {
            assert_eq!(
                reason(&lookup(&mut client, token).await.unwrap_err()),
                expected,
                "lookup {token:?}"
            );
        }
    }
    let (never_id, never) = fixtures::create_token(&server.db, "svc", None)
        .await
        .unwrap();
    let r = client
        .validate_token(ValidateTokenRequest { token: never })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.token_id, never_id.to_string());
    assert!(r.expires_at.is_none());
}

#[tokio::test]
async fn an_oversized_validate_request_is_refused_before_decoding() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let err = validate(&mut client, &"A".repeat(1 << 20))
        .await
        .unwrap_err();
    // tonic's code for a message over the decoding limit (16 KiB here).
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("too large"), "{err:?}");
    let (_, token) = fixtures::create_token(&server.db, "alice", Some(DAY))
        .await
        .unwrap();
    validate(&mut client, &token).await.unwrap();
}

#[tokio::test]
async fn revoke_current_token_logs_the_holder_out() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (id, token) = fixtures::create_token(&server.db, "alice", Some(10 * DAY))
        .await
        .unwrap();
    let r = client
        .revoke_current_token(authed(RevokeCurrentTokenRequest {}, &token))
        .await
        .unwrap()
        .into_inner();
    assert!(r.revoked_at.is_some());
    assert_eq!(
        reason(&validate(&mut client, &token).await.unwrap_err()),
        "TOKEN_REVOKED"
    );
    let again = client
        .revoke_current_token(authed(RevokeCurrentTokenRequest {}, &token))
        .await
        .unwrap_err();
    assert_eq!(reason(&again), "TOKEN_REVOKED");
    let kinds: Vec<String> = fixtures::events(&server.db, id)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.0)
        .collect();
    assert_eq!(kinds, ["create", "revoke"]);
}

#[tokio::test]
async fn last_used_is_recorded_off_the_request_path() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (id, token) = fixtures::create_token(&server.db, "alice", Some(DAY))
        .await
        .unwrap();
    assert_eq!(fixtures::last_used(&server.db, id).await.unwrap(), None);
    validate(&mut client, &token).await.unwrap();
    // Written by a background task: wait for it (bounded), do not sleep blindly.
    let mut stamped = None;
    for _ in 0..100 {
        stamped = fixtures::last_used(&server.db, id).await.unwrap();
        if stamped.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(stamped.is_some(), "last_used_at was never written");
}

#[tokio::test]
async fn no_raw_token_is_stored() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (_, token) = token_expiring_in(&server.db, 86400.0).await;
    renew(&mut client, &token).await.unwrap();
    validate(&mut client, &token).await.unwrap();
    let everything = fixtures::all_stored_text(&server.db).await.unwrap();
    assert!(everything.contains("alice"), "the dump is real");
    // Neither the token nor its secret part (after the 8 displayed characters).
    assert!(!everything.contains(&token));
    assert!(!everything.contains(&token[8..]));
}

#[tokio::test]
async fn lookup_and_revoke_need_credentials_and_revoke_is_audited() {
    let (server, mut client) = crate::start(RenewalPolicy::default()).await;
    let (id, token) = fixtures::create_token(&server.db, "alice", Some(DAY))
        .await
        .unwrap();
    let lookup = client
        .lookup_current_token(tonic::Request::new(LookupCurrentTokenRequest {}))
        .await
        .unwrap_err();
    assert_eq!(reason(&lookup), "MISSING_CREDENTIALS");
    let revoke = client
        .revoke_current_token(tonic::Request::new(RevokeCurrentTokenRequest {}))
        .await
        .unwrap_err();
    assert_eq!(reason(&revoke), "MISSING_CREDENTIALS");
    let empty = client
        .revoke_current_token(authed(RevokeCurrentTokenRequest {}, ""))
        .await
        .unwrap_err();
    assert_eq!(reason(&empty), "MISSING_CREDENTIALS");
    assert!(
        empty.message().contains("authorization: Bearer"),
        "{}",
        empty.message()
    );
    // Validate carries the token in its body, and says so.
    let body = validate(&mut client, "").await.unwrap_err();
    assert!(
        body.message().contains("`token` field"),
        "{}",
        body.message()
    );
    // None of that touched the token.
    validate(&mut client, &token).await.unwrap();

    client
        .revoke_current_token(authed(RevokeCurrentTokenRequest {}, &token))
        .await
        .unwrap();
    let events = fixtures::events(&server.db, id).await.unwrap();
    assert_eq!(events[1].0, "revoke");
    assert!(
        events[1].1.starts_with("127.0.0.1:"),
        "caller address: {}",
        events[1].1
    );
}

#[tokio::test]
async fn an_undecodable_request_body_is_internal_as_grpc_specifies() {
    let (server, _) = crate::start(RenewalPolicy::default()).await;
    // A ValidateTokenRequest whose field 1 claims 100 bytes and has 3: not protobuf.
    let body = [0u8, 0, 0, 0, 5, 0x0a, 100, b'p', b'a', b't'];
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let request = http::Request::builder()
        .method("POST")
        .uri(format!(
            "http://{}/auth.v1.AuthService/ValidateToken",
            server.addr
        ))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut send) = client.send_request(request, false).unwrap();
    send.send_data(bytes::Bytes::copy_from_slice(&body), true)
        .unwrap();
    let response = response.await.unwrap();
    let code = match response.headers().get("grpc-status") {
        Some(code) => code.to_str().unwrap().to_owned(),
        None => {
            let mut body = response.into_body();
            while body.data().await.is_some() {}
            let trailers = body.trailers().await.unwrap().unwrap();
            trailers["grpc-status"].to_str().unwrap().to_owned()
        }
    };
    assert_eq!(code, "13", "INTERNAL");
}
