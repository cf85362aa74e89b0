//! The Square webhook receiver: `POST /webhooks/square` on the ops server.
//!
//! Invariants: nothing changes unless `x-square-hmacsha256-signature` equals
//! base64(HMAC-SHA256(signature key, notification URL + raw body)), compared in constant time
//! (`hmac`'s `verify_slice`); a missing or wrong signature is 401, a body over 1 MiB is 413.
//! Each `event_id` is handled once: the de-duplication row and the card change are one
//! transaction. Unknown event types are recorded and acknowledged.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use sqlx::PgPool;

use crate::domain::card::{CardStamp, is_stale};
use crate::store::cards::{self, CardRecord};
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
    match handle(&s.pool, &event_id, &kind, &payload).await {
        Ok(true) => (StatusCode::OK, "ok\n".into()),
        Ok(false) => (StatusCode::OK, "duplicate\n".into()),
        Err(e) => {
            tracing::error!(event_id, kind, error = %e, "webhook not processed; Square will retry");
            (StatusCode::INTERNAL_SERVER_ERROR, "not processed\n".into())
        }
    }
}

/// Long on purpose: the checks of one Square webhook in order (signature, parse, de-duplicate, apply), each a refusal with its status.
async fn handle(
    pool: &PgPool,
    event_id: &str,
    kind: &str,
    payload: &serde_json::Value,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    if !webhooks::record_event(&mut tx, event_id, kind, payload).await? {
        return Ok(false);
    }
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
        && let Some(stored) = cards::lock_stamp(&mut tx, card_id).await?
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
        tx.commit().await?;
        return Ok(true);
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
            let changed = cards::upsert_customer_card(&mut tx, &record).await?;
            cards::stamp(&mut tx, card_id, stamp).await?;
            // Only a card that changed (re-enabled, new expiry) is worth billing again now.
            let retried = if changed && record.enabled {
                webhooks::retry_now_for_card(&mut tx, card_id).await?
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
            cards::stamp(&mut tx, card_id, stamp).await?;
            if webhooks::disable_card(&mut tx, card_id, forgotten).await? {
                events::emit(
                    &mut tx,
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
        other => tracing::info!(event_id, kind = other, "webhook recorded"),
    }
    tx.commit().await?;
    Ok(true)
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
