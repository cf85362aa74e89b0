//! The billing engine end to end: calendar through the ledger, dunning, trials, cycles,
//! pause/resume, cancel at period end, events.

use chrono::{DateTime, Utc};
use paycron::billing::Engine;
use paycron::simulator::SimConfig;
use uuid::Uuid;

use paycron::store::subscriptions::{self, SubscriptionRow};

use crate::helpers::{
    Harness, TestDb, app, client, fresh_db, paycron, run, seed_card, seed_due, sim, slow_sim,
};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn create(
    db: &TestDb,
    customer: &str,
    card: Option<&str>,
    anchor: &str,
    extra: &str,
) -> Uuid {
    let sql = format!(
        "SELECT paycron.create_subscription('{customer}', 1000, 'USD', 'month', 1, {}, '{anchor}'::timestamptz, 'UTC'{extra}, p_now => '{anchor}'::timestamptz)",
        card.map(|c| format!("'{c}'"))
            .unwrap_or_else(|| "NULL".into())
    );
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
        .fetch_one(&db.pool)
        .await
        .unwrap()
}

/// The subscription, read through the store.
async fn sub(db: &TestDb, id: Uuid) -> SubscriptionRow {
    let mut conn = db.pool.acquire().await.unwrap();
    subscriptions::get(&mut conn, id.into()).await.unwrap()
}

async fn ledger(db: &TestDb, id: Uuid) -> Vec<(String, i32, String, Option<String>)> {
    sqlx::query_as(
        "SELECT to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD'), attempt, status, decline_code
           FROM paycron.ledger_entries WHERE subscription_id = $1 ORDER BY period_start, attempt",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn engine(db: &TestDb, sim_url: &str) -> Engine {
    let a = app(db, sim_url);
    a.engine(client(&a.config)).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn month_ends_in_new_york_through_the_ledger() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| st.add_card("NY1", "ccof:sim-ok-ny", "VISA", true));
    let db = fresh_db().await;
    seed_card(&db, "NY1", "ccof:sim-ok-ny").await;
    let mut ids = vec![];
    for day in [29, 30, 31] {
        let (code, out, err) = run(paycron(Some(&db.url), None).args([
            "subscription",
            "create",
            "--customer",
            "NY1",
            "--amount",
            "2500",
            "--currency",
            "USD",
            "--every",
            "1month",
            "--anchor",
            &format!("2027-01-{day}T09:30:00-05:00"),
            "--timezone",
            "America/New_York",
        ]))
        .await;
        assert_eq!(code, 0, "{err}");
        ids.push(out.trim().to_owned());
    }
    // Thirteen months later, one catch-up run (allowed 13 periods) bills every missed period
    // once, oldest first.
    let (code, _, err) = run(paycron(Some(&db.url), Some(&s.base_url()))
        .env("PAYCRON_MAX_CATCH_UP_PERIODS", "13")
        .args(["run-once", "--now", "2028-01-15T00:00:00Z"]))
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, out, _) =
        run(paycron(Some(&db.url), None).args(["ledger", "export", "--format", "jsonl"])).await;
    assert_eq!(code, 0);
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let keys: Vec<&str> = rows[0]
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected_keys = vec![
        "charge_id",
        "subscription_id",
        "customer_id",
        "period_start",
        "attempt",
        "status",
        "decline_code",
        "amount_minor",
        "currency",
        "provider_payment_id",
        "recorded_at",
        "kind",
    ];
    let mut got = keys.clone();
    got.sort();
    expected_keys.sort();
    assert_eq!(got, expected_keys);
    assert!(rows.iter().all(|r| r["kind"] == "charge"));
    let starts = |id: &str| -> Vec<String> {
        let mut v: Vec<String> = rows
            .iter()
            .filter(|r| r["subscription_id"] == id)
            .map(|r| r["period_start"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    };
    // 09:30 local: 14:30Z in winter (EST), 13:30Z in summer (EDT); clamped to month ends.
    let expect = |days: [u32; 13]| -> Vec<String> {
        let months = [
            "2027-01", "2027-02", "2027-03", "2027-04", "2027-05", "2027-06", "2027-07", "2027-08",
            "2027-09", "2027-10", "2027-11", "2027-12", "2028-01",
        ];
        months
            .iter()
            .zip(days)
            .map(|(m, d)| {
                let date = format!("{m}-{d:02}");
                let summer = date.as_str() >= "2027-03-14" && date.as_str() < "2027-11-07";
                format!("{date}T{}:30:00Z", if summer { 13 } else { 14 })
            })
            .collect()
    };
    assert_eq!(
        starts(&ids[0]),
        expect([29, 28, 29, 29, 29, 29, 29, 29, 29, 29, 29, 29, 29])[..12]
    );
    assert_eq!(
        starts(&ids[1]),
        expect([30, 28, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 30])[..12]
    );
    assert_eq!(
        starts(&ids[2]),
        expect([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31, 31])[..12]
    );
    assert!(
        rows.iter()
            .all(|r| r["status"] == "succeeded" && r["attempt"] == 1)
    );
    // The simulator took exactly one payment per row.
    assert_eq!(s.with(|st| st.completed().len()), rows.len());
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dunning_recovers_soft_declines_and_ends_hard_ones() {
    let h = Harness::start().await;
    h.card("SOFT", "ccof:sim-decline-first-2-a").await;
    h.card("NEVER", "ccof:sim-insufficient-funds-a").await;
    h.card("HARD", "ccof:sim-card-expired-a").await;
    h.card("SPARE", "ccof:sim-card-expired-b").await;
    h.card("SPARE", "ccof:sim-ok-b").await;
    let anchor = "2027-03-01T12:00:00Z";
    let soft = create(&h.db, "SOFT", None, anchor, "").await;
    let never = create(&h.db, "NEVER", None, anchor, "").await;
    let hard = create(&h.db, "HARD", None, anchor, "").await;
    let spare = create(&h.db, "SPARE", Some("ccof:sim-card-expired-b"), anchor, "").await;
    let (db, s) = (&h.db, &h.sim);
    let e = h.engine().await;

    for day in 1..=10 {
        let now = t(anchor) + chrono::Duration::days(day - 1) + chrono::Duration::hours(1);
        e.bill_due(now).await.unwrap();
    }
    // Soft: declined twice (day 1, day 2), recovered on the second retry (day 4).
    assert_eq!(
        ledger(db, soft).await,
        vec![
            (
                "2027-03-01".into(),
                1,
                "declined".into(),
                Some("INSUFFICIENT_FUNDS".into())
            ),
            (
                "2027-03-01".into(),
                2,
                "declined".into(),
                Some("INSUFFICIENT_FUNDS".into())
            ),
            ("2027-03-01".into(), 3, "succeeded".into(), None),
        ]
    );
    assert_eq!(sub(db, soft).await.status.as_str(), "active");
    assert_eq!(
        sub(db, soft).await.next_due_at,
        Some(t("2027-04-01T12:00:00Z"))
    );
    // Never: the first attempt and four retries, then unpaid.
    let l = ledger(db, never).await;
    assert_eq!(l.len(), 5);
    assert!(l.iter().all(|r| r.2 == "declined"));
    assert_eq!(sub(db, never).await.status.as_str(), "unpaid");
    assert_eq!(sub(db, never).await.next_due_at, None);
    // Hard, no other card: no retry, straight to the final state.
    assert_eq!(ledger(db, hard).await.len(), 1);
    assert_eq!(sub(db, hard).await.status.as_str(), "unpaid");
    // Hard with a spare card: falls back at once, a new attempt with its own key.
    let l = ledger(db, spare).await;
    assert_eq!(
        l.iter().map(|r| r.2.as_str()).collect::<Vec<_>>(),
        ["declined", "succeeded"]
    );
    assert_eq!(
        sub(db, spare).await.card_id.unwrap().as_str(),
        "ccof:sim-ok-b"
    );
    // Every attempt had its own key; the simulator took exactly the successes.
    let keys: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT idempotency_key) FROM paycron.charges")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    let charges: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.charges")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(keys, charges);
    assert_eq!(s.with(|st| st.completed().len()), 2);

    // Events: each outcome once, in id order, in the same transaction as the change.
    let kinds: Vec<(i64, String)> = sqlx::query_as(
        "SELECT id, type FROM paycron.events WHERE subscription_id = $1 ORDER BY id",
    )
    .bind(soft)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let names: Vec<&str> = kinds.iter().map(|k| k.1.as_str()).collect();
    assert_eq!(
        names,
        [
            "subscription_created",
            "payment_declined",
            "subscription_past_due",
            "payment_declined",
            "payment_succeeded",
            "payment_recovered"
        ]
    );
    let unpaid: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paycron.events WHERE type = 'subscription_unpaid'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(unpaid, 2);

    // A new card brings an unpaid subscription back: billed at once with a new attempt.
    h.card("NEVER", "ccof:sim-ok-new").await;
    sqlx::query("SELECT paycron.change_card($1, 'ccof:sim-ok-new')")
        .bind(never)
        .execute(&db.pool)
        .await
        .unwrap();
    e.bill_due(Utc::now()).await.unwrap();
    assert_eq!(h.subscription(never).await.status.as_str(), "active");
    assert_eq!(ledger(db, never).await.last().unwrap().2, "succeeded");
    h.assert_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trials_cycles_pause_and_cancel_at_period_end() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| st.add_card("C", "ccof:sim-ok-c", "VISA", true));
    let db = fresh_db().await;
    seed_card(&db, "C", "ccof:sim-ok-c").await;
    let e = engine(&db, &s.base_url()).await;
    // Paused after its first period, resumed months later: the periods in between are skipped.
    let past = (Utc::now() - chrono::Duration::days(95)).to_rfc3339();
    let pausing = create(&db, "C", None, &past, "").await;
    e.bill_due(t(&past) + chrono::Duration::hours(1))
        .await
        .unwrap();
    assert_eq!(ledger(&db, pausing).await.len(), 1);
    sqlx::query("SELECT paycron.pause_subscription($1)")
        .bind(pausing)
        .execute(&db.pool)
        .await
        .unwrap();

    let anchor = "2027-01-10T00:00:00Z";
    let trial = create(&db, "C", None, anchor, ", NULL, 14").await;
    let cycles = create(&db, "C", None, anchor, ", 3").await;
    let ending = create(&db, "C", None, anchor, "").await;
    e.bill_due(t("2027-01-10T01:00:00Z")).await.unwrap();
    assert_eq!(
        sub(&db, trial).await.status.as_str(),
        "trialing",
        "not billed during the trial"
    );
    assert_eq!(ledger(&db, ending).await.len(), 1);
    sqlx::query("SELECT paycron.cancel_subscription($1, true)")
        .bind(ending)
        .execute(&db.pool)
        .await
        .unwrap();

    e.bill_due(t("2027-02-01T00:00:00Z")).await.unwrap();
    e.bill_due(t("2027-05-01T00:00:00Z")).await.unwrap();
    let trial_ledger = ledger(&db, trial).await;
    assert_eq!(
        trial_ledger.first().unwrap().0,
        "2027-01-24",
        "first charge when the trial ends"
    );
    assert_eq!(sub(&db, trial).await.status.as_str(), "active");
    assert_eq!(ledger(&db, cycles).await.len(), 3);
    assert_eq!(sub(&db, cycles).await.status.as_str(), "completed");
    assert_eq!(
        ledger(&db, pausing).await.len(),
        1,
        "nothing billed while paused"
    );
    assert_eq!(
        ledger(&db, ending).await.len(),
        1,
        "the paid period runs out, nothing more"
    );
    assert_eq!(sub(&db, ending).await.status.as_str(), "canceled");

    sqlx::query("SELECT paycron.resume_subscription($1)")
        .bind(pausing)
        .execute(&db.pool)
        .await
        .unwrap();
    e.bill_due(Utc::now()).await.unwrap();
    let SubscriptionRow {
        status: st,
        next_period: period,
        next_due_at: due,
        ..
    } = sub(&db, pausing).await;
    assert_eq!(st.as_str(), "active");
    assert!(period >= 3, "moved past the paused periods: {period}");
    assert!(due.unwrap() > Utc::now(), "next due after the resume");
    assert_eq!(
        ledger(&db, pausing).await.len(),
        1,
        "the skipped periods were not billed"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_charge_is_looked_up_at_square_before_any_resend() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| st.add_card("OLD", "ccof:sim-ok-old", "VISA", true));
    let db = fresh_db().await;
    seed_card(&db, "OLD", "ccof:sim-ok-old").await;
    let due = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let id = create(&db, "OLD", None, &due, "").await;

    // Worker A: Square takes the money, every answer is lost; A gives up and dies.
    s.with(|st| {
        st.faults = paycron::simulator::Faults {
            lose_response_rate: 1.0,
            ..Default::default()
        }
    });
    let mut a = app(&db, &s.base_url());
    a.config.square.retry_deadline = std::time::Duration::from_millis(500);
    let worker_a = a.engine(client(&a.config)).await.unwrap();
    let summary = worker_a.bill_due(Utc::now()).await.unwrap();
    assert_eq!(summary.unresolved, 1);
    drop(worker_a);
    assert_eq!(s.with(|st| st.completed().len()), 1, "Square took it once");

    // Worker B, later: the charge is older than the lookup age, so B asks ListPayments first.
    s.with(|st| st.faults = Default::default());
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let mut b = app(&db, &s.base_url());
    b.config.billing.stale_lookup_after = std::time::Duration::from_secs(1);
    let worker_b = b.engine(client(&b.config)).await.unwrap();
    let sent_before = s.with(|st| st.requests().len());
    let recovered = worker_b.recover(Utc::now()).await.unwrap();
    assert_eq!(recovered.succeeded, 1);
    assert_eq!(
        s.with(|st| st.requests().len()),
        sent_before,
        "nothing re-sent: found by reference_id"
    );
    let taken = s.with(|st| st.completed())[0].id.clone();
    let recorded: Option<String> = sqlx::query_scalar(
        "SELECT provider_payment_id FROM paycron.ledger_entries WHERE subscription_id = $1",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(recorded.as_deref(), Some(taken.as_str()));
    assert_eq!(sub(&db, id).await.next_period, 1, "the period is settled");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_names_a_missing_payment_and_repair_records_it_once() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| {
        st.add_card("R1", "ccof:sim-ok-r1", "VISA", true);
        st.add_card("R2", "ccof:sim-ok-r2", "VISA", true);
    });
    let db = fresh_db().await;
    seed_card(&db, "R1", "ccof:sim-ok-r1").await;
    seed_card(&db, "R2", "ccof:sim-ok-r2").await;
    let due = (Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    create(&db, "R1", None, &due, "").await;
    // R1 bills normally.
    let e = engine(&db, &s.base_url()).await;
    e.bill_due(Utc::now()).await.unwrap();
    let recon = async |extra: &[&str]| {
        let mut args = vec!["reconcile", "--format", "jsonl"];
        args.extend_from_slice(extra);
        run(paycron(Some(&db.url), Some(&s.base_url())).args(&args)).await
    };
    let (code, out, err) = recon(&[]).await;
    assert_eq!((code, out.as_str()), (0, ""), "a clean run: {err}");

    // R2: Square takes the money, every answer is lost, the worker dies before recording.
    let lost = create(&db, "R2", Some("ccof:sim-ok-r2"), &due, "").await;
    s.with(|st| {
        st.faults = paycron::simulator::Faults {
            lose_response_rate: 1.0,
            ..Default::default()
        }
    });
    let mut a = app(&db, &s.base_url());
    a.config.square.retry_deadline = std::time::Duration::from_millis(300);
    let dying = a.engine(client(&a.config)).await.unwrap();
    assert_eq!(dying.bill_due(Utc::now()).await.unwrap().unresolved, 1);
    drop(dying);
    s.with(|st| st.faults = Default::default());

    let (code, out, _) = recon(&[]).await;
    assert_eq!(code, 1);
    let findings: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(findings.len(), 1, "{out}");
    assert_eq!(findings[0]["kind"], "missing_in_ledger");
    let (code, _, err) = recon(&["--repair"]).await;
    assert_eq!(code, 0, "repaired: {err}");
    let recorded: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.ledger_entries WHERE subscription_id = $1 AND status = 'succeeded'")
        .bind(lost)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(recorded, 1);
    let (code, out, _) = recon(&["--repair"]).await;
    assert_eq!(
        (code, out.as_str()),
        (0, ""),
        "a second repair changes nothing"
    );
    let entries: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.ledger_entries")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(entries, 2);
    assert_eq!(s.with(|st| st.completed().len()), 2);
    let (code, _, err) = recon(&[
        "--since",
        "2030-01-01T00:00:00Z",
        "--until",
        "2029-01-01T00:00:00Z",
    ])
    .await;
    assert_eq!(code, 2, "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_and_expired_cards_are_not_sent_to_square() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| {
        st.add_card("X1", "ccof:sim-ok-x1", "VISA", true);
        st.add_card("X2", "ccof:sim-ok-x2", "VISA", true);
        st.add_card("X2", "ccof:sim-ok-x2-spare", "VISA", true);
    });
    let db = fresh_db().await;
    seed_card(&db, "X1", "ccof:sim-ok-x1").await;
    seed_card(&db, "X2", "ccof:sim-ok-x2").await;
    let due = "2027-05-01T12:00:00Z";
    let disabled = create(&db, "X1", None, due, "").await;
    let expired = create(&db, "X2", Some("ccof:sim-ok-x2"), due, "").await;
    sqlx::query("UPDATE paycron.cards SET enabled = false WHERE id = 'ccof:sim-ok-x1'")
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query(
        "UPDATE paycron.cards SET exp_month = 4, exp_year = 2027 WHERE id = 'ccof:sim-ok-x2'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query("SELECT paycron.upsert_customer_card('X2', 'ccof:sim-ok-x2-spare', 'VISA', '2222', 1, 2032)").execute(&db.pool).await.unwrap();
    let e = engine(&db, &s.base_url()).await;
    e.bill_due(t("2027-05-01T13:00:00Z")).await.unwrap();
    assert_eq!(
        ledger(&db, disabled).await,
        vec![(
            "2027-05-01".into(),
            1,
            "declined".into(),
            Some("CARD_DISABLED".into())
        )]
    );
    assert_eq!(
        sub(&db, disabled).await.status.as_str(),
        "unpaid",
        "no other card: dunning ends"
    );
    let l = ledger(&db, expired).await;
    assert_eq!(l[0].3.as_deref(), Some("CARD_EXPIRED"));
    assert_eq!(
        l[1].2, "succeeded",
        "fell back to the customer's other card"
    );
    assert_eq!(
        sub(&db, expired).await.card_id.unwrap().as_str(),
        "ccof:sim-ok-x2-spare"
    );
    // Square saw only the spare card's charge.
    let sent: Vec<String> = s.with(|st| st.requests().iter().map(|r| r.body.clone()).collect());
    assert_eq!(sent.len(), 1);
    assert!(sent[0].contains("ccof:sim-ok-x2-spare"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_about_to_expire_is_announced_once() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    seed_card(&db, "E1", "ccof:sim-ok-e1").await;
    seed_card(&db, "E2", "ccof:sim-ok-e2").await;
    sqlx::query(
        "UPDATE paycron.cards SET exp_month = 5, exp_year = 2027 WHERE id = 'ccof:sim-ok-e1'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    create(&db, "E1", None, "2027-06-10T00:00:00Z", "").await;
    create(&db, "E2", None, "2027-06-10T00:00:00Z", "").await;
    let e = engine(&db, &s.base_url()).await;
    e.bill_due(t("2027-05-01T00:00:00Z")).await.unwrap();
    let n = |db: &TestDb| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM paycron.events WHERE type = 'card_expiring'",
            )
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert_eq!(n(&db).await, 0, "more than 14 days ahead");
    e.bill_due(t("2027-05-20T00:00:00Z")).await.unwrap();
    assert_eq!(n(&db).await, 1);
    e.bill_due(t("2027-05-21T00:00:00Z")).await.unwrap();
    assert_eq!(n(&db).await, 1, "announced once per card and expiry");
    let card: String = sqlx::query_scalar(
        "SELECT payload->>'card_id' FROM paycron.events WHERE type = 'card_expiring'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(card, "ccof:sim-ok-e1");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_transaction_is_billed_only_once_committed() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| st.add_card("APP9", "ccof:sim-ok-app9", "VISA", true));
    let db = fresh_db().await;
    let write = |commit: bool| {
        let pool = db.pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SET LOCAL ROLE paycron_app")
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("SELECT paycron.upsert_customer_card('APP9', 'ccof:sim-ok-app9', 'VISA', '4242', 1, 2032)")
                .execute(&mut *tx)
                .await
                .unwrap();
            let _: Uuid = sqlx::query_scalar("SELECT paycron.create_subscription('APP9', 1200, 'USD', 'month', 1, p_external_ref => 'app-9')")
                .fetch_one(&mut *tx)
                .await
                .unwrap();
            if commit {
                tx.commit().await.unwrap()
            } else {
                tx.rollback().await.unwrap()
            }
        }
    };
    let e = engine(&db, &s.base_url()).await;
    write(false).await;
    e.bill_due(Utc::now()).await.unwrap();
    assert!(
        s.with(|st| st.completed().is_empty()),
        "a rolled-back subscription is never billed"
    );
    write(true).await;
    let billed = e
        .bill_due(Utc::now() + chrono::Duration::seconds(1))
        .await
        .unwrap();
    assert_eq!(billed.succeeded, 1);
    assert_eq!(s.with(|st| st.completed().len()), 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn charges_queued_behind_the_first_go_together_once_it_proves_the_configuration() {
    // A fresh engine sends one charge until Square has accepted one; the eight queued behind
    // that probe must then go together, not one after another.
    let s = slow_sim(100).await;
    let db = fresh_db().await;
    seed_due(&db, &s, 9).await;
    let mut a = app(&db, &s.base_url());
    a.config.billing.concurrency = 9;
    let summary = a
        .engine(client(&a.config))
        .await
        .unwrap()
        .bill_due(Utc::now())
        .await
        .unwrap();
    assert_eq!(summary.succeeded, 9);
    let most = s.with(|st| st.max_in_flight());
    assert!(most >= 4, "at most {most} charges were at Square at once");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_keeps_the_leases_of_the_charges_it_is_working_on() {
    // Slow answers and two in flight: 60 charges take about 6 s, twice the 3 s lease. The
    // claimed batches wait their turn meanwhile; a peer recovering all along must find nothing
    // to take over, and Square must see each key once.
    let s = slow_sim(200).await;
    let db = fresh_db().await;
    let ids = seed_due(&db, &s, 60).await;
    let mut a = app(&db, &s.base_url());
    a.config.billing.lease = std::time::Duration::from_secs(3);
    a.config.billing.concurrency = 2;
    a.config.billing.batch_size = 20;
    let worker = a.engine(client(&a.config)).await.unwrap();
    let mut b = app(&db, &s.base_url());
    b.config.billing.lease = std::time::Duration::from_secs(3);
    let peer = b.engine(client(&b.config)).await.unwrap();

    let billing = tokio::spawn(async move { worker.bill_due(Utc::now()).await.unwrap() });
    let mut taken_over = 0;
    while !billing.is_finished() {
        taken_over += peer.recover(Utc::now()).await.unwrap().attempted;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    let summary = billing.await.unwrap();
    assert_eq!(
        taken_over, 0,
        "the peer took over charges still being worked on"
    );
    assert_eq!((summary.succeeded, summary.fenced), (60, 0));
    let keys: std::collections::HashSet<String> = s.with(|st| {
        st.requests()
            .iter()
            .map(|r| r.idempotency_key.clone())
            .collect()
    });
    assert_eq!(s.with(|st| st.requests().len()), 60, "each key sent once");
    assert_eq!(keys.len(), 60);
    assert_eq!(s.with(|st| st.completed().len()), 60);
    for id in ids {
        assert_eq!(sub(&db, id).await.next_period, 1);
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_token_stops_billing_and_withdraws_what_was_never_sent() {
    // Square refuses the token: billing stops with the error. Every charge still pending was
    // sent (its fate is Square's to tell, so it waits for recovery); every charge claimed but
    // never handed over — queued, or behind the failure — is withdrawn, its subscription due.
    let s = sim(SimConfig {
        token: Some("the-right-token".into()),
        ..SimConfig::default()
    })
    .await;
    let db = fresh_db().await;
    seed_due(&db, &s, 30).await;
    let mut a = app(&db, &s.base_url());
    a.config.billing.concurrency = 2;
    a.config.billing.batch_size = 5;
    let worker = a.engine(client(&a.config)).await.unwrap();
    let err = worker.bill_due(Utc::now()).await.unwrap_err();
    assert!(
        matches!(err, paycron::billing::BillingError::Unauthorized { .. }),
        "{err}"
    );
    let sent = s.with(|st| st.hits) as i64;
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paycron.charges WHERE status = 'pending'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(
        (1..=3).contains(&sent),
        "one charge at a time until the token is proven: sent {sent}"
    );
    assert_eq!(
        pending, sent,
        "a pending charge never sent was left pending"
    );
    let open: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paycron.subscriptions WHERE open_charge_id IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        open, pending,
        "a withdrawn charge's subscription stayed marked"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_price_applies_from_the_next_period_that_begins_after_the_change() {
    let h = Harness::start().await;
    h.card("PR1", "ccof:sim-ok-pr1").await;
    h.card("PR2", "ccof:sim-decline-first-2-pr2").await;
    let anchor = "2027-01-01T00:00:00Z";
    let plain = h.subscribe("PR1", 1000, (1, "month"), anchor).await;
    let dunned = h.subscribe("PR2", 1000, (1, "month"), anchor).await;
    let e = h.engine().await;
    e.bill_due(t("2027-01-01T01:00:00Z")).await.unwrap();
    let amounts = |id: paycron::domain::SubscriptionId| {
        let pool = h.db.pool.clone();
        async move {
            sqlx::query_as::<_, (i32, i32, String, i64)>(
                "SELECT period, attempt, status, amount_minor FROM paycron.charges WHERE subscription_id = $1 ORDER BY period, attempt",
            )
            .bind(id.0)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };

    // Mid-January: the next period (February) has not begun: it takes the new price.
    let out = h
        .cli([
            "subscription",
            "change-price",
            &plain.to_string(),
            "--amount",
            "1500",
            "--now",
            "2027-01-15T00:00:00Z",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.trim().ends_with(" active"), "{}", out.stdout);
    // In dunning, January's retries keep January's price; February takes the new one.
    let out = h
        .cli([
            "subscription",
            "change-price",
            &dunned.to_string(),
            "--amount",
            "2000",
            "--now",
            "2027-01-01T12:00:00Z",
        ])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    let pending: (Option<i64>, Option<i32>) = sqlx::query_as(
        "SELECT pending_amount_minor, pending_from_period FROM paycron.subscription($1)",
    )
    .bind(dunned.0)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(pending, (Some(2000), Some(1)), "waiting for February");
    // The change's event carries the subscription as it is after it.
    let snapshot: serde_json::Value = sqlx::query_scalar(
        "SELECT payload->'subscription' FROM paycron.events WHERE subscription_id = $1 AND type = 'subscription_price_changed'",
    )
    .bind(dunned.0)
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(
        (
            &snapshot["amount_minor"],
            &snapshot["pending_amount_minor"],
            &snapshot["status"]
        ),
        (&1000.into(), &2000.into(), &"past_due".into())
    );
    for day in [
        "2027-01-02T01:00:00Z",
        "2027-01-04T01:00:00Z",
        "2027-02-01T01:00:00Z",
    ] {
        e.bill_due(t(day)).await.unwrap();
    }

    assert_eq!(
        amounts(plain).await,
        [
            (0, 1, "succeeded".into(), 1000),
            (1, 1, "succeeded".into(), 1500)
        ]
    );
    assert_eq!(
        amounts(dunned).await,
        [
            (0, 1, "declined".into(), 1000),
            (0, 2, "declined".into(), 1000),
            (0, 3, "succeeded".into(), 1000),
            (1, 1, "succeeded".into(), 2000),
        ]
    );
    assert_eq!(h.subscription(dunned).await.money.minor(), 2000, "promoted");
    // Bad input: exit 2, nothing changed.
    for args in [
        vec!["subscription", "change-price", "nope", "--amount", "5"],
        vec![
            "subscription",
            "change-price",
            &plain.to_string(),
            "--amount",
            "0",
        ],
        vec![
            "subscription",
            "change-price",
            &plain.to_string(),
            "--amount",
            "5",
            "--currency",
            "XXQ",
        ],
    ] {
        assert_eq!(h.cli(&args).await.code, 2, "{args:?}");
    }
    h.assert_exactly_once().await;
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_undoes_a_cancel_at_period_end() {
    let h = Harness::start().await;
    h.card("KP", "ccof:sim-ok-kp").await;
    let id = h
        .subscribe("KP", 1000, (1, "month"), "2027-01-01T00:00:00Z")
        .await;
    let sid = id.to_string();
    let out = h
        .cli(["subscription", "cancel", &sid, "--at-period-end"])
        .await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(h.subscription(id).await.cancel_at_period_end);
    let out = h.cli(["subscription", "keep", &sid]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.trim().ends_with(" active"), "{}", out.stdout);
    assert!(!h.subscription(id).await.cancel_at_period_end);
    let kinds: Vec<String> = sqlx::query_scalar(
        "SELECT type FROM paycron.events WHERE subscription_id = $1 ORDER BY id",
    )
    .bind(id.0)
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(
        kinds,
        [
            "subscription_created",
            "subscription_cancel_scheduled",
            "subscription_cancel_unscheduled"
        ]
    );
    let out = h.cli(["subscription", "cancel", &sid]).await;
    assert_eq!(out.code, 0);
    assert_eq!(
        h.cli(["subscription", "keep", &sid]).await.code,
        2,
        "canceled is final"
    );
    h.sim.shutdown().await;
}
