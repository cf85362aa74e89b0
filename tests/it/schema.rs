//! The database itself refuses what the invariants forbid.

use crate::helpers::{as_role, count, fresh_db, seed_card};
use uuid::Uuid;

async fn subscription(db: &crate::helpers::TestDb) -> Uuid {
    seed_card(db, "CUST1", "ccof:card1").await;
    sqlx::query_scalar("SELECT paycron.create_subscription('CUST1', 1500, 'USD', 'month', 1)")
        .fetch_one(&db.pool)
        .await
        .expect("create")
}

async fn insert_charge(
    db: &crate::helpers::TestDb,
    sub: Uuid,
    attempt: i32,
    key: Option<&str>,
    status: &str,
    payment: Option<&str>,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO paycron.charges (id, subscription_id, period, period_start, attempt, idempotency_key, customer_id,
             card_id, amount_minor, currency, status, request_body, request_fingerprint, provider_payment_id)
         VALUES ($1, $2, 0, now(), $3, coalesce($4, replace($2::text, '-', '') || '-0-' || $3), 'CUST1', 'ccof:card1',
                 1500, 'USD', $5, '{}', 'x', $6)",
    )
    .bind(id)
    .bind(sub)
    .bind(attempt)
    .bind(key)
    .bind(status)
    .bind(payment)
    .execute(&db.pool)
    .await
    .map(|_| id)
}

/// A succeeded ledger entry for `charge` (postings are the caller's).
async fn insert_entry(tx: &mut sqlx::PgConnection, charge: Uuid, sub: Uuid) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO paycron.ledger_entries (charge_id, subscription_id, customer_id, period_start, attempt, status,
             amount_minor, currency, provider_payment_id) VALUES ($1, $2, 'CUST1', now(), 1, 'succeeded', 1500, 'USD', 'PAY1') RETURNING id",
    )
    .bind(charge)
    .bind(sub)
    .fetch_one(tx)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ledger_refuses_update_delete_truncate() {
    let db = fresh_db().await;
    let sub = subscription(&db).await;
    let charge = insert_charge(&db, sub, 1, None, "succeeded", Some("PAY1"))
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let entry = insert_entry(&mut tx, charge, sub).await;
    sqlx::query("INSERT INTO paycron.ledger_postings (entry_id, account, amount_minor, currency) VALUES ($1, 'a', 1500, 'USD'), ($1, 'b', -1500, 'USD')")
        .bind(entry)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // A feed row to refuse changes to (publication itself may wait on other tests' transactions).
    sqlx::query(
        "INSERT INTO paycron.event_feed (position, event_id) SELECT 1000000, id FROM paycron.events LIMIT 1",
    )
    .execute(&db.pool)
    .await
    .unwrap();

    for sql in [
        "UPDATE paycron.ledger_entries SET amount_minor = 1",
        "DELETE FROM paycron.ledger_entries",
        "TRUNCATE paycron.ledger_entries CASCADE",
        "UPDATE paycron.ledger_postings SET amount_minor = 1",
        "DELETE FROM paycron.ledger_postings",
        "UPDATE paycron.events SET type = 'x'",
        "TRUNCATE paycron.events CASCADE",
        "TRUNCATE paycron.event_feed",
        "DELETE FROM paycron.event_feed",
    ] {
        let err = sqlx::query(sql).execute(&db.pool).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    // The entry's charge stays: a charge in the ledger cannot be deleted.
    let err = sqlx::query("DELETE FROM paycron.charges WHERE id = $1")
        .bind(charge)
        .execute(&db.pool)
        .await
        .expect_err("a booked charge deleted");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23503"),
        "{err}"
    );
    assert!(err.to_string().contains("in the ledger"), "{err}");
    // Nor can an entry name a charge that does not exist.
    let mut tx = db.pool.begin().await.unwrap();
    let err = sqlx::query(
        "INSERT INTO paycron.ledger_entries (charge_id, subscription_id, customer_id, period_start, attempt, status,
             amount_minor, currency) VALUES (gen_random_uuid(), $1, 'CUST1', now(), 1, 'declined', 1500, 'USD')",
    )
    .bind(sub)
    .execute(&mut *tx)
    .await
    .expect_err("an entry of no charge");
    drop(tx);
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23503"),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(count(&db, "charges").await, 1);
    assert_eq!(count(&db, "ledger_entries").await, 1);
    assert_eq!(count(&db, "ledger_postings").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_charge_needs_its_subscription_and_a_subscription_is_never_deleted() {
    let db = fresh_db().await;
    let sub = subscription(&db).await;
    let err = insert_charge(&db, Uuid::new_v4(), 1, None, "pending", None)
        .await
        .expect_err("a charge of no subscription");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23503"),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    insert_charge(&db, sub, 1, None, "pending", None)
        .await
        .unwrap();
    for sql in [
        "DELETE FROM paycron.subscriptions",
        "TRUNCATE paycron.subscriptions CASCADE",
    ] {
        let err = sqlx::query(sql).execute(&db.pool).await.expect_err(sql);
        assert!(err.to_string().contains("never deleted"), "{sql}: {err}");
    }
    assert_eq!(count(&db, "subscriptions").await, 1);
    assert_eq!(count(&db, "charges").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unbalanced_postings_are_refused() {
    let db = fresh_db().await;
    let sub = subscription(&db).await;
    let charge = insert_charge(&db, sub, 1, None, "succeeded", Some("PAY1"))
        .await
        .unwrap();
    let mut tx = db.pool.begin().await.unwrap();
    let entry = insert_entry(&mut tx, charge, sub).await;
    let err = sqlx::query("INSERT INTO paycron.ledger_postings (entry_id, account, amount_minor, currency) VALUES ($1, 'a', 1500, 'USD'), ($1, 'b', -1400, 'USD')")
        .bind(entry)
        .execute(&mut *tx)
        .await
        .expect_err("unbalanced");
    drop(tx);
    assert!(err.to_string().contains("do not balance"), "{err}");
    assert_eq!(count(&db, "ledger_entries").await, 0);
    // Nor can balanced postings be added to an entry that already has its own.
    let mut tx = db.pool.begin().await.unwrap();
    let entry = insert_entry(&mut tx, charge, sub).await;
    sqlx::query("INSERT INTO paycron.ledger_postings (entry_id, account, amount_minor, currency) VALUES ($1, 'a', 1500, 'USD'), ($1, 'b', -1500, 'USD')")
        .bind(entry)
        .execute(&mut *tx)
        .await
        .unwrap();
    let err = sqlx::query("INSERT INTO paycron.ledger_postings (entry_id, account, amount_minor, currency) VALUES ($1, 'c', 10, 'USD'), ($1, 'd', -10, 'USD')")
        .bind(entry)
        .execute(&mut *tx)
        .await
        .expect_err("postings added later");
    assert!(err.to_string().contains("already has postings"), "{err}");
    drop(tx);
    // Nor can postings name an entry that does not exist, balanced or not.
    let err = sqlx::query("INSERT INTO paycron.ledger_postings (entry_id, account, amount_minor, currency) VALUES (987654, 'a', 10, 'USD'), (987654, 'b', -10, 'USD')")
        .execute(&db.pool)
        .await
        .expect_err("postings of no entry");
    assert_eq!(
        err.as_database_error().and_then(|e| e.code()).as_deref(),
        Some("23503"),
        "{err}"
    );
    assert!(err.to_string().contains("does not exist"), "{err}");
    assert_eq!(count(&db, "ledger_postings").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_success_and_one_open_charge_per_period() {
    let db = fresh_db().await;
    let sub = subscription(&db).await;
    insert_charge(&db, sub, 1, None, "succeeded", Some("PAY1"))
        .await
        .unwrap();
    // A second success for the same period.
    let err = insert_charge(&db, sub, 2, None, "succeeded", Some("PAY2"))
        .await
        .expect_err("second success");
    assert!(
        err.to_string().contains("charges_one_success_per_period"),
        "{err}"
    );
    // A second charge for the same attempt.
    let err = insert_charge(&db, sub, 1, None, "pending", None)
        .await
        .expect_err("same attempt");
    assert!(
        err.to_string().contains("subscription_id_period_attempt"),
        "{err}"
    );
    // Two open charges for one period.
    insert_charge(&db, sub, 3, None, "pending", None)
        .await
        .unwrap();
    let err = insert_charge(&db, sub, 4, None, "pending", None)
        .await
        .expect_err("two pending");
    assert!(
        err.to_string().contains("charges_one_open_per_period"),
        "{err}"
    );
    // A key other than the one derived from (subscription, period, attempt): with those unique,
    // the derivation is what keeps keys unique.
    let err = insert_charge(&db, sub, 5, Some("k1"), "declined", None)
        .await
        .expect_err("a key not derived");
    assert!(err.to_string().contains("charges_key_derived"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn constraints_hold_money_and_card_rules() {
    let db = fresh_db().await;
    seed_card(&db, "CUST1", "ccof:card1").await;
    for (sql, what) in [
        (
            "SELECT paycron.create_subscription('CUST1', 0, 'USD', 'month', 1)",
            "greater than 0",
        ),
        (
            "SELECT paycron.create_subscription('CUST1', -5, 'USD', 'month', 1)",
            "greater than 0",
        ),
        (
            "SELECT paycron.create_subscription('CUST1', 1000000000001, 'USD', 'month', 1)",
            "above the cap",
        ),
        (
            "SELECT paycron.create_subscription('CUST1', 100, 'usd', 'month', 1)",
            "ISO 4217",
        ),
        (
            "SELECT paycron.create_subscription('CUST1', 100, 'USD', 'fortnight', 1)",
            "interval",
        ),
        (
            "SELECT paycron.create_subscription('CUST1', 100, 'USD', 'month', 0)",
            "interval",
        ),
        (
            "SELECT paycron.create_subscription('CUST1', 100, 'USD', 'month', 1, NULL, NULL, 'Mars/Base')",
            "time zone",
        ),
        (
            "SELECT paycron.create_subscription('NOBODY', 100, 'USD', 'month', 1)",
            "unknown",
        ),
        (
            "SELECT paycron.create_subscription('CUST1', 100, 'USD', 'month', 1, 'ccof:none')",
            "unknown",
        ),
        (
            "SELECT paycron.upsert_customer_card('CUST9', '4111111111111111')",
            "card number",
        ),
        (
            "SELECT paycron.upsert_customer_card('4111 1111 1111 1111', 'ccof:x')",
            "card number",
        ),
    ] {
        let err = sqlx::query(sql).execute(&db.pool).await.expect_err(sql);
        assert!(err.to_string().contains(what), "{sql}: {err}");
    }
    // Direct inserts are held by CHECK constraints too.
    let err = sqlx::query(
        "INSERT INTO paycron.cards (id, customer_id) VALUES ('5500005555555559', 'CUST1')",
    )
    .execute(&db.pool)
    .await
    .expect_err("pan as card id");
    assert!(err.to_string().contains("cards_id_check"), "{err}");
    assert_eq!(count(&db, "subscriptions").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_role_may_call_functions_but_not_touch_money_tables() {
    let db = fresh_db().await;
    seed_card(&db, "CUST1", "ccof:card1").await;
    let mut tx = as_role(&db, "paycron_app").await;
    let id: Uuid =
        sqlx::query_scalar("SELECT paycron.create_subscription('CUST1', 900, 'USD', 'month', 1)")
            .fetch_one(&mut *tx)
            .await
            .expect("app may create");
    tx.commit().await.unwrap();
    // Once committed, the event gets its feed position (the daemon publishes; an app without
    // one calls the publisher itself) and the app reads it.
    // Publication waits for every older transaction of the cluster (other tests' included) to
    // end, so the app polls, as a real consumer does.
    let mut seen = 0i64;
    for _ in 0..100 {
        let mut tx = as_role(&db, "paycron_app").await;
        sqlx::query("SELECT paycron.publish_events()")
            .execute(&mut *tx)
            .await
            .expect("app may publish");
        tx.commit().await.unwrap();
        let mut tx = as_role(&db, "paycron_app").await;
        seen = sqlx::query_scalar(
            "SELECT count(*) FROM paycron.events_feed WHERE subscription_id = $1",
        )
        .bind(id)
        .fetch_one(&mut *tx)
        .await
        .expect("app may read events");
        tx.commit().await.unwrap();
        if seen > 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(seen, 1);
    for sql in [
        "INSERT INTO paycron.ledger_entries (charge_id, subscription_id, customer_id, period_start, attempt, status, amount_minor, currency) VALUES (gen_random_uuid(), gen_random_uuid(), 'x', now(), 1, 'declined', 1, 'USD')",
        "UPDATE paycron.charges SET status = 'succeeded'",
        "SELECT * FROM paycron.charges",
        "UPDATE paycron.subscriptions SET amount_minor = 1",
    ] {
        let mut tx = as_role(&db, "paycron_app").await;
        let err = sqlx::query(sql).execute(&mut *tx).await.expect_err(sql);
        assert!(
            err.to_string().contains("permission denied"),
            "{sql}: {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_ref_makes_create_idempotent() {
    let db = fresh_db().await;
    seed_card(&db, "CUST1", "ccof:card1").await;
    let sql = "SELECT paycron.create_subscription('CUST1', 700, 'USD', 'month', 1, p_external_ref => 'order-42')";
    let a: Uuid = sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap();
    let b: Uuid = sqlx::query_scalar(sql).fetch_one(&db.pool).await.unwrap();
    assert_eq!(a, b);
    assert_eq!(count(&db, "subscriptions").await, 1);
    // The same reference for another customer, amount or interval is refused, naming it.
    seed_card(&db, "CUST2", "ccof:card2").await;
    for other in [
        "SELECT paycron.create_subscription('CUST2', 77700, 'EUR', 'year', 1, p_external_ref => 'order-42')",
        "SELECT paycron.create_subscription('CUST1', 701, 'USD', 'month', 1, p_external_ref => 'order-42')",
        "SELECT paycron.create_subscription('CUST1', 700, 'USD', 'week', 1, p_external_ref => 'order-42')",
    ] {
        let err = sqlx::query_scalar::<_, Uuid>(sqlx::AssertSqlSafe(other))
            .fetch_one(&db.pool)
            .await
            .unwrap_err();
        let db_err = err.as_database_error().unwrap();
        assert_eq!(db_err.code().as_deref(), Some("22023"), "{other}");
        assert!(
            db_err.message().contains("order-42"),
            "{}",
            db_err.message()
        );
    }
    assert_eq!(count(&db, "subscriptions").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_application_transaction_leaves_nothing() {
    let db = fresh_db().await;
    let mut tx = db.pool.begin().await.unwrap();
    sqlx::query(
        "SELECT paycron.upsert_customer_card('APP1', 'ccof:app1', 'VISA', '4242', 1, 2032)",
    )
    .execute(&mut *tx)
    .await
    .unwrap();
    let _: Uuid =
        sqlx::query_scalar("SELECT paycron.create_subscription('APP1', 500, 'USD', 'week', 2)")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(count(&db, "customers").await, 0);
    assert_eq!(count(&db, "subscriptions").await, 0);
    assert_eq!(count(&db, "events").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_the_engine_cannot_use_are_refused_at_the_sql_api_and_in_the_table() {
    let db = fresh_db().await;
    seed_card(&db, "CUST1", "ccof:card1").await;
    let create = |zone: &'static str, currency: &'static str, ends: Option<&'static str>| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, Uuid>(
                "SELECT paycron.create_subscription('CUST1', 1500, $1, 'month', 1, p_time_zone => $2, p_ends_at => $3::timestamptz)",
            )
            .bind(currency)
            .bind(zone)
            .bind(ends)
            .fetch_one(&pool)
            .await
        }
    };
    for zone in [
        "posix/Europe/Paris",
        "localtime",
        "Mars/Olympus",
        "europe/paris",
    ] {
        let e = create(zone, "USD", None).await.unwrap_err().to_string();
        assert!(e.contains("is not a known IANA zone"), "{zone}: {e}");
        assert!(
            zone.parse::<chrono_tz::Tz>().is_err(),
            "{zone}: the engine must not know it either"
        );
    }
    for ends in ["infinity", "-infinity", "3000-01-01T00:00:00Z"] {
        let e = create("UTC", "USD", Some(ends))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("is not an instant between 1970 and 2200"),
            "{ends}: {e}"
        );
    }
    let e = create("UTC", "XYZ", None).await.unwrap_err().to_string();
    assert!(e.contains("ISO 4217"), "{e}");
    // Every zone and currency the engine knows is accepted.
    assert!(create("Europe/Paris", "JPY", None).await.is_ok());
    let known: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.time_zones")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(known as usize, chrono_tz::TZ_VARIANTS.len());
    // Even a direct write cannot store a zone the engine does not know.
    let direct = sqlx::query(
        "UPDATE paycron.subscriptions SET time_zone = 'posix/Europe/Paris' WHERE customer_id = 'CUST1'",
    )
    .execute(&db.pool)
    .await
    .unwrap_err()
    .to_string();
    assert!(direct.contains("subscriptions_known_time_zone"), "{direct}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_row_holds_an_instant_the_engine_cannot_read() {
    let db = fresh_db().await;
    let id = subscription(&db).await;
    for col in ["ends_at", "next_due_at", "anchor", "skip_before"] {
        let e = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE paycron.subscriptions SET {col} = '-infinity' WHERE id = $1"
        )))
        .bind(id)
        .execute(&db.pool)
        .await
        .unwrap_err()
        .to_string();
        assert!(e.contains("subscriptions_finite_instants"), "{col}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runtime_role_has_its_dml_and_nothing_more() {
    let db = fresh_db().await;
    subscription(&db).await;
    for sql in [
        "CREATE TABLE paycron.intruder (a int)",
        "TRUNCATE paycron.charges",
        "TRUNCATE paycron.events",
        "ALTER TABLE paycron.ledger_entries DISABLE TRIGGER ALL",
        "DROP TRIGGER ledger_entries_append_only ON paycron.ledger_entries",
        "CREATE OR REPLACE FUNCTION paycron.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        "UPDATE paycron.ledger_entries SET amount_minor = 1",
        "DELETE FROM paycron.ledger_postings",
        "UPDATE paycron.events SET type = 'x'",
        "DELETE FROM paycron.event_feed",
        "DELETE FROM paycron.refunds",
        "DELETE FROM paycron.disputes",
        "CREATE TABLE public.intruder (a int)",
    ] {
        let mut tx = as_role(&db, "paycron_runtime").await;
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .expect_err(sql)
            .to_string();
        assert!(
            err.contains("permission denied") || err.contains("must be owner"),
            "{sql}: {err}"
        );
    }
    // What it needs works.
    let mut tx = as_role(&db, "paycron_runtime").await;
    for sql in [
        "SELECT count(*) FROM paycron.subscriptions",
        "UPDATE paycron.subscriptions SET updated_at = now()",
        "SELECT paycron.emit('probe', NULL, NULL, NULL, '{}'::jsonb)",
        "SELECT paycron.publish_events()",
        "SELECT max(version) FROM _sqlx_migrations",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_with_one_external_ref_take_turns() {
    let db = fresh_db().await;
    seed_card(&db, "CUST1", "ccof:card1").await;
    seed_card(&db, "CUST2", "ccof:card2").await;
    let same = "SELECT paycron.create_subscription('CUST1', 700, 'USD', 'month', 1, p_external_ref => 'race-1')";
    let other = "SELECT paycron.create_subscription('CUST2', 900, 'USD', 'month', 1, p_external_ref => 'race-1')";
    // The first holds its transaction open; the others wait on the reference.
    let mut first = db.pool.begin().await.unwrap();
    let a: Uuid = sqlx::query_scalar(same)
        .fetch_one(&mut *first)
        .await
        .unwrap();
    let (p1, p2) = (db.pool.clone(), db.pool.clone());
    let again =
        tokio::spawn(async move { sqlx::query_scalar::<_, Uuid>(same).fetch_one(&p1).await });
    let clash =
        tokio::spawn(async move { sqlx::query_scalar::<_, Uuid>(other).fetch_one(&p2).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !again.is_finished() && !clash.is_finished(),
        "both wait for the first"
    );
    first.commit().await.unwrap();
    assert_eq!(
        again.await.unwrap().unwrap(),
        a,
        "same terms: the same subscription"
    );
    let err = clash.await.unwrap().unwrap_err();
    assert_eq!(
        err.as_database_error().unwrap().code().as_deref(),
        Some("22023"),
        "other terms: refused, never a raw unique violation"
    );
    assert_eq!(count(&db, "subscriptions").await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_reads_its_subscriptions_and_charges_through_functions_only() {
    let h = crate::helpers::Harness::start().await;
    let (sub, charge) = h.paid_charge("RD", 1500).await;
    sqlx::query("UPDATE paycron.subscriptions SET external_ref = 'user-7-pro' WHERE id = $1")
        .bind(sub.0)
        .execute(&h.db.pool)
        .await
        .unwrap();
    let mut app = crate::helpers::as_role(&h.db, "paycron_app").await;
    let row: serde_json::Value =
        sqlx::query_scalar("SELECT to_jsonb(s) FROM paycron.subscription($1) s")
            .bind(sub.0)
            .fetch_one(&mut *app)
            .await
            .unwrap();
    assert_eq!(row["id"], sub.0.to_string());
    assert_eq!(
        (&row["status"], &row["amount_minor"], &row["currency"]),
        (&"active".into(), &1500.into(), &"USD".into())
    );
    assert_eq!(row["card_id"], "ccof:sim-ok-rd");
    assert_eq!(row["card_last_4"], "1111");
    assert_eq!(
        (
            &row["current_period"],
            &row["next_period"],
            &row["dunning_step"]
        ),
        (&0.into(), &1.into(), &0.into()),
        "period 0 paid, period 1 next"
    );
    let next: chrono::DateTime<chrono::Utc> =
        row["next_charge_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        next,
        "2027-02-01T00:00:00Z"
            .parse::<chrono::DateTime<chrono::Utc>>()
            .unwrap()
    );
    assert_eq!(row["external_ref"], "user-7-pro");
    let by_ref: Uuid =
        sqlx::query_scalar("SELECT id FROM paycron.subscription_by_ref('user-7-pro')")
            .fetch_one(&mut *app)
            .await
            .unwrap();
    assert_eq!(by_ref, sub.0);
    let mine: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.customer_subscriptions('RD')")
        .fetch_one(&mut *app)
        .await
        .unwrap();
    assert_eq!(mine, 1);
    let charges: Vec<(Uuid, i32, String, Option<String>)> = sqlx::query_as(
        "SELECT charge_id, period, status, provider_payment_id FROM paycron.subscription_charges($1)",
    )
    .bind(sub.0)
    .fetch_all(&mut *app)
    .await
    .unwrap();
    assert_eq!(charges.len(), 1);
    assert_eq!(
        (charges[0].0, charges[0].1, charges[0].2.as_str()),
        (charge, 0, "succeeded")
    );
    assert!(charges[0].3.is_some());
    // Unknown ids and references answer no row, not an error.
    let none: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.subscription_by_ref('nope')")
        .fetch_one(&mut *app)
        .await
        .unwrap();
    assert_eq!(none, 0);
    app.rollback().await.unwrap();
    // No table, and not the internal helper.
    for sql in [
        "SELECT * FROM paycron.subscriptions",
        "SELECT * FROM paycron.charges",
        "SELECT * FROM paycron.subscription_states(ARRAY[gen_random_uuid()])",
    ] {
        let mut app = crate::helpers::as_role(&h.db, "paycron_app").await;
        let err = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut *app)
            .await
            .expect_err(sql)
            .to_string();
        assert!(err.contains("permission denied"), "{sql}: {err}");
    }
    h.sim.shutdown().await;
}

/// The README's Python examples, as written, run by an app login granted `paycron_app`:
/// creating in the app's transaction, then reading and changing the price.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_python_app_examples_run_as_an_app_login() {
    let db = fresh_db().await;
    let login = format!("billing_app_{}", uuid::Uuid::new_v4().simple());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {login} LOGIN PASSWORD 'app-secret-1234'; GRANT paycron_app TO {login}"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut url = reqwest::Url::parse(&db.url).unwrap();
    url.set_username(&login).unwrap();
    url.set_password(Some("app-secret-1234")).unwrap();
    let readme = include_str!("../../README.md");
    let block = |start: &str| -> String {
        let at = readme
            .find(start)
            .unwrap_or_else(|| panic!("README block {start:?}"));
        let code = &readme[at + "```python\n".len()..];
        code[..code.find("```").unwrap()].to_owned()
    };
    let create = block("```python\nimport psycopg\n");
    let read = block("```python\nfrom psycopg.rows import dict_row");
    let script = format!(
        "import psycopg\nDATABASE_URL = {url:?}\nclass User:\n    id = 7\n    square_customer_id = 'PY1'\n    square_card_id = 'ccof:py1'\nuser = User()\n{create}\n{read}\nprint(status)\n",
        url = url.to_string()
    );
    let out = tokio::process::Command::new("python3")
        .args(["-c", &script])
        .output()
        .await
        .expect("python3 with psycopg (see .ci/run)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("next charge 1999 USD"), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("active"), "{stdout}");
    let price: (i64, Option<i64>, Option<i32>) = sqlx::query_as(
        "SELECT amount_minor, pending_amount_minor, pending_from_period FROM paycron.subscriptions WHERE external_ref = 'user-7-pro'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(
        price,
        (1999, Some(2999), Some(1)),
        "period 0 began at creation: the new price waits for period 1"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn billing_transactions_price_random_reads_as_cached_and_only_they_do() {
    let db = fresh_db().await;
    async fn show(name: &str, conn: &mut sqlx::PgConnection) -> String {
        sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(format!("SHOW {name}")))
            .fetch_one(conn)
            .await
            .unwrap()
    }
    let settings = ["random_page_cost", "enable_hashjoin", "enable_mergejoin"];
    let mut tx = paycron::store::begin_batch(&db.pool).await.unwrap();
    let mut inside = Vec::new();
    for name in settings {
        inside.push(show(name, &mut tx).await);
    }
    tx.commit().await.unwrap();
    assert_eq!(inside, ["1.1", "off", "off"]);
    // SET LOCAL: the pooled session goes back to the server's settings.
    let mut conn = db.pool.acquire().await.unwrap();
    let mut after = Vec::new();
    for name in settings {
        after.push(show(name, &mut conn).await);
    }
    assert_eq!(after, ["4", "on", "on"]);
}
