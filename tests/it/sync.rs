//! sync-cards against the simulator: many pages, idempotent, safe to interrupt.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use paycron::billing::sync::sync_cards;
use paycron::domain::answer::ProviderPayment;
use paycron::domain::refund::ProviderRefund;
use paycron::gateway::{
    self, GatewayError, Page, PaymentGateway, PaymentOutcome, PreparedPayment, ProviderCard,
    ProviderCustomer,
};
use paycron::simulator::{Faults, SimConfig};

use crate::helpers::{client, config, count, fresh_db, paycron, run, sim};

type CardsPage = gateway::Result<Page<ProviderCard>>;
type CardsHook = Box<dyn Fn(&str, CardsPage) -> CardsPage + Send + Sync>;

/// Delegates to a real client, passing every ListCards answer through `on_cards` (to interrupt
/// a sync, or to tamper with what Square lists).
struct Hooked {
    inner: Arc<dyn PaymentGateway>,
    on_cards: CardsHook,
}

#[async_trait]
impl PaymentGateway for Hooked {
    async fn create_payment(&self, p: &PreparedPayment) -> PaymentOutcome {
        self.inner.create_payment(p).await
    }
    async fn list_customers(
        &self,
        cursor: Option<&str>,
    ) -> gateway::Result<Page<ProviderCustomer>> {
        self.inner.list_customers(cursor).await
    }
    async fn list_cards(&self, customer: &str, cursor: Option<&str>, all: bool) -> CardsPage {
        (self.on_cards)(customer, self.inner.list_cards(customer, cursor, all).await)
    }
    async fn list_payments(
        &self,
        b: chrono::DateTime<chrono::Utc>,
        e: chrono::DateTime<chrono::Utc>,
        c: Option<&str>,
    ) -> gateway::Result<Page<ProviderPayment>> {
        self.inner.list_payments(b, e, c).await
    }
    async fn get_payment(&self, id: &str) -> gateway::Result<Option<ProviderPayment>> {
        self.inner.get_payment(id).await
    }
    async fn create_customer(&self, c: &gateway::NewCustomer) -> gateway::Result<ProviderCustomer> {
        self.inner.create_customer(c).await
    }
    async fn retrieve_customer(&self, id: &str) -> gateway::Result<Option<ProviderCustomer>> {
        self.inner.retrieve_customer(id).await
    }
    async fn retrieve_order(&self, id: &str) -> gateway::Result<Option<gateway::ProviderOrder>> {
        self.inner.retrieve_order(id).await
    }
    async fn refund_payment(&self, r: &gateway::PreparedRefund) -> gateway::RefundOutcome {
        self.inner.refund_payment(r).await
    }
    async fn get_refund(&self, id: &str) -> gateway::Result<Option<ProviderRefund>> {
        self.inner.get_refund(id).await
    }
    async fn list_refunds(
        &self,
        b: chrono::DateTime<chrono::Utc>,
        e: chrono::DateTime<chrono::Utc>,
        c: Option<&str>,
    ) -> gateway::Result<Page<ProviderRefund>> {
        self.inner.list_refunds(b, e, c).await
    }
}

/// Fails every ListCards call after the first `limit`: an interrupted sync.
fn interrupting(inner: Arc<dyn PaymentGateway>, limit: usize) -> Hooked {
    let calls = AtomicUsize::new(0);
    Hooked {
        inner,
        on_cards: Box::new(move |_, page| {
            if calls.fetch_add(1, Ordering::SeqCst) >= limit {
                return Err(GatewayError::Exhausted {
                    what: "ListCards",
                    cause: "connection reset (test)".into(),
                });
            }
            page
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_customers_twice_and_after_an_interruption() {
    let s = sim(SimConfig {
        customers: 1000,
        ..SimConfig::default()
    })
    .await;
    let db = fresh_db().await;
    let gw = client(&config(&s.base_url()));
    let expected_cards = s.with(|st| {
        let r = st.list_cards(None, None, true);
        let _ = r;
        (0..1000)
            .map(|i| if i % 50 == 47 || i % 50 == 10 { 2 } else { 1 })
            .sum::<i64>()
    });

    // Interrupted after 300 customers: what was written is whole, per customer.
    let cut = interrupting(gw.clone(), 300);
    assert!(sync_cards(&db.pool, &cut).await.is_err());
    assert_eq!(count(&db, "customers").await, 300);
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM paycron.customers c WHERE NOT EXISTS (SELECT 1 FROM paycron.cards k WHERE k.customer_id = c.id)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "no customer without its cards");

    let first = sync_cards(&db.pool, gw.as_ref()).await.unwrap();
    assert_eq!(first.customers, 1000);
    assert_eq!(count(&db, "customers").await, 1000);
    assert_eq!(count(&db, "cards").await, expected_cards);
    assert_eq!(
        first.customers_changed, 700,
        "only the customers the interrupted run missed"
    );

    let second = sync_cards(&db.pool, gw.as_ref()).await.unwrap();
    assert_eq!(
        (second.customers_changed, second.cards_changed),
        (0, 0),
        "a second run changes nothing"
    );

    // A card disabled at Square is disabled here.
    s.with(|st| assert!(st.disable_card("ccof:sim-ok-000001")));
    let third = sync_cards(&db.pool, gw.as_ref()).await.unwrap();
    assert_eq!(third.cards_changed, 1);
    let enabled: bool =
        sqlx::query_scalar("SELECT enabled FROM paycron.cards WHERE id = 'ccof:sim-ok-000001'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!enabled);
    let announced: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paycron.events WHERE type = 'card_disabled'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(announced, 1, "card_disabled announced once");
    assert_eq!(
        sync_cards(&db.pool, gw.as_ref())
            .await
            .unwrap()
            .cards_changed,
        0
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_through_the_cli_with_small_pages_and_503s() {
    let s = sim(SimConfig {
        customers: 120,
        customers_page: 7,
        cards_page: 1,
        faults: Faults {
            error_5xx_rate: 0.2,
            ..Faults::default()
        },
        ..SimConfig::default()
    })
    .await;
    let db = fresh_db().await;
    let (code, _, err) = run(paycron(Some(&db.url), Some(&s.base_url())).arg("sync-cards")).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(count(&db, "customers").await, 120);
    let (code, out, _) =
        run(paycron(Some(&db.url), None).args(["cards", "list", "--format", "json"])).await;
    assert_eq!(code, 0);
    let cards: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(cards.as_array().unwrap().len(), 125);
    assert!(!err.contains("test-token-not-secret"));
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_rejected_square() {
    let db = fresh_db().await;
    let (code, _, err) = run(paycron(Some(&db.url), Some("http://127.0.0.1:9"))
        .env("SQUARE_RETRY_DEADLINE_MS", "300")
        .arg("sync-cards"))
    .await;
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("unreachable") && last.contains("http://127.0.0.1:9"),
        "{err}"
    );

    let s = sim(SimConfig {
        token: Some("the-right-token".into()),
        customers: 3,
        ..SimConfig::default()
    })
    .await;
    let (code, _, err) = run(paycron(Some(&db.url), Some(&s.base_url())).arg("sync-cards")).await;
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("SQUARE_ACCESS_TOKEN was rejected by Square"),
        "{err}"
    );
    assert!(
        !err.contains("test-token-not-secret"),
        "the token is never echoed"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_against_an_independent_square_stand_in() {
    use std::io::BufRead;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/square_standin.py"
    );
    let mut child = std::process::Command::new("python3")
        .arg(script)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 runs the stand-in");
    let mut port = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut port)
        .unwrap();
    let url = format!("http://127.0.0.1:{}", port.trim());
    let db = fresh_db().await;
    let (code, _, err) = run(paycron(Some(&db.url), Some(&url)).arg("sync-cards")).await;
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 0, "{err}");
    assert_eq!(count(&db, "customers").await, 11);
    // 11 customers with 1, 2 or 3 cards; the third of each customer is disabled at Square.
    assert_eq!(count(&db, "cards").await, 4 + 4 * 2 + 3 * 3);
    let disabled: i64 = sqlx::query_scalar("SELECT count(*) FROM paycron.cards WHERE NOT enabled")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(disabled, 3);
    let brand: String = sqlx::query_scalar("SELECT card_brand FROM paycron.cards LIMIT 1")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(brand, "VISA");
}

/// Square's card list carries a card of another customer, a card that expired in 11/2022,
/// and versions.
fn tampering(inner: Arc<dyn PaymentGateway>) -> Hooked {
    Hooked {
        inner,
        on_cards: Box::new(|customer, page| {
            let mut page = page?;
            for c in &mut page.items {
                c.version = Some(3);
            }
            page.items.push(ProviderCard {
                id: Some(format!("ccof:foreign-{customer}")),
                customer_id: Some("SOMEONE_ELSE".into()),
                brand: Some("VISA".into()),
                last_4: None,
                exp_month: None,
                exp_year: None,
                enabled: true,
                version: None,
            });
            page.items.push(ProviderCard {
                id: Some(format!("ccof:old-{customer}")),
                customer_id: Some(customer.to_owned()),
                brand: Some("VISA".into()),
                last_4: Some("4242".into()),
                exp_month: Some(11),
                exp_year: Some(2022),
                enabled: true,
                version: Some(1),
            });
            Ok(page)
        }),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_expired_and_stale_cards_from_square_are_not_taken_at_face_value() {
    let s = sim(SimConfig {
        customers: 2,
        ..SimConfig::default()
    })
    .await;
    let db = fresh_db().await;
    let g = tampering(client(&config(&s.base_url())));
    let totals = sync_cards(&db.pool, &g).await.unwrap();
    assert_eq!(totals.cards_refused, 2, "{totals:?}");
    let foreign: i64 =
        sqlx::query_scalar("SELECT count(*) FROM paycron.cards WHERE id LIKE 'ccof:foreign-%'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(foreign, 0, "never filed under anyone");
    let (code, out, err) =
        run(paycron(Some(&db.url), None).args(["cards", "list", "--format", "json"])).await;
    assert_eq!(code, 0, "{err}");
    let cards: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let old: Vec<&serde_json::Value> = cards
        .iter()
        .filter(|c| c["id"].as_str().unwrap().starts_with("ccof:old-"))
        .collect();
    assert_eq!(old.len(), 2);
    assert!(old.iter().all(|c| c["expired"] == true), "{old:?}");
    // A webhook said something newer about a card (version 10: disabled); the sync's older
    // listing (version 3, enabled) leaves it alone.
    let some: String = sqlx::query_scalar(
        "SELECT id FROM paycron.cards WHERE id NOT LIKE 'ccof:old-%' ORDER BY id LIMIT 1",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    sqlx::query("UPDATE paycron.cards SET enabled = false, square_version = 10 WHERE id = $1")
        .bind(&some)
        .execute(&db.pool)
        .await
        .unwrap();
    let again = sync_cards(&db.pool, &g).await.unwrap();
    assert!(again.cards_stale >= 1, "{again:?}");
    let enabled: bool = sqlx::query_scalar("SELECT enabled FROM paycron.cards WHERE id = $1")
        .bind(&some)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(!enabled, "an older listing does not re-enable it");
    s.shutdown().await;
}
