//! Outbound webhooks: endpoints, the fan-out of events into deliveries, the claim of due
//! deliveries (`SKIP LOCKED`, so any number of workers may deliver), and attempt records.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::Result;
use super::events::EventRow;

/// A configured endpoint (the secret is never serialised).
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct EndpointRow {
    /// Id.
    pub id: Uuid,
    /// Where events are POSTed.
    pub url: String,
    /// Whether deliveries are made.
    pub enabled: bool,
    /// `paycron` or `standard` (Standard Webhooks).
    pub signature_format: String,
    /// The event types it takes; `None`: all.
    pub event_types: Option<Vec<String>>,
    /// Until when the secret it had before its last rotation still signs.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// Fan-out position.
    pub last_position: i64,
    /// Created.
    pub created_at: DateTime<Utc>,
}

/// Adds an endpoint; it receives events written from now on.
///
/// # Errors
/// [`super::StoreError::Rejected`] for a bad URL or a short secret.
pub async fn add_endpoint(
    pool: &PgPool,
    url: &str,
    secret: &str,
    signature_format: &str,
    event_types: Option<&[String]>,
) -> Result<Uuid> {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO paycron.webhook_endpoints (id, url, secret, signature_format, event_types, last_position)
         VALUES ($1, $2, $3, $4, $5, (SELECT coalesce(max(position), 0) FROM paycron.event_feed))",
    )
    .bind(id)
    .bind(url)
    .bind(secret)
    .bind(signature_format)
    .bind(event_types)
    .execute(pool)
    .await?;
    Ok(id)
}

/// Every endpoint.
///
/// # Errors
/// [`super::StoreError`].
pub async fn endpoints(pool: &PgPool) -> Result<Vec<EndpointRow>> {
    Ok(sqlx::query_as("SELECT id, url, enabled, signature_format, event_types, previous_secret_until, last_position, created_at
           FROM paycron.webhook_endpoints WHERE removed_at IS NULL ORDER BY created_at")
        .fetch_all(pool)
        .await?)
}

/// Creates deliveries for events newer than each enabled endpoint's position. Returns how many.
///
/// # Errors
/// [`super::StoreError`].
pub async fn fan_out(conn: &mut PgConnection, now: DateTime<Utc>) -> Result<u64> {
    super::events::publish(conn).await?;
    // One snapshot for both halves: the endpoint moves to the last position it was given.
    let n = sqlx::query(
        "WITH ep AS (SELECT id, last_position, event_types FROM paycron.webhook_endpoints
                      WHERE enabled AND removed_at IS NULL FOR UPDATE SKIP LOCKED),
              top AS (SELECT coalesce(max(position), 0) AS p FROM paycron.event_feed),
              ins AS (
                INSERT INTO paycron.webhook_deliveries (id, endpoint_id, event_id, status, next_attempt_at)
                SELECT gen_random_uuid(), ep.id, f.event_id, 'pending', $1
                  FROM ep JOIN paycron.event_feed f ON f.position > ep.last_position
                  JOIN paycron.events e ON e.id = f.event_id, top
                 WHERE f.position <= top.p
                   -- A ping goes only where `webhooks test` sent it; a filter keeps the rest.
                   AND e.type <> 'webhook_ping'
                   AND (ep.event_types IS NULL OR e.type = ANY(ep.event_types))
                ON CONFLICT (endpoint_id, event_id) DO NOTHING
                RETURNING endpoint_id, event_id),
              upd AS (
                UPDATE paycron.webhook_endpoints w
                   SET last_position = greatest(w.last_position, top.p)
                  FROM ep, top WHERE w.id = ep.id
                RETURNING 1)
         SELECT count(*) FROM ins",
    )
    .bind(now)
    .fetch_one(conn)
    .await;
    let n: i64 = sqlx::Row::get(&n?, 0);
    Ok(n as u64)
}

/// A delivery ready to send.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DueDelivery {
    /// Delivery id (sent as a header).
    pub id: Uuid,
    /// Attempts so far.
    pub attempts: i32,
    /// First created.
    pub created_at: DateTime<Utc>,
    /// Endpoint URL.
    pub url: String,
    /// Signing secret.
    pub secret: String,
    /// `paycron` or `standard`.
    pub signature_format: String,
    /// The secret before the last rotation, while it still signs.
    pub previous_secret: Option<String>,
    /// The event id.
    pub event_id: i64,
}

/// Claims up to `limit` due deliveries, pushing their next attempt to `lease_until` so no other
/// worker takes them while this one sends.
///
/// # Errors
/// [`super::StoreError`].
pub async fn claim_due(
    conn: &mut PgConnection,
    now: DateTime<Utc>,
    lease_until: DateTime<Utc>,
    limit: i64,
) -> Result<Vec<DueDelivery>> {
    Ok(sqlx::query_as(
        "WITH due AS (
           SELECT d.id FROM paycron.webhook_deliveries d
            WHERE d.status = 'pending' AND d.next_attempt_at <= $1
            ORDER BY d.next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED)
         UPDATE paycron.webhook_deliveries d SET next_attempt_at = $2
           FROM due, paycron.webhook_endpoints w
          WHERE d.id = due.id AND w.id = d.endpoint_id
          RETURNING d.id, d.attempts, d.created_at, w.url, w.secret, w.signature_format,
                    CASE WHEN w.previous_secret_until > $1 THEN w.previous_secret END AS previous_secret,
                    d.event_id",
    )
    .bind(now)
    .bind(lease_until)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// The events of the given ids.
///
/// # Errors
/// [`super::StoreError`].
pub async fn events_by_id(pool: &PgPool, ids: &[i64]) -> Result<Vec<EventRow>> {
    Ok(sqlx::query_as(
        "SELECT id, type AS kind, subscription_id, customer_id, charge_id, payload, created_at FROM paycron.events WHERE id = ANY($1)",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?)
}

/// Records one attempt and the delivery's new state.
///
/// # Errors
/// [`super::StoreError`].
#[allow(clippy::too_many_arguments)]
pub async fn record_attempt(
    pool: &PgPool,
    delivery: Uuid,
    attempted_at: DateTime<Utc>,
    http_status: Option<i32>,
    error: Option<&str>,
    duration_ms: i32,
    status: &str,
    next_attempt_at: DateTime<Utc>,
) -> Result<()> {
    let mut tx = super::begin(pool).await?;
    sqlx::query("INSERT INTO paycron.webhook_attempts (delivery_id, attempted_at, http_status, error, duration_ms) VALUES ($1, $2, $3, $4, $5)")
        .bind(delivery)
        .bind(attempted_at)
        .bind(http_status)
        .bind(error)
        .bind(duration_ms)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "UPDATE paycron.webhook_deliveries
            SET attempts = attempts + 1, status = $2, next_attempt_at = $3, last_status = $4, last_error = $5,
                delivered_at = CASE WHEN $2 = 'delivered' THEN $6 ELSE delivered_at END
          WHERE id = $1",
    )
    .bind(delivery)
    .bind(status)
    .bind(next_attempt_at)
    .bind(http_status)
    .bind(error)
    .bind(attempted_at)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A delivery as listed by `paycron webhooks deliveries`.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct DeliveryRow {
    /// Delivery id.
    pub id: Uuid,
    /// Endpoint.
    pub endpoint_id: Uuid,
    /// Event.
    pub event_id: i64,
    /// Event type.
    pub event_type: String,
    /// pending | delivered | failed.
    pub status: String,
    /// Attempts made.
    pub attempts: i32,
    /// Last HTTP status.
    pub last_status: Option<i32>,
    /// Last error.
    pub last_error: Option<String>,
    /// Next try.
    pub next_attempt_at: DateTime<Utc>,
    /// Delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

/// Recent deliveries, newest first.
///
/// # Errors
/// [`super::StoreError`].
pub async fn deliveries(pool: &PgPool, limit: i64) -> Result<Vec<DeliveryRow>> {
    Ok(sqlx::query_as(
        "SELECT d.id, d.endpoint_id, d.event_id, e.type AS event_type, d.status, d.attempts, d.last_status, d.last_error,
                d.next_attempt_at, d.delivered_at
           FROM paycron.webhook_deliveries d JOIN paycron.events e ON e.id = d.event_id
          ORDER BY d.created_at DESC, d.event_id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Attempt times of one delivery, oldest first.
///
/// # Errors
/// [`super::StoreError`].
pub async fn attempts(pool: &PgPool, delivery: Uuid) -> Result<Vec<(DateTime<Utc>, Option<i32>)>> {
    Ok(sqlx::query_as("SELECT attempted_at, http_status FROM paycron.webhook_attempts WHERE delivery_id = $1 ORDER BY id")
        .bind(delivery)
        .fetch_all(pool)
        .await?)
}

/// What a management command changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Managed {
    /// Done.
    Changed,
    /// No endpoint with that id (or it was removed).
    Unknown,
}

fn managed(rows: u64) -> Managed {
    if rows == 1 {
        Managed::Changed
    } else {
        Managed::Unknown
    }
}

/// Enables or disables an endpoint (a disabled one is not fanned out to; it picks up from where
/// it stopped when enabled again).
///
/// # Errors
/// [`super::StoreError`].
pub async fn set_enabled(pool: &PgPool, id: Uuid, enabled: bool) -> Result<Managed> {
    let r = sqlx::query(
        "UPDATE paycron.webhook_endpoints SET enabled = $2 WHERE id = $1 AND removed_at IS NULL",
    )
    .bind(id)
    .bind(enabled)
    .execute(pool)
    .await?;
    Ok(managed(r.rows_affected()))
}

/// Removes an endpoint: never delivered to again, its pending deliveries failed; its history
/// stays for `webhooks deliveries`.
///
/// # Errors
/// [`super::StoreError`].
pub async fn remove(pool: &PgPool, id: Uuid, now: DateTime<Utc>) -> Result<Managed> {
    let mut tx = super::begin(pool).await?;
    let r = sqlx::query(
        "UPDATE paycron.webhook_endpoints SET removed_at = $2, enabled = false
          WHERE id = $1 AND removed_at IS NULL",
    )
    .bind(id)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE paycron.webhook_deliveries SET status = 'failed', last_error = 'endpoint removed'
          WHERE endpoint_id = $1 AND status = 'pending'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(managed(r.rows_affected()))
}

/// Replaces an endpoint's secret; the old one keeps signing beside it until `overlap_until`.
///
/// # Errors
/// [`super::StoreError`].
pub async fn rotate_secret(
    pool: &PgPool,
    id: Uuid,
    secret: &str,
    overlap_until: DateTime<Utc>,
) -> Result<Managed> {
    let r = sqlx::query(
        "UPDATE paycron.webhook_endpoints
            SET previous_secret = secret, previous_secret_until = $3, secret = $2
          WHERE id = $1 AND removed_at IS NULL",
    )
    .bind(id)
    .bind(secret)
    .bind(overlap_until)
    .execute(pool)
    .await?;
    Ok(managed(r.rows_affected()))
}

/// The signature format of an endpoint still in use.
///
/// # Errors
/// [`super::StoreError`].
pub async fn format_of(pool: &PgPool, id: Uuid) -> Result<Option<String>> {
    Ok(sqlx::query_scalar(
        "SELECT signature_format FROM paycron.webhook_endpoints WHERE id = $1 AND removed_at IS NULL",
    )
    .bind(id)
    .fetch_optional(pool)
    .await?)
}

/// Sends a `webhook_ping` event to one endpoint (and only there), due now; returns the event id.
///
/// # Errors
/// [`super::StoreError`].
pub async fn ping(pool: &PgPool, id: Uuid, now: DateTime<Utc>) -> Result<Option<i64>> {
    let mut tx = super::begin(pool).await?;
    let exists: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM paycron.webhook_endpoints WHERE id = $1 AND removed_at IS NULL FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    if exists.is_none() {
        return Ok(None);
    }
    let event = super::events::emit(
        &mut tx,
        "webhook_ping",
        None,
        None,
        None,
        serde_json::json!({ "endpoint_id": id }),
    )
    .await?;
    sqlx::query(
        "INSERT INTO paycron.webhook_deliveries (id, endpoint_id, event_id, status, next_attempt_at)
         VALUES (gen_random_uuid(), $1, $2, 'pending', $3)",
    )
    .bind(id)
    .bind(event)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(event))
}

/// Delivers an event again to every endpoint that had it (delivered or failed), now; returns
/// how many deliveries were queued.
///
/// # Errors
/// [`super::StoreError`].
pub async fn resend(pool: &PgPool, event_id: i64, now: DateTime<Utc>) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE paycron.webhook_deliveries d SET status = 'pending', next_attempt_at = $2, created_at = $2
           FROM paycron.webhook_endpoints w
          WHERE d.event_id = $1 AND w.id = d.endpoint_id AND w.removed_at IS NULL",
    )
    .bind(event_id)
    .bind(now)
    .execute(pool)
    .await?;
    Ok(r.rows_affected())
}

/// The charges of the given ids as the read API shows them (`subscription_charges`), keyed by
/// charge id: what a delivery about a charge carries.
///
/// # Errors
/// [`super::StoreError`].
pub async fn charge_snapshots(
    pool: &PgPool,
    ids: &[Uuid],
) -> Result<std::collections::HashMap<Uuid, serde_json::Value>> {
    if ids.is_empty() {
        return Ok(Default::default());
    }
    let rows: Vec<(Uuid, serde_json::Value)> = sqlx::query_as(
        "SELECT c.id, to_jsonb(x) FROM paycron.charges c
           CROSS JOIN LATERAL paycron.subscription_charges(c.subscription_id) x
          WHERE c.id = ANY($1) AND x.charge_id = c.id",
    )
    .bind(ids)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Deliveries waiting to be sent, and when the oldest of them was created.
///
/// # Errors
/// [`super::StoreError`].
pub async fn backlog(pool: &PgPool) -> Result<(i64, Option<DateTime<Utc>>)> {
    Ok(sqlx::query_as(
        "SELECT count(*), min(created_at) FROM paycron.webhook_deliveries WHERE status = 'pending'",
    )
    .fetch_one(pool)
    .await?)
}
