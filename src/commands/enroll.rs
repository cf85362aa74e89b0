//! `paycron enroll` and `paycron enrollments list`: sign a customer up at the counter. The
//! first period is paid in Square Point of Sale from the printed link; the card saved there
//! pays every later period.
//!
//! Every flag is checked before anything is written or sent; the Square customer is created
//! (CreateCustomer, idempotent under a key derived from `--external-ref` when given) before
//! the subscription, so a failed creation leaves nothing behind in paycron.

use super::subscription::{CreateArgs, parse_create, test_clock};
use super::{CommandError, Format, Result, print_rows, table};
use crate::app::App;
use crate::enroll::{Customer, EnrollError};
use crate::gateway::NewCustomer;
use crate::store::enrollments::{self, EnrollPlan, EnrollmentView};

/// `paycron enroll` flags.
#[derive(Clone, Debug, clap::Args)]
pub struct EnrollArgs {
    /// An existing Square customer id.
    #[arg(
        long,
        conflicts_with = "new_customer",
        required_unless_present = "new_customer"
    )]
    pub customer: Option<String>,
    /// Create the Square customer (CreateCustomer) from the name, email and phone given.
    #[arg(long)]
    pub new_customer: bool,
    /// Given name (with --new-customer).
    #[arg(long, requires = "new_customer")]
    pub given_name: Option<String>,
    /// Family name (with --new-customer).
    #[arg(long, requires = "new_customer")]
    pub family_name: Option<String>,
    /// Email (with --new-customer).
    #[arg(long, requires = "new_customer")]
    pub email: Option<String>,
    /// Phone (with --new-customer).
    #[arg(long, requires = "new_customer")]
    pub phone: Option<String>,
    /// Amount per period in minor units (1999 = 19.99 USD); the first is paid at the counter.
    #[arg(long, allow_hyphen_values = true)]
    pub amount: String,
    /// ISO 4217 currency (the Point of Sale account's).
    #[arg(long)]
    pub currency: String,
    /// Nday, Nweek, Nmonth or Nyear.
    #[arg(long)]
    pub every: String,
    /// The first period's start, RFC 3339 (default: now).
    #[arg(long)]
    pub anchor: Option<String>,
    /// IANA time zone of the calendar (default UTC).
    #[arg(long)]
    pub timezone: Option<String>,
    /// Bill this many periods in all (the counter's included), then complete.
    #[arg(long)]
    pub cycles: Option<String>,
    /// Your own reference: enrolling again with it and the same terms gives the same
    /// subscription a new link (the old one stops working).
    #[arg(long)]
    pub external_ref: Option<String>,
    /// Bill no period starting at or after this instant (RFC 3339).
    #[arg(long)]
    pub ends_at: Option<String>,
    /// Test clock, RFC 3339 (refused against Square production).
    #[arg(long)]
    pub now: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
}

/// `paycron enrollments ...`.
#[derive(clap::Subcommand)]
pub enum EnrollmentsCmd {
    /// Enrollments, newest first, with where each stands.
    List {
        /// Output format.
        #[arg(long, value_enum, default_value = "text")]
        format: Format,
    },
}

impl EnrollmentsCmd {
    /// Runs the command.
    ///
    /// # Errors
    /// [`CommandError`].
    pub async fn execute(self, app: &App) -> Result<()> {
        match self {
            EnrollmentsCmd::List { format } => {
                let rows = enrollments::list(&app.pool).await?;
                print_rows(&rows, format, enrollment_table)
            }
        }
    }
}

fn enrollment_table(rows: &[EnrollmentView]) -> String {
    table(
        &[
            "SUBSCRIPTION",
            "CUSTOMER",
            "STATUS",
            "AMOUNT",
            "PAYMENT",
            "CARD",
            "CREATED",
            "EXPIRES",
        ],
        rows.iter()
            .map(|e| {
                vec![
                    e.subscription_id.to_string(),
                    e.customer_id.clone(),
                    if e.card_missing_at.is_some() && e.status == "paid" {
                        "paid (card missing)".into()
                    } else {
                        e.status.clone()
                    },
                    crate::enroll::page::money_words(e.amount_minor, &e.currency),
                    e.provider_payment_id.clone().unwrap_or_default(),
                    e.card_id.clone().unwrap_or_default(),
                    e.created_at.format("%Y-%m-%d %H:%M").to_string(),
                    e.expires_at.format("%Y-%m-%d %H:%M").to_string(),
                ]
            })
            .collect(),
    )
}

fn not_empty(flag: &str, v: Option<&String>) -> Result<Option<String>> {
    match v.map(|s| s.trim()) {
        Some("") => Err(CommandError::BadInput(format!("{flag}: empty"))),
        other => Ok(other.map(str::to_owned)),
    }
}

/// `paycron enroll`: prints the link (and its subscription) to open on the counter's device.
///
/// # Errors
/// [`CommandError`]: bad flags or missing settings exit 2 with nothing written.
pub async fn enroll(app: &App, args: EnrollArgs) -> Result<()> {
    // The plan, checked like `subscription create` (the customer checked below).
    let plan = parse_create(&CreateArgs {
        customer: args
            .customer
            .clone()
            .unwrap_or_else(|| "NEW-CUSTOMER".into()),
        amount: args.amount.clone(),
        currency: args.currency.clone(),
        every: args.every.clone(),
        card: None,
        anchor: args.anchor.clone(),
        timezone: args.timezone.clone(),
        cycles: args.cycles.clone(),
        trial_days: None,
        external_ref: args.external_ref.clone(),
        ends_at: args.ends_at.clone(),
        now: None,
    })?;
    let now = test_clock(app, args.now.as_deref())?;
    let customer = if args.new_customer {
        let given_name = not_empty("--given-name", args.given_name.as_ref())?;
        let family_name = not_empty("--family-name", args.family_name.as_ref())?;
        let email = not_empty("--email", args.email.as_ref())?;
        let phone = not_empty("--phone", args.phone.as_ref())?;
        if given_name.is_none() && family_name.is_none() && email.is_none() && phone.is_none() {
            return Err(CommandError::BadInput(
                "--new-customer: give at least one of --given-name, --family-name, --email or --phone".into(),
            ));
        }
        if let Some(e) = &email
            && !e.contains('@')
        {
            return Err(CommandError::BadInput(format!(
                "--email: {e:?} is not an email address"
            )));
        }
        // A retried enrollment with the same reference makes no second Square customer.
        let idempotency_key = match &args.external_ref {
            Some(r) => {
                use sha2::Digest;
                format!(
                    "paycron-cu-{}",
                    &hex::encode(sha2::Sha256::digest(r.as_bytes()))[..32]
                )
            }
            None => format!("paycron-cu-{}", uuid::Uuid::new_v4().simple()),
        };
        Customer::New(NewCustomer {
            idempotency_key,
            given_name,
            family_name,
            email,
            phone,
        })
    } else {
        Customer::Existing(plan.customer_id.to_string())
    };
    let counter = app.counter(app.square()?);
    let enrolled = counter
        .start(
            customer,
            EnrollPlan {
                customer_id: String::new(),
                amount_minor: plan.money.minor(),
                currency: plan.money.currency().as_str().to_owned(),
                interval_unit: plan.interval.unit.as_str().to_owned(),
                interval_count: i32::try_from(plan.interval.count).unwrap_or(i32::MAX),
                anchor: plan.anchor,
                time_zone: plan.time_zone.clone(),
                cycles: plan.cycles,
                external_ref: plan.external_ref.clone(),
                ends_at: plan.ends_at,
                expires_in: app.config.enrollment.expires_in,
                card_wait: app.config.enrollment.card_wait,
                now,
            },
        )
        .await
        .map_err(|e| match e {
            EnrollError::Config(m) => CommandError::BadInput(m),
            EnrollError::Store(s) => CommandError::Store(s),
            EnrollError::Gateway(g) => CommandError::Gateway(g),
            EnrollError::Calendar(m) => CommandError::Failed(m),
            EnrollError::Sync(b) => CommandError::Billing(b),
        })?;
    match args.format {
        Format::Text => {
            crate::out!("{}", enrolled.link)?;
            crate::out!(
                "subscription {}  customer {}  link valid until {}",
                enrolled.subscription_id,
                enrolled.customer_id,
                enrolled.expires_at.to_rfc3339()
            )?;
        }
        Format::Json | Format::Jsonl => {
            let json =
                serde_json::to_string(&enrolled).map_err(|e| CommandError::Io(e.to_string()))?;
            crate::out!("{json}")?;
        }
    }
    Ok(())
}
