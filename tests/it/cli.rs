//! The command-line contract: happy paths, and every bad input refused with one clear line,
//! exit code 2 and nothing written.

use std::io::Write;

use crate::helpers::{EmbeddedHome, count, fresh_db, paycron, run};

fn csv(lines: &[&str]) -> tempfile::NamedTempFile {
    let mut f = tempfile::Builder::new().suffix(".csv").tempfile().unwrap();
    for l in lines {
        writeln!(f, "{l}").unwrap();
    }
    f
}

const HEADER: &str = "customer_id,card_id,card_brand,last_4,exp_month,exp_year";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn import_create_list_show_manage() {
    let db = fresh_db().await;
    let file = csv(&[
        HEADER,
        "CUST1,ccof:one,VISA,1111,12,2030",
        "CUST2,ccof:two,mastercard,4444,1,2031",
    ]);
    let (code, out, err) = run(paycron(Some(&db.url), None)
        .args(["cards", "import"])
        .arg(file.path()))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("imported 2 cards"));
    let (code, out, _) =
        run(paycron(Some(&db.url), None).args(["cards", "list", "--format", "json"])).await;
    assert_eq!(code, 0);
    let cards: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cards.as_array().unwrap().len(), 2);
    assert_eq!(cards[1]["card_brand"], "MASTERCARD");

    let (code, id, err) = run(paycron(Some(&db.url), None).args([
        "subscription",
        "create",
        "--customer",
        "CUST1",
        "--amount",
        "1999",
        "--currency",
        "USD",
        "--every",
        "1month",
        "--anchor",
        "2026-01-31T09:00:00Z",
        "--timezone",
        "America/New_York",
        "--cycles",
        "12",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let id = id.trim().to_owned();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    let (code, out, _) =
        run(paycron(Some(&db.url), None).args(["subscription", "list", "--format", "json"])).await;
    assert_eq!(code, 0);
    let subs: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(subs[0]["id"], id.as_str());
    assert_eq!(subs[0]["card_id"], "ccof:one");
    assert_eq!(subs[0]["time_zone"], "America/New_York");
    assert_eq!(subs[0]["max_cycles"], 12);
    let (code, out, _) =
        run(paycron(Some(&db.url), None).args(["subscription", "show", &id, "--format", "json"]))
            .await;
    assert_eq!(code, 0);
    assert!(out.contains("\"status\": \"active\""), "{out}");
    let extra = csv(&[HEADER, "CUST1,ccof:three,VISA,3333,5,2032"]);
    assert_eq!(
        run(paycron(Some(&db.url), None)
            .args(["cards", "import"])
            .arg(extra.path()))
        .await
        .0,
        0
    );
    let (code, out, err) = run(paycron(Some(&db.url), None).args([
        "subscription",
        "change-card",
        &id,
        "--card",
        "ccof:three",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.trim().ends_with(" active"),
        "the resulting status: {out}"
    );
    let (code, _, err) = run(paycron(Some(&db.url), None).args([
        "subscription",
        "change-card",
        &id,
        "--card",
        "ccof:two",
    ]))
    .await;
    assert_eq!(code, 2, "another customer's card: {err}");
    assert!(err.contains("belongs to customer CUST2"), "{err}");
    for (verb, expect) in [
        ("pause", "paused"),
        ("resume", "active"),
        ("cancel", "canceled"),
    ] {
        let (code, out, err) =
            run(paycron(Some(&db.url), None).args(["subscription", verb, &id])).await;
        assert_eq!(code, 0, "{verb}: {err}");
        assert!(out.contains(expect), "{verb}: {out}");
    }
    let (code, _, err) =
        run(paycron(Some(&db.url), None).args(["subscription", "pause", &id])).await;
    assert_eq!(code, 2, "pausing a canceled subscription: {err}");
    assert!(err.contains("canceled"), "{err}");
    let (code, out, _) =
        run(paycron(Some(&db.url), None).args(["customers", "list", "--format", "json"])).await;
    assert_eq!(code, 0);
    assert!(out.contains("CUST2"));
    // An empty ledger exports nothing.
    let (code, out, _) =
        run(paycron(Some(&db.url), None).args(["ledger", "export", "--format", "jsonl"])).await;
    assert_eq!((code, out.as_str()), (0, ""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscription_input_exits_2_and_writes_nothing() {
    let db = fresh_db().await;
    let file = csv(&[HEADER, "CUST1,ccof:one,VISA,1111,12,2030"]);
    assert_eq!(
        run(paycron(Some(&db.url), None)
            .args(["cards", "import"])
            .arg(file.path()))
        .await
        .0,
        0
    );
    let base = [
        "subscription",
        "create",
        "--customer",
        "CUST1",
        "--amount",
        "1999",
        "--currency",
        "USD",
        "--every",
        "1month",
    ];
    let cases: &[(&str, &str, &str)] = &[
        ("--amount", "0", "--amount"),
        ("--amount", "-5", "--amount"),
        ("--amount", "12.50", "--amount"),
        ("--amount", "1000000000001", "--amount"),
        ("--currency", "usd", "--currency"),
        ("--currency", "DOLLARS", "--currency"),
        ("--currency", "XYZ", "--currency"),
        ("--every", "0month", "--every"),
        ("--every", "1fortnight", "--every"),
        ("--every", "month", "--every"),
        ("--timezone", "Mars/Olympus", "--timezone"),
        ("--anchor", "yesterday", "--anchor"),
        ("--anchor", "2026-13-01T00:00:00Z", "--anchor"),
        ("--customer", "NOBODY", "NOBODY"),
        ("--card", "ccof:missing", "ccof:missing"),
        ("--card", "4111111111111111", "card number"),
        ("--customer", "4111-1111-1111-1111", "card number"),
    ];
    for (flag, value, expect) in cases {
        let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
        if let Some(i) = args.iter().position(|a| a == flag) {
            args[i + 1] = value.to_string();
        } else {
            args.push(flag.to_string());
            args.push(value.to_string());
        }
        let (code, out, err) = run(paycron(Some(&db.url), None).args(&args)).await;
        assert_eq!(code, 2, "{flag} {value}: stdout {out} stderr {err}");
        let last = err.lines().last().unwrap_or("");
        assert!(
            last.starts_with("paycron: ") && last.contains(expect),
            "{flag} {value}: {err}"
        );
        assert!(
            !err.contains("4111111111111111") || *value != "4111111111111111",
            "a card number is never echoed: {err}"
        );
    }
    assert_eq!(count(&db, "subscriptions").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_import_files_name_the_line_and_import_nothing() {
    let db = fresh_db().await;
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec![
                "customer_id,card_id,card_brand,last_4,exp_month",
                "C1,ccof:a,VISA,1111,1",
            ],
            ":1: missing column \"exp_year\"",
        ),
        (
            vec![
                HEADER,
                "C1,ccof:a,VISA,1111,12,2030",
                "C2,4111111111111111,VISA,1111,12,2030",
            ],
            ":3: card_id looks like a card number",
        ),
        (
            vec![
                HEADER,
                "C1,ccof:a,VISA,1111,12,2030",
                "C2,ccof:b,VISA,11,12,2030",
            ],
            ":3: last_4",
        ),
        (vec![HEADER, "C1,ccof:a,VISA,1111,13,2030"], ":2: exp_month"),
        (
            vec![HEADER, "C1,ccof:a,VISA,1111,12"],
            ":2: expected 6 fields, found 5",
        ),
        (
            vec![
                HEADER,
                "C1,ccof:a,VISA,1111,12,2030",
                "C2,ccof:a,VISA,1111,12,2030",
            ],
            ":3: card_id ccof:a belongs to customer C1",
        ),
        (
            vec![HEADER, ",ccof:a,VISA,1111,12,2030"],
            ":2: customer_id is empty",
        ),
    ];
    for (lines, expect) in cases {
        let file = csv(&lines);
        let (code, _, err) = run(paycron(Some(&db.url), None)
            .args(["cards", "import"])
            .arg(file.path()))
        .await;
        assert_eq!(code, 2, "{lines:?}: {err}");
        assert!(
            err.contains(expect),
            "{lines:?}: expected {expect:?} in {err}"
        );
        assert!(
            !err.contains("4111111111111111"),
            "never echo a card number: {err}"
        );
        assert_eq!(count(&db, "cards").await, 0, "{lines:?}");
        assert_eq!(count(&db, "customers").await, 0, "{lines:?}");
    }
    let (code, _, err) =
        run(paycron(Some(&db.url), None).args(["cards", "import", "/nonexistent/x.csv"])).await;
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/x.csv"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_exits_2_naming_the_key() {
    for (key, value) in [
        ("PAYCRON_LOG_FORMAT", "xml"),
        ("SQUARE_ENVIRONMENT", "staging"),
        ("PAYCRON_CONCURRENCY", "0"),
        ("PAYCRON_DUNNING_RETRY_DAYS", "3,1"),
        ("SQUARE_BASE_URL", "ftp://x"),
        // The bearer token would travel in clear.
        ("SQUARE_BASE_URL", "http://square.example.com"),
        ("PAYCRON_WEBHOOK_ALLOW_PRIVATE", "sometimes"),
        ("PAYCRON_PUBLIC_URL", "billing.example.com"),
        ("PAYCRON_PUBLIC_URL", "https://billing.example.com/?x=1"),
        ("SQUARE_APPLICATION_ID", "sq0idp app"),
        ("PAYCRON_ENROLLMENT_EXPIRY_MINUTES", "0"),
    ] {
        let (code, _, err) = run(paycron(None, None)
            .env(key, value)
            .args(["customers", "list"]))
        .await;
        assert_eq!(code, 2, "{key}");
        assert!(err.contains(key), "{key}: {err}");
    }
    // The enrollment link carries a secret: https against Square production.
    let (code, _, err) = run(paycron(None, None)
        .env("SQUARE_ENVIRONMENT", "production")
        .env("PAYCRON_PUBLIC_URL", "http://billing.example.com")
        .args(["customers", "list"]))
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("PAYCRON_PUBLIC_URL") && err.contains("https"),
        "{err}"
    );
    // A half-configured Square webhook receiver, either half.
    for (key, missing) in [
        (
            "SQUARE_WEBHOOK_SIGNATURE_KEY",
            "SQUARE_WEBHOOK_NOTIFICATION_URL",
        ),
        (
            "SQUARE_WEBHOOK_NOTIFICATION_URL",
            "SQUARE_WEBHOOK_SIGNATURE_KEY",
        ),
    ] {
        let (code, _, err) = run(paycron(None, None)
            .env(key, "https://billing.example.com/webhooks/square")
            .args(["customers", "list"]))
        .await;
        assert_eq!(code, 2, "{key}: {err}");
        assert!(
            err.contains(&format!("{missing} is not set")),
            "{key}: {err}"
        );
    }
    // DATABASE_URL_FILE: read from the file, never echoed.
    let url_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(url_file.path(), "mysql://u:very-secret@db/x\n").unwrap();
    let (code, _, err) = run(paycron(None, None)
        .env("DATABASE_URL_FILE", url_file.path())
        .args(["customers", "list"]))
    .await;
    assert_ne!(code, 0, "the file's URL (host `db`) was used: {err}");
    assert!(!err.contains("very-secret"), "{err}");
    // Commands that talk to Square refuse to start without a token.
    let db = fresh_db().await;
    let (code, _, err) = run(paycron(Some(&db.url), None).args(["sync-cards"])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("SQUARE_ACCESS_TOKEN"), "{err}");
    let (code, _, err) = run(paycron(Some(&db.url), None).args(["run-once"])).await;
    assert_eq!(code, 2, "{err}");
    // Delivering webhooks does not talk to Square.
    let (code, _, err) =
        run(paycron(Some(&db.url), None).args(["run-once", "--task", "deliver-webhooks"])).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_is_shared_by_concurrent_processes() {
    let home = EmbeddedHome::new("paycron-home");
    let file = csv(&[HEADER, "CUST1,ccof:one,VISA,1111,12,2030"]);
    let children: Vec<_> = (0..3)
        .map(|_| {
            paycron(None, None)
                .env("PAYCRON_HOME", home.path())
                .args(["cards", "import"])
                .arg(file.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().await.unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let (code, out, err) = run(paycron(None, None)
        .env("PAYCRON_HOME", home.path())
        .args(["cards", "list", "--format", "json"]))
    .await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ccof:one"));
    let (code, out, _) = run(paycron(None, None)
        .env("PAYCRON_HOME", home.path())
        .args(["db", "status"]))
    .await;
    assert_eq!(code, 0);
    assert!(out.starts_with("running"), "{out}");
    let (code, out, _) = run(paycron(None, None)
        .env("PAYCRON_HOME", home.path())
        .args(["db", "url"]))
    .await;
    assert_eq!(code, 0);
    assert!(out.starts_with("postgres://"), "{out}");
    let (code, out, _) = run(paycron(None, None)
        .env("PAYCRON_HOME", home.path())
        .args(["db", "stop"]))
    .await;
    assert_eq!((code, out.trim()), (0, "stopped"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_test_clock_is_refused_against_production() {
    let db = fresh_db().await;
    let (code, _, err) = run(paycron(Some(&db.url), None)
        .env("SQUARE_ENVIRONMENT", "production")
        .env("SQUARE_ACCESS_TOKEN", "never-used")
        .args(["run-once", "--now", "2099-01-01T00:00:00Z"]))
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--now") && err.contains("production"), "{err}");
    assert!(!err.contains("never-used"));
    let (code, _, err) = run(paycron(Some(&db.url), None)
        .env("SQUARE_ACCESS_TOKEN", "x")
        .args(["run-once", "--now", "tomorrow"]))
    .await;
    assert_eq!(code, 2);
    assert!(err.contains("--now"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_tail_follows_new_events() {
    use tokio::io::AsyncBufReadExt;
    let db = fresh_db().await;
    crate::helpers::seed_card(&db, "EV1", "ccof:ev1").await;
    let mut child = paycron(Some(&db.url), None)
        .args(["events", "tail", "--follow", "--format", "jsonl"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    sqlx::query("SELECT paycron.create_subscription('EV1', 300, 'USD', 'week', 1)")
        .execute(&db.pool)
        .await
        .unwrap();
    let line = tokio::time::timeout(std::time::Duration::from_secs(20), lines.next_line())
        .await
        .expect("the new event arrives")
        .unwrap()
        .unwrap();
    let _ = child.kill().await;
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["type"], "subscription_created");
    assert_eq!(v["customer_id"], "EV1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_migrate_changes_the_schema_and_a_runtime_login_runs_everything_else() {
    let db = fresh_db().await;
    // A login role granted the runtime role, as an operator makes one.
    let login = format!("rt_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {login} LOGIN PASSWORD 'runtime-secret-1234' IN ROLE paycron_runtime"
    )))
    .execute(&db.pool)
    .await
    .unwrap();
    let mut runtime = reqwest::Url::parse(&db.url).unwrap();
    runtime.set_username(&login).unwrap();
    runtime.set_password(Some("runtime-secret-1234")).unwrap();
    let runtime = runtime.to_string();
    let s = crate::helpers::sim(paycron::simulator::SimConfig::default()).await;
    s.with(|st| st.add_card("RT1", "ccof:sim-ok-rt1", "VISA", true));
    crate::helpers::seed_card(&db, "RT1", "ccof:sim-ok-rt1").await;
    let (code, _, err) = run(paycron(Some(&runtime), None).args([
        "subscription",
        "create",
        "--customer",
        "RT1",
        "--amount",
        "900",
        "--currency",
        "USD",
        "--every",
        "1month",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = run(paycron(Some(&runtime), Some(&s.base_url())).args([
        "run-once",
        "--now",
        &(chrono::Utc::now() + chrono::Duration::minutes(1)).to_rfc3339(),
    ]))
    .await;
    assert_eq!(code, 0, "the runtime role bills: {err}");
    assert_eq!(s.with(|st| st.completed().len()), 1);
    // A database behind the binary: every command but migrate refuses, naming what to run.
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&db.pool)
        .await
        .unwrap();
    let mut empty = reqwest::Url::parse(&db.url).unwrap();
    empty.set_path(&format!("/{name}"));
    let empty = empty.to_string();
    let (code, _, err) = run(paycron(Some(&empty), None).args(["customers", "list"])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("run `paycron migrate`"), "{err}");
    let (code, _, err) = run(paycron(Some("postgres://nobody@127.0.0.1:1/x"), None)
        .env("PAYCRON_MIGRATE_DATABASE_URL", &empty)
        .args(["migrate"]))
    .await;
    assert_eq!(code, 0, "migrate uses the owner's URL: {err}");
    let (code, _, err) = run(paycron(Some(&empty), None).args(["customers", "list"])).await;
    assert_eq!(code, 0, "{err}");
    // A database ahead of the binary.
    let pool = paycron::store::open_unmigrated(paycron::store::connect_options(&empty).unwrap(), 1)
        .await
        .unwrap();
    sqlx::query("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99991231000000, 'future', true, '\\x00', 0)")
        .execute(&pool)
        .await
        .unwrap();
    let (code, _, err) = run(paycron(Some(&empty), None).args(["customers", "list"])).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("newer than this paycron"), "{err}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_early_ends_the_command_quietly() {
    use tokio::io::AsyncBufReadExt;
    let db = fresh_db().await;
    sqlx::query(
        "SELECT paycron.emit('probe', NULL, NULL, NULL, '{}'::jsonb) FROM generate_series(1, 3000)",
    )
    .execute(&db.pool)
    .await
    .unwrap();
    for _ in 0..50 {
        sqlx::query("SELECT paycron.publish_events()")
            .execute(&db.pool)
            .await
            .unwrap();
        let published: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.events_feed")
            .fetch_one(&db.pool)
            .await
            .unwrap();
        if published == 3000 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // `paycron events tail | head -1`: far more output than a pipe holds, read one line, close.
    let mut child = paycron(Some(&db.url), None)
        .args(["events", "tail", "--format", "jsonl"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    assert!(lines.next_line().await.unwrap().is_some());
    drop(lines);
    let out = child.wait_with_output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_misspelled_setting_is_refused_and_file_comments_are_comments() {
    let db = fresh_db().await;
    // In the environment (shared with other programs): a warning naming the closest setting.
    let (code, _, err) = run(paycron(Some(&db.url), None)
        .env("PAYCRON_BATCH_SZE", "5")
        .args(["customers", "list"]))
    .await;
    assert_eq!(code, 0, "{err}");
    let warning = err
        .lines()
        .find(|l| l.contains("PAYCRON_BATCH_SZE"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(
        warning.contains("WARN") && warning.contains("did you mean PAYCRON_BATCH_SIZE?"),
        "{warning}"
    );
    let mut file = tempfile::NamedTempFile::new().unwrap();
    use std::io::Write;
    writeln!(file, "# paycron settings\nPAYCRON_BATCH_SIZE = 50   # fifty\nSQUARE_ENVIRONMENT = \"sandbox\" # the default").unwrap();
    let (code, _, err) = run(paycron(Some(&db.url), None)
        .env("PAYCRON_CONFIG", file.path())
        .args(["customers", "list"]))
    .await;
    assert_eq!(code, 0, "inline comments are not part of the value: {err}");
    let mut typo = tempfile::NamedTempFile::new().unwrap();
    writeln!(typo, "SQUARE_LOCATON_ID = \"L1\"").unwrap();
    let (code, _, err) = run(paycron(Some(&db.url), None)
        .env("PAYCRON_CONFIG", typo.path())
        .args(["customers", "list"]))
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("in the PAYCRON_CONFIG file") && err.contains("SQUARE_LOCATION_ID"),
        "{err}"
    );
    // Not TOML (an unquoted string): refused, saying so.
    let mut broken = tempfile::NamedTempFile::new().unwrap();
    writeln!(broken, "SQUARE_ENVIRONMENT = sandbox").unwrap();
    let (code, _, err) = run(paycron(Some(&db.url), None)
        .env("PAYCRON_CONFIG", broken.path())
        .args(["customers", "list"]))
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("PAYCRON_CONFIG") && err.contains("not TOML"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_says_how_billing_is_doing() {
    let h = crate::helpers::Harness::start().await;
    h.paid_charge("ST1", 1000).await;
    // All well: exit 0.
    let calm = h.cli(["status"]).await;
    assert_eq!(calm.code, 0, "{}\n{}", calm.stdout, calm.stderr);
    assert!(calm.stdout.contains("due soon"), "{}", calm.stdout);
    // Two subscriptions due for an hour: said, and exit 1 (it can back an alert).
    crate::helpers::seed_due(&h.db, &h.sim, 2).await;
    let out = h.cli(["status", "--format", "json"]).await;
    assert_eq!(out.code, 1, "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["subscriptions"]["active"], 3, "{v}");
    assert_eq!(v["due_now"], 2, "{v}");
    assert!(v["oldest_due_at"].is_string(), "{v}");
    assert_eq!(v["charges_pending"], 0);
    assert!(v["last_charge_recorded_at"].is_string(), "{v}");
    assert_eq!(v["schema_version"], v["binary_schema_version"], "{v}");
    assert_eq!(
        (&v["webhook_backlog"], &v["disputes_open"]),
        (&0.into(), &0.into())
    );
    let attention = v["needs_attention"].as_array().unwrap();
    assert_eq!(attention.len(), 1, "{v}");
    assert!(
        attention[0]
            .as_str()
            .unwrap()
            .contains("due for over an hour"),
        "{v}"
    );
    let text = h.cli(["status"]).await;
    assert_eq!(text.code, 1);
    assert!(
        text.stdout.contains("2 (oldest due since") && text.stdout.contains("needs attention"),
        "{}",
        text.stdout
    );
    // Each task's last run, with its counts; a failed one needs attention.
    assert_eq!(h.cli(["run-once", "--task", "bill-due"]).await.code, 0);
    let text = h.cli(["status"]).await;
    assert_eq!(text.code, 0, "{}", text.stdout);
    assert!(
        text.stdout.contains("task bill-due") && text.stdout.contains("attempted 2, "),
        "{}",
        text.stdout
    );
    // Square took a payment naming a charge this database does not know: reconcile finds it.
    h.card("ST9", "ccof:sim-ok-st9").await;
    let taken = reqwest::Client::new()
        .post(format!("{}/v2/payments", h.sim.base_url()))
        .bearer_auth("test-token-not-secret")
        .json(&serde_json::json!({
            "idempotency_key": "stray-1", "source_id": "ccof:sim-ok-st9", "customer_id": "ST9",
            "amount_money": {"amount": 100, "currency": "USD"},
            "reference_id": uuid::Uuid::new_v4().to_string(),
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 200);
    assert_eq!(h.cli(["run-once", "--task", "reconcile"]).await.code, 1);
    let out = h.cli(["status", "--format", "json"]).await;
    assert_eq!(out.code, 1, "{}", out.stdout);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let tasks = v["tasks"].as_array().unwrap();
    let reconcile = tasks.iter().find(|t| t["task"] == "reconcile").unwrap();
    assert_eq!(reconcile["ok"], false, "{v}");
    assert!(
        v["needs_attention"][0]
            .as_str()
            .unwrap()
            .contains("the last reconcile run failed"),
        "{v}"
    );
    h.sim.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_shows_what_would_be_charged_and_changes_nothing() {
    let h = crate::helpers::Harness::start().await;
    crate::helpers::seed_due(&h.db, &h.sim, 3).await;
    let before = crate::helpers::count(&h.db, "charges").await;

    let out = h.cli(["run-once", "--dry-run", "--format", "json"]).await;

    assert_eq!(out.code, 0, "{}", out.stderr);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    assert!(
        rows.iter()
            .all(|r| r["amount_minor"] == 500 && r["attempt"] == 1 && r["card_problem"].is_null())
    );
    assert_eq!(
        crate::helpers::count(&h.db, "charges").await,
        before,
        "nothing written"
    );
    assert!(h.sim.with(|st| st.completed().is_empty()), "nothing sent");
    let text = h.cli(["run-once", "--dry-run"]).await;
    assert!(
        text.stdout
            .contains("dry run: 3 charge(s) would be sent, 1500 USD"),
        "{}",
        text.stdout
    );
    // Recover's dry run: a charge whose answer was lost, its lease run out.
    let lost: uuid::Uuid = sqlx::query_scalar(
        "INSERT INTO paycron.charges (id, subscription_id, period, period_start, attempt, idempotency_key,
                customer_id, card_id, amount_minor, currency, status, request_body, request_fingerprint, sends, locked_until)
         SELECT gen_random_uuid(), id, 0, next_due_at, 1, replace(id::text, '-', '') || '-0-1', customer_id, card_id, 500, 'USD',
                'pending', '{}', '', 1, now() - interval '1 minute'
           FROM paycron.subscriptions LIMIT 1
         RETURNING id",
    )
    .fetch_one(&h.db.pool)
    .await
    .unwrap();
    let rec = h
        .cli([
            "run-once",
            "--task",
            "recover",
            "--dry-run",
            "--format",
            "json",
        ])
        .await;
    assert_eq!(rec.code, 0, "{}", rec.stderr);
    let rows: Vec<serde_json::Value> = serde_json::from_str(&rec.stdout).unwrap();
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert_eq!(rows[0]["action"], "re-send with its key");
    let sends: i32 = sqlx::query_scalar("SELECT sends FROM paycron.charges WHERE id = $1")
        .bind(lost)
        .fetch_one(&h.db.pool)
        .await
        .unwrap();
    assert_eq!(sends, 1, "nothing taken or sent");
    let bad = h
        .cli(["run-once", "--dry-run", "--task", "sync-cards"])
        .await;
    assert_eq!(bad.code, 2, "{}", bad.stderr);
    h.sim.shutdown().await;
}

/// `ledger export` for finance: a window by when lines were recorded, and CSV with a header;
/// the JSON lines keep the contract's keys.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ledger_exports_a_window_as_csv_or_json_lines() {
    let h = crate::helpers::Harness::start().await;
    h.paid_charge("EX1", 1000).await;
    h.paid_charge("EX2", 2500).await;
    let jsonl = h.cli(["ledger", "export"]).await;
    assert_eq!(jsonl.code, 0, "{}", jsonl.stderr);
    assert_eq!(jsonl.stdout.lines().count(), 2);
    let csv = h.cli(["ledger", "export", "--format", "csv"]).await;
    assert_eq!(csv.code, 0, "{}", csv.stderr);
    let mut reader = ::csv::Reader::from_reader(csv.stdout.as_bytes());
    let header: Vec<String> = reader
        .headers()
        .unwrap()
        .iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(header[0], "kind");
    assert!(header.contains(&"provider_payment_id".to_owned()));
    let rows: Vec<::csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 2);
    let amount = header.iter().position(|h| h == "amount_minor").unwrap();
    let mut amounts: Vec<&str> = rows.iter().map(|r| &r[amount]).collect();
    amounts.sort();
    assert_eq!(amounts, ["1000", "2500"]);
    // A window: nothing recorded in the future, everything since yesterday.
    let future = h
        .cli(["ledger", "export", "--since", "2999-01-01T00:00:00Z"])
        .await;
    assert_eq!((future.code, future.stdout.as_str()), (0, ""));
    let since = (chrono::Utc::now() - chrono::Duration::days(1)).to_rfc3339();
    let recent = h.cli(["ledger", "export", "--since", &since]).await;
    assert_eq!(recent.stdout.lines().count(), 2, "{}", recent.stderr);
    for (args, says) in [
        (vec!["--since", "yesterday"], "--since"),
        (
            vec![
                "--since",
                "2027-02-01T00:00:00Z",
                "--until",
                "2027-01-01T00:00:00Z",
            ],
            "is not before --until",
        ),
    ] {
        let out = h
            .cli(["ledger", "export"].into_iter().chain(args.clone()))
            .await;
        assert_eq!(out.code, 2, "{args:?}");
        assert!(out.stderr.contains(says), "{args:?}: {}", out.stderr);
    }
    h.sim.shutdown().await;
}

/// Shell completions, the manual page, and each command's --help listing the environment it
/// reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_man_page_and_the_environment_in_help() {
    let (code, out, err) = run(paycron(None, None).args(["completions", "bash"])).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("_paycron()") && out.contains("enroll"),
        "{out}"
    );
    let (code, out, _) = run(paycron(None, None).args(["completions", "zsh"])).await;
    assert_eq!(code, 0);
    assert!(out.starts_with("#compdef paycron"), "{out}");
    let (code, _, _) = run(paycron(None, None).args(["completions", "tcsh"])).await;
    assert_eq!(code, 2);
    let (code, man, _) = run(paycron(None, None).arg("man")).await;
    assert_eq!(code, 0);
    assert!(
        man.contains(".TH paycron 1") && man.contains("reconcile"),
        "{man}"
    );
    for (command, reads, not) in [
        ("run", "PAYCRON_OPS_ADDR", "PAYCRON_MIGRATE_DATABASE_URL"),
        ("enroll", "PAYCRON_PUBLIC_URL", "PAYCRON_OPS_ADDR"),
        (
            "migrate",
            "PAYCRON_MIGRATE_DATABASE_URL",
            "SQUARE_ACCESS_TOKEN",
        ),
        ("sync-cards", "SQUARE_ACCESS_TOKEN", "PAYCRON_PUBLIC_URL"),
    ] {
        let (code, help, _) = run(paycron(None, None).args([command, "--help"])).await;
        assert_eq!(code, 0, "{command}");
        assert!(help.contains("Environment"), "{command}: {help}");
        assert!(help.contains(reads), "{command} reads {reads}: {help}");
        assert!(!help.contains(not), "{command} does not read {not}: {help}");
    }
}

/// A long run-once without a terminal says how far it is: "n of N, rate, ETA" log lines.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_run_logs_its_progress_without_a_terminal() {
    let s = crate::helpers::slow_sim(400).await;
    let db = fresh_db().await;
    crate::helpers::seed_due(&db, &s, 6).await;
    let (code, _, err) = run(paycron(Some(&db.url), Some(&s.base_url()))
        .env("PAYCRON_CONCURRENCY", "1")
        .env("PAYCRON_BATCH_SIZE", "1")
        .env("PAYCRON_PROGRESS_SECONDS", "1")
        .args(["run-once", "--task", "bill-due"]))
    .await;
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = err
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["message"] == "progress")
        .collect();
    assert!(!lines.is_empty(), "{err}");
    for l in &lines {
        assert_eq!(l["total"], 6, "{l}");
        assert!(
            l["done"].as_u64().unwrap() <= 6 && l["rate_per_s"].is_number(),
            "{l}"
        );
    }
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_bills_the_due_slice_and_prints_its_figures() {
    let db = fresh_db().await;
    let (code, stdout, stderr) = run(paycron(Some(&db.url), None).args([
        "bench",
        "--subscriptions",
        "300",
        "--due",
        "120",
        "--concurrency",
        "8",
        "--batch-size",
        "50",
    ]))
    .await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    let figures: std::collections::HashMap<&str, &str> = last
        .strip_prefix("bench: ")
        .unwrap_or_else(|| panic!("not a bench line: {last}"))
        .split(' ')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    // Only the due slice is billed, each exactly once.
    assert_eq!(figures.get("charges"), Some(&"120"), "{last}");
    let number = |k: &str| -> f64 {
        figures
            .get(k)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{k} missing or not a number: {last}"))
    };
    for key in ["seconds", "charges_per_sec", "cpu_s", "peak_rss_mb"] {
        assert!(number(key) > 0.0, "{key}: {last}");
    }
    assert!(number("p50_ms") <= number("p99_ms"), "{last}");
    assert!(
        stderr.contains("seeded 300 subscriptions (120 due)"),
        "{stderr}"
    );
}
