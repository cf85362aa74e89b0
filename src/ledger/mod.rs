//! The ledger's outward face: `paycron ledger export --format jsonl`, one JSON object per
//! charge attempt with exactly the contract's keys, and the monthly figures the demo prints.
//! Writing happens in `store::ledger`, inside the billing engine's record transaction.
//! [`reconcile`] proves the ledger equals Square's payments over a window, or names every
//! difference; [`refunds`] does the same for money going back.

pub mod audit;
pub mod reconcile;
pub mod refunds;

use std::io::Write;

use sqlx::PgPool;

use crate::store::{self, StoreError};

/// How `ledger export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    /// One JSON object per line: the contract's keys (plus `kind` and the money-back ids).
    Jsonl,
    /// A CSV file for finance: a header, then the same fields (empty for none).
    Csv,
}

fn output_error(e: std::io::Error) -> StoreError {
    match e.kind() {
        std::io::ErrorKind::BrokenPipe => StoreError::OutputClosed,
        _ => StoreError::Output(format!("cannot write the export: {e}")),
    }
}

/// Writes the ledger's lines recorded in `[since, until)` (each end optional) to `out`; returns
/// how many.
///
/// # Errors
/// [`StoreError`] (a closed pipe is [`StoreError::OutputClosed`]).
pub async fn export(
    pool: &PgPool,
    out: &mut dyn Write,
    format: ExportFormat,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<usize, StoreError> {
    let rows = store::ledger::export(pool, since, until).await?;
    match format {
        ExportFormat::Jsonl => {
            for row in &rows {
                let line = serde_json::to_string(row)
                    .map_err(|e| StoreError::Output(format!("cannot encode ledger row: {e}")))?;
                writeln!(out, "{line}").map_err(output_error)?;
            }
        }
        ExportFormat::Csv => {
            let mut w = csv::Writer::from_writer(out);
            w.write_record([
                "kind",
                "charge_id",
                "subscription_id",
                "customer_id",
                "period_start",
                "attempt",
                "status",
                "decline_code",
                "amount_minor",
                "currency",
                "provider_payment_id",
                "recorded_at",
                "refund_id",
                "provider_refund_id",
                "dispute_id",
            ])
            .map_err(|e| StoreError::Output(e.to_string()))?;
            for r in &rows {
                let opt = |v: &Option<String>| v.clone().unwrap_or_default();
                w.write_record([
                    r.kind.clone(),
                    r.charge_id.to_string(),
                    r.subscription_id.to_string(),
                    r.customer_id.clone(),
                    r.period_start.clone(),
                    r.attempt.to_string(),
                    r.status.clone(),
                    opt(&r.decline_code),
                    r.amount_minor.to_string(),
                    r.currency.clone(),
                    opt(&r.provider_payment_id),
                    r.recorded_at.clone(),
                    r.refund_id.map(|u| u.to_string()).unwrap_or_default(),
                    opt(&r.provider_refund_id),
                    opt(&r.dispute_id),
                ])
                .map_err(|e| match e.into_kind() {
                    csv::ErrorKind::Io(io) => output_error(io),
                    other => StoreError::Output(format!("{other:?}")),
                })?;
            }
            w.flush().map_err(output_error)?;
        }
    }
    Ok(rows.len())
}
