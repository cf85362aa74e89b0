//! `paycron status`: how are we doing? Subscriptions by status, what is due now and soon and for
//! how long, charges waiting (pending, in review), quarantined subscriptions, when billing,
//! sync-cards and reconcile last ran, the outbound webhook backlog, refunds and disputes still
//! open, enrollments at the counter, the schema against the binary. Exit 1 when something needs
//! attention (a review queue, quarantined rows, a stale due backlog or webhook backlog, a dispute
//! due soon, a counter sale without its card, a schema mismatch), so it can back an alert or a
//! CronJob check. Each task's last run (across replicas: when, ok or not, its counts — reconcile's
//! findings among them) comes from `paycron.task_results`; a failed last run needs attention.

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
    let binary = crate::store::MIGRATOR
        .iter()
        .map(|m| m.version)
        .max()
        .unwrap_or(0);
    let runs = crate::store::tasks::results(&app.pool).await?;
    let mut attention = attention(&o, binary);
    for r in runs.iter().filter(|r| !r.ok) {
        attention.push(format!(
            "the last {} run failed ({}): {}",
            r.task,
            r.finished_at
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            r.error.as_deref().unwrap_or("")
        ));
    }
    if format != Format::Text {
        let mut v = serde_json::to_value(&o).map_err(|e| CommandError::Io(e.to_string()))?;
        v["tasks"] = serde_json::to_value(&runs).map_err(|e| CommandError::Io(e.to_string()))?;
        v["binary_schema_version"] = binary.into();
        v["needs_attention"] = attention.clone().into();
        let json = serde_json::to_string_pretty(&v).map_err(|e| CommandError::Io(e.to_string()))?;
        crate::out!("{json}")?;
        return verdict(attention);
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
            "due soon",
            format!(
                "{} in the next hour, {} in the next day",
                o.due_next_hour, o.due_next_day
            ),
        ),
        (
            "schema",
            format!("{} (this binary: {binary})", o.schema_version.unwrap_or(0)),
        ),
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
        (
            "enrollments",
            format!(
                "{} open, {} paid awaiting the card ({} past their wait)",
                o.enrollments_open, o.enrollments_awaiting_card, o.enrollments_card_missing
            ),
        ),
    ];
    for (k, v) in lines {
        crate::out!("{k:<22} {v}")?;
    }
    for r in &runs {
        let counts = r
            .summary
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default();
        crate::out!(
            "{:<22} {} {}{}{} ({} runs, {} failed)",
            format!("task {}", r.task),
            if r.ok { "ok" } else { "FAILED" },
            when(Some(r.finished_at)),
            if counts.is_empty() {
                String::new()
            } else {
                format!(": {counts}")
            },
            r.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
            r.runs,
            r.failures
        )?;
    }
    for a in &attention {
        crate::out!("{:<22} {a}", "needs attention")?;
    }
    verdict(attention)
}

/// What an operator should look at now, in words; empty when all is well.
fn attention(o: &status::Overview, binary: i64) -> Vec<String> {
    let mut out = Vec::new();
    if o.schema_version != Some(binary) {
        out.push(format!(
            "the database's schema is {} and this binary's {binary}: run `paycron migrate` with the matching binary",
            o.schema_version.unwrap_or(0)
        ));
    }
    if o.charges_in_review > 0 {
        out.push(format!(
            "{} charge(s) in review: `paycron charges review`",
            o.charges_in_review
        ));
    }
    if o.quarantined > 0 {
        out.push(format!(
            "{} subscription(s) quarantined: `paycron subscription list`",
            o.quarantined
        ));
    }
    if o.oldest_due_at
        .is_some_and(|t| Utc::now() - t > chrono::Duration::hours(1))
    {
        out.push("a subscription has been due for over an hour: is billing running?".into());
    }
    if o.webhook_oldest_pending_at
        .is_some_and(|t| Utc::now() - t > chrono::Duration::hours(1))
    {
        out.push(
            "an outbound webhook has waited over an hour: `paycron webhooks deliveries`".into(),
        );
    }
    if o.next_dispute_due_at
        .is_some_and(|t| t - Utc::now() < chrono::Duration::days(3))
    {
        out.push("a dispute is due within 3 days: `paycron disputes list`".into());
    }
    if o.enrollments_card_missing > 0 {
        out.push(format!(
            "{} enrollment(s) paid at the counter without a saved card: `paycron enrollments list`",
            o.enrollments_card_missing
        ));
    }
    out
}

/// Exit 1 when something needs attention, so the command can back an alert or a check.
fn verdict(attention: Vec<String>) -> Result<()> {
    if attention.is_empty() {
        Ok(())
    } else {
        Err(CommandError::Failed(format!(
            "{} thing(s) need attention",
            attention.len()
        )))
    }
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
