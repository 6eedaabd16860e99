//! An axum service protected by auth-client, against `cargo run -p auth-service -- serve`:
//!
//! ```sh
//! cargo run -p axum-protected            # listens on 127.0.0.1:3000
//! TOKEN=$(cargo run -q -p auth-service -- token create --user alice --scope billing:write)
//! curl -H "Authorization: Bearer $TOKEN" localhost:3000/whoami
//! ```
//!
//! `AUTH_SERVER` (default `http://127.0.0.1:50051`) and `LISTEN` (default
//! `127.0.0.1:3000`) change where it connects and listens.
#![forbid(unsafe_code)]
use std::net::SocketAddr;

use auth_client::{AuthClient, AuthLayer, ClientOptions, Identity};
use axum::{Extension, Router, routing::get};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let server = std::env::var("AUTH_SERVER").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let listen: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:3000".into())
        .parse()?;

    // One client for the whole process: its cache, and the invalidation stream that
    // keeps it correct, are shared by every route.
    let client = AuthClient::connect_lazy(&server.parse()?, ClientOptions::default())?;
    let auth = AuthLayer::new(client);
    let app = Router::new()
        // Any valid token.
        .route("/whoami", get(whoami).layer(auth.clone()))
        .route("/hello", get(hello).layer(auth.clone()))
        // Only a token with the `billing:write` scope: others get 403 insufficient_scope.
        .route(
            "/billing",
            get(billing).layer(auth.require_scope("billing:write")),
        )
        // No layer: anyone.
        .route("/public/hello", get(hello));

    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(
        "listening on http://{listen}, checking tokens with {server}: \
         curl -H \"Authorization: Bearer $TOKEN\" {listen}/whoami"
    );
    axum::serve(listener, app).await?;
    Ok(())
}

/// Who called: the layer put the caller's Identity in the request.
async fn whoami(Extension(id): Extension<Identity>) -> String {
    format!(
        "user {}, token {} ({}), scopes [{}]\n",
        id.user_id,
        id.name,
        id.token_id,
        id.scopes.join(" ")
    )
}

async fn billing(Extension(id): Extension<Identity>) -> String {
    format!("{} may write to billing\n", id.user_id)
}

/// The same handler with and without the layer (`/hello`, `/public/hello`).
async fn hello(id: Option<Extension<Identity>>) -> String {
    match id {
        Some(Extension(id)) => format!("hello {}\n", id.user_id),
        None => "hello\n".to_owned(),
    }
}
