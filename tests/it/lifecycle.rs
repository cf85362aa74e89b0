//! The subscription lifecycle end to end: the regressions that once stalled or over-billed
//! (pause/resume livelock, past anchors, revived unpaid subscriptions), the SQL API's
//! commands checked against the Rust lifecycle for every (status, command) pair, and a
//! model-based test of random lifecycles against an independent reference model.

use chrono::{DateTime, Utc};
use paycron::billing::Engine;
use paycron::domain::lifecycle::{self, Command, Decision};
use paycron::domain::{SubscriptionId, SubscriptionStatus};
use paycron::simulator::SimConfig;
use paycron::store::subscriptions;
use uuid::Uuid;

use crate::helpers::{Harness, TestDb, app, client, fresh_db, paycron, run, seed_card, sim};

fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn engine(db: &TestDb, sim_url: &str) -> Engine {
    let a = app(db, sim_url);
    a.engine(client(&a.config)).await.unwrap()
}

/// A billing pass must end; a livelocked one is reported instead of hanging the suite.
async fn bill(e: &Engine, now: DateTime<Utc>) {
    tokio::time::timeout(std::time::Duration::from_secs(120), e.bill_due(now))
        .await
        .unwrap_or_else(|_| panic!("the billing pass at {now} never ended"))
        .unwrap();
}

async fn create(db: &TestDb, customer: &str, every: (&str, i32), anchor: &str, now: &str) -> Uuid {
    sqlx::query_scalar(
        "SELECT paycron.create_subscription($1, 1000, 'USD', $2, $3, NULL, $4::timestamptz, p_now => $5::timestamptz)",
    )
    .bind(customer)
    .bind(every.0)
    .bind(every.1)
    .bind(anchor)
    .bind(now)
    .fetch_one(&db.pool)
    .await
    .unwrap()
}

/// Period starts of the subscription's successful charges, in order.
async fn paid(db: &TestDb, id: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD') FROM paycron.charges
          WHERE subscription_id = $1 AND status = 'succeeded' ORDER BY period",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

async fn call(db: &TestDb, sql: &str, id: Uuid, now: &str) {
    sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
        .bind(id)
        .bind(t(now))
        .execute(&db.pool)
        .await
        .unwrap();
}

async fn skipped(db: &TestDb, id: Uuid) -> Vec<(i64, i64)> {
    sqlx::query_as(
        "SELECT (payload->>'first_period')::bigint, (payload->>'last_period')::bigint FROM paycron.events
          WHERE type = 'period_skipped' AND subscription_id = $1 ORDER BY id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_then_resume_then_billing_after_the_next_boundary_moves_on() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| st.add_card("PR", "ccof:sim-ok-pr", "VISA", true));
    let db = fresh_db().await;
    seed_card(&db, "PR", "ccof:sim-ok-pr").await;
    let e = engine(&db, &s.base_url()).await;

    // Daily: paid, paused, resumed a minute before a boundary, billed a day and an hour later.
    let daily = create(
        &db,
        "PR",
        ("day", 1),
        "2027-03-01T00:00:00Z",
        "2027-03-01T00:00:00Z",
    )
    .await;
    bill(&e, t("2027-03-01T01:00:00Z")).await;
    call(
        &db,
        "SELECT paycron.pause_subscription($1, $2)",
        daily,
        "2027-03-01T02:00:00Z",
    )
    .await;
    call(
        &db,
        "SELECT paycron.resume_subscription($1, $2)",
        daily,
        "2027-03-02T23:59:00Z",
    )
    .await;
    bill(&e, t("2027-03-04T00:59:00Z")).await;
    assert_eq!(
        paid(&db, daily).await,
        ["2027-03-01", "2027-03-03", "2027-03-04"]
    );
    // Downtime after the resume: only the three most recent periods are billed.
    bill(&e, t("2027-03-11T12:00:00Z")).await;
    assert_eq!(
        paid(&db, daily).await,
        [
            "2027-03-01",
            "2027-03-03",
            "2027-03-04",
            "2027-03-09",
            "2027-03-10",
            "2027-03-11"
        ]
    );
    assert_eq!(skipped(&db, daily).await, [(4, 7)]);
    let row = subscriptions::get(&mut db.pool.acquire().await.unwrap(), SubscriptionId(daily))
        .await
        .unwrap();
    assert_eq!((row.next_period, row.skip_before), (11, None));

    // Monthly, resumed just before a clamped month end.
    let monthly = create(
        &db,
        "PR",
        ("month", 1),
        "2027-01-31T00:00:00Z",
        "2027-01-31T00:00:00Z",
    )
    .await;
    bill(&e, t("2027-01-31T01:00:00Z")).await;
    call(
        &db,
        "SELECT paycron.pause_subscription($1, $2)",
        monthly,
        "2027-02-01T00:00:00Z",
    )
    .await;
    call(
        &db,
        "SELECT paycron.resume_subscription($1, $2)",
        monthly,
        "2027-02-27T23:59:00Z",
    )
    .await;
    bill(&e, t("2027-03-29T01:00:00Z")).await;
    bill(&e, t("2027-04-01T00:00:00Z")).await;
    assert_eq!(
        paid(&db, monthly).await,
        ["2027-01-31", "2027-02-28", "2027-03-31"]
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_past_anchor_only_sets_the_cycle() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| st.add_card("PA", "ccof:sim-ok-pa", "VISA", true));
    let db = fresh_db().await;
    seed_card(&db, "PA", "ccof:sim-ok-pa").await;
    let (code, out, err) = run(paycron(Some(&db.url), None).args([
        "subscription",
        "create",
        "--customer",
        "PA",
        "--amount",
        "1999",
        "--currency",
        "USD",
        "--every",
        "1month",
        "--anchor",
        "2024-01-01T00:00:00Z",
        "--now",
        "2027-03-15T00:00:00Z",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let id: Uuid = out.trim().parse().unwrap();
    let row = subscriptions::get(&mut db.pool.acquire().await.unwrap(), SubscriptionId(id))
        .await
        .unwrap();
    assert_eq!(
        row.next_due_at,
        Some(t("2027-04-01T00:00:00Z")),
        "shown as the engine will bill it"
    );
    let once = async |now: &str| {
        run(paycron(Some(&db.url), Some(&s.base_url())).args(["run-once", "--now", now])).await
    };
    let (code, _, err) = once("2027-03-15T01:00:00Z").await;
    assert_eq!(code, 0, "{err}");
    assert!(paid(&db, id).await.is_empty(), "nothing back-billed");
    let (code, _, err) = once("2027-04-01T01:00:00Z").await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(paid(&db, id).await, ["2027-04-01"]);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_comes_back_for_a_catch_up_that_falls_behind_its_claims() {
    // Arrange: one subscription three periods behind, and four due after its second and third
    // periods' due times. One charge per claim: each claim starts past the last row claimed,
    // and every recorded period moves the one behind to a due time the claims have passed.
    let h = Harness::start().await;
    h.card("BH", "ccof:sim-ok-bh").await;
    let behind = h
        .subscribe("BH", 1000, (1, "month"), "2027-01-01T00:00:00Z")
        .await;
    let mut later = Vec::new();
    for i in 0..4 {
        let customer = format!("LT{i}");
        h.card(&customer, &format!("ccof:sim-ok-lt{i}")).await;
        later.push(
            h.subscribe(&customer, 1000, (1, "month"), "2027-03-10T00:00:00Z")
                .await,
        );
    }
    let mut a = app(&h.db, &h.sim.base_url());
    a.config.billing.batch_size = 1;
    a.config.billing.concurrency = 1;
    let e = a.engine(client(&a.config)).await.unwrap();

    // Act: one run.
    let summary = e.bill_due(t("2027-03-15T00:00:00Z")).await.unwrap();

    // Assert: every period due is billed in that run, once.
    assert_eq!(summary.succeeded, 3 + 4, "{summary:?}");
    assert_eq!(
        paid(&h.db, behind.0).await,
        ["2027-01-01", "2027-02-01", "2027-03-01"]
    );
    for id in later {
        assert_eq!(paid(&h.db, id.0).await, ["2027-03-10"]);
    }
    h.assert_exactly_once().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unpaid_subscription_revived_after_eight_months_bills_the_last_three() {
    // Arrange: a monthly subscription whose only card never pays, unpaid after its dunning.
    let h = Harness::start().await;
    h.card("RV", "ccof:sim-insufficient-funds-rv").await;
    let id = h
        .subscribe("RV", 1000, (1, "month"), "2027-01-01T00:00:00Z")
        .await;
    let e = h.engine().await;
    bill(&e, t("2027-01-01T01:00:00Z")).await;
    bill(&e, t("2027-01-09T00:00:00Z")).await;
    assert_eq!(h.subscription(id).await.status, SubscriptionStatus::Unpaid);
    h.card("RV", "ccof:sim-ok-rv").await;

    // Act: eight months later the business moves it to a card that pays, and a run bills.
    let (sid, card) = (id.to_string(), "ccof:sim-ok-rv");
    let changed = h
        .cli([
            "subscription",
            "change-card",
            &sid,
            "--card",
            card,
            "--now",
            "2027-09-15T00:00:00Z",
        ])
        .await;
    let ran = h.cli(["run-once", "--now", "2027-09-15T00:10:00Z"]).await;

    // Assert: the last three periods are billed, the six before them skipped for good.
    assert_eq!(changed.code, 0, "{}", changed.stderr);
    assert_eq!(ran.code, 0, "{}", ran.stderr);
    assert_eq!(
        paid(&h.db, id.0).await,
        ["2027-07-01", "2027-08-01", "2027-09-01"]
    );
    assert_eq!(skipped(&h.db, id.0).await, [(0, 5)]);
    let row = h.subscription(id).await;
    assert_eq!(
        (row.status, row.next_period),
        (SubscriptionStatus::Active, 9)
    );
    h.assert_exactly_once().await;
    // `subscription show` names the skipped periods, in words and as data.
    let shown = h.cli(["subscription", "show", &sid]).await;
    assert_eq!(shown.code, 0, "{}", shown.stderr);
    let line = shown
        .stdout
        .lines()
        .find(|l| l.contains("period_skipped"))
        .unwrap_or_else(|| panic!("no period_skipped line in:\n{}", shown.stdout));
    assert!(
        line.contains("6 period(s) 0..5") && line.contains("2027-01-01T00:00:00Z"),
        "{line}"
    );
    let json = h
        .cli(["subscription", "show", &sid, "--format", "json"])
        .await;
    assert_eq!(json.code, 0, "{}", json.stderr);
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let kinds: Vec<&str> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"period_skipped"), "{kinds:?}");
    assert_eq!(v["amount_minor"], 1000, "the row's keys keep their names");
    // And what the app's paycron.subscription() reads, the same fields.
    assert_eq!(v["card_last_4"], "1111");
    assert_eq!(v["current_period"], 8);
    assert_eq!(v["dunning_step"], 0);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sql_api_follows_the_rust_lifecycle_for_every_status_and_command() {
    let db = fresh_db().await;
    seed_card(&db, "TT", "ccof:sim-ok-tt1").await;
    seed_card(&db, "TT", "ccof:sim-ok-tt2").await;
    let now = t("2027-06-10T12:00:00Z");
    let mut checked = 0;
    for status in SubscriptionStatus::ALL {
        for dunning in [false, true] {
            for cmd in Command::ALL {
                let id = create(
                    &db,
                    "TT",
                    ("month", 1),
                    "2027-06-01T00:00:00Z",
                    "2027-06-01T00:00:00Z",
                )
                .await;
                sqlx::query(
                    "UPDATE paycron.subscriptions SET status = $2, next_period = 1, next_attempt = $3,
                            next_due_at = CASE WHEN $2 IN ('canceled', 'completed', 'unpaid') THEN NULL ELSE $4 END,
                            dunning_started_at = $5, card_id = 'ccof:sim-ok-tt1',
                            cancel_at_period_end = ($2 IN ('active', 'trialing') AND $5 IS NULL)
                      WHERE id = $1",
                )
                .bind(id)
                .bind(status.as_str())
                .bind(if dunning { 3 } else { 1 })
                .bind(t("2027-07-01T00:00:00Z"))
                .bind(dunning.then(|| t("2027-06-02T00:00:00Z")))
                .execute(&db.pool)
                .await
                .unwrap();
                let mut conn = db.pool.acquire().await.unwrap();
                let before = subscriptions::get(&mut conn, SubscriptionId(id))
                    .await
                    .unwrap();
                let events_before: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM paycron.events WHERE subscription_id = $1",
                )
                .bind(id)
                .fetch_one(&mut *conn)
                .await
                .unwrap();
                let expected = lifecycle::on_command(
                    &before.terms().unwrap(),
                    &before.state().unwrap(),
                    cmd,
                    now,
                );
                let sql = match cmd {
                    Command::Pause => "SELECT paycron.pause_subscription($1, $2)::text",
                    Command::Resume => "SELECT paycron.resume_subscription($1, $2)::text",
                    Command::CancelNow => "SELECT paycron.cancel_subscription($1, false, $2)::text",
                    Command::CancelAtPeriodEnd => {
                        "SELECT paycron.cancel_subscription($1, true, $2)::text"
                    }
                    Command::ChangeCard => {
                        "SELECT paycron.change_card($1, 'ccof:sim-ok-tt2', $2)::text"
                    }
                    Command::CardUpdated => {
                        "SELECT paycron.card_updated(card_id, $2)::text FROM paycron.subscriptions WHERE id = $1"
                    }
                    Command::Keep => "SELECT paycron.keep_subscription($1, $2)::text",
                };
                let result = sqlx::query(sqlx::AssertSqlSafe(sql))
                    .bind(id)
                    .bind(now)
                    .execute(&mut *conn)
                    .await;
                let after = subscriptions::get(&mut conn, SubscriptionId(id))
                    .await
                    .unwrap();
                let kinds: Vec<String> = sqlx::query_scalar(
                    "SELECT type FROM paycron.events WHERE subscription_id = $1 ORDER BY id OFFSET $2",
                )
                .bind(id)
                .bind(events_before)
                .fetch_all(&mut *conn)
                .await
                .unwrap();
                let case = format!("{status} dunning={dunning} {cmd:?}");
                match expected {
                    Decision::Refused(_) => {
                        let err = result.expect_err(&case);
                        assert_eq!(
                            err.as_database_error().and_then(|d| d.code()).as_deref(),
                            Some("22023"),
                            "{case}"
                        );
                    }
                    Decision::Unchanged => {
                        result.expect(&case);
                        assert_eq!(after.state().unwrap(), before.state().unwrap(), "{case}");
                        assert!(kinds.is_empty(), "{case}: {kinds:?}");
                    }
                    Decision::Changed(state, notices) => {
                        result.expect(&case);
                        assert_eq!(after.state().unwrap(), state, "{case}");
                        let want: Vec<&str> = notices.iter().map(|n| n.kind()).collect();
                        assert_eq!(kinds, want, "{case}");
                    }
                }
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 8 * 2 * 7);
}
