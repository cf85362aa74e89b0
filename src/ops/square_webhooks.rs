//! The Square webhook receiver: `POST /webhooks/square` on the ops server.
//!
//! Invariants: nothing changes unless `x-square-hmacsha256-signature` equals
//! base64(HMAC-SHA256(signature key, notification URL + raw body)), compared in constant time
//! (`hmac`'s `verify_slice`); a missing or wrong signature is 401, a body over 1 MiB is 413.
//! Each `event_id` is handled once: the de-duplication row and what the event changes are one
//! transaction. Card events (`card.*`) update cards on file, ordered by Square's version;
//! `refund.*` settles a refund paycron asked for; `dispute.*` records a dispute and books the
//! money it moves, ordered by the dispute's version. Unknown event types are recorded and
//! acknowledged.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use sqlx::PgPool;

use crate::domain::card::{CardStamp, is_stale};
use crate::domain::refund::{RefundStatus, dispute_closed, dispute_movements};
use crate::store::cards::{self, CardRecord};
use crate::store::disputes::{self, Applied, DisputeReport};
use crate::store::refunds;
use crate::store::{StoreError, events, square_webhooks as webhooks};

/// Largest body accepted.
pub const MAX_BODY: usize = 1 << 20;

/// What the receiver needs.
#[derive(Clone)]
pub struct WebhookState {
    /// The database.
    pub pool: PgPool,
    /// `SQUARE_WEBHOOK_SIGNATURE_KEY`.
    pub key: Option<SecretString>,
    /// `SQUARE_WEBHOOK_NOTIFICATION_URL`: the URL Square signs.
    pub url: Option<String>,
    /// `PAYCRON_DISPUTE_LOST_CANCELS`: a lost dispute cancels its subscription.
    pub dispute_lost_cancels: bool,
}

/// True when `signature` is Square's signature of `url + body` under `key`.
pub fn verify(key: &str, url: &str, body: &[u8], signature: &str) -> bool {
    let Ok(expected) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.as_bytes()) else {
        return false;
    };
    mac.update(url.as_bytes());
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

/// Handles one notification.
pub async fn receive(
    State(s): State<WebhookState>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, String) {
    let (Some(key), Some(url)) = (&s.key, &s.url) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "webhooks are not configured\n".into(),
        );
    };
    let signature = headers
        .get("x-square-hmacsha256-signature")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if signature.is_empty() || !verify(key.expose_secret(), url, &body, signature) {
        metrics::counter!(crate::ops::metrics::SQUARE_WEBHOOKS, "result" => "refused").increment(1);
        tracing::warn!(
            bytes = body.len(),
            "webhook refused: bad or missing signature"
        );
        return (StatusCode::UNAUTHORIZED, "bad signature\n".into());
    }
    let payload: serde_json::Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("not JSON: {e}\n")),
    };
    let event_id = payload["event_id"].as_str().unwrap_or("").to_owned();
    let kind = payload["type"].as_str().unwrap_or("").to_owned();
    if event_id.is_empty() || kind.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            "event_id and type are required\n".into(),
        );
    }
    match handle(&s, &event_id, &kind, &payload).await {
        Ok(true) => {
            metrics::counter!(crate::ops::metrics::SQUARE_WEBHOOKS, "result" => "accepted")
                .increment(1);
            (StatusCode::OK, "ok\n".into())
        }
        Ok(false) => {
            metrics::counter!(crate::ops::metrics::SQUARE_WEBHOOKS, "result" => "duplicate")
                .increment(1);
            (StatusCode::OK, "duplicate\n".into())
        }
        Err(e) => {
            metrics::counter!(crate::ops::metrics::SQUARE_WEBHOOKS, "result" => "error")
                .increment(1);
            tracing::error!(event_id, kind, error = %e, "webhook not processed; Square will retry");
            (StatusCode::INTERNAL_SERVER_ERROR, "not processed\n".into())
        }
    }
}

/// Applies a notification already known to be Square's (the demo's in-process simulator);
/// false for a duplicate. Everything from the network goes through [`receive`], which checks
/// the signature first.
///
/// # Errors
/// [`StoreError`].
pub async fn apply_trusted(
    s: &WebhookState,
    payload: &serde_json::Value,
) -> Result<bool, StoreError> {
    let event_id = payload["event_id"].as_str().unwrap_or("");
    let kind = payload["type"].as_str().unwrap_or("");
    handle(s, event_id, kind, payload).await
}

/// Records the event once and applies it, in one transaction; false for a duplicate.
async fn handle(
    s: &WebhookState,
    event_id: &str,
    kind: &str,
    payload: &serde_json::Value,
) -> Result<bool, StoreError> {
    let mut tx = crate::store::begin(&s.pool).await?;
    if !webhooks::record_event(&mut tx, event_id, kind, payload).await? {
        return Ok(false);
    }
    if kind.starts_with("card.") {
        card_event(&mut tx, event_id, kind, payload).await?;
    } else if kind.starts_with("refund.") {
        refund_event(&mut tx, event_id, payload).await?;
    } else if kind.starts_with("dispute.") {
        dispute_event(&mut tx, event_id, payload, s.dispute_lost_cancels).await?;
    } else {
        tracing::info!(event_id, kind, "webhook recorded");
    }
    tx.commit().await?;
    Ok(true)
}

/// A card created, updated, disabled or forgotten at Square (older versions ignored).
///
/// Long on purpose: one card event read top to bottom (its stamp, staleness, then one arm per
/// kind), in the webhook's transaction.
async fn card_event(
    tx: &mut sqlx::PgConnection,
    event_id: &str,
    kind: &str,
    payload: &serde_json::Value,
) -> Result<(), StoreError> {
    let card = &payload["data"]["object"]["card"];
    let card_id = card["id"]
        .as_str()
        .or_else(|| payload["data"]["id"].as_str())
        .unwrap_or("");
    let stamp = CardStamp {
        version: card["version"].as_i64(),
        at: payload["created_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc)),
    };
    if kind.starts_with("card.")
        && let Some(stored) = cards::lock_stamp(&mut *tx, card_id).await?
        && is_stale(stored, stamp)
    {
        tracing::info!(
            event_id,
            kind,
            card_id,
            version = stamp.version,
            stored_version = stored.version,
            "stale card event recorded and ignored: Square said something newer already"
        );
        return Ok(());
    }
    match kind {
        "card.created" | "card.updated" | "card.automatically_updated" => {
            let record = CardRecord {
                customer_id: card["customer_id"].as_str().unwrap_or("").to_owned(),
                card_id: card_id.to_owned(),
                card_brand: card["card_brand"].as_str().map(str::to_owned),
                last_4: card["last_4"].as_str().map(str::to_owned),
                exp_month: card["exp_month"]
                    .as_i64()
                    .and_then(|v| i32::try_from(v).ok()),
                exp_year: card["exp_year"]
                    .as_i64()
                    .and_then(|v| i32::try_from(v).ok()),
                enabled: card["enabled"].as_bool().unwrap_or(true),
            };
            let changed = cards::upsert_customer_card(&mut *tx, &record).await?;
            cards::stamp(&mut *tx, card_id, stamp).await?;
            // Only a card that changed (re-enabled, new expiry) is worth billing again now.
            let retried = if changed && record.enabled {
                webhooks::retry_now_for_card(&mut *tx, card_id).await?
            } else {
                0
            };
            tracing::info!(
                event_id,
                kind,
                card_id,
                changed,
                retried,
                "card updated from Square"
            );
        }
        "card.disabled" | "card.forgotten" => {
            let forgotten = kind == "card.forgotten";
            cards::stamp(&mut *tx, card_id, stamp).await?;
            if webhooks::disable_card(&mut *tx, card_id, forgotten).await? {
                events::emit(
                    &mut *tx,
                    "card_disabled",
                    None,
                    card["customer_id"].as_str(),
                    None,
                    serde_json::json!({"card_id": card_id, "forgotten": forgotten}),
                )
                .await?;
            }
            tracing::info!(event_id, kind, card_id, "card disabled by Square");
        }
        _ => tracing::info!(event_id, kind, "webhook recorded"),
    }
    Ok(())
}

/// A refund Square settled: settles the refund paycron asked for (by Square's id, or the
/// pending one of that payment and amount whose answer was lost). A refund paycron did not
/// ask for is left to reconcile.
async fn refund_event(
    tx: &mut sqlx::PgConnection,
    event_id: &str,
    payload: &serde_json::Value,
) -> Result<(), StoreError> {
    let r = &payload["data"]["object"]["refund"];
    let id = r["id"].as_str().unwrap_or("");
    let status = r["status"].as_str().unwrap_or("");
    let Some(settled) = RefundStatus::from_square(status).filter(RefundStatus::is_final) else {
        tracing::info!(
            event_id,
            provider_refund_id = id,
            status,
            "refund not settled yet"
        );
        return Ok(());
    };
    let mine = match refunds::by_provider_id(&mut *tx, id).await? {
        Some(row) => Some(row),
        None => {
            refunds::unmatched(
                &mut *tx,
                r["payment_id"].as_str().unwrap_or(""),
                r["amount_money"]["amount"].as_i64().unwrap_or(0),
            )
            .await?
        }
    };
    let Some(mine) = mine else {
        tracing::info!(
            event_id,
            provider_refund_id = id,
            "refund paycron did not ask for; reconcile reports it"
        );
        return Ok(());
    };
    let done = refunds::settle(
        &mut *tx,
        mine.id,
        settled,
        Some(id),
        None,
        chrono::Utc::now(),
    )
    .await?;
    tracing::info!(event_id, refund_id = %mine.id, provider_refund_id = id, outcome = %settled, recorded = done, "refund settled by webhook");
    if done {
        metrics::counter!(crate::ops::metrics::REFUNDS, "outcome" => settled.as_str()).increment(1);
    }
    Ok(())
}

/// The dispute a notification describes, in paycron's terms (missing fields empty).
fn dispute_report(payload: &serde_json::Value) -> DisputeReport {
    let d = &payload["data"]["object"]["dispute"];
    DisputeReport {
        id: d["id"]
            .as_str()
            .or_else(|| d["dispute_id"].as_str())
            .or_else(|| payload["data"]["id"].as_str())
            .unwrap_or("")
            .to_owned(),
        provider_payment_id: d["disputed_payment"]["payment_id"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        state: d["state"].as_str().unwrap_or("").to_owned(),
        reason: d["reason"].as_str().map(str::to_owned),
        amount_minor: d["amount_money"]["amount"].as_i64().unwrap_or(0),
        currency: d["amount_money"]["currency"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
        due_at: d["due_at"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.with_timezone(&chrono::Utc)),
        version: d["version"].as_i64(),
    }
}

/// A dispute opened or moved: recorded (older versions ignored), the money it moves booked
/// once each, `dispute_opened` / `dispute_closed` announced, and a lost one cancels its
/// subscription when configured to.
async fn dispute_event(
    tx: &mut sqlx::PgConnection,
    event_id: &str,
    payload: &serde_json::Value,
    lost_cancels: bool,
) -> Result<(), StoreError> {
    let report = dispute_report(payload);
    if report.id.is_empty() || report.state.is_empty() || report.provider_payment_id.is_empty() {
        tracing::warn!(
            event_id,
            "dispute webhook without id, state or payment; recorded only"
        );
        return Ok(());
    }
    let now = chrono::Utc::now();
    let (applied, row) = disputes::apply(&mut *tx, &report, now).await?;
    if applied == Applied::Stale {
        tracing::info!(event_id, dispute_id = %row.id, state = %report.state, "stale dispute event recorded and ignored");
        return Ok(());
    }
    let Some(charge_id) = row.charge_id else {
        tracing::info!(event_id, dispute_id = %row.id, provider_payment_id = %row.provider_payment_id,
            "dispute of a payment paycron did not take; recorded");
        return Ok(());
    };
    let charge = crate::store::charges::get(&mut *tx, charge_id).await?;
    let booked = disputes::movements(&mut *tx, &row.id).await?;
    if row.amount_minor > 0 {
        for m in dispute_movements(&row.state, &booked) {
            if disputes::book(&mut *tx, &row, charge_id, m, now).await? {
                metrics::counter!(crate::ops::metrics::DISPUTES, "kind" => m.kind()).increment(1);
            }
        }
    }
    let (sub, customer) = charge
        .as_ref()
        .map(|c| (Some(c.subscription_id.0), Some(c.customer_id.as_str())))
        .unwrap_or((None, None));
    let body = serde_json::json!({
        "dispute_id": row.id, "charge_id": charge_id, "state": row.state, "reason": row.reason,
        "amount_minor": row.amount_minor, "currency": row.currency, "due_at": row.due_at,
        "provider_payment_id": row.provider_payment_id,
    });
    if applied == Applied::Opened {
        events::emit(
            &mut *tx,
            "dispute_opened",
            sub,
            customer,
            Some(charge_id.0),
            body.clone(),
        )
        .await?;
    }
    let was_closed = matches!(&applied, Applied::Moved { from } if dispute_closed(from));
    if dispute_closed(&row.state) && !was_closed {
        events::emit(
            &mut *tx,
            "dispute_closed",
            sub,
            customer,
            Some(charge_id.0),
            body,
        )
        .await?;
        if lost_cancels
            && matches!(row.state.as_str(), "LOST" | "ACCEPTED")
            && let Some(sub) = sub
        {
            sqlx::query("SELECT paycron.cancel_subscription($1, false)")
                .bind(sub)
                .execute(&mut *tx)
                .await?;
        }
    }
    tracing::info!(event_id, dispute_id = %row.id, charge_id = %charge_id, state = %row.state, "dispute recorded");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::verify;

    #[test]
    fn squares_published_vectors_verify() {
        let body = r#"{"merchant_id":"MLEFBHHSJGVHD","type":"webhooks.test_notification","event_id":"ac3ac95b-f97d-458c-a6e6-18981597e05f","created_at":"2022-07-13T20:30:59.037339943Z","data":{"type":"webhooks","id":"bc368e64-01aa-407e-b46e-3231809b1129"}}"#;
        let url = "https://webhook.site/679a4f3a-dcfa-49ee-bac5-9d0edad886b9";
        assert!(verify(
            "Ibxx_5AKakO-3qeNVR61Dw",
            url,
            body.as_bytes(),
            "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="
        ));
        assert!(verify(
            "signature-key",
            "https://webhook.site/webhooks",
            br#"{"data":{"type":"webhooks","id":">id<"}}"#,
            "Cxt7+aTi4rKgcA0bC4g9EHdVtLSDWdqccmL5MvihU4U="
        ));
        // One flipped byte, a wrong URL, a wrong key: refused.
        let flipped = body.replacen("MLEF", "MLEG", 1);
        assert!(!verify(
            "Ibxx_5AKakO-3qeNVR61Dw",
            url,
            flipped.as_bytes(),
            "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="
        ));
        assert!(!verify(
            "Ibxx_5AKakO-3qeNVR61Dw",
            "https://webhook.site/x",
            body.as_bytes(),
            "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="
        ));
        assert!(!verify(
            "other",
            url,
            body.as_bytes(),
            "GF4YkrJgGBDZ9NIYbNXBnMzqb2HoL4RW/S6vkZ9/2N4="
        ));
        assert!(!verify(
            "Ibxx_5AKakO-3qeNVR61Dw",
            url,
            body.as_bytes(),
            "not base64!"
        ));
    }
}
