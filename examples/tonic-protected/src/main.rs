//! A tonic service protected by auth-client, against `cargo run -p auth-service -- serve`:
//!
//! ```sh
//! cargo run -p tonic-protected           # listens on 127.0.0.1:50052
//! TOKEN=$(cargo run -q -p auth-service -- token create --user alice)
//! grpcurl -plaintext -H "authorization: Bearer $TOKEN" localhost:50052 demo.v1.AccountService/WhoAmI
//! ```
//!
//! `AUTH_SERVER` (default `http://127.0.0.1:50051`) and `LISTEN` (default
//! `127.0.0.1:50052`) change where it connects and listens.
#![forbid(unsafe_code)]
use std::net::SocketAddr;

use auth_client::{AuthClient, AuthLayer, ClientOptions, Identity};
use tonic::{Request, Response, Status, transport::Server};
use tower::Layer;

mod demo {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("demo.v1");
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("demo_descriptor");
}

use demo::{
    WhoAmIRequest, WhoAmIResponse,
    account_service_server::{AccountService, AccountServiceServer},
};

struct Accounts;

#[tonic::async_trait]
impl AccountService for Accounts {
    async fn who_am_i(
        &self,
        request: Request<WhoAmIRequest>,
    ) -> Result<Response<WhoAmIResponse>, Status> {
        // The layer let the call in and put the caller's Identity in its extensions.
        let id = request
            .extensions()
            .get::<Identity>()
            .ok_or_else(|| Status::internal("served without AuthLayer"))?;
        Ok(Response::new(WhoAmIResponse {
            user_id: id.user_id.clone(),
            token_name: id.name.clone(),
            scopes: id.scopes.clone(),
        }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let server = std::env::var("AUTH_SERVER").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let listen: SocketAddr = std::env::var("LISTEN")
        .unwrap_or_else(|_| "127.0.0.1:50052".into())
        .parse()?;

    let client = AuthClient::connect_lazy(&server.parse()?, ClientOptions::default())?;
    // Reflection stays open (so that grpcurl needs no .proto, and prints the ErrorInfo of
    // a refusal; grpcurl 1.8 and older ask for v1alpha); the service is protected.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(demo::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
    };
    tracing::info!("listening on {listen}, checking tokens with {server}");
    Server::builder()
        .add_service(reflection().build_v1()?)
        .add_service(reflection().build_v1alpha()?)
        .add_service(AuthLayer::new(client).layer(AccountServiceServer::new(Accounts)))
        .serve(listen)
        .await?;
    Ok(())
}
