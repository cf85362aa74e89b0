//! Refunds end to end: the CLI and the SQL API, the database's cap under concurrency, Square's
//! asynchronous settlement, the ledger and the events, a SIGKILL mid-refund, and every bad
//! input refused with nothing written or sent.

use std::process::Stdio;
use std::time::Duration;

use paycron::simulator::Faults;

use crate::helpers::{Harness, count, count_where, paycron};

/// A harness with one customer billed once (1000 USD minor): returns the succeeded charge id.
async fn paid(h: &Harness) -> String {
    h.paid_charge("RF", 1000).await.1.to_string()
}

fn sim_refunds(h: &Harness) -> Vec<(i64, String)> {
    h.sim.with(|st| {
        st.refunds()
            .iter()
            .map(|r| (r.amount_money.amount, r.status.clone().unwrap_or_default()))
            .collect()
    })
}

async fn export_refunds(h: &Harness) -> Vec<serde_json::Value> {
    let out = h.cli(["ledger", "export", "--format", "jsonl"]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["kind"] == "refund")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_refund_goes_back_once_settles_and_is_booked() {
    let h = Harness::start().await;
    let charge = paid(&h).await;

    let out = h
        .cli([
            "refund",
            &charge,
            "--amount",
            "400",
            "--reason",
            "asked for it back",
        ])
        .await;

    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stdout.contains("pending"), "{}", out.stdout);
    assert_eq!(sim_refunds(&h), [(400, "PENDING".to_owned())]);
    // Square settles it; the recover pass looks it up (never re-sends) and books it.
    let rec = h.cli(["run-once", "--task", "recover"]).await;
    assert_eq!(rec.code, 0, "{}", rec.stderr);
    // The lease of the first look keeps a second one off for a while: wait it out.
    sqlx::query("UPDATE paycron.refunds SET locked_until = now() - interval '1 second'")
        .execute(&h.db.pool)
        .await
        .unwrap();
    let rec = h.cli(["run-once", "--task", "recover"]).await;
    assert_eq!(rec.code, 0, "{}", rec.stderr);
    assert_eq!(sim_refunds(&h), [(400, "COMPLETED".to_owned())]);
    let lines = export_refunds(&h).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["status"], "succeeded");
    assert_eq!(lines[0]["amount_minor"], 400);
    assert_eq!(lines[0]["charge_id"], charge.as_str());
    assert!(
        lines[0]["provider_refund_id"]
            .as_str()
            .unwrap()
            .starts_with("SIMREFUND")
    );
    let balances: Vec<(String, i64)> = sqlx::query_as(
        "SELECT account, sum(amount_minor)::int8 FROM paycron.ledger_postings GROUP BY 1 ORDER BY 1",
    )
    .fetch_all(&h.db.pool)
    .await
    .unwrap();
    assert_eq!(
        balances,
        [
            ("assets:square_clearing".to_owned(), 600),
            ("revenue:refunds".to_owned(), 400),
            ("revenue:subscriptions".to_owned(), -1000),
        ]
    );
    assert_eq!(
        count_where(
            &h.db,
            "SELECT count(*) FROM paycron.events WHERE type = 'refund_succeeded'"
        )
        .await,
        1
    );

    // More than the 600 left: exit 2, one line, nothing written, nothing sent.
    let over = h.cli(["refund", &charge, "--amount", "601"]).await;
    assert_eq!(over.code, 2, "{}", over.stderr);
    assert!(over.stderr.contains("600"), "{}", over.stderr);
    assert_eq!(count(&h.db, "refunds").await, 1);
    assert_eq!(sim_refunds(&h).len(), 1);
    // The rest (no --amount) is refunded with the subscription canceled at period end, and
    // then nothing is left.
    let rest = h
        .cli(["refund", &charge, "--at-period-end", "--format", "json"])
        .await;
    assert_eq!(rest.code, 0, "{}", rest.stderr);
    let v: serde_json::Value = serde_json::from_str(&rest.stdout).unwrap();
    assert_eq!(v[0]["amount_minor"], 600);
    let none_left = h.cli(["refund", &charge]).await;
    assert_eq!(none_left.code, 2, "{}", none_left.stderr);
    let canceling = count_where(
        &h.db,
        "SELECT count(*) FROM paycron.subscriptions WHERE cancel_at_period_end",
    )
    .await;
    assert_eq!(canceling, 1, "the refund canceled at period end");
    assert_eq!(sim_refunds(&h).len(), 2);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_refunds_are_refused_with_one_line_and_nothing_written() {
    let h = Harness::start().await;
    let charge = paid(&h).await;
    h.card("RD", "ccof:sim-insufficient-funds-rd").await;
    let sub = h
        .subscribe("RD", 500, (1, "month"), "2027-01-01T00:00:00Z")
        .await;
    h.engine()
        .await
        .bill_due("2027-01-01T01:00:00Z".parse().unwrap())
        .await
        .unwrap();
    let declined: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM paycron.charges WHERE subscription_id = $1")
            .bind(sub.0)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    let declined = declined.to_string();
    let unknown = uuid::Uuid::new_v4().to_string();
    for (args, names) in [
        (vec!["refund", &declined], "declined"),
        (vec!["refund", &charge, "--amount", "0"], "--amount"),
        (vec!["refund", &charge, "--amount", "-5"], "--amount"),
        (vec!["refund", &charge, "--amount", "1001"], "more than"),
        (vec!["refund", &charge, "--currency", "EUR"], "--currency"),
        (vec!["refund", "not-a-charge"], "CHARGE_ID"),
        (vec!["refund", &unknown], "does not exist"),
        (vec!["refund", &charge, "--reason", " "], "--reason"),
    ] {
        let out = h.cli(&args).await;
        assert_eq!(out.code, 2, "{args:?}: {}", out.stderr);
        let last = out.stderr.trim().lines().last().unwrap_or("");
        assert!(last.contains(names), "{args:?}: {last}");
    }
    assert_eq!(count(&h.db, "refunds").await, 0);
    assert!(sim_refunds(&h).is_empty());
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_partial_refunds_never_exceed_the_charge() {
    let h = Harness::start().await;
    let charge: uuid::Uuid = paid(&h).await.parse().unwrap();
    // The app's role asks, as a business's app would.
    let mut first = crate::helpers::as_role(&h.db, "paycron_app").await;
    let a: uuid::Uuid = sqlx::query_scalar("SELECT paycron.refund_charge($1, 600)")
        .bind(charge)
        .fetch_one(&mut *first)
        .await
        .unwrap();
    // The second waits on the charge's lock while the first is open...
    let pool = h.db.pool.clone();
    let second = tokio::spawn(async move {
        sqlx::query_scalar::<_, uuid::Uuid>("SELECT paycron.refund_charge($1, 600)")
            .bind(charge)
            .fetch_one(&pool)
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !second.is_finished(),
        "the second refund waits for the first"
    );
    first.commit().await.unwrap();
    // ...and is refused once the first committed: 600 + 600 > 1000.
    let err = second.await.unwrap().unwrap_err();
    let db = err.as_database_error().unwrap();
    assert_eq!(db.code().as_deref(), Some("23514"), "{db}");
    let rows: Vec<(uuid::Uuid, i64)> =
        sqlx::query_as("SELECT id, amount_minor FROM paycron.refunds")
            .fetch_all(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(rows, [(a, 600)]);
    // The body written is Square's RefundPaymentRequest with the 45-character key limit.
    let (key, body): (String, String) =
        sqlx::query_as("SELECT idempotency_key, request_body FROM paycron.refunds")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert!(key.len() <= 45);
    let req: paycron::gateway::wire::RefundPaymentRequest = serde_json::from_str(&body).unwrap();
    assert_eq!((req.idempotency_key, req.amount_money.amount), (key, 600));
    let spec: serde_json::Value =
        serde_json::from_str(include_str!("../fixtures/square-openapi-refunds.json")).unwrap();
    let schema = &spec["components"]["schemas"]["RefundPaymentRequest"];
    let sent: serde_json::Value = serde_json::from_str(&body).unwrap();
    for field in schema["required"].as_array().unwrap() {
        assert!(
            sent.get(field.as_str().unwrap()).is_some(),
            "{field} missing"
        );
    }
    for field in sent.as_object().unwrap().keys() {
        assert!(
            schema["properties"].get(field).is_some(),
            "{field} is not Square's"
        );
    }
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_killed_mid_call_is_made_exactly_once() {
    let h = Harness::start().await;
    let charge = paid(&h).await;
    // Square makes the refund and the answer is slow: the CLI is killed while it waits.
    h.sim.with(|st| {
        st.faults = Faults {
            slow_rate: 1.0,
            slow_ms: 5_000,
            ..Faults::default()
        }
    });
    let mut child = paycron(Some(&h.db.url), Some(&h.sim.base_url()))
        .args(["refund", &charge, "--amount", "300"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    for _ in 0..100 {
        if !sim_refunds(&h).is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill().await; // SIGKILL
    assert_eq!(sim_refunds(&h).len(), 1, "Square made it before the kill");
    h.sim.with(|st| st.faults = Faults::default());
    // The refund is pending with its lease; once that runs out, recovery re-sends the same
    // key and body, and Square answers with the refund it already made.
    sqlx::query("UPDATE paycron.refunds SET locked_until = now() - interval '1 second'")
        .execute(&h.db.pool)
        .await
        .unwrap();
    for _ in 0..2 {
        let out = h.cli(["run-once", "--task", "recover"]).await;
        assert_eq!(out.code, 0, "{}", out.stderr);
        sqlx::query("UPDATE paycron.refunds SET locked_until = now() - interval '1 second' WHERE status = 'pending'")
            .execute(&h.db.pool)
            .await
            .unwrap();
    }
    assert_eq!(sim_refunds(&h), [(300, "COMPLETED".to_owned())]);
    let lines = export_refunds(&h).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], "succeeded");
    let sends: i32 = sqlx::query_scalar("SELECT sends FROM paycron.refunds")
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(sends, 2, "sent once, killed, sent again with the same key");
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconcile_finds_refunds_square_settled_or_made_alone_and_repair_books_them() {
    let h = Harness::start().await;
    let charge = paid(&h).await;
    let payment: String =
        sqlx::query_scalar("SELECT provider_payment_id FROM paycron.charges WHERE id = $1::uuid")
            .bind(&charge)
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    // A refund whose every answer is lost: pending here, made at Square.
    h.sim.with(|st| {
        st.faults = Faults {
            lose_response_rate: 1.0,
            ..Faults::default()
        }
    });
    let (code, _, err) = crate::helpers::run(
        paycron(Some(&h.db.url), Some(&h.sim.base_url()))
            .env("SQUARE_RETRY_DEADLINE_MS", "500")
            .args(["refund", &charge, "--amount", "250"]),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    h.sim.with(|st| st.faults = Faults::default());
    // And one made in Square's dashboard, outside paycron.
    let body = serde_json::json!({
        "idempotency_key": "dashboard-1",
        "amount_money": {"amount": 100, "currency": "USD"},
        "payment_id": payment,
    });
    let made = reqwest::Client::new()
        .post(format!("{}/v2/refunds", h.sim.base_url()))
        .bearer_auth("any")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(made.status(), 200);

    let found = h.cli(["reconcile", "--format", "jsonl"]).await;

    assert_eq!(found.code, 1, "{}", found.stderr);
    let mut kinds: Vec<String> = found
        .stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    kinds.sort();
    assert_eq!(kinds, ["refund_missing_in_ledger", "refund_pending"]);
    let repaired = h.cli(["reconcile", "--repair"]).await;
    assert_eq!(repaired.code, 0, "{}\n{}", repaired.stdout, repaired.stderr);
    let clean = h.cli(["reconcile"]).await;
    assert_eq!(clean.code, 0, "{}", clean.stdout);
    assert!(
        clean.stdout.contains("2 Square refunds"),
        "{}",
        clean.stdout
    );
    let lines = export_refunds(&h).await;
    let mut amounts: Vec<i64> = lines
        .iter()
        .filter(|l| l["status"] == "succeeded")
        .map(|l| l["amount_minor"].as_i64().unwrap())
        .collect();
    amounts.sort();
    assert_eq!(amounts, [100, 250]);
    assert_eq!(sim_refunds(&h).len(), 2, "nothing sent by the repair");
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_refund_is_looked_up_at_square_before_any_resend() {
    let h = Harness::start().await;
    let charge = paid(&h).await;
    // Sent once, every answer lost: pending here without Square's id, made at Square.
    h.sim.with(|st| {
        st.faults = Faults {
            lose_response_rate: 1.0,
            ..Faults::default()
        }
    });
    let (code, _, err) = crate::helpers::run(
        paycron(Some(&h.db.url), Some(&h.sim.base_url()))
            .env("SQUARE_RETRY_DEADLINE_MS", "300")
            .args(["refund", &charge, "--amount", "700"]),
    )
    .await;
    assert_eq!(code, 0, "{err}");
    h.sim.with(|st| st.faults = Faults::default());
    let hits_before = h.sim.with(|st| st.hits);

    // Two days later (past PAYCRON_STALE_LOOKUP_HOURS), recovery finds it at Square.
    let clock = paycron::billing::clock::Clock::system();
    clock.advance(chrono::Duration::days(2));
    let engine = h.engine().await.with_clock(clock);
    let done = engine.drive_refunds(None).await.unwrap();

    assert_eq!((done.handled, done.completed), (1, 1), "{done:?}");
    let (status, sends): (String, i32) =
        sqlx::query_as("SELECT status, sends FROM paycron.refunds")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(
        (status.as_str(), sends),
        ("completed", 1),
        "found, not re-sent"
    );
    let posts = h.sim.with(|st| st.hits) - hits_before;
    assert_eq!(posts, 1, "one ListPaymentRefunds, no RefundPayment");
    assert_eq!(sim_refunds(&h), [(700, "COMPLETED".to_owned())]);
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_refund_is_booked_as_failed_and_frees_its_amount() {
    let h = Harness::start().await;
    let charge = paid(&h).await;
    h.sim.with(|st| {
        st.faults = Faults {
            reject_refunds: true,
            ..Faults::default()
        }
    });
    let out = h.cli(["refund", &charge]).await;
    assert_eq!(out.code, 0, "{}", out.stderr);
    sqlx::query("UPDATE paycron.refunds SET locked_until = now() - interval '1 second'")
        .execute(&h.db.pool)
        .await
        .unwrap();

    let rec = h.cli(["run-once", "--task", "recover"]).await;

    assert_eq!(rec.code, 0, "{}", rec.stderr);
    let lines = export_refunds(&h).await;
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["status"], "failed");
    assert_eq!(
        count_where(
            &h.db,
            "SELECT count(*) FROM paycron.events WHERE type = 'refund_failed'"
        )
        .await,
        1
    );
    assert_eq!(
        count_where(&h.db, "SELECT count(*) FROM paycron.ledger_postings").await,
        2,
        "the charge's postings only: nothing went back"
    );
    // The rejected 1000 does not count against the charge: it can be refunded again.
    h.sim.with(|st| st.faults = Faults::default());
    let again = h.cli(["refund", &charge]).await;
    assert_eq!(again.code, 0, "{}", again.stderr);
    h.sim.shutdown().await;
}
