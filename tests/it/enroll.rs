//! Enrollment at the counter, end to end over real HTTP: `paycron enroll` prints a link; the
//! page offers the Point of Sale launches; the simulator plays the POS app (the sale, the card
//! saved after checkout, its signed `card.created`, the redirect to the callback); paycron
//! confirms the sale with Square, records the first period once, picks up the card, and bills
//! the next period on file.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use paycron::enroll::Counter;
use paycron::ops::server::{OpsState, serve};
use paycron::ops::square_webhooks::WebhookState;
use paycron::simulator::state::APPLICATION_ID;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::helpers::{Harness, client, paycron, run};

const KEY: &str = "counter-signature-key";
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.0 Mobile/15E148 Safari/604.1";
const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Mobile Safari/537.36";

/// A shop: the harness, and paycron's public routes (receiver + enrollment pages) on a port.
pub struct Shop {
    pub h: Harness,
    pub public: String,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<()>,
}

impl Shop {
    pub async fn open() -> Shop {
        let h = Harness::start().await;
        let addr: SocketAddr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let public = format!("http://{addr}");
        let hook = format!("{public}/webhooks/square");
        let mut config = h.app.config.enrollment.clone();
        config.public_url = Some(public.clone());
        config.application_id = Some(APPLICATION_ID.into());
        config.business_name = "Corner Gym".into();
        let counter = Counter::new(h.db.pool.clone(), client(&h.app.config), config, None);
        let stop = CancellationToken::new();
        let state = OpsState {
            pool: h.db.pool.clone(),
            metrics: paycron::ops::metrics::install(),
            draining: Arc::new(AtomicBool::new(false)),
            webhooks: WebhookState {
                pool: h.db.pool.clone(),
                key: Some(SecretString::from(KEY.to_owned())),
                url: Some(hook.clone()),
                dispute_lost_cancels: true,
            },
            webhook_path: "/webhooks/square".into(),
            ready: Arc::new(AtomicBool::new(false)),
            progress: None,
            enroll: Some(counter),
        };
        let server = serve(addr, state, stop.clone()).await.unwrap();
        h.sim.with(|st| st.notify = Some((hook, KEY.into())));
        Shop {
            h,
            public,
            stop,
            server,
        }
    }

    /// `paycron enroll ... --format json` against this shop: `(link, subscription id)`.
    pub async fn enroll(&self, extra: &[&str]) -> (String, uuid::Uuid) {
        let (code, out, err) = run(self
            .cli()
            .args([
                "enroll",
                "--amount",
                "1999",
                "--currency",
                "USD",
                "--every",
                "1month",
                "--format",
                "json",
            ])
            .args(extra))
        .await;
        assert_eq!(code, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        (
            v["link"].as_str().unwrap().to_owned(),
            v["subscription_id"].as_str().unwrap().parse().unwrap(),
        )
    }

    pub fn cli(&self) -> tokio::process::Command {
        let mut c = paycron(Some(&self.h.db.url), Some(&self.h.sim.base_url()));
        c.env("PAYCRON_PUBLIC_URL", &self.public)
            .env("SQUARE_APPLICATION_ID", APPLICATION_ID);
        c
    }

    /// The page at `url` as a phone with `agent` sees it: (status, final URL, body).
    pub async fn get(&self, url: &str, agent: &str) -> (u16, String, String) {
        let r = reqwest::Client::new()
            .get(url)
            .header("user-agent", agent)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let at = r.url().to_string();
        (status, at, r.text().await.unwrap())
    }

    /// The simulated POS app completing `launch` with `outcome`, then the browser following
    /// its redirect to the callback and on to the page.
    pub async fn pos(&self, launch: &str, outcome: &str) -> (u16, String, String) {
        let mut url =
            reqwest::Url::parse(&format!("{}/_sim/pos/launch", self.h.sim.base_url())).unwrap();
        url.query_pairs_mut()
            .append_pair("url", launch)
            .append_pair("outcome", outcome)
            .append_pair("late_ms", "800");
        self.get(url.as_str(), IPHONE).await
    }

    pub async fn close(self) {
        self.stop.cancel();
        let _ = self.server.await;
        self.h.sim.shutdown().await;
    }
}

/// The launch URL behind a page's button (`launch-ios` or `launch-android`), unescaped.
pub fn launch(page: &str, id: &str) -> String {
    let at = page
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no {id} in {page}"));
    let rest = &page[at..];
    let href = rest.split("href=\"").nth(1).unwrap();
    let raw = &href[..href.find('"').unwrap()];
    raw.replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&amp;", "&")
}

async fn enrollment(shop: &Shop, sub: uuid::Uuid) -> (String, Option<String>, i64) {
    let (status, card): (String, Option<String>) = sqlx::query_as(
        "SELECT e.status, e.card_id FROM paycron.enrollments e WHERE e.subscription_id = $1",
    )
    .bind(sub)
    .fetch_one(&shop.h.db.pool)
    .await
    .unwrap();
    let charges: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paycron.ledger_entries l JOIN paycron.charges c ON c.id = l.charge_id
          WHERE c.subscription_id = $1 AND c.source = 'counter' AND l.kind = 'charge'",
    )
    .bind(sub)
    .fetch_one(&shop.h.db.pool)
    .await
    .unwrap();
    (status, card, charges)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_customer_enrolled_at_the_counter_pays_the_first_period_there_and_later_ones_on_file() {
    let shop = Shop::open().await;
    let (link, sub) = shop
        .enroll(&[
            "--new-customer",
            "--given-name",
            "Ada",
            "--family-name",
            "Lovelace",
            "--email",
            "ada@example.com",
            "--anchor",
            "2027-01-31T15:00:00Z",
            "--timezone",
            "America/New_York",
            "--now",
            "2027-01-31T15:00:00Z",
        ])
        .await;
    assert!(
        link.starts_with(&format!("{}/enroll/", shop.public)),
        "{link}"
    );
    let token = link.rsplit('/').next().unwrap();
    assert_eq!(token.len(), 64, "a 256-bit token, hex");
    // Only the token's hash is stored.
    let stored: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paycron.enrollments WHERE token_sha256 = sha256(convert_to($1, 'UTF8'))",
    )
    .bind(token)
    .fetch_one(&shop.h.db.pool)
    .await
    .unwrap();
    assert_eq!(stored, 1);
    let leaked: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM paycron.enrollments e WHERE row_to_json(e)::text LIKE '%' || $1 || '%')",
    )
    .bind(token)
    .fetch_one(&shop.h.db.pool)
    .await
    .unwrap();
    assert!(!leaked, "the token itself is stored");
    let sub_row = shop
        .h
        .subscription(paycron::domain::SubscriptionId(sub))
        .await;
    assert_eq!(sub_row.status.as_str(), "awaiting_card");
    assert!(sub_row.card_id.is_none());

    // The page on an iPhone: the plan in words, iOS first, both offered, what to do after.
    let (status, _, page) = shop.get(&link, IPHONE).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("USD 19.99 every month"), "{page}");
    assert!(page.contains("next on 28 Feb 2027"), "{page}");
    assert!(page.contains("Save card on file"));
    assert!(page.contains("Corner Gym"));
    assert!(page.find("launch-ios").unwrap() < page.find("launch-android").unwrap());
    let (_, _, android_page) = shop.get(&link, ANDROID).await;
    assert!(
        android_page.find("launch-android").unwrap() < android_page.find("launch-ios").unwrap(),
        "Android first on an Android device"
    );
    let ios = launch(&page, "launch-ios");
    assert!(
        ios.starts_with("square-commerce-v1://payment/create?data="),
        "{ios}"
    );

    // POS takes the sale, the customer saves the card, POS returns to the callback.
    let (status, at, done) = shop.pos(&ios, "ok").await;
    assert_eq!(status, 200, "{done}");
    assert!(at.ends_with(&format!("/enroll/{token}")), "{at}");
    assert!(
        done.contains("Card saved — next charge USD 19.99 on 28 Feb 2027"),
        "{done}"
    );
    let (state, card, counter_charges) = enrollment(&shop, sub).await;
    assert_eq!(state, "completed");
    assert!(card.as_deref().unwrap().starts_with("ccof:sim-ok-pos-"));
    assert_eq!(counter_charges, 1);
    let sub_row = shop
        .h
        .subscription(paycron::domain::SubscriptionId(sub))
        .await;
    assert_eq!(sub_row.status.as_str(), "active");
    assert_eq!(
        sub_row.card_id.as_ref().map(|c| c.as_str()),
        card.as_deref()
    );

    // The callback reloaded, and replayed: still one first period.
    let callback_again = shop.get(&at, IPHONE).await;
    assert_eq!(callback_again.0, 200);
    let ios_again = shop.pos(&ios, "ok").await;
    assert_eq!(ios_again.0, 200);
    assert_eq!(enrollment(&shop, sub).await.2, 1);

    // Next month: the saved card is charged on file, and Square's record and the ledger agree.
    let engine = shop.h.engine().await;
    let s = engine
        .bill_due("2027-02-28T15:00:01Z".parse().unwrap())
        .await
        .unwrap();
    assert_eq!(s.succeeded, 1, "{s:?}");
    let on_file: (i32, Option<String>) = sqlx::query_as(
        "SELECT period, card_id FROM paycron.charges WHERE subscription_id = $1 AND source = 'card_on_file'",
    )
    .bind(sub)
    .fetch_one(&shop.h.db.pool)
    .await
    .unwrap();
    assert_eq!(on_file, (1, card.clone()));
    // Two POS sales were made (the replayed launch is a second sale at Square: POS itself does
    // not de-duplicate), but only the first is this enrollment's: the audit names the extra.
    let taken: Vec<paycron::domain::answer::ProviderPayment> = shop
        .h
        .sim
        .with(|st| st.completed().iter().map(Into::into).collect());
    let audit = paycron::ledger::audit::exactly_once(&shop.h.db.pool, &taken)
        .await
        .unwrap();
    assert_eq!(audit.periods, 2);
    assert_eq!(audit.problems.len(), 2, "{:?}", audit.problems);
    let events: Vec<String> = sqlx::query_scalar(
        "SELECT type FROM paycron.events WHERE subscription_id = $1 ORDER BY id",
    )
    .bind(sub)
    .fetch_all(&shop.h.db.pool)
    .await
    .unwrap();
    for kind in [
        "subscription_created",
        "payment_succeeded",
        "enrollment_paid",
        "enrollment_completed",
    ] {
        assert!(events.iter().any(|e| e == kind), "{kind} in {events:?}");
    }
    shop.close().await;
}

fn new_customer(shop: &Shop, name: &str) -> String {
    shop.h.sim.with(|st| {
        st.create_customer(
            &serde_json::json!({"given_name": name, "idempotency_key": format!("k-{name}")})
                .to_string(),
        )
        .json()["customer"]["id"]
            .as_str()
            .unwrap()
            .to_owned()
    })
}

/// Time passes: the page may ask Square again.
async fn age_checks(shop: &Shop) {
    sqlx::query("UPDATE paycron.enrollments SET checked_at = checked_at - interval '1 minute'")
        .execute(&shop.h.db.pool)
        .await
        .unwrap();
}

async fn events_of(shop: &Shop, sub: uuid::Uuid) -> Vec<(String, serde_json::Value)> {
    sqlx::query_as(
        "SELECT type, payload FROM paycron.events WHERE subscription_id = $1 ORDER BY id",
    )
    .bind(sub)
    .fetch_all(&shop.h.db.pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_callback_a_late_card_and_a_missing_card_are_found_without_the_device() {
    let shop = Shop::open().await;

    // Android, and POS never returns to the browser: reloading the page finds the sale
    // (ListPayments) and the card (its webhook came while the sale was unknown).
    let lost = new_customer(&shop, "Lost");
    let (link, sub) = shop.enroll(&["--customer", &lost]).await;
    let (_, _, page) = shop.get(&link, ANDROID).await;
    let android = launch(&page, "launch-android");
    assert!(
        android.starts_with(
            "intent:#Intent;action=com.squareup.pos.action.CHARGE;package=com.squareup;"
        )
    );
    let (status, _, said) = shop.pos(&android, "lost_callback").await;
    assert_eq!(status, 200);
    assert!(said.contains("did not return"), "{said}");
    assert_eq!(
        enrollment(&shop, sub).await.0,
        "open",
        "nothing is recorded on the device's word"
    );
    // A sale takes longer than the page's check gap: Square is asked again on the next load.
    age_checks(&shop).await;
    let (_, _, page) = shop.get(&link, ANDROID).await;
    assert!(page.contains("Card saved"), "{page}");
    assert_eq!(enrollment(&shop, sub).await.0, "completed");
    let paid = events_of(&shop, sub).await;
    let found = paid.iter().find(|(k, _)| k == "enrollment_paid").unwrap();
    assert_eq!(found.1["found_by"], "payments");

    // The card is saved a little after the sale: the page waits (refreshing itself), and the
    // card.created webhook completes the enrollment.
    let late = new_customer(&shop, "Late");
    let (link, sub) = shop.enroll(&["--customer", &late]).await;
    let (_, _, page) = shop.get(&link, IPHONE).await;
    let (_, _, waiting) = shop.pos(&launch(&page, "launch-ios"), "late_card").await;
    assert!(waiting.contains("Payment received"), "{waiting}");
    assert!(
        waiting.contains(r#"http-equiv="refresh""#),
        "a waiting page refreshes itself"
    );
    let mut done = false;
    for _ in 0..100 {
        if enrollment(&shop, sub).await.0 == "completed" {
            done = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(done, "the late card completed the enrollment");
    assert!(shop.get(&link, IPHONE).await.2.contains("Card saved"));

    // No card saved at all: after the wait, enrollment_card_missing, the page says what to do,
    // and "check again" finds a card saved later from the customer's profile.
    let none = new_customer(&shop, "None");
    let (link, sub) = shop.enroll(&["--customer", &none]).await;
    let (_, _, page) = shop.get(&link, IPHONE).await;
    let (_, _, waiting) = shop.pos(&launch(&page, "launch-ios"), "no_card").await;
    assert!(waiting.contains("Payment received"), "{waiting}");
    let later = chrono::Utc::now() + chrono::Duration::minutes(16);
    let (expired, missing) = paycron::store::enrollments::sweep(&shop.h.db.pool, Some(later))
        .await
        .unwrap();
    assert_eq!((expired, missing), (0, 1));
    assert_eq!(
        paycron::store::enrollments::sweep(&shop.h.db.pool, Some(later))
            .await
            .unwrap(),
        (0, 0),
        "announced once"
    );
    assert!(
        events_of(&shop, sub)
            .await
            .iter()
            .any(|(k, _)| k == "enrollment_card_missing")
    );
    let (code, said, _) = run(shop.cli().arg("status")).await;
    assert_eq!(code, 1, "{said}");
    assert!(
        said.contains("1 enrollment(s) paid at the counter without a saved card"),
        "{said}"
    );
    let (_, _, page) = shop.get(&link, IPHONE).await;
    assert!(page.contains("The card was not saved"), "{page}");
    assert!(page.contains(&format!(
        r#"action="/enroll/{}/check""#,
        link.rsplit('/').next().unwrap()
    )));
    let sub_row = shop
        .h
        .subscription(paycron::domain::SubscriptionId(sub))
        .await;
    assert_eq!(
        sub_row.status.as_str(),
        "awaiting_card",
        "nothing billed without a card"
    );
    shop.h
        .sim
        .with(|st| st.add_card(&none, "ccof:sim-ok-profile", "MASTERCARD", true));
    let r = reqwest::Client::new()
        .post(format!("{link}/check"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page = r.text().await.unwrap();
    assert!(page.contains("Card saved"), "{page}");
    assert!(page.contains("MASTERCARD ending"), "{page}");
    assert_eq!(
        enrollment(&shop, sub).await.1.as_deref(),
        Some("ccof:sim-ok-profile")
    );
    shop.h.assert_exactly_once().await;
    shop.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_pos_reports_instead_of_a_sale_is_said_in_plain_words_and_nothing_is_recorded() {
    let shop = Shop::open().await;
    let c = new_customer(&shop, "Err");
    let (link, sub) = shop.enroll(&["--customer", &c]).await;
    let (_, _, page) = shop.get(&link, IPHONE).await;
    let ios = launch(&page, "launch-ios");
    let android = launch(&page, "launch-android");

    let (_, at, canceled) = shop.pos(&ios, "canceled").await;
    assert!(at.ends_with(&link[link.len() - 64..]), "{at}");
    assert!(
        canceled.contains("The sale was canceled in Square Point of Sale"),
        "{canceled}"
    );
    assert!(canceled.contains("Try again"), "{canceled}");
    let (_, _, canceled) = shop.pos(&android, "canceled").await;
    assert!(
        canceled.contains("The sale was canceled"),
        "Android's error code too: {canceled}"
    );

    // A plan in another currency than the seller's.
    let (code, out, err) = run(shop.cli().args([
        "enroll",
        "--customer",
        &c,
        "--amount",
        "1999",
        "--currency",
        "EUR",
        "--every",
        "1month",
    ]))
    .await;
    assert_eq!(code, 0, "{err}");
    let eur = out.lines().next().unwrap().to_owned();
    let (_, _, page) = shop.get(&eur, IPHONE).await;
    let (_, _, said) = shop.pos(&launch(&page, "launch-ios"), "ok").await;
    assert!(
        said.contains("currency is not the one this Square account takes"),
        "{said}"
    );

    // A forged callback naming another customer's sale: Square is asked, and it is not ours.
    let other = new_customer(&shop, "Other");
    let sale = shop
        .h
        .sim
        .with(|st| st.pos_sale(&other, 1999, "USD", false))
        .unwrap();
    let token = &link[link.len() - 64..];
    let data = serde_json::json!({"status": "ok", "transaction_id": sale.order_id, "state": token});
    let mut forged = reqwest::Url::parse(&format!("{}/enroll/callback", shop.public)).unwrap();
    forged
        .query_pairs_mut()
        .append_pair("data", &data.to_string());
    let (_, _, said) = shop.get(forged.as_str(), IPHONE).await;
    assert!(said.contains("not this one"), "{said}");

    // Not a callback at all; an unknown link; a malformed token.
    let (status, _, _) = shop
        .get(&format!("{}/enroll/callback?x=1", shop.public), IPHONE)
        .await;
    assert_eq!(status, 400);
    let (status, _, said) = shop
        .get(
            &format!("{}/enroll/{}", shop.public, "0".repeat(64)),
            IPHONE,
        )
        .await;
    assert_eq!((status, said.contains("Link not found")), (404, true));
    let (status, _, _) = shop
        .get(&format!("{}/enroll/..%2F..", shop.public), IPHONE)
        .await;
    assert_eq!(status, 404);

    let (state, _, charges) = enrollment(&shop, sub).await;
    assert_eq!((state.as_str(), charges), ("open", 0));
    shop.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unused_link_expires_and_bad_enrollments_are_refused_before_anything_is_written() {
    let shop = Shop::open().await;
    let c = new_customer(&shop, "Exp");
    let (link, sub) = shop
        .enroll(&["--customer", &c, "--external-ref", "gym-42"])
        .await;
    // The same reference and terms: the same subscription, a new link (the old one is dead).
    let (again, same) = shop
        .enroll(&["--customer", &c, "--external-ref", "gym-42"])
        .await;
    assert_eq!(same, sub);
    assert_ne!(again, link);
    assert_eq!(shop.get(&link, IPHONE).await.0, 404);
    // Just past its expiry the link is kept a little longer: a sale begun before it may still
    // be found at Square.
    let (expired, _) = paycron::store::enrollments::sweep(
        &shop.h.db.pool,
        Some(chrono::Utc::now() + chrono::Duration::hours(24) + chrono::Duration::minutes(5)),
    )
    .await
    .unwrap();
    assert_eq!(expired, 0, "expired within the grace");
    let (expired, _) = paycron::store::enrollments::sweep(
        &shop.h.db.pool,
        Some(chrono::Utc::now() + chrono::Duration::hours(25)),
    )
    .await
    .unwrap();
    assert_eq!(expired, 1);
    let sub_row = shop
        .h
        .subscription(paycron::domain::SubscriptionId(sub))
        .await;
    assert_eq!(sub_row.status.as_str(), "canceled");
    let (_, _, page) = shop.get(&again, IPHONE).await;
    assert!(page.contains("This link has expired"), "{page}");

    // Refused with one line naming what, and nothing written.
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.subscriptions")
        .fetch_one(&shop.h.db.pool)
        .await
        .unwrap();
    for (args, says) in [
        (vec!["--customer", &c, "--amount", "0"], "--amount"),
        (vec!["--customer", &c, "--every", "fortnight"], "--every"),
        (vec!["--new-customer"], "--new-customer"),
        (vec!["--new-customer", "--email", "nope"], "--email"),
        (vec!["--customer", "ccof:4111111111111111"], ""),
        (
            vec!["--customer", "NOBODY"],
            "not a customer of this Square account",
        ),
    ] {
        let (code, _, err) = run(shop
            .cli()
            .args([
                "enroll",
                "--amount",
                "1999",
                "--currency",
                "USD",
                "--every",
                "1month",
            ])
            .args(&args))
        .await;
        assert_eq!(code, 2, "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
    }
    let (code, _, err) = run(
        paycron(Some(&shop.h.db.url), Some(&shop.h.sim.base_url())).args([
            "enroll",
            "--customer",
            &c,
            "--amount",
            "1999",
            "--currency",
            "USD",
            "--every",
            "1month",
        ]),
    )
    .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("SQUARE_APPLICATION_ID"), "{err}");
    let after: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.subscriptions")
        .fetch_one(&shop.h.db.pool)
        .await
        .unwrap();
    assert_eq!(before, after);

    // An awaiting subscription takes no other card, and canceling it closes its link.
    let (link, sub) = shop.enroll(&["--customer", &c]).await;
    shop.h
        .sim
        .with(|st| st.add_card(&c, "ccof:sim-ok-other", "VISA", true));
    paycron::store::cards::upsert_customer_card(
        &mut shop.h.db.pool.acquire().await.unwrap(),
        &paycron::store::cards::CardRecord {
            customer_id: c.clone(),
            card_id: "ccof:sim-ok-other".into(),
            card_brand: Some("VISA".into()),
            last_4: Some("1111".into()),
            exp_month: Some(12),
            exp_year: Some(2040),
            enabled: true,
        },
    )
    .await
    .unwrap();
    let err =
        sqlx::query_scalar::<_, String>("SELECT paycron.change_card($1, 'ccof:sim-ok-other')")
            .bind(sub)
            .fetch_one(&shop.h.db.pool)
            .await
            .unwrap_err();
    assert!(err.to_string().contains("awaiting_card"), "{err}");
    let status: String = sqlx::query_scalar("SELECT paycron.cancel_subscription($1)")
        .bind(sub)
        .fetch_one(&shop.h.db.pool)
        .await
        .unwrap();
    assert_eq!(status, "canceled");
    assert!(shop.get(&link, IPHONE).await.2.contains("canceled"));
    shop.close().await;
}

/// The business's app enrolls through the SQL API as its own login, and builds the link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_enrolls_through_the_sql_api() {
    let shop = Shop::open().await;
    let c = new_customer(&shop, "App");
    sqlx::query("INSERT INTO paycron.customers (id) VALUES ($1)")
        .bind(&c)
        .execute(&shop.h.db.pool)
        .await
        .unwrap();
    let mut tx = shop.h.db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE paycron_app")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (sub, token, _expires): (uuid::Uuid, String, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "SELECT * FROM paycron.enroll($1, 2500, 'USD', 'week', 2, p_expires_in => interval '2 hours')",
    )
    .bind(&c)
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    let denied = sqlx::query("SELECT count(*) FROM paycron.enrollments")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    assert!(denied.to_string().contains("permission denied"), "{denied}");
    tx.rollback().await.unwrap();
    // Rolled back: nothing.
    assert!(shop.h.db.pool.acquire().await.is_ok());
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.subscriptions WHERE id = $1")
        .bind(sub)
        .fetch_one(&shop.h.db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0);
    let mut tx = shop.h.db.pool.begin().await.unwrap();
    sqlx::query("SET LOCAL ROLE paycron_app")
        .execute(&mut *tx)
        .await
        .unwrap();
    let (_, token2, _): (uuid::Uuid, String, chrono::DateTime<chrono::Utc>) =
        sqlx::query_as("SELECT * FROM paycron.enroll($1, 2500, 'USD', 'week', 2)")
            .bind(&c)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    tx.commit().await.unwrap();
    assert_ne!(token, token2);
    let (_, _, page) = shop
        .get(&format!("{}/enroll/{token2}", shop.public), IPHONE)
        .await;
    assert!(page.contains("USD 25.00 every 2 weeks"), "{page}");
    shop.close().await;
}
