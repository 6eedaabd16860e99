//! PostgreSQL over TLS with libpq's `sslmode` semantics, against a cluster the test
//! starts with `ssl = on` and a `hostssl`-only `pg_hba.conf`, certificates made in the
//! test: `verify-full` works with the right CA, and fails with a clear certificate
//! error against a wrong CA or a host name the certificate is not for; `sslrootcert=system`
//! trusts the platform's roots and implies `verify-full`, as in libpq; and the URL can
//! come from a file.
use std::os::unix::fs::MetadataExt;

use auth_test_support::{certs::Pki, cluster};

fn token_list(url: &str) -> (bool, String) {
    let out = crate::service()
        .args(["token", "list", "--database-url", url])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A cluster with `ssl = on`, a certificate for `db.test` from its own CA, and a
/// `hostssl`-only `pg_hba.conf`, listening on `addr` (a loopback address no other test
/// uses).
async fn tls_cluster(tag: &str, addr: &str) -> (cluster::Guarded, Pki) {
    let mut cluster = cluster::Guarded::start(tag).await.unwrap();
    let pki = Pki::new(tag).unwrap();
    let server = pki.server_named("db", 1, &["db.test"]).unwrap();
    // PostgreSQL wants its key owned by the user it runs as, and private.
    let pgdata = cluster.pgdata().to_path_buf();
    let owner = std::fs::metadata(&pgdata).unwrap();
    for (from, name, mode) in [
        (&server.cert, "server.crt", 0o644),
        (&server.key, "server.key", 0o600),
    ] {
        let to = pgdata.join(name);
        std::fs::copy(from, &to).unwrap();
        std::os::unix::fs::chown(&to, Some(owner.uid()), Some(owner.gid())).unwrap();
        std::fs::set_permissions(&to, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
    }
    std::fs::write(
        pgdata.join("pg_hba.conf"),
        "local all all trust\nhostssl all all 127.0.0.0/8 trust\n",
    )
    .unwrap();
    let (admin, task) = cluster::connect(&cluster.client_config("postgres"))
        .await
        .unwrap();
    for setting in [
        "ssl = on".to_owned(),
        format!("listen_addresses = '{addr}'"),
    ] {
        admin
            .batch_execute(&format!("ALTER SYSTEM SET {setting}"))
            .await
            .unwrap();
    }
    drop(admin);
    let _ = task.await;
    tokio::task::block_in_place(|| {
        cluster.stop_server().unwrap();
        cluster.start_server().unwrap();
    });
    (cluster, pki)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_ca_and_the_host_name() {
    const ADDR: &str = "127.0.0.7";
    let (cluster, pki) = tls_cluster("pgtls", ADDR).await;
    let dir = cluster.dir().to_path_buf();
    let url = |host: &str, mode: &str, ca: &std::path::Path| {
        format!(
            "host={host} hostaddr={ADDR} port=5432 user=postgres dbname=postgres \
             sslmode={mode} sslrootcert={} connect_timeout=5",
            ca.display()
        )
    };

    let (ok, err) = token_list(&url("db.test", "verify-full", &pki.ca));
    assert!(ok, "verify-full with the right CA: {err}");

    let other = Pki::new("pgtls-other").unwrap();
    let (ok, err) = token_list(&url("db.test", "verify-full", &other.ca));
    assert!(!ok);
    assert!(
        err.contains("certificate verify failed: unknown issuer"),
        "{err}"
    );

    let (ok, err) = token_list(&url("impostor.test", "verify-full", &pki.ca));
    assert!(!ok);
    assert!(err.contains("host name mismatch"), "{err}");
    // verify-ca checks the chain only: the same connection works.
    let (ok, err) = token_list(&url("impostor.test", "verify-ca", &pki.ca));
    assert!(ok, "verify-ca: {err}");

    // The server accepts TLS only: plaintext is refused, by the server.
    let plain = format!(
        "host={ADDR} port=5432 user=postgres dbname=postgres sslmode=disable connect_timeout=5"
    );
    let (ok, err) = token_list(&plain);
    assert!(!ok && err.contains("no encryption"), "{err}");

    // The URL from a file (a mounted Secret), with its trailing newline.
    let file = dir.join("database-url");
    std::fs::write(
        &file,
        format!("{}\n", url("db.test", "verify-full", &pki.ca)),
    )
    .unwrap();
    let out = crate::service()
        .args(["token", "list"])
        .env("AUTH_SERVICE_DATABASE_URL_FILE", &file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslrootcert_system_trusts_the_platform_roots_and_checks_the_host_name() {
    const ADDR: &str = "127.0.0.8";
    let (_cluster, pki) = tls_cluster("pgtls-system", ADDR).await;
    // sslrootcert=system: the platform's roots, with verify-full unless said otherwise.
    // SSL_CERT_FILE stands in for the platform's store, as in libpq's own tests, so that
    // the test needs nothing from the machine.
    let system = format!(
        "host=db.test hostaddr={ADDR} port=5432 user=postgres dbname=postgres \
         sslrootcert=system connect_timeout=5"
    );
    let with_roots = |url: &str, roots: &std::path::Path| {
        let out = crate::service()
            .args(["token", "list", "--database-url", url])
            .env("SSL_CERT_FILE", roots)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let other = Pki::new("pgtls-system-other").unwrap();
    // The server's CA is not among the system's roots: a certificate error that says so.
    let (code, err) = with_roots(&system, &other.ca);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("certificate verify failed: unknown issuer, not one of the system's roots")
            && err.contains("not signed by a CA among the system's roots"),
        "{err}"
    );
    let (code, err) = with_roots(&system, &pki.ca);
    assert_eq!(
        code,
        Some(0),
        "the server's CA among the system's roots: {err}"
    );
    // verify-full is implied: the host name is checked.
    let (code, err) = with_roots(&system.replace("db.test", "impostor.test"), &pki.ca);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("host name mismatch"), "{err}");
    // A weaker sslmode is refused, as libpq refuses it: a configuration error.
    let (code, err) = with_roots(&format!("{system} sslmode=require"), &pki.ca);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("weak sslmode \"require\" may not be used with sslrootcert=system"),
        "{err}"
    );
}
