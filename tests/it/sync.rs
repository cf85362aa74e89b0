//! sync-cards against the simulator: Square's whole card listing read from both ends, many
//! pages, idempotent, resumable after an interruption, and careful about cards that vanish.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use async_trait::async_trait;
use paycron::billing::sync::sync_cards;
use paycron::domain::answer::ProviderPayment;
use paycron::domain::refund::ProviderRefund;
use paycron::gateway::{
    self, GatewayError, ListOrder, Page, PaymentGateway, PaymentOutcome, PreparedPayment,
    ProviderCard, ProviderCustomer,
};
use paycron::simulator::{Faults, SimConfig};

use crate::helpers::{client, config, count, count_where, fresh_db, paycron, run, sim};

type CardsPage = gateway::Result<Page<ProviderCard>>;
type CardsHook = Box<dyn Fn(CardsPage) -> CardsPage + Send + Sync>;

/// Delegates to a real client, counting ListCards calls and passing every whole-listing answer
/// through `on_cards` (to interrupt a sync, or to tamper with what Square lists).
struct Hooked {
    inner: Arc<dyn PaymentGateway>,
    on_cards: CardsHook,
    list_cards_calls: AtomicUsize,
}

impl Hooked {
    fn new(inner: Arc<dyn PaymentGateway>, on_cards: CardsHook) -> Self {
        Hooked {
            inner,
            on_cards,
            list_cards_calls: AtomicUsize::new(0),
        }
    }

    fn plain(inner: Arc<dyn PaymentGateway>) -> Self {
        Self::new(inner, Box::new(|page| page))
    }

    /// ListCards calls since the last look.
    fn calls(&self) -> usize {
        self.list_cards_calls.swap(0, Ordering::SeqCst)
    }
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
        self.list_cards_calls.fetch_add(1, Ordering::SeqCst);
        self.inner.list_cards(customer, cursor, all).await
    }
    async fn list_all_cards(&self, cursor: Option<&str>, order: ListOrder) -> CardsPage {
        self.list_cards_calls.fetch_add(1, Ordering::SeqCst);
        (self.on_cards)(self.inner.list_all_cards(cursor, order).await)
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
    Hooked::new(
        inner,
        Box::new(move |page| {
            if calls.fetch_add(1, Ordering::SeqCst) >= limit {
                return Err(GatewayError::Exhausted {
                    what: "ListCards",
                    cause: "connection reset (test)".into(),
                });
            }
            page
        }),
    )
}

/// The simulator's realistic mix: customers 10 and 47 of every 50 have a spare card.
fn cards_of(customers: i64) -> i64 {
    (0..customers)
        .map(|i| if i % 50 == 47 || i % 50 == 10 { 2 } else { 1 })
        .sum()
}

/// Filed here a day ago under `customer`, whatever Square says.
async fn file_old_card(db: &crate::helpers::TestDb, customer: &str, card: &str) {
    sqlx::query("SELECT paycron.upsert_customer_card($1, $2, 'VISA', '1111', 12, 2030, true)")
        .bind(customer)
        .bind(card)
        .execute(&db.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE paycron.cards SET created_at = now() - interval '1 day' WHERE id = $1")
        .bind(card)
        .execute(&db.pool)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ends_of_the_listing_meet_and_an_interrupted_run_resumes_where_it_stopped() {
    let s = sim(SimConfig {
        customers: 1000,
        ..SimConfig::default()
    })
    .await;
    let expected_cards = cards_of(1000);
    let pages = (expected_cards as usize).div_ceil(25);

    // One whole run, in a database of its own: both ends together read the listing about once.
    let other = fresh_db().await;
    let plain = Hooked::plain(client(&config(&s.base_url())));
    let whole = sync_cards(&other.pool, &plain).await.unwrap();
    let whole_calls = plain.calls();
    assert_eq!(count(&other, "cards").await, expected_cards);
    assert_eq!(whole.cards as i64, expected_cards, "{whole:?}");
    assert!(
        whole_calls >= pages && whole_calls <= pages + 4,
        "{whole_calls} ListCards calls for {pages} pages: the ends meet"
    );

    // Interrupted after 12 ListCards pages: what was filed stays, with the cursors after it.
    let db = fresh_db().await;
    let cut = interrupting(client(&config(&s.base_url())), 12);
    assert!(sync_cards(&db.pool, &cut).await.is_err());
    let filed = count(&db, "cards").await;
    assert!(filed > 0 && filed < expected_cards, "{filed}");
    let saved: (Option<String>, Option<String>, Option<chrono::DateTime<chrono::Utc>>) =
        sqlx::query_as(
            "SELECT oldest_cursor, newest_cursor, finished_at FROM paycron.sync_runs WHERE name = 'cards'",
        )
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(
        saved.0.is_some() && saved.1.is_some() && saved.2.is_none(),
        "{saved:?}"
    );

    // The rerun resumes: it reads only what the first did not file.
    let gw = Hooked::plain(client(&config(&s.base_url())));
    let resumed = sync_cards(&db.pool, &gw).await.unwrap();
    let resumed_calls = gw.calls();
    assert!(
        resumed_calls + 8 <= whole_calls,
        "resumed with {resumed_calls} calls against {whole_calls} for a whole run"
    );
    assert_eq!(count(&db, "customers").await, 1000);
    assert_eq!(count(&db, "cards").await, expected_cards);
    assert_eq!(resumed.cards_vanished, 0, "{resumed:?}");

    // A second run starts afresh and changes nothing.
    let second = sync_cards(&db.pool, &gw).await.unwrap();
    assert_eq!(
        (
            second.customers_changed,
            second.cards_changed,
            second.customers
        ),
        (0, 0, 1000),
        "a second run changes nothing"
    );

    // A card disabled at Square is disabled here, and announced once.
    s.with(|st| assert!(st.disable_card("ccof:sim-ok-000001")));
    let third = sync_cards(&db.pool, &gw).await.unwrap();
    assert_eq!(third.cards_changed, 1);
    let enabled: bool =
        sqlx::query_scalar("SELECT enabled FROM paycron.cards WHERE id = 'ccof:sim-ok-000001'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!enabled);
    let announced = count_where(
        &db,
        "SELECT count(*) FROM paycron.events WHERE type = 'card_disabled'",
    )
    .await;
    assert_eq!(announced, 1, "card_disabled announced once");
    assert_eq!(sync_cards(&db.pool, &gw).await.unwrap().cards_changed, 0);

    // A run idle for over an hour is begun again rather than resumed.
    let cut = interrupting(client(&config(&s.base_url())), 4);
    assert!(sync_cards(&db.pool, &cut).await.is_err());
    sqlx::query("UPDATE paycron.sync_runs SET touched_at = now() - interval '2 hours'")
        .execute(&db.pool)
        .await
        .unwrap();
    gw.calls();
    sync_cards(&db.pool, &gw).await.unwrap();
    let again = gw.calls();
    assert!(
        again >= pages,
        "{again} calls: the idle run was begun again"
    );
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_square_refuses_stalls_a_run_only_until_it_has_been_idle_an_hour() {
    let s = sim(SimConfig {
        customers: 60,
        mix: "all-ok".into(),
        ..SimConfig::default()
    })
    .await;
    let db = fresh_db().await;
    let gw = client(&config(&s.base_url()));
    let cut = interrupting(gw.clone(), 1);
    assert!(sync_cards(&db.pool, &cut).await.is_err());
    // Square no longer accepts the oldest end's saved cursor; the other listings are done.
    sqlx::query("UPDATE paycron.sync_runs SET oldest_cursor = 'expired', oldest_done = false, customers_done = true, newest_done = true, touched_at = now() - interval '50 minutes'")
        .execute(&db.pool)
        .await
        .unwrap();
    let err = sync_cards(&db.pool, gw.as_ref()).await.unwrap_err();
    assert!(err.to_string().contains("INVALID_CURSOR"), "{err}");
    // Retrying does not keep the stalled run alive: only a filed page does.
    let idle: bool = sqlx::query_scalar(
        "SELECT touched_at < now() - interval '49 minutes' FROM paycron.sync_runs",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert!(idle, "a failed attempt does not touch the run");
    sqlx::query("UPDATE paycron.sync_runs SET touched_at = touched_at - interval '11 minutes'")
        .execute(&db.pool)
        .await
        .unwrap();
    let t = sync_cards(&db.pool, gw.as_ref()).await.unwrap();
    assert_eq!(count(&db, "cards").await, 60, "{t:?}");
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_card_square_no_longer_lists_is_disabled_unless_too_many_go_at_once() {
    let s = sim(SimConfig {
        customers: 40,
        mix: "all-ok".into(),
        ..SimConfig::default()
    })
    .await;
    let db = fresh_db().await;
    let gw = client(&config(&s.base_url()));
    sync_cards(&db.pool, gw.as_ref()).await.unwrap();
    // Filed here before this run, unknown to Square: deleted there since.
    file_old_card(&db, "SIMCUST000003", "ccof:deleted-at-square").await;
    let t = sync_cards(&db.pool, gw.as_ref()).await.unwrap();
    assert_eq!(t.cards_vanished, 1, "{t:?}");
    let enabled: bool =
        sqlx::query_scalar("SELECT enabled FROM paycron.cards WHERE id = 'ccof:deleted-at-square'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert!(!enabled);
    let announced = count_where(&db, "SELECT count(*) FROM paycron.events WHERE type = 'card_disabled' AND payload->>'card_id' = 'ccof:deleted-at-square'").await;
    assert_eq!(announced, 1);

    // Another seller's token: none of the 40 enabled cards on file are listed. Nothing is
    // disabled, and the command says why.
    let stranger = sim(SimConfig::default()).await;
    stranger.with(|st| st.add_card("OTHERSELLER1", "ccof:other-seller-1", "VISA", true));
    let (code, _, err) =
        run(paycron(Some(&db.url), Some(&stranger.base_url())).arg("sync-cards")).await;
    assert_eq!(code, 1, "{err}");
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("no longer lists 40 of the 41 enabled cards")
            && last.contains("SQUARE_ACCESS_TOKEN"),
        "{err}"
    );
    let still = count_where(
        &db,
        "SELECT count(*) FROM paycron.cards WHERE enabled AND id LIKE 'ccof:sim-%'",
    )
    .await;
    assert_eq!(still, 40, "nothing disabled");
    // The held run is over: the right token's next run starts afresh; of the cards on file it
    // disables only the one the other seller's listing brought.
    let t = sync_cards(&db.pool, gw.as_ref()).await.unwrap();
    assert_eq!(t.cards_vanished, 1, "{t:?}");
    let still = count_where(
        &db,
        "SELECT count(*) FROM paycron.cards WHERE enabled AND id LIKE 'ccof:sim-%'",
    )
    .await;
    assert_eq!(still, 40);
    s.shutdown().await;
    stranger.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sync_at_a_time() {
    let s = sim(SimConfig {
        customers: 3,
        mix: "all-ok".into(),
        ..SimConfig::default()
    })
    .await;
    let db = fresh_db().await;
    let mut holder = db.pool.acquire().await.unwrap();
    sqlx::query("SELECT pg_advisory_lock(hashtext('paycron:task:sync-cards'))")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (code, _, err) = run(paycron(Some(&db.url), Some(&s.base_url())).arg("sync-cards")).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.lines().last().unwrap().contains("already running"),
        "{err}"
    );
    assert_eq!(count(&db, "cards").await, 0);
    sqlx::query("SELECT pg_advisory_unlock(hashtext('paycron:task:sync-cards'))")
        .execute(&mut *holder)
        .await
        .unwrap();
    let (code, _, err) =
        run(paycron(Some(&db.url), Some(&s.base_url())).args(["run-once", "--task", "sync-cards"]))
            .await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(count(&db, "cards").await, 3);
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

/// Square's card list carries a card filed here under another customer, a card that expired in
/// 11/2022, and versions.
fn tampering(inner: Arc<dyn PaymentGateway>) -> Hooked {
    Hooked::new(
        inner,
        Box::new(|page| {
            let mut page = page?;
            for c in &mut page.items {
                c.version = Some(3);
            }
            page.items.push(ProviderCard {
                id: Some("ccof:moved".into()),
                customer_id: Some("SIMCUST000001".into()),
                brand: Some("VISA".into()),
                last_4: None,
                exp_month: None,
                exp_year: None,
                enabled: true,
                version: None,
            });
            page.items.push(ProviderCard {
                id: Some("ccof:old-1".into()),
                customer_id: Some("SIMCUST000000".into()),
                brand: Some("VISA".into()),
                last_4: Some("4242".into()),
                exp_month: Some(11),
                exp_year: Some(2022),
                enabled: true,
                version: Some(1),
            });
            Ok(page)
        }),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_expired_and_stale_cards_from_square_are_not_taken_at_face_value() {
    let s = sim(SimConfig {
        customers: 2,
        ..SimConfig::default()
    })
    .await;
    let db = fresh_db().await;
    file_old_card(&db, "SIMCUST000000", "ccof:moved").await;
    let g = tampering(client(&config(&s.base_url())));
    let totals = sync_cards(&db.pool, &g).await.unwrap();
    assert!(totals.cards_refused >= 1, "{totals:?}");
    let moved: (String, bool) =
        sqlx::query_as("SELECT customer_id, enabled FROM paycron.cards WHERE id = 'ccof:moved'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        moved,
        ("SIMCUST000000".to_owned(), false),
        "never moved; no longer its customer's card at Square, so disabled"
    );
    let (code, out, err) =
        run(paycron(Some(&db.url), None).args(["cards", "list", "--format", "json"])).await;
    assert_eq!(code, 0, "{err}");
    let cards: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let old: Vec<&serde_json::Value> = cards
        .iter()
        .filter(|c| c["id"].as_str().unwrap().starts_with("ccof:old-"))
        .collect();
    assert_eq!(old.len(), 1);
    assert!(old.iter().all(|c| c["expired"] == true), "{old:?}");
    // A webhook said something newer about a card (version 10: disabled); the sync's older
    // listing (version 3, enabled) leaves it alone.
    let some: String = sqlx::query_scalar(
        "SELECT id FROM paycron.cards WHERE id LIKE 'ccof:sim-%' ORDER BY id LIMIT 1",
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
