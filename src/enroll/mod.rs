//! Enrollment at the counter: start one (the Square customer created or found, a subscription
//! awaiting its card, a link), confirm the sale Square Point of Sale reports, record the first
//! period as paid, and pick up the card the customer saved at the counter.
//!
//! Invariants:
//! - The callback proves nothing on its own (it comes unsigned from the device's browser):
//!   a sale is recorded only once Square confirms it — the order the callback names, its card
//!   tender's payment, read with GetPayment — or, with no usable callback, a payment found with
//!   ListPayments for the enrollment's customer, amount and currency since it began. Either way
//!   [`domain::pos::sale_differences`](crate::domain::pos::sale_differences) must find nothing.
//! - Recording is exactly once whatever is retried or reloaded (see `store::enrollments`).
//! - The card comes by whatever files a new card of the customer: the `card.created` webhook,
//!   the customer synced here as sync-cards does (`billing::sync::sync_one`, throttled per
//!   enrollment), sync-cards itself; a database trigger completes the enrollment.
//! - Square is asked at most once per [`CHECK_GAP`] per enrollment, however often the page
//!   reloads.

pub mod page;
pub mod web;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::EnrollmentConfig;
use crate::domain::pos::{self, ExpectedSale, PosResult};
use crate::gateway::{GatewayError, NewCustomer, PaymentGateway};
use crate::store::StoreError;
use crate::store::cards;
use crate::store::enrollments::{self, ConfirmedSale, EnrollPlan, EnrollmentView, Recorded};

/// The least time between two questions to Square about one enrollment.
pub const CHECK_GAP: Duration = Duration::from_secs(3);
/// How far before an enrollment began a payment may be dated (device and server clocks).
const CLOCK_SLACK: chrono::Duration = chrono::Duration::minutes(5);

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum EnrollError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Square.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// Syncing the customer's cards.
    #[error(transparent)]
    Sync(#[from] crate::billing::BillingError),
    /// A setting enrollment needs is missing or wrong.
    #[error("{0}")]
    Config(String),
    /// The subscription's calendar cannot be read.
    #[error("the subscription's calendar: {0}")]
    Calendar(String),
}

/// Module result.
pub type Result<T> = std::result::Result<T, EnrollError>;

/// Who the subscription is for.
#[derive(Clone, Debug)]
pub enum Customer {
    /// A Square customer that exists already.
    Existing(String),
    /// A new Square customer, created with CreateCustomer.
    New(NewCustomer),
}

/// A started enrollment, as `paycron enroll` prints it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Enrolled {
    /// The subscription awaiting its card.
    pub subscription_id: Uuid,
    /// The Square customer.
    pub customer_id: String,
    /// The link to open on the counter's device.
    pub link: String,
    /// Until when the link may start the sale.
    pub expires_at: DateTime<Utc>,
}

/// What a callback did, for the page it redirects to.
#[derive(Clone, Debug)]
pub struct Called {
    /// The token to show (the link's), when the callback named an enrollment.
    pub token: Option<String>,
    /// What happened, in words, when there is nothing better to show than a message.
    pub message: Option<String>,
}

/// Enrollment at the counter.
#[derive(Clone)]
pub struct Counter {
    pool: PgPool,
    gateway: Arc<dyn PaymentGateway>,
    config: EnrollmentConfig,
    location_id: Option<String>,
}

impl Counter {
    /// Enrollment over this database and Square.
    pub fn new(
        pool: PgPool,
        gateway: Arc<dyn PaymentGateway>,
        config: EnrollmentConfig,
        location_id: Option<String>,
    ) -> Self {
        Counter {
            pool,
            gateway,
            config,
            location_id,
        }
    }

    /// The settings.
    pub fn config(&self) -> &EnrollmentConfig {
        &self.config
    }

    /// What the page's buttons launch for `view` (opened with `token`): the first period, for
    /// its customer, back to the callback; `None` without the application id or public URL.
    pub fn launch(&self, view: &EnrollmentView, token: &str) -> Option<pos::Launch> {
        Some(pos::Launch {
            client_id: self.config.application_id.clone()?,
            callback_url: self.config.callback_url()?,
            amount_minor: view.amount_minor,
            currency: view.currency.clone(),
            customer_id: view.customer_id.clone(),
            state: token.to_owned(),
            location_id: self.location_id.clone(),
            notes: Some(format!("{} subscription", self.config.business_name)),
        })
    }

    /// Starts an enrollment: creates the Square customer if asked (idempotently), files it,
    /// and creates the subscription awaiting its card with its link.
    ///
    /// # Errors
    /// [`EnrollError`]; nothing is written when the public URL or application id is missing.
    pub async fn start(&self, customer: Customer, mut plan: EnrollPlan) -> Result<Enrolled> {
        if self.config.application_id.is_none() {
            return Err(EnrollError::Config(
                "SQUARE_APPLICATION_ID is not set: Square Point of Sale needs the application whose web callback is registered".into(),
            ));
        }
        let Some(base) = self.config.public_url.clone() else {
            return Err(EnrollError::Config(
                "PAYCRON_PUBLIC_URL is not set: the enrollment link and Point of Sale's callback are served there".into(),
            ));
        };
        let customer_id = match customer {
            Customer::Existing(id) => {
                // Found at Square first: POS would refuse a customer of another account.
                let Some(found) = self.gateway.retrieve_customer(&id).await? else {
                    return Err(EnrollError::Config(format!(
                        "--customer: {id} is not a customer of this Square account"
                    )));
                };
                let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
                cards::file_customer(&mut conn, &found.id).await?;
                found.id
            }
            Customer::New(new) => {
                let made = self.gateway.create_customer(&new).await?;
                let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
                cards::upsert_customer(
                    &mut conn,
                    &made.id,
                    made.given_name.as_deref(),
                    made.family_name.as_deref(),
                    made.email.as_deref(),
                )
                .await?;
                made.id
            }
        };
        plan.customer_id = customer_id.clone();
        let started = enrollments::enroll(&self.pool, &plan).await?;
        tracing::info!(subscription_id = %started.subscription_id, customer_id = %customer_id,
            expires_at = %started.expires_at, "enrollment started");
        Ok(Enrolled {
            subscription_id: started.subscription_id,
            customer_id,
            link: format!("{}/enroll/{}", base.trim_end_matches('/'), started.token),
            expires_at: started.expires_at,
        })
    }

    /// The enrollment a link opens, brought up to date with Square first (throttled).
    ///
    /// # Errors
    /// [`EnrollError::Store`]; Square's failures are logged and the page shows what is known.
    pub async fn open(&self, token: &str) -> Result<Option<EnrollmentView>> {
        let Some(e) = enrollments::by_token(&self.pool, token).await? else {
            return Ok(None);
        };
        if matches!(e.status.as_str(), "open" | "paid") {
            if let Err(err) = self.refresh(&e).await {
                tracing::warn!(subscription_id = %e.subscription_id, error = %err,
                    "enrollment: Square could not be asked; the page shows what is known");
            }
            return Ok(enrollments::get(&self.pool, e.id).await?);
        }
        Ok(Some(e))
    }

    /// Asks Square about one waiting enrollment, at most once per [`CHECK_GAP`]: an open one
    /// for its sale (the callback may never come), a paid one for its card.
    ///
    /// # Errors
    /// [`EnrollError`].
    pub async fn refresh(&self, e: &EnrollmentView) -> Result<()> {
        if !enrollments::claim_check(&self.pool, e.id, CHECK_GAP).await? {
            return Ok(());
        }
        self.ask(e).await
    }

    /// Asks Square about one waiting enrollment now, unthrottled (the page's "check again",
    /// a person's tap).
    ///
    /// # Errors
    /// [`EnrollError`].
    pub async fn ask(&self, e: &EnrollmentView) -> Result<()> {
        match e.status.as_str() {
            "open" => {
                if let Some(sale) = self.find_by_payments(e).await? {
                    self.record(e, &sale).await?;
                }
            }
            "paid" => self.poll_cards(e).await?,
            _ => {}
        }
        Ok(())
    }

    /// Handles Point of Sale's callback: reads it, confirms a reported sale with Square and
    /// records it, or notes the error POS reported. Never trusts the callback alone.
    ///
    /// # Errors
    /// [`EnrollError`] when the database or Square fails (the page says to reload).
    pub async fn callback(&self, query: &HashMap<String, String>) -> Result<Called> {
        let result = match pos::parse_callback(query) {
            Ok(r) => r,
            Err(e) => {
                return Ok(Called {
                    token: None,
                    message: Some(format!("This is not a Point of Sale answer ({e}).")),
                });
            }
        };
        let (state, transaction) = match &result {
            PosResult::Sale {
                transaction_id,
                state,
                ..
            } => (state.clone(), transaction_id.clone()),
            PosResult::Failed { state, .. } => (state.clone(), None),
        };
        let Some(token) = state else {
            return Ok(Called {
                token: None,
                message: Some(
                    "Point of Sale did not say which enrollment this was: open the enrollment link again."
                        .into(),
                ),
            });
        };
        let Some(e) = enrollments::by_token(&self.pool, &token).await? else {
            return Ok(Called {
                token: None,
                message: Some(
                    "This enrollment link is unknown or was replaced by a newer one.".into(),
                ),
            });
        };
        match result {
            PosResult::Failed { error, .. } => {
                tracing::info!(subscription_id = %e.subscription_id, error = ?error,
                    "enrollment: Point of Sale reported no sale");
                enrollments::set_error(&self.pool, e.id, error.code()).await?;
            }
            PosResult::Sale { .. } if e.status == "open" => {
                let sale = match transaction {
                    Some(order_id) => self.confirm_by_order(&e, &order_id).await?,
                    None => None,
                };
                let sale = match sale {
                    Some(s) => Some(s),
                    // No transaction id (an offline sale), or an order that does not show it
                    // yet: look for the payment itself.
                    None => self.find_by_payments(&e).await?,
                };
                match sale {
                    Some(s) => {
                        self.record(&e, &s).await?;
                    }
                    None => {
                        tracing::info!(subscription_id = %e.subscription_id,
                            "enrollment: callback reported a sale Square does not show yet; the page keeps looking");
                    }
                }
            }
            PosResult::Sale { .. } => {
                // A sale reported for an enrollment already paid (the launch reopened from
                // history): Square took money that is not this subscription's.
                tracing::warn!(subscription_id = %e.subscription_id, status = %e.status,
                    transaction_id = transaction.as_deref().unwrap_or(""),
                    "enrollment: Point of Sale reported another sale for an enrollment no longer open; not recorded (refund it in Square if it was a mistake)");
            }
        }
        Ok(Called {
            token: Some(token),
            message: None,
        })
    }

    /// The callback's order → its card tender → the payment, read with GetPayment.
    async fn confirm_by_order(
        &self,
        e: &EnrollmentView,
        order_id: &str,
    ) -> Result<Option<ConfirmedSale>> {
        let Some(order) = self.gateway.retrieve_order(order_id).await? else {
            return Ok(None);
        };
        for tender in &order.card_payments {
            let Some(payment) = self.gateway.get_payment(&tender.payment_id).await? else {
                continue;
            };
            let diffs = pos::sale_differences(&self.expected(e), &payment);
            if diffs.is_empty() {
                return Ok(Some(ConfirmedSale {
                    payment_id: payment.answer.payment_id.clone(),
                    order_id: Some(order.id.clone()),
                    found_by: "order",
                    paid_at: payment.created_at.unwrap_or_else(Utc::now),
                }));
            }
            tracing::warn!(subscription_id = %e.subscription_id, order_id, payment_id = %tender.payment_id,
                differences = %diffs.join("; "), "enrollment: the reported sale is not this enrollment's; not recorded");
            enrollments::set_error(&self.pool, e.id, "sale_mismatch").await?;
        }
        Ok(None)
    }

    /// ListPayments since the enrollment began: the first payment that is its sale.
    async fn find_by_payments(&self, e: &EnrollmentView) -> Result<Option<ConfirmedSale>> {
        let begin = e.created_at - CLOCK_SLACK;
        let end = Utc::now() + chrono::Duration::minutes(1);
        let expected = self.expected(e);
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .gateway
                .list_payments(begin, end, cursor.as_deref())
                .await?;
            for p in page.items {
                if pos::sale_differences(&expected, &p).is_empty() {
                    return Ok(Some(ConfirmedSale {
                        payment_id: p.answer.payment_id.clone(),
                        order_id: None,
                        found_by: "payments",
                        paid_at: p.created_at.unwrap_or_else(Utc::now),
                    }));
                }
            }
            match page.cursor {
                Some(c) => cursor = Some(c),
                None => return Ok(None),
            }
        }
    }

    fn expected<'a>(&'a self, e: &'a EnrollmentView) -> ExpectedSale<'a> {
        ExpectedSale {
            amount_minor: e.amount_minor,
            currency: &e.currency,
            customer_id: &e.customer_id,
            location_id: self.location_id.as_deref(),
            not_before: e.created_at - CLOCK_SLACK,
        }
    }

    /// Records a confirmed sale: the first period paid; its next period due.
    async fn record(&self, e: &EnrollmentView, sale: &ConfirmedSale) -> Result<Recorded> {
        let next = self.second_period_start(e)?;
        let recorded = match enrollments::record_sale(&self.pool, e.id, sale, next).await {
            // The payment pays another charge already (one payment cannot pay two).
            Err(StoreError::Db(err))
                if err.as_database_error().and_then(|d| d.code()).as_deref() == Some("23505") =>
            {
                Recorded::Closed("payment already recorded".into())
            }
            other => other?,
        };
        match &recorded {
            Recorded::Now {
                charge_id,
                completed,
            } => {
                crate::ops::metrics::count_enrollment("paid");
                tracing::info!(subscription_id = %e.subscription_id, customer_id = %e.customer_id,
                    charge_id = %charge_id, payment_id = %sale.payment_id, found_by = sale.found_by,
                    amount_minor = e.amount_minor, currency = %e.currency,
                    "enrollment: first period paid at the counter");
                if *completed {
                    crate::ops::metrics::count_enrollment("completed");
                }
            }
            Recorded::Already => {}
            Recorded::Closed(why) => {
                tracing::warn!(subscription_id = %e.subscription_id, payment_id = %sale.payment_id,
                    status = %why, "enrollment: sale not recorded, the enrollment is not open");
            }
        }
        Ok(recorded)
    }

    /// When the enrollment's second period begins (the first charge on file).
    ///
    /// # Errors
    /// [`EnrollError::Calendar`].
    pub fn second_period_start(&self, e: &EnrollmentView) -> Result<DateTime<Utc>> {
        crate::domain::Calendar::from_stored(
            e.anchor,
            &e.interval_unit,
            e.interval_count,
            &e.time_zone,
        )
        .and_then(|c| c.period_start(1))
        .map_err(|err| EnrollError::Calendar(err.to_string()))
    }

    /// The enrollment's customer synced as sync-cards does (its cards listed and filed in
    /// Square's order, foreign and stale listings refused): a new card completes it.
    async fn poll_cards(&self, e: &EnrollmentView) -> Result<()> {
        crate::billing::sync::sync_one(&self.pool, self.gateway.as_ref(), &e.customer_id).await?;
        if let Some(now) = enrollments::get(&self.pool, e.id).await?
            && now.status == "completed"
        {
            crate::ops::metrics::count_enrollment("completed");
            tracing::info!(subscription_id = %e.subscription_id, card_id = now.card_id.as_deref().unwrap_or(""),
                "enrollment: card saved at the counter; billing on file from the next period");
        }
        Ok(())
    }

    /// The enrollments task: expires unpaid links, announces late cards, and asks Square about
    /// every waiting enrollment (a lost callback, a card whose webhook never came). Returns
    /// `(expired, card_missing, checked)`.
    ///
    /// # Errors
    /// [`EnrollError::Store`]; one enrollment's Square failure is logged and the rest go on.
    pub async fn sweep(&self) -> Result<(i32, i32, usize)> {
        // Square first: a sale whose callback was lost is found before its link can expire.
        let waiting = enrollments::waiting(&self.pool).await?;
        let mut checked = 0;
        for e in &waiting {
            match self.refresh(e).await {
                Ok(()) => checked += 1,
                Err(err) => tracing::warn!(subscription_id = %e.subscription_id, error = %err,
                    "enrollment: Square could not be asked; next pass tries again"),
            }
        }
        let (expired, missing) = enrollments::sweep(&self.pool, None).await?;
        if expired > 0 || missing > 0 {
            tracing::info!(expired, card_missing = missing, "enrollments swept");
        }
        Ok((expired, missing, checked))
    }

    /// The database.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}
