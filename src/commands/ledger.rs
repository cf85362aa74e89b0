//! `paycron reconcile` (Square's payments against the ledger, `--repair`) and
//! `paycron ledger export`.

use chrono::{DateTime, Utc};

use super::{CommandError, Format, Result, print_rows, table};
use crate::app::App;

/// `paycron ledger ...`.
#[derive(clap::Subcommand)]
pub enum LedgerCmd {
    /// Export every charge attempt and its outcome (and money going back).
    Export {
        /// `jsonl` (one JSON object a line: the contract's) or `csv` (a header, for finance).
        #[arg(long, value_enum, default_value = "jsonl")]
        format: ExportFormat,
        /// Only lines recorded at or after this instant (RFC 3339).
        #[arg(long)]
        since: Option<String>,
        /// Only lines recorded before this instant (RFC 3339).
        #[arg(long)]
        until: Option<String>,
    },
}

/// What `ledger export` writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ExportFormat {
    /// One JSON object per line.
    Jsonl,
    /// CSV with a header row.
    Csv,
}

impl LedgerCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`CommandError`].
    pub async fn execute(self, app: &App) -> Result<()> {
        match self {
            LedgerCmd::Export {
                format,
                since,
                until,
            } => {
                let at = |flag: &str,
                          v: Option<String>|
                 -> Result<Option<chrono::DateTime<chrono::Utc>>> {
                    v.map(|v| {
                        chrono::DateTime::parse_from_rfc3339(v.trim())
                            .map(|t| t.with_timezone(&chrono::Utc))
                            .map_err(|e| {
                                CommandError::BadInput(format!(
                                    "{flag}: {v:?} is not an RFC 3339 time (e.g. 2027-01-01T00:00:00Z): {e}"
                                ))
                            })
                    })
                    .transpose()
                };
                let (since, until) = (at("--since", since)?, at("--until", until)?);
                if let (Some(s), Some(u)) = (since, until)
                    && s >= u
                {
                    return Err(CommandError::BadInput(format!(
                        "--since {s} is not before --until {u}"
                    )));
                }
                let format = match format {
                    ExportFormat::Jsonl => crate::ledger::ExportFormat::Jsonl,
                    ExportFormat::Csv => crate::ledger::ExportFormat::Csv,
                };
                export(app, format, since, until).await
            }
        }
    }
}

/// `reconcile` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct ReconcileArgs {
    /// Window start, RFC 3339 (default: 30 days before --until).
    #[arg(long)]
    pub since: Option<String>,
    /// Window end, RFC 3339 (default: now).
    #[arg(long)]
    pub until: Option<String>,
    /// Record payments Square took for charges still pending here.
    #[arg(long)]
    pub repair: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

impl Default for ReconcileArgs {
    /// The last 30 days, no repair, text (what `run-once --task reconcile` does).
    fn default() -> Self {
        ReconcileArgs {
            since: None,
            until: None,
            repair: false,
            format: Format::Text,
        }
    }
}

/// The window `[since, until)`: until defaults to now, since to 30 days before it.
fn window(since: Option<&str>, until: Option<&str>) -> Result<(DateTime<Utc>, DateTime<Utc>)> {
    let parse = |flag: &str, v: Option<&str>, default: DateTime<Utc>| -> Result<DateTime<Utc>> {
        match v {
            None => Ok(default),
            Some(v) => DateTime::parse_from_rfc3339(v.trim())
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    CommandError::BadInput(format!("{flag}: {v:?} is not an RFC 3339 time: {e}"))
                }),
        }
    };
    let until = parse("--until", until, Utc::now())?;
    let since = parse("--since", since, until - chrono::Duration::days(30))?;
    if since >= until {
        return Err(CommandError::BadInput(
            "--since must be before --until".into(),
        ));
    }
    Ok((since, until))
}

/// `reconcile [--since] [--until] [--repair]`: Square's payments vs the ledger. Exit 0 when
/// everything matches, 1 on any difference (after repairs, what is left).
///
/// # Errors
/// [`CommandError`].
///
/// Long on purpose: fetch, repair, re-check and print of one reconcile; the steps share the window and the report.
pub async fn reconcile(app: &App, args: ReconcileArgs) -> Result<()> {
    let ReconcileArgs {
        since,
        until,
        repair,
        format,
    } = args;
    let (since, until) = window(since.as_deref(), until.as_deref())?;
    let gateway = app.square()?;
    let engine = if repair {
        Some(app.engine(gateway.clone()).await?)
    } else {
        None
    };
    let mut report = crate::billing::reconcile::reconcile(
        &app.pool,
        gateway.as_ref(),
        engine.as_ref(),
        since,
        until,
    )
    .await?;
    if report.repaired > 0 {
        let repaired = report.repaired;
        report =
            crate::billing::reconcile::reconcile(&app.pool, gateway.as_ref(), None, since, until)
                .await?;
        report.repaired = repaired;
    }
    print_rows(&report.findings, format, |rows| {
        table(
            &[
                "KIND",
                "CHARGE",
                "SQUARE PAYMENT",
                "SQUARE",
                "LEDGER",
                "DETAIL",
            ],
            rows.iter()
                .map(|f| {
                    vec![
                        f.kind.to_owned(),
                        f.charge_id.map(|c| c.to_string()).unwrap_or_default(),
                        f.provider_payment_id.clone().unwrap_or_default(),
                        f.square_amount_minor
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                        f.ledger_amount_minor
                            .map(|a| a.to_string())
                            .unwrap_or_default(),
                        f.detail.clone(),
                    ]
                })
                .collect(),
        )
    })?;
    tracing::info!(
        since = %since.to_rfc3339(),
        until = %until.to_rfc3339(),
        square_payments = report.square_payments,
        square_refunds = report.square_refunds,
        charges = report.charges,
        findings = report.findings.len(),
        repaired = report.repaired,
        "reconcile summary"
    );
    if report.findings.is_empty() {
        if format == Format::Text {
            crate::out!(
                "reconciled: {} Square payments, {} charges, {} Square refunds, no differences",
                report.square_payments,
                report.charges,
                report.square_refunds
            )?;
        }
        Ok(())
    } else {
        Err(CommandError::Failed(format!(
            "{} difference(s) between Square and the ledger",
            report.findings.len()
        )))
    }
}

/// `ledger export --format jsonl`.
///
/// # Errors
/// [`CommandError`].
async fn export(
    app: &App,
    format: crate::ledger::ExportFormat,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<()> {
    let mut out = std::io::stdout().lock();
    crate::ledger::export(&app.pool, &mut out, format, since, until).await?;
    Ok(())
}
