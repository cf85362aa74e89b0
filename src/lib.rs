//! paycron: recurring billing for cards on file with Square.
//!
//! Module map, in layers: a module uses only those above it, except `ops::metrics` (metric
//! names, used from every layer as `tracing` is).
//!
//! - [`domain`]: pure types and rules (money, ids, calendar, the subscription lifecycle,
//!   dunning, decline classes, the answer check, card event order); no I/O, no clock.
//! - [`config`]: typed configuration from the environment and an optional file; uses only
//!   `domain`.
//! - [`store`]: Postgres (pool, migrations, roles, the embedded local cluster) and all SQL, by
//!   entity; uses `domain` and `config`.
//! - [`gateway`]: the `PaymentGateway` seam (in paycron's types: instants, `ProviderPayment`,
//!   `ProviderCard`, `ProviderCustomer`), Square's wire types, and the Square client; uses
//!   `domain` and `config`.
//! - [`simulator`]: a Square-compatible fake server (demo, tests, benchmark); uses only the
//!   gateway's wire types.
//! - [`outbound`]: outbound, signed, retried webhooks for the business's endpoints; uses
//!   `store`.
//! - [`ledger`]: ledger export, the exactly-once audit and reconciliation's comparison (a pure
//!   function); uses `store` and `domain` only. Fetching and repair live in
//!   `billing::reconcile`.
//! - [`billing`]: the engine (claim, pipeline, record, recover, leases, the halt),
//!   reconciliation's fetching and repair, and sync-cards; uses `store`, `gateway` and
//!   `ledger`.
//! - [`enroll`]: enrollment at the counter (Square Point of Sale): the link, its page and
//!   callback, confirming the sale with Square, recording the first period, picking up the
//!   saved card; uses `store`, `gateway`, `config`, `domain` and `billing::sync`.
//! - [`ops`]: logging, metrics, the ops HTTP server with the Square webhook receiver, and the
//!   injected shutdown.
//! - [`scheduler`]: the daemon: schedule files, cron ticks, singletons, draining.
//! - [`app`]: `App::build`, the one way every entry point boots.
//! - [`commands`]: one module per command group, each owning its flags (`clap::Args`) and what
//!   it prints, the demo and the benchmark included; `commands::cli` composes them.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod billing;
pub mod commands;
pub mod config;
pub mod domain;
pub mod enroll;
pub mod gateway;
pub mod ledger;
pub mod ops;
pub mod outbound;
pub mod scheduler;
pub mod simulator;
pub mod store;
