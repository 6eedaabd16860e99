//! What the service makes of real tokio-postgres errors, each produced against the real
//! database or network rather than built by hand: connection failures are
//! `UNAVAILABLE` (retry, keep the token), tokio-postgres's refusals to send or decode a
//! value are bugs (`INTERNAL`). tokio-postgres gives a few of these no SQLSTATE and no
//! public kind, so the service tells them by their text; a tokio-postgres upgrade that
//! rewords one fails here, not in production.
use auth_service::{Error, db::Target};
use auth_test_support::cluster;
use tokio_postgres::{NoTls, error::SqlState};

fn unavailable(what: &str, e: tokio_postgres::Error) -> String {
    match Error::from(e) {
        Error::Unavailable(said) => said,
        other => panic!("{what}: {other:?} is not Unavailable"),
    }
}

fn internal(what: &str, e: tokio_postgres::Error) {
    assert!(
        matches!(Error::from(e), Error::Internal(_)),
        "{what} is not Internal"
    );
}

#[tokio::test]
async fn a_refused_connection_is_unavailable() {
    // A port nothing listens on any more.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = tokio_postgres::Config::new();
    config
        .host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres");
    let Err(e) = config.connect(NoTls).await else {
        panic!("connected to a closed port");
    };
    assert!(e.code().is_none() && !e.is_closed(), "{e:?}");
    let said = unavailable("a refused connection", e);
    assert!(said.contains("refused"), "{said}");
}

#[tokio::test]
async fn a_terminated_backend_is_unavailable_then_closed() {
    let config = cluster::fresh_database().await.unwrap();
    let (client, connection) = config.connect(NoTls).await.unwrap();
    let driver = tokio::spawn(connection);
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    let (admin, _admin_driver) = cluster::connect(&config).await.unwrap();
    admin
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    // The server says why before it closes the connection (57P01), unless the close
    // reaches the client first (a reset, an I/O error without an SQLSTATE)...
    let ended = driver.await.unwrap().unwrap_err();
    let reset = std::error::Error::source(&ended).is_some_and(|c| c.is::<std::io::Error>());
    assert!(
        ended.code() == Some(&SqlState::ADMIN_SHUTDOWN) || reset,
        "{ended:?}"
    );
    unavailable("a terminated backend", ended);
    // ... and every later call finds it closed, with no SQLSTATE.
    let closed = client.simple_query("SELECT 1").await.unwrap_err();
    assert!(closed.is_closed() && closed.code().is_none(), "{closed:?}");
    unavailable("a closed connection", closed);
}

#[tokio::test]
async fn a_server_that_refuses_tls_is_unavailable_and_said_plainly() {
    // The test cluster listens on a Unix socket, where PostgreSQL answers a TLS request
    // with "no".
    let config = cluster::fresh_database().await.unwrap();
    let target = Target::parse(&format!("{} sslmode=require", cluster::conninfo(&config))).unwrap();
    let Err(e) = target.connect(&target.config).await else {
        panic!("sslmode=require connected without TLS");
    };
    let said = unavailable("a refused TLS request", e);
    assert!(
        said.starts_with("the server does not accept TLS (sslmode requires it)"),
        "{said}"
    );
}

#[tokio::test]
async fn what_tokio_postgres_refuses_to_send_or_decode_is_a_bug() {
    let config = cluster::fresh_database().await.unwrap();
    let (client, _driver) = cluster::connect(&config).await.unwrap();
    let row = client
        .query_one("SELECT 'text'::text AS t", &[])
        .await
        .unwrap();
    let cases = [
        (
            "a column of another type",
            row.try_get::<_, i32>(0).unwrap_err(),
        ),
        (
            "a column that is not there",
            row.try_get::<_, String>("nope").unwrap_err(),
        ),
        (
            "no row for query_one",
            client
                .query_one("SELECT 1 WHERE false", &[])
                .await
                .unwrap_err(),
        ),
        (
            "two columns for a scalar",
            client
                .query_one_scalar::<i32, _>("SELECT 1, 2", &[])
                .await
                .unwrap_err(),
        ),
        (
            "a parameter of another type",
            client
                .query("SELECT $1::int4", &[&"one"])
                .await
                .unwrap_err(),
        ),
        (
            "a parameter missing",
            client.query("SELECT $1::int4", &[]).await.unwrap_err(),
        ),
    ];
    for (what, e) in cases {
        assert!(e.code().is_none() && !e.is_closed(), "{what}: {e:?}");
        internal(what, e);
    }
    // The connection is fine after all of them.
    client.simple_query("SELECT 1").await.unwrap();
}
