//! `sync-cards`: brings Square's customers and cards on file into Postgres.
//!
//! A full sync reads three listings side by side: ListCustomers for profile fields, and
//! ListCards without a customer filter (disabled cards included) from both ends at once, oldest
//! first and newest first, each end stopping where it meets a card the other filed in this run.
//! Square returns 25 cards a page, so the two ends halve the calls one listing would need, and a
//! page is filed while the next one is on its way.
//!
//! Invariants:
//! - idempotent: an unchanged card is not rewritten, and Square's older word on a card (by
//!   version, then time) never overrides a newer one a webhook brought;
//! - resumable: each page is filed in one transaction with its listing's cursor
//!   (`store::card_sync`), so an interrupted run picks up after the last page it filed;
//! - a card Square no longer lists is disabled only when the whole listing has been read, and
//!   not at all when more than a tenth of the enabled cards would go at once (the signature of
//!   another seller's token, not of customers leaving): the run then fails saying so;
//! - a card Square lists under another customer than the one it is filed under here is never
//!   moved: it is refused (logged) and, no longer being its customer's card at Square, disabled.
//!
//! [`sync_one`] syncs one customer through the customer-filtered listing (an enrollment at the
//! counter waiting for the card saved there).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use sqlx::PgPool;

use super::{BillingError, Result};
use crate::domain::card::{CardStamp, is_stale};
use crate::gateway::{ListOrder, Page, PaymentGateway, ProviderCard, ProviderCustomer};
use crate::store::StoreError;
use crate::store::card_sync::{self, Listing, ListingState, SyncRun};
use crate::store::cards::{self, CardRecord};

/// A run idle this long is begun again rather than resumed (Square's cursors are short-lived).
const RUN_MAX_IDLE: chrono::Duration = chrono::Duration::hours(1);

/// Cards that may vanish in one run without holding it, whatever the total.
const VANISH_FLOOR: i64 = 10;

/// Totals of one sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncTotals {
    /// Customers seen at Square.
    pub customers: u64,
    /// Cards Square listed and paycron holds, each counted once per run.
    pub cards: u64,
    /// Customer rows inserted or changed.
    pub customers_changed: u64,
    /// Card rows inserted or changed (including newly disabled ones).
    pub cards_changed: u64,
    /// Customers skipped because their id failed validation (logged each).
    pub customers_skipped: u64,
    /// Cards skipped because Square's data failed validation (logged each).
    pub cards_skipped: u64,
    /// Cards refused because Square listed them under another customer than the one they are
    /// filed under here (logged each, never moved).
    pub cards_refused: u64,
    /// Cards whose listing was older than what a webhook already said (left as they are).
    pub cards_stale: u64,
    /// Cards disabled because Square no longer lists them.
    pub cards_vanished: u64,
    /// ListCards and ListCustomers pages read.
    pub pages: u64,
}

impl std::ops::AddAssign for SyncTotals {
    fn add_assign(&mut self, o: Self) {
        self.customers += o.customers;
        self.cards += o.cards;
        self.customers_changed += o.customers_changed;
        self.cards_changed += o.cards_changed;
        self.customers_skipped += o.customers_skipped;
        self.cards_skipped += o.cards_skipped;
        self.cards_refused += o.cards_refused;
        self.cards_stale += o.cards_stale;
        self.cards_vanished += o.cards_vanished;
        self.pages += o.pages;
    }
}

/// Runs one full sync.
///
/// # Errors
/// [`super::BillingError`] when Square or the database fails (what was filed stays, and the
/// next run resumes after it), or [`BillingError::SyncHeld`].
#[tracing::instrument(skip_all)]
pub async fn sync_cards(pool: &PgPool, gateway: &dyn PaymentGateway) -> Result<SyncTotals> {
    sync_cards_with(pool, gateway, &|_| {}).await
}

/// [`sync_cards`], telling `on_cards` how many cards each page brought (a long command's
/// progress).
///
/// # Errors
/// [`BillingError`].
pub async fn sync_cards_with(
    pool: &PgPool,
    gateway: &dyn PaymentGateway,
    on_cards: &(dyn Fn(u64) + Send + Sync),
) -> Result<SyncTotals> {
    let started = Instant::now();
    let run = card_sync::begin_or_resume(pool, chrono::Utc::now(), RUN_MAX_IDLE).await?;
    if run.resumed {
        tracing::info!(run_id = %run.run_id, started_at = %run.started_at,
            "sync-cards resumes the run stopped earlier");
    }
    // When one listing fails the others stop at their next page, after committing the one
    // they are filing: what they read is kept, and the rerun resumes after it.
    let stop = AtomicBool::new(false);
    let (c, o, n) = tokio::join!(
        halting(&stop, customers_listing(pool, gateway, &run, &stop)),
        halting(
            &stop,
            cards_listing(pool, gateway, &run, Listing::Oldest, &stop, on_cards)
        ),
        halting(
            &stop,
            cards_listing(pool, gateway, &run, Listing::Newest, &stop, on_cards)
        ),
    );
    let mut totals = c?;
    totals += o?;
    totals += n?;
    let finished = finish(pool, &run, &mut totals).await;
    crate::ops::metrics::count_synced(
        totals.customers,
        totals.cards,
        totals.cards_changed,
        totals.cards_refused,
    );
    tracing::info!(
        run_id = %run.run_id,
        resumed = run.resumed,
        customers = totals.customers,
        cards = totals.cards,
        pages = totals.pages,
        customers_changed = totals.customers_changed,
        cards_changed = totals.cards_changed,
        cards_vanished = totals.cards_vanished,
        cards_skipped = totals.cards_skipped,
        cards_refused = totals.cards_refused,
        cards_stale = totals.cards_stale,
        customers_skipped = totals.customers_skipped,
        cards_per_s = (totals.cards as f64 / started.elapsed().as_secs_f64().max(0.001)).round(),
        duration_ms = started.elapsed().as_millis() as u64,
        "sync-cards done"
    );
    finished.map(|()| totals)
}

/// `listing`'s result, raising `stop` for the others when it failed.
async fn halting(
    stop: &AtomicBool,
    listing: impl std::future::Future<Output = Result<SyncTotals>>,
) -> Result<SyncTotals> {
    let result = listing.await;
    if result.is_err() {
        stop.store(true, Ordering::SeqCst);
    }
    result
}

/// ListCustomers to its end (or until `stop`): profile fields, a page per transaction with
/// its cursor.
async fn customers_listing(
    pool: &PgPool,
    gateway: &dyn PaymentGateway,
    run: &SyncRun,
    stop: &AtomicBool,
) -> Result<SyncTotals> {
    let mut totals = SyncTotals::default();
    let mut state = run.customers.clone();
    while !state.done && !stop.load(Ordering::SeqCst) {
        let page = gateway.list_customers(state.cursor.as_deref()).await?;
        totals.pages += 1;
        let mut customers: Vec<&ProviderCustomer> = Vec::with_capacity(page.items.len());
        for customer in &page.items {
            match customer.id.parse::<crate::domain::CustomerId>() {
                Ok(_) => customers.push(customer),
                Err(e) => {
                    totals.customers_skipped += 1;
                    tracing::warn!(reason = %e, "customer skipped");
                }
            }
        }
        // Ascending ids: the card listings take customer rows in the same order.
        customers.sort_by(|a, b| a.id.cmp(&b.id));
        state = ListingState {
            done: page.cursor.is_none(),
            cursor: page.cursor,
        };
        let mut tx = crate::store::begin(pool).await?;
        for customer in customers {
            totals.customers += 1;
            totals.customers_changed += u64::from(
                cards::upsert_customer(
                    &mut tx,
                    &customer.id,
                    customer.given_name.as_deref(),
                    customer.family_name.as_deref(),
                    customer.email.as_deref(),
                )
                .await?,
            );
        }
        if !card_sync::save_listing(&mut tx, run.run_id, Listing::Customers, &state).await? {
            return Err(superseded(run));
        }
        tx.commit().await.map_err(StoreError::from)?;
    }
    Ok(totals)
}

/// ListCards from one end until it runs out, meets the other end or is told to `stop`,
/// filing each page while the next one is read.
async fn cards_listing(
    pool: &PgPool,
    gateway: &dyn PaymentGateway,
    run: &SyncRun,
    from: Listing,
    stop: &AtomicBool,
    on_cards: &(dyn Fn(u64) + Send + Sync),
) -> Result<SyncTotals> {
    let order = match from {
        Listing::Newest => ListOrder::NewestFirst,
        _ => ListOrder::OldestFirst,
    };
    let mut totals = SyncTotals::default();
    let start = run.listing(from);
    if start.done || stop.load(Ordering::SeqCst) {
        return Ok(totals);
    }
    let mut page = gateway
        .list_all_cards(start.cursor.as_deref(), order)
        .await?;
    loop {
        totals.pages += 1;
        let next_cursor = page.cursor.clone();
        let read_next = async {
            match next_cursor.as_deref() {
                Some(c) => Some(gateway.list_all_cards(Some(c), order).await),
                None => None,
            }
        };
        let n = page.items.len() as u64;
        let (filed, next) = tokio::join!(
            file_cards_page(pool, run, from, page, &mut totals),
            read_next
        );
        let met = filed?;
        on_cards(n);
        match next {
            Some(next) if !met && !stop.load(Ordering::SeqCst) => page = next?,
            _ => break,
        }
    }
    Ok(totals)
}

/// Files one page of cards and saves the listing's cursor, in one transaction; true when the
/// page met the other end (this end is done).
///
/// Long on purpose: one page's transaction read top to bottom (owners, meeting, each card under
/// a savepoint, marks, cursor).
async fn file_cards_page(
    pool: &PgPool,
    run: &SyncRun,
    from: Listing,
    page: Page<ProviderCard>,
    totals: &mut SyncTotals,
) -> Result<bool> {
    let mut listed: Vec<(String, String, ProviderCard)> = Vec::with_capacity(page.items.len());
    for card in page.items {
        let Some(id) = card.id.clone() else {
            totals.cards_skipped += 1;
            tracing::warn!(reason = "no id", "card skipped");
            continue;
        };
        match card
            .customer_id
            .as_deref()
            .map(str::parse::<crate::domain::CustomerId>)
        {
            Some(Ok(owner)) => listed.push((id, owner.to_string(), card)),
            Some(Err(e)) => {
                totals.cards_skipped += 1;
                tracing::warn!(card_id = %id, reason = %e, "card skipped");
            }
            None => {
                totals.cards_skipped += 1;
                tracing::warn!(card_id = %id, reason = "Square lists it under no customer", "card skipped");
            }
        }
    }
    // Ascending card ids, owners first: the two ends filing the same cards at once take their
    // rows in one order (see `store::card_sync`).
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    let owners: Vec<String> = listed
        .iter()
        .map(|(_, o, _)| o.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let ids: Vec<String> = listed.iter().map(|(id, _, _)| id.clone()).collect();

    let mut tx = crate::store::begin(pool).await?;
    card_sync::take_customers(&mut tx, &owners).await?;
    let met = card_sync::met_other_end(&mut tx, run.run_id, from, &ids).await?;
    let listed_at = chrono::Utc::now();
    let mut seen = Vec::with_capacity(listed.len());
    let mut disabled = Vec::new();
    for (id, owner, card) in listed {
        let stored = card_sync::lock_card(&mut tx, &id).await?;
        if let Some(s) = &stored
            && s.customer_id != owner
        {
            totals.cards_refused += 1;
            tracing::warn!(card_id = %id, customer_id = %s.customer_id, listed_owner = %owner,
                "card refused: Square lists it under another customer; not moved");
            continue;
        }
        let was_enabled = stored.as_ref().is_some_and(|s| s.enabled);
        let (version, listed_enabled) = (card.version, card.enabled);
        let filed = file_card(
            &mut tx,
            record_of(&id, &owner, card),
            version,
            listed_at,
            stored.map(|s| s.stamp),
            totals,
        )
        .await?;
        if filed == (Filed::Written { changed: true }) && was_enabled && !listed_enabled {
            disabled.push((id.clone(), owner));
        }
        // Listed, so not gone, even when what Square says of it could not be filed.
        seen.push(id);
    }
    totals.cards += card_sync::mark_listed(&mut tx, run.run_id, from, &seen).await?;
    announce_disabled(&mut tx, &disabled, "sync-cards").await?;
    let state = ListingState {
        done: met || page.cursor.is_none(),
        cursor: page.cursor,
    };
    if !card_sync::save_listing(&mut tx, run.run_id, from, &state).await? {
        return Err(superseded(run));
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(state.done)
}

/// Once every listing is read: disables the cards no end saw (unless too many would go at
/// once) and ends the run.
async fn finish(pool: &PgPool, run: &SyncRun, totals: &mut SyncTotals) -> Result<()> {
    let mut tx = crate::store::begin(pool).await?;
    let (missing, enabled) = card_sync::count_unlisted(&mut tx, run).await?;
    let held = missing > VANISH_FLOOR.max(enabled / 10);
    if !held {
        let gone = card_sync::disable_unlisted(&mut tx, run).await?;
        for (card_id, customer_id) in &gone {
            tracing::info!(card_id = %card_id, customer_id = %customer_id,
                "card disabled: Square no longer lists it");
        }
        totals.cards_vanished = gone.len() as u64;
        totals.cards_changed += gone.len() as u64;
        announce_disabled(&mut tx, &gone, "sync-cards: no longer listed").await?;
    }
    if !card_sync::finish(&mut tx, run.run_id).await? {
        return Err(superseded(run));
    }
    tx.commit().await.map_err(StoreError::from)?;
    if held {
        return Err(BillingError::SyncHeld { missing, enabled });
    }
    Ok(())
}

/// What filing one listed card did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filed {
    /// Square's listing is older than what is stored (a webhook said something newer).
    Stale,
    /// Filed; `changed` when the stored card differs now.
    Written {
        /// The row changed.
        changed: bool,
    },
    /// Square's data failed validation: logged, nothing written.
    Skipped,
}

/// The card row a listing describes, filed under `owner`.
fn record_of(id: &str, owner: &str, card: ProviderCard) -> CardRecord {
    CardRecord {
        customer_id: owner.to_owned(),
        card_id: id.to_owned(),
        card_brand: card.brand,
        last_4: card.last_4,
        exp_month: card.exp_month,
        exp_year: card.exp_year,
        enabled: card.enabled,
    }
}

/// Files one listed card in the caller's transaction, whose row for it is locked (or absent):
/// ignored when `stored` says something newer, otherwise written under a savepoint (one card
/// Square describes oddly must not lose the rest), stamped, and, when it changed and can be
/// charged, bringing its past-due subscriptions' next attempt forward to now.
async fn file_card(
    conn: &mut sqlx::PgConnection,
    record: CardRecord,
    version: Option<i64>,
    listed_at: chrono::DateTime<chrono::Utc>,
    stored: Option<CardStamp>,
    totals: &mut SyncTotals,
) -> Result<Filed> {
    let stamp = CardStamp {
        version,
        at: Some(listed_at),
    };
    if let Some(stored) = stored
        && is_stale(stored, stamp)
    {
        totals.cards_stale += 1;
        return Ok(Filed::Stale);
    }
    let mut sp = sqlx::Connection::begin(&mut *conn)
        .await
        .map_err(StoreError::from)?;
    match cards::upsert_customer_card(&mut sp, &record).await {
        Ok(changed) => {
            cards::stamp(&mut sp, &record.card_id, stamp).await?;
            if changed && record.enabled {
                // A card updated at Square: past-due subscriptions on it try again now.
                crate::store::square_webhooks::retry_now_for_card(&mut sp, &record.card_id).await?;
            }
            sp.commit().await.map_err(StoreError::from)?;
            totals.cards_changed += u64::from(changed);
            Ok(Filed::Written { changed })
        }
        Err(StoreError::Rejected(reason)) => {
            sp.rollback().await.map_err(StoreError::from)?;
            totals.cards_skipped += 1;
            tracing::warn!(customer_id = %record.customer_id, card_id = %record.card_id, %reason,
                "card skipped");
            Ok(Filed::Skipped)
        }
        Err(e) => Err(e.into()),
    }
}

/// `card_disabled` for each (card, customer), in the caller's transaction.
async fn announce_disabled(
    conn: &mut sqlx::PgConnection,
    cards: &[(String, String)],
    source: &str,
) -> Result<()> {
    for (card_id, customer_id) in cards {
        crate::store::events::emit(
            conn,
            "card_disabled",
            None,
            Some(customer_id),
            None,
            serde_json::json!({"card_id": card_id, "source": source}),
        )
        .await?;
    }
    Ok(())
}

fn superseded(run: &SyncRun) -> BillingError {
    BillingError::SyncSuperseded { run_id: run.run_id }
}

/// Syncs one customer, as sync-cards does for each: RetrieveCustomer, then its cards (an
/// enrollment at the counter waiting for the card saved there). A customer Square does not
/// know is left as it is.
///
/// # Errors
/// [`BillingError`].
pub async fn sync_one(
    pool: &PgPool,
    gateway: &dyn PaymentGateway,
    customer_id: &str,
) -> Result<SyncTotals> {
    let mut totals = SyncTotals::default();
    if let Some(customer) = gateway.retrieve_customer(customer_id).await? {
        sync_customer(pool, gateway, &customer, &mut totals).await?;
        totals.customers += 1;
    }
    Ok(totals)
}

/// Reads one customer's cards from Square, then files the customer and every card in one
/// transaction (a savepoint per card, so one odd card does not lose the rest), disables the
/// cards Square no longer lists, and announces the ones that stopped being chargeable.
///
/// Long on purpose: one customer's transaction, read top to bottom (customer, cards with savepoints, missing cards, events).
async fn sync_customer(
    pool: &PgPool,
    gateway: &dyn PaymentGateway,
    customer: &ProviderCustomer,
    totals: &mut SyncTotals,
) -> Result<()> {
    // Read the customer's cards first, then write everything in one transaction.
    let mut found = Vec::new();
    let mut card_cursor: Option<String> = None;
    loop {
        let cp = gateway
            .list_cards(&customer.id, card_cursor.as_deref(), true)
            .await?;
        found.extend(cp.items);
        match cp.cursor {
            Some(c) => card_cursor = Some(c),
            None => break,
        }
    }
    let mut tx = crate::store::begin(pool).await?;
    let before = cards::enabled_states(&mut tx, &customer.id).await?;
    if cards::upsert_customer(
        &mut tx,
        &customer.id,
        customer.given_name.as_deref(),
        customer.family_name.as_deref(),
        customer.email.as_deref(),
    )
    .await?
    {
        totals.customers_changed += 1;
    }
    let mut seen = Vec::new();
    let listed_at = chrono::Utc::now();
    for card in found {
        let Some(id) = card.id.clone() else { continue };
        if let Some(owner) = card.customer_id.as_deref()
            && owner != customer.id
        {
            totals.cards_refused += 1;
            tracing::warn!(customer_id = %customer.id, card_id = %id, listed_owner = owner,
                "card refused: Square listed it for another customer; not filed");
            continue;
        }
        let stored = cards::lock_stamp(&mut tx, &id).await?;
        let version = card.version;
        let filed = file_card(
            &mut tx,
            record_of(&id, &customer.id, card),
            version,
            listed_at,
            stored,
            totals,
        )
        .await?;
        totals.cards += u64::from(filed != Filed::Skipped);
        // Listed, so not gone, even when what Square says of it could not be filed.
        seen.push(id);
    }
    totals.cards_changed += cards::disable_missing(&mut tx, &customer.id, &seen).await?;
    // Announce cards that stopped being chargeable in this sync, in the same transaction.
    let after = cards::enabled_states(&mut tx, &customer.id).await?;
    for (card_id, was) in &before {
        if *was && after.get(card_id) == Some(&false) {
            crate::store::events::emit(
                &mut tx,
                "card_disabled",
                None,
                Some(&customer.id),
                None,
                serde_json::json!({"card_id": card_id, "source": "sync-cards"}),
            )
            .await?;
        }
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}
