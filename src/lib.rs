//! paycron: recurring billing for cards on file with Square.
//!
//! Module map:
//! - [`domain`]: pure types and rules (money, ids, calendar, subscription state machine,
//!   dunning, decline classes); no I/O.
//! - [`config`]: typed configuration from the environment and an optional file.
//! - [`store`]: Postgres (pool, migrations, embedded local cluster) and all SQL, by entity.
//! - [`gateway`]: the `PaymentGateway` seam, the Square client and the Square simulator.
//! - [`billing`]: the engine: claim, charge, record, recover, dunning; and sync-cards.
//! - [`ledger`]: ledger export.
//! - [`ops`]: logging, metrics and the ops HTTP server.
//! - [`scheduler`]: the daemon: schedule files, cron ticks, singletons, graceful shutdown.
//! - [`app`]: `App::build`, the one way every entry point (CLI, demo, tests) boots.
//! - [`commands`]: what each CLI command does and prints.
//! - [`demo`]: the self-contained demonstration.
//! - [`bench`](mod@bench): the throughput benchmark.
//! - [`webhooks`]: outbound, signed, retried webhooks for the business's endpoints.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod app;
pub mod bench;
pub mod billing;
pub mod commands;
pub mod config;
pub mod demo;
pub mod domain;
pub mod gateway;
pub mod ledger;
pub mod ops;
pub mod scheduler;
pub mod store;
pub mod webhooks;
