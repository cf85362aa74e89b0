//! RefundPayment, GetPaymentRefund and ListPaymentRefunds over HTTP. A refund is sent like a
//! payment: the stored body byte for byte, transient failures retried with the same key within
//! the deadline, the answer classified by Square's error categories, never by HTTP status.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::StatusCode;

use super::{SquareClient, error_chain, retry_after};
use crate::domain::decline::{ErrorClass, classify};
use crate::domain::refund::ProviderRefund;
use crate::gateway::{GatewayError, Page, PreparedRefund, RefundOutcome, Result, wire};

/// One RefundPayment try.
enum Try {
    Done(RefundOutcome),
    Again {
        reason: String,
        retry_after: Option<Duration>,
    },
}

impl SquareClient {
    async fn try_refund(&self, body: &str) -> Try {
        let sent = self
            .request(reqwest::Method::POST, "/v2/refunds")
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => {
                return Try::Again {
                    reason: format!("{} ({})", error_chain(&e), self.base_url),
                    retry_after: None,
                };
            }
        };
        let status = resp.status();
        let after = retry_after(resp.headers());
        let parsed = match resp.bytes().await {
            Ok(b) => serde_json::from_slice::<wire::RefundResponse>(&b),
            Err(e) => {
                return Try::Again {
                    reason: format!("answer lost after HTTP {status}: {}", error_chain(&e)),
                    retry_after: after,
                };
            }
        };
        let parsed = match parsed {
            Ok(p) => p,
            Err(e) => {
                return Try::Again {
                    reason: format!("unreadable answer (HTTP {status}): {e}"),
                    retry_after: after,
                };
            }
        };
        if let Some(r) = parsed.refund.as_ref().filter(|_| parsed.errors.is_empty()) {
            return Try::Done(RefundOutcome::Accepted(r.into()));
        }
        if let Some(e) = parsed.errors.first() {
            return match classify(&e.category, &e.code) {
                ErrorClass::Authentication => Try::Done(RefundOutcome::Fatal {
                    code: e.code.clone(),
                }),
                ErrorClass::Transient => Try::Again {
                    reason: format!("HTTP {status} {} {}", e.category, e.code),
                    retry_after: after,
                },
                ErrorClass::KeyReused => Try::Done(RefundOutcome::Undecided {
                    reason: format!("Square says the key was used with another body: {}", e.code),
                }),
                _ if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                    Try::Again {
                        reason: format!("HTTP {status} {}", e.code),
                        retry_after: after,
                    }
                }
                _ => Try::Done(RefundOutcome::Refused {
                    code: e.code.clone(),
                    category: e.category.clone(),
                    detail: e.detail.clone().unwrap_or_default(),
                }),
            };
        }
        Try::Again {
            reason: format!("HTTP {status} with neither refund nor errors"),
            retry_after: after,
        }
    }
}

#[async_trait]
pub(super) trait Refunds {
    async fn send_refund(&self, refund: &PreparedRefund) -> RefundOutcome;
    async fn fetch_refund(&self, refund_id: &str) -> Result<Option<ProviderRefund>>;
    async fn page_refunds(
        &self,
        begin: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
        cursor: Option<&str>,
    ) -> Result<Page<ProviderRefund>>;
}

#[async_trait]
impl Refunds for SquareClient {
    async fn send_refund(&self, refund: &PreparedRefund) -> RefundOutcome {
        self.limiter.until_ready().await;
        let started = Instant::now();
        let mut delays = Self::backoff();
        loop {
            match self.try_refund(&refund.body).await {
                Try::Done(outcome) => return outcome,
                Try::Again {
                    reason,
                    retry_after,
                } => {
                    let delay = delays
                        .next()
                        .unwrap_or(Duration::from_secs(5))
                        .max(retry_after.unwrap_or_default());
                    if started.elapsed() + delay > self.deadline {
                        return RefundOutcome::Undecided { reason };
                    }
                    tracing::debug!(key = %refund.key, %reason, delay_ms = delay.as_millis() as u64, "retrying RefundPayment with the same key");
                    metrics::counter!(crate::ops::metrics::RETRIES, "call" => "RefundPayment")
                        .increment(1);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn fetch_refund(&self, refund_id: &str) -> Result<Option<ProviderRefund>> {
        let path = format!("/v2/refunds/{refund_id}");
        match self
            .get_json::<wire::RefundResponse>("GetPaymentRefund", &path, &[])
            .await
        {
            Ok(r) => Ok(r.refund.as_ref().map(Into::into)),
            Err(GatewayError::Api { status: 404, .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn page_refunds(
        &self,
        begin: chrono::DateTime<chrono::Utc>,
        end: chrono::DateTime<chrono::Utc>,
        cursor: Option<&str>,
    ) -> Result<Page<ProviderRefund>> {
        let q = self.window_query(begin, end, cursor);
        let r: wire::ListPaymentRefundsResponse = self
            .get_json("ListPaymentRefunds", "/v2/refunds", &q)
            .await?;
        Ok(Page {
            items: r.refunds.iter().map(Into::into).collect(),
            cursor: r.cursor.filter(|c| !c.is_empty()),
        })
    }
}
