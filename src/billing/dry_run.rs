//! Dry runs: what a billing pass would charge now (through the claim's own plan and card
//! check) and what a recover pass would re-drive, with nothing written and nothing sent.

use chrono::{DateTime, Utc};

use super::claim::card_problem;
use super::{Engine, Result};
use crate::domain::{CardId, SubscriptionId};
use crate::store::{StoreError, subscriptions};

/// A charge a billing pass would send now (a dry run): nothing is written, nothing is sent.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WouldCharge {
    /// The subscription.
    pub subscription_id: SubscriptionId,
    /// Its customer.
    pub customer_id: crate::domain::CustomerId,
    /// The card that would be charged.
    pub card_id: CardId,
    /// The period billed.
    pub period: i32,
    /// When it began.
    pub period_start: DateTime<Utc>,
    /// The attempt (1 for a first try, more in dunning).
    pub attempt: i32,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// Why the card would be refused before Square (disabled, expired), if it would.
    pub card_problem: Option<String>,
}

impl Engine {
    /// What a billing pass at `now` would charge, without writing or sending anything: the
    /// first `limit` due subscriptions, each through the same plan the claim makes.
    ///
    /// # Errors
    /// [`BillingError`] (a row that cannot be read is reported as such, not skipped).
    pub async fn dry_run(&self, now: DateTime<Utc>, limit: i64) -> Result<Vec<WouldCharge>> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        let due = subscriptions::peek_due(&mut conn, now, limit).await?;
        let mut out = Vec::new();
        for sub in &due {
            if let Some(c) = self.plan(sub, now)?.charge {
                out.push((c, sub.time_zone.clone()));
            }
        }
        let ids: Vec<CardId> = out.iter().map(|(c, _)| c.card_id.clone()).collect();
        let health = crate::store::cards::health(&mut conn, &ids).await?;
        Ok(out
            .into_iter()
            .map(|(c, zone)| {
                let zone = zone.parse::<chrono_tz::Tz>().unwrap_or(chrono_tz::Tz::UTC);
                WouldCharge {
                    card_problem: card_problem(health.get(&c.card_id).copied(), now, zone)
                        .map(str::to_owned),
                    subscription_id: c.subscription_id,
                    customer_id: c.customer_id,
                    card_id: c.card_id,
                    period: c.period,
                    period_start: c.period_start,
                    attempt: c.attempt,
                    amount_minor: c.money.minor(),
                    currency: c.money.currency().as_str().to_owned(),
                }
            })
            .collect())
    }

    /// What a recover pass at `now` would re-drive, without taking or sending anything: the
    /// pending charges whose lease ran out, each saying whether it would be looked up at Square
    /// first (older than the stale age) or re-sent with its key.
    ///
    /// # Errors
    /// [`super::BillingError`].
    pub async fn dry_run_recover(&self, limit: i64) -> Result<Vec<WouldRecover>> {
        let now = self.clock.now();
        let stale = chrono::Duration::from_std(self.config.stale_lookup_after)
            .unwrap_or(chrono::Duration::hours(24));
        Ok(crate::store::charges::peek_orphans(&self.pool, now, limit)
            .await?
            .into_iter()
            .map(|c| WouldRecover {
                charge_id: c.id,
                subscription_id: c.subscription_id,
                customer_id: c.customer_id.clone(),
                period: c.period,
                attempt: c.attempt,
                amount_minor: c.money.minor(),
                currency: c.money.currency().as_str().to_owned(),
                sends: c.sends,
                action: if c.sends > 0 && now - c.created_at > stale {
                    "look up at Square, then re-send"
                } else {
                    "re-send with its key"
                },
            })
            .collect())
    }
}

/// A pending charge a recover pass would re-drive (a dry run).
#[derive(Clone, Debug, serde::Serialize)]
pub struct WouldRecover {
    /// The charge.
    pub charge_id: crate::domain::ChargeId,
    /// Its subscription.
    pub subscription_id: SubscriptionId,
    /// Its customer.
    pub customer_id: crate::domain::CustomerId,
    /// The period.
    pub period: i32,
    /// The attempt.
    pub attempt: i32,
    /// Minor units.
    pub amount_minor: i64,
    /// ISO 4217.
    pub currency: String,
    /// Sends so far.
    pub sends: i32,
    /// What recovery would do.
    pub action: &'static str,
}
