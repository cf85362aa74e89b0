//! paycron's integration tests: one test binary, real Postgres (a fresh database per test),
//! real HTTP to the Square simulator, and the real `paycron` binary where the contract is the
//! command line.

mod answers;
mod billing;
mod browser;
mod cli;
mod daemon;
mod embedded;
mod enroll;
mod faults;
mod gateway;
mod helpers;
mod lifecycle;
mod model;
mod outbound;
mod refunds;
mod schema;
mod sync;
mod webhooks;
