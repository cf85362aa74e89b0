//! `paycron refund CHARGE_ID` and `paycron refunds list`: money going back, exactly once.
//!
//! A refund is written through `paycron.refund_charge()` — the database refuses a charge that
//! did not succeed and an amount beyond what is left, and then nothing is written or sent
//! (exit 2) — and sent at once by this process; if it dies, the daemon's recover task (or
//! `run-once --task recover`) finishes it with the same key and body.

use super::{CommandError, Format, Result, print_rows, table};
use crate::app::App;
use crate::domain::money::format_minor;
use crate::domain::refund::RefundStatus;
use crate::domain::{ChargeId, Currency};
use crate::store::StoreError;
use crate::store::refunds::{self, NewRefund, RefundRow};

/// `paycron refund` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct RefundArgs {
    /// The charge to refund (a succeeded one).
    pub charge_id: String,
    /// Minor units to give back (default: all that is left of the charge).
    #[arg(long, allow_hyphen_values = true)]
    pub amount: Option<String>,
    /// Why (sent to Square, at most 192 characters).
    #[arg(long)]
    pub reason: Option<String>,
    /// The currency you mean (refused unless it is the charge's).
    #[arg(long)]
    pub currency: Option<String>,
    /// Cancel the subscription now, with the refund.
    #[arg(long, conflicts_with = "at_period_end")]
    pub cancel_subscription: bool,
    /// Cancel the subscription at the end of the period already paid for.
    #[arg(long)]
    pub at_period_end: bool,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// `paycron refunds ...`.
#[derive(clap::Subcommand)]
pub enum RefundsCmd {
    /// Refunds, newest first.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

impl RefundsCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`CommandError`].
    pub async fn execute(self, app: &App) -> Result<()> {
        match self {
            RefundsCmd::List { format } => {
                let rows = refunds::list(&app.pool, 500).await?;
                print_rows(&rows, format, refund_table)
            }
        }
    }
}

/// Every flag checked before anything is written.
fn parse(args: &RefundArgs) -> Result<(ChargeId, NewRefund)> {
    let charge: ChargeId = args
        .charge_id
        .parse()
        .map_err(|e| CommandError::BadInput(format!("CHARGE_ID: {e}")))?;
    let amount_minor = match args.amount.as_deref() {
        None => None,
        Some(v) => match v.trim().parse::<i64>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                return Err(CommandError::BadInput(format!(
                    "--amount: {v:?} is not a positive whole number of minor units"
                )));
            }
        },
    };
    let reason = match args.reason.as_deref().map(str::trim) {
        None => None,
        Some(r) if r.is_empty() || r.chars().count() > 192 => {
            return Err(CommandError::BadInput(
                "--reason: 1 to 192 characters".into(),
            ));
        }
        Some(r) => Some(r.to_owned()),
    };
    let cancel = match (args.cancel_subscription, args.at_period_end) {
        (true, _) => Some("now"),
        (_, true) => Some("at_period_end"),
        _ => None,
    };
    Ok((
        charge,
        NewRefund {
            charge_id: Some(charge),
            amount_minor,
            reason,
            cancel,
        },
    ))
}

/// `paycron refund CHARGE_ID`: writes the refund, sends it, prints where it stands. Exit 0
/// when Square made it (completed, or pending until it settles), 1 when Square refused it.
///
/// # Errors
/// [`CommandError::BadInput`] (exit 2, nothing written) for a bad flag, a charge that did not
/// succeed or an amount beyond what is left; [`CommandError::Failed`] when Square refused it.
pub async fn refund(app: &App, args: RefundArgs) -> Result<()> {
    let (charge, new) = parse(&args)?;
    if let Some(cur) = args.currency.as_deref() {
        let cur: Currency = cur
            .parse()
            .map_err(|e| CommandError::BadInput(format!("--currency: {e}")))?;
        let mut conn = app.pool.acquire().await.map_err(StoreError::from)?;
        let c = crate::store::charges::get(&mut conn, charge)
            .await?
            .ok_or_else(|| CommandError::BadInput(format!("charge {charge} does not exist")))?;
        if c.money.currency() != cur {
            return Err(CommandError::BadInput(format!(
                "--currency: {cur} is not charge {charge}'s currency ({}); a refund is in the currency charged",
                c.money.currency()
            )));
        }
    }
    // Without a token nothing could be sent: refuse before anything is written.
    let gateway = app.square()?;
    let mut tx = app.pool.begin().await.map_err(StoreError::from)?;
    let id = refunds::create(&mut tx, charge, &new).await?;
    tx.commit().await.map_err(StoreError::from)?;
    let engine = app.engine(gateway).await?;
    engine.drive_refunds(Some(id)).await?;
    let mut conn = app.pool.acquire().await.map_err(StoreError::from)?;
    let row = refunds::get(&mut conn, id)
        .await?
        .ok_or_else(|| CommandError::Failed(format!("refund {id} vanished")))?;
    print_rows(std::slice::from_ref(&row), args.format, refund_table)?;
    match row.status {
        RefundStatus::Failed | RefundStatus::Rejected => Err(CommandError::Failed(format!(
            "refund {id} was {} by Square ({}): no money went back",
            row.status,
            row.failure_code.as_deref().unwrap_or("no code")
        ))),
        _ => Ok(()),
    }
}

fn refund_table(rows: &[RefundRow]) -> String {
    table(
        &[
            "REFUND",
            "CHARGE",
            "AMOUNT",
            "STATUS",
            "SQUARE REFUND",
            "REASON",
        ],
        rows.iter()
            .map(|r| {
                vec![
                    r.id.to_string(),
                    r.charge_id.to_string(),
                    r.currency
                        .parse::<Currency>()
                        .map(|c| format_minor(r.amount_minor, c))
                        .unwrap_or_else(|_| format!("{} {}", r.amount_minor, r.currency)),
                    match &r.failure_code {
                        Some(code) => format!("{} ({code})", r.status),
                        None => r.status.to_string(),
                    },
                    r.provider_refund_id.clone().unwrap_or_default(),
                    r.reason.clone().unwrap_or_default(),
                ]
            })
            .collect(),
    )
}
