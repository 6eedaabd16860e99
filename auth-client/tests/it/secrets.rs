//! No token appears in anything the caller logs, at TRACE, from every crate (auth-client,
//! tonic, hyper, h2, axum, and the service in the same process): through the layer over
//! HTTP and gRPC, good, unknown, revoked and malformed tokens, and the self-service
//! calls. The watcher's thread logs to the same subscriber as its creator, so it is
//! captured too.
use std::{
    io,
    sync::{Arc, Mutex},
};

use auth_client::Rejection;
use auth_test_support::{cluster, http::request, server::TestServer};
use tracing_subscriber::fmt::MakeWriter;

use crate::{client_of, token_with, warm};

#[derive(Clone, Default)]
struct Logs(Arc<Mutex<Vec<u8>>>);

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Logs {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}

/// Everything logged on this (current-thread) runtime, and by threads it starts.
#[tokio::test]
async fn no_token_is_ever_logged_even_at_trace() {
    let logs = Logs::default();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(logs.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let server = TestServer::start(
        cluster::test_db().await.unwrap(),
        auth_test_support::server::settings(Default::default()),
    )
    .await
    .unwrap();
    let client = client_of(&server);
    let app = crate::layer_axum::protected_app(client.clone()).await;
    let good = token_with(&server.db, "alice", &["read"]).await;
    let revoked = token_with(&server.db, "bob", &["read"]).await;
    let unknown = auth_service::token::generate(&Default::default())
        .unwrap()
        .expose()
        .to_owned();
    // Shaped like a token but for one character: refused before any request.
    let mut typo = good.clone();
    typo.replace_range(10..11, if &good[10..11] == "A" { "B" } else { "A" });
    warm(&client, &good).await;
    assert!(client.revoke_current(&revoked).await.unwrap().is_ok());
    assert_eq!(
        client.validate(&typo).await.unwrap(),
        Err(Rejection::TokenMalformed)
    );
    for token in [&good, &revoked, &unknown, &typo] {
        let bearer = format!("Bearer {token}");
        for path in ["/whoami", "/billing"] {
            request(app, "GET", path, &[("authorization", bearer.as_str())])
                .await
                .unwrap();
        }
        let _ = client.lookup_current(token).await;
        let _ = client.renew_current(token).await;
    }
    server.shutdown().await.unwrap();

    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    assert!(
        text.contains("TRACE") && text.contains("h2"),
        "TRACE output of the dependencies was captured"
    );
    for token in [&good, &revoked, &unknown, &typo] {
        // The secret part: what follows the prefix.
        let secret = &token[4..];
        assert!(!text.contains(secret), "a token was logged");
    }
}
