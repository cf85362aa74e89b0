//! CreateCustomer, RetrieveCustomer and RetrieveOrder: what enrolling a customer at the counter needs from
//! Square. A customer is created with an idempotency key, so a retried creation returns the
//! same customer; an order is read to confirm a Point of Sale sale (its card tender's id is the
//! payment's id).

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use super::{SquareClient, error_chain, retry_after};
use crate::domain::decline::{ErrorClass, classify};
use crate::gateway::{GatewayError, ProviderCustomer, ProviderOrder, Result, wire};

impl SquareClient {
    /// `POST /v2/customers`, retried with the same key on transient failures.
    pub(super) async fn post_customer(
        &self,
        req: &wire::CreateCustomerRequest,
    ) -> Result<ProviderCustomer> {
        let body = serde_json::to_string(req).map_err(|e| GatewayError::Malformed {
            what: "CreateCustomer",
            cause: e.to_string(),
        })?;
        let started = Instant::now();
        let mut delays = Self::backoff();
        loop {
            let sent = self
                .request(reqwest::Method::POST, "/v2/customers")
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone())
                .send()
                .await;
            let (cause, after) = match sent {
                Err(e) => (format!("{} ({})", error_chain(&e), self.base_url), None),
                Ok(resp) => {
                    let status = resp.status();
                    let after = retry_after(resp.headers());
                    match resp
                        .bytes()
                        .await
                        .map(|b| serde_json::from_slice::<wire::CustomerResponse>(&b))
                    {
                        Err(e) => (format!("answer lost: {}", error_chain(&e)), after),
                        Ok(Err(e)) => (format!("unreadable answer (HTTP {status}): {e}"), after),
                        Ok(Ok(r)) => {
                            if let Some(c) = r.customer.filter(|_| r.errors.is_empty()) {
                                return Ok(c.into());
                            }
                            let e = r.errors.first().cloned().unwrap_or(wire::Error {
                                category: String::new(),
                                code: format!("HTTP_{}", status.as_u16()),
                                detail: None,
                                field: None,
                            });
                            match classify(&e.category, &e.code) {
                                ErrorClass::Authentication => {
                                    return Err(GatewayError::Unauthorized { code: e.code });
                                }
                                ErrorClass::Transient => {
                                    (format!("HTTP {status} {}", e.code), after)
                                }
                                _ if status.is_server_error()
                                    || status == StatusCode::TOO_MANY_REQUESTS =>
                                {
                                    (format!("HTTP {status} {}", e.code), after)
                                }
                                _ => {
                                    return Err(GatewayError::Api {
                                        what: "CreateCustomer",
                                        status: status.as_u16(),
                                        code: e.code,
                                        detail: e.detail.unwrap_or_default(),
                                    });
                                }
                            }
                        }
                    }
                }
            };
            let delay = delays
                .next()
                .unwrap_or(Duration::from_secs(5))
                .max(after.unwrap_or_default());
            if started.elapsed() + delay > self.deadline {
                return Err(GatewayError::Exhausted {
                    what: "CreateCustomer",
                    cause,
                });
            }
            tokio::time::sleep(delay).await;
        }
    }

    /// `GET /v2/customers/{id}`; `None` when Square does not know it.
    pub(super) async fn get_customer(&self, customer_id: &str) -> Result<Option<ProviderCustomer>> {
        let path = format!("/v2/customers/{customer_id}");
        match self
            .get_json::<wire::CustomerResponse>("RetrieveCustomer", &path, &[])
            .await
        {
            Ok(r) => Ok(r.customer.map(Into::into)),
            Err(GatewayError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `GET /v2/orders/{id}`; `None` when Square does not know it.
    pub(super) async fn get_order(&self, order_id: &str) -> Result<Option<ProviderOrder>> {
        let path = format!("/v2/orders/{order_id}");
        match self
            .get_json::<wire::OrderResponse>("RetrieveOrder", &path, &[])
            .await
        {
            Ok(r) => Ok(r.order.map(Into::into)),
            Err(GatewayError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
