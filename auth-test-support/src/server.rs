//! The real server, started through `auth_service::server::run` on a listener bound to
//! 127.0.0.1:0 (handed over bound, so no other process can take the port in between),
//! and stopped through its shutdown future.
use std::{net::SocketAddr, time::Duration};

use auth_api::v1::auth_service_client::AuthServiceClient;
use auth_service::{
    config::{Cli, Command, ServeSettings},
    db::Db,
    embedded::Cluster,
    renewal::RenewalPolicy,
    server::{self, Listeners},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;

use crate::{Result, cluster};

/// Serve settings for tests: what `auth-service serve` runs with by default (its flags
/// parsed, without the environment, so that the defaults are the binary's own), on
/// port-0 listeners (gRPC and HTTP), with the given renewal policy and a fast health
/// probe.
pub fn settings(policy: RenewalPolicy) -> ServeSettings {
    use clap::{CommandFactory, FromArgMatches};
    fn without_env(command: clap::Command) -> clap::Command {
        command
            .mut_args(|arg| arg.env(None::<&str>))
            .mut_subcommands(without_env)
    }
    let args = [
        "auth-service",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ];
    let matches = without_env(Cli::command()).get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap();
    let Command::Serve(serve) = &cli.command else {
        unreachable!("parsed `serve`")
    };
    ServeSettings {
        policy,
        db_check_interval: Duration::from_millis(200),
        ..serve.settings(&cli.db).unwrap()
    }
}

/// The real server on 127.0.0.1, on a port of its own (and an HTTP side port).
pub struct TestServer {
    pub addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub db: Db,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<auth_service::error::Result<()>>,
}

impl TestServer {
    /// Starts `server::run` on fresh port-0 listeners (the HTTP one when
    /// `settings.http_listen` is set).
    pub async fn start(db: Db, settings: ServeSettings) -> Result<TestServer> {
        let grpc = TcpListener::bind(settings.listen).await?;
        let http = match settings.http_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let addr = grpc.local_addr()?;
        let http_addr = http.as_ref().map(TcpListener::local_addr).transpose()?;
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server::run(
            Listeners { grpc, http },
            db.clone(),
            settings,
            async {
                let _ = rx.await;
            },
        ));
        Ok(TestServer {
            addr,
            http_addr,
            db,
            stop: Some(tx),
            task,
        })
    }

    /// `GET path` on the HTTP side port: (status, body).
    pub async fn http_get(&self, path: &str) -> Result<(u16, String)> {
        let addr = self.http_addr.ok_or("no HTTP port")?;
        crate::http::get(addr, path).await
    }

    /// The server on a PostgreSQL cluster of its own, for tests that stop the database:
    /// a pool of 4 that waits at most a second, the default policy. Returns the server
    /// and the cluster (to stop and start).
    pub async fn on_own_cluster(tag: &str) -> Result<(TestServer, Cluster)> {
        let (cluster, _dir) = cluster::own(tag).await?;
        let db = Db::new(cluster.client_config("postgres"), 4, Duration::from_secs(1))?;
        db.migrate().await?;
        let server = TestServer::start(db, settings(RenewalPolicy::default())).await?;
        Ok((server, cluster))
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

    /// Waits, up to `limit`, for the server to stop on its own; returns what `run`
    /// returned.
    pub async fn stopped_within(
        mut self,
        limit: Duration,
    ) -> Result<auth_service::error::Result<()>> {
        Ok(tokio::time::timeout(limit, &mut self.task).await??)
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
