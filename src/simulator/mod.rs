//! A Square-compatible simulator: the HTTP endpoints paycron uses (ListCustomers, ListCards,
//! DisableCard, CreatePayment, ListPayments, GetPayment, RefundPayment, GetPaymentRefund,
//! ListPaymentRefunds) with Square's JSON shapes, validation and idempotency, test cards that
//! decline on purpose, refunds that settle asynchronously, and fault injection (latency, 5xx,
//! 429 with or without Retry-After, answers lost after the payment or refund was made, slow and
//! truncated answers).
//!
//! It runs in-process (demo, tests, benchmark) or as `paycron simulator --port P`. Admin
//! endpoints under `/_sim/` let tests audit every payment taken and change faults while it
//! runs:
//! - `GET /_sim/payments`: every COMPLETED payment; `GET /_sim/payments/all`: any status
//! - `GET /_sim/requests`: every CreatePayment request received, raw
//! - `POST /_sim/faults`: replace the faults (JSON, see [`state::Faults`])
//! - `POST /_sim/cards`: add a card `{customer_id, card_id, card_brand?, enabled?}`
//! - `POST /_sim/disputes {payment_id}`, `POST /_sim/disputes/{id} {state}`: open or move a
//!   dispute; the answer carries the notification Square would send (`dispute.created`,
//!   `dispute.state.updated`), to sign and POST to paycron's receiver
//! - `GET /_sim/refunds/{id}/notification`: the `refund.updated` notification of a refund
//! - `GET /_sim/pos/launch?url=<launch URL>&outcome=…`: Square Point of Sale completing a
//!   counter enrollment's launch as the app would — the sale (order + payment for the customer),
//!   the card saved after checkout with its signed `card.created` sent to the notification URL
//!   set in [`SimState::notify`], and a redirect of the browser to the callback with the
//!   platform's parameters. `outcome`: `ok` (default), `canceled`, `no_card` (sale, no card
//!   saved), `late_card` (the card saved `late_ms` later, default 1500), `lost_callback` (sale
//!   and card, but the app never returns to the browser)

pub mod pos;
pub mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use state::Reply;
pub use state::{Faults, SimConfig, SimState};

type Shared = Arc<Mutex<SimState>>;

fn lock(s: &Shared) -> MutexGuard<'_, SimState> {
    // A panic while holding the lock cannot leave the maps half-updated in a way that matters
    // to a test double; keep serving.
    s.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running simulator.
pub struct Simulator {
    addr: SocketAddr,
    state: Shared,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Starts a simulator on `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// The bind error.
    pub async fn start(config: SimConfig, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let state: Shared = Arc::new(Mutex::new(SimState::new(config)));
        let stop = CancellationToken::new();
        let app = router(state.clone());
        let token = stop.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async move { token.cancelled().await })
                .await;
        });
        Ok(Simulator {
            addr,
            state,
            stop,
            task,
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its base URL, for `SQUARE_BASE_URL`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Runs `f` on the state (to audit payments, change faults, add cards).
    pub fn with<R>(&self, f: impl FnOnce(&mut SimState) -> R) -> R {
        f(&mut lock(&self.state))
    }

    /// Stops serving and waits for the server task.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

fn json_reply(r: Reply) -> Response {
    text_reply(r.status, r.body.to_string())
}

fn text_reply(status: u16, text: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, [(header::CONTENT_TYPE, "application/json")], text).into_response()
}

fn router(state: Shared) -> Router {
    Router::new()
        .route("/v2/customers", get(list_customers).post(create_customer))
        .route("/v2/customers/{customer_id}", get(retrieve_customer))
        .route("/v2/orders/{order_id}", get(retrieve_order))
        .route("/v2/cards", get(list_cards))
        .route("/v2/cards/{card_id}/disable", post(disable_card))
        .route("/v2/payments", post(create_payment).get(list_payments))
        .route("/v2/payments/{payment_id}", get(get_payment))
        .route("/v2/refunds", post(refund_payment).get(list_refunds))
        .route("/v2/refunds/{refund_id}", get(get_refund))
        .route("/_sim/payments", get(admin_payments))
        .route("/_sim/payments/all", get(admin_all_payments))
        .route("/_sim/requests", get(admin_requests))
        .route("/_sim/faults", post(admin_faults).get(admin_get_faults))
        .route("/_sim/stats", get(admin_stats))
        .route("/_sim/cards", post(admin_add_card))
        .route("/_sim/disputes", post(admin_open_dispute))
        .route("/_sim/disputes/{dispute_id}", post(admin_move_dispute))
        .route(
            "/_sim/refunds/{refund_id}/notification",
            get(admin_refund_notification),
        )
        .route("/_sim/pos/launch", get(pos_launch))
        .with_state(state)
}

/// Token check, latency and the pre-processing faults (5xx, 429) shared by Square endpoints.
async fn gate(state: &Shared, headers: &HeaderMap) -> Option<Response> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let (denied, faults, latency, limited) = {
        let mut s = lock(state);
        s.hits += 1;
        let denied = s.check_token(auth);
        let limited = denied.is_none() && s.over_rate_limit();
        (denied, s.faults.clone(), s.latency(), limited)
    };
    if let Some(r) = denied {
        return Some(json_reply(r));
    }
    if limited {
        let mut resp = json_reply(SimState::error_reply(
            429,
            "RATE_LIMIT_ERROR",
            "RATE_LIMITED",
            "Rate limited.",
        ));
        resp.headers_mut()
            .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        return Some(resp);
    }
    if !latency.is_zero() {
        {
            let mut s = lock(state);
            s.in_flight.0 += 1;
            s.in_flight.1 = s.in_flight.1.max(s.in_flight.0);
        }
        tokio::time::sleep(latency).await;
        lock(state).in_flight.0 -= 1;
    }
    let (five, four) = {
        let mut s = lock(state);
        let five = s.draw(faults.error_5xx_rate);
        let four = !five && s.draw(faults.rate_429_rate);
        (five, four)
    };
    if five {
        return Some(json_reply(SimState::error_reply(
            500,
            "API_ERROR",
            "INTERNAL_SERVER_ERROR",
            "An internal error occurred.",
        )));
    }
    if four {
        let mut resp = json_reply(SimState::error_reply(
            429,
            "RATE_LIMIT_ERROR",
            "RATE_LIMITED",
            "Rate limited.",
        ));
        if let Some(secs) = faults.retry_after_secs
            && let Ok(v) = secs.to_string().parse()
        {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return Some(resp);
    }
    None
}

async fn create_customer(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    let raw = String::from_utf8_lossy(&body);
    answer_with_faults(&state, |s| s.create_customer(&raw)).await
}

async fn retrieve_customer(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(customer_id): Path<String>,
) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    json_reply(lock(&state).retrieve_customer(&customer_id))
}

async fn retrieve_order(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(order_id): Path<String>,
) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    json_reply(lock(&state).retrieve_order(&order_id))
}

async fn get_refund(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(refund_id): Path<String>,
) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    json_reply(lock(&state).get_refund(&refund_id))
}

async fn list_refunds(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    json_reply(lock(&state).list_refunds(
        q.get("begin_time").map(String::as_str),
        q.get("end_time").map(String::as_str),
        q.get("cursor").map(String::as_str),
    ))
}

async fn list_customers(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    let mut s = lock(&state);
    s.customer_lists += 1;
    json_reply(s.list_customers(q.get("cursor").map(String::as_str)))
}

async fn list_cards(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    let include_disabled = q.get("include_disabled").is_some_and(|v| v == "true");
    let newest_first = match q.get("sort_order").map(String::as_str) {
        None | Some("ASC") => false,
        Some("DESC") => true,
        Some(other) => {
            return json_reply(SimState::error_reply(
                400,
                "INVALID_REQUEST_ERROR",
                "INVALID_ENUM_VALUE",
                &format!("Expected sort_order to be one of ASC, DESC; got {other:?}."),
            ));
        }
    };
    json_reply(lock(&state).list_cards_sorted(
        q.get("customer_id").map(String::as_str),
        q.get("cursor").map(String::as_str),
        include_disabled,
        newest_first,
    ))
}

async fn disable_card(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(card_id): Path<String>,
) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    let mut s = lock(&state);
    if !s.disable_card(&card_id) {
        return json_reply(SimState::error_reply(
            404,
            "INVALID_REQUEST_ERROR",
            "NOT_FOUND",
            "Card not found.",
        ));
    }
    let card = s.card_json(&card_id).unwrap_or_default();
    json_reply(Reply {
        status: 200,
        body: serde_json::json!({ "card": card }),
    })
}

async fn create_payment(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    let raw = String::from_utf8_lossy(&body);
    answer_with_faults(&state, |s| s.create_payment(&raw)).await
}

async fn refund_payment(State(state): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    let raw = String::from_utf8_lossy(&body);
    answer_with_faults(&state, |s| s.refund_payment(&raw)).await
}

/// Does what a write call asks (the payment or refund is made), then applies the faults that
/// strike after the work is done: a lost answer, a slow one, half an answer.
async fn answer_with_faults(
    state: &Shared,
    work: impl FnOnce(&mut SimState) -> std::sync::Arc<state::Answer>,
) -> Response {
    let (reply, lose, slow, garbage, faults) = {
        let mut s = lock(state);
        let reply = work(&mut s);
        let f = s.faults.clone();
        let lose = s.draw(f.lose_response_rate);
        let slow = !lose && s.draw(f.slow_rate);
        let garbage = !lose && !slow && s.draw(f.garbage_rate);
        (reply, lose, slow, garbage, f)
    };
    if lose {
        // The work is done; the answer never arrives: the connection breaks mid-response.
        let stream = futures::stream::once(async {
            Err::<Bytes, std::io::Error>(std::io::Error::other("response lost"))
        });
        return Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    if slow {
        tokio::time::sleep(Duration::from_millis(faults.slow_ms)).await;
    }
    if garbage {
        let cut = reply.text[..reply.text.len() / 2].to_owned();
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            cut,
        )
            .into_response();
    }
    text_reply(reply.status, reply.text.clone())
}

async fn list_payments(
    State(state): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    json_reply(lock(&state).list_payments(
        q.get("begin_time").map(String::as_str),
        q.get("end_time").map(String::as_str),
        q.get("cursor").map(String::as_str),
        q.get("limit").and_then(|l| l.parse().ok()),
    ))
}

async fn get_payment(
    State(state): State<Shared>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Some(r) = gate(&state, &headers).await {
        return r;
    }
    json_reply(lock(&state).get_payment(&id))
}

async fn admin_payments(State(state): State<Shared>) -> Response {
    let payments = lock(&state).completed();
    json_reply(Reply {
        status: 200,
        body: serde_json::json!({ "payments": payments }),
    })
}

async fn admin_all_payments(State(state): State<Shared>) -> Response {
    let payments = lock(&state).all_payments().to_vec();
    json_reply(Reply {
        status: 200,
        body: serde_json::json!({ "payments": payments }),
    })
}

async fn admin_requests(State(state): State<Shared>) -> Response {
    let requests = lock(&state).requests().to_vec();
    json_reply(Reply {
        status: 200,
        body: serde_json::json!({ "requests": requests }),
    })
}

async fn admin_faults(State(state): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<Faults>(&body) {
        Ok(f) => {
            lock(&state).faults = f.clone();
            json_reply(Reply {
                status: 200,
                body: serde_json::to_value(f).unwrap_or_default(),
            })
        }
        Err(e) => json_reply(SimState::error_reply(
            400,
            "INVALID_REQUEST_ERROR",
            "BAD_REQUEST",
            &e.to_string(),
        )),
    }
}

/// What the simulator counted: requests, and those refused by its rate limit.
async fn admin_stats(State(state): State<Shared>) -> Response {
    let s = lock(&state);
    json_reply(Reply {
        status: 200,
        body: serde_json::json!({
            "requests": s.hits,
            "rate_limited": s.rate_limited,
            "max_in_flight": s.max_in_flight(),
            "payments": s.completed().len(),
        }),
    })
}

async fn admin_get_faults(State(state): State<Shared>) -> Response {
    let f = lock(&state).faults.clone();
    json_reply(Reply {
        status: 200,
        body: serde_json::to_value(f).unwrap_or_default(),
    })
}

#[derive(Deserialize)]
struct NewCard {
    customer_id: String,
    card_id: String,
    #[serde(default)]
    card_brand: Option<String>,
    #[serde(default)]
    enabled: Option<bool>,
}

/// `POST /_sim/disputes {"payment_id": ...}`: opens a dispute; answers its id and the
/// `dispute.created` notification Square would send (sign and POST it to paycron's receiver).
async fn admin_open_dispute(State(state): State<Shared>, body: Bytes) -> Response {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let payment = v["payment_id"].as_str().unwrap_or("");
    match lock(&state).open_dispute(payment) {
        Some((id, note)) => json_reply(Reply {
            status: 200,
            body: serde_json::json!({"dispute_id": id, "notification": note}),
        }),
        None => json_reply(SimState::error_reply(
            404,
            "INVALID_REQUEST_ERROR",
            "NOT_FOUND",
            "Payment not found.",
        )),
    }
}

/// `POST /_sim/disputes/{id} {"state": "WON"}`: moves a dispute; answers the
/// `dispute.state.updated` notification.
async fn admin_move_dispute(
    State(state): State<Shared>,
    Path(dispute_id): Path<String>,
    body: Bytes,
) -> Response {
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let to = v["state"].as_str().unwrap_or("");
    match lock(&state).move_dispute(&dispute_id, to) {
        Some(note) if !to.is_empty() => json_reply(Reply {
            status: 200,
            body: serde_json::json!({"notification": note}),
        }),
        _ => json_reply(SimState::error_reply(
            404,
            "INVALID_REQUEST_ERROR",
            "NOT_FOUND",
            "Dispute not found, or no state given.",
        )),
    }
}

/// `GET /_sim/refunds/{id}/notification`: the `refund.updated` notification for a refund
/// as it stands (settled first, as reading does).
async fn admin_refund_notification(
    State(state): State<Shared>,
    Path(refund_id): Path<String>,
) -> Response {
    let mut s = lock(&state);
    s.settle_refunds();
    match s.refund_notification(&refund_id) {
        Some(note) => json_reply(Reply {
            status: 200,
            body: serde_json::json!({"notification": note}),
        }),
        None => json_reply(SimState::error_reply(
            404,
            "INVALID_REQUEST_ERROR",
            "NOT_FOUND",
            "Refund not found.",
        )),
    }
}

async fn admin_add_card(State(state): State<Shared>, body: Bytes) -> Response {
    match serde_json::from_slice::<NewCard>(&body) {
        Ok(c) => {
            lock(&state).add_card(
                &c.customer_id,
                &c.card_id,
                c.card_brand.as_deref().unwrap_or("VISA"),
                c.enabled.unwrap_or(true),
            );
            json_reply(Reply {
                status: 200,
                body: serde_json::json!({}),
            })
        }
        Err(e) => json_reply(SimState::error_reply(
            400,
            "INVALID_REQUEST_ERROR",
            "BAD_REQUEST",
            &e.to_string(),
        )),
    }
}

/// Signs and sends a notification as Square does (`x-square-hmacsha256-signature`: base64
/// HMAC-SHA256 of the notification URL and the body). Best effort, like a webhook.
async fn notify(target: Option<(String, String)>, body: String) {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let Some((url, key)) = target else { return };
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key.as_bytes()) else {
        return;
    };
    mac.update(url.as_bytes());
    mac.update(body.as_bytes());
    let signature = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    let _ = reqwest::Client::new()
        .post(&url)
        .header("content-type", "application/json")
        .header("x-square-hmacsha256-signature", signature)
        .body(body)
        .send()
        .await;
}

/// `GET /_sim/pos/launch`: Square Point of Sale completing a launch (see the module doc).
async fn pos_launch(
    State(state): State<Shared>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    use pos::PosAnswer;
    let refuse = |why: String| {
        (
            StatusCode::BAD_REQUEST,
            format!("Square Point of Sale cannot open this link: {why}\n"),
        )
            .into_response()
    };
    let Some(url) = q.get("url") else {
        return refuse("no url parameter".into());
    };
    let req = match pos::parse_launch(url) {
        Ok(r) => r,
        Err(why) => return refuse(why),
    };
    let outcome = q.get("outcome").map_or("ok", String::as_str);
    let late_ms: u64 = q
        .get("late_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let (answer, note, target) = {
        let mut st = lock(&state);
        if req.client_id != st.application_id {
            return refuse(format!(
                "client id {} is not the registered application",
                req.client_id
            ));
        }
        let supported = match req.device {
            pos::Device::Ios => req.version == "1.3",
            pos::Device::Android => req.version == "v2.0" || req.version == "v2.1",
        };
        let card_only = req.tender_types.iter().all(|t| t.contains("CARD"));
        let answer_error = if !supported {
            Some("unsupported_api_version")
        } else if outcome == "canceled" {
            Some("payment_canceled")
        } else if req.currency != st.config.currency {
            Some("currency_code_mismatch")
        } else if req
            .location_id
            .as_deref()
            .is_some_and(|l| l != st.config.location_id)
        {
            Some("location_id_mismatch")
        } else if !card_only || req.amount < 1 {
            Some("invalid_tender_type")
        } else {
            None
        };
        let customer = req.customer_id.clone().unwrap_or_default();
        let sale = match answer_error {
            Some(_) => None,
            None => st.pos_sale(
                &customer,
                req.amount,
                &req.currency,
                outcome != "no_card" && outcome != "late_card",
            ),
        };
        match (answer_error, sale) {
            (Some(code), _) => (PosAnswer::Error(code), None, None),
            (None, None) => (PosAnswer::Error("invalid_customer_id"), None, None),
            (None, Some(sale)) => {
                let late = if outcome == "late_card" {
                    Some(st.next_card_id(&customer))
                } else {
                    None
                };
                (
                    PosAnswer::Sale {
                        order_id: sale.order_id.clone(),
                        client_id: format!("CLIENT-{}", sale.payment_id),
                    },
                    sale.card_created.or(late),
                    st.notify.clone(),
                )
            }
        }
    };
    if let Some(note) = note {
        if outcome == "late_card" {
            // The customer saves the card a little later: the card appears then.
            let state = state.clone();
            let customer = req.customer_id.clone().unwrap_or_default();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(late_ms)).await;
                let body = lock(&state).save_card_now(&customer, &note);
                notify(target, body).await;
            });
        } else {
            notify(target, note).await;
        }
    }
    if outcome == "lost_callback" {
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<!doctype html><title>Square Point of Sale</title><p>Sale complete. The app did not return to the browser.</p>",
        )
            .into_response();
    }
    (
        StatusCode::FOUND,
        [(header::LOCATION, pos::callback(&req, &answer))],
    )
        .into_response()
}
