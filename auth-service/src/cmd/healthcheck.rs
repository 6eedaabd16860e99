//! `auth-service healthcheck`: ask a running server's `grpc.health.v1` whether it is
//! SERVING (exit 0) or not (exit 1), for Docker `HEALTHCHECK` and scripts. It follows
//! the server's own settings: its listen address, and its TLS. With TLS it trusts
//! `--ca-file` if given, else exactly the certificate the server is configured with
//! (the check runs next to the server and reads the same files), and where the server
//! requires client certificates it presents the server's own certificate and key.
//!
//! Every failure exits 1 ("unhealthy"), an unreadable certificate file included: Docker
//! reserves a `HEALTHCHECK` exit status of 2, and to a probe a server it cannot check is
//! unhealthy. (A usage error is still clap's exit 2.) The database settings play no part:
//! the check reads none of them (see `cmd::execute`).
use std::{io::Write, sync::Arc, time::Duration};

use auth_tls::{
    pem,
    verify::{Check, ServerVerifier},
};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio_rustls::{TlsConnector, rustls::ClientConfig};
use tonic::transport::{Endpoint, Uri};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    config::HealthcheckArgs,
    error::{Error, Result},
    transport::PeerIdentity,
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn unhealthy(e: impl std::fmt::Display) -> Error {
    Error::Runtime(format!("unhealthy: {e}"))
}

/// The TLS client settings and the name to check, when the server speaks TLS.
fn tls_client(args: &HealthcheckArgs) -> Result<Option<(ClientConfig, ServerName<'static>)>> {
    if args.ca_file.is_none() && args.tls_cert.is_none() {
        return Ok(None);
    }
    let provider = auth_tls::provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(unhealthy)?;
    let server_cert = match &args.tls_cert {
        Some(path) => Some(pem::read_certs(path).map_err(unhealthy)?),
        None => None,
    };
    let builder = match (&args.ca_file, &server_cert) {
        (Some(ca), _) => builder.with_root_certificates(pem::read_roots(ca).map_err(unhealthy)?),
        (None, Some(chain)) => {
            let pinned = Check::Pinned {
                leaf: chain[0].clone(),
                holder: "--tls-cert".into(),
            };
            builder.dangerous().with_custom_certificate_verifier(
                ServerVerifier::new(pinned, &provider).map_err(unhealthy)?,
            )
        }
        (None, None) => return Ok(None),
    };
    let mut config = match (&args.tls_client_ca, &server_cert, &args.tls_key) {
        (Some(_), Some(chain), Some(key)) => builder
            .with_client_auth_cert(chain.clone(), pem::read_key(key).map_err(unhealthy)?)
            .map_err(unhealthy)?,
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec()];
    // The check dials an address; certificates name hosts. Check the first DNS name of
    // the server's own certificate (or `localhost`).
    let name = server_cert
        .as_ref()
        .and_then(|chain| {
            PeerIdentity::from_der(chain[0].as_ref())
                .dns
                .into_iter()
                .next()
        })
        .unwrap_or_else(|| "localhost".to_owned());
    let name = ServerName::try_from(name).map_err(unhealthy)?;
    Ok(Some((config, name)))
}

/// Asks the server. Every failure is [`Error::Runtime`] (exit 1), whatever its cause:
/// see the module comment.
pub(crate) async fn healthcheck(args: &HealthcheckArgs) -> Result<()> {
    ask(args).await.map_err(|e| match e {
        Error::Runtime(_) => e,
        other => unhealthy(other),
    })
}

async fn ask(args: &HealthcheckArgs) -> Result<()> {
    let addr = args.target();
    let unreachable = |e: &dyn std::fmt::Display| unhealthy(format_args!("cannot ask {addr}: {e}"));
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| unreachable(&e))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT);
    let channel = match tls_client(args)? {
        None => endpoint.connect().await,
        Some((config, name)) => {
            let connector = TlsConnector::from(Arc::new(config));
            endpoint
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let (connector, name) = (connector.clone(), name.clone());
                    async move {
                        let tcp = tokio::net::TcpStream::connect(addr).await?;
                        let tls = connector.connect(name, tcp).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(tls))
                    }
                }))
                .await
        }
    }
    .map_err(|e| unreachable(&crate::error::chain(&e)))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: args.service.clone(),
        })
        .await
        .map_err(|e| unreachable(&e.message()))?;
    let status =
        ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown);
    let _ = writeln!(std::io::stdout(), "{}", status.as_str_name());
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(unhealthy(format_args!(
            "{addr} reports {} for {:?}",
            status.as_str_name(),
            args.service
        )))
    }
}
