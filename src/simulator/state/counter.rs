//! The counter side of Square: CreateCustomer (idempotent, validated as Square does),
//! RetrieveOrder, and a Point of Sale sale as the POS app makes it — an order paid by one card
//! tender whose id is the payment's id, the payment attached to the customer (no
//! `reference_id`: POS sales are not paycron's charges), and, when the customer saves the card
//! after checkout, a new card on file for that customer with its `card.created` notification.

use chrono::Utc;

use std::sync::Arc;

use super::{Answer, Reply, SimState, error, not_json, rfc3339};
use crate::gateway::wire::{self, Card, Customer, Money, Order, Payment, Tender};

/// What a simulated Point of Sale sale made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PosSale {
    /// The order (what the callback reports as the transaction id).
    pub order_id: String,
    /// The payment (the order's tender id).
    pub payment_id: String,
    /// The card saved on file after checkout, if the customer saved one.
    pub saved_card: Option<String>,
    /// The `card.created` notification for that card.
    pub card_created: Option<String>,
}

impl SimState {
    /// `POST /v2/customers`.
    pub fn create_customer(&mut self, raw: &str) -> Arc<Answer> {
        let Ok(value) = serde_json::from_str::<serde_json::Value>(raw) else {
            return Arc::new(not_json().into());
        };
        let key = value["idempotency_key"]
            .as_str()
            .map(|k| format!("customer:{k}"));
        if let Some(answer) = key.as_deref().and_then(|k| self.replay(k, raw)) {
            return answer;
        }
        let req: wire::CreateCustomerRequest = match serde_json::from_value(value.clone()) {
            Ok(r) => r,
            Err(e) => {
                return Arc::new(Answer::from(error(
                    400,
                    "INVALID_REQUEST_ERROR",
                    "BAD_REQUEST",
                    &e.to_string(),
                    None,
                )));
            }
        };
        let named = [
            &req.given_name,
            &req.family_name,
            &req.email_address,
            &req.phone_number,
        ]
        .iter()
        .any(|v| v.as_deref().is_some_and(|s| !s.trim().is_empty()));
        if !named {
            return Arc::new(Answer::from(error(
                400,
                "INVALID_REQUEST_ERROR",
                "MISSING_REQUIRED_PARAMETER",
                "At least one of given_name, family_name, company_name, email_address or phone_number is required.",
                None,
            )));
        }
        if req
            .email_address
            .as_deref()
            .is_some_and(|e| !e.contains('@'))
        {
            return Arc::new(Answer::from(error(
                400,
                "INVALID_REQUEST_ERROR",
                "INVALID_EMAIL_ADDRESS",
                "Expected email_address to be a valid email address.",
                Some("email_address"),
            )));
        }
        self.next_id += 1;
        let customer = Customer {
            id: format!("SIMCUST{:010}", self.next_id),
            given_name: req.given_name,
            family_name: req.family_name,
            email_address: req.email_address,
            created_at: Some(rfc3339(Utc::now() + self.clock_offset)),
        };
        self.customer_index
            .insert(customer.id.clone(), self.customers.len());
        self.customers.push(customer.clone());
        let reply = Reply {
            status: 200,
            body: serde_json::json!({ "customer": customer }),
        };
        match key {
            Some(k) => self.remember(k, raw, reply.into()),
            None => Arc::new(reply.into()),
        }
    }

    /// `GET /v2/customers/{id}`.
    pub fn retrieve_customer(&self, id: &str) -> Reply {
        match self.customer_index.get(id) {
            Some(&i) => Reply {
                status: 200,
                body: serde_json::json!({ "customer": self.customers[i] }),
            },
            None => error(
                404,
                "INVALID_REQUEST_ERROR",
                "NOT_FOUND",
                &format!("Customer with ID `{id}` not found."),
                None,
            ),
        }
    }

    /// `GET /v2/orders/{id}`.
    pub fn retrieve_order(&self, id: &str) -> Reply {
        match self.orders.iter().find(|o| o.id == id) {
            Some(o) => Reply {
                status: 200,
                body: serde_json::json!({ "order": o }),
            },
            None => error(
                404,
                "INVALID_REQUEST_ERROR",
                "NOT_FOUND",
                "Order not found.",
                None,
            ),
        }
    }

    /// A card sale at the counter for `customer_id`, as the POS app makes it; with
    /// `save_card`, the card the customer saved after checkout. `None` for an unknown customer
    /// (POS answers `invalid_customer_id`).
    pub fn pos_sale(
        &mut self,
        customer_id: &str,
        amount: i64,
        currency: &str,
        save_card: bool,
    ) -> Option<PosSale> {
        if !self.customer_index.contains_key(customer_id) {
            return None;
        }
        let now = rfc3339(Utc::now() + self.clock_offset);
        self.next_id += 1;
        let n = self.next_id;
        let payment_id = format!("SIMPOSPAY{n:010}");
        let order_id = format!("SIMORDER{n:010}");
        let money = Money {
            amount,
            currency: currency.to_owned(),
        };
        let payment = Payment {
            id: payment_id.clone(),
            created_at: now.clone(),
            updated_at: now.clone(),
            amount_money: money.clone(),
            total_money: Some(money.clone()),
            status: "COMPLETED".into(),
            source_type: Some("CARD".into()),
            card_details: Some(wire::CardPaymentDetails {
                status: Some("CAPTURED".into()),
                card: Some(Card {
                    card_brand: Some("VISA".into()),
                    last_4: Some("4242".into()),
                    ..Card::default()
                }),
                entry_method: Some("EMV".into()),
                errors: vec![],
            }),
            location_id: Some(self.config.location_id.clone()),
            customer_id: Some(customer_id.to_owned()),
            reference_id: None,
            note: None,
            receipt_url: Some(format!("https://squareup.com/receipt/preview/{payment_id}")),
        };
        self.by_id.insert(payment_id.clone(), self.payments.len());
        self.payments.push(payment);
        self.orders.push(Order {
            id: order_id.clone(),
            location_id: Some(self.config.location_id.clone()),
            customer_id: Some(customer_id.to_owned()),
            state: Some("COMPLETED".into()),
            total_money: Some(money.clone()),
            tenders: vec![Tender {
                id: Some(payment_id.clone()),
                tender_type: "CARD".into(),
                amount_money: Some(money),
                customer_id: Some(customer_id.to_owned()),
                payment_id: None,
            }],
            created_at: Some(now.clone()),
        });
        let (saved_card, card_created) = if save_card {
            let card_id = format!("ccof:sim-ok-pos-{n:010}");
            let note = self.save_card_now(customer_id, &card_id);
            (Some(card_id), Some(note))
        } else {
            (None, None)
        };
        Some(PosSale {
            order_id,
            payment_id,
            saved_card,
            card_created,
        })
    }

    /// A card id for a card to be saved later (`late_card`): the id now, the card when
    /// [`SimState::save_card_now`] is called.
    pub fn next_card_id(&mut self, _customer_id: &str) -> String {
        self.next_id += 1;
        format!("ccof:sim-ok-pos-{:010}", self.next_id)
    }

    /// Saves the card `card_id` for `customer_id` now; returns its `card.created` notification.
    pub fn save_card_now(&mut self, customer_id: &str, card_id: &str) -> String {
        self.add_card(customer_id, card_id, "VISA", true);
        let card = self.cards[self.card_index[card_id]].clone();
        self.next_id += 1;
        serde_json::json!({
            "merchant_id": "SIMMERCHANT",
            "type": "card.created",
            "event_id": format!("sim-event-{}", self.next_id),
            "created_at": rfc3339(Utc::now() + self.clock_offset),
            "data": {"type": "card", "id": card_id, "object": {"card": card}},
        })
        .to_string()
    }
}
