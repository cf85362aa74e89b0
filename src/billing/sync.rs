//! `sync-cards`: pages through Square's ListCustomers and, per customer, ListCards with
//! `include_disabled=true`, and brings customers and cards into Postgres.
//!
//! Idempotent (an unchanged card is not rewritten) and safe to interrupt: each customer and
//! its cards are written in one transaction, so what was synced stays consistent and a rerun
//! picks up the rest. Cards Square no longer lists for a customer are marked disabled.

use std::time::Instant;

use sqlx::PgPool;

use super::Result;
use crate::domain::card::{CardStamp, is_stale};
use crate::gateway::{PaymentGateway, ProviderCustomer};
use crate::store::StoreError;
use crate::store::cards::{self, CardRecord};

/// Totals of one sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncTotals {
    /// Customers seen at Square.
    pub customers: u64,
    /// Cards seen at Square.
    pub cards: u64,
    /// Customer rows inserted or changed.
    pub customers_changed: u64,
    /// Card rows inserted or changed (including newly disabled ones).
    pub cards_changed: u64,
    /// Customers skipped because their id failed validation (logged each).
    pub customers_skipped: u64,
    /// Cards skipped because Square's data failed validation (logged each).
    pub cards_skipped: u64,
    /// Cards refused because Square listed them under another customer than the one asked
    /// about (logged each, never filed).
    pub cards_refused: u64,
    /// Cards whose listing was older than what a webhook already said (left as they are).
    pub cards_stale: u64,
}

/// Runs one full sync.
///
/// # Errors
/// [`super::BillingError`] when Square or the database fails; what was written stays.
#[tracing::instrument(skip_all)]
pub async fn sync_cards(pool: &PgPool, gateway: &dyn PaymentGateway) -> Result<SyncTotals> {
    sync_cards_with(pool, gateway, &|_| {}).await
}

/// [`sync_cards`], telling `on_customers` how many customers each page brought (a long
/// command's progress).
///
/// # Errors
/// [`BillingError`].
pub async fn sync_cards_with(
    pool: &PgPool,
    gateway: &dyn PaymentGateway,
    on_customers: &(dyn Fn(u64) + Send + Sync),
) -> Result<SyncTotals> {
    let started = Instant::now();
    let mut totals = SyncTotals::default();
    let mut cursor: Option<String> = None;
    let mut page_no = 0u64;
    loop {
        let page = gateway.list_customers(cursor.as_deref()).await?;
        page_no += 1;
        for customer in &page.items {
            if let Err(e) = customer.id.parse::<crate::domain::CustomerId>() {
                totals.customers_skipped += 1;
                tracing::warn!(reason = %e, "customer skipped");
                continue;
            }
            sync_customer(pool, gateway, customer, &mut totals).await?;
            totals.customers += 1;
        }
        on_customers(page.items.len() as u64);
        tracing::debug!(
            page = page_no,
            customers = totals.customers,
            cards = totals.cards,
            "sync-cards page"
        );
        match page.cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    crate::ops::metrics::count_synced(
        totals.customers,
        totals.cards,
        totals.cards_changed,
        totals.cards_refused,
    );
    tracing::info!(
        customers = totals.customers,
        cards = totals.cards,
        customers_changed = totals.customers_changed,
        cards_changed = totals.cards_changed,
        cards_skipped = totals.cards_skipped,
        cards_refused = totals.cards_refused,
        cards_stale = totals.cards_stale,
        customers_skipped = totals.customers_skipped,
        customers_per_s =
            (totals.customers as f64 / started.elapsed().as_secs_f64().max(0.001)).round(),
        duration_ms = started.elapsed().as_millis() as u64,
        "sync-cards done"
    );
    Ok(totals)
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
    let mut tx = pool.begin().await.map_err(StoreError::from)?;
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
        let stamp = CardStamp {
            version: card.version,
            at: Some(listed_at),
        };
        if let Some(stored) = cards::lock_stamp(&mut tx, &id).await?
            && is_stale(stored, stamp)
        {
            totals.cards_stale += 1;
            seen.push(id);
            continue;
        }
        let record = CardRecord {
            customer_id: customer.id.clone(),
            card_id: id.clone(),
            card_brand: card.brand.clone(),
            last_4: card.last_4.clone(),
            exp_month: card.exp_month,
            exp_year: card.exp_year,
            enabled: card.enabled,
        };
        // A savepoint per card: one card Square describes oddly must not lose the rest.
        let mut sp = sqlx::Connection::begin(&mut *tx)
            .await
            .map_err(StoreError::from)?;
        match cards::upsert_customer_card(&mut sp, &record).await {
            Ok(changed) => {
                cards::stamp(&mut sp, &id, stamp).await?;
                if changed && record.enabled {
                    // A card updated at Square: past-due subscriptions on it try again now.
                    crate::store::square_webhooks::retry_now_for_card(&mut sp, &id).await?;
                }
                sp.commit().await.map_err(StoreError::from)?;
                totals.cards += 1;
                totals.cards_changed += u64::from(changed);
                seen.push(id);
            }
            Err(StoreError::Rejected(reason)) => {
                sp.rollback().await.map_err(StoreError::from)?;
                totals.cards_skipped += 1;
                tracing::warn!(customer_id = %customer.id, card_id = %id, %reason, "card skipped");
            }
            Err(e) => return Err(e.into()),
        }
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
