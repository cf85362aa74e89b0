//! Outbound webhooks: every event, POSTed as JSON to each configured endpoint, signed, retried
//! with exponential backoff until a 2xx or until the delivery is older than the maximum age
//! (3 days by default). At least once: a receiver de-duplicates by the event id.
//!
//! Each endpoint signs in one of two formats:
//! - `paycron` (Stripe's scheme, so Stripe's libraries verify it): header
//!   `Paycron-Signature: t=<unix seconds>,v1=<hex>`, where `v1` =
//!   `HMAC-SHA256(endpoint secret, "<t>.<raw body>")`;
//! - `standard` ([Standard Webhooks](https://www.standardwebhooks.com), verified by its libraries
//!   in about ten languages): `webhook-id` (the delivery id), `webhook-timestamp`, and
//!   `webhook-signature: v1,<base64>` = base64(HMAC-SHA256(base64-decoded `whsec_` secret,
//!   "<id>.<timestamp>.<raw body>")).
//!
//! Each attempt of a delivery carries the same `Paycron-Delivery-Id` and `Paycron-Event-Id`. Ordering per endpoint is not guaranteed:
//! order by the event id. Delivery runs as its own task, so a dead endpoint never blocks billing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::PgPool;

use crate::store::{StoreError, outbound};

/// The version of the delivered payload's shape, sent as `api_version` in every delivery.
pub const API_VERSION: &str = "2026-11-26";

/// Tolerance for the signature's timestamp in [`verify`].
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// The signature header for `body` at `timestamp`.
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac(secret, timestamp, body).finalize().into_bytes())
    )
}

/// A new secret for `format`: `whsec_` and 32 random bytes, base64 for Standard Webhooks (its
/// libraries decode the part after the prefix), hex for paycron's own format.
pub fn new_secret(format: SignatureFormat) -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    match format {
        SignatureFormat::Paycron => format!("whsec_{}", hex::encode(bytes)),
        SignatureFormat::Standard => format!(
            "whsec_{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        ),
    }
}

/// How an endpoint's deliveries are signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum SignatureFormat {
    /// `Paycron-Signature: t=…,v1=<hex>` (Stripe's scheme).
    Paycron,
    /// Standard Webhooks: `webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64>`.
    Standard,
}

impl SignatureFormat {
    /// As stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            SignatureFormat::Paycron => "paycron",
            SignatureFormat::Standard => "standard",
        }
    }
}

/// The Standard Webhooks signature header value for message `id` at `timestamp`, or `None`
/// when `secret` is not `whsec_<base64>`.
pub fn sign_standard(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let key = b64.decode(secret.strip_prefix("whsec_")?).ok()?;
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&key).ok()?;
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    Some(format!("v1,{}", b64.encode(mac.finalize().into_bytes())))
}

/// HMAC-SHA256 keyed by `secret` over "<timestamp>.<body>": the one definition both signing
/// and verifying use.
fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Why a signature was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VerifyError {
    /// Not `t=...,v1=...`.
    #[error("the Paycron-Signature header is malformed")]
    Malformed,
    /// Timestamp too far from now (a replay).
    #[error("the signature's timestamp is outside the tolerance")]
    Stale,
    /// No `v1` matched.
    #[error("the signature does not match")]
    Mismatch,
}

/// Checks a `Paycron-Signature` header (constant-time comparison); what receivers do.
///
/// # Errors
/// [`VerifyError`].
pub fn verify(
    secret: &str,
    header: &str,
    body: &[u8],
    tolerance: Duration,
    now: DateTime<Utc>,
) -> Result<(), VerifyError> {
    let mut t: Option<i64> = None;
    let mut sigs = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", v)) => t = v.parse().ok(),
            Some(("v1", v)) => sigs.push(hex::decode(v).map_err(|_| VerifyError::Malformed)?),
            _ => {}
        }
    }
    let t = t.ok_or(VerifyError::Malformed)?;
    if sigs.is_empty() {
        return Err(VerifyError::Malformed);
    }
    if (now.timestamp() - t).unsigned_abs() > tolerance.as_secs() {
        return Err(VerifyError::Stale);
    }
    for sig in sigs {
        if mac(secret, t, body).verify_slice(&sig).is_ok() {
            return Ok(());
        }
    }
    Err(VerifyError::Mismatch)
}

/// True for an address on the public internet: not loopback, private, link-local (the cloud
/// metadata service at 169.254.169.254 included), shared, unspecified, multicast or reserved.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1]))
                || (o[0] == 192 && o[1] == 0 && o[2] == 0)
                || o[0] >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// Why an endpoint URL is refused.
pub fn refuse_destination(url: &str, cfg: &DeliveryConfig) -> Option<String> {
    let Ok(parsed) = reqwest::Url::parse(url) else {
        return Some("not a URL".into());
    };
    match parsed.scheme() {
        "https" => {}
        "http" if !cfg.require_https => {}
        "http" => return Some("https is required against Square production".into()),
        other => return Some(format!("scheme {other} is not http(s)")),
    }
    if cfg.allow_private {
        return None;
    }
    let Some(host) = parsed.host_str() else {
        return Some("no host".into());
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let private = match bare.parse::<IpAddr>() {
        Ok(ip) => !is_public(ip),
        Err(_) => bare.eq_ignore_ascii_case("localhost") || bare.ends_with(".localhost"),
    };
    private.then(|| {
        format!(
            "{host} is not a public address (set PAYCRON_WEBHOOK_ALLOW_PRIVATE=true for development)"
        )
    })
}

/// Resolves endpoint host names to public addresses only, at connection time (so a name that
/// resolves elsewhere later cannot reach an internal service).
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found: Vec<std::net::SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if found.is_empty() {
                return Err(format!("{host} resolves to no public address").into());
            }
            Ok(Box::new(found.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The HTTP client deliveries use: no redirects (a 3xx is a failed attempt), a per-request
/// timeout, and, unless private destinations are allowed, host names resolved to public
/// addresses only.
///
/// # Errors
/// The TLS backend cannot start.
pub fn client(cfg: &DeliveryConfig) -> reqwest::Result<reqwest::Client> {
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout)
        .user_agent(concat!("paycron/", env!("CARGO_PKG_VERSION")));
    if !cfg.allow_private {
        b = b.dns_resolver(std::sync::Arc::new(PublicOnly));
    }
    b.build()
}

/// Delivery settings (part of the configuration).
pub use crate::config::DeliveryConfig;

/// What one delivery run did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeliverySummary {
    /// Deliveries created from new events.
    pub fanned_out: u64,
    /// Delivered (2xx).
    pub delivered: u64,
    /// Failed this time, to be retried.
    pub retrying: u64,
    /// Given up (older than the maximum age).
    pub failed: u64,
}

/// The delay before attempt `attempts + 1` (doubling from `base`, at most six hours).
pub fn backoff(base: Duration, attempts: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempts.saturating_sub(1).min(20));
    base.saturating_mul(factor)
        .min(Duration::from_secs(6 * 3600))
}

/// Fans new events out to endpoints and sends every due delivery once.
///
/// # Errors
/// [`StoreError`] when the database fails; endpoint failures are recorded, not returned.
///
/// Long on purpose: one delivery pass (fan out, claim, send, record), whose steps share the HTTP client and the batch.
pub async fn deliver_due(
    pool: &PgPool,
    http: &reqwest::Client,
    cfg: &DeliveryConfig,
    now: DateTime<Utc>,
) -> Result<DeliverySummary, StoreError> {
    let mut summary = DeliverySummary::default();
    {
        let mut conn = pool.acquire().await?;
        summary.fanned_out = outbound::fan_out(&mut conn, now).await?;
    }
    loop {
        let mut conn = pool.acquire().await?;
        let lease = now
            + chrono::Duration::from_std(cfg.timeout * 3).unwrap_or(chrono::Duration::seconds(30));
        let due = outbound::claim_due(&mut conn, now, lease, 100).await?;
        drop(conn);
        if due.is_empty() {
            break;
        }
        let ids: Vec<i64> = due.iter().map(|d| d.event_id).collect();
        let events: std::collections::HashMap<i64, crate::store::events::EventRow> =
            outbound::events_by_id(pool, &ids)
                .await?
                .into_iter()
                .map(|e| (e.id, e))
                .collect();
        let charge_ids: Vec<uuid::Uuid> = events.values().filter_map(|e| e.charge_id).collect();
        let charges = outbound::charge_snapshots(pool, &charge_ids).await?;
        let results: Vec<Result<&'static str, StoreError>> = futures::stream::iter(due.into_iter().map(|d| {
            let event = events.get(&d.event_id).cloned();
            let charge = event.as_ref().and_then(|e| e.charge_id).and_then(|c| charges.get(&c).cloned());
            async move {
                let body = serde_json::json!({
                    "id": d.event_id,
                    "type": event.as_ref().map(|e| e.kind.clone()),
                    "created_at": event.as_ref().map(|e| e.created_at),
                    "subscription_id": event.as_ref().and_then(|e| e.subscription_id),
                    "customer_id": event.as_ref().and_then(|e| e.customer_id.clone()),
                    "charge_id": event.as_ref().and_then(|e| e.charge_id),
                    "data": event.as_ref().map(|e| e.payload.clone()),
                    "charge": charge,
                    "api_version": API_VERSION,
                })
                .to_string();
                let attempted_at = Utc::now();
                let started = Instant::now();
                if let Some(why) = refuse_destination(&d.url, cfg) {
                    let next = attempted_at + chrono::Duration::from_std(backoff(cfg.backoff, d.attempts as u32 + 1)).unwrap_or(chrono::Duration::hours(6));
                    let too_old = next - d.created_at > chrono::Duration::from_std(cfg.max_age).unwrap_or(chrono::Duration::days(3));
                    let status = if too_old { "failed" } else { "pending" };
                    let error = format!("destination refused: {why}");
                    outbound::record_attempt(pool, d.id, attempted_at, None, Some(&error), 0, status, next).await?;
                    tracing::warn!(delivery_id = %d.id, event_id = d.event_id, %error, "webhook delivery refused");
                    return Ok(status);
                }
                let ts = attempted_at.timestamp();
                let mut req = http
                    .post(&d.url)
                    .timeout(cfg.timeout)
                    .header("Content-Type", "application/json")
                    .header("Paycron-Delivery-Id", d.id.to_string())
                    .header("Paycron-Event-Id", d.event_id.to_string());
                // During a rotation's overlap both secrets sign, so a receiver that still has the
                // old one keeps verifying.
                let secrets: Vec<&str> = std::iter::once(d.secret.as_str()).chain(d.previous_secret.as_deref()).collect();
                req = if d.signature_format == "standard" {
                    let id = d.id.to_string();
                    let sigs: Vec<String> = secrets.iter().filter_map(|s| sign_standard(s, &id, ts, body.as_bytes())).collect();
                    req.header("webhook-id", &id)
                        .header("webhook-timestamp", ts.to_string())
                        .header("webhook-signature", sigs.join(" "))
                } else {
                    let v1: Vec<String> = secrets.iter().map(|s| sign(s, ts, body.as_bytes())).collect();
                    // `t=…,v1=…` for each secret, folded into one header: `t=…,v1=new,v1=old`.
                    let mut header = format!("t={ts}");
                    for one in &v1 {
                        if let Some((_, sig)) = one.split_once(",v1=") {
                            header.push_str(",v1=");
                            header.push_str(sig);
                        }
                    }
                    req.header("Paycron-Signature", header)
                };
                let sent = req.body(body).send().await;
                let ms = started.elapsed().as_millis() as i32;
                let (code, error) = match &sent {
                    Ok(r) => (Some(i32::from(r.status().as_u16())), (!r.status().is_success()).then(|| format!("HTTP {}", r.status()))),
                    Err(e) => (None, Some(if e.is_timeout() { "timeout".to_owned() } else { "connection failed".to_owned() })),
                };
                let attempts = d.attempts as u32 + 1;
                let (status, next) = if error.is_none() {
                    ("delivered", attempted_at)
                } else {
                    let next = attempted_at + chrono::Duration::from_std(backoff(cfg.backoff, attempts)).unwrap_or(chrono::Duration::hours(6));
                    let too_old = next - d.created_at > chrono::Duration::from_std(cfg.max_age).unwrap_or(chrono::Duration::days(3));
                    (if too_old { "failed" } else { "pending" }, next)
                };
                outbound::record_attempt(pool, d.id, attempted_at, code, error.as_deref(), ms, status, next).await?;
                metrics::counter!(crate::ops::metrics::WEBHOOK_DELIVERIES, "result" => if status == "pending" { "retrying" } else { status }).increment(1);
                tracing::info!(delivery_id = %d.id, event_id = d.event_id, attempt = attempts, status, http_status = code.unwrap_or(0), "webhook delivery");
                Ok(status)
            }
        }))
        .buffer_unordered(8)
        .collect()
        .await;
        for r in results {
            match r? {
                "delivered" => summary.delivered += 1,
                "failed" => summary.failed += 1,
                _ => summary.retrying += 1,
            }
        }
    }
    let (backlog, oldest) = outbound::backlog(pool).await?;
    metrics::gauge!(crate::ops::metrics::WEBHOOK_BACKLOG).set(backlog as f64);
    metrics::gauge!(crate::ops::metrics::WEBHOOK_OLDEST_PENDING).set(
        oldest
            .map(|t| (Utc::now() - t).num_seconds().max(0) as f64)
            .unwrap_or(0.0),
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_round_trip_and_refuse_tampering() {
        let now = Utc::now();
        let header = sign("whsec_0123456789abcdef", now.timestamp(), b"{\"id\":1}");
        assert_eq!(
            verify(
                "whsec_0123456789abcdef",
                &header,
                b"{\"id\":1}",
                DEFAULT_TOLERANCE,
                now
            ),
            Ok(())
        );
        assert_eq!(
            verify(
                "whsec_0123456789abcdef",
                &header,
                b"{\"id\":2}",
                DEFAULT_TOLERANCE,
                now
            ),
            Err(VerifyError::Mismatch)
        );
        assert_eq!(
            verify(
                "another-secret-0000",
                &header,
                b"{\"id\":1}",
                DEFAULT_TOLERANCE,
                now
            ),
            Err(VerifyError::Mismatch)
        );
        let later = now + chrono::Duration::minutes(10);
        assert_eq!(
            verify(
                "whsec_0123456789abcdef",
                &header,
                b"{\"id\":1}",
                DEFAULT_TOLERANCE,
                later
            ),
            Err(VerifyError::Stale)
        );
        assert_eq!(
            verify("s", "garbage", b"", DEFAULT_TOLERANCE, now),
            Err(VerifyError::Malformed)
        );
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let b = Duration::from_secs(30);
        assert_eq!(backoff(b, 1), Duration::from_secs(30));
        assert_eq!(backoff(b, 2), Duration::from_secs(60));
        assert_eq!(backoff(b, 4), Duration::from_secs(240));
        assert_eq!(backoff(b, 30), Duration::from_secs(6 * 3600));
    }
}
