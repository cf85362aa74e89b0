//! The seam between the billing engine and Square: the [`PaymentGateway`] trait, its Square
//! client over HTTP ([`square::SquareClient`]); the Square-compatible simulator for the
//! demo, the tests and the benchmark.
//!
//! Every outcome of CreatePayment is typed where it happens: `Succeeded`, `Declined` (dunning),
//! `Transient` (retried with the same key until the deadline ran out), `Unknown` (sent, no
//! answer: recovered later with the same key), `KeyReused`, `Misconfigured` (the seller's
//! setup or the request) and `Fatal` (the access token).
//! Nothing is skipped silently.
//!
//! The seam speaks paycron's types: instants, [`ProviderPayment`] (with `taken` decided once,
//! here), [`ProviderCard`] and [`ProviderCustomer`]; Square's JSON stays in [`wire`].

pub mod square;
pub mod wire;

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::domain::answer::{Answer, ProviderPayment};
use crate::domain::refund::ProviderRefund;
use crate::domain::{CardId, ChargeId, CustomerId, IdempotencyKey, Money};

/// A CreatePayment request ready to send: its key and its exact body bytes.
///
/// The body is stored with the pending charge and re-sent byte for byte on recovery, because a
/// changed body under the same key gets `IDEMPOTENCY_KEY_REUSED`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedPayment {
    /// The key (also inside the body).
    pub key: IdempotencyKey,
    /// The JSON body.
    pub body: String,
}

impl PreparedPayment {
    /// Builds the body for charging a card on file.
    ///
    /// # Errors
    /// Never in practice (serialising plain strings and integers).
    pub fn card_on_file(
        key: IdempotencyKey,
        card_id: &CardId,
        customer_id: &CustomerId,
        money: Money,
        reference_id: ChargeId,
        location_id: Option<&str>,
    ) -> std::result::Result<Self, serde_json::Error> {
        let req = wire::CreatePaymentRequest {
            source_id: card_id.as_str().to_owned(),
            idempotency_key: key.as_str().to_owned(),
            amount_money: wire::Money {
                amount: money.minor(),
                currency: money.currency().as_str().to_owned(),
            },
            customer_id: Some(customer_id.as_str().to_owned()),
            location_id: location_id.map(str::to_owned),
            reference_id: Some(reference_id.to_string()),
            autocomplete: Some(true),
            note: None,
        };
        Ok(PreparedPayment {
            key,
            body: serde_json::to_string(&req)?,
        })
    }

    /// SHA-256 of the body, hex: stored beside the charge to prove a re-send is identical.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.body.as_bytes()))
    }
}

/// A RefundPayment request ready to send: its key and its exact body bytes (written by
/// `paycron.refund_charge()` and re-sent byte for byte).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedRefund {
    /// The key (also inside the body).
    pub key: String,
    /// The JSON body.
    pub body: String,
}

/// The outcome of one RefundPayment call (retries included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Square made the refund (PENDING until it settles, or already settled).
    Accepted(ProviderRefund),
    /// Square refused the request (amount, payment, currency...): no refund was made.
    Refused {
        /// Square error code, e.g. REFUND_AMOUNT_INVALID.
        code: String,
        /// Square error category.
        category: String,
        /// Square's detail.
        detail: String,
    },
    /// No decisive answer (transient failures until the deadline, a lost answer, a reused
    /// key): the refund may or may not exist; the same request is looked up or sent again.
    Undecided {
        /// What happened.
        reason: String,
    },
    /// The access token was refused.
    Fatal {
        /// Square error code.
        code: String,
    },
}

/// The outcome of one CreatePayment call (retries included).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PaymentOutcome {
    /// Square answered with a payment that took money (checked against the charge before it
    /// is recorded as a success).
    Succeeded {
        /// Square payment id.
        payment_id: String,
        /// The payment as Square described it.
        answer: Box<Answer>,
    },
    /// The card was declined.
    Declined {
        /// Square error code, e.g. INSUFFICIENT_FUNDS.
        code: String,
        /// Square error category.
        category: String,
        /// Not worth retrying on the same card.
        hard: bool,
    },
    /// Square kept failing transiently until the deadline; nothing was taken as far as we know,
    /// but the same key must be used for any further try.
    Transient {
        /// What failed last.
        reason: String,
        /// Square's Retry-After, if it sent one.
        retry_after: Option<Duration>,
    },
    /// Sent, but no answer came back (timeout, dropped connection, unreadable 2xx body):
    /// the payment may or may not exist.
    Unknown {
        /// What happened.
        reason: String,
    },
    /// Square says the key was used with a different body. A payment may exist; never
    /// recorded as a failure.
    KeyReused {
        /// Square's detail.
        detail: String,
    },
    /// Square refused the seller's setup or the request (location, currency, API version,
    /// request shape, or an error paycron does not know): no payment was made and no customer is
    /// at fault; every charge would get the same answer until an operator fixes it.
    Misconfigured {
        /// Square error code.
        code: String,
        /// Square error category.
        category: String,
        /// The request field Square named, if any.
        field: Option<String>,
        /// Square's detail.
        detail: String,
    },
    /// No payment: an operator decided that a charge in review took no money (never an
    /// answer from Square).
    Voided,
    /// Recovery gave up: the charge was sent the bounded number of times without a decisive
    /// answer, so an operator decides (never an answer from Square).
    Undecided {
        /// How many sends over how long.
        reason: String,
    },
    /// The access token was refused (`AUTHENTICATION_ERROR`): nothing can be charged.
    Fatal {
        /// Square error code.
        code: String,
        /// Square error category.
        category: String,
        /// Square's detail.
        detail: String,
    },
}

impl PaymentOutcome {
    /// Money taken, as Square described the payment.
    pub fn taken(payment: &ProviderPayment) -> Self {
        PaymentOutcome::Succeeded {
            payment_id: payment.id().to_owned(),
            answer: Box::new(payment.answer.clone()),
        }
    }
}

impl From<&wire::Payment> for ProviderPayment {
    fn from(p: &wire::Payment) -> Self {
        ProviderPayment {
            answer: Answer {
                payment_id: p.id.clone(),
                status: p.status.clone(),
                amount_minor: p.amount_money.amount,
                currency: p.amount_money.currency.clone(),
                customer_id: p.customer_id.clone(),
                card_id: p
                    .card_details
                    .as_ref()
                    .and_then(|d| d.card.as_ref())
                    .and_then(|c| c.id.clone()),
                location_id: p.location_id.clone(),
                reference_id: p.reference_id.clone(),
            },
            taken: p.taken(),
            created_at: chrono::DateTime::parse_from_rfc3339(&p.created_at)
                .ok()
                .map(|t| t.with_timezone(&chrono::Utc)),
        }
    }
}

impl From<&wire::PaymentRefund> for ProviderRefund {
    fn from(r: &wire::PaymentRefund) -> Self {
        ProviderRefund {
            id: r.id.clone(),
            status: r.status.clone().unwrap_or_default(),
            payment_id: r.payment_id.clone(),
            amount_minor: r.amount_money.amount,
            currency: r.amount_money.currency.clone(),
            created_at: r
                .created_at
                .as_deref()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .map(|t| t.with_timezone(&chrono::Utc)),
        }
    }
}

/// A customer Square holds (the fields sync-cards files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderCustomer {
    /// Square's customer id, as Square sent it (validated where it is filed).
    pub id: String,
    /// Given name.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// Email.
    pub email: Option<String>,
}

impl From<wire::Customer> for ProviderCustomer {
    fn from(c: wire::Customer) -> Self {
        ProviderCustomer {
            id: c.id,
            given_name: c.given_name,
            family_name: c.family_name,
            email: c.email_address,
        }
    }
}

/// An order Square holds, as read to confirm a Point of Sale sale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderOrder {
    /// The order id.
    pub id: String,
    /// The customer it is attached to.
    pub customer_id: Option<String>,
    /// OPEN | COMPLETED | CANCELED.
    pub state: Option<String>,
    /// Its card tenders: (payment id, amount, currency, customer).
    pub card_payments: Vec<OrderPayment>,
}

/// One card tender of an order: the payment it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OrderPayment {
    /// The payment's id (a tender's id is its payment's).
    pub payment_id: String,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// The customer of the tender.
    pub customer_id: Option<String>,
}

impl From<wire::Order> for ProviderOrder {
    fn from(o: wire::Order) -> Self {
        ProviderOrder {
            id: o.id,
            customer_id: o.customer_id,
            state: o.state,
            card_payments: o
                .tenders
                .into_iter()
                .filter(|t| t.tender_type == "CARD")
                .filter_map(|t| {
                    let money = t.amount_money?;
                    Some(OrderPayment {
                        payment_id: t.payment_id.or(t.id)?,
                        amount_minor: money.amount,
                        currency: money.currency,
                        customer_id: t.customer_id,
                    })
                })
                .collect(),
        }
    }
}

/// Who to create at Square: a customer enrolled at the counter.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewCustomer {
    /// Makes a retried creation return the same customer.
    pub idempotency_key: String,
    /// Given name.
    pub given_name: Option<String>,
    /// Family name.
    pub family_name: Option<String>,
    /// Email.
    pub email: Option<String>,
    /// Phone.
    pub phone: Option<String>,
}

/// A card on file Square holds: display fields only (Square never returns a number).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderCard {
    /// `ccof:...`, when Square sent one.
    pub id: Option<String>,
    /// The customer Square lists it under.
    pub customer_id: Option<String>,
    /// VISA, ...
    pub brand: Option<String>,
    /// Last 4.
    pub last_4: Option<String>,
    /// 1-12, when it fits.
    pub exp_month: Option<i32>,
    /// Four digits, when it fits.
    pub exp_year: Option<i32>,
    /// Chargeable (Square omits it for enabled cards).
    pub enabled: bool,
    /// Square's optimistic-concurrency version (orders card events).
    pub version: Option<i64>,
}

impl From<wire::Card> for ProviderCard {
    fn from(c: wire::Card) -> Self {
        ProviderCard {
            id: c.id,
            customer_id: c.customer_id,
            brand: c.card_brand,
            last_4: c.last_4,
            exp_month: c.exp_month.and_then(|m| i32::try_from(m).ok()),
            exp_year: c.exp_year.and_then(|y| i32::try_from(y).ok()),
            enabled: c.enabled.unwrap_or(true),
            version: c.version,
        }
    }
}

/// Errors of the read calls (lists and lookups).
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// Square could not be reached at all.
    #[error("Square is unreachable at {url}: {cause}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The cause chain.
        cause: String,
    },
    /// The access token was refused.
    #[error("SQUARE_ACCESS_TOKEN was rejected by Square ({code})")]
    Unauthorized {
        /// Square's code, e.g. UNAUTHORIZED.
        code: String,
    },
    /// Square answered with an error.
    #[error("Square answered {status} to {what}: {code} {detail}")]
    Api {
        /// The call.
        what: &'static str,
        /// HTTP status.
        status: u16,
        /// First error code.
        code: String,
        /// Its detail.
        detail: String,
    },
    /// The answer was not the JSON Square documents.
    #[error("Square sent an unreadable answer to {what}: {cause}")]
    Malformed {
        /// The call.
        what: &'static str,
        /// The parse error.
        cause: String,
    },
    /// Transient failures outlasted the retry deadline.
    #[error("Square kept failing on {what} until the retry deadline: {cause}")]
    Exhausted {
        /// The call.
        what: &'static str,
        /// The last failure.
        cause: String,
    },
    /// Something needed for the call is missing.
    #[error("{0}")]
    Config(String),
}

/// Module result.
pub type Result<T> = std::result::Result<T, GatewayError>;

/// One page of a list call.
#[derive(Clone, Debug)]
pub struct Page<T> {
    /// Items on this page.
    pub items: Vec<T>,
    /// Cursor of the next page, if any.
    pub cursor: Option<String>,
}

/// Which end of a listing sorted by creation comes first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListOrder {
    /// Oldest first (Square's `sort_order=ASC`, its default).
    OldestFirst,
    /// Newest first (`sort_order=DESC`).
    NewestFirst,
}

impl ListOrder {
    /// Square's `sort_order` value.
    pub fn as_square(self) -> &'static str {
        match self {
            ListOrder::OldestFirst => "ASC",
            ListOrder::NewestFirst => "DESC",
        }
    }
}

/// What the billing engine needs from a payment provider.
#[async_trait]
pub trait PaymentGateway: Send + Sync {
    /// Waits for this process's turn to send a CreatePayment (`SQUARE_RATE_LIMIT_PER_SEC`), and
    /// records how long it waited (`paycron_rate_limit_wait_seconds`). The engine calls it
    /// before each [`PaymentGateway::create_payment`], so a charge's latency is Square's alone.
    async fn wait_turn(&self) {}

    /// Charges a card on file; transient failures are retried inside with the same key and
    /// the identical body, within the configured deadline. Takes no turn of the rate limiter:
    /// callers wait with [`PaymentGateway::wait_turn`] first.
    async fn create_payment(&self, payment: &PreparedPayment) -> PaymentOutcome;

    /// One page of customers.
    async fn list_customers(&self, cursor: Option<&str>) -> Result<Page<ProviderCustomer>>;

    /// One page of a customer's cards.
    async fn list_cards(
        &self,
        customer_id: &str,
        cursor: Option<&str>,
        include_disabled: bool,
    ) -> Result<Page<ProviderCard>>;

    /// One page of every card of the seller, disabled ones included (ListCards without a
    /// customer filter), in creation order from the `order` end.
    async fn list_all_cards(
        &self,
        cursor: Option<&str>,
        order: ListOrder,
    ) -> Result<Page<ProviderCard>>;

    /// One page of payments created in `[begin, end)`, oldest first.
    async fn list_payments(
        &self,
        begin: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
        cursor: Option<&str>,
    ) -> Result<Page<ProviderPayment>>;

    /// One payment by id; `None` if Square does not know it.
    async fn get_payment(&self, payment_id: &str) -> Result<Option<ProviderPayment>>;

    /// Refunds a payment (RefundPayment); transient failures are retried inside with the same
    /// key and the identical body, within the configured deadline.
    async fn refund_payment(&self, refund: &PreparedRefund) -> RefundOutcome;

    /// One refund by Square's id (GetPaymentRefund); `None` if Square does not know it.
    async fn get_refund(&self, refund_id: &str) -> Result<Option<ProviderRefund>>;

    /// Creates a customer (CreateCustomer), idempotently under `customer.idempotency_key`.
    async fn create_customer(&self, customer: &NewCustomer) -> Result<ProviderCustomer>;

    /// One customer by id (RetrieveCustomer); `None` if Square does not know it.
    async fn retrieve_customer(&self, customer_id: &str) -> Result<Option<ProviderCustomer>>;

    /// One order by id (RetrieveOrder); `None` if Square does not know it.
    async fn retrieve_order(&self, order_id: &str) -> Result<Option<ProviderOrder>>;

    /// One page of refunds created in `[begin, end)` (ListPaymentRefunds), oldest first.
    async fn list_refunds(
        &self,
        begin: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
        cursor: Option<&str>,
    ) -> Result<Page<ProviderRefund>>;
}
