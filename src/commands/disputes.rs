//! `paycron disputes list`: the disputes still open, the soonest due first, so the business
//! answers them in time (Square's webhooks keep them current).

use super::{Format, Result, print_rows, table};
use crate::app::App;
use crate::domain::Currency;
use crate::domain::money::format_minor;
use crate::store::disputes::{self, DisputeRow};

/// `paycron disputes ...`.
#[derive(clap::Subcommand)]
pub enum DisputesCmd {
    /// Open disputes with their due-by date, the soonest first.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

impl DisputesCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`super::CommandError`].
    pub async fn execute(self, app: &App) -> Result<()> {
        match self {
            DisputesCmd::List { format } => {
                let rows = disputes::open(&app.pool).await?;
                print_rows(&rows, format, dispute_table)
            }
        }
    }
}

fn dispute_table(rows: &[DisputeRow]) -> String {
    table(
        &[
            "DISPUTE", "DUE BY", "STATE", "AMOUNT", "REASON", "CHARGE", "PAYMENT",
        ],
        rows.iter()
            .map(|d| {
                vec![
                    d.id.clone(),
                    d.due_at
                        .map(|t| t.to_rfc3339())
                        .unwrap_or_else(|| "-".into()),
                    d.state.clone(),
                    d.currency
                        .parse::<Currency>()
                        .map(|c| format_minor(d.amount_minor, c))
                        .unwrap_or_else(|_| format!("{} {}", d.amount_minor, d.currency)),
                    d.reason.clone().unwrap_or_default(),
                    d.charge_id.map(|c| c.to_string()).unwrap_or_default(),
                    d.provider_payment_id.clone(),
                ]
            })
            .collect(),
    )
}
