//! Pure domain types and rules: money, identifiers, the billing calendar, the subscription
//! state machine with its dunning policy, the classification of Square's errors, and the check
//! of Square's answers against the charges they answer, refunds and disputes.
//!
//! Nothing in here performs I/O or reads a clock; callers pass `now`.

pub mod answer;
pub mod card;
pub mod decline;
pub mod ids;
pub mod lifecycle;
pub mod money;
pub mod pos;
pub mod refund;
pub mod schedule;
pub mod subscription;

pub use ids::{CardId, ChargeId, CustomerId, IdempotencyKey, RefundId, SubscriptionId};
pub use money::{Currency, Money};
pub use schedule::{Calendar, Interval, IntervalUnit};
pub use subscription::{ChargeStatus, DunningPolicy, SubscriptionStatus};
