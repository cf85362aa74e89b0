//! `App`: the one way every entry point boots — the CLI, the daemon, `run-once`, the demo and
//! the tests build exactly the same thing: configuration, a migrated pool, and on demand the
//! Square gateway and a billing engine.

use std::sync::Arc;

use sqlx::PgPool;

use crate::billing::{self, Engine};
use crate::config::Config;
use crate::gateway::square::SquareClient;
use crate::gateway::{GatewayError, PaymentGateway};
use crate::store::{self, DatabaseLocation, StoreError};

/// A built application.
pub struct App {
    /// Validated configuration.
    pub config: Config,
    /// The migrated pool.
    pub pool: PgPool,
    /// Where the database is.
    pub location: DatabaseLocation,
}

impl App {
    /// Enrollment at the counter over `gateway`, with this app's settings.
    pub fn counter(&self, gateway: Arc<dyn PaymentGateway>) -> crate::enroll::Counter {
        crate::enroll::Counter::new(
            self.pool.clone(),
            gateway,
            self.config.enrollment.clone(),
            self.config.square.location_id.clone(),
        )
    }

    /// Connects to the configured database (starting the embedded cluster when
    /// `DATABASE_URL` is unset) and applies pending migrations.
    ///
    /// # Errors
    /// [`StoreError`].
    pub async fn build(config: Config) -> Result<Self, StoreError> {
        let max = (config.billing.concurrency as u32)
            .saturating_add(8)
            .min(200);
        let (pool, location) = store::connect(&config, max).await?;
        Ok(App {
            config,
            pool,
            location,
        })
    }

    /// Wraps an existing, migrated pool (tests, the demo).
    pub fn from_pool(config: Config, pool: PgPool) -> Self {
        App {
            config,
            pool,
            location: DatabaseLocation::External,
        }
    }

    /// The Square client for the configured environment.
    ///
    /// # Errors
    /// [`GatewayError::Config`] when `SQUARE_ACCESS_TOKEN` is missing.
    pub fn square(&self) -> Result<Arc<dyn PaymentGateway>, GatewayError> {
        Ok(Arc::new(SquareClient::new(&self.config.square)?))
    }

    /// A billing engine (one worker) over `gateway`.
    ///
    /// # Errors
    /// [`billing::BillingError`].
    pub async fn engine(&self, gateway: Arc<dyn PaymentGateway>) -> billing::Result<Engine> {
        Engine::new(
            self.pool.clone(),
            gateway,
            self.config.billing.clone(),
            self.config.square.location_id.clone(),
        )
        .await
    }
}
