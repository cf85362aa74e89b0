//! `charges review` and `charges resolve`: the operator's side of charges whose answer did not
//! match them. A decision goes through the engine's normal record path (fenced, ledger, the
//! lifecycle, events), so a resolved charge is indistinguishable from one recorded at once.

use super::{CommandError, Format, Result, print_rows, table};
use crate::app::App;
use crate::domain::money::format_minor;
use crate::domain::{ChargeId, ChargeStatus};
use crate::store::{StoreError, charges};

/// `paycron charges ...`.
#[derive(clap::Subcommand)]
pub enum ChargesCmd {
    /// Charges in review (Square's answer did not match them), oldest first.
    Review {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
    /// Record an operator's decision on a charge in review.
    Resolve {
        /// The charge id.
        id: String,
        /// paid: Square took the money for it; unpaid: it took none (billed again at once).
        #[arg(long = "as", value_enum)]
        decision: Decision,
        /// Why (kept with the charge and in the `charge_resolved` event).
        #[arg(long)]
        note: String,
        /// The Square payment that paid it (default: the one Square answered with).
        #[arg(long)]
        payment_id: Option<String>,
    },
}

impl ChargesCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`CommandError`].
    pub async fn execute(self, app: &App) -> Result<()> {
        match self {
            ChargesCmd::Review { format } => list(app, format).await,
            ChargesCmd::Resolve {
                id,
                decision,
                note,
                payment_id,
            } => resolve(app, &id, decision, &note, payment_id.as_deref()).await,
        }
    }
}

/// The longest note kept with a decision.
const NOTE_MAX: usize = 2_000;

/// `charges review`: the charges in review, oldest first.
///
/// # Errors
/// [`CommandError`].
pub async fn list(app: &App, format: Format) -> Result<()> {
    let rows = charges::in_review(&app.pool).await?;
    print_rows(&rows, format, |rows| {
        if rows.is_empty() {
            return "no charges in review\n".into();
        }
        table(
            &[
                "CHARGE",
                "SUBSCRIPTION",
                "CUSTOMER",
                "AMOUNT",
                "PERIOD",
                "SQUARE PAYMENT",
                "WHY",
            ],
            rows.iter()
                .map(|r| {
                    vec![
                        r.charge_id.to_string(),
                        r.subscription_id.to_string(),
                        r.customer_id.to_string(),
                        format_minor(r.money.minor(), r.money.currency()),
                        r.period_start.format("%Y-%m-%d").to_string(),
                        r.review_payment_id.clone().unwrap_or_else(|| "-".into()),
                        r.review_reason.clone(),
                    ]
                })
                .collect(),
        )
    })
}

/// What the operator decided about a charge in review.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Decision {
    /// Square took the money for this charge: record it as paid (the period is settled).
    Paid,
    /// No money was taken for this charge: the period is billed again at once under a new key,
    /// without a dunning step.
    Unpaid,
}

/// `charges resolve ID --as paid|unpaid --note TEXT [--payment-id ID]`.
///
/// # Errors
/// [`CommandError::BadInput`] (exit 2) for an unknown charge, one not in review, an empty
/// note, or a payment id already recorded elsewhere; [`CommandError`] otherwise.
pub async fn resolve(
    app: &App,
    id: &str,
    decision: Decision,
    note: &str,
    payment_id: Option<&str>,
) -> Result<()> {
    let id: ChargeId = id
        .parse()
        .map_err(|e| CommandError::BadInput(format!("charge id: {e}")))?;
    let note = note.trim();
    if note.is_empty() || note.chars().count() > NOTE_MAX {
        return Err(CommandError::BadInput(format!(
            "--note: say why, in 1 to {NOTE_MAX} characters"
        )));
    }
    let mut conn = app.pool.acquire().await.map_err(StoreError::from)?;
    let Some(charge) = charges::get(&mut conn, id).await? else {
        return Err(CommandError::BadInput(format!("charge {id} is unknown")));
    };
    if charge.status != ChargeStatus::NeedsReview {
        return Err(CommandError::BadInput(format!(
            "charge {id} is {}, not in review",
            charge.status
        )));
    }
    let paid = match decision {
        Decision::Unpaid => None,
        Decision::Paid => {
            let review = charges::review_payment(&mut conn, id).await?;
            let Some(pid) = payment_id.map(str::to_owned).or(review) else {
                return Err(CommandError::BadInput(format!(
                    "--payment-id: charge {id} has no Square payment on record; give the one that paid it"
                )));
            };
            let taken = charges::payments_recorded(&mut conn, std::slice::from_ref(&pid)).await?;
            if let Some(other) = taken.get(&pid) {
                return Err(CommandError::BadInput(format!(
                    "Square payment {pid} is already recorded for charge {other}: resolve as unpaid, or give --payment-id"
                )));
            }
            Some(pid)
        }
    };
    drop(conn);
    let engine = app.engine(app.square()?).await?;
    if !engine.resolve_review(&charge, paid.clone(), note).await? {
        return Err(CommandError::Failed(format!(
            "charge {id} was resolved by someone else meanwhile"
        )));
    }
    match paid {
        Some(pid) => crate::out!("{id} paid {pid}")?,
        None => crate::out!("{id} unpaid")?,
    }
    Ok(())
}
