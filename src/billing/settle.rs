//! Applying the lifecycle outside a billing pass: right after the business changed a
//! subscription (create, resume, change card), its position is brought up to the clock in the
//! same transaction, so what `subscription show` prints is what the engine will bill. Nothing
//! is charged here; the events the move causes are written with it.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{BillingError, Result, notice_payload};
use crate::domain::{SubscriptionId, lifecycle};
use crate::store::events::{NewEvent, emit_many};
use crate::store::subscriptions::{self, PositionUpdate};

/// Locks subscription `id` and settles its position at `now` (skips, catch-up, completion).
/// Returns whether it moved.
///
/// # Errors
/// [`BillingError`].
pub async fn settle_subscription(
    conn: &mut PgConnection,
    id: SubscriptionId,
    now: DateTime<Utc>,
    max_catch_up: u32,
) -> Result<bool> {
    let sub = subscriptions::lock(conn, id).await?;
    let before = sub.state()?;
    let settled = lifecycle::settle(&sub.terms()?, &before, now, max_catch_up).map_err(|e| {
        BillingError::Build {
            subscription: id,
            reason: e.to_string(),
        }
    })?;
    if !settled.moved(&before) {
        return Ok(false);
    }
    subscriptions::set_position(
        conn,
        id,
        &PositionUpdate {
            state: settled.state,
            card_id: sub.card_id.clone(),
        },
    )
    .await?;
    let events: Vec<NewEvent> = settled
        .notices
        .iter()
        .map(|n| NewEvent {
            kind: n.kind(),
            subscription_id: Some(id),
            customer_id: Some(sub.customer_id.clone()),
            charge_id: None,
            payload: notice_payload(n),
        })
        .collect();
    emit_many(conn, &events).await?;
    Ok(true)
}
