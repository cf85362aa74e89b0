//! The events outbox: immutable rows, written in the same transaction as the change they
//! describe, announced with `NOTIFY paycron_events` by a trigger.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use uuid::Uuid;

use super::Result;
use crate::domain::{ChargeId, CustomerId, SubscriptionId};

/// Writes one event; returns its id.
///
/// # Errors
/// [`super::StoreError`].
pub async fn emit(
    conn: &mut PgConnection,
    kind: &str,
    subscription_id: Option<Uuid>,
    customer_id: Option<&str>,
    charge_id: Option<Uuid>,
    payload: serde_json::Value,
) -> Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT paycron.emit($1, $2, $3, $4, $5)")
            .bind(kind)
            .bind(subscription_id)
            .bind(customer_id)
            .bind(charge_id)
            .bind(payload)
            .fetch_one(conn)
            .await?,
    )
}

/// A stored event.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct EventRow {
    /// Monotonic id.
    pub id: i64,
    /// Type, e.g. payment_succeeded.
    #[serde(rename = "type")]
    pub kind: String,
    /// Subscription.
    pub subscription_id: Option<Uuid>,
    /// Customer.
    pub customer_id: Option<String>,
    /// Charge.
    pub charge_id: Option<Uuid>,
    /// Details.
    pub payload: serde_json::Value,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// Gives feed positions to the events that became final since the last call (see
/// `paycron.publish_events()`); returns how many.
///
/// # Errors
/// [`super::StoreError`].
pub async fn publish(conn: &mut PgConnection) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT paycron.publish_events()")
        .fetch_one(conn)
        .await?)
}

/// An event with its feed position.
#[derive(Clone, Debug, Serialize, sqlx::FromRow)]
pub struct FeedRow {
    /// Position in the feed: consumers remember the last one they read.
    pub position: i64,
    /// The event.
    #[sqlx(flatten)]
    #[serde(flatten)]
    pub event: EventRow,
}

/// Events at feed positions after `after`, in order, at most `limit` (publishing first what
/// became final).
///
/// # Errors
/// [`super::StoreError`].
pub async fn after(pool: &PgPool, after: i64, limit: i64) -> Result<Vec<FeedRow>> {
    let mut conn = pool.acquire().await?;
    publish(&mut conn).await?;
    Ok(sqlx::query_as(
        "SELECT f.position, e.id, e.type AS kind, e.subscription_id, e.customer_id, e.charge_id, e.payload, e.created_at
           FROM paycron.event_feed f JOIN paycron.events e ON e.id = f.event_id
          WHERE f.position > $1 ORDER BY f.position LIMIT $2",
    )
    .bind(after)
    .bind(limit)
    .fetch_all(&mut *conn)
    .await?)
}

/// A subscription's latest `limit` events, oldest first (what `subscription show` prints).
///
/// # Errors
/// [`super::StoreError`].
pub async fn for_subscription(
    conn: &mut PgConnection,
    subscription: SubscriptionId,
    limit: i64,
) -> Result<Vec<EventRow>> {
    Ok(sqlx::query_as(
        "SELECT * FROM (
           SELECT id, type AS kind, subscription_id, customer_id, charge_id, payload, created_at
             FROM paycron.events WHERE subscription_id = $1 ORDER BY id DESC LIMIT $2) e
          ORDER BY id",
    )
    .bind(subscription)
    .bind(limit)
    .fetch_all(conn)
    .await?)
}

/// An event to write.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// Type.
    pub kind: &'static str,
    /// Subscription.
    pub subscription_id: Option<SubscriptionId>,
    /// Customer.
    pub customer_id: Option<CustomerId>,
    /// Charge.
    pub charge_id: Option<ChargeId>,
    /// Details.
    pub payload: serde_json::Value,
}

/// Writes many events in one statement, in the given order (ids follow it).
///
/// # Errors
/// [`super::StoreError`].
pub async fn emit_many(conn: &mut PgConnection, events: &[NewEvent]) -> Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO paycron.events (type, subscription_id, customer_id, charge_id, payload)
         SELECT t.kind, t.sub, t.cust, t.charge, t.payload
           FROM UNNEST($1::text[], $2::uuid[], $3::text[], $4::uuid[], $5::jsonb[]) WITH ORDINALITY
                AS t(kind, sub, cust, charge, payload, n)
          ORDER BY t.n",
    )
    .bind(events.iter().map(|e| e.kind.to_owned()).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.subscription_id).collect::<Vec<_>>())
    .bind(
        events
            .iter()
            .map(|e| e.customer_id.clone())
            .collect::<Vec<_>>(),
    )
    .bind(events.iter().map(|e| e.charge_id).collect::<Vec<_>>())
    .bind(events.iter().map(|e| e.payload.clone()).collect::<Vec<_>>())
    .execute(conn)
    .await?;
    Ok(())
}
