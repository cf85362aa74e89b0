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

/// Writes the ledger as JSON lines; an empty ledger writes nothing.
///
/// # Errors
/// [`StoreError`] or the write error ([`StoreError::Output`], exit 1).
pub async fn export_jsonl(pool: &PgPool, out: &mut dyn Write) -> Result<usize, StoreError> {
    let rows = store::ledger::export(pool).await?;
    for row in &rows {
        let line = serde_json::to_string(row)
            .map_err(|e| StoreError::Output(format!("cannot encode ledger row: {e}")))?;
        writeln!(out, "{line}").map_err(|e| match e.kind() {
            std::io::ErrorKind::BrokenPipe => StoreError::OutputClosed,
            _ => StoreError::Output(format!("cannot write the export: {e}")),
        })?;
    }
    Ok(rows.len())
}
