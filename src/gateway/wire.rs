//! Square's JSON shapes, as in the OpenAPI spec (`square-openapi-subset.json`): the parts of
//! `CreatePaymentRequest`, `Payment`, `RefundPaymentRequest`, `PaymentRefund`, `Card`,
//! `Customer`, `Error` and the list responses that
//! paycron reads or writes. Unknown fields are ignored on the way in, so Square adding fields
//! never breaks parsing; optional fields are skipped on the way out.

use serde::{Deserialize, Serialize};

/// `Money`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    /// Smallest currency unit.
    pub amount: i64,
    /// ISO 4217.
    pub currency: String,
}

/// `CreatePaymentRequest`, the fields paycron sends. Field order is fixed, so the same inputs
/// always serialise to the same bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreatePaymentRequest {
    /// Card-on-file id.
    pub source_id: String,
    /// ≤ 45 characters.
    pub idempotency_key: String,
    /// Amount.
    pub amount_money: Money,
    /// Required for a card on file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Location (default: the seller's main location).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// ≤ 40 characters: the paycron charge id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_id: Option<String>,
    /// Complete at once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub autocomplete: Option<bool>,
    /// ≤ 500 characters.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// `Error`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    /// ErrorCategory.
    pub category: String,
    /// ErrorCode.
    pub code: String,
    /// For developers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Offending field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// `CardPaymentDetails` (the part we read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CardPaymentDetails {
    /// AUTHORIZED | CAPTURED | VOIDED | FAILED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The card, display fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card: Option<Card>,
    /// KEYED | ON_FILE | ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry_method: Option<String>,
    /// Errors attached to the card part of a failed payment.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Error>,
}

/// `Payment` (the part we read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payment {
    /// Square payment id.
    pub id: String,
    /// RFC 3339.
    #[serde(default)]
    pub created_at: String,
    /// RFC 3339.
    #[serde(default)]
    pub updated_at: String,
    /// Amount.
    pub amount_money: Money,
    /// Total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_money: Option<Money>,
    /// APPROVED | PENDING | COMPLETED | CANCELED | FAILED.
    pub status: String,
    /// CARD, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_type: Option<String>,
    /// Card details.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_details: Option<CardPaymentDetails>,
    /// Location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// Customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Our charge id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_id: Option<String>,
    /// Note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Receipt (COMPLETED only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_url: Option<String>,
}

impl Payment {
    /// Whether Square took the money (COMPLETED, or APPROVED and not yet captured): decided
    /// here, once, for every reader.
    pub fn taken(&self) -> bool {
        matches!(self.status.as_str(), "COMPLETED" | "APPROVED")
    }
}

/// `CreatePaymentResponse` / `GetPaymentResponse`: errors, a payment, or both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentResponse {
    /// Errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Error>,
    /// The payment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment: Option<Payment>,
}

/// `Card` (display fields only: Square never returns a full number).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Card {
    /// `ccof:...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// VISA, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_brand: Option<String>,
    /// Last 4.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_4: Option<String>,
    /// 1-12.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp_month: Option<i64>,
    /// Four digits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp_year: Option<i64>,
    /// Owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Chargeable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Optimistic-concurrency version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// CREDIT | DEBIT | ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub card_type: Option<String>,
}

/// `ListCardsResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCardsResponse {
    /// Errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Error>,
    /// Up to 25 cards.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cards: Vec<Card>,
    /// Next page; absent on the last one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `Customer` (the part we read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Customer {
    /// Id.
    pub id: String,
    /// Given name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    /// Family name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    /// Email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// `ListCustomersResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListCustomersResponse {
    /// Errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Error>,
    /// Customers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub customers: Vec<Customer>,
    /// Next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `ListPaymentsResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPaymentsResponse {
    /// Errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Error>,
    /// Payments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub payments: Vec<Payment>,
    /// Next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// Any error-only body.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// Errors.
    #[serde(default)]
    pub errors: Vec<Error>,
}

/// `RefundPaymentRequest`, the fields paycron sends. Field order is fixed, so the same inputs
/// always serialise to the same bytes (a re-send must be byte-identical).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundPaymentRequest {
    /// ≤ 45 characters.
    pub idempotency_key: String,
    /// Amount to refund: at most the payment's total minus what was already refunded.
    pub amount_money: Money,
    /// The payment refunded.
    pub payment_id: String,
    /// ≤ 192 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// `PaymentRefund` (the part we read).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentRefund {
    /// Square's refund id.
    pub id: String,
    /// PENDING | COMPLETED | REJECTED | FAILED.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// Location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// Amount refunded.
    pub amount_money: Money,
    /// The payment refunded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
    /// Why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// `RefundPaymentResponse` / `GetPaymentRefundResponse`: errors, a refund, or both.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundResponse {
    /// Errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Error>,
    /// The refund.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refund: Option<PaymentRefund>,
}

/// `ListPaymentRefundsResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListPaymentRefundsResponse {
    /// Errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Error>,
    /// Refunds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub refunds: Vec<PaymentRefund>,
    /// Next page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
}

/// `CreateCustomerRequest`, the fields paycron sends (at least one name, the email or the
/// phone is required by Square).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateCustomerRequest {
    /// Makes a retried creation return the same customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
    /// Given name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub given_name: Option<String>,
    /// Family name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family_name: Option<String>,
    /// Email.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_address: Option<String>,
    /// Phone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone_number: Option<String>,
    /// The business's own reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_id: Option<String>,
}

/// `CreateCustomerResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CustomerResponse {
    /// Errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Error>,
    /// The customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<Customer>,
}

/// `Tender` (the part we read): for a Point of Sale sale, its `id` is the payment's id.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tender {
    /// The tender's id, which is the associated payment's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// CARD, CASH, ...
    #[serde(rename = "type")]
    pub tender_type: String,
    /// Amount.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount_money: Option<Money>,
    /// The customer, when the tender is associated with one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// Only for payments made with the Payments API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_id: Option<String>,
}

/// `Order` (the part we read).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// The order id (a Point of Sale callback's transaction id).
    pub id: String,
    /// Location.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location_id: Option<String>,
    /// Customer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer_id: Option<String>,
    /// OPEN | COMPLETED | CANCELED | DRAFT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_money: Option<Money>,
    /// How it was paid.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tenders: Vec<Tender>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
}

/// `RetrieveOrderResponse`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderResponse {
    /// Errors.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<Error>,
    /// The order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
}
