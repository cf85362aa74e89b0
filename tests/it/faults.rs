//! Invariant 3 under crashes, replicas and injected faults: every due period ends with
//! exactly one successful payment at the simulator, and the ledger matches it one to one.

use std::process::Stdio;
use std::time::Duration;

use paycron::simulator::{Faults, SimConfig, Simulator};

use crate::helpers::{TestDb, fresh_db, paycron, run, seed_card, sim, slow_sim};

const NOW: &str = "2027-04-15T00:00:00Z";

/// `subs` monthly subscriptions anchored 2027-01-01..: three periods each are due at NOW.
async fn setup(db: &TestDb, s: &Simulator, subs: usize) -> usize {
    for i in 0..subs {
        let customer = format!("KC{i:04}");
        let card = format!("ccof:sim-ok-k{i:04}");
        s.with(|st| st.add_card(&customer, &card, "VISA", true));
        seed_card(db, &customer, &card).await;
        sqlx::query(
            "SELECT paycron.create_subscription($1, $2, 'USD', 'month', 1, NULL, $3::timestamptz, p_now => $3::timestamptz)",
        )
        .bind(&customer)
        .bind(1000 + i as i64)
        .bind(format!("2027-01-{:02}T10:00:00Z", 1 + i % 28))
        .execute(&db.pool)
        .await
        .unwrap();
    }
    subs * 4 // periods starting Jan, Feb, Mar, Apr (all before Apr 15 for days 1-14; see audit)
}

/// Checks invariant 3 and the ledger against the simulator's own record.
async fn audit(db: &TestDb, s: &Simulator) -> usize {
    // The shared audit: nothing pending, each payment names a charge, no period paid twice, the
    // ledger's successes are exactly the simulator's payments.
    let audit = crate::helpers::assert_exactly_once(db, s).await;
    // Every due period was charged: the engine's view of what is due matches.
    let due_left: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paycron.subscriptions WHERE next_due_at <= $1::timestamptz",
    )
    .bind(NOW)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(due_left, 0, "nothing due left unbilled");
    // Periods beyond the catch-up bound are skipped for good, and announced.
    let expected: i64 = sqlx::query_scalar(
        "SELECT ((SELECT sum(next_period) FROM paycron.subscriptions)
              - (SELECT coalesce(sum((payload->>'periods')::bigint), 0) FROM paycron.events WHERE type = 'period_skipped'))::bigint",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        audit.periods as i64, expected,
        "one payment per billed period"
    );
    // Every recorded outcome has exactly one event, in the same transaction.
    let dup_or_missing: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paycron.ledger_entries e
          WHERE (SELECT count(*) FROM paycron.events v
                  WHERE v.charge_id = e.charge_id
                    AND v.type = CASE e.status WHEN 'succeeded' THEN 'payment_succeeded' ELSE 'payment_declined' END) <> 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(dup_or_missing, 0, "one event per recorded outcome");
    audit.payments
}

async fn finish(db: &TestDb, s: &Simulator) {
    for round in 0..6 {
        let (code, _, err) =
            run(paycron(Some(&db.url), Some(&s.base_url())).args(["run-once", "--now", NOW])).await;
        if code == 0 {
            return;
        }
        assert_eq!(code, 1, "round {round}: {err}");
    }
    panic!("work never completed");
}

fn pseudo_random(seed: &mut u64) -> u64 {
    // xorshift: reproducible kill instants without another dependency.
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

async fn kill_rounds(kills: usize, seed: u64) {
    let s = sim(SimConfig {
        faults: Faults {
            latency_ms: 3,
            slow_rate: 0.05,
            slow_ms: 300,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let db = fresh_db().await;
    setup(&db, &s, 40).await;
    let mut seed = seed;
    for _ in 0..kills {
        let before = s.with(|st| st.hits);
        let mut child = paycron(Some(&db.url), Some(&s.base_url()))
            .env("PAYCRON_CONCURRENCY", "8")
            .env("PAYCRON_BATCH_SIZE", "10")
            .args(["run-once", "--now", NOW])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The kill lands once this process is talking to Square (however long its start-up
        // takes on a busy machine), at a random instant within the next 250 ms.
        for _ in 0..2500 {
            if s.with(|st| st.hits) > before || child.try_wait().ok().flatten().is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let delay = pseudo_random(&mut seed) % 250;
        tokio::time::sleep(Duration::from_millis(delay)).await;
        let _ = child.kill().await; // SIGKILL, then reaped
    }
    finish(&db, &s).await;
    let n = audit(&db, &s).await;
    assert!(n >= 40 * 3, "{n}");
    // The kills really landed mid-charge: some charges were orphaned and re-driven.
    let recovered: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.charges WHERE sends > 0")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    eprintln!(
        "kill rounds: {kills} kills, {n} payments, {recovered} charges recovered after a kill"
    );
    assert!(recovered > 0, "no kill hit an open charge");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_instants_first_half() {
    kill_rounds(25, 0x9E37_79B9_7F4A_7C15).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_instants_second_half() {
    kill_rounds(25, 0xD1B5_4A32_D192_ED03).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_replicas_billing_the_same_due_set() {
    let s = slow_sim(2).await;
    let db = fresh_db().await;
    setup(&db, &s, 60).await;
    let children: Vec<_> = (0..4)
        .map(|_| {
            paycron(Some(&db.url), Some(&s.base_url()))
                .env("PAYCRON_BATCH_SIZE", "5")
                .args(["run-once", "--task", "bill-due", "--now", NOW])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().await.unwrap();
        let log = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = log
            .lines()
            .filter(|l| !l.contains("\"charge\""))
            .rev()
            .take(8)
            .collect();
        assert!(out.status.success(), "replica failed: {tail:#?}");
    }
    let n = audit(&db, &s).await;
    assert!(n >= 60 * 3);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundreds_rate_limits_and_lost_answers() {
    let s = sim(SimConfig {
        faults: Faults {
            error_5xx_rate: 0.10,
            rate_429_rate: 0.05,
            lose_response_rate: 0.10,
            retry_after_secs: Some(1),
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let db = fresh_db().await;
    setup(&db, &s, 50).await;
    finish(&db, &s).await;
    let n = audit(&db, &s).await;
    assert!(n >= 50 * 3);
    s.shutdown().await;
}

/// Whether the pool's one connection is inside a transaction someone left open (a savepoint
/// is refused outside a transaction block).
async fn inside_an_open_transaction(pool: &sqlx::PgPool) -> bool {
    sqlx::query("SAVEPOINT probe").execute(pool).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_abandoned_while_it_begins_is_rolled_back_not_pooled_open() {
    let db = fresh_db().await;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&db.url)
        .await
        .unwrap();
    assert!(!inside_an_open_transaction(&pool).await);
    // The caller gives up (a select! or try_join that ended elsewhere, a client hanging up)
    // while the BEGIN is still on the wire.
    let abandoned = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        paycron::store::begin_with(&pool, "BEGIN; SELECT pg_sleep(0.3)"),
    )
    .await;
    assert!(abandoned.is_err(), "the BEGIN was still on its way");
    assert!(
        !inside_an_open_transaction(&pool).await,
        "the connection came back to the pool outside any transaction"
    );
}
