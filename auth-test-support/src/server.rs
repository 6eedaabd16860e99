//! The real server, started through `auth_service::server::run` on a listener bound to
//! 127.0.0.1:0 (handed over bound, so no other process can take the port in between),
//! and stopped through its shutdown future.
use std::{net::SocketAddr, time::Duration};

use auth_api::v1::auth_service_client::AuthServiceClient;
use auth_service::{config::ServeSettings, db::Db, renewal::RenewalPolicy, server, token::Prefix};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

use crate::{Result, cluster};

/// Serve settings for tests: the given renewal policy, the default prefix, and a fast
/// health probe.
pub fn settings(policy: RenewalPolicy) -> ServeSettings {
    ServeSettings {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        policy,
        prefix: Prefix::default(),
        db_check_interval: Duration::from_millis(200),
    }
}

/// The real server on 127.0.0.1, on a port of its own.
pub struct TestServer {
    pub addr: SocketAddr,
    pub db: Db,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<auth_service::error::Result<()>>,
}

impl TestServer {
    /// Starts `server::run` on a fresh port-0 listener.
    pub async fn start(db: Db, settings: ServeSettings) -> Result<TestServer> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server::run(listener, db.clone(), settings, async {
            let _ = rx.await;
        }));
        Ok(TestServer {
            addr,
            db,
            stop: Some(tx),
            task,
        })
    }

    /// A fresh database and the server on it, with `policy`.
    pub async fn fresh(policy: RenewalPolicy) -> Result<TestServer> {
        TestServer::start(cluster::test_db().await?, settings(policy)).await
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> Result<AuthServiceClient<Channel>> {
        Ok(AuthServiceClient::connect(self.url()).await?)
    }

    /// Graceful shutdown; returns what `run` returned.
    pub async fn shutdown(mut self) -> Result<()> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await??;
        Ok(())
    }
}
