//! `paycron healthcheck`: asks the local daemon's `/healthz` (on `PAYCRON_OPS_ADDR`, an
//! unspecified address meaning this host) and exits 0 when it answers 200 — what a container's
//! `HEALTHCHECK` runs. It needs no database and no token.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use super::{CommandError, Result};
use crate::config::Config;

/// `paycron healthcheck`.
///
/// # Errors
/// [`CommandError::Failed`] (exit 1) when the daemon does not answer 200 within 3 s.
pub async fn healthcheck(config: &Config) -> Result<()> {
    let mut addr: SocketAddr = config.ops_addr;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let url = format!("http://{addr}/healthz");
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .map_err(|e| CommandError::Failed(format!("healthcheck: {e}")))?;
    match http.get(&url).send().await {
        Ok(r) if r.status().is_success() => crate::out!("healthy ({url})"),
        Ok(r) => Err(CommandError::Failed(format!(
            "unhealthy: {url} answered {}",
            r.status()
        ))),
        Err(e) => Err(CommandError::Failed(format!("unhealthy: {url}: {e}"))),
    }
}
