//! The channel's keepalive, against a connection that dies silently: a proxy between the
//! agent and the fake server stops forwarding on its open connections (as a NAT that
//! dropped them, or a laptop that slept, would) while still accepting new ones.
use std::{net::SocketAddr, time::Duration};

use auth_agent::{ServerUrl, Token, Transport, client};
use tokio::{net::TcpListener, sync::watch};
use tonic::Code;

use crate::{fake::Fake, support::token};

/// A TCP proxy to `upstream`. Once the returned switch is set, the connections open at
/// that moment stop forwarding (their sockets stay open, so no FIN or RST tells anyone);
/// connections accepted later forward normally.
async fn freezable_proxy(upstream: SocketAddr) -> (SocketAddr, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (freeze, frozen) = watch::channel(false);
    tokio::spawn(async move {
        loop {
            let (mut inbound, _) = listener.accept().await.unwrap();
            let mut frozen = frozen.clone();
            let born_frozen = *frozen.borrow();
            tokio::spawn(async move {
                let mut outbound = tokio::net::TcpStream::connect(upstream).await.unwrap();
                if born_frozen {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    return;
                }
                tokio::select! {
                    _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                    _ = frozen.wait_for(|f| *f) => {}
                }
                // Hold both sockets open, silently, until the test ends.
                std::future::pending::<()>().await;
                drop((inbound, outbound));
            });
        }
    });
    (addr, freeze)
}

/// Renews once through the proxy, freezes it, waits `idle`, and renews again with a
/// 3-second timeout: the second call's result.
async fn renew_after_freeze(transport: Transport, idle: Duration) -> Result<Duration, Code> {
    let fake = Fake::new();
    let upstream: SocketAddr = fake
        .serve_tcp()
        .await
        .trim_start_matches("http://")
        .parse()
        .unwrap();
    let (proxy, freeze) = freezable_proxy(upstream).await;
    let server: ServerUrl = format!("http://{proxy}").parse().unwrap();
    let client = client::connect_lazy(&server, &transport).unwrap();
    let token = Token::parse(&token("keepalive")).unwrap();
    client
        .renew(&token, Duration::from_secs(3))
        .await
        .unwrap()
        .unwrap();
    freeze.send(true).unwrap();
    tokio::time::sleep(idle).await;
    let started = tokio::time::Instant::now();
    match client.renew(&token, Duration::from_secs(3)).await {
        Ok(Ok(_)) => Ok(started.elapsed()),
        Ok(Err(rejection)) => panic!("refused: {rejection}"),
        Err(outage) => Err(outage.code()),
    }
}

#[tokio::test]
async fn a_silently_dead_connection_is_noticed_and_the_next_call_dials_afresh() {
    let fast = Transport {
        keepalive_interval: Duration::from_millis(200),
        keepalive_timeout: Duration::from_millis(200),
        ..Transport::default()
    };
    let took = renew_after_freeze(fast, Duration::from_millis(1500))
        .await
        .expect("the keepalive closed the dead connection; the call used a new one");
    assert!(took < Duration::from_secs(2), "{took:?}");

    // The same scenario with pings too rare to fire: the call goes into the dead
    // connection and times out. This is what the keepalive prevents.
    let slow = Transport {
        keepalive_interval: Duration::from_secs(3600),
        ..Transport::default()
    };
    assert_eq!(
        renew_after_freeze(slow, Duration::from_millis(1500)).await,
        Err(Code::DeadlineExceeded)
    );
}
