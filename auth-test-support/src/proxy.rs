//! TCP fronts for the tests.
//!
//! [`Front`] relays to a server's Unix socket and can go silent: the connections it
//! carries stay open but nothing passes any more, and new ones are refused.
//!
//! That is what a client sees when the server's machine vanishes (a crash, a partition)
//! and something in between keeps the client's side of each connection open: HAProxy
//! without `on-marked-down shutdown-sessions`, or simply the kernel, which waits minutes
//! before it gives up on a peer that stopped answering. A local server that is stopped
//! closes its connections instead, which clients notice at once.
use std::{net::SocketAddr, path::PathBuf};

use tokio::{
    net::{TcpListener, TcpStream, UnixStream},
    sync::watch,
    task::{JoinHandle, JoinSet},
};

use crate::Result;

/// The front, on 127.0.0.1 and a port of its own; everything closes when it is dropped.
pub struct Front {
    pub addr: SocketAddr,
    silence: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Front {
    /// Relays each connection made to the front to the Unix socket `socket`.
    pub async fn start(socket: PathBuf) -> Result<Front> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (silence, silenced) = watch::channel(false);
        let task = tokio::spawn(serve(listener, socket, silenced));
        Ok(Front {
            addr,
            silence,
            task,
        })
    }

    /// From now on nothing passes on the open connections, which stay open, and new
    /// connections are refused.
    pub fn go_silent(&self) {
        let _ = self.silence.send(true);
    }
}

impl Drop for Front {
    fn drop(&mut self) {
        // Aborting the task drops its relays, and with them every socket.
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, socket: PathBuf, mut silenced: watch::Receiver<bool>) {
    let mut relays = JoinSet::new();
    let for_relays = silenced.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                if let Ok((client, _)) = accepted {
                    relays.spawn(relay(client, socket.clone(), for_relays.clone()));
                }
            }
            _ = silenced.wait_for(|silent| *silent) => break,
        }
    }
    // Nothing listens on the port any more: new connections are refused.
    drop(listener);
    // The relays hold their sockets open until the front is dropped.
    while relays.join_next().await.is_some() {}
}

async fn relay(mut client: TcpStream, socket: PathBuf, mut silenced: watch::Receiver<bool>) {
    let Ok(mut server) = UnixStream::connect(&socket).await else {
        return;
    };
    let silent = tokio::select! {
        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => false,
        silent = silenced.wait_for(|silent| *silent) => silent.is_ok(),
    };
    if silent {
        // Keep both ends open and pass nothing.
        std::future::pending::<()>().await;
    }
}

/// A TCP front for gRPC servers that sends each new connection to the backend set at
/// that moment, and leaves open connections where they are: what a Kubernetes Service
/// (kube-proxy) does with a long-lived HTTP/2 connection.
pub struct Switch {
    pub addr: SocketAddr,
    backend: watch::Sender<SocketAddr>,
    task: JoinHandle<()>,
}

impl Switch {
    /// Relays new connections to `backend`.
    pub async fn start(backend: SocketAddr) -> Result<Switch> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = watch::channel(backend);
        let task = tokio::spawn(async move {
            let mut relays = JoinSet::new();
            while let Ok((mut client, _)) = listener.accept().await {
                let to = *rx.borrow();
                relays.spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Ok(Switch {
            addr,
            backend: tx,
            task,
        })
    }

    /// New connections go to `backend` from now on.
    pub fn send_new_connections_to(&self, backend: SocketAddr) {
        let _ = self.backend.send(backend);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.task.abort();
    }
}
