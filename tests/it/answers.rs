//! Errors by whose fault they are: configuration errors never decline customers and halt
//! billing after a few; attempts stay bounded whatever the cards answer.

use std::time::Duration as StdDuration;

use chrono::{DateTime, Duration, Utc};
use paycron::billing::BillingError;
use paycron::simulator::{SimConfig, Simulator};
use uuid::Uuid;

use crate::helpers::{
    TestDb, app, client, count_where, fresh_db, paycron, run, seed_card, seed_due, sim,
};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

/// CreatePayment requests the simulator received from `customer` (all of them if `None`).
fn calls(s: &Simulator, customer: Option<&str>) -> usize {
    s.with(|st| {
        st.requests()
            .iter()
            .filter(|r| {
                customer.is_none_or(|c| {
                    serde_json::from_str::<serde_json::Value>(&r.body).unwrap()["customer_id"] == c
                })
            })
            .count()
    })
}

async fn statuses(db: &TestDb) -> Vec<(String, i32, String)> {
    sqlx::query_as("SELECT status, next_period, card_id FROM paycron.subscriptions ORDER BY id")
        .fetch_all(&db.pool)
        .await
        .unwrap()
}

async fn customer_events(db: &TestDb) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM paycron.events
          WHERE type IN ('payment_declined', 'subscription_past_due', 'subscription_unpaid',
                         'subscription_canceled', 'payment_succeeded')",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_location_halts_billing_and_changes_no_subscription() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    seed_due(&db, &s, 100).await;
    let before = statuses(&db).await;
    let (code, _, err) = run(paycron(Some(&db.url), Some(&s.base_url()))
        .env("SQUARE_LOCATION_ID", "REPLACE_WITH_LOCATION_ID")
        .args(["run-once", "--task", "bill-due"]))
    .await;
    assert_ne!(code, 0, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("SQUARE_LOCATION_ID") && last.contains("billing halted"),
        "the last line names the setting: {last}"
    );
    let sent = calls(&s, None);
    assert!((1..=3).contains(&sent), "{sent} CreatePayment calls");
    assert_eq!(statuses(&db).await, before, "no subscription changed state");
    assert_eq!(customer_events(&db).await, 0, "nothing for the customers");
    let failed = count_where(&db, "SELECT count(*) FROM paycron.charges WHERE status = 'failed' AND decline_code = 'NOT_FOUND'").await;
    assert_eq!(failed as usize, sent, "each refused attempt is on record");
    let pending = count_where(
        &db,
        "SELECT count(*) FROM paycron.charges WHERE status = 'pending'",
    )
    .await;
    assert_eq!(pending, 0, "charges never sent are withdrawn");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_halt_probes_and_resumes_by_itself_once_square_accepts() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    let ids = seed_due(&db, &s, 12).await;
    let mut a = app(&db, &s.base_url());
    a.config.square.location_id = Some("LWRONG".into());
    let clock = paycron::billing::clock::Clock::system();
    let e = a
        .engine(client(&a.config))
        .await
        .unwrap()
        .with_clock(clock.clone());
    let now = Utc::now();
    let halted = e.bill_due(now).await;
    assert!(
        matches!(&halted, Err(BillingError::Halted(h)) if h.setting == "SQUARE_LOCATION_ID"),
        "{halted:?}"
    );
    let sent = calls(&s, None);
    assert_eq!(sent, 3);
    // Still halted: a run before the probe time sends nothing.
    let idle = e.bill_due(now).await.unwrap();
    assert_eq!((idle.attempted, calls(&s, None)), (0, 3));
    // The probe (after 30 s) fails too: one call, halted again.
    clock.advance(Duration::seconds(31));
    assert!(matches!(
        e.bill_due(now).await,
        Err(BillingError::Halted(_))
    ));
    assert_eq!(calls(&s, None), 4, "a probe is one call");
    // The operator fixes the location (here: Square now has it). The next probe resumes.
    s.with(|st| st.config.location_id = "LWRONG".into());
    clock.advance(Duration::seconds(61));
    let later = now + Duration::minutes(10);
    let done = e.bill_due(later).await.unwrap();
    assert_eq!(done.succeeded, 12, "{done:?}");
    for id in ids {
        let (status, attempts): (String, Vec<String>) = sqlx::query_as(
            "SELECT s.status, array_agg(c.status ORDER BY c.attempt)
               FROM paycron.subscriptions s JOIN paycron.charges c ON c.subscription_id = s.id
              WHERE s.id = $1 GROUP BY s.status",
        )
        .bind(id)
        .fetch_one(&db.pool)
        .await
        .unwrap();
        assert_eq!(status, "active", "no dunning for a configuration error");
        assert_eq!(attempts.last().map(String::as_str), Some("succeeded"));
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_currency_the_location_cannot_take_is_tried_once_and_later_again_without_dunning() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    let mut eur = Uuid::nil();
    for (customer, currency) in [
        ("US1", "USD"),
        ("US2", "USD"),
        ("EU1", "EUR"),
        ("US3", "USD"),
        ("US4", "USD"),
        ("US5", "USD"),
    ] {
        let card = format!("ccof:sim-ok-{customer}");
        s.with(|st| st.add_card(customer, &card, "VISA", true));
        seed_card(&db, customer, &card).await;
        let id: Uuid = sqlx::query_scalar(
            "SELECT paycron.create_subscription($1, 900, $2, 'month', 1, NULL, $3, p_now => $3)",
        )
        .bind(customer)
        .bind(currency)
        .bind(t("2027-01-01T00:00:00Z"))
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if currency == "EUR" {
            eur = id;
        }
    }
    let once = async |now: &str| {
        run(paycron(Some(&db.url), Some(&s.base_url()))
            .args(["run-once", "--task", "bill-due", "--now", now]))
        .await
    };
    let (code, _, err) = once("2027-01-01T00:10:00Z").await;
    assert_eq!(code, 1, "one charge failed: {err}");
    assert!(err.contains("amount_money.currency"), "{err}");
    assert_eq!(calls(&s, Some("EU1")), 1);
    assert_eq!(calls(&s, None), 6, "the others were charged");
    // Within its backoff it is not sent again; after it, once more.
    let (code, _, _) = once("2027-01-01T00:10:30Z").await;
    assert_eq!(code, 0);
    assert_eq!(calls(&s, Some("EU1")), 1);
    let (code, _, _) = once("2027-01-01T00:12:00Z").await;
    assert_eq!(code, 1);
    assert_eq!(calls(&s, Some("EU1")), 2);
    let (status, period, attempt, uncounted): (String, i32, i32, i32) = sqlx::query_as(
        "SELECT status, next_period, next_attempt, uncounted_attempts FROM paycron.subscriptions WHERE id = $1",
    )
    .bind(eur)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        (status.as_str(), period, attempt, uncounted),
        ("active", 0, 3, 2)
    );
    let told: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paycron.events WHERE subscription_id = $1 AND type <> 'subscription_created'",
    )
    .bind(eur)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(told, 0, "nothing for the customer");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hard_declining_cards_cost_a_bounded_number_of_calls() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    for card in ["ccof:sim-card-expired-hh", "ccof:sim-invalid-card-hh"] {
        s.with(|st| st.add_card("HH", card, "VISA", true));
        seed_card(&db, "HH", card).await;
    }
    let id: Uuid = sqlx::query_scalar(
        "SELECT paycron.create_subscription('HH', 900, 'USD', 'month', 1, 'ccof:sim-card-expired-hh', $1, p_now => $1)",
    )
    .bind(t("2027-01-01T00:00:00Z"))
    .fetch_one(&db.pool)
    .await
    .unwrap();
    let mut now = t("2027-01-01T00:10:00Z");
    for day in 0..12 {
        let (code, _, err) = run(paycron(Some(&db.url), Some(&s.base_url())).args([
            "run-once",
            "--task",
            "bill-due",
            "--now",
            &now.to_rfc3339(),
        ]))
        .await;
        assert_eq!(code, 0, "day {day}: {err}");
        assert!(calls(&s, Some("HH")) <= 5, "day {day}: unbounded");
        now += Duration::days(1);
    }
    assert_eq!(
        calls(&s, Some("HH")),
        5,
        "the first try, one fallback at once, three more on the schedule"
    );
    let status: String =
        sqlx::query_scalar("SELECT status FROM paycron.subscriptions WHERE id = $1")
            .bind(id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "unpaid");
    s.shutdown().await;
}

async fn charge_rows(db: &TestDb) -> Vec<(Uuid, String, Option<String>, Option<String>)> {
    sqlx::query_as(
        "SELECT id, status, review_reason, review_payment_id FROM paycron.charges ORDER BY created_at, id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn monthly(db: &TestDb, s: &Simulator, customers: &[&str]) {
    for customer in customers {
        let card = format!("ccof:sim-ok-{customer}");
        s.with(|st| st.add_card(customer, &card, "VISA", true));
        seed_card(db, customer, &card).await;
        sqlx::query(
            "SELECT paycron.create_subscription($1, 1999, 'USD', 'month', 1, NULL, $2, p_now => $2)",
        )
        .bind(customer)
        .bind(t("2027-01-01T00:00:00Z"))
        .execute(&db.pool)
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_for_another_charge_goes_to_review_and_an_operator_resolves_it() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    monthly(&db, &s, &["RV1", "RV2"]).await;
    s.with(|st| st.faults.answer_with_example = true);
    let cli = || paycron(Some(&db.url), Some(&s.base_url()));
    let once =
        async |now: &str| run(cli().args(["run-once", "--task", "bill-due", "--now", now])).await;
    let (code, _, err) = once("2027-01-01T00:10:00Z").await;
    assert_eq!(code, 1, "{err}");
    let rows = charge_rows(&db).await;
    assert_eq!(rows.len(), 2);
    for (_, status, reason, payment) in &rows {
        assert_eq!(status, "needs_review");
        let reason = reason.as_deref().unwrap();
        assert!(
            reason.contains("amount 1000 USD instead of 1999 USD")
                && reason.contains("reference_id 123456")
                && reason.contains("customer W92WH6P11H4Z77CTET0RNTGFW8"),
            "{reason}"
        );
        assert_eq!(payment.as_deref(), Some("GQTFp1ZlXdpoW4o6eGiZhbjosiDFf"));
    }
    assert!(
        err.lines()
            .any(|l| l.contains("\"ERROR\"") && l.contains("needs_review")),
        "one ERROR line per charge: {err}"
    );
    let told = count_where(
        &db,
        "SELECT count(*) FROM paycron.events WHERE type = 'charge_needs_review'",
    )
    .await;
    assert_eq!(told, 2);
    assert_eq!(customer_events(&db).await, 0, "neither paid nor declined");
    // Never re-sent: not by billing, not by recovery, whatever the clock.
    let sent = calls(&s, None);
    let (code, _, err) = run(cli().args(["run-once", "--now", "2027-01-03T00:00:00Z"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(calls(&s, None), sent);
    // The ledger export and `charges review` show them.
    let (_, out, _) = run(cli().args(["ledger", "export", "--format", "jsonl"])).await;
    assert_eq!(
        out.matches("\"status\":\"needs_review\"").count(),
        2,
        "{out}"
    );
    let (code, out, _) = run(cli().args(["charges", "review", "--format", "json"])).await;
    assert_eq!(code, 0);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    // Decisions: the first took no money (billed again), the second was paid by that payment.
    let (first, second) = (rows[0].0.to_string(), rows[1].0.to_string());
    let (code, out, err) = run(cli().args([
        "charges",
        "resolve",
        &first,
        "--as",
        "unpaid",
        "--note",
        "Square shows no payment",
    ]))
    .await;
    assert_eq!(
        (code, out.trim()),
        (0, format!("{first} unpaid").as_str()),
        "{err}"
    );
    let (code, out, err) = run(cli().args([
        "charges",
        "resolve",
        &second,
        "--as",
        "paid",
        "--note",
        "matched by hand",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("GQTFp1ZlXdpoW4o6eGiZhbjosiDFf"), "{out}");
    let (code, _, err) = run(cli().args([
        "charges", "resolve", &second, "--as", "unpaid", "--note", "again",
    ]))
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("not in review"), "{err}");
    let (code, _, err) =
        run(cli().args(["charges", "resolve", &first, "--as", "paid", "--note", " "])).await;
    assert_eq!(code, 2, "{err}");
    s.with(|st| st.faults.answer_with_example = false);
    let (code, _, err) = once("2027-01-03T00:10:00Z").await;
    assert_eq!(code, 0, "{err}");
    let periods: Vec<(String, i32, i32)> = sqlx::query_as(
        "SELECT status, next_period, next_attempt FROM paycron.subscriptions ORDER BY customer_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        periods,
        [("active".into(), 1, 1), ("active".into(), 1, 1)],
        "both periods settled, none through dunning"
    );
    let ledger: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT status, provider_payment_id FROM paycron.ledger_entries ORDER BY recorded_at, id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(ledger.len(), 3, "{ledger:?}");
    assert!(ledger.contains(&(
        "succeeded".into(),
        Some("GQTFp1ZlXdpoW4o6eGiZhbjosiDFf".into())
    )));
    let resolved = count_where(
        &db,
        "SELECT count(*) FROM paycron.events WHERE type = 'charge_resolved'",
    )
    .await;
    assert_eq!(resolved, 2);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_payment_answered_to_two_charges_sends_the_second_to_review_and_the_run_goes_on() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    monthly(&db, &s, &["DP1", "DP2", "DP3", "DP4"]).await;
    s.with(|st| st.faults.duplicate_payment_ids = true);
    let cli = || paycron(Some(&db.url), Some(&s.base_url()));
    let (code, _, err) = run(cli().args([
        "run-once",
        "--task",
        "bill-due",
        "--now",
        "2027-01-01T00:10:00Z",
    ]))
    .await;
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains("in review") && !last.contains("duplicate key"),
        "no raw database error: {last}"
    );
    let statuses: Vec<String> = charge_rows(&db).await.into_iter().map(|r| r.1).collect();
    assert_eq!(
        statuses.iter().filter(|s| *s == "succeeded").count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| *s == "needs_review").count(),
        3,
        "{statuses:?}"
    );
    let (_, reason, _): (Uuid, String, String) = sqlx::query_as(
        "SELECT id, review_reason, review_payment_id FROM paycron.charges WHERE status = 'needs_review' LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(reason.contains("already recorded for charge"), "{reason}");
    let sent = calls(&s, None);
    let (code, _, err) = run(cli().args(["run-once", "--task", "recover"])).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(calls(&s, None), sent, "nothing re-sent");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_the_engine_cannot_read_are_quarantined_and_billing_goes_on() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    monthly(&db, &s, &["Q1", "Q2", "Q3", "Q4"]).await;
    // Hand edits past the schema's guards (as a superuser can): a currency the engine does not
    // know (the row cannot even be decoded), a zone it does not know, a period out of range.
    let mut conn = db.pool.acquire().await.unwrap();
    for sql in [
        "SET session_replication_role = replica",
        "UPDATE paycron.subscriptions SET currency = 'XYZ' WHERE customer_id = 'Q1'",
        "UPDATE paycron.subscriptions SET time_zone = 'posix/Europe/Paris' WHERE customer_id = 'Q2'",
        "UPDATE paycron.subscriptions SET next_period = 2000000000 WHERE customer_id = 'Q3'",
        "RESET session_replication_role",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *conn)
            .await
            .unwrap();
    }
    drop(conn);
    let cli = || paycron(Some(&db.url), Some(&s.base_url()));
    let once =
        async |now: &str| run(cli().args(["run-once", "--task", "bill-due", "--now", now])).await;
    let (code, _, err) = once("2027-01-01T00:10:00Z").await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines()
            .last()
            .unwrap()
            .contains("3 subscription(s) quarantined"),
        "{err}"
    );
    assert_eq!(calls(&s, Some("Q4")), 1, "the healthy one is billed");
    assert_eq!(calls(&s, None), 1);
    let flagged: Vec<(String, String)> = sqlx::query_as(
        "SELECT customer_id, needs_attention FROM paycron.subscriptions
          WHERE needs_attention IS NOT NULL ORDER BY customer_id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let who: Vec<&str> = flagged.iter().map(|f| f.0.as_str()).collect();
    assert_eq!(who, ["Q1", "Q2", "Q3"], "{flagged:?}");
    assert!(flagged[1].1.contains("posix/Europe/Paris"), "{flagged:?}");
    let told = count_where(
        &db,
        "SELECT count(*) FROM paycron.events WHERE type = 'subscription_needs_attention'",
    )
    .await;
    assert_eq!(told, 3);
    // Quarantined rows stay out of later runs.
    let (code, _, err) = once("2027-01-01T00:20:00Z").await;
    assert_eq!(code, 0, "{err}");
    // Fixed, released, billed; a row still broken is not released.
    sqlx::query(
        "UPDATE paycron.subscriptions SET time_zone = 'Europe/Paris' WHERE customer_id = 'Q2'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let id = |c: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT id FROM paycron.subscriptions WHERE customer_id = $1",
            )
            .bind(c)
            .fetch_one(&pool)
            .await
            .unwrap()
            .to_string()
        }
    };
    let (code, out, err) = run(cli().args(["subscription", "release", &id("Q2").await])).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("released"));
    let (code, _, err) = run(cli().args(["subscription", "release", &id("Q3").await])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("still cannot be billed"), "{err}");
    let (code, _, err) = run(cli().args(["subscription", "release", &id("Q1").await])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("still cannot be read"), "{err}");
    let (code, _, err) = once("2027-01-01T00:30:00Z").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(calls(&s, Some("Q2")), 1);
    s.shutdown().await;
}

fn lose_every_answer(s: &Simulator, on: bool) {
    s.with(|st| {
        st.faults = paycron::simulator::Faults {
            lose_response_rate: if on { 1.0 } else { 0.0 },
            ..Default::default()
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_recovers_its_own_expired_charges() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    seed_due(&db, &s, 1).await;
    let mut a = app(&db, &s.base_url());
    a.config.square.retry_deadline = StdDuration::from_millis(300);
    let clock = paycron::billing::clock::Clock::system();
    let e = a
        .engine(client(&a.config))
        .await
        .unwrap()
        .with_clock(clock.clone());
    lose_every_answer(&s, true);
    let billed = e.bill_due(Utc::now()).await.unwrap();
    assert_eq!(billed.unresolved, 1, "{billed:?}");
    lose_every_answer(&s, false);
    // Its lease (deferred after the undecided re-send) runs out; the same worker takes it back.
    clock.advance(Duration::hours(3));
    let recovered = e.recover(Utc::now()).await.unwrap();
    assert_eq!(recovered.succeeded, 1, "{recovered:?}");
    assert_eq!(s.with(|st| st.completed().len()), 1, "one payment in all");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_resend_of_an_old_charge_is_looked_up_first_even_by_its_own_worker() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    seed_due(&db, &s, 1).await;
    let mut a = app(&db, &s.base_url());
    a.config.square.retry_deadline = StdDuration::from_millis(300);
    a.config.billing.stale_lookup_after = StdDuration::from_millis(1);
    let e = a.engine(client(&a.config)).await.unwrap();
    // Square takes the money and every answer to CreatePayment is lost. A re-send would be
    // lost too; only the lookup (ListPayments by reference_id) can settle it within the run.
    lose_every_answer(&s, true);
    let billed = e.bill_due(Utc::now()).await.unwrap();
    assert_eq!(
        (billed.succeeded, billed.unresolved),
        (1, 0),
        "settled by lookup in the worker's own re-drive: {billed:?}"
    );
    assert_eq!(s.with(|st| st.completed().len()), 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_sent_too_often_without_an_answer_goes_to_review() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    seed_due(&db, &s, 1).await;
    let mut a = app(&db, &s.base_url());
    a.config.square.retry_deadline = StdDuration::from_millis(300);
    let e = a.engine(client(&a.config)).await.unwrap();
    lose_every_answer(&s, true);
    assert_eq!(e.bill_due(Utc::now()).await.unwrap().unresolved, 1);
    drop(e);
    // As if nine more recoveries had re-sent it over the hours since.
    sqlx::query(
        "UPDATE paycron.charges SET sends = 10, locked_until = now() - interval '1 second'",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    let sent = calls(&s, None);
    let (code, _, err) =
        run(paycron(Some(&db.url), Some(&s.base_url())).args(["run-once", "--task", "recover"]))
            .await;
    assert_eq!(code, 1, "{err}");
    assert!(err.lines().last().unwrap().contains("1 in review"), "{err}");
    assert_eq!(calls(&s, None), sent, "not sent again");
    let (status, reason): (String, String) =
        sqlx::query_as("SELECT status, review_reason FROM paycron.charges")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(status, "needs_review");
    assert!(
        reason.contains("no decisive answer from Square after 11 sends"),
        "{reason}"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_card_is_never_a_fallback() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    s.with(|st| {
        st.add_card("EX", "ccof:sim-card-expired-ex", "VISA", true);
        st.add_card("EX", "ccof:sim-ok-ex-old", "VISA", true);
    });
    seed_card(&db, "EX", "ccof:sim-card-expired-ex").await;
    sqlx::query(
        "SELECT paycron.upsert_customer_card('EX', 'ccof:sim-ok-ex-old', 'VISA', '4242', 11, 2022)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    sqlx::query(
        "SELECT paycron.create_subscription('EX', 900, 'USD', 'month', 1, 'ccof:sim-card-expired-ex', $1, p_now => $1)",
    )
    .bind(t("2027-01-01T00:00:00Z"))
    .execute(&db.pool)
    .await
    .unwrap();
    let (code, _, err) = run(paycron(Some(&db.url), Some(&s.base_url())).args([
        "run-once",
        "--task",
        "bill-due",
        "--now",
        "2027-01-01T00:10:00Z",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(calls(&s, Some("EX")), 1, "the expired card is not tried");
    let status: String = sqlx::query_scalar("SELECT status FROM paycron.subscriptions")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(status, "unpaid");
    s.shutdown().await;
}

async fn liveness_pids(db: &TestDb) -> Vec<i32> {
    sqlx::query_scalar(
        "SELECT l.pid FROM pg_locks l JOIN pg_database d ON d.oid = l.database
          WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 AND d.datname = current_database()",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_takes_its_liveness_lock_again_after_its_connection_drops() {
    let s = sim(SimConfig::default()).await;
    let db = fresh_db().await;
    seed_due(&db, &s, 3).await;
    let e = {
        let a = app(&db, &s.base_url());
        a.engine(client(&a.config)).await.unwrap()
    };
    let before = liveness_pids(&db).await;
    assert_eq!(before.len(), 1);
    sqlx::query("SELECT pg_terminate_backend($1)")
        .bind(before[0])
        .execute(&db.pool)
        .await
        .unwrap();
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    assert!(
        liveness_pids(&db).await.is_empty(),
        "the lock went with its session"
    );
    let billed = e.bill_due(Utc::now()).await.unwrap();
    assert_eq!(billed.succeeded, 3, "{billed:?}");
    let after = liveness_pids(&db).await;
    assert_eq!(after.len(), 1, "held again");
    assert_ne!(after, before);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_singleton_lock_never_leaks_into_the_pool() {
    let db = fresh_db().await;
    let other = paycron::store::open_pool(paycron::store::connect_options(&db.url).unwrap(), 2)
        .await
        .unwrap();
    let tick = Utc::now();
    let guard =
        paycron::store::tasks::claim_singleton(&db.pool, "sync-cards", tick, Uuid::new_v4())
            .await
            .unwrap()
            .expect("the lock is free");
    // The task fails after taking the lock: the guard is dropped, never released.
    drop(guard);
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    let next = paycron::store::tasks::claim_singleton(
        &other,
        "sync-cards",
        tick + Duration::seconds(1),
        Uuid::new_v4(),
    )
    .await
    .unwrap();
    assert!(next.is_some(), "another replica can run the next tick");
    next.unwrap().release().await.unwrap();
}
