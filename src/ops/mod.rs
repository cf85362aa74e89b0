//! Operations: logging set-up, Prometheus metrics, and the ops HTTP server (`/healthz`,
//! `/readyz`, `/metrics`).

pub mod logging;
pub mod metrics;
pub mod server;
pub mod square_webhooks;
