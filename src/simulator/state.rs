//! The simulator's in-memory Square: customers, cards, payments, idempotency records and the
//! decline behaviour of its test cards. Pure state, no HTTP.
//!
//! Test cards (the card id decides what CreatePayment does):
//!
//! | card id starts with | result |
//! | --- | --- |
//! | `ccof:sim-ok-` (or any id without a prefix below) | approved |
//! | `ccof:sim-insufficient-funds-` | soft decline `INSUFFICIENT_FUNDS`, always |
//! | `ccof:sim-generic-decline-` | soft decline `GENERIC_DECLINE`, always |
//! | `ccof:sim-cvv-failure-` | soft decline `CVV_FAILURE`, always |
//! | `ccof:sim-card-expired-` | hard decline `CARD_EXPIRED` |
//! | `ccof:sim-invalid-card-` | hard decline `INVALID_CARD` |
//! | `ccof:sim-decline-first-N-` | `INSUFFICIENT_FUNDS` for the first N distinct keys, then approved |
//! | a card with `enabled: false` | `CARD_NOT_SUPPORTED`-style hard decline (`INVALID_CARD`) |
//!
//! Idempotency follows Square: the same key with the same body replays the first response;
//! the same key with a different body gets `IDEMPOTENCY_KEY_REUSED`.

/// The simulator's maps are keyed by its own ids and keys, never by anything an attacker picks
/// against a production service: a fast hash instead of SipHash, the simulator's largest single
/// function in profiles at full speed.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
use std::sync::Arc;

use chrono::{DateTime, Duration, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::gateway::wire::{self, Card, Customer, Payment};

mod counter;
mod disputes;
mod refunds;

pub use counter::PosSale;
pub use disputes::SimDispute;

/// Decline codes that test-card prefixes map to (lower-case, dashes).
const DECLINE_PREFIXES: &[(&str, &str)] = &[
    ("insufficient-funds-", "INSUFFICIENT_FUNDS"),
    ("generic-decline-", "GENERIC_DECLINE"),
    ("cvv-failure-", "CVV_FAILURE"),
    ("card-expired-", "CARD_EXPIRED"),
    ("invalid-card-", "INVALID_CARD"),
    ("card-declined-", "CARD_DECLINED"),
    ("transaction-limit-", "TRANSACTION_LIMIT"),
];

/// What a card does when charged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Behaviour {
    /// Approve.
    Approve,
    /// Always decline with this code.
    Decline(&'static str),
    /// Decline the first N distinct attempts, then approve.
    DeclineFirst(u32),
}

/// The behaviour a card id asks for.
pub fn behaviour_of(card_id: &str) -> Behaviour {
    let Some(rest) = card_id.strip_prefix("ccof:sim-") else {
        return Behaviour::Approve;
    };
    if let Some(n) = rest.strip_prefix("decline-first-") {
        let digits: String = n.chars().take_while(char::is_ascii_digit).collect();
        return Behaviour::DeclineFirst(digits.parse().unwrap_or(1));
    }
    DECLINE_PREFIXES
        .iter()
        .find(|(p, _)| rest.starts_with(p))
        .map(|(_, code)| Behaviour::Decline(code))
        .unwrap_or(Behaviour::Approve)
}

/// Injected faults; changeable while running (`POST /_sim/faults`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Added to every response, milliseconds.
    pub latency_ms: u64,
    /// The latency varies by up to this much either way (uniformly), milliseconds.
    #[serde(default)]
    pub jitter_ms: u64,
    /// Square's own rate limit: requests beyond this many in one second are answered 429
    /// `RATE_LIMITED` (with `Retry-After: 1`) before doing anything; 0 for none.
    #[serde(default)]
    pub rate_limit_per_sec: u64,
    /// Share of requests answered 500 `INTERNAL_SERVER_ERROR` before doing anything (0-1).
    pub error_5xx_rate: f64,
    /// Share answered 429 `RATE_LIMITED` before doing anything (0-1).
    pub rate_429_rate: f64,
    /// Retry-After seconds sent with 429s (none when absent).
    pub retry_after_secs: Option<u64>,
    /// Share of CreatePayment calls whose payment is taken but whose answer is lost (0-1).
    pub lose_response_rate: f64,
    /// Share of CreatePayment calls answered only after `slow_ms` (payment taken first).
    pub slow_rate: f64,
    /// Delay for slow answers, milliseconds.
    pub slow_ms: u64,
    /// Answer CreatePayment with truncated JSON at this rate (payment taken first).
    pub garbage_rate: f64,
    /// Answer every CreatePayment with the spec's example payment (1000 USD, `reference_id`
    /// "123456", another customer and location), as a stand-in built from the spec does; no
    /// payment is taken.
    pub answer_with_example: bool,
    /// Give every payment taken the same id, as if Square answered two charges with one
    /// payment.
    pub duplicate_payment_ids: bool,
    /// Add an invalid-request error to every answer that took money (an answer paycron must
    /// still read as money taken).
    pub errors_with_payment: bool,
    /// Refunds settle as REJECTED instead of COMPLETED.
    #[serde(default)]
    pub reject_refunds: bool,
}

/// The simulated merchant's set-up.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default)]
pub struct SimConfig {
    /// Customers to seed.
    pub customers: usize,
    /// Approve any `ccof:` card id not on file as if the given customer owned it (benchmarks
    /// with more cards than are worth seeding).
    pub accept_unknown_cards: bool,
    /// RNG seed (fault draws, seeded card mix).
    pub seed: u64,
    /// Require exactly this bearer token; any non-empty token when `None`.
    pub token: Option<String>,
    /// The location's id.
    pub location_id: String,
    /// The location's currency.
    pub currency: String,
    /// ListCustomers page size (Square: up to 100).
    pub customers_page: usize,
    /// ListCards page size (Square: 25).
    pub cards_page: usize,
    /// The mix of seeded cards: `all-ok` or `realistic`.
    pub mix: String,
    /// Faults at start.
    pub faults: Faults,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            customers: 0,
            accept_unknown_cards: false,
            seed: 42,
            token: None,
            location_id: "LSIM0000000001".into(),
            currency: "USD".into(),
            customers_page: 100,
            cards_page: 25,
            mix: "realistic".into(),
            faults: Faults::default(),
        }
    }
}

/// A response the simulator gives: status and JSON body.
#[derive(Clone, Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Body.
    pub body: serde_json::Value,
}

/// A write call's answer as sent: its status and JSON text, written once and shared by the
/// response and every replay of its key.
#[derive(Debug)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The JSON body.
    pub text: String,
}

impl Answer {
    /// The body read back as JSON (for tests and the odd caller that looks inside).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.text).unwrap_or_default()
    }
}

impl From<Reply> for Answer {
    fn from(r: Reply) -> Self {
        Answer {
            status: r.status,
            text: r.body.to_string(),
        }
    }
}

/// The first answer to a key, kept as sent: the raw request (compared byte for byte, and as
/// JSON only when the bytes differ) and the answer, shared on a replay.
struct KeyRecord {
    request: String,
    reply: Arc<Answer>,
}

/// One CreatePayment request as received (for tests to audit retries).
#[derive(Clone, Debug, Serialize)]
pub struct ReceivedRequest {
    /// The key.
    pub idempotency_key: String,
    /// The raw body.
    pub body: String,
}

/// The whole simulated account.
pub struct SimState {
    /// Set-up.
    pub config: SimConfig,
    /// Current faults.
    pub faults: Faults,
    customers: Vec<Customer>,
    customer_index: HashMap<String, usize>,
    cards: Vec<Card>,
    card_index: HashMap<String, usize>,
    cards_by_customer: HashMap<String, Vec<usize>>,
    payments: Vec<Payment>,
    by_id: HashMap<String, usize>,
    refunds: Vec<wire::PaymentRefund>,
    disputes: Vec<SimDispute>,
    orders: Vec<wire::Order>,
    keys: HashMap<String, KeyRecord>,
    attempts_per_card: HashMap<String, u32>,
    requests: Vec<ReceivedRequest>,
    rng: StdRng,
    next_id: u64,
    /// Requests that reached a Square endpoint (before faults), for tests counting retries.
    pub hits: u64,
    /// Requests inside their latency right now, and the most there ever were at once.
    pub in_flight: (u64, u64),
    /// Requests answered 429 because they went over `rate_limit_per_sec`.
    pub rate_limited: u64,
    /// The current one-second window of the rate limit: when it began, and requests in it.
    window: (Option<std::time::Instant>, u64),
    /// ListCustomers calls answered (one per sync-cards run over a single page).
    pub customer_lists: u64,
    /// Offset added to the wall clock for `created_at` (tests that bill "in the future").
    pub clock_offset: Duration,
    /// The application whose Point of Sale web callback is registered (launches with another
    /// client id are refused, as POS does).
    pub application_id: String,
    /// Where to send notifications (`card.created` after a counter sale), signed as Square
    /// signs them: `(notification URL, signature key)`.
    pub notify: Option<(String, String)>,
}

/// The Point of Sale application id the simulator accepts unless told otherwise.
pub const APPLICATION_ID: &str = "sq0idp-paycron-simulator";

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn error(status: u16, category: &str, code: &str, detail: &str, field: Option<&str>) -> Reply {
    let mut e = serde_json::json!({"category": category, "code": code, "detail": detail});
    if let Some(f) = field {
        e["field"] = f.into();
    }
    Reply {
        status,
        body: serde_json::json!({ "errors": [e] }),
    }
}

/// Square's answer to a body that is not JSON.
fn not_json() -> Reply {
    error(
        400,
        "INVALID_REQUEST_ERROR",
        "INVALID_CONTENT_TYPE",
        "Expected a JSON body.",
        None,
    )
}

/// A page cursor (the offset of the page's first item), or Square's INVALID_CURSOR reply.
fn parse_cursor(cursor: Option<&str>) -> Result<usize, Reply> {
    cursor
        .map(str::parse)
        .transpose()
        .map(|v| v.unwrap_or(0))
        .map_err(|_| {
            error(
                400,
                "INVALID_REQUEST_ERROR",
                "INVALID_CURSOR",
                "Invalid cursor.",
                Some("cursor"),
            )
        })
}

impl SimState {
    /// A new account, seeded per `config`.
    pub fn new(config: SimConfig) -> Self {
        let mut s = SimState {
            faults: config.faults.clone(),
            rng: StdRng::seed_from_u64(config.seed),
            config,
            customers: vec![],
            customer_index: HashMap::default(),
            cards: vec![],
            card_index: HashMap::default(),
            cards_by_customer: HashMap::default(),
            payments: vec![],
            by_id: HashMap::default(),
            keys: HashMap::default(),
            attempts_per_card: HashMap::default(),
            requests: vec![],
            next_id: 1,
            hits: 0,
            rate_limited: 0,
            in_flight: (0, 0),
            window: (None, 0),
            customer_lists: 0,
            refunds: Vec::new(),
            disputes: Vec::new(),
            orders: Vec::new(),
            clock_offset: Duration::zero(),
            application_id: APPLICATION_ID.to_owned(),
            notify: None,
        };
        s.seed();
        s
    }

    fn seed(&mut self) {
        let n = self.config.customers;
        let realistic = self.config.mix == "realistic";
        for i in 0..n {
            let id = format!("SIMCUST{i:06}");
            self.customer_index.insert(id.clone(), self.customers.len());
            self.customers.push(Customer {
                id: id.clone(),
                given_name: Some(format!("Customer{i}")),
                family_name: Some("Example".into()),
                email_address: Some(format!("customer{i}@example.com")),
                created_at: Some("2026-01-01T00:00:00.000Z".into()),
            });
            // A deterministic, realistic mix by index: most cards approve; some decline softly
            // and recover, some never recover, some are hard declines (a few with a spare card).
            let kind = if realistic {
                match i % 50 {
                    0..=38 => "ok",
                    39..=41 => "decline-first-1",
                    42 => "decline-first-2",
                    43..=44 => "insufficient-funds",
                    45 => "generic-decline",
                    46..=47 => "card-expired",
                    _ => "invalid-card",
                }
            } else {
                "ok"
            };
            let brand = ["VISA", "MASTERCARD", "AMERICAN_EXPRESS", "DISCOVER"][i % 4];
            self.add_card(&id, &format!("ccof:sim-{kind}-{i:06}"), brand, true);
            if realistic && (i % 50 == 47 || i % 50 == 10) {
                // A spare card: hard declines fall back to it.
                self.add_card(&id, &format!("ccof:sim-ok-{i:06}-b"), "VISA", true);
            }
        }
    }

    /// Adds a customer if missing and a card for it.
    pub fn add_card(&mut self, customer_id: &str, card_id: &str, brand: &str, enabled: bool) {
        if !self.customer_index.contains_key(customer_id) {
            self.customer_index
                .insert(customer_id.to_owned(), self.customers.len());
            self.customers.push(Customer {
                id: customer_id.to_owned(),
                created_at: Some(rfc3339(Utc::now())),
                ..Customer::default()
            });
        }
        let n = self.cards.len();
        self.card_index.insert(card_id.to_owned(), n);
        self.cards_by_customer
            .entry(customer_id.to_owned())
            .or_default()
            .push(n);
        self.cards.push(Card {
            id: Some(card_id.to_owned()),
            card_brand: Some(brand.to_owned()),
            last_4: Some(format!("{:04}", (n * 7919 + 1111) % 10_000)),
            exp_month: Some((n % 12 + 1) as i64),
            exp_year: Some(2030 + (n % 5) as i64),
            customer_id: Some(customer_id.to_owned()),
            enabled: Some(enabled),
            version: Some(1),
            card_type: Some("CREDIT".into()),
        });
    }

    /// A card as Square's JSON shows it (RetrieveCard, DisableCard's answer).
    pub fn card_json(&self, card_id: &str) -> Option<serde_json::Value> {
        let card = self.cards.get(*self.card_index.get(card_id)?)?;
        serde_json::to_value(card).ok()
    }

    /// Disables a card (DisableCard); false for a card it does not hold.
    pub fn disable_card(&mut self, card_id: &str) -> bool {
        match self
            .card_index
            .get(card_id)
            .and_then(|&i| self.cards.get_mut(i))
        {
            Some(c) => {
                c.enabled = Some(false);
                c.version = Some(c.version.unwrap_or(1) + 1);
                true
            }
            None => false,
        }
    }

    /// This request's added latency: the configured latency, moved by up to the jitter either
    /// way.
    pub fn latency(&mut self) -> std::time::Duration {
        let base = self.faults.latency_ms as i64;
        let jitter = self.faults.jitter_ms as i64;
        let moved = if jitter > 0 {
            base + self.rng.random_range(-jitter..=jitter)
        } else {
            base
        };
        std::time::Duration::from_millis(moved.max(0) as u64)
    }

    /// Whether this request goes over the rate limit (counted in one-second windows).
    pub fn over_rate_limit(&mut self) -> bool {
        let limit = self.faults.rate_limit_per_sec;
        if limit == 0 {
            return false;
        }
        let now = std::time::Instant::now();
        match self.window.0 {
            Some(start) if now.duration_since(start) < std::time::Duration::from_secs(1) => {
                self.window.1 += 1;
            }
            _ => self.window = (Some(now), 1),
        }
        let over = self.window.1 > limit;
        self.rate_limited += u64::from(over);
        over
    }

    /// The most requests that were inside their latency at once (how many calls a client
    /// really had open together).
    pub fn max_in_flight(&self) -> u64 {
        self.in_flight.1
    }

    /// Draws a fault with probability `rate`.
    pub fn draw(&mut self, rate: f64) -> bool {
        rate > 0.0 && self.rng.random::<f64>() < rate
    }

    /// Checks the bearer token. `None` when accepted.
    pub fn check_token(&self, header: Option<&str>) -> Option<Reply> {
        let token = header
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or("");
        let ok = match &self.config.token {
            Some(required) => token == required,
            None => !token.is_empty(),
        };
        (!ok).then(|| {
            error(
                401,
                "AUTHENTICATION_ERROR",
                "UNAUTHORIZED",
                "This request could not be authorized.",
                None,
            )
        })
    }

    /// `GET /v2/customers`.
    pub fn list_customers(&self, cursor: Option<&str>) -> Reply {
        let start = match parse_cursor(cursor) {
            Ok(s) => s,
            Err(reply) => return reply,
        };
        let page = self.config.customers_page.max(1);
        let items: Vec<&Customer> = self.customers.iter().skip(start).take(page).collect();
        let mut body = serde_json::json!({ "customers": items });
        if start + page < self.customers.len() {
            body["cursor"] = (start + page).to_string().into();
        }
        if items.is_empty() {
            body = serde_json::json!({});
        }
        Reply { status: 200, body }
    }

    /// `GET /v2/cards`, oldest first.
    pub fn list_cards(
        &self,
        customer_id: Option<&str>,
        cursor: Option<&str>,
        include_disabled: bool,
    ) -> Reply {
        self.list_cards_sorted(customer_id, cursor, include_disabled, false)
    }

    /// `GET /v2/cards` with `sort_order` (cards in creation order; `newest_first` for DESC).
    /// The cursor is an offset into the sorted list, as stable as Square's while no card is
    /// added at the end being walked from.
    pub fn list_cards_sorted(
        &self,
        customer_id: Option<&str>,
        cursor: Option<&str>,
        include_disabled: bool,
        newest_first: bool,
    ) -> Reply {
        let start = match parse_cursor(cursor) {
            Ok(s) => s,
            Err(reply) => return reply,
        };
        let candidates: Box<dyn Iterator<Item = &Card>> = match customer_id {
            Some(id) => Box::new(
                self.cards_by_customer
                    .get(id)
                    .into_iter()
                    .flatten()
                    .filter_map(|&i| self.cards.get(i)),
            ),
            None => Box::new(self.cards.iter()),
        };
        let mut matching: Vec<&Card> = candidates
            .filter(|c| include_disabled || c.enabled == Some(true))
            .collect();
        if newest_first {
            matching.reverse();
        }
        let page = self.config.cards_page.max(1);
        let items: Vec<&&Card> = matching.iter().skip(start).take(page).collect();
        let mut body = serde_json::json!({});
        if !items.is_empty() {
            body["cards"] = serde_json::to_value(&items).unwrap_or_default();
        }
        if start + page < matching.len() {
            body["cursor"] = (start + page).to_string().into();
        }
        Reply { status: 200, body }
    }

    /// Square's idempotency for a write under `slot` (the key, namespaced per endpoint): the
    /// first answer again for the same request, `IDEMPOTENCY_KEY_REUSED` for another; `None`
    /// for a key not seen yet.
    fn replay(&self, slot: &str, raw: &str) -> Option<Arc<Answer>> {
        let rec = self.keys.get(slot)?;
        let same = rec.request == raw || {
            let parse = |t: &str| serde_json::from_str::<serde_json::Value>(t).ok();
            parse(&rec.request).is_some_and(|first| parse(raw) == Some(first))
        };
        Some(if same {
            rec.reply.clone()
        } else {
            Arc::new(
                error(
                    400,
                    "INVALID_REQUEST_ERROR",
                    "IDEMPOTENCY_KEY_REUSED",
                    "The idempotency key can only be retried with the same request data.",
                    Some("idempotency_key"),
                )
                .into(),
            )
        })
    }

    /// Keeps `reply` as the answer to `slot` for later replays, and returns it.
    fn remember(&mut self, slot: String, raw: &str, reply: Answer) -> Arc<Answer> {
        let reply = Arc::new(reply);
        self.keys.insert(
            slot,
            KeyRecord {
                request: raw.to_owned(),
                reply: reply.clone(),
            },
        );
        reply
    }

    /// `POST /v2/payments`: validation, idempotency, the card's behaviour.
    pub fn create_payment(&mut self, raw: &str) -> Arc<Answer> {
        // Read straight into the request type; only a body that does not fit it is read as
        // plain JSON, to find its key and say what is wrong (a tree per payment, and a deep
        // copy of each answer, were most of the simulator's own time at full speed).
        let typed = serde_json::from_str::<wire::CreatePaymentRequest>(raw);
        let key = match &typed {
            Ok(req) => req.idempotency_key.clone(),
            Err(_) => match serde_json::from_str::<serde_json::Value>(raw) {
                Ok(value) => value
                    .get("idempotency_key")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_owned(),
                Err(_) => return Arc::new(not_json().into()),
            },
        };
        self.requests.push(ReceivedRequest {
            idempotency_key: key.clone(),
            body: raw.to_owned(),
        });
        if key.is_empty() {
            return Arc::new(Answer::from(error(
                400,
                "INVALID_REQUEST_ERROR",
                "MISSING_REQUIRED_PARAMETER",
                "Missing idempotency_key.",
                Some("idempotency_key"),
            )));
        }
        if key.chars().count() > 45 {
            return Arc::new(Answer::from(error(
                400,
                "INVALID_REQUEST_ERROR",
                "VALUE_TOO_LONG",
                "Field must not be greater than 45 length",
                Some("idempotency_key"),
            )));
        }
        if let Some(answer) = self.replay(&key, raw) {
            return answer;
        }
        let (reply, keep) = self.take_payment(typed);
        // Square keeps the answer to a key, whatever it was, unless the request was malformed.
        if keep {
            return self.remember(key, raw, reply);
        }
        Arc::new(reply)
    }

    /// The answer to a CreatePayment, and whether Square keeps it for the key (anything but a
    /// malformed request).
    fn take_payment(
        &mut self,
        req: serde_json::Result<wire::CreatePaymentRequest>,
    ) -> (Answer, bool) {
        let kept = |reply: Reply| {
            let keep = reply.status == 200
                || reply.body["errors"][0]["category"] == "PAYMENT_METHOD_ERROR";
            (Answer::from(reply), keep)
        };
        if self.faults.answer_with_example {
            return kept(example_reply());
        }
        let req = match req {
            Ok(r) => r,
            Err(e) => {
                return kept(error(
                    400,
                    "INVALID_REQUEST_ERROR",
                    "BAD_REQUEST",
                    &e.to_string(),
                    None,
                ));
            }
        };
        let (card, customer) = match self.validate(&req) {
            Ok(found) => found,
            Err(reply) => return kept(reply),
        };
        let (payment, decline) = self.make_payment(&req, &card, &customer);
        let answer = match decline {
            // The common case is written straight from the payment, not through a JSON tree.
            None if !self.faults.errors_with_payment => {
                #[derive(Serialize)]
                struct Taken<'a> {
                    payment: &'a Payment,
                }
                let text = serde_json::to_string(&Taken { payment: &payment }).unwrap_or_default();
                (Answer { status: 200, text }, true)
            }
            _ => kept(self.payment_reply(&payment, decline)),
        };
        self.by_id.insert(payment.id.clone(), self.payments.len());
        self.payments.push(payment);
        answer
    }

    /// Square's request checks, in its order: the card on file and its customer, or the error
    /// Square answers.
    ///
    /// Long on purpose: Square's checks of a CreatePayment, in Square's order, one error each.
    fn validate(&self, req: &wire::CreatePaymentRequest) -> Result<(Card, String), Reply> {
        if req
            .reference_id
            .as_ref()
            .is_some_and(|r| r.chars().count() > 40)
        {
            return Err(error(
                400,
                "INVALID_REQUEST_ERROR",
                "VALUE_TOO_LONG",
                "Field must not be greater than 40 length",
                Some("reference_id"),
            ));
        }
        if req.amount_money.amount <= 0 {
            return Err(error(
                400,
                "INVALID_REQUEST_ERROR",
                "VALUE_TOO_LOW",
                "`amount_money.amount` must be greater than 0.",
                Some("amount_money.amount"),
            ));
        }
        if req.amount_money.currency != self.config.currency {
            return Err(error(
                400,
                "INVALID_REQUEST_ERROR",
                "INVALID_VALUE",
                "The currency does not match the location's currency.",
                Some("amount_money.currency"),
            ));
        }
        if let Some(loc) = &req.location_id
            && loc != &self.config.location_id
        {
            return Err(error(
                400,
                "INVALID_REQUEST_ERROR",
                "NOT_FOUND",
                "Location not found.",
                Some("location_id"),
            ));
        }
        let known = self
            .card_index
            .get(&req.source_id)
            .map(|&i| self.cards[i].clone());
        let card = known.or_else(|| {
            (self.config.accept_unknown_cards && req.source_id.starts_with("ccof:")).then(|| Card {
                id: Some(req.source_id.clone()),
                card_brand: Some("VISA".into()),
                last_4: Some("1111".into()),
                customer_id: req.customer_id.clone(),
                enabled: Some(true),
                ..Card::default()
            })
        });
        let Some(card) = card else {
            return Err(error(
                400,
                "INVALID_REQUEST_ERROR",
                "NOT_FOUND",
                "Card not found.",
                Some("source_id"),
            ));
        };
        let Some(customer) = req.customer_id.as_deref() else {
            return Err(error(
                400,
                "INVALID_REQUEST_ERROR",
                "MISSING_REQUIRED_PARAMETER",
                "customer_id is required for a card on file.",
                Some("customer_id"),
            ));
        };
        if card.customer_id.as_deref() != Some(customer) {
            return Err(error(
                400,
                "INVALID_REQUEST_ERROR",
                "INVALID_VALUE",
                "The card does not belong to the customer.",
                Some("customer_id"),
            ));
        }
        Ok((card, customer.to_owned()))
    }

    /// The payment Square makes for a valid request (declined by the card's behaviour), and
    /// the decline code if any.
    fn make_payment(
        &mut self,
        req: &wire::CreatePaymentRequest,
        card: &Card,
        customer: &str,
    ) -> (Payment, Option<&'static str>) {
        let seen = self
            .attempts_per_card
            .entry(req.source_id.clone())
            .or_insert(0);
        *seen += 1;
        let attempt = *seen;
        let decline = if card.enabled != Some(true) {
            Some("INVALID_CARD")
        } else {
            match behaviour_of(&req.source_id) {
                Behaviour::Approve => None,
                Behaviour::Decline(code) => Some(code),
                Behaviour::DeclineFirst(n) if attempt <= n => Some("INSUFFICIENT_FUNDS"),
                Behaviour::DeclineFirst(_) => None,
            }
        };
        let now = Utc::now() + self.clock_offset;
        let id = if self.faults.duplicate_payment_ids {
            "SIMPAYDUPLICATE".to_owned()
        } else {
            format!("SIMPAY{:012}", self.next_id)
        };
        self.next_id += 1;
        let status = if decline.is_some() {
            "FAILED"
        } else {
            "COMPLETED"
        };
        let payment = Payment {
            id: id.clone(),
            created_at: rfc3339(now),
            updated_at: rfc3339(now),
            amount_money: req.amount_money.clone(),
            total_money: Some(req.amount_money.clone()),
            status: status.into(),
            source_type: Some("CARD".into()),
            card_details: Some(wire::CardPaymentDetails {
                status: Some(
                    if decline.is_some() {
                        "FAILED"
                    } else {
                        "CAPTURED"
                    }
                    .into(),
                ),
                card: Some(Card {
                    id: Some(req.source_id.clone()),
                    card_brand: card.card_brand.clone(),
                    last_4: card.last_4.clone(),
                    exp_month: card.exp_month,
                    exp_year: card.exp_year,
                    ..Card::default()
                }),
                entry_method: Some("ON_FILE".into()),
                errors: vec![],
            }),
            location_id: Some(self.config.location_id.clone()),
            customer_id: Some(customer.to_owned()),
            reference_id: req.reference_id.clone(),
            note: req.note.clone(),
            receipt_url: decline
                .is_none()
                .then(|| format!("https://squareup.com/receipt/preview/{id}")),
        };
        (payment, decline)
    }

    /// The answer to a payment made: the payment, or the decline with it.
    fn payment_reply(&self, payment: &Payment, decline: Option<&'static str>) -> Reply {
        match decline {
            None if self.faults.errors_with_payment => Reply {
                status: 200,
                body: serde_json::json!({
                    "payment": payment,
                    "errors": [{"category": "INVALID_REQUEST_ERROR", "code": "BAD_REQUEST",
                                "detail": "A stray error beside a completed payment (fault)."}],
                }),
            },
            None => Reply {
                status: 200,
                body: serde_json::json!({ "payment": payment }),
            },
            Some(code) => {
                let mut r = error(
                    402,
                    "PAYMENT_METHOD_ERROR",
                    code,
                    &format!("Authorization error: '{code}'"),
                    None,
                );
                r.body["payment"] = serde_json::to_value(payment).unwrap_or_default();
                r
            }
        }
    }

    /// `GET /v2/payments` over `[begin, end)`, oldest first, 100 a page.
    pub fn list_payments(
        &self,
        begin: Option<&str>,
        end: Option<&str>,
        cursor: Option<&str>,
        limit: Option<usize>,
    ) -> Reply {
        let parse = |s: Option<&str>| s.map(DateTime::parse_from_rfc3339).transpose();
        let (Ok(b), Ok(e)) = (parse(begin), parse(end)) else {
            return error(
                400,
                "INVALID_REQUEST_ERROR",
                "INVALID_TIME",
                "Invalid time.",
                Some("begin_time"),
            );
        };
        let start: usize = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
        let page = limit.unwrap_or(100).clamp(1, 100);
        let matching: Vec<&Payment> = self
            .payments
            .iter()
            .filter(|p| {
                let t = DateTime::parse_from_rfc3339(&p.created_at).ok();
                b.is_none_or(|b| t.is_some_and(|t| t >= b))
                    && e.is_none_or(|e| t.is_some_and(|t| t < e))
            })
            .collect();
        let items: Vec<&&Payment> = matching.iter().skip(start).take(page).collect();
        let mut body = serde_json::json!({});
        if !items.is_empty() {
            body["payments"] = serde_json::to_value(&items).unwrap_or_default();
        }
        if start + page < matching.len() {
            body["cursor"] = (start + page).to_string().into();
        }
        Reply { status: 200, body }
    }

    /// `GET /v2/payments/{id}`.
    pub fn get_payment(&self, id: &str) -> Reply {
        match self.by_id.get(id) {
            Some(&i) => Reply {
                status: 200,
                body: serde_json::json!({ "payment": self.payments[i] }),
            },
            None => error(
                404,
                "INVALID_REQUEST_ERROR",
                "NOT_FOUND",
                "Payment not found.",
                None,
            ),
        }
    }

    /// Every payment taken (COMPLETED), for audits.
    pub fn completed(&self) -> Vec<Payment> {
        self.payments
            .iter()
            .filter(|p| p.status == "COMPLETED")
            .cloned()
            .collect()
    }

    /// Every payment, any status.
    pub fn all_payments(&self) -> &[Payment] {
        &self.payments
    }

    /// Every CreatePayment request received.
    pub fn requests(&self) -> &[ReceivedRequest] {
        &self.requests
    }

    /// An error reply in Square's shape.
    pub fn error_reply(status: u16, category: &str, code: &str, detail: &str) -> Reply {
        error(status, category, code, detail, None)
    }
}

/// Square's own example CreatePayment answer (a payment for another charge entirely).
fn example_reply() -> Reply {
    Reply {
        status: 200,
        body: serde_json::json!({ "payment": {
            "id": "GQTFp1ZlXdpoW4o6eGiZhbjosiDFf",
            "created_at": "2021-10-13T19:34:33.524Z",
            "updated_at": "2021-10-13T19:34:34.339Z",
            "amount_money": { "amount": 1000, "currency": "USD" },
            "total_money": { "amount": 1000, "currency": "USD" },
            "status": "COMPLETED",
            "source_type": "CARD",
            "location_id": "L88917AVBK2S5",
            "customer_id": "W92WH6P11H4Z77CTET0RNTGFW8",
            "reference_id": "123456",
            "note": "Brief Description"
        }}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_customers_are_listed_once_with_their_cards() {
        let s = SimState::new(SimConfig {
            customers: 120,
            ..SimConfig::default()
        });
        let page = s.list_customers(None);
        let next = s.list_customers(page.body["cursor"].as_str());
        let n = page.body["customers"].as_array().unwrap().len()
            + next.body["customers"].as_array().unwrap().len();
        assert_eq!(n, 120);
        assert!(next.body.get("cursor").is_none());
        let cards = s.list_cards(Some("SIMCUST000010"), None, true);
        assert_eq!(
            cards.body["cards"].as_array().unwrap().len(),
            2,
            "customer 10 has a spare card"
        );
    }

    #[test]
    fn behaviours() {
        assert_eq!(behaviour_of("ccof:sim-ok-1"), Behaviour::Approve);
        assert_eq!(behaviour_of("ccof:abc"), Behaviour::Approve);
        assert_eq!(
            behaviour_of("ccof:sim-card-expired-1"),
            Behaviour::Decline("CARD_EXPIRED")
        );
        assert_eq!(
            behaviour_of("ccof:sim-decline-first-3-x"),
            Behaviour::DeclineFirst(3)
        );
    }
}
