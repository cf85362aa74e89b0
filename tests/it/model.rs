//! Model-based test of the subscription lifecycle: random sequences of business actions, card
//! changes, approvals and declines, clock steps and daemon downtime, driven through the real
//! engine on a real Postgres and the simulator, and compared after every step with a small
//! reference model written here from the rules in DESIGN.md:
//!
//! - billing starts with the first period that begins at or after creation;
//! - periods that begin while paused are skipped; a resume bills next the first period that
//!   begins at or after it (dunning resumes where it stood);
//! - nothing after a cancel, nothing after the current period with cancel at period end,
//!   nothing from `cycles` on or at or after `ends_at`;
//! - more than `max` periods due at once bills only the most recent `max`;
//! - a soft decline retries 1, 3, 5 and 7 days after the period's first decline, then unpaid;
//!   a card change revives an unpaid subscription;
//! - a hard decline (a card Square refuses for good, or one disabled at Square, which paycron
//!   refuses itself) moves to the customer's most recently updated other enabled card: at once
//!   after the period's first decline, on the dunning schedule after that (a fallback counts as
//!   a retry); with no other card, or no retry left, the subscription is unpaid.
//!
//! After every step the periods charged at Square and in the database are exactly the model's,
//! so no period is charged twice, none that must not be, and every one that is due is. Every
//! pass must end. `PAYCRON_MODEL_CASES` sets the number of sequences (default 300).

use std::collections::BTreeSet;

use chrono::{DateTime, Duration, Utc};
use chrono_tz::Tz;
use paycron::billing::Engine;
use paycron::domain::Calendar;
use paycron::simulator::{SimConfig, Simulator};
use proptest::prelude::*;
use proptest::test_runner::{Config as RunnerConfig, TestRunner};
use uuid::Uuid;

use crate::helpers::{TestDb, app, client, fresh_db, sim};

const MAX_CATCH_UP: u32 = 3;
const RETRY_DAYS: [i64; 4] = [1, 3, 5, 7];

#[derive(Clone, Debug)]
struct Plan {
    unit: &'static str,
    count: u32,
    anchor_minutes: i64,
    zone: &'static str,
    trial_days: i64,
    cycles: Option<u32>,
    ends_after_days: Option<i64>,
}

#[derive(Clone, Copy, Debug)]
enum Op {
    /// The clock moves on and the daemon bills.
    Step(i64),
    /// The daemon was down for this many days, then bills.
    Downtime(i64),
    Pause,
    Resume,
    CancelNow,
    CancelAtPeriodEnd,
    /// The business changes the card: to one Square approves, declines softly or declines
    /// for good.
    UseCard(Card),
    /// Square disabled the card the subscription is charged on (`card.disabled`).
    CardDisabled,
    /// Square updated the card (`card.automatically_updated`).
    CardUpdated,
}

/// The customer's three cards, in the order paycron falls back to them (most recently
/// updated first: the test dates them so).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Card {
    Soft = 0,
    Ok = 1,
    Hard = 2,
}

const CARDS: [Card; 3] = [Card::Soft, Card::Ok, Card::Hard];

fn plan() -> impl Strategy<Value = Plan> {
    (
        prop::sample::select(vec![
            ("day", 1u32),
            ("day", 3),
            ("week", 1),
            ("month", 1),
            ("month", 2),
        ]),
        -60 * 24 * 40..60 * 24 * 5i64,
        prop::sample::select(vec![
            "UTC",
            "America/New_York",
            "Europe/Paris",
            "Australia/Sydney",
        ]),
        prop::sample::select(vec![0i64, 0, 3]),
        prop::option::weighted(0.3, 2..8u32),
        prop::option::weighted(0.2, 10..90i64),
    )
        .prop_map(
            |((unit, count), anchor_minutes, zone, trial_days, cycles, ends_after_days)| Plan {
                unit,
                count,
                anchor_minutes,
                zone,
                trial_days,
                cycles,
                ends_after_days,
            },
        )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::sample::select(vec![5i64, 60, 6 * 60, 24 * 60, 2 * 24 * 60, 7 * 24 * 60, 31 * 24 * 60])
            .prop_map(Op::Step),
        1 => (20..150i64).prop_map(Op::Downtime),
        1 => Just(Op::Pause),
        1 => Just(Op::Resume),
        1 => Just(Op::CancelNow),
        1 => Just(Op::CancelAtPeriodEnd),
        2 => prop::sample::select(CARDS.to_vec()).prop_map(Op::UseCard),
        1 => Just(Op::CardDisabled),
        1 => Just(Op::CardUpdated),
    ]
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    Live,
    Paused,
    Unpaid,
    Canceled,
    Completed,
}

/// The reference model of one subscription.
struct Model {
    cal: Calendar,
    cycles: Option<u32>,
    ends_at: Option<DateTime<Utc>>,
    st: St,
    /// Next period to bill, and its attempt number.
    next: u32,
    attempt: u32,
    past_due: bool,
    /// First decline of the current period, and when the next retry is due.
    dunning: Option<(DateTime<Utc>, DateTime<Utc>)>,
    cancel_at_end: bool,
    card: Card,
    enabled: [bool; 3],
    paid: BTreeSet<u32>,
}

impl Model {
    fn start(&self, p: u32) -> DateTime<Utc> {
        self.cal.period_start(p).unwrap()
    }

    fn over(&self, p: u32) -> bool {
        self.cycles.is_some_and(|c| p >= c) || self.ends_at.is_some_and(|e| self.start(p) >= e)
    }

    /// One billing pass at `now`.
    fn bill(&mut self, now: DateTime<Utc>) {
        for _ in 0..1000 {
            if self.st != St::Live {
                return;
            }
            if let Some((_, retry)) = self.dunning {
                if retry > now {
                    return;
                }
            } else {
                let due = self.start(self.next) <= now;
                if due && self.cancel_at_end {
                    self.st = St::Canceled;
                    return;
                }
                if due {
                    let mut last = self.next;
                    while self.start(last + 1) <= now {
                        last += 1;
                    }
                    if last - self.next + 1 > MAX_CATCH_UP {
                        self.next = last + 1 - MAX_CATCH_UP;
                        self.attempt = 1;
                    }
                }
                // Nothing left to bill: completed as soon as the engine looks.
                if self.over(self.next) {
                    self.st = St::Completed;
                    return;
                }
                if !due {
                    return;
                }
            }
            let usable = self.enabled[self.card as usize];
            if usable && self.card == Card::Ok {
                assert!(
                    self.paid.insert(self.next),
                    "model charged {} twice",
                    self.next
                );
                self.next += 1;
                self.attempt = 1;
                self.past_due = false;
                self.dunning = None;
                if self.over(self.next) {
                    self.st = St::Completed;
                }
            } else if !usable || self.card == Card::Hard {
                let first = self.dunning.is_none();
                let started = self.dunning.map(|d| d.0).unwrap_or(now);
                let spare = CARDS
                    .into_iter()
                    .find(|c| *c != self.card && self.enabled[*c as usize]);
                let used = (self.attempt - 1) as usize;
                self.attempt += 1;
                // The other card at once after the period's first decline only; later on the
                // dunning schedule, and a fallback counts as a retry.
                let retry_at = match (spare, first) {
                    (None, _) => None,
                    (Some(_), true) => Some(now),
                    (Some(_), false) => RETRY_DAYS
                        .get(used)
                        .map(|days| (started + Duration::days(*days)).max(now)),
                };
                match (spare, retry_at) {
                    (Some(c), Some(at)) => {
                        self.card = c;
                        self.past_due = true;
                        self.dunning = Some((started, at));
                    }
                    _ => {
                        self.st = St::Unpaid;
                        self.dunning = Some((started, now));
                    }
                }
            } else {
                let started = self.dunning.map(|d| d.0).unwrap_or(now);
                let used = (self.attempt - 1) as usize;
                self.attempt += 1;
                match RETRY_DAYS.get(used) {
                    Some(days) => {
                        self.past_due = true;
                        self.dunning = Some((started, (started + Duration::days(*days)).max(now)));
                    }
                    None => {
                        self.st = St::Unpaid;
                        self.dunning = Some((started, now));
                    }
                }
            }
        }
        panic!("the model's pass did not end");
    }

    /// Applies a command; false when the subscription's state refuses it.
    fn command(&mut self, op: Op, now: DateTime<Utc>) -> bool {
        match op {
            Op::Pause => match self.st {
                St::Live => self.st = St::Paused,
                St::Paused => {}
                _ => return false,
            },
            Op::Resume => match self.st {
                St::Paused => {
                    self.st = St::Live;
                    if self.dunning.is_none() {
                        let first = self.cal.first_period_at_or_after(now).unwrap();
                        if first > self.next {
                            self.next = first;
                            self.attempt = 1;
                            self.past_due = false;
                        }
                    }
                }
                St::Live => {}
                _ => return false,
            },
            Op::CancelNow => {
                if !matches!(self.st, St::Canceled | St::Completed) {
                    self.st = St::Canceled;
                }
            }
            Op::CancelAtPeriodEnd => match self.st {
                St::Canceled | St::Completed => {}
                St::Live if !self.past_due => self.cancel_at_end = true,
                _ => self.st = St::Canceled,
            },
            Op::UseCard(card) => {
                if matches!(self.st, St::Canceled | St::Completed) || !self.enabled[card as usize] {
                    return false;
                }
                self.card = card;
                self.revive(now);
            }
            Op::CardUpdated => self.revive(now),
            Op::CardDisabled => self.enabled[self.card as usize] = false,
            Op::Step(_) | Op::Downtime(_) => unreachable!(),
        }
        true
    }

    fn revive(&mut self, now: DateTime<Utc>) {
        match self.st {
            St::Unpaid => {
                self.st = St::Live;
                self.past_due = true;
                self.dunning = None;
            }
            St::Live if self.past_due => {
                if let Some((started, _)) = self.dunning {
                    self.dunning = Some((started, now));
                }
            }
            _ => {}
        }
    }
}

struct World {
    db: TestDb,
    sim: Simulator,
    engine: Engine,
}

async fn charged(w: &World, sub: Uuid, customer: &str) -> (BTreeSet<u32>, usize) {
    let periods: Vec<i32> = sqlx::query_scalar(
        "SELECT period FROM paycron.charges WHERE subscription_id = $1 AND status = 'succeeded'",
    )
    .bind(sub)
    .fetch_all(&w.db.pool)
    .await
    .unwrap();
    let at_square = w.sim.with(|st| {
        st.completed()
            .iter()
            .filter(|p| p.customer_id.as_deref() == Some(customer))
            .count()
    });
    (periods.into_iter().map(|p| p as u32).collect(), at_square)
}

async fn run_case(
    w: &World,
    n: usize,
    start: DateTime<Utc>,
    plan: &Plan,
    ops: &[Op],
) -> Result<(), TestCaseError> {
    let customer = format!("MODEL{n:05}");
    let card_ids = [
        format!("ccof:sim-insufficient-funds-m{n:05}"),
        format!("ccof:sim-ok-m{n:05}"),
        format!("ccof:sim-card-expired-m{n:05}"),
    ];
    let ok = &card_ids[Card::Ok as usize];
    for (i, card) in card_ids.iter().enumerate() {
        w.sim.with(|st| st.add_card(&customer, card, "VISA", true));
        sqlx::query("SELECT paycron.upsert_customer_card($1, $2, 'VISA', '1111', 12, 2099)")
            .bind(&customer)
            .bind(card)
            .execute(&w.db.pool)
            .await
            .unwrap();
        // The fallback order is the cards' update order, newest first: fixed here.
        sqlx::query("UPDATE paycron.cards SET updated_at = '2020-01-01T00:00:00Z'::timestamptz - $2 * interval '1 hour' WHERE id = $1")
            .bind(card)
            .bind(i as i32)
            .execute(&w.db.pool)
            .await
            .unwrap();
    }
    let mut now = start;
    let anchor = start + Duration::minutes(plan.anchor_minutes);
    let eff_anchor = anchor + Duration::days(plan.trial_days);
    let ends_at = plan
        .ends_after_days
        .map(|d| eff_anchor.max(start) + Duration::days(d));
    let sub: Uuid = sqlx::query_scalar(
        "SELECT paycron.create_subscription($1, 700, 'USD', $2, $3, $4, $5, $6, $7, $8, NULL, $9, $10)",
    )
    .bind(&customer)
    .bind(plan.unit)
    .bind(plan.count as i32)
    .bind(ok)
    .bind(anchor)
    .bind(plan.zone)
    .bind(plan.cycles.map(|c| c as i32))
    .bind(plan.trial_days as i32)
    .bind(ends_at)
    .bind(now)
    .fetch_one(&w.db.pool)
    .await
    .map_err(|e| TestCaseError::fail(format!("create: {e}")))?;
    let cal = Calendar {
        anchor: eff_anchor,
        interval: format!("{}{}", plan.count, plan.unit).parse().unwrap(),
        zone: plan.zone.parse::<Tz>().unwrap(),
    };
    let mut m = Model {
        cal,
        cycles: plan.cycles,
        ends_at,
        st: St::Live,
        next: if eff_anchor < now {
            cal.first_period_at_or_after(now).unwrap()
        } else {
            0
        },
        attempt: 1,
        past_due: false,
        dunning: None,
        cancel_at_end: false,
        card: Card::Ok,
        enabled: [true; 3],
        paid: BTreeSet::new(),
    };
    for (i, op) in ops.iter().enumerate() {
        match *op {
            Op::Step(minutes) | Op::Downtime(minutes) => {
                let by = if matches!(op, Op::Downtime(_)) {
                    Duration::days(minutes)
                } else {
                    Duration::minutes(minutes)
                };
                now += by;
                tokio::time::timeout(std::time::Duration::from_secs(60), w.engine.bill_due(now))
                    .await
                    .map_err(|_| {
                        TestCaseError::fail(format!(
                            "step {i}: the billing pass at {now} never ended"
                        ))
                    })?
                    .map_err(|e| TestCaseError::fail(format!("step {i}: {e}")))?;
                m.bill(now);
            }
            cmd => {
                let sql = match cmd {
                    Op::Pause => "SELECT paycron.pause_subscription($1, $2)".to_owned(),
                    Op::Resume => "SELECT paycron.resume_subscription($1, $2)".to_owned(),
                    Op::CancelNow => "SELECT paycron.cancel_subscription($1, false, $2)".to_owned(),
                    Op::CancelAtPeriodEnd => "SELECT paycron.cancel_subscription($1, true, $2)".to_owned(),
                    Op::UseCard(card) => format!(
                        "SELECT paycron.change_card($1, '{}', $2)",
                        card_ids[card as usize]
                    ),
                    // As the `card.disabled` webhook does.
                    Op::CardDisabled => "UPDATE paycron.cards SET enabled = false, updated_at = now() WHERE id = (SELECT card_id FROM paycron.subscriptions WHERE id = $1) AND $2::timestamptz IS NOT NULL".to_owned(),
                    Op::CardUpdated => "SELECT paycron.card_updated(card_id, $2) FROM paycron.subscriptions WHERE id = $1".to_owned(),
                    _ => unreachable!(),
                };
                let result = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(sub)
                    .bind(now)
                    .execute(&w.db.pool)
                    .await;
                let allowed = m.command(cmd, now);
                prop_assert_eq!(
                    result.is_ok(),
                    allowed,
                    "step {}: {:?} at {}: {:?}",
                    i,
                    cmd,
                    now,
                    result.err()
                );
            }
        }
        let (db, at_square) = charged(w, sub, &customer).await;
        prop_assert_eq!(
            &db,
            &m.paid,
            "step {} ({:?}) at {}: periods charged vs the model",
            i,
            op,
            now
        );
        prop_assert_eq!(at_square, m.paid.len(), "step {}: payments at Square", i);
    }
    // This sequence is over: its subscription must never bill in the next one's clock.
    sqlx::query(
        "UPDATE paycron.subscriptions SET status = 'canceled', next_due_at = NULL WHERE id = $1",
    )
    .bind(sub)
    .execute(&w.db.pool)
    .await
    .unwrap();
    Ok(())
}

#[test]
fn random_lifecycles_match_the_reference_model() {
    let cases: u32 = std::env::var("PAYCRON_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let world = rt.block_on(async {
        let s = sim(SimConfig::default()).await;
        let db = fresh_db().await;
        let mut a = app(&db, &s.base_url());
        a.config.billing.max_catch_up_periods = MAX_CATCH_UP;
        let engine = a.engine(client(&a.config)).await.unwrap();
        World { db, sim: s, engine }
    });
    let counter = std::sync::atomic::AtomicUsize::new(0);
    let mut runner = TestRunner::new(RunnerConfig {
        cases,
        failure_persistence: None,
        ..RunnerConfig::default()
    });
    let strategy = (
        0..365 * 24 * 60i64,
        plan(),
        prop::collection::vec(op(), 1..14),
    );
    let result = runner.run(&strategy, |(offset, plan, ops)| {
        let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let start = DateTime::parse_from_rfc3339("2027-01-01T00:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
            + Duration::minutes(offset);
        rt.block_on(run_case(&world, n, start, &plan, &ops))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
