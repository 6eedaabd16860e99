//! `auth-service healthcheck`: ask a running server's `grpc.health.v1` whether it is
//! SERVING (exit 0) or not (exit 1), for Docker `HEALTHCHECK` and scripts.
use std::{io::Write, net::SocketAddr, time::Duration};

use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::error::{Error, Result};

const TIMEOUT: Duration = Duration::from_secs(3);

pub async fn healthcheck(addr: SocketAddr, service: String) -> Result<()> {
    let unreachable =
        |e: &dyn std::fmt::Display| Error::Config(format!("unhealthy: cannot ask {addr}: {e}"));
    let endpoint = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| unreachable(&e))?
        .connect_timeout(TIMEOUT)
        .timeout(TIMEOUT);
    let channel = endpoint.connect().await.map_err(|e| unreachable(&e))?;
    let response = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: service.clone(),
        })
        .await
        .map_err(|e| unreachable(&e.message()))?;
    let status =
        ServingStatus::try_from(response.into_inner().status).unwrap_or(ServingStatus::Unknown);
    let _ = writeln!(std::io::stdout(), "{}", status.as_str_name());
    if status == ServingStatus::Serving {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "unhealthy: {addr} reports {} for {service:?}",
            status.as_str_name()
        )))
    }
}
