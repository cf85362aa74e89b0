//! Outbound webhooks against a local receiver: signed, retried as configured, delivered at
//! least once; a dead endpoint never blocks billing.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::Utc;
use paycron::outbound::{DeliveryConfig, deliver_due, verify};
use paycron::simulator::SimConfig;

use crate::helpers::{app, client, fresh_db, paycron, run, seed_card, sim};

#[derive(Default)]
struct Receiver {
    fail_first: usize,
    calls: AtomicUsize,
    got: Mutex<Vec<(HeaderMap, String)>>,
}

async fn receiver(fail_first: usize) -> (String, Arc<Receiver>) {
    let r = Arc::new(Receiver {
        fail_first,
        ..Receiver::default()
    });
    let state = r.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move |headers: HeaderMap, body: Bytes| {
            let state = state.clone();
            async move {
                let n = state.calls.fetch_add(1, Ordering::SeqCst);
                state
                    .got
                    .lock()
                    .unwrap()
                    .push((headers, String::from_utf8_lossy(&body).into_owned()));
                if n < state.fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.ok() });
    (url, r)
}

/// Delivers until the receiver has had `n` calls (publication waits for older transactions
/// anywhere in the cluster, so this polls); panics if they never come.
async fn deliver_until(
    pool: &sqlx::PgPool,
    http: &reqwest::Client,
    cfg: &DeliveryConfig,
    rx: &Receiver,
    n: usize,
) {
    for _ in 0..100 {
        deliver_due(pool, http, cfg, Utc::now()).await.unwrap();
        if rx.calls.load(Ordering::SeqCst) >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{n} deliveries never arrived");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_signed_retried_and_delivered() {
    let metrics = paycron::ops::metrics::install();
    let s = sim(SimConfig::default()).await;
    s.with(|st| st.add_card("H1", "ccof:sim-ok-h1", "VISA", true));
    let db = fresh_db().await;
    seed_card(&db, "H1", "ccof:sim-ok-h1").await;
    let (url, rx) = receiver(2).await;
    let (code, out, err) = run(paycron(Some(&db.url), None)
        .env("PAYCRON_WEBHOOK_ALLOW_PRIVATE", "true")
        .args(["webhooks", "add", "--url", &url]))
    .await;
    assert_eq!(code, 0, "{err}");
    let secret = out.split_whitespace().nth(1).unwrap().to_owned();
    sqlx::query("SELECT paycron.create_subscription('H1', 800, 'USD', 'month', 1, NULL, now() - interval '1 minute', p_now => now() - interval '1 minute')")
        .execute(&db.pool)
        .await
        .unwrap();
    let a = app(&db, &s.base_url());
    a.engine(client(&a.config))
        .await
        .unwrap()
        .bill_due(Utc::now())
        .await
        .unwrap();

    let http = reqwest::Client::new();
    let cfg = DeliveryConfig {
        backoff: Duration::from_secs(1),
        allow_private: true,
        ..DeliveryConfig::default()
    };
    // subscription_created and payment_succeeded: two events, the first two deliveries fail.
    let mut rounds = 0;
    loop {
        let summary = deliver_due(&db.pool, &http, &cfg, Utc::now())
            .await
            .unwrap();
        let delivered: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM paycron.webhook_deliveries WHERE status = 'delivered'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if delivered == 2 {
            break;
        }
        rounds += 1;
        assert!(rounds < 40, "not delivered: {summary:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let got = rx.got.lock().unwrap().clone();
    assert_eq!(got.len(), 4, "two failures, then two deliveries");
    for (headers, body) in &got {
        let sig = headers.get("paycron-signature").unwrap().to_str().unwrap();
        verify(
            &secret,
            sig,
            body.as_bytes(),
            Duration::from_secs(300),
            Utc::now(),
        )
        .expect("signature verifies");
        assert!(headers.get("paycron-delivery-id").is_some());
    }
    let types: Vec<String> = got[2..]
        .iter()
        .map(|(_, b)| {
            serde_json::from_str::<serde_json::Value>(b).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert!(types.contains(&"payment_succeeded".to_owned()), "{types:?}");
    // Operators see it in /metrics: attempts by result, and the backlog (empty now).
    let text = metrics.render();
    for line in [
        "paycron_webhook_deliveries_total{result=\"retrying\"}",
        "paycron_webhook_deliveries_total{result=\"delivered\"}",
        "paycron_webhook_backlog ",
        "paycron_webhook_oldest_pending_age_seconds ",
        "paycron_build_info{version=",
    ] {
        assert!(text.contains(line), "{line} not in /metrics:\n{text}");
    }
    // Each payload says its shape's version and carries what it is about: the charge as the read
    // API shows it, and for a subscription's own events the subscription after the change.
    for (_, b) in &got[2..] {
        let v: serde_json::Value = serde_json::from_str(b).unwrap();
        assert_eq!(v["api_version"], paycron::outbound::API_VERSION);
        match v["type"].as_str().unwrap() {
            "payment_succeeded" => {
                assert_eq!(v["charge"]["status"], "succeeded", "{v}");
                assert_eq!(v["charge"]["amount_minor"], 800, "{v}");
                assert!(v["charge"]["provider_payment_id"].is_string(), "{v}");
            }
            "subscription_created" => {
                assert_eq!(v["data"]["subscription"]["amount_minor"], 800, "{v}");
                assert_eq!(v["data"]["subscription"]["customer_id"], "H1", "{v}");
            }
            other => panic!("unexpected {other}"),
        }
    }
    // Retries were spaced as configured: each retry no earlier than the backoff after the last.
    let deliveries: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT id FROM paycron.webhook_deliveries WHERE attempts > 1")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert!(!deliveries.is_empty());
    for d in deliveries {
        let attempts = paycron::store::outbound::attempts(&db.pool, d)
            .await
            .unwrap();
        for (i, w) in attempts.windows(2).enumerate() {
            let gap = (w[1].0 - w[0].0).to_std().unwrap();
            assert!(
                gap >= paycron::outbound::backoff(cfg.backoff, i as u32 + 1),
                "retry {i} came after {gap:?}"
            );
        }
    }
    // The same delivery id on every attempt of one delivery; the event id identifies the event.
    let (code, out, _) =
        run(paycron(Some(&db.url), None).args(["webhooks", "deliveries", "--format", "json"]))
            .await;
    assert_eq!(code, 0);
    assert!(out.contains("\"delivered\""));
    // The verify helper agrees with the receiver.
    let body = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(body.path(), &got[3].1).unwrap();
    let sig = got[3]
        .0
        .get("paycron-signature")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let secret_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret_file.path(), format!("{secret}\n")).unwrap();
    let (code, _, err) = run(paycron(None, None)
        .args(["webhooks", "verify", "--secret-file"])
        .arg(secret_file.path())
        .args(["--signature", &sig, "--body-file"])
        .arg(body.path()))
    .await;
    assert_eq!(code, 0, "{err}");
    std::fs::write(secret_file.path(), "wrong-secret-123456").unwrap();
    let (code, _, _) = run(paycron(None, None)
        .args(["webhooks", "verify", "--secret-file"])
        .arg(secret_file.path())
        .args(["--signature", &sig, "--body-file"])
        .arg(body.path()))
    .await;
    assert_eq!(code, 1);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_never_blocks_billing() {
    let s = sim(SimConfig::default()).await;
    s.with(|st| st.add_card("H2", "ccof:sim-ok-h2", "VISA", true));
    let db = fresh_db().await;
    seed_card(&db, "H2", "ccof:sim-ok-h2").await;
    let (code, _, err) = run(paycron(Some(&db.url), None)
        .env("PAYCRON_WEBHOOK_ALLOW_PRIVATE", "true")
        .args(["webhooks", "add", "--url", "http://127.0.0.1:9/dead"]))
    .await;
    assert_eq!(code, 0, "{err}");
    sqlx::query("SELECT paycron.create_subscription('H2', 800, 'USD', 'day', 1, NULL, now() - interval '2 days', p_now => now() - interval '2 days')")
        .execute(&db.pool)
        .await
        .unwrap();
    let (code, _, err) = run(paycron(Some(&db.url), Some(&s.base_url()))
        .env("PAYCRON_WEBHOOK_ALLOW_PRIVATE", "true")
        .args(["run-once", "--task", "all"]))
    .await;
    assert_eq!(code, 0, "billing succeeded with the endpoint down: {err}");
    let charged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paycron.ledger_entries WHERE status = 'succeeded'",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(charged, 3, "every missed day billed");
    // The events reach the feed once every older transaction of the cluster has ended (other
    // tests' included): deliver until they have all been tried once.
    let cfg = DeliveryConfig {
        allow_private: true,
        ..DeliveryConfig::default()
    };
    let http = paycron::outbound::client(&cfg).unwrap();
    let mut pending = 0i64;
    for _ in 0..100 {
        pending = sqlx::query_scalar(
            "SELECT count(*) FROM paycron.webhook_deliveries WHERE status = 'pending' AND attempts >= 1",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
        if pending >= 4 {
            break;
        }
        deliver_due(&db.pool, &http, &cfg, Utc::now())
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(pending >= 4, "deliveries wait for their retry: {pending}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_destinations_and_redirects_are_refused() {
    let db = fresh_db().await;
    seed_card(&db, "H3", "ccof:sim-ok-h3").await;
    // At `webhooks add`: loopback, metadata, private, IPv6 loopback, localhost; https in
    // production.
    for url in [
        "http://127.0.0.1:8080/hook",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.1.2.3/hook",
        "http://[::1]/hook",
        "http://localhost/hook",
        "ftp://example.com/hook",
    ] {
        let (code, _, err) =
            run(paycron(Some(&db.url), None).args(["webhooks", "add", "--url", url])).await;
        assert_eq!(code, 2, "{url}: {err}");
    }
    let (code, _, err) = run(paycron(Some(&db.url), None)
        .env("SQUARE_ENVIRONMENT", "production")
        .args(["webhooks", "add", "--url", "http://example.com/hook"]))
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("https is required"), "{err}");
    // At delivery: an endpoint written straight into the table is refused just the same, and
    // nothing reaches it.
    let (url, rx) = receiver(0).await;
    sqlx::query("INSERT INTO paycron.webhook_endpoints (id, url, secret, last_position) VALUES (gen_random_uuid(), $1, 'a-secret-of-16-chars', 0)")
        .bind(&url)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("SELECT paycron.create_subscription('H3', 800, 'USD', 'month', 1)")
        .execute(&db.pool)
        .await
        .unwrap();
    let strict = DeliveryConfig::default();
    let http = paycron::outbound::client(&strict).unwrap();
    for _ in 0..100 {
        let summary = deliver_due(&db.pool, &http, &strict, Utc::now())
            .await
            .unwrap();
        assert_eq!(summary.delivered, 0, "{summary:?}");
        if summary.retrying + summary.failed > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        rx.calls.load(Ordering::SeqCst),
        0,
        "nothing reached loopback"
    );
    let error: Option<String> = sqlx::query_scalar(
        "SELECT last_error FROM paycron.webhook_deliveries ORDER BY created_at LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(error.unwrap_or_default().contains("not a public address"));
    // A redirect is not followed, even where private destinations are allowed.
    let target = receiver(0).await;
    let bounce = axum::Router::new().route(
        "/hook",
        post({
            let to = target.0.clone();
            move || async move { (StatusCode::TEMPORARY_REDIRECT, [("location", to)]) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let bounce_url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, bounce).await.ok() });
    sqlx::query("UPDATE paycron.webhook_endpoints SET url = $1")
        .bind(&bounce_url)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE paycron.webhook_deliveries SET next_attempt_at = now()")
        .execute(&db.pool)
        .await
        .unwrap();
    let lax = DeliveryConfig {
        allow_private: true,
        ..DeliveryConfig::default()
    };
    let http = paycron::outbound::client(&lax).unwrap();
    let summary = deliver_due(&db.pool, &http, &lax, Utc::now())
        .await
        .unwrap();
    assert_eq!(summary.delivered, 0, "{summary:?}");
    assert_eq!(
        target.1.calls.load(Ordering::SeqCst),
        0,
        "the redirect was not followed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_commits_late_is_delivered_once_everywhere() {
    use tokio::io::AsyncBufReadExt;
    let db = fresh_db().await;
    let (url, rx) = receiver(0).await;
    let (code, _, err) = run(paycron(Some(&db.url), None)
        .env("PAYCRON_WEBHOOK_ALLOW_PRIVATE", "true")
        .args(["webhooks", "add", "--url", &url]))
    .await;
    assert_eq!(code, 0, "{err}");
    let mut tail = paycron(Some(&db.url), None)
        .args(["events", "tail", "--follow", "--format", "jsonl"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let out = tail.stdout.take().unwrap();
    let (lines_tx, mut lines_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(out).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = lines_tx.send(line);
        }
    });
    let emit = "SELECT paycron.emit($1, NULL, NULL, NULL, '{}'::jsonb)";
    // A takes the lower id and stays open; B takes the higher one and commits first.
    let mut a = db.pool.begin().await.unwrap();
    let id_a: i64 = sqlx::query_scalar(emit)
        .bind("late_a")
        .fetch_one(&mut *a)
        .await
        .unwrap();
    let id_b: i64 = sqlx::query_scalar(emit)
        .bind("early_b")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(id_a < id_b);
    let cfg = DeliveryConfig {
        allow_private: true,
        ..DeliveryConfig::default()
    };
    let http = paycron::outbound::client(&cfg).unwrap();
    deliver_due(&db.pool, &http, &cfg, Utc::now())
        .await
        .unwrap();
    a.commit().await.unwrap();
    // Publication waits for older transactions anywhere in the cluster (other tests') to end.
    deliver_until(&db.pool, &http, &cfg, &rx, 2).await;
    deliver_due(&db.pool, &http, &cfg, Utc::now())
        .await
        .unwrap();
    // The webhook endpoint: each exactly once.
    let got: Vec<String> = rx
        .got
        .lock()
        .unwrap()
        .iter()
        .map(|(_, body)| {
            serde_json::from_str::<serde_json::Value>(body).unwrap()["type"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(got.iter().filter(|t| *t == "late_a").count(), 1, "{got:?}");
    assert_eq!(got.iter().filter(|t| *t == "early_b").count(), 1, "{got:?}");
    // `events tail --follow`: both, each once.
    let mut seen = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while seen.len() < 2 && std::time::Instant::now() < deadline {
        if let Ok(Some(line)) =
            tokio::time::timeout(std::time::Duration::from_millis(200), lines_rx.recv()).await
        {
            seen.push(
                serde_json::from_str::<serde_json::Value>(&line).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned(),
            );
        }
    }
    let _ = tail.kill().await;
    seen.sort();
    assert_eq!(seen, ["early_b", "late_a"]);
    // The SQL feed, in position order: both, each once.
    sqlx::query("SELECT paycron.publish_events()")
        .execute(&db.pool)
        .await
        .unwrap();
    let feed: Vec<(i64, String)> = sqlx::query_as(
        "SELECT position, type FROM paycron.events_feed WHERE position > 0 ORDER BY position",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let types: Vec<&str> = feed.iter().map(|f| f.1.as_str()).collect();
    assert_eq!(
        types.iter().filter(|t| **t == "late_a").count(),
        1,
        "{feed:?}"
    );
    assert_eq!(
        types.iter().filter(|t| **t == "early_b").count(),
        1,
        "{feed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standard_webhooks_endpoints_are_verified_by_the_standardwebhooks_library() {
    let db = fresh_db().await;
    let (url, rx) = receiver(0).await;
    let (code, out, err) = run(paycron(Some(&db.url), None)
        .env("PAYCRON_WEBHOOK_ALLOW_PRIVATE", "true")
        .args(["webhooks", "add", "--url", &url, "--format", "standard"]))
    .await;
    assert_eq!(code, 0, "{err}");
    let secret = out.split_whitespace().nth(1).unwrap().to_owned();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let listed =
        run(paycron(Some(&db.url), None).args(["webhooks", "list", "--format", "json"])).await;
    assert!(
        listed.1.contains("\"signature_format\": \"standard\""),
        "{}",
        listed.1
    );
    sqlx::query("SELECT paycron.emit('probe_event', NULL, 'C1', NULL, '{\"x\": 1}'::jsonb)")
        .execute(&db.pool)
        .await
        .unwrap();
    let cfg = DeliveryConfig {
        allow_private: true,
        ..DeliveryConfig::default()
    };
    let http = paycron::outbound::client(&cfg).unwrap();
    deliver_until(&db.pool, &http, &cfg, &rx, 1).await;
    let (headers, body) = rx.got.lock().unwrap()[0].clone();
    assert!(headers.get("paycron-signature").is_none());
    let header = |k: &str| headers.get(k).unwrap().to_str().unwrap().to_owned();
    // Verified by the Standard Webhooks reference library, as a receiver would.
    let script = "import json, sys\n\
        from standardwebhooks.webhooks import Webhook\n\
        secret, wid, ts, sig = sys.argv[1:5]\n\
        body = sys.stdin.read()\n\
        msg = Webhook(secret).verify(body, {'webhook-id': wid, 'webhook-timestamp': ts, 'webhook-signature': sig})\n\
        print(msg['type'])\n";
    let verified = |body: String, sig: String| {
        let mut cmd = tokio::process::Command::new("python3");
        cmd.args([
            "-c",
            script,
            &secret,
            &header("webhook-id"),
            &header("webhook-timestamp"),
            &sig,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        async move {
            use tokio::io::AsyncWriteExt;
            let mut child = cmd
                .spawn()
                .expect("python3 with standardwebhooks (see .ci/run)");
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .await
                .unwrap();
            child.wait_with_output().await.unwrap()
        }
    };
    let ok = verified(body.clone(), header("webhook-signature")).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "probe_event");
    // A tampered body is refused by the same library.
    let bad = verified(
        body.replacen("probe", "prob3", 1),
        header("webhook-signature"),
    )
    .await;
    assert!(!bad.status.success(), "a tampered body must not verify");
    assert_eq!(header("webhook-id"), header("paycron-delivery-id"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_filter_pause_ping_resend_rotate_and_go_away() {
    let db = fresh_db().await;
    let (url, rx) = receiver(0).await;
    let cli = |args: Vec<String>| {
        let db_url = db.url.clone();
        async move {
            run(paycron(Some(&db_url), None)
                .env("PAYCRON_WEBHOOK_ALLOW_PRIVATE", "true")
                .args(&args))
            .await
        }
    };
    let s = |v: &[&str]| v.iter().map(|x| (*x).to_owned()).collect::<Vec<_>>();
    let (code, out, err) = cli(s(&[
        "webhooks",
        "add",
        "--url",
        &url,
        "--events",
        "payment_succeeded,refund_succeeded",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let mut words = out.split_whitespace();
    let (id, old_secret) = (
        words.next().unwrap().to_owned(),
        words.next().unwrap().to_owned(),
    );
    let cfg = DeliveryConfig {
        allow_private: true,
        ..DeliveryConfig::default()
    };
    let http = paycron::outbound::client(&cfg).unwrap();
    let emit = |kind: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT paycron.emit($1, NULL, 'C1', NULL, '{}'::jsonb)")
                .bind(kind)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    let types = || -> Vec<String> {
        rx.got
            .lock()
            .unwrap()
            .iter()
            .map(|(_, b)| {
                serde_json::from_str::<serde_json::Value>(b).unwrap()["type"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect()
    };

    // The filter: only the types asked for.
    emit("payment_declined").await;
    let paid = emit("payment_succeeded").await;
    deliver_until(&db.pool, &http, &cfg, &rx, 1).await;
    assert_eq!(types(), ["payment_succeeded"]);
    // A ping reaches this endpoint now.
    let (code, _, err) = cli(s(&["webhooks", "test", &id])).await;
    assert_eq!(code, 0, "{err}");
    deliver_until(&db.pool, &http, &cfg, &rx, 2).await;
    assert_eq!(types()[1], "webhook_ping");
    // Resend: the same event again.
    let (code, _, err) = cli(vec!["webhooks".into(), "resend".into(), paid.to_string()]).await;
    assert_eq!(code, 0, "{err}");
    deliver_until(&db.pool, &http, &cfg, &rx, 3).await;
    assert_eq!(types()[2], "payment_succeeded");
    // Rotation: both secrets sign during the overlap.
    let (code, out, err) = cli(s(&["webhooks", "rotate-secret", &id])).await;
    assert_eq!(code, 0, "{err}");
    let new_secret = out.split_whitespace().nth(1).unwrap().to_owned();
    assert_ne!(new_secret, old_secret);
    emit("refund_succeeded").await;
    deliver_until(&db.pool, &http, &cfg, &rx, 4).await;
    let (headers, body) = rx.got.lock().unwrap()[3].clone();
    let sig = headers
        .get("paycron-signature")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for secret in [&old_secret, &new_secret] {
        verify(
            secret,
            &sig,
            body.as_bytes(),
            paycron::outbound::DEFAULT_TOLERANCE,
            Utc::now(),
        )
        .unwrap_or_else(|e| panic!("{secret}: {e}"));
    }
    // Disabled: nothing more until enabled again; removed: never again, and gone from the list.
    let (code, _, _) = cli(s(&["webhooks", "disable", &id])).await;
    assert_eq!(code, 0);
    emit("payment_succeeded").await;
    for _ in 0..3 {
        deliver_due(&db.pool, &http, &cfg, Utc::now())
            .await
            .unwrap();
    }
    assert_eq!(
        rx.calls.load(Ordering::SeqCst),
        4,
        "a disabled endpoint gets nothing"
    );
    let (code, _, _) = cli(s(&["webhooks", "enable", &id])).await;
    assert_eq!(code, 0);
    deliver_until(&db.pool, &http, &cfg, &rx, 5).await;
    let (code, _, _) = cli(s(&["webhooks", "remove", &id])).await;
    assert_eq!(code, 0);
    emit("payment_succeeded").await;
    for _ in 0..3 {
        deliver_due(&db.pool, &http, &cfg, Utc::now())
            .await
            .unwrap();
    }
    assert_eq!(
        rx.calls.load(Ordering::SeqCst),
        5,
        "a removed endpoint gets nothing"
    );
    let (_, listed, _) = cli(s(&["webhooks", "list", "--format", "json"])).await;
    assert_eq!(listed.trim(), "[]");
    // Unknown ids and bad input: exit 2 with one line.
    for args in [
        s(&["webhooks", "disable", &id]),
        s(&["webhooks", "test", "nope"]),
        s(&["webhooks", "add", "--url", &url, "--events", "Bad Type"]),
    ] {
        let (code, _, err) = cli(args.clone()).await;
        assert_eq!(code, 2, "{args:?}: {err}");
    }
}

/// The README's receiver snippet, run as written, verifies a real delivery and refuses a forged
/// one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readmes_python_check_verifies_a_real_delivery() {
    let readme = include_str!("../../README.md");
    let start = readme
        .find("```python\nimport hmac, hashlib, time")
        .expect("the README's verify snippet");
    let snippet = &readme[start + "```python\n".len()..];
    let snippet = &snippet[..snippet.find("```").unwrap()];
    let db = fresh_db().await;
    let (url, rx) = receiver(0).await;
    let (code, out, err) = run(paycron(Some(&db.url), None)
        .env("PAYCRON_WEBHOOK_ALLOW_PRIVATE", "true")
        .args(["webhooks", "add", "--url", &url]))
    .await;
    assert_eq!(code, 0, "{err}");
    let secret = out.split_whitespace().nth(1).unwrap().to_owned();
    sqlx::query("SELECT paycron.emit('probe_event', NULL, 'C1', NULL, '{}'::jsonb)")
        .execute(&db.pool)
        .await
        .unwrap();
    let cfg = DeliveryConfig {
        allow_private: true,
        ..DeliveryConfig::default()
    };
    let http = paycron::outbound::client(&cfg).unwrap();
    deliver_until(&db.pool, &http, &cfg, &rx, 1).await;
    let (headers, body) = rx.got.lock().unwrap()[0].clone();
    let header = headers
        .get("paycron-signature")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let check = |body: String| {
        let script = format!(
            "{snippet}\nimport sys\nbody = sys.stdin.buffer.read()\nsys.exit(0 if verify(sys.argv[1], sys.argv[2], body) else 1)\n"
        );
        let mut cmd = tokio::process::Command::new("python3");
        cmd.args(["-c", &script, &secret, &header])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        async move {
            use tokio::io::AsyncWriteExt;
            let mut child = cmd.spawn().unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(body.as_bytes())
                .await
                .unwrap();
            child.wait_with_output().await.unwrap()
        }
    };
    let ok = check(body.clone()).await;
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let forged = check(body.replacen("probe", "prob3", 1)).await;
    assert_eq!(
        forged.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&forged.stderr)
    );
}
