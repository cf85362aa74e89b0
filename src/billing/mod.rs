//! The billing engine: DESIGN.md's charge protocol.
//!
//! 1. **Claim** (`Engine::claim_batch`): in one transaction, lock due subscriptions
//!    (`FOR UPDATE SKIP LOCKED`), write a `pending` charge per subscription period with a
//!    lease and a deterministic idempotency key, commit. The intent is durable before any
//!    money moves; unique constraints make a second intent for the same attempt impossible
//!    (a conflicting insert is skipped, not retried). The next batch is claimed while the
//!    current one is in flight.
//! 2. **Charge**: CreatePayment with that key and `reference_id` = charge id, at most
//!    `concurrency` in flight, under the provider rate limit.
//! 3. **Record** (`Engine::record_batch`): in one transaction, fenced on the lease owner: the
//!    charge's final status, the ledger entry and postings, the subscription's next position
//!    (next period, dunning retry or final state) and the events.
//! 4. **Recover** ([`Engine::recover`]): pending charges whose owner died or whose lease
//!    expired are re-driven with the same key and the byte-identical body; past a configured
//!    age they are first looked up with ListPayments by `reference_id`.
//!
//! Leases stay short (a minute by default) because a worker extends them while it works: a
//! heartbeat renews, every third of the lease, the leases of the charges it has claimed and not
//! yet recorded, so a queued batch behind slow answers is never taken over by a peer, while a
//! charge left open by an unknown outcome (or a hung worker's) runs out and is recovered.
//!
//! A dunning retry is a new attempt with a new key; a declined key is never replayed as a
//! retry. Outcomes that leave the payment's fate open (`Transient`, `Unknown`, `KeyReused`,
//! an authentication failure) leave the charge `pending` for recovery: never recorded as a
//! failure, because money may have moved.

pub mod breaker;
mod record;
mod settle;
pub use settle::settle_subscription;

use record::Attempted;
pub mod sync;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sqlx::{PgConnection, PgPool};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::BillingConfig;
use crate::domain::lifecycle::{self, Notice};
use crate::domain::{CardId, ChargeId, ChargeStatus, CustomerId, IdempotencyKey, SubscriptionId};
use crate::gateway::{PaymentGateway, PaymentOutcome, PreparedPayment};
use crate::store::charges::{self, ChargeRow, NewCharge};
use crate::store::events::NewEvent;
use crate::store::subscriptions::{self, PositionUpdate, SubscriptionRow};
use crate::store::{StoreError, events};

/// What can stop the engine.
#[derive(Debug, thiserror::Error)]
pub enum BillingError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Square refused the access token: nothing can be charged until it is fixed.
    #[error("SQUARE_ACCESS_TOKEN was rejected by Square ({code}): billing stopped")]
    Unauthorized {
        /// Square's code.
        code: String,
    },
    /// A stored value cannot be turned into a request (a bug or a hand edit).
    #[error("cannot build the payment for subscription {subscription}: {reason}")]
    Build {
        /// The subscription.
        subscription: SubscriptionId,
        /// Why.
        reason: String,
    },
    /// A gateway read call failed.
    #[error(transparent)]
    Gateway(#[from] crate::gateway::GatewayError),
    /// Square refused the configuration several times in a row: billing halted.
    #[error(
        "billing halted: Square refused the charges for a configuration reason ({} {}{}); check {}; billing probes again with backoff and resumes by itself once Square accepts",
        .0.code,
        .0.detail,
        .0.field.as_deref().map(|f| format!(", field {f}")).unwrap_or_default(),
        .0.setting
    )]
    Halted(breaker::Halt),
}

/// Module result.
pub type Result<T> = std::result::Result<T, BillingError>;

/// Counters for one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Charges attempted.
    pub attempted: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Declined.
    pub declined: u64,
    /// Failed (request refused as invalid).
    pub failed: u64,
    /// Left pending (unknown, transient, key reused): recovery will finish them.
    pub unresolved: u64,
    /// Recorded by another worker after our lease was taken over (we recorded nothing).
    pub fenced: u64,
    /// Intents withdrawn unsent at shutdown (the subscription stays due).
    pub withdrawn: u64,
    /// Charges whose answer did not match (or could not be recorded): in review.
    pub needs_review: u64,
    /// Subscriptions quarantined because the engine could not read or move them.
    pub quarantined: u64,
    /// Subscriptions canceled at period end, completed or moved past skipped periods.
    pub advanced_without_charge: u64,
    /// Minor units taken, by currency.
    pub revenue: BTreeMap<String, i64>,
}

impl Summary {
    /// Adds another summary's counts into this one.
    pub fn merge(&mut self, o: &Summary) {
        self.attempted += o.attempted;
        self.succeeded += o.succeeded;
        self.declined += o.declined;
        self.failed += o.failed;
        self.unresolved += o.unresolved;
        self.fenced += o.fenced;
        self.withdrawn += o.withdrawn;
        self.needs_review += o.needs_review;
        self.quarantined += o.quarantined;
        self.advanced_without_charge += o.advanced_without_charge;
        for (k, v) in &o.revenue {
            *self.revenue.entry(k.clone()).or_default() += v;
        }
    }

    /// True when some charge ended in error or is left unresolved (exit code 1).
    pub fn has_errors(&self) -> bool {
        self.failed > 0 || self.unresolved > 0 || self.needs_review > 0 || self.quarantined > 0
    }
}

/// A charge on its way to Square.
struct Queued {
    charge: ChargeRow,
    /// Why its card must not be charged (the pre-check failed), if it must not.
    problem: Option<String>,
}

/// A charge this worker is working on.
#[derive(Clone, Copy, Debug)]
struct Lease {
    /// The billing pass that claimed it (0: re-driven).
    pass: u64,
    /// Handed to Square (or about to be): from then on it is never withdrawn.
    sent: bool,
}

/// One claimed batch: its intents, and the subscriptions moved without a charge.
struct Claimed {
    charges: Vec<Queued>,
    summary: Summary,
}

/// The decline category of attempts paycron refused itself before calling Square.
pub const CARD_CHECK_CATEGORY: &str = "PAYCRON_CARD_CHECK";

/// Why a card cannot be charged at `now` (in the subscription's zone), if it cannot: disabled
/// or forgotten at Square, or past the end of its expiry month.
pub fn card_problem(
    health: Option<(bool, Option<i32>, Option<i32>)>,
    now: DateTime<Utc>,
    zone: chrono_tz::Tz,
) -> Option<&'static str> {
    use chrono::Datelike;
    let (enabled, month, year) = health?;
    if !enabled {
        return Some("CARD_DISABLED");
    }
    let local = now.with_timezone(&zone);
    match (month, year) {
        (Some(m), Some(y)) if (local.year(), local.month() as i32) > (y, m) => Some("CARD_EXPIRED"),
        _ => None,
    }
}

/// Re-sends of one intent without a decisive answer before recovery gives up and sends it to
/// review. With [`resend_backoff`] they span about eight hours, longer than any outage worth
/// waiting out.
pub const MAX_RESENDS: i32 = 10;

/// How long an intent whose answer was undecided waits before recovery tries it again: the
/// lease, doubling with each re-send, at most two hours.
pub fn resend_backoff(sends: i32, lease: std::time::Duration) -> chrono::Duration {
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
    (lease * (1i32 << sends.clamp(0, 7))).min(chrono::Duration::hours(2))
}

/// Outcomes recorded per transaction.
const RECORD_BATCH: usize = 128;
/// Batches recorded at once.
const RECORD_PARALLEL: usize = 4;

/// The billing engine of one worker.
pub struct Engine {
    pool: PgPool,
    gateway: Arc<dyn PaymentGateway>,
    owner: Uuid,
    config: BillingConfig,
    location_id: Option<String>,
    // Holds the session-level advisory lock proving this worker is alive; when the process
    // dies the connection drops and its charges are known orphaned at once.
    liveness: Mutex<PgConnection>,
    // Whether this worker holds its liveness lock; while it does not, nothing is sent (a peer
    // may be taking its charges over).
    alive: std::sync::atomic::AtomicBool,
    // Cancelled at shutdown: no new claims, no new sends; what is in flight finishes.
    cancel: CancellationToken,
    // The charges this worker is working on, whose leases the heartbeat extends.
    leased: std::sync::Mutex<HashMap<ChargeId, Lease>>,
    // Numbers billing passes (0 is re-driving), so a pass withdraws only its own intents.
    passes: std::sync::atomic::AtomicU64,
    // Halts billing on configuration errors (see `breaker`).
    breaker: std::sync::Mutex<breaker::Breaker>,
    // While the configuration is unproven, one charge at a time holds this.
    probe: Arc<tokio::sync::Semaphore>,
}

/// What the lifecycle decided for one claimed subscription.
struct Planned {
    /// The new position, when it moved (skipped periods, completion, cancel at period end).
    moved: Option<PositionUpdate>,
    /// The events the move causes.
    notices: Vec<Notice>,
    /// The intent to write, when an attempt is due.
    charge: Option<NewCharge>,
}

/// Keeps a billing run finite whatever rows look like: a subscription that is claimed without
/// progress (nothing inserted, nothing moved), or claimed more often than any real schedule
/// allows in one run, is set aside until the next run and reported.
struct Progress {
    claims: HashMap<SubscriptionId, u32>,
    excluded: Vec<SubscriptionId>,
    limit: u32,
    // Rows last written before the run began (by the database's clock, which writes
    // `updated_at`) are on their first claim of the run and are not counted, so the map holds
    // only subscriptions the run has already moved: memory stays flat however many are due.
    counted_since: DateTime<Utc>,
}

impl Progress {
    fn new(config: &BillingConfig, started: DateTime<Utc>) -> Self {
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
        }
    }

    fn set_aside(&mut self, sub: SubscriptionId, why: &'static str) {
        tracing::warn!(subscription_id = %sub, reason = why, "subscription set aside for the rest of this billing run; it is billed again at the next run");
        metrics::counter!(crate::ops::metrics::BILLING_STALLED, "reason" => why).increment(1);
        self.excluded.push(sub);
    }
}

/// The payload of a lifecycle event.
pub(crate) fn notice_payload(n: &Notice) -> serde_json::Value {
    match n {
        Notice::PeriodsSkipped {
            first,
            last,
            first_start,
            last_start,
            reason,
        } => serde_json::json!({
            "first_period": first,
            "last_period": last,
            "periods": last - first + 1,
            "first_period_start": first_start,
            "last_period_start": last_start,
            "reason": reason.as_str(),
        }),
        Notice::Canceled { reason } => serde_json::json!({ "reason": reason }),
        _ => serde_json::json!({ "reason": "schedule" }),
    }
}

impl Engine {
    /// Starts a worker: a fresh owner id and its liveness lock.
    ///
    /// # Errors
    /// [`BillingError::Store`].
    pub async fn new(
        pool: PgPool,
        gateway: Arc<dyn PaymentGateway>,
        config: BillingConfig,
        location_id: Option<String>,
    ) -> Result<Self> {
        let owner = Uuid::new_v4();
        let probe_after = config.halt_probe_after;
        let mut conn = pool.acquire().await.map_err(StoreError::from)?.detach();
        charges::hold_owner_lock(&mut conn, owner).await?;
        Ok(Engine {
            pool,
            gateway,
            owner,
            config,
            location_id,
            liveness: Mutex::new(conn),
            alive: std::sync::atomic::AtomicBool::new(true),
            cancel: CancellationToken::new(),
            leased: Default::default(),
            passes: std::sync::atomic::AtomicU64::new(1),
            breaker: std::sync::Mutex::new(breaker::Breaker::new(probe_after)),
            probe: Arc::new(tokio::sync::Semaphore::new(1)),
        })
    }

    /// Makes the engine stop claiming and sending when `token` is cancelled (graceful
    /// shutdown); charges already sent finish and are recorded, intents never sent are
    /// withdrawn.
    pub fn with_cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// This worker's owner id (the `lease_owner` of its charges).
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    fn lease_until(&self) -> DateTime<Utc> {
        Utc::now()
            + chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::seconds(60))
    }

    fn plan(&self, sub: &SubscriptionRow, now: DateTime<Utc>) -> Result<Planned> {
        let build = |reason: String| BillingError::Build {
            subscription: sub.id,
            reason,
        };
        let terms = sub.terms()?;
        let before = sub.state()?;
        let settled = lifecycle::settle(&terms, &before, now, self.config.max_catch_up_periods)
            .map_err(|e| build(e.to_string()))?;
        let moved = settled.moved(&before).then(|| PositionUpdate {
            state: settled.state.clone(),
            card_id: sub.card_id.clone(),
        });
        let charge = match settled.bill {
            None => None,
            Some(bill) => {
                let key = IdempotencyKey::derive(sub.id, bill.period, bill.attempt)
                    .map_err(|e| build(e.to_string()))?;
                let id = ChargeId::new();
                let prepared = PreparedPayment::card_on_file(
                    key,
                    &sub.card_id,
                    &sub.customer_id,
                    sub.money,
                    id,
                    self.location_id.as_deref(),
                )
                .map_err(|e| build(e.to_string()))?;
                let int = |v: u32| i32::try_from(v).map_err(|e| build(e.to_string()));
                Some(NewCharge {
                    id,
                    subscription_id: sub.id,
                    period: int(bill.period)?,
                    period_start: bill.period_start,
                    attempt: int(bill.attempt)?,
                    customer_id: sub.customer_id.clone(),
                    card_id: sub.card_id.clone(),
                    money: sub.money,
                    request_fingerprint: prepared.fingerprint(),
                    idempotency_key: prepared.key,
                    request_body: prepared.body,
                })
            }
        };
        Ok(Planned {
            moved,
            notices: settled.notices,
            charge,
        })
    }

    /// Step 1 for one batch: locks up to `batch_size` due subscriptions as of `now` and, in
    /// the same transaction, writes their intents (or moves those with nothing to charge).
    /// `None` when nothing was due (or shutdown began).
    #[tracing::instrument(skip_all, fields(owner = %self.owner))]
    async fn claim_batch(
        &self,
        now: DateTime<Utc>,
        progress: &mut Progress,
    ) -> Result<Option<Claimed>> {
        if self.cancel.is_cancelled()
            || self.breaker().halted().is_some()
            || !self.check_liveness().await
        {
            return Ok(None);
        }
        let mut tx = self.pool.begin().await.map_err(StoreError::from)?;
        let limit = i64::from(self.config.batch_size);
        let mut unreadable = 0;
        let due = loop {
            match subscriptions::claim_due(&mut tx, now, limit, &progress.excluded).await {
                Ok(due) => break due,
                // Some due row cannot be read at all: find it one row at a time, quarantine
                // it, and claim again (the transaction is intact: decoding is client-side).
                Err(e) if e.is_unreadable_row() => {
                    let ids = subscriptions::claim_due_ids(&mut tx, now, limit, &progress.excluded)
                        .await?;
                    let mut found = 0;
                    for id in ids {
                        if let Err(why) = subscriptions::get(&mut tx, id).await
                            && why.is_unreadable_row()
                        {
                            self.quarantine(&mut tx, id, None, &why.to_string()).await?;
                            found += 1;
                        }
                    }
                    if found == 0 {
                        return Err(e.into());
                    }
                    unreadable += found;
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut summary = Summary {
            quarantined: unreadable,
            ..Summary::default()
        };
        if due.is_empty() {
            if unreadable > 0 {
                tx.commit().await.map_err(StoreError::from)?;
                return Ok(Some(Claimed {
                    charges: vec![],
                    summary,
                }));
            }
            tx.rollback().await.map_err(StoreError::from)?;
            return Ok(None);
        }
        let mut intents = Vec::with_capacity(due.len());
        let mut moved = std::collections::HashSet::new();
        let mut notices = Vec::new();
        for sub in &due {
            if sub.updated_at >= progress.counted_since {
                let claims = progress.claims.entry(sub.id).or_default();
                *claims += 1;
                if *claims > progress.limit {
                    progress.set_aside(sub.id, "claimed_too_often");
                    continue;
                }
            }
            let planned = match self.plan(sub, now) {
                Ok(p) => p,
                Err(e) => {
                    self.quarantine(&mut tx, sub.id, Some(&sub.customer_id), &e.to_string())
                        .await?;
                    summary.quarantined += 1;
                    continue;
                }
            };
            if let Some(update) = &planned.moved {
                subscriptions::set_position(&mut tx, sub.id, update).await?;
                moved.insert(sub.id);
                if planned.charge.is_none() {
                    summary.advanced_without_charge += 1;
                }
            }
            for n in &planned.notices {
                notices.push(NewEvent {
                    kind: n.kind(),
                    subscription_id: Some(sub.id),
                    customer_id: Some(sub.customer_id.clone()),
                    charge_id: None,
                    payload: notice_payload(n),
                });
            }
            if let Some(c) = planned.charge {
                intents.push(c);
            }
        }
        events::emit_many(&mut tx, &notices).await?;
        let card_ids: Vec<CardId> = intents.iter().map(|c| c.card_id.clone()).collect();
        let health = crate::store::cards::health(&mut tx, &card_ids).await?;
        let zones: HashMap<SubscriptionId, String> =
            due.iter().map(|s| (s.id, s.time_zone.clone())).collect();
        let inserted =
            charges::insert_intents(&mut tx, &intents, self.owner, self.lease_until()).await?;
        let opened: Vec<(SubscriptionId, ChargeId)> = intents
            .iter()
            .filter(|c| inserted.contains(&c.id))
            .map(|c| (c.subscription_id, c.id))
            .collect();
        subscriptions::open_charges(&mut tx, &opened).await?;
        tx.commit().await.map_err(StoreError::from)?;
        // A subscription that was due, had an attempt to make and neither got its intent nor
        // moved would be claimed again at once: set it aside so the run always ends.
        for c in &intents {
            if !inserted.contains(&c.id) && !moved.contains(&c.subscription_id) {
                progress.set_aside(c.subscription_id, "no_progress");
            }
        }
        let created_at = Utc::now();
        let charges: Vec<Queued> = intents
            .into_iter()
            .filter(|c| inserted.contains(&c.id))
            .map(|c| {
                let zone = zones
                    .get(&c.subscription_id)
                    .and_then(|z| z.parse::<chrono_tz::Tz>().ok())
                    .unwrap_or(chrono_tz::Tz::UTC);
                let problem =
                    card_problem(health.get(&c.card_id).copied(), now, zone).map(str::to_owned);
                let row = ChargeRow {
                    id: c.id,
                    subscription_id: c.subscription_id,
                    period: c.period,
                    period_start: c.period_start,
                    attempt: c.attempt,
                    idempotency_key: c.idempotency_key,
                    customer_id: c.customer_id,
                    card_id: c.card_id,
                    money: c.money,
                    status: ChargeStatus::Pending,
                    request_body: c.request_body,
                    request_fingerprint: c.request_fingerprint,
                    provider_payment_id: None,
                    decline_code: None,
                    sends: 0,
                    created_at,
                };
                Queued {
                    charge: row,
                    problem,
                }
            })
            .collect();
        Ok(Some(Claimed { charges, summary }))
    }

    /// One pass of billing: claims batch after batch until a claim finds nothing, while the
    /// charges of earlier batches are sent and recorded. The next claim runs while a batch is
    /// in flight, so Square is never left idle waiting for the database; at most one claimed
    /// batch waits in the queue (the heartbeat keeps its leases). Returns the summary and
    /// whether anything was claimed.
    async fn bill_pass(
        &self,
        now: DateTime<Utc>,
        progress: &mut Progress,
    ) -> Result<(Summary, bool)> {
        let (queue, mut queued) = tokio::sync::mpsc::channel::<Vec<Queued>>(1);
        let pass = self
            .passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let produce = async move {
            let mut summary = Summary::default();
            let mut claimed = false;
            while let Some(batch) = self.claim_batch(now, progress).await? {
                claimed = true;
                summary.merge(&batch.summary);
                let lease = Lease { pass, sent: false };
                self.leased()
                    .extend(batch.charges.iter().map(|q| (q.charge.id, lease)));
                if queue.send(batch.charges).await.is_err() {
                    // Sending stopped on an error; this batch is withdrawn below.
                    break;
                }
            }
            Ok::<_, BillingError>((summary, claimed))
        };
        let consume = async {
            let charges = futures::stream::unfold(&mut queued, |queued| async move {
                queued
                    .recv()
                    .await
                    .map(|batch| (futures::stream::iter(batch), queued))
            })
            .flatten()
            // Boxed: the compiler cannot otherwise see the borrowing stream is `Send` for the
            // daemon's spawned task.
            .boxed();
            let driven = self.drive(charges, now).await;
            // Stopped early on an error: refuse what the claimer has yet to hand over.
            queued.close();
            driven
        };
        let (produced, driven) = futures::join!(produce, consume);
        // After an error, intents claimed but never handed to Square (queued, or behind the
        // failure) are withdrawn: their subscriptions stay due. Whatever else is still pending
        // is left to recovery.
        let mut unsent: Vec<ChargeId> = Vec::new();
        self.leased().retain(|id, lease| {
            if lease.pass == pass && !lease.sent {
                unsent.push(*id);
            }
            lease.pass != pass
        });
        let withdrawn = if unsent.is_empty() {
            Ok(0)
        } else {
            self.withdraw_unsent(&unsent).await
        };
        let driven = driven?;
        let (mut summary, claimed) = produced?;
        summary.merge(&driven);
        summary.withdrawn += withdrawn?;
        Ok((summary, claimed))
    }

    /// Sends charges (each its stored body under its key), at most `concurrency` in flight,
    /// and records the outcomes in batches as they arrive.
    async fn drive_all(&self, charges: Vec<ChargeRow>, now: DateTime<Utc>) -> Result<Summary> {
        let ids: Vec<ChargeId> = charges.iter().map(|c| c.id).collect();
        let lease = Lease {
            pass: 0,
            sent: false,
        };
        self.leased().extend(ids.iter().map(|id| (*id, lease)));
        let queued = charges.into_iter().map(|charge| Queued {
            charge,
            problem: None,
        });
        let driven = self.drive(futures::stream::iter(queued), now).await;
        let mut leased = self.leased();
        for id in &ids {
            leased.remove(id);
        }
        driven
    }

    /// As [`Engine::drive_all`], over a stream of charges. A charge whose card failed the
    /// pre-check (disabled, forgotten or expired) is not sent: its attempt is recorded as
    /// declined with the card's own reason, and dunning treats it as a hard decline (fallback
    /// card or final state).
    async fn drive(
        &self,
        charges: impl futures::Stream<Item = Queued> + Send,
        now: DateTime<Utc>,
    ) -> Result<Summary> {
        let mut summary = Summary::default();
        let outcomes = charges
            .map(|queued| {
                let gateway = self.gateway.clone();
                let cancel = self.cancel.clone();
                async move {
                    let Queued { charge, problem } = queued;
                    if let Some(code) = problem {
                        return Attempted {
                            charge,
                            outcome: Some(PaymentOutcome::Declined {
                                code,
                                category: CARD_CHECK_CATEGORY.to_owned(),
                                hard: true,
                            }),
                            duration_ms: 0,
                            note: None,
                        };
                    }
                    // Until Square has proven the configuration, one charge at a time.
                    let _probe = if self.breaker().proven() {
                        None
                    } else {
                        self.probe.clone().acquire_owned().await.ok()
                    };
                    if cancel.is_cancelled()
                        || self.breaker().halted().is_some()
                        || !self.alive.load(std::sync::atomic::Ordering::SeqCst)
                    {
                        return Attempted {
                            charge,
                            outcome: None,
                            duration_ms: 0,
                            note: None,
                        };
                    }
                    // From here on the charge may reach Square: it is never withdrawn.
                    self.leased()
                        .entry(charge.id)
                        .or_insert(Lease {
                            pass: 0,
                            sent: true,
                        })
                        .sent = true;
                    let started = Instant::now();
                    metrics::gauge!(crate::ops::metrics::IN_FLIGHT).increment(1.0);
                    let prepared = PreparedPayment {
                        key: charge.idempotency_key.clone(),
                        body: charge.request_body.clone(),
                    };
                    // A task of its own: the call progresses while earlier outcomes are recorded.
                    let outcome =
                        tokio::spawn(async move { gateway.create_payment(&prepared).await })
                            .await
                            .unwrap_or_else(|e| PaymentOutcome::Unknown {
                                reason: format!("payment task failed: {e}"),
                            });
                    metrics::gauge!(crate::ops::metrics::IN_FLIGHT).decrement(1.0);
                    self.heed(&outcome);
                    Attempted {
                        charge,
                        outcome: Some(outcome),
                        duration_ms: started.elapsed().as_millis() as u64,
                        note: None,
                    }
                }
            })
            .buffer_unordered(self.config.concurrency)
            .ready_chunks(RECORD_BATCH)
            .map(|chunk| async move {
                let ids: Vec<ChargeId> = chunk.iter().map(|a| a.charge.id).collect();
                let recorded = self.record_batch(chunk, now).await;
                // Recorded, fenced, withdrawn or left open for recovery: no longer worked on.
                let mut leased = self.leased();
                for id in &ids {
                    leased.remove(id);
                }
                recorded
            })
            // Batches touch disjoint charges and subscriptions (one open intent per subscription),
            // so recording a few at once cannot deadlock.
            .buffer_unordered(RECORD_PARALLEL);
        let mut outcomes = std::pin::pin!(outcomes);
        let work = async {
            while let Some(recorded) = outcomes.next().await {
                summary.merge(&recorded?);
            }
            Ok::<_, BillingError>(())
        };
        tokio::select! {
            done = work => done?,
            () = self.heartbeat() => {}
        }
        Ok(summary)
    }

    /// Keeps this worker's leases on the charges it is working on (queued, in flight or being
    /// recorded) from running out while it works: every third of the lease, one statement
    /// extends them all. A charge left open by an unknown outcome leaves the set, so its lease
    /// runs out and recovery (ours or a peer's) can finish it. Never returns.
    async fn heartbeat(&self) {
        let every = (self.config.lease / 3).max(std::time::Duration::from_millis(100));
        loop {
            tokio::time::sleep(every).await;
            self.check_liveness().await;
            let ids: Vec<ChargeId> = self.leased().keys().copied().collect();
            if ids.is_empty() {
                continue;
            }
            let renewed = match self.pool.acquire().await {
                Ok(mut conn) => {
                    charges::extend_leases(&mut conn, self.owner, &ids, self.lease_until()).await
                }
                Err(e) => Err(StoreError::from(e)),
            };
            match renewed {
                Ok(n) => tracing::debug!(charges = n, "leases extended"),
                Err(e) => tracing::warn!(error = %e, "cannot extend leases"),
            }
        }
    }

    /// Quarantines a subscription the engine cannot read or move, in the caller's
    /// transaction: it is claimed no more until an operator releases it; billing goes on for
    /// everyone else.
    pub(crate) async fn quarantine(
        &self,
        conn: &mut PgConnection,
        id: SubscriptionId,
        customer: Option<&CustomerId>,
        reason: &str,
    ) -> Result<()> {
        if subscriptions::quarantine(conn, id, reason).await? {
            tracing::error!(
                subscription_id = %id, reason,
                "subscription quarantined: the engine cannot read or move it; billing goes on for the others (fix it, then `paycron subscription release ID`)"
            );
            metrics::counter!(crate::ops::metrics::QUARANTINED).increment(1);
            events::emit_many(
                conn,
                &[NewEvent {
                    kind: "subscription_needs_attention",
                    subscription_id: Some(id),
                    customer_id: customer.cloned(),
                    charge_id: None,
                    payload: serde_json::json!({ "reason": reason }),
                }],
            )
            .await?;
        }
        Ok(())
    }

    /// Whether this worker still holds its liveness lock. Its session is checked with a
    /// round trip; when the connection was lost (a database restart, a network blip) the lock
    /// is taken again on a new one. Until it is, nothing is claimed or sent: peers treat this
    /// worker as dead and may be taking its charges over.
    async fn check_liveness(&self) -> bool {
        use std::sync::atomic::Ordering::SeqCst;
        let mut conn = self.liveness.lock().await;
        if sqlx::query("SELECT 1").execute(&mut *conn).await.is_ok() {
            self.alive.store(true, SeqCst);
            return true;
        }
        if self.alive.swap(false, SeqCst) {
            tracing::warn!(owner = %self.owner, "liveness lock lost with its connection; nothing is sent until it is taken again");
        }
        let retaken = match self.pool.acquire().await {
            Ok(c) => {
                let mut c = c.detach();
                match charges::retake_owner_lock(&mut c, self.owner).await {
                    Ok(true) => Some(c),
                    _ => None,
                }
            }
            Err(_) => None,
        };
        match retaken {
            Some(c) => {
                *conn = c;
                self.alive.store(true, SeqCst);
                tracing::info!(owner = %self.owner, "liveness lock taken again");
                true
            }
            None => false,
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, breaker::Breaker> {
        self.breaker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Feeds Square's answer to the halt breaker, and says so when billing halts or resumes.
    fn heed(&self, outcome: &PaymentOutcome) {
        let change = match outcome {
            PaymentOutcome::Succeeded { .. } | PaymentOutcome::Declined { .. } => {
                self.breaker().proved()
            }
            PaymentOutcome::Misconfigured {
                code,
                field,
                detail,
                ..
            } => self.breaker().refused(
                breaker::Halt {
                    code: code.clone(),
                    field: field.clone(),
                    detail: detail.clone(),
                    setting: crate::domain::decline::suspect_setting(code, field.as_deref()),
                },
                Instant::now(),
            ),
            // A refused token is the configuration's fault too: no charge can succeed.
            PaymentOutcome::Fatal { code, detail, .. } => self.breaker().refused(
                breaker::Halt {
                    code: code.clone(),
                    field: None,
                    detail: detail.clone(),
                    setting: "SQUARE_ACCESS_TOKEN",
                },
                Instant::now(),
            ),
            _ => breaker::Change::None,
        };
        match change {
            breaker::Change::None => {}
            breaker::Change::Halted(h, backoff) => {
                metrics::gauge!(crate::ops::metrics::BILLING_HALTED).set(1.0);
                tracing::error!(
                    code = %h.code, field = h.field.as_deref().unwrap_or(""), setting = h.setting,
                    detail = %h.detail, probe_in_s = backoff.as_secs(),
                    "billing halted: Square refused the charges for a configuration reason; check {}",
                    h.setting
                );
            }
            breaker::Change::Resumed => {
                metrics::gauge!(crate::ops::metrics::BILLING_HALTED).set(0.0);
                tracing::info!("billing resumed: Square accepted the configuration again");
            }
        }
    }

    fn leased(&self) -> std::sync::MutexGuard<'_, HashMap<ChargeId, Lease>> {
        // A panic elsewhere cannot leave a set of ids inconsistent in a way that matters.
        self.leased.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Bills everything due as of `now`: batches until nothing is due, then re-drives this
    /// worker's own charges left open by an unknown outcome, once.
    ///
    /// # Errors
    /// [`BillingError`].
    pub async fn bill_due(&self, now: DateTime<Utc>) -> Result<Summary> {
        let mut total = Summary::default();
        if self.breaker().still_halted(Instant::now()) {
            tracing::debug!("billing halted; waiting for the next probe");
            return Ok(total);
        }
        let started = {
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            let started = subscriptions::db_now(&mut conn).await?;
            let warned = crate::store::cards::emit_expiring(
                &mut conn,
                now,
                self.config.card_expiry_lead_days,
            )
            .await?;
            if warned > 0 {
                tracing::info!(cards = warned, "card_expiring events emitted");
            }
            started
        };
        // A pass ends when a claim finds nothing, which may be because the due subscriptions
        // left had an intent of this pass still open (a catch-up's next period): passes repeat
        // until one claims nothing, starting each with nothing of ours in flight.
        let mut progress = Progress::new(&self.config, started);
        loop {
            let (pass, claimed) = self.bill_pass(now, &mut progress).await?;
            total.merge(&pass);
            if !claimed {
                break;
            }
        }
        if total.unresolved > 0 {
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            let open = charges::owned_pending(&mut conn, self.owner).await?;
            drop(conn);
            let again = self.recover_charges(open, now).await?;
            total.unresolved = total
                .unresolved
                .saturating_sub(again.succeeded + again.declined + again.failed + again.fenced);
            let unresolved_before = total.unresolved;
            total.merge(&Summary {
                unresolved: 0,
                ..again
            });
            total.unresolved = unresolved_before;
        }
        if let Some(h) = self.breaker().halted() {
            return Err(BillingError::Halted(h.clone()));
        }
        Ok(total)
    }

    async fn redrive(&self, open: Vec<ChargeRow>, now: DateTime<Utc>) -> Result<Summary> {
        let mut mine = Vec::with_capacity(open.len());
        let mut summary = Summary::default();
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        for c in open {
            if charges::renew_lease(&mut conn, c.id, self.owner, self.lease_until()).await? {
                mine.push(c);
            } else {
                summary.fenced += 1;
            }
        }
        drop(conn);
        summary.merge(&self.drive_all(mine, now).await?);
        Ok(summary)
    }

    /// Takes over and finishes pending charges whose owner is gone: a dead process (its
    /// liveness lock dropped) or an expired lease. Charges older than the configured age are
    /// first looked up at Square by `reference_id`; the rest are re-sent byte for byte under
    /// their key, which Square answers with the original payment if one exists.
    ///
    /// # Errors
    /// [`BillingError`].
    #[tracing::instrument(skip_all, fields(owner = %self.owner))]
    pub async fn recover(&self, now: DateTime<Utc>) -> Result<Summary> {
        let mut total = Summary::default();
        loop {
            let busy: Vec<ChargeId> = self.leased().keys().copied().collect();
            let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
            let orphans = charges::claim_orphans(
                &mut conn,
                Utc::now(),
                self.owner,
                self.lease_until(),
                i64::from(self.config.batch_size),
                &busy,
            )
            .await?;
            drop(conn);
            if orphans.is_empty() {
                break;
            }
            tracing::info!(count = orphans.len(), "recovering pending charges");
            total.merge(&self.recover_charges(orphans, now).await?);
        }
        Ok(total)
    }

    /// The one recovery path for intents of ours (taken over, or left open in this process):
    /// one sent [`MAX_RESENDS`] times without a decisive answer goes to review; one older than
    /// the stale age is looked up at Square first (Square keeps keys for an unpublished time, so
    /// a blind re-send could be a second payment); the rest are re-sent byte for byte.
    async fn recover_charges(&self, open: Vec<ChargeRow>, now: DateTime<Utc>) -> Result<Summary> {
        let mut total = Summary::default();
        let stale_after = chrono::Duration::from_std(self.config.stale_lookup_after)
            .unwrap_or(chrono::Duration::hours(24));
        let mut resend = Vec::new();
        let mut give_up = Vec::new();
        for c in open {
            let age = Utc::now() - c.created_at;
            if c.sends >= MAX_RESENDS {
                let reason = format!(
                    "no decisive answer from Square after {} sends over {} h; look the payment up in Square's dashboard by reference_id {}",
                    c.sends + 1,
                    age.num_hours(),
                    c.id
                );
                give_up.push(Attempted {
                    charge: c,
                    outcome: Some(PaymentOutcome::Undecided { reason }),
                    duration_ms: 0,
                    note: None,
                });
                continue;
            }
            if age > stale_after
                && let Some(s) = self.settle_from_lookup(&c, now).await?
            {
                total.merge(&s);
                continue;
            }
            resend.push(c);
        }
        if !give_up.is_empty() {
            total.merge(&self.record_batch(give_up, now).await?);
        }
        total.merge(&self.redrive(resend, now).await?);
        Ok(total)
    }

    /// Records a payment Square took for a still-pending charge (reconcile's repair), through
    /// the normal record path: the charge's lease is taken, then the outcome is recorded, fenced
    /// and idempotent. False when the charge was no longer pending.
    ///
    /// # Errors
    /// [`BillingError`].
    pub async fn repair(
        &self,
        charge: &ChargeRow,
        payment: &crate::gateway::wire::Payment,
    ) -> Result<bool> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        if !charges::take_lease(&mut conn, charge.id, self.owner, self.lease_until()).await? {
            return Ok(false);
        }
        drop(conn);
        let found = Attempted::found_at_square(charge, payment);
        tracing::info!(charge_id = %charge.id, provider_payment_id = %payment.id, "reconcile: recording a payment Square took");
        let s = self.record_batch(vec![found], Utc::now()).await?;
        Ok(s.succeeded == 1)
    }

    /// Records an operator's decision on a charge in review, through the normal record path:
    /// `paid` with the Square payment that paid it, or `None` (no money taken: the period is
    /// billed again at once under a new key, without a dunning step). False when the charge
    /// was no longer in review.
    ///
    /// # Errors
    /// [`BillingError`].
    pub async fn resolve_review(
        &self,
        charge: &ChargeRow,
        paid: Option<String>,
        note: &str,
    ) -> Result<bool> {
        let mut conn = self.pool.acquire().await.map_err(StoreError::from)?;
        if !charges::take_review(&mut conn, charge.id, self.owner, self.lease_until()).await? {
            return Ok(false);
        }
        drop(conn);
        let outcome = match paid {
            Some(payment_id) => PaymentOutcome::Succeeded {
                answer: Box::new(crate::domain::answer::Answer {
                    payment_id: payment_id.clone(),
                    status: "COMPLETED".into(),
                    amount_minor: charge.money.minor(),
                    currency: charge.money.currency().as_str().to_owned(),
                    customer_id: Some(charge.customer_id.to_string()),
                    card_id: Some(charge.card_id.to_string()),
                    location_id: self.location_id.clone(),
                    reference_id: Some(charge.id.to_string()),
                }),
                payment_id,
            },
            None => PaymentOutcome::Voided,
        };
        let mut charge = charge.clone();
        charge.status = ChargeStatus::NeedsReview;
        tracing::info!(charge_id = %charge.id, decision = if matches!(outcome, PaymentOutcome::Voided) { "unpaid" } else { "paid" }, "recording an operator's decision on a charge in review");
        let s = self
            .record_batch(
                vec![Attempted {
                    charge,
                    outcome: Some(outcome),
                    duration_ms: 0,
                    note: Some(note.to_owned()),
                }],
                Utc::now(),
            )
            .await?;
        Ok(s.fenced == 0 && s.attempted == 1)
    }

    /// Looks a stale intent up at Square (ListPayments over its time window, matched on
    /// `reference_id`). Records it when Square took the money; `None` means "not found, re-send".
    async fn settle_from_lookup(
        &self,
        c: &ChargeRow,
        now: DateTime<Utc>,
    ) -> Result<Option<Summary>> {
        let begin = (c.created_at - chrono::Duration::minutes(5)).to_rfc3339();
        let end = (Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
        let reference = c.id.to_string();
        let mut cursor: Option<String> = None;
        loop {
            let page = self
                .gateway
                .list_payments(&begin, &end, cursor.as_deref())
                .await?;
            if let Some(p) = page.items.iter().find(|p| {
                p.reference_id.as_deref() == Some(reference.as_str())
                    && (p.status == "COMPLETED" || p.status == "APPROVED")
            }) {
                let found = Attempted::found_at_square(c, p);
                tracing::info!(charge_id = %c.id, provider_payment_id = %p.id, "stale intent found at Square");
                return Ok(Some(self.record_batch(vec![found], now).await?));
            }
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(None),
            }
        }
    }
}
