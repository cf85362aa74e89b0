//! `paycron status`: how are we doing? Subscriptions by status, what is due and for how long,
//! charges waiting (pending, in review), quarantined subscriptions, when billing, sync-cards
//! and reconcile last ran, the outbound webhook backlog, refunds and disputes still open.

use chrono::Utc;

use super::{CommandError, Format, Result};
use crate::app::App;
use crate::store::status;

/// `paycron status [--format text|json]`.
///
/// # Errors
/// [`CommandError`].
pub async fn status(app: &App, format: Format) -> Result<()> {
    let o = status::overview(&app.pool, Utc::now()).await?;
    if format != Format::Text {
        let json = serde_json::to_string_pretty(&o).map_err(|e| CommandError::Io(e.to_string()))?;
        return crate::out!("{json}");
    }
    let when = |t: Option<chrono::DateTime<Utc>>| match t {
        Some(t) => format!(
            "{} ({} ago)",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            ago(Utc::now() - t)
        ),
        None => "never".to_owned(),
    };
    let by_status = o
        .subscriptions
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k} {v}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "none".into());
    let lines = [
        ("subscriptions", by_status),
        (
            "due now",
            match o.oldest_due_at {
                Some(t) => format!("{} (oldest due since {})", o.due_now, when(Some(t))),
                None => "0".into(),
            },
        ),
        ("quarantined", o.quarantined.to_string()),
        ("charges pending", o.charges_pending.to_string()),
        ("charges in review", o.charges_in_review.to_string()),
        ("last charge recorded", when(o.last_charge_recorded_at)),
        ("last sync-cards", when(o.last_sync_cards_at)),
        ("last reconcile", when(o.last_reconcile_at)),
        (
            "webhook backlog",
            match o.webhook_oldest_pending_at {
                Some(t) => format!("{} (oldest since {})", o.webhook_backlog, when(Some(t))),
                None => "0".into(),
            },
        ),
        ("refunds pending", o.refunds_pending.to_string()),
        (
            "disputes open",
            match o.next_dispute_due_at {
                Some(t) => format!(
                    "{} (next due {})",
                    o.disputes_open,
                    t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                None => o.disputes_open.to_string(),
            },
        ),
    ];
    for (k, v) in lines {
        crate::out!("{k:<22} {v}")?;
    }
    Ok(())
}

/// A duration in the largest unit that fits, for people.
fn ago(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7_199 => format!("{}m", s / 60),
        7_200..=172_799 => format!("{}h", s / 3_600),
        _ => format!("{}d", s / 86_400),
    }
}
