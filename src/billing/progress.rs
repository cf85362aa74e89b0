//! The guard that keeps every billing run finite whatever the rows look like.

use std::collections::HashMap;

use chrono::{DateTime, Utc};

use crate::config::BillingConfig;
use crate::domain::SubscriptionId;

/// Keeps a billing run finite whatever rows look like: a subscription that is claimed without
/// progress (nothing inserted, nothing moved), or claimed more often than any real schedule
/// allows in one run, is set aside until the next run and reported.
pub(super) struct Progress {
    pub(super) claims: HashMap<SubscriptionId, u32>,
    pub(super) excluded: Vec<SubscriptionId>,
    pub(super) limit: u32,
    // Rows last written before the run began (by the database's clock, which writes
    // `updated_at`) are on their first claim of the run and are not counted, so the map holds
    // only subscriptions the run has already moved: memory stays flat however many are due.
    pub(super) counted_since: DateTime<Utc>,
    /// Where the next claim starts in the due order (due time, id): past the last row claimed,
    /// so a claim does not walk again over the rows earlier claims left open (in flight until
    /// recorded). `None`: from the start, which a claim falls back to before the pass ends,
    /// for rows skipped behind it (locked elsewhere, or moved to an earlier due time).
    pub(super) after: Option<(DateTime<Utc>, SubscriptionId)>,
}

impl Progress {
    pub(super) fn new(config: &BillingConfig, started: DateTime<Utc>) -> Self {
        // Catch-up periods, each with its dunning retries and a fallback card, plus slack.
        let per_period = u32::try_from(config.dunning.retry_days.len()).unwrap_or(u32::MAX) + 2;
        Progress {
            claims: HashMap::new(),
            excluded: Vec::new(),
            limit: config
                .max_catch_up_periods
                .saturating_add(1)
                .saturating_mul(per_period),
            counted_since: started,
            after: None,
        }
    }

    pub(super) fn set_aside(&mut self, sub: SubscriptionId, why: &'static str) {
        tracing::warn!(subscription_id = %sub, reason = why, "subscription set aside for the rest of this billing run; it is billed again at the next run");
        metrics::counter!(crate::ops::metrics::BILLING_STALLED, "reason" => why).increment(1);
        self.excluded.push(sub);
    }
}
