//! The seam between the billing engine and Square: the [`PaymentGateway`] trait, its Square
//! client over HTTP ([`square::SquareClient`]); the Square-compatible simulator for the
//! demo, the tests and the benchmark.
//!
//! Every outcome of CreatePayment is typed where it happens: `Succeeded`, `Declined` (dunning),
//! `Transient` (retried with the same key until the deadline ran out), `Unknown` (sent, no
//! answer: recovered later with the same key), `KeyReused`, `Misconfigured` (the seller's
//! setup or the request) and `Fatal` (the access token).
//! Nothing is skipped silently.

pub mod square;
pub mod wire;

use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};

use crate::domain::answer::Answer;
use crate::domain::{CardId, ChargeId, CustomerId, IdempotencyKey, Money};

/// A CreatePayment request ready to send: its key and its exact body bytes.
///
/// The body is stored with the charge intent and re-sent byte for byte on recovery, because a
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

    /// SHA-256 of the body, hex: stored beside the intent to prove a re-send is identical.
    pub fn fingerprint(&self) -> String {
        hex::encode(Sha256::digest(self.body.as_bytes()))
    }
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
    /// Recovery gave up: the intent was sent the bounded number of times without a decisive
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
    pub fn taken(payment: &wire::Payment) -> Self {
        PaymentOutcome::Succeeded {
            payment_id: payment.id.clone(),
            answer: Box::new(answer_of(payment)),
        }
    }
}

/// The checkable parts of a payment Square returned.
pub fn answer_of(p: &wire::Payment) -> Answer {
    Answer {
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

/// What the billing engine needs from a payment provider.
#[async_trait]
pub trait PaymentGateway: Send + Sync {
    /// Charges a card on file; transient failures are retried inside with the same key and
    /// the identical body, within the configured deadline.
    async fn create_payment(&self, payment: &PreparedPayment) -> PaymentOutcome;

    /// One page of customers.
    async fn list_customers(&self, cursor: Option<&str>) -> Result<Page<wire::Customer>>;

    /// One page of a customer's cards.
    async fn list_cards(
        &self,
        customer_id: &str,
        cursor: Option<&str>,
        include_disabled: bool,
    ) -> Result<Page<wire::Card>>;

    /// One page of payments created in `[begin, end)` (RFC 3339), oldest first.
    async fn list_payments(
        &self,
        begin: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
        cursor: Option<&str>,
    ) -> Result<Page<wire::Payment>>;

    /// One payment by id; `None` if Square does not know it.
    async fn get_payment(&self, payment_id: &str) -> Result<Option<wire::Payment>>;
}
