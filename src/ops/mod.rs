//! Operations: logging set-up, Prometheus metrics, and the ops HTTP server (`/healthz`,
//! `/readyz`, `/metrics`), and the injected shutdown.

pub mod logging;
pub mod metrics;
pub mod process;
pub mod progress;
pub mod server;
pub mod shutdown;
pub mod square_webhooks;
