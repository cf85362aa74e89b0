//! Square webhook notifications: de-duplication by `event_id` and the card changes they carry,
//! written in one transaction.

use sqlx::PgConnection;

use super::Result;

/// Records an event; false when its `event_id` was seen before (do nothing more).
///
/// # Errors
/// [`super::StoreError`].
pub async fn record_event(
    conn: &mut PgConnection,
    event_id: &str,
    kind: &str,
    payload: &serde_json::Value,
) -> Result<bool> {
    Ok(sqlx::query("INSERT INTO paycron.square_webhook_events (event_id, type, payload) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(event_id)
        .bind(kind)
        .bind(payload)
        .execute(conn)
        .await?
        .rows_affected()
        == 1)
}

/// Marks a card disabled (and forgotten, for GDPR); returns whether it was known.
///
/// # Errors
/// [`super::StoreError`].
pub async fn disable_card(conn: &mut PgConnection, card_id: &str, forgotten: bool) -> Result<bool> {
    Ok(sqlx::query(
        "UPDATE paycron.cards SET enabled = false, forgotten = forgotten OR $2, updated_at = now() WHERE id = $1",
    )
    .bind(card_id)
    .bind(forgotten)
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// After Square updated a card (new expiry or number): the subscriptions charged on it are
/// revived by the lifecycle's card-update rule (`paycron.card_updated`): an unpaid one becomes
/// past due with a fresh dunning, due now; a past-due one is retried now. Returns how many.
///
/// # Errors
/// [`super::StoreError`].
pub async fn retry_now_for_card(conn: &mut PgConnection, card_id: &str) -> Result<u64> {
    let n: i32 = sqlx::query_scalar("SELECT paycron.card_updated($1)")
        .bind(card_id)
        .fetch_one(conn)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
