//! The Square client: CreatePayment, ListCustomers, ListCards, ListPayments and GetPayment over
//! reqwest with rustls.
//!
//! Invariants:
//! - A retry re-sends the *same* bytes under the *same* idempotency key, so Square can only
//!   ever take one payment for it.
//! - Classification reads `errors[].category`/`code` (see `domain::decline`), never the HTTP
//!   status, which Square does not document for declines.
//! - Transient failures (connection errors, timeouts, 5xx, 429, `TEMPORARY_ERROR`) back off
//!   exponentially with jitter (`backon`), honour `Retry-After` when present, and stop at a
//!   deadline. A try that may have reached Square makes the final outcome `Unknown`, never a
//!   failure.
//! - The access token lives in a `SecretString`; it is exposed only to build the header.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;

mod counter;
mod refunds;

use super::wire::{self, PaymentResponse};
use super::{
    GatewayError, ListOrder, NewCustomer, Page, PaymentGateway, PaymentOutcome, PreparedPayment,
    PreparedRefund, ProviderCard, ProviderCustomer, ProviderOrder, RefundOutcome, Result,
};
use crate::config::SquareConfig;
use crate::domain::answer::ProviderPayment;
use crate::domain::decline::{ErrorClass, SquareError, decisive};
use crate::domain::refund::ProviderRefund;

/// Square's CreatePayment/List* client.
pub struct SquareClient {
    http: reqwest::Client,
    base_url: String,
    token: SecretString,
    version: String,
    location_id: Option<String>,
    deadline: Duration,
    limiter: DefaultDirectRateLimiter,
    /// The headers every call sends, and CreatePayment's URL, built once: checking the header
    /// values and parsing the URL again for every charge showed in profiles at full speed.
    /// `None` when a value cannot be used as is; each request then builds its own and fails
    /// the way it always did.
    headers: Option<reqwest::header::HeaderMap>,
    payments_url: Option<reqwest::Url>,
}

impl std::fmt::Debug for SquareClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SquareClient")
            .field("base_url", &self.base_url)
            .field("token", &"[redacted]")
            .field("version", &self.version)
            .finish()
    }
}

enum Try {
    Done(PaymentOutcome),
    Again {
        reason: String,
        retry_after: Option<Duration>,
        maybe_sent: bool,
    },
}

fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let v = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let msg = inner.to_string();
        if !s.contains(&msg) {
            s.push_str(": ");
            s.push_str(&msg);
        }
        src = inner.source();
    }
    s
}

impl SquareClient {
    /// Builds a client from configuration.
    ///
    /// # Errors
    /// [`GatewayError::Config`] when `SQUARE_ACCESS_TOKEN` is missing or the HTTP client cannot
    /// be built.
    pub fn new(cfg: &SquareConfig) -> Result<Self> {
        let token = cfg.access_token.clone().ok_or_else(|| {
            GatewayError::Config(
                "configuration: SQUARE_ACCESS_TOKEN is not set (or SQUARE_ACCESS_TOKEN_FILE): commands that talk to Square need it"
                    .into(),
            )
        })?;
        let http = reqwest::Client::builder()
            .connect_timeout(cfg.connect_timeout)
            .timeout(cfg.request_timeout)
            .pool_max_idle_per_host(256)
            .user_agent(concat!("paycron/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                GatewayError::Config(format!("cannot build the HTTP client: {}", error_chain(&e)))
            })?;
        let per_sec = std::num::NonZeroU32::new(cfg.rate_limit_per_sec.max(1))
            .unwrap_or(std::num::NonZeroU32::MIN);
        let base_url = cfg.base_url();
        let headers = Self::fixed_headers(&token, &cfg.version);
        let payments_url = reqwest::Url::parse(&format!("{base_url}/v2/payments")).ok();
        Ok(SquareClient {
            http,
            headers,
            payments_url,
            base_url,
            token,
            version: cfg.version.clone(),
            location_id: cfg.location_id.clone(),
            deadline: cfg.retry_deadline,
            // A steady pace with a burst of a twentieth of a second's worth: any one-second
            // window sees at most the rate and 5 %, so a provider that counts requests per
            // second is never sent more than it was told (the default burst, a whole second's
            // worth, doubles the rate in the window where it is spent).
            limiter: RateLimiter::direct(Quota::per_second(per_sec).allow_burst(
                std::num::NonZeroU32::new(per_sec.get() / 20).unwrap_or(std::num::NonZeroU32::MIN),
            )),
        })
    }

    /// The location payments are taken at (`SQUARE_LOCATION_ID`), if set.
    pub fn location_id(&self) -> Option<&str> {
        self.location_id.as_deref()
    }

    /// The base URL.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The query of a list over `[begin, end)` at the configured location, oldest first, 100 a
    /// page (ListPayments and ListPaymentRefunds take the same). RFC 3339 is Square's wire
    /// format; the seam speaks instants.
    fn window_query(
        &self,
        begin: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
        cursor: Option<&str>,
    ) -> Vec<(&'static str, String)> {
        let mut q = vec![
            ("begin_time", begin.to_rfc3339()),
            ("end_time", end.to_rfc3339()),
            ("sort_order", "ASC".to_owned()),
            ("limit", "100".to_owned()),
        ];
        if let Some(loc) = &self.location_id {
            q.push(("location_id", loc.clone()));
        }
        if let Some(c) = cursor {
            q.push(("cursor", c.to_owned()));
        }
        q
    }

    fn backoff() -> impl Iterator<Item = Duration> {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(50))
            .with_max_delay(Duration::from_secs(5))
            .with_factor(2.0)
            .with_jitter()
            .with_max_times(1_000)
            .build()
    }

    fn fixed_headers(token: &SecretString, version: &str) -> Option<reqwest::header::HeaderMap> {
        use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderMap, HeaderValue};
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).ok()?;
        auth.set_sensitive(true);
        let mut headers = HeaderMap::with_capacity(3);
        headers.insert(AUTHORIZATION, auth);
        headers.insert("Square-Version", HeaderValue::from_str(version).ok()?);
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        Some(headers)
    }

    /// `builder` with the headers every call sends.
    fn with_headers(&self, builder: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.headers {
            Some(h) => builder.headers(h.clone()),
            None => builder
                .bearer_auth(self.token.expose_secret())
                .header("Square-Version", &self.version)
                .header(reqwest::header::ACCEPT, "application/json"),
        }
    }

    /// A CreatePayment request carrying `body`.
    fn create_request(&self, body: &str) -> reqwest::RequestBuilder {
        let builder = match &self.payments_url {
            Some(url) => self.http.post(url.clone()),
            None => self.http.post(format!("{}/v2/payments", self.base_url)),
        };
        self.with_headers(builder)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.with_headers(
            self.http
                .request(method, format!("{}{path}", self.base_url)),
        )
    }

    /// Long on purpose: the classification of one CreatePayment answer, in the order it must be read (transport, body, a taken payment, errors, payment status); one table.
    async fn try_create(&self, body: &str) -> Try {
        let sent = self.create_request(body).send().await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Try::Again {
                    maybe_sent: !e.is_connect(),
                    reason: format!("{} ({})", error_chain(&e), self.base_url),
                    retry_after: None,
                };
            }
        };
        let status = resp.status();
        let after = retry_after(resp.headers());
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Try::Again {
                    maybe_sent: true,
                    reason: format!("answer lost after HTTP {status}: {}", error_chain(&e)),
                    retry_after: after,
                };
            }
        };
        let parsed: PaymentResponse = match serde_json::from_slice(&bytes) {
            Ok(p) => p,
            Err(e) => {
                return Try::Again {
                    maybe_sent: true,
                    reason: format!("unreadable answer (HTTP {status}): {e}"),
                    retry_after: after,
                };
            }
        };
        // A payment Square says it took is money taken, whatever errors ride along: reading it
        // as a decline or a configuration error would bill the period again under a new key.
        if let Some(p) = parsed.payment.as_ref().filter(|p| p.taken()) {
            return Try::Done(PaymentOutcome::taken(&p.into()));
        }
        if !parsed.errors.is_empty() {
            let pairs: Vec<SquareError> = parsed
                .errors
                .iter()
                .map(|e| (e.category.clone(), e.code.clone(), e.field.clone()))
                .collect();
            let detail_of = |code: &str| {
                parsed
                    .errors
                    .iter()
                    .find(|e| e.code == code)
                    .and_then(|e| e.detail.clone())
                    .unwrap_or_default()
            };
            if let Some(((category, code, field), class)) = decisive(&pairs) {
                return match class {
                    ErrorClass::Declined { hard } => Try::Done(PaymentOutcome::Declined {
                        code: code.clone(),
                        category: category.clone(),
                        hard,
                    }),
                    ErrorClass::Transient => Try::Again {
                        maybe_sent: false,
                        reason: format!("HTTP {status} {category} {code}"),
                        retry_after: after,
                    },
                    ErrorClass::KeyReused => Try::Done(PaymentOutcome::KeyReused {
                        detail: detail_of(code),
                    }),
                    ErrorClass::Authentication => Try::Done(PaymentOutcome::Fatal {
                        code: code.clone(),
                        category: category.clone(),
                        detail: detail_of(code),
                    }),
                    ErrorClass::Configuration => Try::Done(PaymentOutcome::Misconfigured {
                        code: code.clone(),
                        category: category.clone(),
                        field: field.clone(),
                        detail: detail_of(code),
                    }),
                };
            }
        }
        match parsed.payment {
            Some(p) if p.taken() => Try::Done(PaymentOutcome::taken(&(&p).into())),
            Some(p) if p.status == "FAILED" || p.status == "CANCELED" => {
                Try::Done(PaymentOutcome::Declined {
                    code: "GENERIC_DECLINE".into(),
                    category: "PAYMENT_METHOD_ERROR".into(),
                    hard: false,
                })
            }
            Some(p) => Try::Again {
                maybe_sent: true,
                reason: format!("payment {} is {}", p.id, p.status),
                retry_after: after,
            },
            None if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() => {
                Try::Again {
                    maybe_sent: false,
                    reason: format!("HTTP {status}"),
                    retry_after: after,
                }
            }
            None => Try::Again {
                maybe_sent: true,
                reason: format!("HTTP {status} with neither payment nor errors"),
                retry_after: after,
            },
        }
    }

    /// One ListCards page for the query `q` (plus `cursor`).
    async fn cards_page(
        &self,
        mut q: Vec<(&'static str, String)>,
        cursor: Option<&str>,
    ) -> Result<Page<ProviderCard>> {
        if let Some(c) = cursor {
            q.push(("cursor", c.to_owned()));
        }
        let r: wire::ListCardsResponse = self.get_json("ListCards", "/v2/cards", &q).await?;
        Ok(Page {
            items: r.cards.into_iter().map(Into::into).collect(),
            cursor: r.cursor.filter(|c| !c.is_empty()),
        })
    }

    /// GET with retries on transient failures, decoding Square's error model.
    ///
    /// Long on purpose: one read call with its retry loop; the transport, status and body branches share the backoff state.
    async fn get_json<T: DeserializeOwned + HasErrors>(
        &self,
        what: &'static str,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T> {
        let started = Instant::now();
        let mut delays = Self::backoff();
        loop {
            let outcome = self
                .request(reqwest::Method::GET, path)
                .query(query)
                .send()
                .await;
            let (cause, after) = match outcome {
                Err(e) => (
                    format!("{} ({}{path})", error_chain(&e), self.base_url),
                    None,
                ),
                Ok(resp) => {
                    let status = resp.status();
                    let after = retry_after(resp.headers());
                    match resp.bytes().await {
                        Err(e) => (format!("answer lost: {}", error_chain(&e)), after),
                        Ok(bytes) => match serde_json::from_slice::<T>(&bytes) {
                            Ok(body) if body.errors().is_empty() && status.is_success() => {
                                return Ok(body);
                            }
                            Ok(body) => {
                                let first = body.errors().first().cloned();
                                let (category, code, detail) = first
                                    .map(|e| (e.category, e.code, e.detail.unwrap_or_default()))
                                    .unwrap_or_else(|| {
                                        (
                                            String::new(),
                                            format!("HTTP_{}", status.as_u16()),
                                            String::new(),
                                        )
                                    });
                                match crate::domain::decline::classify(&category, &code) {
                                    ErrorClass::Authentication => {
                                        return Err(GatewayError::Unauthorized { code });
                                    }
                                    ErrorClass::Transient => {
                                        (format!("HTTP {status} {code}"), after)
                                    }
                                    _ if status.is_server_error()
                                        || status == StatusCode::TOO_MANY_REQUESTS =>
                                    {
                                        (format!("HTTP {status} {code}"), after)
                                    }
                                    _ if status == StatusCode::UNAUTHORIZED => {
                                        return Err(GatewayError::Unauthorized { code });
                                    }
                                    _ => {
                                        return Err(GatewayError::Api {
                                            what,
                                            status: status.as_u16(),
                                            code,
                                            detail,
                                        });
                                    }
                                }
                            }
                            Err(e) if status == StatusCode::UNAUTHORIZED => {
                                return Err(GatewayError::Unauthorized {
                                    code: format!("HTTP 401: {e}"),
                                });
                            }
                            Err(e)
                                if status.is_success()
                                    || status.is_server_error()
                                    || status.as_u16() == 429 =>
                            {
                                (format!("unreadable answer (HTTP {status}): {e}"), after)
                            }
                            Err(e) => {
                                return Err(GatewayError::Malformed {
                                    what,
                                    cause: format!("HTTP {status}: {e}"),
                                });
                            }
                        },
                    }
                }
            };
            let delay = delays
                .next()
                .unwrap_or(Duration::from_secs(5))
                .max(after.unwrap_or_default());
            if started.elapsed() + delay > self.deadline {
                return Err(
                    if cause.contains("error sending request") || cause.contains("connect") {
                        GatewayError::Unreachable {
                            url: format!("{}{path}", self.base_url),
                            cause,
                        }
                    } else {
                        GatewayError::Exhausted { what, cause }
                    },
                );
            }
            tracing::debug!(what, %cause, delay_ms = delay.as_millis() as u64, "retrying Square read");
            metrics::counter!(crate::ops::metrics::RETRIES, "call" => what).increment(1);
            tokio::time::sleep(delay).await;
        }
    }
}

/// Square list/get responses carry an `errors` array.
pub trait HasErrors {
    /// The errors.
    fn errors(&self) -> &[wire::Error];
}

macro_rules! has_errors {
    ($($t:ty),*) => {$(
        impl HasErrors for $t {
            fn errors(&self) -> &[wire::Error] {
                &self.errors
            }
        }
    )*};
}
has_errors!(
    wire::ListCustomersResponse,
    wire::ListCardsResponse,
    wire::ListPaymentsResponse,
    wire::PaymentResponse,
    wire::RefundResponse,
    wire::ListPaymentRefundsResponse,
    wire::OrderResponse,
    wire::CustomerResponse
);

#[async_trait]
impl PaymentGateway for SquareClient {
    async fn wait_turn(&self) {
        let started = Instant::now();
        self.limiter.until_ready().await;
        metrics::histogram!(crate::ops::metrics::RATE_LIMIT_WAIT)
            .record(started.elapsed().as_secs_f64());
    }

    async fn create_payment(&self, payment: &PreparedPayment) -> PaymentOutcome {
        let started = Instant::now();
        let mut delays = Self::backoff();
        let mut maybe_sent = false;
        loop {
            match self.try_create(&payment.body).await {
                Try::Done(outcome) => return outcome,
                Try::Again {
                    reason,
                    retry_after,
                    maybe_sent: sent,
                } => {
                    maybe_sent |= sent;
                    let delay = delays
                        .next()
                        .unwrap_or(Duration::from_secs(5))
                        .max(retry_after.unwrap_or_default());
                    if started.elapsed() + delay > self.deadline {
                        return if maybe_sent {
                            PaymentOutcome::Unknown { reason }
                        } else {
                            PaymentOutcome::Transient {
                                reason,
                                retry_after,
                            }
                        };
                    }
                    tracing::debug!(key = %payment.key, %reason, delay_ms = delay.as_millis() as u64, "retrying CreatePayment with the same key");
                    metrics::counter!(crate::ops::metrics::RETRIES, "call" => "CreatePayment")
                        .increment(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn list_customers(&self, cursor: Option<&str>) -> Result<Page<ProviderCustomer>> {
        let mut q = vec![
            ("sort_field", "CREATED_AT".to_owned()),
            ("sort_order", "ASC".to_owned()),
        ];
        if let Some(c) = cursor {
            q.push(("cursor", c.to_owned()));
        }
        let r: wire::ListCustomersResponse =
            self.get_json("ListCustomers", "/v2/customers", &q).await?;
        Ok(Page {
            items: r.customers.into_iter().map(Into::into).collect(),
            cursor: r.cursor.filter(|c| !c.is_empty()),
        })
    }

    async fn list_cards(
        &self,
        customer_id: &str,
        cursor: Option<&str>,
        include_disabled: bool,
    ) -> Result<Page<ProviderCard>> {
        self.cards_page(
            vec![
                ("customer_id", customer_id.to_owned()),
                ("include_disabled", include_disabled.to_string()),
            ],
            cursor,
        )
        .await
    }

    async fn list_all_cards(
        &self,
        cursor: Option<&str>,
        order: ListOrder,
    ) -> Result<Page<ProviderCard>> {
        self.cards_page(
            vec![
                ("include_disabled", "true".to_owned()),
                ("sort_order", order.as_square().to_owned()),
            ],
            cursor,
        )
        .await
    }

    async fn list_payments(
        &self,
        begin: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
        cursor: Option<&str>,
    ) -> Result<Page<ProviderPayment>> {
        let q = self.window_query(begin, end, cursor);
        let r: wire::ListPaymentsResponse =
            self.get_json("ListPayments", "/v2/payments", &q).await?;
        Ok(Page {
            items: r.payments.iter().map(Into::into).collect(),
            cursor: r.cursor.filter(|c| !c.is_empty()),
        })
    }

    async fn create_customer(&self, customer: &NewCustomer) -> Result<ProviderCustomer> {
        self.post_customer(&wire::CreateCustomerRequest {
            idempotency_key: Some(customer.idempotency_key.clone()),
            given_name: customer.given_name.clone(),
            family_name: customer.family_name.clone(),
            email_address: customer.email.clone(),
            phone_number: customer.phone.clone(),
            reference_id: None,
        })
        .await
    }

    async fn retrieve_order(&self, order_id: &str) -> Result<Option<ProviderOrder>> {
        self.get_order(order_id).await
    }

    async fn retrieve_customer(&self, customer_id: &str) -> Result<Option<ProviderCustomer>> {
        self.get_customer(customer_id).await
    }

    async fn refund_payment(&self, refund: &PreparedRefund) -> RefundOutcome {
        refunds::Refunds::send_refund(self, refund).await
    }

    async fn get_refund(&self, refund_id: &str) -> Result<Option<ProviderRefund>> {
        refunds::Refunds::fetch_refund(self, refund_id).await
    }

    async fn list_refunds(
        &self,
        begin: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
        cursor: Option<&str>,
    ) -> Result<Page<ProviderRefund>> {
        refunds::Refunds::page_refunds(self, begin, end, cursor).await
    }

    async fn get_payment(&self, payment_id: &str) -> Result<Option<ProviderPayment>> {
        let path = format!("/v2/payments/{payment_id}");
        match self
            .get_json::<wire::PaymentResponse>("GetPayment", &path, &[])
            .await
        {
            Ok(r) => Ok(r.payment.as_ref().map(Into::into)),
            Err(GatewayError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
