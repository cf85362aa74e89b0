//! The billing engine: the charge protocol of the project's design.
//!
//! 1. **Claim** (`Engine::claim_batch`): in one transaction, lock due subscriptions
//!    (`FOR UPDATE SKIP LOCKED`), write a `pending` charge per subscription period with a
//!    lease and a deterministic idempotency key, commit. The charge is durable before any
//!    money moves; unique constraints make a second charge for the same attempt impossible
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
//!
//! By concept: `claim` (step 1), `pipeline` (a billing pass: claim while sending, record in
//! batches, the heartbeat), `record` (step 3 and the answer check), `recover` (step 4, repair,
//! review decisions), `leases` (the leases, the liveness lock and the halt breaker's feed),
//! `breaker` (the halt), `settle` (the CLI's settle after a command), `sync` (sync-cards).

pub mod breaker;
mod claim;
pub mod clock;
mod commit;
mod dry_run;
mod leases;
mod outcome;
mod pipeline;
mod progress;
pub mod reconcile;
mod record;
mod recover;
pub mod refunds;
mod settle;
pub use claim::{CARD_CHECK_CATEGORY, card_problem};
pub use dry_run::{WouldCharge, WouldRecover};
use progress::Progress;
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
use crate::domain::{ChargeId, ChargeStatus, CustomerId, IdempotencyKey, SubscriptionId};
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
    /// The billing task was cancelled with the runtime (the process is ending).
    #[error("billing stopped: {0}")]
    Stopped(String),
    /// sync-cards read every listing but would have disabled too many cards at once.
    #[error(
        "sync-cards: Square no longer lists {missing} of the {enabled} enabled cards on file; none were disabled, as that many at once looks like another seller's SQUARE_ACCESS_TOKEN (or SQUARE_ENVIRONMENT) rather than customers leaving: check them, or disable those cards by hand if it is true"
    )]
    SyncHeld {
        /// Enabled cards no listing showed.
        missing: i64,
        /// Enabled cards on file.
        enabled: i64,
    },
    /// Another process began a new sync-cards run while this one was idle past its limit.
    #[error("sync-cards run {run_id} was superseded by a newer run; nothing more was filed by it")]
    SyncSuperseded {
        /// The run that stopped.
        run_id: uuid::Uuid,
    },
}

/// Module result.
pub type Result<T> = std::result::Result<T, BillingError>;

tokio::task_local! {
    /// The id of the billing or recovery pass running in this task.
    static RUN_ID: uuid::Uuid;
}

/// The current pass's id, inside [`with_run_id`].
pub(crate) fn run_id() -> Option<uuid::Uuid> {
    RUN_ID.try_with(|id| *id).ok()
}

/// Runs a pass under a new run id, and puts it in the pass's summary.
pub(crate) async fn with_run_id(
    pass: impl std::future::Future<Output = Result<Summary>>,
) -> Result<Summary> {
    let id = uuid::Uuid::now_v7();
    RUN_ID.scope(id, pass).await.map(|mut s| {
        s.run_id = Some(id);
        s
    })
}

/// Counters for one run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// The pass's id: every charge line of the pass carries it, and so does its summary line.
    pub run_id: Option<uuid::Uuid>,
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
    /// Charges withdrawn unsent at shutdown (the subscription stays due).
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

/// Re-sends of one charge without a decisive answer before recovery gives up and sends it to
/// review. With [`resend_backoff`] they span about eight hours, longer than any outage worth
/// waiting out.
pub const MAX_RESENDS: i32 = 10;

/// How long a pending charge whose answer was undecided waits before recovery tries it again: the
/// lease, doubling with each re-send, at most two hours.
pub fn resend_backoff(sends: i32, lease: std::time::Duration) -> chrono::Duration {
    let lease = chrono::Duration::from_std(lease).unwrap_or(chrono::Duration::seconds(60));
    (lease * (1i32 << sends.clamp(0, 7))).min(chrono::Duration::hours(2))
}

/// Outcomes recorded per transaction.
const RECORD_BATCH: usize = 128;
/// Batches recorded at once.
const RECORD_PARALLEL: usize = 4;
/// How long the first answer of a record batch waits for others to join it.
const RECORD_WINDOW: std::time::Duration = std::time::Duration::from_millis(10);
/// Answers waiting for the recorder at most: beyond it, calls wait for recording to catch up.
const RECORD_BACKLOG: usize = 4096;

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
    leased: leases::Leases,
    // Numbers billing passes (0 is re-driving), so a pass withdraws only its own charges.
    passes: std::sync::atomic::AtomicU64,
    // The wall clock (leases, ages, backoffs, probes).
    clock: clock::Clock,
    // Halts billing on configuration errors (see `breaker`).
    breaker: std::sync::Mutex<breaker::Breaker>,
    // While the configuration is unproven, one charge at a time holds this.
    probe: Arc<tokio::sync::Semaphore>,
    // Told how many charges each recorded batch attempted (a long command's progress).
    progress: Option<Arc<dyn Fn(u64) + Send + Sync>>,
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
            clock: clock::Clock::system(),
            breaker: std::sync::Mutex::new(breaker::Breaker::new(probe_after)),
            probe: Arc::new(tokio::sync::Semaphore::new(1)),
            progress: None,
        })
    }

    /// Makes the engine stop claiming and sending when `token` is cancelled (graceful
    /// shutdown); charges already sent finish and are recorded, charges never sent are
    /// withdrawn.
    pub fn with_cancel(mut self, token: CancellationToken) -> Self {
        self.cancel = token;
        self
    }

    /// Calls `progress` with the number of charges each recorded batch attempted.
    pub fn with_progress(mut self, progress: Arc<dyn Fn(u64) + Send + Sync>) -> Self {
        self.progress = Some(progress);
        self
    }

    /// Makes the engine read `clock` for every wall-clock decision (tests advance it instead of
    /// sleeping).
    pub fn with_clock(mut self, clock: clock::Clock) -> Self {
        self.clock = clock;
        self
    }

    /// This worker's owner id (the `lease_owner` of its charges).
    pub fn owner(&self) -> Uuid {
        self.owner
    }

    fn lease_until(&self) -> DateTime<Utc> {
        self.clock.now()
            + chrono::Duration::from_std(self.config.lease).unwrap_or(chrono::Duration::seconds(60))
    }
}
