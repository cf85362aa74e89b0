//! Checking Square's answer against the charge it answers.
//!
//! A payment Square returns for a charge — from CreatePayment, a re-send, a lookup or
//! reconcile — is trusted only when it is the payment that charge asked for: the same amount
//! and currency, the same customer, the same card (when Square names it), the configured
//! location (when one is configured), and `reference_id` = the charge id. Anything else is
//! neither a success nor a decline: the charge goes to review. Pure.

use super::{CardId, ChargeId, CustomerId, Money};

/// The parts of a payment Square returned that can be checked, in paycron's own terms (the
/// gateway builds it from Square's wire types).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// Square's payment id.
    pub payment_id: String,
    /// Square's payment status (COMPLETED or APPROVED for money taken).
    pub status: String,
    /// `amount_money.amount`.
    pub amount_minor: i64,
    /// `amount_money.currency`.
    pub currency: String,
    /// `customer_id`, when Square sent it.
    pub customer_id: Option<String>,
    /// The card charged (`card_details.card.id`), when Square sent it.
    pub card_id: Option<String>,
    /// `location_id`, when Square sent it.
    pub location_id: Option<String>,
    /// `reference_id`, when Square sent it.
    pub reference_id: Option<String>,
}

/// A payment Square holds, as paycron reads it: the checkable answer, whether it took money
/// (decided once, in the gateway) and when Square created it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderPayment {
    /// What Square said about it.
    pub answer: Answer,
    /// Money taken (COMPLETED, or APPROVED and not yet captured).
    pub taken: bool,
    /// When Square created it, if it said so readably.
    pub created_at: Option<chrono::DateTime<chrono::Utc>>,
}

impl ProviderPayment {
    /// Square's payment id.
    pub fn id(&self) -> &str {
        &self.answer.payment_id
    }

    /// The paycron charge it names (paycron sends the charge id as `reference_id`); `None` for
    /// payments paycron did not make.
    pub fn charge_id(&self) -> Option<ChargeId> {
        self.answer
            .reference_id
            .as_deref()
            .and_then(|r| r.parse().ok())
    }
}

/// What the charge asked for.
#[derive(Clone, Copy, Debug)]
pub struct Asked<'a> {
    /// The charge (sent as `reference_id`).
    pub charge_id: ChargeId,
    /// Amount and currency.
    pub money: Money,
    /// Customer.
    pub customer_id: &'a CustomerId,
    /// Card.
    /// None for a counter charge (paid in Point of Sale, no card on file).
    pub card_id: Option<&'a CardId>,
    /// The configured location, if one is (otherwise Square picks the main one and any
    /// location is accepted).
    pub location_id: Option<&'a str>,
}

/// The differences between what was asked and what Square answered, one phrase each; empty
/// when the answer is the charge's payment.
pub fn differences(asked: &Asked<'_>, got: &Answer) -> Vec<String> {
    let mut out = Vec::new();
    if got.amount_minor != asked.money.minor() || got.currency != asked.money.currency().as_str() {
        out.push(format!(
            "amount {} {} instead of {} {}",
            got.amount_minor,
            got.currency,
            asked.money.minor(),
            asked.money.currency()
        ));
    }
    let charge = asked.charge_id.to_string();
    match got.reference_id.as_deref() {
        Some(r) if r == charge => {}
        other => out.push(format!(
            "reference_id {} instead of {charge}",
            other.unwrap_or("(none)")
        )),
    }
    match got.customer_id.as_deref() {
        Some(c) if c == asked.customer_id.as_str() => {}
        other => out.push(format!(
            "customer {} instead of {}",
            other.unwrap_or("(none)"),
            asked.customer_id
        )),
    }
    if let (Some(card), Some(mine)) = (got.card_id.as_deref(), asked.card_id)
        && card != mine.as_str()
    {
        out.push(format!("card {card} instead of {mine}"));
    }
    if let (Some(want), Some(got)) = (asked.location_id, got.location_id.as_deref())
        && want != got
    {
        out.push(format!("location {got} instead of {want}"));
    }
    if !matches!(got.status.as_str(), "COMPLETED" | "APPROVED") {
        out.push(format!("status {} is not money taken", got.status));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_spec_example_answer_for_another_charge_differs_in_everything_it_names() {
        let customer: CustomerId = "CUST1".parse().unwrap();
        let card: CardId = "ccof:mine".parse().unwrap();
        let asked = Asked {
            charge_id: ChargeId::new(),
            money: Money::new(1999, "USD".parse().unwrap()).unwrap(),
            customer_id: &customer,
            card_id: Some(&card),
            location_id: Some("LMINE"),
        };
        let example = Answer {
            payment_id: "GQTFp1ZlXdpoW4o6eGiZhbjosiDFf".into(),
            status: "COMPLETED".into(),
            amount_minor: 1000,
            currency: "USD".into(),
            customer_id: Some("W92WH6P11H4Z77CTET0RNTGFW8".into()),
            card_id: None,
            location_id: Some("L88917AVBK2S5".into()),
            reference_id: Some("123456".into()),
        };
        let d = differences(&asked, &example);
        assert_eq!(d.len(), 4, "{d:?}");
        assert!(d[0].starts_with("amount 1000 USD instead of 1999 USD"));
        let mine = Answer {
            amount_minor: 1999,
            customer_id: Some("CUST1".into()),
            card_id: Some("ccof:mine".into()),
            location_id: Some("LMINE".into()),
            reference_id: Some(asked.charge_id.to_string()),
            ..example
        };
        assert!(differences(&asked, &mine).is_empty());
    }
}
